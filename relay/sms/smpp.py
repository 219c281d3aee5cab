"""The gateway as an ESME: an SMPP 3.4 session to the operator's SMSC, on asyncio.

What the session does (SMPP 3.4 section numbers):

- **Bind** as a transceiver (4.1.5 ``bind_transceiver``: ``system_id``, ``password``,
  ``system_type``, interface version 0x34), over TCP or TLS (``[sms] tls``: the system's
  trust store, the host name checked), so submits and receipts share one connection.
- **Keep-alive**: after ``[sms] enquire_link_interval`` seconds without a PDU from the
  SMSC an ``enquire_link`` (4.11) is sent; no answer within ``response_timeout`` ends the
  connection. The SMSC's own ``enquire_link`` and ``unbind`` (4.2) are answered.
- **Reconnect** after any loss, with a pause of 1 s doubling to 60 s; a bind refused
  (wrong password) is retried the same way and its reason kept in :attr:`EsmeClient.last_error`.
- **Submit window**: at most ``[sms] submit_window`` ``submit_sm`` (4.4) wait for their
  ``submit_sm_resp`` at once; each part asks for a receipt (``registered_delivery`` 1,
  5.2.17) and its outcome is one of :class:`Outcome`:

  - ``accepted``: status 0, with the SMSC's ``message_id``;
  - ``deferred``: ESME_RTHROTTLED or ESME_RMSGQFUL (the SMSC asks to slow down), no
    session to send on, no answer within ``response_timeout``, or the connection lost
    after the PDU was written. The last two set ``maybe_duplicate``: the SMSC may have
    taken the SMS, and sending it again may deliver it twice (the price of at-least-once
    delivery, as for mail in ARCHITECTURE.md §1);
  - ``failed``: any other ``command_status``, in words (:data:`COMMAND_STATUS`, 5.1.3).

- **Delivery receipts** (``deliver_sm`` with ``esm_class`` message type 0x04 or 0x20,
  5.2.12) go to the receipt callback, read by :mod:`relay.sms.inbound` (TLVs and the
  Appendix B text, both kept with the raw octets); any other ``deliver_sm`` is a mobile
  originated message (a reply such as STOP) and goes to the MO callback.
  ``deliver_sm_resp`` is sent only after the callback returned, so a receipt or an MO
  is acknowledged once the caller has it (recorded durably, for the queue); a callback
  that raises is answered ESME_RX_T_APPN (temporary: the SMSC delivers it again).
- **Sender ID** (5.2.5, 5.2.6; 3GPP TS 23.040 section 9.1.2.5): alphanumeric (11 at
  most) as TON 5 NPI 0; an international number as TON 1 NPI 1 without the ``+``;
  destinations are always international (TON 1 NPI 1).

Library: the PDUs are written and read with **smpplib** (python-smpplib 2.2,
``smpplib.smpp.make_pdu``/``parse_pdu``: every SMPP 3.4 PDU and TLV, maintained,
pure Python, no dependency but ``six``). Its ``Client`` class is not used: it is a
blocking socket loop (one thread would have to read while another writes, with TLS
too) with no submit window and no response timers. The framing (a 4-octet length,
3.2) is simple, so the session is written here on asyncio streams: no thread, the
timers are the event loop's, and TLS is :mod:`ssl`'s. The other candidates: aiosmpplib
(asyncio) encodes the text and splits the segments itself from a ``str``, where the
certified octets must be exactly those :mod:`relay.sms.encoding` made, and acknowledges
PDUs on its own; smpp34 (a Rust core) acknowledges ``deliver_sm`` before Python sees it
(a receipt could be acknowledged and then lost in a crash) and verifies TLS only
against the system store. smpp34 is what the test SMSC (tests/smsc.py) decodes with, so
the PDUs sent here are checked by a second, independent codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

# smpplib: python-smpplib's PDU codec; see the module docstring for why not its Client.
from smpplib import smpp as smpplib_pdu

from relay.config import Config, smsc_password
from relay.logs import log_failure, printable
from relay.sms.encoding import EncodedSms
from relay.sms.inbound import (
    NPI_ISDN,
    TON_INTERNATIONAL,
    DeliveryReceipt,
    MobileOriginated,
    is_receipt,
    mo_from_pdu,
    pdu_text,
    receipt_from_pdu,
    unreadable_mo,
    unreadable_receipt,
)

__all__ = [
    "COMMAND_STATUS",
    "EsmeClient",
    "Outcome",
    "Sender",
    "SmscSettings",
    "SubmitResult",
    "sender_address",
    "status_sentence",
]

log = logging.getLogger("certifica/sms")
_Read = TypeVar("_Read", DeliveryReceipt, MobileOriginated)
# smpplib logs one warning per vendor TLV it skips (operators add them to every receipt).
logging.getLogger("smpplib.command").setLevel(logging.ERROR)

INTERFACE_VERSION = 0x34
HEADER = struct.Struct(">IIII")  # command_length, command_id, command_status, sequence_number
MAX_PDU = 65536  # no SMPP 3.4 PDU comes near; a larger length means a broken stream
GENERIC_NACK = 0x80000000
ESME_ROK = 0x00
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64
TON_ALPHANUMERIC = 5
NPI_UNKNOWN = 0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0

# SMPP 3.4 section 5.1.3, command_status: the name and what it means, in words.
COMMAND_STATUS: dict[int, tuple[str, str]] = {
    0x00: ("ESME_ROK", "no error"),
    0x01: ("ESME_RINVMSGLEN", "the message length is invalid"),
    0x02: ("ESME_RINVCMDLEN", "the command length is invalid"),
    0x03: ("ESME_RINVCMDID", "the command is not known"),
    0x04: ("ESME_RINVBNDSTS", "the command is not allowed in the current bind state"),
    0x05: ("ESME_RALYBND", "the gateway is already bound"),
    0x06: ("ESME_RINVPRTFLG", "the priority flag is invalid"),
    0x07: ("ESME_RINVREGDLVFLG", "the request for a delivery receipt is invalid"),
    0x08: ("ESME_RSYSERR", "the SMSC had a system error"),
    0x0A: ("ESME_RINVSRCADR", "the sender ID was refused"),
    0x0B: ("ESME_RINVDSTADR", "the destination number was refused"),
    0x0C: ("ESME_RINVMSGID", "the message ID is invalid"),
    0x0D: ("ESME_RBINDFAIL", "the bind failed"),
    0x0E: ("ESME_RINVPASWD", "the password was refused"),
    0x0F: ("ESME_RINVSYSID", "the system_id was refused"),
    0x11: ("ESME_RCANCELFAIL", "cancelling the message failed"),
    0x13: ("ESME_RREPLACEFAIL", "replacing the message failed"),
    0x14: ("ESME_RMSGQFUL", "the SMSC's message queue is full"),
    0x15: ("ESME_RINVSERTYP", "the service type is invalid"),
    0x33: ("ESME_RINVNUMDESTS", "the number of destinations is invalid"),
    0x34: ("ESME_RINVDLNAME", "the distribution list name is invalid"),
    0x40: ("ESME_RINVDESTFLAG", "the destination flag is invalid"),
    0x42: ("ESME_RINVSUBREP", "the submit-with-replace request is invalid"),
    0x43: ("ESME_RINVESMCLASS", "the esm_class is invalid"),
    0x44: ("ESME_RCNTSUBDL", "a distribution list cannot be submitted to"),
    0x45: ("ESME_RSUBMITFAIL", "the submission failed"),
    0x48: ("ESME_RINVSRCTON", "the sender's type of number is invalid"),
    0x49: ("ESME_RINVSRCNPI", "the sender's numbering plan is invalid"),
    0x50: ("ESME_RINVDSTTON", "the destination's type of number is invalid"),
    0x51: ("ESME_RINVDSTNPI", "the destination's numbering plan is invalid"),
    0x53: ("ESME_RINVSYSTYP", "the system_type was refused"),
    0x54: ("ESME_RINVREPFLAG", "the replace-if-present flag is invalid"),
    0x55: ("ESME_RINVNUMMSGS", "the number of messages is invalid"),
    0x58: ("ESME_RTHROTTLED", "too many messages were sent too fast (throttling)"),
    0x61: ("ESME_RINVSCHED", "the scheduled delivery time is invalid"),
    0x62: ("ESME_RINVEXPIRY", "the validity period is invalid"),
    0x63: ("ESME_RINVDFTMSGID", "the predefined message is invalid or not found"),
    0x64: ("ESME_RX_T_APPN", "the receiving application had a temporary error"),
    0x65: ("ESME_RX_P_APPN", "the receiving application had a permanent error"),
    0x66: ("ESME_RX_R_APPN", "the receiving application rejected the message"),
    0x67: ("ESME_RQUERYFAIL", "querying the message failed"),
    0xC0: ("ESME_RINVOPTPARSTREAM", "the optional parameters are malformed"),
    0xC1: ("ESME_ROPTPARNOTALLWD", "an optional parameter is not allowed"),
    0xC2: ("ESME_RINVPARLEN", "a parameter has an invalid length"),
    0xC3: ("ESME_RMISSINGOPTPARAM", "an expected optional parameter is missing"),
    0xC4: ("ESME_RINVOPTPARAMVAL", "an optional parameter has an invalid value"),
    0xFE: ("ESME_RDELIVERYFAILURE", "delivery failed"),
    0xFF: ("ESME_RUNKNOWNERR", "an unknown error occurred"),
}
_DEFERRED_STATUSES = frozenset({ESME_RTHROTTLED, ESME_RMSGQFUL})


def status_sentence(status: int) -> str:
    """``command_status`` in words: ``the destination number was refused
    (ESME_RINVDSTADR, 0x0000000B)``."""
    name, words = COMMAND_STATUS.get(status, ("", ""))
    if not name:
        kind = "vendor-specific" if 0x400 <= status <= 0x4FF else "reserved"
        return f"an error the standard does not name ({kind}, 0x{status:08X})"
    return f"{words} ({name}, 0x{status:08X})"


class Outcome(enum.StrEnum):
    """How one ``submit_sm`` ended (module docstring)."""

    ACCEPTED = "accepted"
    DEFERRED = "deferred"
    FAILED = "failed"


@dataclass(frozen=True)
class SubmitResult:
    """The outcome of one part: the SMSC's ``message_id`` when accepted, else a sentence."""

    outcome: Outcome
    message_id: str = ""
    command_status: int | None = None
    sentence: str = ""
    maybe_duplicate: bool = False


@dataclass(frozen=True)
class Sender:
    """A ``source_addr`` with its TON and NPI."""

    addr: str
    ton: int
    npi: int


def sender_address(text: str) -> Sender:
    """The SMPP source address of a sender ID (``ACME`` or ``+34600111222``)."""
    if text.startswith("+") and text[1:].isdigit():
        return Sender(text[1:], TON_INTERNATIONAL, NPI_ISDN)
    return Sender(text, TON_ALPHANUMERIC, NPI_UNKNOWN)


@dataclass(frozen=True)
class SmscSettings:
    """Where and how to bind: from ``[sms]`` (:meth:`from_config`), or set by a test."""

    host: str
    port: int
    system_id: str
    password: str
    system_type: str = ""
    ssl_context: ssl.SSLContext | None = None
    submit_window: int = 10
    enquire_link_interval: float = 30.0
    response_timeout: float = 30.0
    connect_timeout: float = 30.0
    backoff_first: float = BACKOFF_FIRST
    backoff_max: float = BACKOFF_MAX

    @classmethod
    def from_config(cls, cfg: Config) -> SmscSettings:
        from relay.config import parse_endpoint

        sms = cfg.sms
        where = str(cfg.source or "(embedded defaults)")
        endpoint = parse_endpoint(sms.smsc, "sms.smsc", where)
        context = ssl.create_default_context() if sms.tls else None
        return cls(
            host=endpoint.host,
            port=endpoint.port,
            system_id=sms.system_id,
            password=smsc_password(cfg),
            system_type=sms.system_type,
            ssl_context=context,
            submit_window=sms.submit_window,
            enquire_link_interval=sms.enquire_link_interval,
            response_timeout=sms.response_timeout,
        )


ReceiptHandler = Callable[[DeliveryReceipt], Awaitable[None]]
MoHandler = Callable[[MobileOriginated], Awaitable[None]]


# The connection ended while a response was awaited: a builtin class, caught inside this
# module only (every end becomes a SubmitResult or EsmeClient.last_error).
_Lost = ConnectionAbortedError


class _Sequence:
    """What smpplib's PDU constructors ask of a "client": sequence numbers (3.2: 1 to
    0x7FFFFFFF, then round again)."""

    def __init__(self) -> None:
        self.sequence = 0

    def next_sequence(self) -> int:
        self.sequence = self.sequence % 0x7FFFFFFF + 1
        return self.sequence


@dataclass
class _Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    last_received: float = field(default_factory=time.monotonic)
    closed: bool = False


async def _ignore_receipt(receipt: DeliveryReceipt) -> None:
    log.info("receipt for %s (%s) with no handler", printable(receipt.message_id), receipt.state)


async def _ignore_mo(message: MobileOriginated) -> None:
    log.info("message from %s with no handler", printable(message.source_addr))


class EsmeClient:
    """One SMPP transceiver session to the SMSC, kept up by :meth:`run` (module docstring).

    Use: ``task = asyncio.create_task(client.run())``, then ``await client.submit(...)``
    from any task; ``await client.stop()`` unbinds and ends :meth:`run`."""

    def __init__(
        self,
        settings: SmscSettings,
        on_receipt: ReceiptHandler = _ignore_receipt,
        on_mo: MoHandler = _ignore_mo,
    ) -> None:
        self.settings = settings
        self.on_receipt = on_receipt
        self.on_mo = on_mo
        self.bound = asyncio.Event()
        self.unbound = asyncio.Event()  # set when an attempt to bind failed, until a bind
        self.binds = 0  # successful binds so far (1 + reconnections)
        self.last_error = ""
        self._sequence = _Sequence()
        self._window = asyncio.Semaphore(settings.submit_window)
        self._session: _Session | None = None
        self._stopping = False
        self._stopped = asyncio.Event()
        self._attempt_error = ""
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the connection's life ------------------------------------------------

    async def run(self) -> None:
        """Connect, bind, serve, and again after each loss, until :meth:`stop`."""
        pause = self.settings.backoff_first
        while not self._stopping:
            binds = self.binds
            try:
                await self._connect_and_serve()
            except (OSError, TimeoutError, ssl.SSLError, _Lost, asyncio.IncompleteReadError) as err:
                self.last_error = self._attempt_error or _connection_error(err)
            except Exception:
                self.last_error = "an internal error (logged)"
                log_failure(log, "the session with the SMSC ended")
            if self._stopping:
                break
            if self.binds > binds:  # a session was up: start short again
                pause = self.settings.backoff_first
            self.unbound.set()
            log.warning(
                "not bound to %s:%d (%s); again in %.1f s",
                self.settings.host, self.settings.port, self.last_error, pause,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), pause)
            pause = min(pause * 2, self.settings.backoff_max)

    async def stop(self) -> None:
        """Unbind (4.2) and close; what is still awaited is deferred. :meth:`run` ends."""
        self._stopping = True
        self._stopped.set()
        session = self._session
        if session is not None and not session.closed and self.bound.is_set():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self._request(session, "unbind"), self.settings.response_timeout
                )
        if session is not None:
            self._close(session)

    async def _connect_and_serve(self) -> None:
        s = self.settings
        self._attempt_error = ""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(s.host, s.port, ssl=s.ssl_context), s.connect_timeout
        )
        session = _Session(reader, writer)
        self._session = session
        reading = asyncio.create_task(self._read_loop(session))
        # The stream's end fails what is awaited at once (the bind's response too).
        reading.add_done_callback(lambda _task: self._close(session))
        try:
            resp = await asyncio.wait_for(
                self._request(
                    session,
                    "bind_transceiver",
                    system_id=s.system_id,
                    password=s.password,
                    system_type=s.system_type,
                    interface_version=INTERFACE_VERSION,
                    addr_ton=0,
                    addr_npi=0,
                    address_range="",
                ),
                s.response_timeout,
            )
            if resp.status != ESME_ROK:
                self._attempt_error = f"the SMSC refused the bind: {status_sentence(resp.status)}"
                return
            if self._stopping:
                return
            self.binds += 1
            self.last_error = ""
            self.unbound.clear()
            self.bound.set()
            log.info("bound to %s:%d as %s (transceiver)", s.host, s.port, printable(s.system_id))
            keepalive = asyncio.create_task(self._keepalive(session))
            try:
                await reading
            finally:
                keepalive.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keepalive
        finally:
            self._close(session)
            if not reading.done():
                reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reading
            self.last_error = self._attempt_error or "the SMSC closed the connection"

    def _close(self, session: _Session) -> None:
        if self._session is session:
            self.bound.clear()
            self._session = None
        if session.closed:
            return
        session.closed = True
        for future in session.pending.values():
            if not future.done():
                future.set_exception(_Lost())
        session.pending.clear()
        session.writer.close()

    async def _keepalive(self, session: _Session) -> None:
        interval = self.settings.enquire_link_interval
        while not session.closed:
            idle = time.monotonic() - session.last_received
            if idle < interval:
                await asyncio.sleep(interval - idle)
                continue
            try:
                await asyncio.wait_for(
                    self._request(session, "enquire_link"), self.settings.response_timeout
                )
            except (TimeoutError, _Lost, OSError):
                self._attempt_error = "the SMSC did not answer enquire_link"
                self._close(session)
                return

    # -- PDUs -------------------------------------------------------------------

    def _make(self, command: str, **fields: Any) -> Any:
        pdu = smpplib_pdu.make_pdu(command, client=self._sequence, **fields)
        pdu.sequence = self._sequence.next_sequence()
        return pdu

    async def _write(self, session: _Session, data: bytes) -> None:
        if session.closed:
            raise _Lost()
        async with self._write_lock:
            session.writer.write(data)
            await session.writer.drain()

    async def _request(self, session: _Session, command: str, **fields: Any) -> Any:
        """Send a request PDU and wait for its response (without a time limit: callers
        bound it)."""
        pdu = self._make(command, **fields)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        session.pending[pdu.sequence] = future
        try:
            await self._write(session, pdu.generate())
            return await future
        finally:
            session.pending.pop(pdu.sequence, None)

    async def _respond(self, session: _Session, command: str, sequence: int, status: int) -> None:
        pdu = smpplib_pdu.make_pdu(command, client=self._sequence, status=status)
        pdu.sequence = sequence
        pdu.status = status
        with contextlib.suppress(_Lost, OSError):
            await self._write(session, pdu.generate())

    async def _read_loop(self, session: _Session) -> None:
        reader = session.reader
        while not session.closed:
            header = await reader.readexactly(4)
            (length,) = struct.unpack(">I", header)
            if not HEADER.size <= length <= MAX_PDU:
                self._attempt_error = f"the SMSC sent a PDU of {length} octets"
                return
            raw = header + await reader.readexactly(length - 4)
            session.last_received = time.monotonic()
            _length, command_id, status, sequence = HEADER.unpack_from(raw)
            try:
                pdu = smpplib_pdu.parse_pdu(
                    raw, client=self._sequence, allow_unknown_opt_params=True
                )
            except Exception:
                pdu = None
            if command_id & 0x80000000:  # a response (or generic_nack)
                future = session.pending.get(sequence)
                if future is not None and not future.done():
                    if pdu is None or command_id == GENERIC_NACK:
                        future.set_result(_Nack(status))
                    else:
                        future.set_result(pdu)
                continue
            if pdu is None:
                await self._respond(session, "generic_nack", sequence, 0x03)
                continue
            if pdu.command == "enquire_link":
                await self._respond(session, "enquire_link_resp", sequence, ESME_ROK)
            elif pdu.command == "unbind":
                await self._respond(session, "unbind_resp", sequence, ESME_ROK)
                self._attempt_error = "the SMSC unbound"
                return
            elif pdu.command in ("deliver_sm", "data_sm"):
                task = asyncio.create_task(self._deliver(session, pdu, raw))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                await self._respond(session, "generic_nack", sequence, 0x03)

    async def _deliver(self, session: _Session, pdu: Any, raw: bytes) -> None:
        resp = "deliver_sm_resp" if pdu.command == "deliver_sm" else "data_sm_resp"
        try:
            if is_receipt(pdu.esm_class or 0):
                await self.on_receipt(_read(receipt_from_pdu, unreadable_receipt, pdu, raw))
            else:
                await self.on_mo(_read(mo_from_pdu, unreadable_mo, pdu, raw))
        except Exception:  # not recorded (the database failed): the SMSC sends it again
            log_failure(log, "a %s could not be handled; the SMSC will send it again", resp)
            await self._respond(session, resp, pdu.sequence, ESME_RX_T_APPN)
            return
        await self._respond(session, resp, pdu.sequence, ESME_ROK)

    # -- submitting -------------------------------------------------------------

    async def submit(
        self, destination: str, sender: Sender, short_message: bytes, data_coding: int,
        esm_class: int = 0,
    ) -> SubmitResult:  # fmt: skip
        """Submit one part to ``destination`` (E.164 digits without ``+``); never raises
        on the SMSC's behaviour: every end is a :class:`SubmitResult`."""
        timeout = self.settings.response_timeout
        async with self._window:
            try:
                await asyncio.wait_for(self.bound.wait(), timeout)
            except TimeoutError:
                return SubmitResult(
                    Outcome.DEFERRED, sentence=f"not bound to the SMSC ({self.last_error})"
                )
            session = self._session
            if session is None:
                return SubmitResult(Outcome.DEFERRED, sentence="not bound to the SMSC")
            pdu = self._make(
                "submit_sm",
                service_type="",
                source_addr_ton=sender.ton,
                source_addr_npi=sender.npi,
                source_addr=sender.addr,
                dest_addr_ton=TON_INTERNATIONAL,
                dest_addr_npi=NPI_ISDN,
                destination_addr=destination,
                esm_class=esm_class,
                protocol_id=0,
                priority_flag=0,
                schedule_delivery_time="",
                validity_period="",
                registered_delivery=1,
                replace_if_present_flag=0,
                data_coding=data_coding,
                sm_default_msg_id=0,
                short_message=short_message,
            )
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            session.pending[pdu.sequence] = future
            try:
                try:
                    await self._write(session, pdu.generate())
                except (_Lost, OSError):
                    return SubmitResult(
                        Outcome.DEFERRED, sentence="the connection to the SMSC was lost"
                    )
                resp = await asyncio.wait_for(future, timeout)
            except TimeoutError:
                return SubmitResult(
                    Outcome.DEFERRED,
                    sentence=f"the SMSC did not answer within {timeout:g} s: the outcome is "
                    "unknown, sending again may deliver the SMS twice",
                    maybe_duplicate=True,
                )
            except _Lost:
                return SubmitResult(
                    Outcome.DEFERRED,
                    sentence="the connection to the SMSC was lost before its answer: the "
                    "outcome is unknown, sending again may deliver the SMS twice",
                    maybe_duplicate=True,
                )
            finally:
                session.pending.pop(pdu.sequence, None)
        status = resp.status
        if status == ESME_ROK:
            return SubmitResult(
                Outcome.ACCEPTED, message_id=pdu_text(getattr(resp, "message_id", "")),
                command_status=status,
            )  # fmt: skip
        sentence = f"the SMSC refused the SMS: {status_sentence(status)}"
        if status in _DEFERRED_STATUSES:
            return SubmitResult(Outcome.DEFERRED, command_status=status, sentence=sentence)
        return SubmitResult(Outcome.FAILED, command_status=status, sentence=sentence)

    async def submit_encoded(
        self, destination: str, sender: Sender, sms: EncodedSms
    ) -> list[SubmitResult]:
        """Submit every part of ``sms`` (at once, within the window); one result each."""
        return list(
            await asyncio.gather(
                *(
                    self.submit(destination, sender, part, sms.data_coding, sms.esm_class)
                    for part in sms.parts
                )
            )
        )


def _read(
    reader: Callable[[Any, bytes], _Read], fallback: Callable[[Any, bytes], _Read], pdu: Any,
    raw: bytes,
) -> _Read:  # fmt: skip
    """``reader(pdu, raw)``, or ``fallback(pdu, raw)`` (the raw PDU, nothing read) when
    the PDU cannot be read: what an SMSC sent is kept and acknowledged, never refused
    for its content (refused, it would come back as unreadable, forever)."""
    try:
        return reader(pdu, raw)
    except Exception:
        log_failure(log, "a deliver_sm could not be read; kept as received")
        return fallback(pdu, raw)


def _connection_error(err: BaseException) -> str:
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"the SMSC's TLS certificate was not accepted ({err.verify_message})"
    if isinstance(err, ssl.SSLError):
        return f"TLS with the SMSC failed ({err.reason or err.__class__.__name__})"
    if isinstance(err, asyncio.IncompleteReadError | ConnectionResetError | _Lost):
        return "the SMSC closed the connection"
    if isinstance(err, TimeoutError):
        return "the SMSC did not answer in time"
    if isinstance(err, ConnectionRefusedError):
        return "the SMSC refused the connection"
    return f"the connection to the SMSC failed ({err.__class__.__name__})"


@dataclass(frozen=True)
class _Nack:
    """A generic_nack, or a response smpplib could not read: only its status counts."""

    status: int
