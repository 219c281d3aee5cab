"""The delivery client against real SMTP servers that misbehave on purpose.

:class:`Deliverer` runs in the test's own event loop, next to the servers: aiosmtpd
with the conftest :class:`Sink` as a well-behaved MX, and :class:`Scripted`, a small
asyncio server that goes silent, drops the connection after the final dot or refuses
RSET, where told. Every outcome is checked against RFC 5321's rules: 421 defers
everything not yet decided, a loss after the final dot is a possible duplicate, every
wait has a limit, and an idle session is reused only when it still works.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP

from relay.config import Config, DeliveryConfig, DNSConfig
from relay.delivery.client import DEFERRED, DELIVERED, FAILED, AttemptResult, Deliverer
from relay.delivery.routing import Hop, Router
from tests.conftest import Sink
from tests.dnsserver import DNSServer

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n"
QUEUED = "250 2.0.0 Ok: queued as F00001"
# Limits that prove a timeout fired without timing anything closely.
SHORT, GENEROUS = 0.5, 15.0


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def deliverer(routes: dict[str, int], **options: Any) -> Deliverer:
    cfg = Config(delivery=DeliveryConfig(routes={d: f"127.0.0.1:{p}" for d, p in routes.items()}))
    return Deliverer(
        Router(cfg),
        "certifica.test",
        False,
        options.pop("connect_timeout", 10.0),
        options.pop("command_timeout", 10.0),
        **options,
    )


async def send(d: Deliverer, domain: str, *rcpts: str) -> AttemptResult:
    return await d.attempt(domain, "alice@example.com", list(rcpts), MESSAGE)


class _CountedSMTP(SMTP):
    """aiosmtpd's server, counting connections opened and closed in its :class:`Counter`."""

    def __init__(self, counter: Counter, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = counter

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # aiosmtpd calls this again after STARTTLS, on the same TCP connection.
        peer = transport.get_extra_info("peername")
        if peer not in self.counter.peers:
            self.counter.peers.add(peer)
            self.counter.opened += 1
            self.counter.live.append(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counter.closed += 1
        super().connection_lost(exc)


class Counter:
    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self.live: list[_CountedSMTP] = []
        self.peers: set[Any] = set()

    async def until(self, predicate: Callable[[], bool], limit: float = GENEROUS) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            assert time.monotonic() < deadline, "the server never saw the expected close"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def aiosmtpd_sink(sink: Sink, host: str = "127.0.0.1") -> AsyncIterator[Counter]:
    counter = Counter()
    server = await asyncio.get_running_loop().create_server(
        lambda: _CountedSMTP(counter, sink, hostname="sink.test"), host, 0
    )
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield counter
    finally:
        server.close()
        await server.wait_closed()


class Scripted:
    """An SMTP server that follows a script: ``greeting=None`` never greets,
    ``ehlo=False`` never answers EHLO, ``data`` is the reply to DATA (or ``"stall"``),
    ``after_dot`` is a reply, ``"drop"`` (close without a word) or ``"stall"`` (never
    answer); ``rset`` is the reply to RSET."""

    def __init__(
        self,
        greeting: str | None = "220 faulty.test ESMTP",
        ehlo: bool = True,
        after_dot: str = QUEUED,
        rset: str = "250 2.0.0 Ok",
        data: str = "354 End data with <CR><LF>.<CR><LF>",
    ) -> None:
        self.greeting, self.ehlo, self.after_dot, self.rset = greeting, ehlo, after_dot, rset
        self.data = data
        self.connections = 0
        self.messages = 0
        self.rsets = 0
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        try:
            if self.greeting is None:
                await reader.read()  # until the client gives up
                return
            say(self.greeting)
            if not self.greeting.startswith("220"):
                return
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    if not self.ehlo:
                        await reader.read()
                        return
                    say("250-faulty.test\r\n250 8BITMIME")
                elif verb == b"DATA":
                    if self.data == "stall":
                        await reader.read()
                        return
                    say(self.data)
                    if not self.data.startswith("354"):
                        await writer.drain()
                        continue
                    await reader.readuntil(b"\r\n.\r\n")
                    self.messages += 1
                    if self.after_dot == "drop":
                        return
                    if self.after_dot == "stall":
                        await reader.read()
                        return
                    say(self.after_dot)
                elif verb == b"RSET":
                    self.rsets += 1
                    say(self.rset)
                    if self.rset.startswith("421"):
                        return
                elif verb == b"QUIT":
                    say("221 2.0.0 Bye")
                    return
                else:
                    say("250 2.0.0 Ok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Scripted]:
        server = await asyncio.start_server(self.handle, host, port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            await server.wait_closed()


# -- outcomes ------------------------------------------------------------------------------
def test_421_at_rcpt_defers_everything_not_yet_decided() -> None:
    def rcpt(address: str) -> str | None:
        if address.startswith("reject"):
            return "550 5.1.1 <reject@example.org>: Recipient address rejected"
        if address.startswith("shut"):
            return "421 4.3.2 Service shutting down"
        return None

    async def main() -> tuple[AttemptResult, AttemptResult, Sink, Counter]:
        sink = Sink(rcpt_reply=rcpt)
        async with aiosmtpd_sink(sink) as counter:
            d = deliverer({"example.org": sink.port}, reuse_seconds=30.0)
            try:
                first = await send(
                    d, "example.org", "reject@example.org", "ok@example.org", "shut@x", "later@x"
                )
                second = await send(d, "example.org", "again@example.org")
            finally:
                await d.close()
        return first, second, sink, counter

    first, second, sink, counter = run(main())
    by = {r.address: r for r in first.results}
    assert [r.address for r in first.results] == [
        "reject@example.org",
        "ok@example.org",
        "shut@x",
        "later@x",
    ]
    assert (by["reject@example.org"].status, by["reject@example.org"].code) == (FAILED, 550)
    for address in ("ok@example.org", "shut@x", "later@x"):
        assert (by[address].status, by[address].code) == (DEFERRED, 421), by[address]
        assert by[address].enhanced == "4.3.2"
    assert first.delivered_sha256 is None and first.hop == Hop("127.0.0.1", "127.0.0.1", sink.port)
    # The 421 closed that session: the next attempt needed a connection of its own.
    assert second.results[0].status == DELIVERED
    assert counter.opened == 2
    assert [m.rcpt_tos for m in sink.messages] == [["again@example.org"]]


def test_drop_after_final_dot_is_deferred_as_possible_duplicate() -> None:
    async def main() -> tuple[AttemptResult, Scripted]:
        async with Scripted(after_dot="drop").serving() as server:
            d = deliverer({"example.org": server.port}, reuse_seconds=30.0)
            try:
                return await send(d, "example.org", "a@example.org", "b@example.org"), server
            finally:
                await d.close()

    result, server = run(main())
    assert server.messages == 1
    for r in result.results:
        assert r.status == DEFERRED and r.code is None
        assert (
            r.text
            == f"lost connection with 127.0.0.1[127.0.0.1]:{server.port} after the end of data"
        )
        assert r.note is not None and r.note.startswith("possible duplicate: ")


def test_no_reply_to_final_dot_times_out_after_data_timeout() -> None:
    async def main() -> tuple[AttemptResult, Scripted, float]:
        async with Scripted(after_dot="stall").serving() as server:
            d = deliverer({"example.org": server.port}, data_timeout=SHORT)
            started = time.monotonic()
            try:
                result = await send(d, "example.org", "a@example.org")
            finally:
                await d.close()
            return result, server, time.monotonic() - started

    result, server, took = run(main())
    (r,) = result.results
    assert r.status == DEFERRED
    assert r.text == (
        f"timed out waiting for the reply to the end of data from "
        f"127.0.0.1[127.0.0.1]:{server.port}"
    )
    assert r.note is not None and r.note.startswith("possible duplicate: ")
    assert took < GENEROUS


def test_silent_server_is_deferred_within_greeting_timeout() -> None:
    async def main() -> tuple[AttemptResult, Scripted, float]:
        async with Scripted(greeting=None).serving() as server:
            d = deliverer({"example.org": server.port}, greeting_timeout=SHORT)
            started = time.monotonic()
            result = await send(d, "example.org", "a@example.org")
            await d.close()
            return result, server, time.monotonic() - started

    result, server, took = run(main())
    (r,) = result.results
    assert r.status == DEFERRED and r.note is None
    assert r.text == f"timed out waiting for the greeting from 127.0.0.1[127.0.0.1]:{server.port}"
    assert took < GENEROUS


def test_no_354_after_data_is_deferred_without_a_duplicate_note() -> None:
    """RFC 5321 §4.5.3.2.4: DATA waits 2 minutes for its 354; nothing was sent yet."""

    async def main() -> tuple[AttemptResult, Scripted, float]:
        async with Scripted(data="stall").serving() as server:
            d = deliverer({"example.org": server.port}, data_init_timeout=SHORT)
            started = time.monotonic()
            try:
                result = await send(d, "example.org", "a@example.org")
            finally:
                await d.close()
            return result, server, time.monotonic() - started

    result, server, took = run(main())
    (r,) = result.results
    assert r.status == DEFERRED and r.note is None
    assert r.text == (
        f"timed out waiting for the reply to DATA from 127.0.0.1[127.0.0.1]:{server.port}"
    )
    assert server.messages == 0 and result.delivered_sha256 is None
    assert took < GENEROUS


def test_refusal_of_data_decides_without_a_duplicate_note() -> None:
    async def main() -> tuple[AttemptResult, AttemptResult]:
        async with Scripted(data="554 5.7.1 Transaction failed: policy").serving() as server:
            d = deliverer({"example.org": server.port})
            failed = await send(d, "example.org", "a@example.org")
            await d.close()
        async with Scripted(data="451 4.3.0 Try again later").serving() as server:
            d = deliverer({"example.org": server.port})
            deferred = await send(d, "example.org", "a@example.org")
            await d.close()
        return failed, deferred

    failed, deferred = run(main())
    assert [(r.status, r.code, r.enhanced, r.note) for r in failed.results] == [
        (FAILED, 554, "5.7.1", None)
    ]
    assert [(r.status, r.code, r.note) for r in deferred.results] == [(DEFERRED, 451, None)]


def test_dots_are_stuffed_on_the_wire_and_the_delivered_hash_is_what_arrives() -> None:
    body = b"From: a@example.com\r\nSubject: dots\r\n\r\n.\r\n..two\r\n.three\r\nend\r\n"

    async def main() -> tuple[AttemptResult, Sink]:
        sink = Sink()
        async with aiosmtpd_sink(sink):
            d = deliverer({"example.org": sink.port})
            result = await d.attempt("example.org", "a@example.com", ["b@example.org"], body)
            await d.close()
        return result, sink

    result, sink = run(main())
    assert sink.messages[0].data == body
    assert result.delivered_sha256 == hashlib.sha256(body).hexdigest()


def test_command_without_reply_times_out_after_command_timeout() -> None:
    async def main() -> tuple[AttemptResult, Scripted]:
        async with Scripted(ehlo=False).serving() as server:
            d = deliverer({"example.org": server.port}, command_timeout=SHORT)
            result = await send(d, "example.org", "a@example.org")
            await d.close()
            return result, server

    result, server = run(main())
    (r,) = result.results
    assert r.status == DEFERRED
    assert r.text == (
        f"timed out waiting for the reply to EHLO from 127.0.0.1[127.0.0.1]:{server.port}"
    )


def test_refused_connection_is_deferred() -> None:
    async def main() -> tuple[AttemptResult, int]:
        async with Scripted().serving() as server:
            port = server.port
        d = deliverer({"example.org": port})  # nothing listens there any more
        result = await send(d, "example.org", "a@example.org")
        await d.close()
        return result, port

    result, port = run(main())
    (r,) = result.results
    assert r.status == DEFERRED
    assert r.text == f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"


# -- the next MX -------------------------------------------------------------------------
def test_4xx_greeting_moves_on_to_the_next_mx() -> None:
    async def main() -> tuple[AttemptResult, Sink, Scripted]:
        sink = Sink()
        async with aiosmtpd_sink(sink, "127.0.0.3"):
            busy = Scripted(greeting="421 4.3.2 Too busy, try another server")
            async with busy.serving("127.0.0.2", sink.port):
                with DNSServer() as dns:
                    dns.add("greet.test", "MX", "10 mx1.greet.test.")
                    dns.add("greet.test", "MX", "20 mx2.greet.test.")
                    dns.add("mx1.greet.test", "A", "127.0.0.2")
                    dns.add("mx2.greet.test", "A", "127.0.0.3")
                    cfg = Config(
                        delivery=DeliveryConfig(smtp_port=sink.port),
                        dns=DNSConfig(nameservers=(dns.address,), timeout=2.0),
                    )
                    d = Deliverer(Router(cfg), "certifica.test", False, 10.0, 10.0)
                    result = await send(d, "greet.test", "bob@greet.test")
                    await d.close()
        return result, sink, busy

    result, sink, busy = run(main())
    assert busy.connections == 1
    assert result.results[0].status == DELIVERED
    assert result.hop == Hop("mx2.greet.test", "127.0.0.3", sink.port)
    assert [m.rcpt_tos for m in sink.messages] == [["bob@greet.test"]]


# -- connection reuse ----------------------------------------------------------------------
def test_concurrent_attempts_keep_one_idle_connection_each_up_to_max_idle() -> None:
    """Four attempts at once open four sessions; with max_idle = 3 three stay idle and
    serve the next round of three without a new connection; the fourth is closed."""

    async def main() -> tuple[Counter, list[AttemptResult]]:
        sink = Sink()
        async with aiosmtpd_sink(sink) as counter:
            d = deliverer({"example.org": sink.port}, reuse_seconds=30.0, max_idle=3)
            first = await asyncio.gather(
                *(send(d, "example.org", f"a{i}@example.org") for i in range(4))
            )
            await counter.until(lambda: counter.closed == 1)  # the one beyond max_idle
            second = await asyncio.gather(
                *(send(d, "example.org", f"b{i}@example.org") for i in range(3))
            )
            opened_after = counter.opened
            await d.close()
            await counter.until(lambda: counter.closed == 4)
        assert opened_after == 4
        return counter, [*first, *second]

    counter, results = run(main())
    assert all(r.results[0].status == DELIVERED for r in results)
    assert counter.opened == 4


def test_two_attempts_in_a_row_share_one_connection() -> None:
    async def main() -> tuple[list[AttemptResult], Sink, Counter]:
        sink = Sink()
        async with aiosmtpd_sink(sink) as counter:
            # Two domains, one fixed route: one destination, one connection.
            d = deliverer({"example.org": sink.port, "example.net": sink.port}, reuse_seconds=30.0)
            results = [
                await send(d, "example.org", "one@example.org"),
                await send(d, "example.net", "two@example.net"),
                await send(d, "example.org", "three@example.org"),
            ]
            assert counter.closed == 0  # still idle, waiting for more
            await d.close()
            await counter.until(lambda: counter.closed == 1)
        return results, sink, counter

    results, sink, counter = run(main())
    assert [r.results[0].status for r in results] == [DELIVERED] * 3
    assert counter.opened == 1
    assert [m.rcpt_tos for m in sink.messages] == [
        ["one@example.org"],
        ["two@example.net"],
        ["three@example.org"],
    ]


def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def main() -> tuple[list[AttemptResult], Sink, Counter]:
        sink = Sink()
        async with aiosmtpd_sink(sink) as counter:
            d = deliverer({"example.org": sink.port}, reuse_seconds=30.0)
            first = await send(d, "example.org", "one@example.org")
            assert counter.live[0].transport is not None
            counter.live[0].transport.close()  # the remote's idle timeout
            await counter.until(lambda: counter.closed == 1)
            second = await send(d, "example.org", "two@example.org")
            await d.close()
        return [first, second], sink, counter

    results, sink, counter = run(main())
    assert [r.results[0].status for r in results] == [DELIVERED, DELIVERED]
    assert counter.opened == 2
    assert [m.rcpt_tos for m in sink.messages] == [["one@example.org"], ["two@example.org"]]


def test_refused_rset_discards_the_idle_connection() -> None:
    async def main() -> tuple[list[AttemptResult], Scripted]:
        async with Scripted(rset="421 4.4.2 faulty.test Error: timeout exceeded").serving() as s:
            d = deliverer({"example.org": s.port}, reuse_seconds=30.0)
            results = [
                await send(d, "example.org", "one@example.org"),
                await send(d, "example.org", "two@example.org"),
            ]
            await d.close()
        return results, s

    results, server = run(main())
    assert [r.results[0].status for r in results] == [DELIVERED, DELIVERED]
    assert server.rsets == 1  # the idle session was offered, tried and thrown away
    assert server.connections == 2 and server.messages == 2


def test_idle_connection_expires_and_concurrent_attempts_never_share() -> None:
    async def main() -> tuple[list[AttemptResult], Counter]:
        sink = Sink()
        async with aiosmtpd_sink(sink) as counter:
            d = deliverer({"example.org": sink.port}, reuse_seconds=SHORT)
            results = list(
                await asyncio.gather(
                    send(d, "example.org", "a@example.org"), send(d, "example.org", "b@example.org")
                )
            )
            assert counter.opened == 2  # one session each, never shared
            # At most one idle session per hop: the other one said goodbye.
            await counter.until(lambda: counter.closed >= 1)
            # After reuse_seconds the idle one is closed too (with QUIT) ...
            await counter.until(lambda: counter.closed == 2)
            # ... so the next attempt connects again.
            results.append(await send(d, "example.org", "c@example.org"))
            assert counter.opened == 3
            await d.close()
        return results, counter

    results, _ = run(main())
    assert [r.results[0].status for r in results] == [DELIVERED] * 3


def test_starttls_when_offered_and_the_session_keeps_it_when_reused() -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("sink.test").configure_cert(server_tls)

    async def main() -> tuple[list[AttemptResult], Counter]:
        sink = Sink()
        counter = Counter()
        server = await asyncio.get_running_loop().create_server(
            lambda: _CountedSMTP(counter, sink, hostname="sink.test", tls_context=server_tls),
            "127.0.0.1",
            0,
        )
        sink.port = server.sockets[0].getsockname()[1]
        d = deliverer({"example.org": sink.port}, reuse_seconds=30.0)
        try:
            results = [
                await send(d, "example.org", "one@example.org"),
                await send(d, "example.org", "two@example.org"),
            ]
        finally:
            await d.close()
            server.close()
            await server.wait_closed()
        return results, counter

    results, counter = run(main())
    assert counter.opened == 1
    for result in results:
        assert result.results[0].status == DELIVERED
        assert result.tls_version in ("TLSv1.2", "TLSv1.3") and result.tls_cipher
