"""A small authoritative DNS server for tests: the zone is whatever the test writes.

It answers on 127.0.0.1, UDP and TCP on one port the OS picks, from a background
thread, with dnslib building the packets::

    with DNSServer() as dns:
        dns.add("example.test", "MX", "10 mx1.example.test.")
        dns.add("mx1.example.test", "A", "127.0.0.2")
        dns.add("sel._domainkey.example.test", "TXT", "v=DKIM1; k=rsa; p=MIIB...")
        dns.servfail("broken.test")    # SERVFAIL for broken.test and names below it
        dns.drop("slow.test")          # never answers: the resolver times out
        cfg_text = dns.config_toml()   # '[dns]\\nnameservers = ["127.0.0.1:PORT"]\\n...'

How it answers a query for (name, type):

* the records of that type at that name, following a CNAME at the name (8 at most);
* NOERROR with no answer when the name exists (it, or a name below it, has records)
  but has no record of that type: that is how "no MX" looks (RFC 2308 NODATA);
* NXDOMAIN when neither the name nor anything below it has records;
* every answer is authoritative; a UDP answer over 512 bytes (or the client's EDNS
  size) is sent truncated, so the client retries over TCP, as for long DKIM keys.

Record values are in zone-file syntax (``"10 mx1.example.test."``, ``"::1"``), except
TXT, which takes the text itself and splits it into 255-byte strings. ``queries``
lists every (name, type) asked, for tests that check what was looked up.

For a pytest fixture, use the ``dns_server`` fixture below (register this module with
``pytest_plugins``) or make one of the scope you need around ``with DNSServer()``.
"""

from __future__ import annotations

import asyncio
import errno
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, TXT, DNSError, DNSHeader, DNSRecord

UDP_LIMIT = 512  # RFC 1035 §4.2.1, without EDNS
CNAME_DEPTH = 8


def _norm(name: str) -> str:
    return name.lower().rstrip(".")


def _under(name: str, names: set[str]) -> bool:
    """Whether ``name`` is one of ``names`` or below one of them."""
    return any(name == n or name.endswith("." + n) for n in names)


class DNSServer:
    """An authoritative server for the records a test adds; see the module docstring."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.queries: list[tuple[str, str]] = []
        self._records: dict[str, list[RR]] = {}
        self._servfail: set[str] = set()
        self._drop: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- the zone ----------------------------------------------------------------------
    def add(self, name: str, rtype: str, value: str, ttl: int = 60) -> None:
        """Add one record, e.g. ``add("example.test", "MX", "10 mx1.example.test.")``."""
        name, rtype = _norm(name), rtype.upper()
        if rtype == "TXT":
            data = value.encode()
            chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
            record = RR(name + ".", QTYPE.TXT, ttl=ttl, rdata=TXT(chunks))
        else:
            (record,) = RR.fromZone(f"{name}. {ttl} IN {rtype} {value}")
        with self._lock:
            self._records.setdefault(name, []).append(record)

    def remove(self, name: str) -> None:
        """Forget every record at ``name`` and every switch set on it."""
        name = _norm(name)
        with self._lock:
            self._records.pop(name, None)
            self._servfail.discard(name)
            self._drop.discard(name)

    def servfail(self, name: str) -> None:
        """Answer SERVFAIL for ``name`` and every name below it."""
        with self._lock:
            self._servfail.add(_norm(name))

    def drop(self, name: str) -> None:
        """Never answer for ``name`` and names below it: the resolver times out."""
        with self._lock:
            self._drop.add(_norm(name))

    @property
    def address(self) -> str:
        """``host:port``, as ``[dns] nameservers`` takes it."""
        return f"{self.host}:{self.port}"

    def config_toml(self, timeout: float = 2.0) -> str:
        """A ``[dns]`` table pointing the gateway at this server."""
        return f'[dns]\nnameservers = ["{self.address}"]\ntimeout = {float(timeout)}\n'

    # -- answering ---------------------------------------------------------------------
    def answer(self, packet: bytes, limit: int | None) -> bytes | None:
        """The reply to one query packet; None to stay silent. ``limit``: UDP size."""
        try:
            request = DNSRecord.parse(packet)
        except DNSError:
            return None
        if not request.questions:
            return None
        name, qtype = _norm(str(request.q.qname)), QTYPE.get(request.q.qtype)
        reply = request.reply(ra=0, aa=1)
        with self._lock:
            self.queries.append((name, str(qtype)))
            if _under(name, self._drop):
                return None
            if _under(name, self._servfail):
                reply.header.rcode = RCODE.SERVFAIL
                return reply.pack()
            for _ in range(CNAME_DEPTH):
                here = self._records.get(name, [])
                wanted = [r for r in here if QTYPE.get(r.rtype) == qtype]
                cnames = [r for r in here if r.rtype == QTYPE.CNAME]
                if wanted or not cnames or qtype == "CNAME":
                    for record in wanted:
                        reply.add_answer(record)
                    if not wanted and not any(
                        n == name or n.endswith("." + name) for n in self._records
                    ):
                        reply.header.rcode = RCODE.NXDOMAIN
                    break
                reply.add_answer(cnames[0])
                name = _norm(str(cnames[0].rdata.label))
        data = reply.pack()
        if limit is not None:
            opt = [r for r in request.ar if r.rtype == QTYPE.OPT]
            size = max(UDP_LIMIT, opt[0].edns_len) if opt else UDP_LIMIT
            if len(data) > size:
                header = DNSHeader(id=request.header.id, qr=1, aa=1, tc=1, rd=request.header.rd)
                data = DNSRecord(header, q=request.q).pack()
        return data

    # -- the sockets -------------------------------------------------------------------
    def start(self) -> DNSServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._bind(), self._loop).result(10)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._unbind(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def _bind(self) -> None:
        server = self

        class _UDP(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                reply = server.answer(data, UDP_LIMIT)
                if reply is not None:
                    self.transport.sendto(reply, addr)  # type: ignore[attr-defined]

        # UDP and TCP on the same port: take a free UDP port, then TCP on it (retry if busy).
        for _ in range(50):
            udp, _ = await self._loop.create_datagram_endpoint(_UDP, local_addr=(self.host, 0))
            port = udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError as err:
                udp.close()
                if err.errno != errno.EADDRINUSE:
                    raise
                continue
            self._udp, self.port = udp, port
            return
        raise RuntimeError("no port free for both UDP and TCP")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                reply = self.answer(await reader.readexactly(length), None)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _unbind(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._writers):
                writer.close()
            await self._tcp.wait_closed()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="session")
def dns_server() -> Iterator[DNSServer]:
    """One DNS server for the session; tests use names of their own."""
    with DNSServer() as server:
        yield server
