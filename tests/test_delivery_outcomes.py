"""Delivery outcomes and restarts, against remote servers that misbehave on purpose.

A recipient refused with 5xx fails at once and the others go on; a 4xx is deferred
and retried; a gateway killed with SIGKILL after the 250 delivers and certifies
everything after it is started again.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import load_config
from relay.delivery.agent import backoff
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit


class Faults:
    """Switchable behaviour for a sink: refuse some recipients, defer the first tries."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.defer_left: dict[str, int] = {}
        self.down = False

    def rcpt(self, address: str) -> str | None:
        with self.lock:
            if self.down:
                return "421 4.3.2 Service shutting down, try later"
            if address.startswith("reject"):
                return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            left = self.defer_left.get(address, 0)
            if left:
                self.defer_left[address] = left - 1
                return "451 4.3.0 Temporary local problem, try again"
        return None


@pytest.fixture()
def faulty(sink_server: SinkServer, tmp_path: Path) -> Iterator[tuple[Gateway, Sink, Faults]]:
    faults = Faults()
    sink = sink_server.start(Sink(rcpt_reply=faults.rcpt))
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    gw = start_gateway(cfg)
    yield gw, sink, faults
    gw.stop()
    assert_clean_log(gw.log())


def evidence_of(mail: Received, tmp: Path) -> dict:
    pdf = certificate_pdf(mail, tmp / "c.pdf")
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp), str(pdf)], check=True)
    return json.loads((tmp / "evidence.json").read_text())


def test_permanent_refusal_fails_one_recipient_and_others_go_on(
    faulty: tuple[Gateway, Sink, Faults], tmp_path: Path
) -> None:
    gw, sink, _ = faulty
    raw = make_message(to="ok@example.org, reject@example.org")
    qid = submit(gw, raw, ["ok@example.org", "reject@example.org", CERT_ADDRESS])
    evidence = evidence_of(generated_for(sink, qid, "certificate"), tmp_path)
    by = {r["address"]: r for r in evidence["recipients"]}
    assert by["ok@example.org"]["status"] == "delivered"
    assert by["reject@example.org"]["status"] == "failed"
    assert by["reject@example.org"]["reply"] == {
        "code": 550,
        "enhanced": "5.1.1",
        "text": "<reject@example.org>: Recipient address rejected: User unknown",
    }
    assert by["reject@example.org"]["attempts"] == 1
    assert "RelayToNonERDSFailure" in [e["event"] for e in evidence["timeline"]]
    assert f"{qid}: to=<reject@example.org>" in gw.log() and "status=bounced" in gw.log()


def test_temporary_refusal_is_retried(faulty: tuple[Gateway, Sink, Faults], tmp_path: Path) -> None:
    gw, sink, faults = faulty
    faults.defer_left["slow@example.org"] = 2
    qid = submit(gw, make_message(to="slow@example.org"), ["slow@example.org", CERT_ADDRESS])
    evidence = evidence_of(generated_for(sink, qid, "certificate"), tmp_path)
    rcpt = evidence["recipients"][0]
    assert rcpt["status"] == "delivered" and rcpt["attempts"] == 3
    events = [e["event"] for e in evidence["timeline"]]
    assert events.count("RelayAttemptDeferred") == 2 and events.count("RelayToNonERDS") == 1
    assert "dsn=4.3.0, status=deferred (451 4.3.0 Temporary local problem" in gw.log()


def test_a_dead_destination_does_not_hold_up_the_others(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """30 messages for a domain whose MX accepts TCP but never greets, then one for a
    healthy domain: the healthy one is delivered while every dead attempt still waits."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(128)  # never accepted: the handshake completes, no greeting ever comes
    sink = sink_server.start(Sink())
    routes = {"dead.example": dead.getsockname()[1], "example.org": sink.port}
    extra = "[delivery]\nconcurrency = 4\nper_destination = 2\ngreeting_timeout = 60.0\n"
    gw = start_gateway(write_config(tmp_path, routes, extra))
    try:
        with gw.smtp() as client:
            for i in range(30):
                client.sendmail(
                    "alice@example.com",
                    [f"user{i}@dead.example"],
                    make_message(subject=f"to a dead MX {i}", to=f"user{i}@dead.example", cc=""),
                )
        qid = submit(gw, make_message(to="ok@example.org", cc=""), ["ok@example.org"])
        sink.wait_for(lambda ms: any(qid.encode() in m.data[:2000] for m in ms), timeout=40)
        assert "timed out waiting for the greeting" not in gw.log()  # all still waiting
        listing = gw.cli("queue", "list", "--json")
        dead_left = [
            r for m in json.loads(listing.stdout) for r in m["recipients"] if "dead" in r["address"]
        ]
        assert len(dead_left) == 30
    finally:
        gw.stop()
        dead.close()
    assert_clean_log(gw.log())


def test_sigkill_after_250_then_restart_delivers_and_certifies(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """The route's MX is down (connection refused) while mail is accepted; the gateway
    is killed, the MX comes up, the gateway restarts and is killed again in the middle
    of delivering and certifying; after the last start every message is delivered at
    least once and certified, and the queue is empty."""
    port = free_port()  # nothing listens: every attempt is refused
    cfg = write_config(tmp_path, {"example.org": port, "example.com": port})
    gw = start_gateway(cfg)
    count = 20
    qids = [
        submit(
            gw,
            make_message(subject=f"crash {i}", to=f"crash{i}@example.org"),
            [f"crash{i}@example.org", CERT_ADDRESS],
        )
        for i in range(count)
    ]
    refused = f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused"
    deadline = time.monotonic() + 30
    while refused not in gw.log():  # the MX really was down, for the gateway too
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    sink = sink_server.start(Sink(), port=port)
    restarted = time.monotonic()
    gw2 = start_gateway(cfg, users={})
    # Kill it again once it is busy: the first certificate is out, others are not.
    sink.wait_for(
        lambda ms: any((m.message["Subject"] or "").startswith("Certificate") for m in ms)
    )
    gw2.proc.send_signal(signal.SIGKILL)
    gw2.proc.wait(10)
    gw3 = start_gateway(cfg, users={})
    listening = time.monotonic()
    try:
        duplicates = 0
        for i, qid in enumerate(qids):
            generated_for(sink, qid, "certificate")
            copies = [m for m in sink.to(f"crash{i}@example.org") if qid.encode() in m.data[:3000]]
            assert len(copies) >= 1
            duplicates += len(copies) - 1
        done = time.monotonic()
        print(
            f"\nrecovery after kill -9 (twice): {count} messages delivered and certified "
            f"{done - restarted:.2f} s after the MX came up and the first restart, "
            f"{done - listening:.2f} s after the last start; {duplicates} duplicate copies"
        )
        deadline = time.monotonic() + 30
        while (listing := gw3.cli("queue", "list")).stdout.strip() != "Mail queue is empty":
            # The last certificate mails are recorded as delivered just after they arrive.
            assert time.monotonic() < deadline, listing.stdout  # nothing left behind
            time.sleep(0.1)
    finally:
        gw3.stop()
    assert_clean_log(gw3.log())
    assert not list((cfg.parent / "state" / "spool" / "queue").iterdir())  # spool drained


def test_backoff_doubles_from_first_retry_up_to_max_retry() -> None:
    """RFC 5321 4.5.4.1 with Postfix's defaults: 5 min, doubling, at most ~67 min."""
    cfg = load_config(None)
    assert [backoff(cfg, n) for n in range(1, 8)] == [300, 600, 1200, 2400, 4000, 4000, 4000]
    assert cfg.queue.lifetime == 5 * 24 * 3600


def test_delays_follow_postfix_a_b_c_d(faulty: tuple[Gateway, Sink, Faults]) -> None:
    """delays=a/b/c/d: a before the queue manager (the backoff), b waiting for a slot,
    c connection setup, d the transaction; on a retry a holds the backoff."""
    gw, sink, faults = faulty
    faults.defer_left["twice@example.org"] = 1
    qid = submit(gw, make_message(to="twice@example.org", cc=""), ["twice@example.org"])
    sink.wait_for(lambda ms: any(qid.encode() in m.data[:2000] for m in ms))
    deadline = time.monotonic() + 30
    while "status=sent" not in (log := gw.log()):  # written just after the remote's 250
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = [line for line in log.splitlines() if f"{qid}: to=<twice@example.org>" in line]
    assert [("deferred" in x, "sent" in x) for x in lines] == [(True, False), (False, True)]
    a, b, c, d = (float(x) for x in lines[1].split("delays=")[1].split(",")[0].split("/"))
    total = float(lines[1].split("delay=")[1].split(",")[0])
    assert a >= 0.9  # the 1 s backoff (first_retry) is before the queue manager
    assert min(a, b, c, d) >= 0 and abs(a + b + c + d - total) < 0.05


class ScriptedMX:
    """A small SMTP server on its own thread: drops the connection after the final dot
    the first ``drops`` times, and holds its reply to the final dot until ``release``."""

    def __init__(self, drops: int = 0, hold: bool = False) -> None:
        self.drops = drops
        self.hold = hold
        self.received: list[bytes] = []
        self.got_data = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._release = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self.loop
        ).result(10)
        self.server = server
        self.port = server.sockets[0].getsockname()[1]

    def release(self) -> None:
        self.loop.call_soon_threadsafe(self._release.set)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        try:
            say("220 scripted.test ESMTP")
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    say("250-scripted.test\r\n250 8BITMIME")
                elif verb == b"DATA":
                    say("354 go ahead")
                    data = await reader.readuntil(b"\r\n.\r\n")
                    self.received.append(data)
                    self.got_data.set()
                    if self.drops:
                        self.drops -= 1
                        return  # the message is here, the 250 never leaves
                    if self.hold:
                        await self._release.wait()
                    say("250 2.0.0 Ok: queued as SCRIPTED1")
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

    def close(self) -> None:
        async def _close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_drop_after_the_final_dot_is_retried_and_noted_as_a_possible_duplicate(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    remote = ScriptedMX(drops=1)
    home = sink_server.start(Sink())
    gw = start_gateway(
        write_config(tmp_path, {"example.org": remote.port, "example.com": home.port})
    )
    try:
        qid = submit(gw, make_message(to="dup@example.org"), ["dup@example.org", CERT_ADDRESS])
        evidence = evidence_of(generated_for(home, qid, "certificate"), tmp_path)
    finally:
        gw.stop()
        remote.close()
    assert len(remote.received) == 2  # the remote really got it twice
    (rcpt,) = evidence["recipients"]
    assert rcpt["status"] == "delivered" and rcpt["attempts"] == 2
    assert rcpt["note"].startswith("possible duplicate: ")
    deferred = [e for e in evidence["timeline"] if e["event"] == "RelayAttemptDeferred"]
    assert len(deferred) == 1 and "possible duplicate" in deferred[0]["detail"]
    assert_clean_log(gw.log())


def test_withdrawal_during_an_attempt_that_then_delivers_is_told_as_it_happened(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    remote = ScriptedMX(hold=True)
    home = sink_server.start(Sink())
    gw = start_gateway(
        write_config(tmp_path, {"example.org": remote.port, "example.com": home.port})
    )
    try:
        qid = submit(gw, make_message(to="late@example.org"), ["late@example.org", CERT_ADDRESS])
        assert remote.got_data.wait(30)  # the attempt is under way, waiting for the 250
        out = gw.cli("queue", "delete", qid, "--yes")
        assert out.returncode == 0, out.stderr
        remote.release()
        evidence = evidence_of(generated_for(home, qid, "certificate"), tmp_path)
    finally:
        gw.stop()
        remote.close()
    (rcpt,) = evidence["recipients"]
    assert rcpt["status"] == "delivered"
    assert "already under way when the operator withdrew" in rcpt["note"]
    events = [e["event"] for e in evidence["timeline"]]
    assert events.index("WithdrawnByOperator") < events.index("RelayToNonERDS")
    assert_clean_log(gw.log())


def test_a_locked_database_gets_451_and_nothing_is_kept(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    import sqlite3

    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}))
    try:
        lock = sqlite3.connect(gw.state / "queue.db", timeout=1)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            with gw.smtp() as client:
                client.mail("alice@example.com")
                client.rcpt("locked@example.org")
                code, reply = client.data(make_message(to="locked@example.org", cc=""))
        finally:
            lock.rollback()
            lock.close()
        assert code == 451 and reply.startswith(b"4.3.0"), reply
        assert not list((gw.state / "spool" / "queue").glob("*"))  # the spool file is gone
        assert "locked@example.org" not in gw.cli("queue", "list").stdout
        with gw.smtp() as client:  # and the gateway goes on accepting
            after = make_message(to="after@example.org", cc="")
            assert client.sendmail("alice@example.com", ["after@example.org"], after) == {}
        sink.wait_for(lambda ms: any("after@example.org" in m.rcpt_tos for m in ms))
    finally:
        gw.stop()
    log = gw.log()
    assert "Traceback" not in log
    # The operator is told, in one line, why the client got 451.
    assert "error: " in log and "could not record the message: database is locked" in log
    assert not any("locked@example.org" in m.rcpt_tos for m in sink.messages)


def test_spool_files_of_finished_messages_are_cleaned_at_start(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """A stop between "done" in the database and the spool file's archive or removal
    leaves the file queued; the next start puts it where it belongs, sends nothing."""
    sink = sink_server.start(Sink())
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    gw = start_gateway(cfg)
    certified = submit(gw, make_message(to="kept@example.org"), ["kept@example.org", CERT_ADDRESS])
    generated_for(sink, certified, "certificate")
    plain = submit(gw, make_message(to="plain@example.org", cc=""), ["plain@example.org"])
    deadline = time.monotonic() + 30
    while f"{plain}: removed" not in gw.log():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gw.stop()
    spool = cfg.parent / "state" / "spool"
    (spool / "queue" / f"{certified}.eml").write_bytes(
        (spool / "archive" / f"{certified}.eml").read_bytes()
    )
    (spool / "queue" / f"{plain}.eml").write_bytes(b"left over")
    delivered = len(sink.messages)
    gw2 = start_gateway(cfg, users={})
    try:
        assert not (spool / "queue" / f"{certified}.eml").exists()
        assert not (spool / "queue" / f"{plain}.eml").exists()
        assert (spool / "archive" / f"{certified}.eml").exists()  # kept as evidence
        assert f"{certified}: removed (finished before the last stop)" in gw2.log()
    finally:
        gw2.stop()
    assert len(sink.messages) == delivered
    assert_clean_log(gw2.log())
