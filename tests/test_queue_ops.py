"""The queue as an operator sees it: certifica queue list/show/flush/retry/hold/release/delete,
queue lifetime, SIGTERM, and a full disk."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
from tests.test_certified_sending import generated_for, submit
from tests.test_delivery_outcomes import Faults, evidence_of


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


@pytest.fixture()
def slow_queue(sink_server: SinkServer, tmp_path: Path) -> Iterator[tuple[Gateway, Sink, Faults]]:
    """A gateway whose first retry is an hour away: only the operator can hurry it."""
    faults = Faults()
    faults.down = True
    sink = sink_server.start(Sink(rcpt_reply=faults.rcpt))
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    cfg.write_text(
        cfg.read_text()
        .replace("first_retry = 1.0", "first_retry = 3600.0")
        .replace("max_retry = 2.0", "max_retry = 3600.0")
        .replace("lifetime = 30.0", "lifetime = 86400.0")
    )
    gw = start_gateway(cfg)
    yield gw, sink, faults
    gw.stop()
    assert_clean_log(gw.log())


def deferred(gw: Gateway, qid: str) -> bool:
    return f"{qid}: to=" in gw.log() and "status=deferred" in gw.log()


def test_list_show_hold_release_flush(
    slow_queue: tuple[Gateway, Sink, Faults], tmp_path: Path
) -> None:
    gw, sink, faults = slow_queue
    qid = submit(gw, make_message(to="held@example.org"), ["held@example.org", CERT_ADDRESS])
    wait_until(lambda: deferred(gw, qid))
    listing = gw.cli("queue", "list")
    assert listing.returncode == 0
    assert re.search(rf"^{qid}  C-  ", listing.stdout, re.M), listing.stdout
    assert "deferred   <held@example.org> (421 4.3.2 Service shutting down, try later)" in (
        listing.stdout
    )
    assert "None" not in listing.stdout
    as_json = json.loads(gw.cli("queue", "list", "--json").stdout)
    assert any(m["qid"] == qid for m in as_json)

    shown = gw.cli("queue", "show", qid[:6])
    assert shown.returncode == 0 and f"queue id:     {qid}" in shown.stdout
    assert "SubmissionAcceptance" in shown.stdout and "RelayAttemptDeferred" in shown.stdout

    assert gw.cli("queue", "hold", qid).returncode == 0
    assert re.search(rf"^{qid}  C!  ", gw.cli("queue", "list").stdout, re.M)
    faults.down = False
    assert gw.cli("queue", "flush").returncode == 0  # held: flush does not touch it
    time.sleep(1.0)
    assert sink.to("held@example.org") == []
    assert gw.cli("queue", "release", qid).returncode == 0  # release tries at once
    cert = generated_for(sink, qid, "certificate", timeout=30)
    events = [e["event"] for e in evidence_of(cert, tmp_path)["timeline"]]
    assert "OperatorHold" in events and "OperatorRelease" in events
    assert len(sink.to("held@example.org")) == 1


def test_flush_and_retry_hurry_deferred_mail(slow_queue: tuple[Gateway, Sink, Faults]) -> None:
    gw, sink, faults = slow_queue
    first = submit(gw, make_message(to="f1@example.org", cc=""), ["f1@example.org"])
    second = submit(gw, make_message(to="f2@example.org", cc=""), ["f2@example.org"])
    wait_until(lambda: deferred(gw, first) and f"{second}: to=" in gw.log())
    faults.down = False
    retried = gw.cli("queue", "retry", second)
    assert retried.returncode == 0 and "1 recipient" in retried.stdout
    sink.wait_for(lambda ms: any("f2@example.org" in m.rcpt_tos for m in ms), timeout=20)
    assert sink.to("f1@example.org") == []  # still waiting for its hour
    assert gw.cli("queue", "flush").returncode == 0
    sink.wait_for(lambda ms: any("f1@example.org" in m.rcpt_tos for m in ms), timeout=20)


def test_delete_certifies_the_withdrawal(
    slow_queue: tuple[Gateway, Sink, Faults], tmp_path: Path
) -> None:
    gw, sink, faults = slow_queue
    qid = submit(gw, make_message(to="gone@example.org"), ["gone@example.org", CERT_ADDRESS])
    wait_until(lambda: deferred(gw, qid))
    refused = gw.cli("queue", "delete", qid)  # no terminal to ask on: refuses without --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr
    # The sender's certificate leaves at once after the withdrawal: its MX must be up by
    # then (gone@ is not tried again before its retry, an hour away, so it gets nothing).
    faults.down = False
    done = gw.cli("queue", "delete", qid, "--yes")
    assert done.returncode == 0, done.stderr
    cert = generated_for(sink, qid, "certificate", timeout=30)
    evidence = evidence_of(cert, tmp_path)
    assert evidence["recipients"][0]["status"] == "withdrawn"
    assert "WithdrawnByOperator" in [e["event"] for e in evidence["timeline"]]
    assert sink.to("gone@example.org") == []


def test_unknown_or_ambiguous_queue_id(slow_queue: tuple[Gateway, Sink, Faults]) -> None:
    gw, _, _ = slow_queue
    out = gw.cli("queue", "show", "ZZZZ")
    assert out.returncode == 2 and "no message" in out.stderr and "Traceback" not in out.stderr


def test_lifetime_exhausted_is_certified_as_failed(sink_server: SinkServer, tmp_path: Path) -> None:
    faults = Faults()
    sink = sink_server.start(Sink(rcpt_reply=faults.rcpt))
    faults.defer_left["never@example.org"] = 10**6
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    cfg.write_text(cfg.read_text().replace("lifetime = 30.0", "lifetime = 3.0"))
    gw = start_gateway(cfg)
    try:
        qid = submit(gw, make_message(to="never@example.org"), ["never@example.org", CERT_ADDRESS])
        evidence = evidence_of(generated_for(sink, qid, "certificate", timeout=30), tmp_path)
    finally:
        gw.stop()
    rcpt = evidence["recipients"][0]
    assert rcpt["status"] == "failed" and rcpt["attempts"] >= 2
    assert rcpt["reply"]["text"].startswith("retries exhausted after")
    assert_clean_log(gw.log())


def test_sigterm_stops_accepting_and_keeps_the_queue(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    faults = Faults()
    faults.down = True
    sink = sink_server.start(Sink(rcpt_reply=faults.rcpt))
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    gw = start_gateway(cfg)
    qid = submit(gw, make_message(to="later@example.org"), ["later@example.org", CERT_ADDRESS])
    wait_until(lambda: deferred(gw, qid))
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(30) == 0
    assert "stopped" in gw.log()
    with pytest.raises(OSError):
        smtplib.SMTP("127.0.0.1", gw.port(), timeout=5)
    faults.down = False
    gw2 = start_gateway(cfg, users={})
    try:
        gw2.cli("queue", "flush")
        generated_for(sink, qid, "certificate", timeout=30)
    finally:
        gw2.stop()
    assert_clean_log(gw.log())
    assert_clean_log(gw2.log())


def test_full_disk_answers_452_and_stores_nothing(sink_server: SinkServer, tmp_path: Path) -> None:
    sink = sink_server.start(Sink())
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        cfg = write_config(mount, {"example.org": sink.port, "example.com": sink.port})
        # The write of DATA itself failing (the disk filled up after MAIL): [limits]
        # min_free, which refuses MAIL before that, is off here (tests/test_metrics.py
        # tests it).
        cfg.write_text(cfg.read_text().replace("[limits]\n", "[limits]\nmin_free = 0\n", 1))
        gw = start_gateway(cfg)
        try:
            filler = mount / "filler"
            # Fill the disk (unbuffered: nothing is left to flush, and fail, at close),
            # then leave well under one message of room.
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                except OSError:
                    pass
            filler.write_bytes(filler.read_bytes()[: -200 * 1024])
            big = make_message(to="full@example.org", body=("z" * 78 + "\r\n") * 6000)
            with gw.smtp() as c:
                c.mail("alice@example.com")
                c.rcpt("full@example.org")
                code, text = c.data(big)
            assert code in (451, 452) and text.startswith(b"4.3."), (code, text)
            assert list((gw.state / "spool" / "queue").glob("*.eml")) == []
            filler.unlink()
            qid = submit(gw, big, ["full@example.org"])
            sink.wait_for(lambda ms: any("full@example.org" in m.rcpt_tos for m in ms), timeout=30)
            assert qid
        finally:
            gw.stop()
        assert "Traceback" not in gw.log()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
