"""A bounce after the 250 (RFC 3464 DSN to the VERP return path) becomes a signed addendum."""

from __future__ import annotations

import json
import smtplib
import subprocess
from pathlib import Path

from tests.conftest import CERT_ADDRESS, Gateway, Received, Sink, make_message
from tests.test_certified_sending import certificate_pdf, generated_for, submit


def dsn_for(return_path: str, recipient: str, original: bytes) -> bytes:
    boundary = "dsn-boundary-1"
    head = original.split(b"\r\n\r\n", 1)[0].decode()
    return (
        f"From: MAILER-DAEMON@mx.example.org (Mail Delivery System)\r\n"
        f"To: {return_path}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        f"The mailbox <{recipient}> was removed after the message was accepted.\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: mailbox unavailable\r\n"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n{head}\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def addendum_for(mx: Sink, qid: str) -> Received:
    def find(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and (m.message["Subject"] or "").startswith("Addendum")
        ]

    return find(mx.wait_for(lambda ms: bool(find(ms)), 60))[0]


def test_late_bounce_yields_a_signed_addendum(gateway: Gateway, mx: Sink, tmp_path: Path) -> None:
    raw = make_message(subject="late bounce", to="vanishing@example.org")
    qid = submit(gateway, raw, ["vanishing@example.org", CERT_ADDRESS])
    generated_for(mx, qid, "certificate")
    copy = [m for m in mx.to("vanishing@example.org") if qid.encode() in m.data[:3000]][0]
    return_path = copy.mail_from

    with smtplib.SMTP("127.0.0.1", gateway.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        code, text = c.rcpt(return_path)
        assert code == 250, text
        code, text = c.data(dsn_for(return_path, "vanishing@example.org", raw))
        assert code == 250, text

    addendum = addendum_for(mx, qid)
    assert addendum.rcpt_tos == ["alice@example.com"] and addendum.mail_from in ("", "<>")
    pdf = certificate_pdf(addendum, tmp_path / "addendum.pdf")
    verified = gateway.cli("verify", str(pdf))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp_path), str(pdf)], check=True)
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["kind"] == "addendum"
    assert evidence["addendum_of"].startswith("CF-") and evidence["queue_id"] == qid
    assert (tmp_path / "message.eml").read_bytes() == raw  # the original, not the DSN
    rcpt = evidence["recipients"][0]
    assert rcpt["status"] == "bounced" and rcpt["reply"]["enhanced"] == "5.1.1"
    assert evidence["late_bounce"]["reports"][0]["recipient"] == "vanishing@example.org"
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert evidence["addendum_of"] in text
    assert "Accepted, then reported as not delivered" in " ".join(text.split())
    assert f"{qid}: bounced after delivery: <vanishing@example.org>" in gateway.log()


def test_mx_refuses_relaying_and_forged_return_paths(gateway: Gateway, mx: Sink) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port("mx"), timeout=30) as c:
        c.ehlo("attacker.example")
        c.mail("<>")
        for rcpt, code_wanted in (
            ("victim@example.org", 550),
            ("bounces+0123456789AB.aaaaaaaaaa@certifica.localhost", 550),
            ("someone@certifica.localhost", 550),
            ("victim%example.org@certifica.localhost", 550),
        ):
            code, text = c.rcpt(rcpt)
            assert code == code_wanted and text[:2] == b"5.", (rcpt, code, text)
    assert mx.to("victim@example.org") == []
