"""MX resolution (RFC 5321 §5.1, RFC 7505) against a real DNS server, then end to end.

The unit tests ask :class:`Router` about names in a zone served by
:class:`tests.dnsserver.DNSServer`. The end-to-end tests run the gateway with
``[dns] nameservers`` pointing at that server and ``[delivery] smtp_port`` at an
aiosmtpd sink on 127.0.0.3, while the primary MX, 127.0.0.2, has nothing listening.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from relay.config import Config, DeliveryConfig, DNSConfig
from relay.delivery.routing import MX_ADDRESS_LIMIT, Hop, RouteError, Router
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer
from tests.test_certified_sending import generated_for, submit
from tests.test_delivery_outcomes import evidence_of

PORT = 2525
SHORT, GENEROUS = 0.5, 15.0


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        yield server


def router(dns: DNSServer, timeout: float = 2.0, routes: dict[str, str] | None = None) -> Router:
    return Router(
        Config(
            delivery=DeliveryConfig(smtp_port=PORT, routes=routes or {}),
            dns=DNSConfig(nameservers=(dns.address,), timeout=timeout),
        )
    )


def resolve(r: Router, domain: str) -> list[Hop]:
    return asyncio.run(r.resolve(domain))


def route_error(r: Router, domain: str) -> RouteError:
    with pytest.raises(RouteError) as caught:
        resolve(r, domain)
    return caught.value


# -- Router against the DNS ------------------------------------------------------------
def test_mx_hosts_by_preference_each_with_a_then_aaaa(dns: DNSServer) -> None:
    dns.add("pref.test", "MX", "30 mx3.pref.test.")
    dns.add("pref.test", "MX", "10 mx1.pref.test.")
    dns.add("pref.test", "MX", "20 mx2.pref.test.")
    dns.add("mx1.pref.test", "AAAA", "2001:db8::1")
    dns.add("mx1.pref.test", "A", "192.0.2.1")
    dns.add("mx2.pref.test", "A", "192.0.2.2")
    dns.add("mx3.pref.test", "A", "192.0.2.3")
    assert resolve(router(dns), "Pref.Test") == [
        Hop("mx1.pref.test", "192.0.2.1", PORT),
        Hop("mx1.pref.test", "2001:db8::1", PORT),
        Hop("mx2.pref.test", "192.0.2.2", PORT),
        Hop("mx3.pref.test", "192.0.2.3", PORT),
    ]


def test_equal_preferences_come_in_random_order(dns: DNSServer) -> None:
    dns.add("equal.test", "MX", "10 a.equal.test.")
    dns.add("equal.test", "MX", "10 b.equal.test.")
    dns.add("equal.test", "MX", "5 first.equal.test.")
    for name, ip in (("a", "192.0.2.10"), ("b", "192.0.2.11"), ("first", "192.0.2.9")):
        dns.add(f"{name}.equal.test", "A", ip)
    r = router(dns)
    orders = {tuple(h.host for h in resolve(r, "equal.test")) for _ in range(40)}
    assert orders == {
        ("first.equal.test", "a.equal.test", "b.equal.test"),
        ("first.equal.test", "b.equal.test", "a.equal.test"),
    }


def test_no_mx_means_the_domain_itself(dns: DNSServer) -> None:
    dns.add("implicit.test", "A", "192.0.2.20")
    dns.add("implicit.test", "TXT", "v=spf1 -all")
    assert resolve(router(dns), "implicit.test") == [Hop("implicit.test", "192.0.2.20", PORT)]


def test_no_mx_and_no_address_fails(dns: DNSServer) -> None:
    dns.add("nomail.test", "TXT", "nothing here")
    err = route_error(router(dns), "nomail.test")
    assert not err.temporary and "no MX record and no address record" in err.text


def test_null_mx_fails_at_once(dns: DNSServer) -> None:
    dns.add("null.test", "MX", "0 .")
    dns.add("null.test", "A", "192.0.2.30")  # a web server; no mail to it
    err = route_error(router(dns), "null.test")
    assert not err.temporary
    assert err.text == "null.test does not accept mail (null MX, RFC 7505)"


def test_nxdomain_fails(dns: DNSServer) -> None:
    err = route_error(router(dns), "nosuchdomain.test")
    assert not err.temporary and "does not exist" in err.text


def test_servfail_is_temporary(dns: DNSServer) -> None:
    dns.servfail("servfail.test")
    err = route_error(router(dns), "servfail.test")
    assert err.temporary and "SERVFAIL" in err.text


def test_silent_dns_is_temporary_within_the_timeout(dns: DNSServer) -> None:
    dns.drop("silent.test")
    started = time.monotonic()
    err = route_error(router(dns, timeout=SHORT), "silent.test")
    assert err.temporary and "timed out" in err.text
    assert time.monotonic() - started < GENEROUS


def test_unusable_mx_hosts_are_skipped(dns: DNSServer) -> None:
    dns.add("skip.test", "MX", "10 192.0.2.40.")  # an IP literal: not allowed as MX
    dns.add("skip.test", "MX", "20 gone.skip.test.")  # no such name
    dns.add("skip.test", "MX", "30 v6less.skip.test.")  # exists, no address
    dns.add("skip.test", "MX", "40 good.skip.test.")
    dns.add("v6less.skip.test", "TXT", "no address")
    dns.add("good.skip.test", "A", "192.0.2.41")
    assert resolve(router(dns), "skip.test") == [Hop("good.skip.test", "192.0.2.41", PORT)]


def test_mx_hosts_without_addresses_fail_but_dns_trouble_defers(dns: DNSServer) -> None:
    dns.add("hollow.test", "MX", "10 gone.hollow.test.")
    err = route_error(router(dns), "hollow.test")
    assert not err.temporary and "gone.hollow.test" in err.text
    dns.add("shaky.test", "MX", "10 mx.shakydns.test.")
    dns.servfail("shakydns.test")
    assert route_error(router(dns), "shaky.test").temporary


def test_hops_are_capped(dns: DNSServer) -> None:
    dns.add("many.test", "MX", "10 mx1.many.test.")
    dns.add("many.test", "MX", "20 mx2.many.test.")
    for i in range(8):
        dns.add("mx1.many.test", "A", f"192.0.2.{100 + i}")
    dns.add("mx2.many.test", "A", "192.0.2.200")
    hops = resolve(router(dns), "many.test")
    assert len(hops) == MX_ADDRESS_LIMIT == 5
    assert {h.host for h in hops} == {"mx1.many.test"}


def test_fixed_routes_do_not_ask_the_dns(dns: DNSServer) -> None:
    asked = len(dns.queries)
    r = router(dns, routes={"routed.test": "127.0.0.1:1234", "*": "127.0.0.9:2345"})
    assert resolve(r, "routed.test") == [Hop("127.0.0.1", "127.0.0.1", 1234)]
    assert resolve(r, "anything.test") == [Hop("127.0.0.9", "127.0.0.9", 2345)]
    assert len(dns.queries) == asked


# -- end to end through the gateway ------------------------------------------------------
@dataclass
class World:
    gw: Gateway
    dns: DNSServer
    home: Sink  # example.com, the sender's domain, by a fixed route: notices, certificates
    backup: Sink  # mx2.twomx.test at 127.0.0.3


def start_sink_at(server: SinkServer, sink: Sink, host: str) -> Sink:
    """Like ``SinkServer.start``, on another loopback address (Linux routes 127/8 here)."""

    async def _start() -> asyncio.base_events.Server:
        return await server.loop.create_server(
            lambda: SMTP(sink, hostname="mx2.twomx.test", enable_SMTPUTF8=True, loop=server.loop),
            host,
            0,
        )

    started = asyncio.run_coroutine_threadsafe(_start(), server.loop).result(10)
    sink.host, sink.port = host, started.sockets[0].getsockname()[1]
    server.servers.append(started)
    return sink


@pytest.fixture(scope="module")
def world(
    dns: DNSServer, sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    home = sink_server.start(Sink())
    backup = start_sink_at(sink_server, Sink(), "127.0.0.3")
    dns.add("twomx.test", "MX", "10 mx1.twomx.test.")
    dns.add("twomx.test", "MX", "20 mx2.twomx.test.")
    dns.add("mx1.twomx.test", "A", "127.0.0.2")  # down: nothing listens there
    dns.add("mx2.twomx.test", "A", "127.0.0.3")
    dns.add("nullmx.test", "MX", "0 .")
    # write_config ends with [delivery.routes]; [dns] and [delivery] may follow it.
    extra = dns.config_toml(timeout=2.0) + f"[delivery]\nsmtp_port = {backup.port}\n"
    cfg = write_config(tmp_path_factory.mktemp("mx"), {"example.com": home.port}, extra=extra)
    gw = start_gateway(cfg)
    yield World(gw, dns, home, backup)
    gw.stop()
    assert_clean_log(gw.log())


def log_line(gw: Gateway, start: str, limit: float = 60.0) -> str:
    """The first log line that contains ``start``, once the gateway has written it."""
    deadline = time.monotonic() + limit
    while True:
        for line in gw.log().splitlines():
            if start in line:
                return line
        assert time.monotonic() < deadline, f"no log line with {start!r}:\n{gw.log()}"
        time.sleep(0.1)


def test_primary_mx_down_delivers_via_secondary(world: World, tmp_path: Path) -> None:
    rcpt = "bob@twomx.test"
    qid = submit(world.gw, make_message(to=rcpt), [rcpt, CERT_ADDRESS])
    evidence = evidence_of(generated_for(world.home, qid, "certificate"), tmp_path)
    (entry,) = evidence["recipients"]
    assert entry["status"] == "delivered" and entry["attempts"] == 1
    assert (entry["mx_host"], entry["ip"], entry["port"]) == (
        "mx2.twomx.test",
        "127.0.0.3",
        world.backup.port,
    )
    assert len([m for m in world.backup.to(rcpt) if qid.encode() in m.data[:3000]]) == 1
    # One grep of the queue id finds the primary's failure too (Postfix's style).
    tried = f"{qid}: to=<{rcpt}>: connect to mx1.twomx.test[127.0.0.2]:{world.backup.port}"
    assert tried in world.gw.log() and "trying the next mail server" in world.gw.log()


def test_null_mx_fails_at_once_and_the_certificate_says_so(world: World, tmp_path: Path) -> None:
    rcpt = "carol@nullmx.test"
    qid = submit(world.gw, make_message(to=rcpt), [rcpt, CERT_ADDRESS])
    evidence = evidence_of(generated_for(world.home, qid, "certificate"), tmp_path)
    (entry,) = evidence["recipients"]
    assert entry["status"] == "failed" and entry["attempts"] == 1
    assert entry["reply"]["text"] == "nullmx.test does not accept mail (null MX, RFC 7505)"
    assert entry["mx_host"] is None


def test_servfail_defers_then_delivers_once_the_dns_works(world: World, tmp_path: Path) -> None:
    rcpt = "dave@brokendns.test"
    world.dns.servfail("brokendns.test")
    qid = submit(world.gw, make_message(to=rcpt), [rcpt, CERT_ADDRESS])
    line = log_line(world.gw, f"{qid}: to=<{rcpt}>")
    assert "status=deferred" in line and "SERVFAIL" in line, line
    assert "status=bounced" not in line
    world.dns.remove("brokendns.test")
    world.dns.add("brokendns.test", "MX", "10 mx2.twomx.test.")
    evidence = evidence_of(generated_for(world.home, qid, "certificate"), tmp_path)
    (entry,) = evidence["recipients"]
    assert entry["status"] == "delivered" and entry["attempts"] >= 2
    assert entry["ip"] == "127.0.0.3"
    assert "RelayAttemptDeferred" in [e["event"] for e in evidence["timeline"]]
