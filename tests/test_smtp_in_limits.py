"""SMTP in, the resource cases: slow clients, endless data, huge headers.

One gateway with a short idle timeout, so that a slow client is cut off within seconds.
Only the last test here has a message accepted: every other one checks that nothing
was stored (no row in the queue database) and, where a client sends a lot, that the
gateway's peak memory grew by far less than what was sent.
"""

from __future__ import annotations

import contextlib
import smtplib
import sqlite3
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.smtpd import replies
from tests.conftest import (
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_smtp_in import Raw

TIMEOUT = 2.0  # [limits] timeout of this gateway, seconds
LIMIT = 1048576  # [limits] message_size in write_config
PACE = TIMEOUT / 4  # a slow client's pause between sends: well inside the idle timeout


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("limits")
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    cfg.write_text(cfg.read_text().replace("[limits]\n", f"[limits]\ntimeout = {TIMEOUT}\n"))
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def stored(gw: Gateway) -> int:
    """Messages the gateway ever took responsibility for (rows are never deleted)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True)
    ) as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


def spool_files(gw: Gateway) -> list[Path]:
    return [p for p in (gw.state / "spool").rglob("*") if p.is_file()]


def peak_memory(gw: Gateway) -> int:
    """The gateway process's peak resident memory so far, in bytes (VmHWM)."""
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def start_data(gw: Gateway, rcpt: str) -> Raw:
    raw = Raw(gw)
    raw.send(f"MAIL FROM:<alice@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    return raw


def wait_for_reply(raw: Raw, drip: bytes, most: int) -> tuple[str, int]:
    """Send ``drip`` every PACE seconds until the server says something; at most ``most``."""
    raw.sock.settimeout(PACE)
    for sent in range(1, most + 1):
        raw.send(drip)
        try:
            chunk = raw.sock.recv(65536)
        except TimeoutError:
            continue
        raw.sock.settimeout(20)
        raw.buf += chunk
        return raw.reply(), sent
    raise AssertionError(
        f"no reply after {most} sends {PACE:.1f} s apart (about {most * PACE:.0f} s, "
        f"with a {TIMEOUT:.0f} s timeout)"
    )


def assert_closed(raw: Raw) -> None:
    """The server closed the connection and said nothing more."""
    rest = raw.buf
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # a reset ends it too
        while chunk := raw.sock.recv(65536):
            rest += chunk
    assert rest == b"", rest
    raw.close()


def test_data_dripped_a_byte_at_a_time_gets_421(slow: Gateway) -> None:
    """Each byte restarts the idle timer; the DATA deadline does not move for so little."""
    before = stored(slow)
    raw = start_data(slow, "drip@example.org")
    raw.send(b"Subject: drip\r\n\r\n")
    reply, sent = wait_for_reply(raw, b"x", most=int(10 * TIMEOUT / PACE))
    assert reply == replies.TIMEOUT, reply
    assert sent > 1  # it was the drip that was cut off, not a silent client
    assert_closed(raw)
    assert stored(slow) == before


def test_command_line_dripped_gets_421(slow: Gateway) -> None:
    raw = Raw(slow)
    reply, _ = wait_for_reply(raw, b"N", most=int(10 * TIMEOUT / PACE))
    assert reply == replies.TIMEOUT, reply
    assert_closed(raw)


def test_endless_data_without_crlf_is_refused_and_bounded(slow: Gateway) -> None:
    before = stored(slow)
    raw = start_data(slow, "endless@example.org")
    peak = peak_memory(slow)  # after AUTH: scrypt alone takes 16 MiB, in a worker thread
    sent = 0
    block = b"e" * 65536
    with contextlib.suppress(ConnectionError, ssl.SSLError):  # the server may stop reading
        while sent < 16 * LIMIT:
            raw.send(block)
            sent += len(block)
    # Refused while it arrives, not after an end that never comes ...
    assert raw.reply() == replies.LINE_TOO_LONG
    # ... and then given one more timeout to stop before the close.
    assert raw.reply() == replies.TIMEOUT
    assert_closed(raw)
    assert stored(slow) == before
    assert not spool_files(slow)
    grown = peak_memory(slow) - peak
    assert grown < 4 * LIMIT, f"peak memory grew by {grown} bytes for {sent} bytes sent"


def test_after_an_endless_line_is_refused_the_end_of_data_closes_it_quietly(
    slow: Gateway,
) -> None:
    raw = start_data(slow, "ended@example.org")
    raw.send(b"e" * (LIMIT + 300_000))
    assert raw.reply() == replies.LINE_TOO_LONG
    raw.send(b"\r\n.\r\nNOOP\r\n")
    assert raw.reply() == "250 2.0.0 OK"  # no second answer to the same DATA
    raw.close()


def test_a_megabyte_of_headers_gets_552(slow: Gateway) -> None:
    before = stored(slow)
    fields = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"h" * 70) for i in range(11_500))
    assert 1_000_000 < len(fields) < LIMIT  # over the header limit, under the message size
    raw = start_data(slow, "headers@example.org")
    raw.send(fields + make_message(to="headers@example.org") + b".\r\n")
    assert raw.reply() == replies.HEADER_TOO_LARGE.format(limit=256 * 1024)
    raw.send(b"NOOP\r\n")  # the session goes on
    assert raw.expect("250")
    raw.close()
    assert stored(slow) == before
    assert not spool_files(slow)


def test_oversized_data_is_dropped_as_it_arrives(slow: Gateway) -> None:
    before = stored(slow)
    raw = start_data(slow, "big@example.org")
    peak = peak_memory(slow)
    line = b"b" * 998 + b"\r\n"
    chunk = line * 64
    raw.send(make_message(to="big@example.org"))
    for _ in range(16 * LIMIT // len(chunk)):
        raw.send(chunk)
    raw.send(b".\r\n")
    assert raw.reply() == replies.SIZE_EXCEEDED.format(limit=LIMIT)
    raw.send(b"NOOP\r\n")
    assert raw.expect("250")
    raw.close()
    assert stored(slow) == before
    grown = peak_memory(slow) - peak
    assert grown < 4 * LIMIT, f"peak memory grew by {grown} bytes for {16 * LIMIT} bytes sent"


def test_a_slow_but_steady_client_is_not_cut_off(slow: Gateway, sink: Sink) -> None:
    """Longer than the timeout in all, never silent for long, well above the minimum rate."""
    before = stored(slow)
    raw = start_data(slow, "steady@example.org")
    raw.send(make_message(to="steady@example.org", body=""))
    raw.sock.settimeout(PACE)
    line = b"s" * 78 + b"\r\n"
    for _ in range(int(2 * TIMEOUT / PACE)):  # twice the timeout, at 40 kB per pause
        raw.send(line * 500)
        with pytest.raises(TimeoutError):
            raw.sock.recv(1024)  # and the server does not interrupt
    raw.sock.settimeout(20)
    raw.send(b".\r\n")
    assert raw.expect("250")
    raw.close()
    assert stored(slow) == before + 1
    sink.wait_for(lambda ms: any("steady@example.org" in m.rcpt_tos for m in ms))


# -- failed AUTH counted per client address, across connections ---------------------------
def test_auth_throttle_counts_per_address_and_forgets_after_the_window() -> None:
    from relay.smtpd.protocol import AuthThrottle

    t = AuthThrottle(limit=3, window=60.0)
    v4, other = ("192.0.2.7", 4000), ("192.0.2.8", 4001)
    for n in range(1, 4):
        assert not t.blocked(v4)
        assert t.failed(v4) == n
    assert t.blocked(v4) and not t.blocked(other)
    # An IPv6 subscriber's /64 is one client, whatever the interface id.
    t.failed(("2001:db8:1:2::10", 1, 0, 0))
    assert t.recent(("2001:db8:1:2:ffff::1", 1, 0, 0)) == 1
    assert t.recent(("2001:db8:1:3::10", 1, 0, 0)) == 0
    # Failures age out.
    import time

    assert t.recent(v4, now=time.monotonic() + 61.0) == 0


def test_auth_throttle_memory_is_bounded() -> None:
    from relay.smtpd.protocol import AuthThrottle

    t = AuthThrottle(limit=5, window=600.0, max_clients=100)
    for i in range(1000):
        t.failed((f"10.0.{i // 250}.{i % 250}", 1))
    assert len(t._failures) <= 100


def test_reconnecting_does_not_reset_failed_auth(sink_server: SinkServer, tmp_path: Path) -> None:
    """With auth_block = 3, three wrong passwords over three connections, then the right
    one on a fourth: refused with 421 before any password is checked."""
    sink = sink_server.start(Sink())
    cfg = write_config(tmp_path, {"example.org": sink.port})
    limits = "[limits]\nauth_block = 3\nauth_block_window = 600.0\n"
    cfg.write_text(cfg.read_text().replace("[limits]\n", limits))
    gw = start_gateway(cfg)

    def plain(password: str) -> None:  # one AUTH PLAIN (login() would try LOGIN too)
        client = gw.smtp(user=None)
        client.user, client.password = "alice@example.com", password
        try:
            client.auth("PLAIN", client.auth_plain)
        finally:
            client.close()

    try:
        for _ in range(3):
            with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
                plain("not the password")
            assert wrong.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            plain(PASSWORD)
        assert refused.value.smtp_code == 421
        assert b"from your address" in refused.value.smtp_error
        assert "too many failures from this address" in gw.log()
    finally:
        gw.stop()
