"""A queued message whose spool file is gone (issue 12, item 8): the fault is named
("spool file missing") in the log, in ``certifica queue show`` and in what the sender
gets, and the message fails after ``[queue] missing_spool_grace``, never an internal
error and never pending for the queue's lifetime."""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
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
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_late_bounce import dsn_for

GRACE = 3.0


def _wait(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


@pytest.fixture()
def deferring(sink_server: SinkServer, tmp_path: Path) -> Iterator[tuple[Gateway, Sink]]:
    """A gateway whose only remote MX defers bob@example.org for ever (451 at DATA) and
    takes everything else (the sender's notices): bob's message stays in the queue."""

    def reply(msg: Received) -> str:
        if "bob@example.org" in msg.rcpt_tos:
            return "451 4.3.0 Mailbox busy, try again later"
        return "250 2.0.0 Ok: queued as SINK0001"

    sink = sink_server.start(Sink(data_reply=reply))
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    cfg.write_text(
        cfg.read_text()
        .replace("lifetime = 30.0", "lifetime = 86400.0")
        .replace("scan_interval = 0.2", f"scan_interval = 0.2\nmissing_spool_grace = {GRACE}")
    )
    gw = start_gateway(cfg)
    yield gw, sink
    gw.stop()


def _for(sink: Sink, qid: str, subject: str) -> list[Received]:
    return [
        m
        for m in sink.messages
        if m.message["X-Certifica-Queue-Id"] == qid
        and (m.message["Subject"] or "").startswith(subject)
    ]


def test_certified_message_whose_spool_file_is_gone_fails_by_name(
    deferring: tuple[Gateway, Sink], tmp_path: Path
) -> None:
    gw, sink = deferring
    qid = submit(gw, make_message(), ["bob@example.org", CERT_ADDRESS])
    _wait(lambda: _for(sink, qid, "Being certified"), "the processing notice")
    _wait(lambda: f"{qid}: to=<bob@example.org>" in gw.log(), "a first, deferred attempt")
    spool_file = gw.state / "spool" / "queue" / f"{qid}.eml"
    spool_file.unlink()  # the fault: a disk or an operator lost it
    missing_at = time.monotonic()

    # Within the grace: deferred, and named so everywhere the operator looks.
    _wait(lambda: "spool file missing" in gw.log(), "the log line")
    shown = gw.cli("queue", "show", qid)
    assert shown.returncode == 0, shown.stderr
    assert f"spool file missing: {spool_file}" in shown.stdout
    log = gw.log()
    assert re.search(rf"{qid}: spool file missing \({re.escape(str(spool_file))}\)", log), log

    # After the grace: failed by the gateway, and a certificate that says so and that
    # the content could not be read.
    _wait(lambda: _for(sink, qid, "Certificate"), "the certificate")
    assert time.monotonic() - missing_at >= GRACE - 0.5
    mail = _for(sink, qid, "Certificate")[0]
    assert mail.rcpt_tos == ["alice@example.com"] and mail.mail_from in ("", "<>")
    assert mail.message["Subject"].startswith("Certificate without the message: the gateway lost")
    body = mail.message.get_body(("plain",))
    assert body is not None
    text = " ".join(body.get_content().split())  # paragraphs are wrapped
    assert "the gateway lost its copy" in text and "spool file missing" in text
    assert "bob@example.org: failed (spool file missing" in text
    assert "does not prove its content" in text
    sha = json.loads(gw.cli("queue", "show", qid, "--json").stdout)["sha256"]
    assert sha in text  # the received hash, from the database

    evidence = _certificate_checked(gw, mail, tmp_path)
    assert "spool file missing" in evidence["message"]["content_unavailable"]
    assert evidence["message"]["sha256"] == sha
    rcpt = evidence["recipients"][0]
    assert rcpt["status"] == "failed" and "spool file missing" in rcpt["reply"]["text"]
    assert "SpoolFileMissing" in [e["event"] for e in evidence["timeline"]]

    log = gw.log()
    assert "internal error" not in log and "Traceback" not in log
    assert re.search(
        rf"{qid}: to=<bob@example.org>, .* dsn=5\.3\.0, status=bounced \(spool file missing", log
    ), log
    assert re.search(rf"{qid}: certificate=CF-\w+ sha256={sha} .* without the message", log)
    shown = gw.cli("queue", "show", qid)
    assert "failed" in shown.stdout and "spool file missing" in shown.stdout
    assert "CertificateIssued" in shown.stdout and "SpoolFileMissing" in shown.stdout
    listing = gw.cli("queue", "list")
    assert qid not in listing.stdout  # nothing left pending


def _certificate_checked(gw: Gateway, mail: Received, tmp: Path) -> dict:  # type: ignore[type-arg]
    """The PDF verifies, says on its pages that the message could not be read, embeds
    evidence.json and no message.eml; returns its evidence."""
    pdf = certificate_pdf(mail, tmp / "certificate.pdf")
    verified = gw.cli("verify", str(pdf))
    # Intact, but no content proven: not the exit code of a full certificate.
    assert verified.returncode == 3, verified.stdout + verified.stderr
    assert "the message content is NOT certified" in verified.stdout
    assert "ok   message-hash: Content not certified" in verified.stdout, verified.stdout
    listed = subprocess.run(
        ["pdfdetach", "-list", str(pdf)], capture_output=True, text=True, check=True
    ).stdout
    assert "evidence.json" in listed and "message.eml" not in listed
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp), str(pdf)], check=True)
    pages = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    pages = " ".join(pages.split())
    assert "The message could not be read" in pages
    assert "it does not prove the message's content" in pages
    return json.loads((tmp / "evidence.json").read_text())  # type: ignore[no-any-return]


def test_uncertified_message_whose_spool_file_is_gone_fails_after_the_grace(
    deferring: tuple[Gateway, Sink],
) -> None:
    gw, sink = deferring
    raw = make_message(cc="carol@example.org")
    qid = submit(gw, raw, ["bob@example.org"])
    _wait(lambda: f"{qid}: to=<bob@example.org>" in gw.log(), "a first, deferred attempt")
    (gw.state / "spool" / "queue" / f"{qid}.eml").unlink()
    _wait(lambda: f"{qid}: removed" in gw.log(), "the message leaving the queue")
    log = gw.log()
    assert re.search(rf"{qid}: to=<bob@example.org>, .* status=bounced \(spool file missing", log)
    assert "internal error" not in log and "Traceback" not in log
    shown = gw.cli("queue", "show", qid)
    assert "<bob@example.org> failed" in shown.stdout and "spool file missing" in shown.stdout


def test_late_report_about_a_message_whose_copy_is_gone_gets_an_addendum_without_it(
    deferring: tuple[Gateway, Sink], tmp_path: Path
) -> None:
    gw, sink = deferring
    raw = make_message(subject="late", to="carol@example.org")
    qid = submit(gw, raw, ["carol@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    (gw.state / "spool" / "archive" / f"{qid}.eml").unlink()  # the evidence copy, lost
    copy = [m for m in sink.to("carol@example.org") if qid.encode() in m.data[:3000]][0]
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        assert c.rcpt(copy.mail_from)[0] == 250
        code, text = c.data(dsn_for(copy.mail_from, "carol@example.org", raw))
        assert code == 250, text

    _wait(lambda: _for(sink, qid, "Addendum"), "the addendum about the late report")
    mail = _for(sink, qid, "Addendum")[0]
    assert mail.rcpt_tos == ["alice@example.com"]
    body = mail.message.get_body(("plain",))
    assert body is not None
    text = " ".join(body.get_content().split())  # paragraphs are wrapped
    assert "carol@example.org: bounced" in text and "spool file missing" in text
    assert "can no longer read your message" in text
    evidence = _certificate_checked(gw, mail, tmp_path)
    assert evidence["kind"] == "addendum" and evidence["addendum_of"].startswith("CF-")
    assert evidence["recipients"][0]["status"] == "bounced"
    assert evidence["late_bounce"]["reports"][0]["recipient"] == "carol@example.org"
    # The claim rests on an entry of the evidence log, as the certificate's does.
    assert "SpoolFileMissing" in [e.get("event") for e in evidence["timeline"]]
    log = gw.log()
    assert re.search(rf"{qid}: addendum=CF-\w+ .* without the message \(spool file missing", log)
    assert "Traceback" not in log and "will retry" not in log
