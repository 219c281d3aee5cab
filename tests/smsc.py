"""A scriptable SMSC for the tests: an SMPP 3.4 server on loopback, port 0.

It decodes what the gateway sends with **smpp34**'s codec (``smpp34.decode``: a Rust
implementation of SMPP 3.4), not with smpplib, which the gateway's client
(``relay.sms.smpp``) encodes with: a field the client writes wrong is read wrong here,
instead of being read back by the same code that wrote it. ``deliver_sm`` (receipts and
MO messages) is encoded with smpp34 too.

Why not smpp34's own ``Server``: it cannot report the port it got for port 0, it
answers ``enquire_link`` and binds by itself (so they cannot be recorded or refused),
and it cannot hold a ``submit_sm`` unanswered or drop a connection on cue; so the
server here is an asyncio one around smpp34's codec. The few PDUs smpp34 decodes only
as a header and body (binds, enquire_link, unbind, the responses) are read here from
their SMPP 3.4 section 4 layouts (C-octet strings and one-octet integers).

Scripting: :attr:`TestSmsc.answers` is a queue of how to answer the next ``submit_sm``
(``ok`` when empty), :attr:`TestSmsc.message_ids` of the ids to accept them with; :meth:`send_receipt` and :meth:`send_mo` push ``deliver_sm`` to
the bound session and return the gateway's ``command_status``; :meth:`drop` closes every
connection, and :attr:`TestSmsc.accepting` False closes each new one at once (an
outage). :attr:`received` records every PDU, in order; :meth:`wait_for` waits on a
condition over it (no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
import struct
import threading
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import smpp34

T = TypeVar("T")

HEADER = struct.Struct(">IIII")
BIND_TRANSCEIVER, BIND_TRANSCEIVER_RESP = 0x00000009, 0x80000009
SUBMIT_SM, SUBMIT_SM_RESP = 0x00000004, 0x80000004
DELIVER_SM, DELIVER_SM_RESP = 0x00000005, 0x80000005
ENQUIRE_LINK, ENQUIRE_LINK_RESP = 0x00000015, 0x80000015
UNBIND, UNBIND_RESP = 0x00000006, 0x80000006
GENERIC_NACK = 0x80000000
NAMES = {
    BIND_TRANSCEIVER: "bind_transceiver",
    SUBMIT_SM: "submit_sm",
    DELIVER_SM_RESP: "deliver_sm_resp",
    ENQUIRE_LINK: "enquire_link",
    ENQUIRE_LINK_RESP: "enquire_link_resp",
    UNBIND: "unbind",
    UNBIND_RESP: "unbind_resp",
    GENERIC_NACK: "generic_nack",
}
ESME_RINVPASWD = 0x0E
STATES = {"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5,
          "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8}  # fmt: skip


class Answer(enum.Enum):
    OK = "ok"
    THROTTLED = "throttled"  # ESME_RTHROTTLED
    QUEUE_FULL = "queue full"  # ESME_RMSGQFUL
    INVALID_DESTINATION = "invalid destination"  # ESME_RINVDSTADR: permanent
    NO_ANSWER = "no answer"
    DROP = "drop"  # close the connection instead of answering


STATUS = {
    Answer.THROTTLED: smpp34.ESME_RTHROTTLED,
    Answer.QUEUE_FULL: smpp34.ESME_RMSGQFUL,
    Answer.INVALID_DESTINATION: smpp34.ESME_RINVDSTADR,
}


@dataclass
class Received:
    """One PDU the SMSC read: its name, header, raw octets, and the decoded fields."""

    name: str
    command_id: int
    status: int
    sequence: int
    raw: bytes
    fields: dict[str, Any] = field(default_factory=dict)
    submit: Any = None  # smpp34.SubmitSm for submit_sm


def _cstrings(body: bytes, count: int) -> tuple[list[str], bytes]:
    out = []
    for _ in range(count):
        end = body.index(b"\0")
        out.append(body[:end].decode("latin-1"))
        body = body[end + 1 :]
    return out, body


def _pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return HEADER.pack(16 + len(body), command_id, status, sequence) + body


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    bound: bool = False


class TestSmsc:
    """The scriptable SMSC (module docstring). ``async with TestSmsc() as smsc:``."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        system_id: str = "esme",
        password: str = "secret",  # noqa: S107 - the test SMSC's own
        ssl_context: ssl.SSLContext | None = None,
        decimal_receipt_ids: bool = False,
    ) -> None:
        self.system_id = system_id
        self.password = password
        self.ssl_context = ssl_context
        self.decimal_receipt_ids = decimal_receipt_ids
        self.answers: deque[Answer] = deque()
        # the message_id of the next accepted submit_sm's answer, as given (an SMSC's
        # odd ones: 5,000 digits, longer than SMPP 3.4's 65 octets); generated when empty
        self.message_ids: deque[str] = deque()
        self.accepting = True  # False: an outage, every connection is closed at once
        self.received: list[Received] = []
        self.accepted: list[tuple[str, Any]] = []  # (message_id, SubmitSm)
        self.port = 0
        self.binds = 0
        self._connections: list[_Connection] = []
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._next_id = 0xA0000
        self._sequence = 0
        self._pending: dict[int, asyncio.Future[int]] = {}
        self._held: list[Any] = []

    async def __aenter__(self) -> TestSmsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # -- what the tests call --------------------------------------------------

    def of(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(condition)

    async def drop(self) -> None:
        """Close every connection at once, as a network failure or an SMSC restart."""
        for conn in list(self._connections):
            conn.writer.transport.abort()
        self._connections.clear()

    async def send_receipt(
        self, message_id: str, state: str = "DELIVRD", style: str = "tlv", err: str = "000"
    ) -> int:
        """A delivery receipt for ``message_id``: ``style`` "tlv" (receipted_message_id
        and message_state, no text), "text" (Appendix B text only) or "both". An id no
        ``submit_sm`` was answered with gets a receipt all the same (from +34600111222
        to ACME, quoting no text)."""
        submit = next((s for m, s in self.accepted if m == message_id), None)
        if submit is None:
            submit = smpp34.SubmitSm("ACME", "34600111222", b"", source_addr_ton=5)
        shown_id = str(int(message_id, 16)) if self.decimal_receipt_ids else message_id
        text = b""
        body = submit.short_message
        if submit.esm_class & 0x40:  # UDHI: the receipt quotes the text, not the header
            body = body[1 + body[0] :]
        if style in ("text", "both"):
            text = (
                f"id:{shown_id} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} "
                f"submit date:2612031745 done date:2612031746 stat:{state} err:{err} "
                "text:"
            ).encode("ascii") + body[:20]
        tlvs = []
        if style in ("tlv", "both"):
            tlvs = [
                smpp34.Tlv(smpp34.TLV_RECEIPTED_MESSAGE_ID, shown_id.encode("ascii") + b"\0"),
                smpp34.Tlv(smpp34.TLV_MESSAGE_STATE, bytes((STATES[state],))),
                smpp34.Tlv(0x1403, b"vendor"),  # operators add their own
            ]
        return await self._deliver(
            smpp34.DeliverSm(
                submit.destination_addr, submit.source_addr, text,
                source_addr_ton=1, source_addr_npi=1,
                dest_addr_ton=submit.source_addr_ton, dest_addr_npi=submit.source_addr_npi,
                esm_class=0x04, tlvs=tlvs, sequence_number=self._next_sequence(),
            )
        )  # fmt: skip

    async def send_mo(
        self, source: str, destination: str, short_message: bytes, data_coding: int = 0
    ) -> int:
        """A mobile-originated message from ``source`` (international digits)."""
        return await self._deliver(
            smpp34.DeliverSm(
                source, destination, short_message, source_addr_ton=1, source_addr_npi=1,
                esm_class=0, data_coding=data_coding, sequence_number=self._next_sequence(),
            )
        )  # fmt: skip

    # -- the server -------------------------------------------------------------

    def _next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    async def _deliver(self, pdu: Any) -> int:
        conn = next(c for c in self._connections if c.bound)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[pdu.sequence_number] = future
        conn.writer.write(pdu.encode())
        await conn.writer.drain()
        async with asyncio.timeout(10):
            return await future

    async def _record(self, received: Received) -> None:
        async with self._changed:
            self.received.append(received)
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        conn = _Connection(reader, writer)
        self._connections.append(conn)
        try:
            while True:
                head = await reader.readexactly(16)
                length, command_id, status, sequence = HEADER.unpack(head)
                raw = head + await reader.readexactly(length - 16)
                if not await self._handle(conn, raw, command_id, status, sequence):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            if conn in self._connections:
                self._connections.remove(conn)
            writer.transport.abort()
            async with self._changed:
                self._changed.notify_all()

    async def _handle(
        self, conn: _Connection, raw: bytes, command_id: int, status: int, sequence: int
    ) -> bool:
        name = NAMES.get(command_id, f"0x{command_id:08x}")
        received = Received(name, command_id, status, sequence, raw)
        body = raw[16:]
        reply: bytes | None = None
        keep = True
        if command_id == BIND_TRANSCEIVER:
            (system_id, password, system_type), rest = _cstrings(body, 3)
            received.fields = {
                "system_id": system_id, "password": password, "system_type": system_type,
                "interface_version": rest[0],
            }  # fmt: skip
            ok = system_id == self.system_id and password == self.password
            conn.bound = ok
            if ok:
                self.binds += 1
            reply = _pdu(
                BIND_TRANSCEIVER_RESP, 0 if ok else ESME_RINVPASWD, sequence, b"TESTSMSC\0"
            )
        elif command_id == SUBMIT_SM:
            submit = smpp34.decode(raw)  # the independent decode
            received.submit = submit
            answer = self.answers.popleft() if self.answers else Answer.OK
            received.fields = {"answer": answer}
            if answer is Answer.OK:
                self._next_id += 1
                message_id = (
                    self.message_ids.popleft() if self.message_ids else f"{self._next_id:08X}"
                )
                self.accepted.append((message_id, submit))
                received.fields["message_id"] = message_id
                reply = _pdu(SUBMIT_SM_RESP, 0, sequence, message_id.encode() + b"\0")
            elif answer is Answer.NO_ANSWER:
                self._held.append(sequence)
            elif answer is Answer.DROP:
                keep = False
            else:
                reply = _pdu(SUBMIT_SM_RESP, STATUS[answer], sequence, b"\0")
        elif command_id == ENQUIRE_LINK:
            reply = _pdu(ENQUIRE_LINK_RESP, 0, sequence)
        elif command_id == UNBIND:
            reply = _pdu(UNBIND_RESP, 0, sequence)
            keep = False
        elif command_id in (DELIVER_SM_RESP, GENERIC_NACK):
            future = self._pending.pop(sequence, None)
            if future is not None and not future.done():
                future.set_result(status)
        elif not command_id & 0x80000000:
            reply = _pdu(GENERIC_NACK, 0x03, sequence)
        await self._record(received)
        if reply is not None:
            with contextlib.suppress(ConnectionError):
                conn.writer.write(reply)
                await conn.writer.drain()
        return keep


class SmscThread:
    """A :class:`TestSmsc` on an event loop of its own thread, for tests that drive the
    real gateway (a subprocess) synchronously: ``with SmscThread() as smsc:``, then
    ``smsc.port``, ``smsc.call(smsc.smsc.send_receipt(...))`` and :meth:`wait_for`.
    Reading ``smsc.smsc.received`` from the test's thread is safe between calls: the
    list only grows, one append at a time."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.smsc = TestSmsc(**options)

    @property
    def port(self) -> int:
        return self.smsc.port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the SMSC's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until ``condition`` (read on the SMSC's loop) holds, or fail the test."""
        self.call(self.smsc.wait_for(condition, timeout), timeout + 5)

    def __enter__(self) -> SmscThread:
        self._thread.start()
        self.call(self.smsc.__aenter__())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.smsc.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
