"""Delivery outcomes and restarts, against remote servers that misbehave on purpose.

A recipient refused with 5xx fails at once and the others go on; a 4xx is deferred
and retried; a gateway killed with SIGKILL after the 250 delivers and certifies
everything after it is started again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
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


def test_sigkill_after_250_then_restart_delivers_and_certifies(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    faults = Faults()
    faults.down = True
    sink = sink_server.start(Sink(rcpt_reply=faults.rcpt))
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
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
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    faults.down = False
    restarted = time.monotonic()
    gw2 = start_gateway(cfg, users={})
    listening = time.monotonic()
    try:
        for i, qid in enumerate(qids):
            generated_for(sink, qid, "certificate")
            copies = [m for m in sink.to(f"crash{i}@example.org") if qid.encode() in m.data[:3000]]
            assert len(copies) == 1
        done = time.monotonic()
        recovery, serving = done - restarted, done - listening
        print(
            f"\nrecovery after kill -9: {count} messages delivered and certified "
            f"{recovery:.2f} s after the restart command, {serving:.2f} s after it listened again"
        )
        listing = gw2.cli("queue", "list")
        assert listing.returncode == 0
        assert all(qid not in listing.stdout for qid in qids)  # nothing left behind
    finally:
        gw2.stop()
    assert_clean_log(gw2.log())
