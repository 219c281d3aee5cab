"""Submission adds a missing Date and Message-ID (RFC 6409 §8.2, §8.3) to the copy that
leaves; the spool and the received hash keep the bytes received, the certificate names
the fields added, and the delivered hash covers what the recipient got."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.outbound import missing_submission_fields, submission_fields
from tests.conftest import CERT_ADDRESS, Gateway, Sink
from tests.test_certified_sending import certificate_pdf, generated_for, submit

BARE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nCc: " + CERT_ADDRESS.encode()
    + b"\r\nSubject: no date, no id\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nDate: this is the body, not a field\r\n"
)  # fmt: skip


def test_fields_found_by_name_only_in_the_header() -> None:
    assert missing_submission_fields(BARE) == ["Date", "Message-ID"]
    with_date = b"DATE : Mon, 1 Dec 2026 10:00:00 +0000\r\n" + BARE
    assert missing_submission_fields(with_date) == ["Message-ID"]
    folded = b"message-id:\r\n <a@b>\r\n" + with_date
    assert missing_submission_fields(folded) == []
    # X-Date or Resent-Message-ID are other fields.
    assert missing_submission_fields(b"X-Date: x\r\nResent-Message-ID: <y@z>\r\n" + BARE) == [
        "Date",
        "Message-ID",
    ]


def test_a_line_without_a_colon_is_no_field() -> None:
    """'Date' alone, or a continuation line before the first field, is not a Date field:
    the certificate's added fields must say what was really delivered."""
    assert missing_submission_fields(b"From: a@b.example\r\nDate\r\nMessage-ID\r\n\r\nx") == [
        "Date",
        "Message-ID",
    ]
    assert missing_submission_fields(b" Date: x\r\nFrom: a@b.example\r\n\r\nx") == [
        "Date",
        "Message-ID",
    ]
    assert missing_submission_fields(b"Date : x\r\nMessage-ID: <a@b>\r\n\r\nx") == []


@given(st.binary(max_size=300), st.integers(0, 2**33), st.text("ABCDEF0123456789", max_size=12))
def test_added_fields_are_stable_and_one_clean_field_each(
    raw: bytes, created: int, qid: str
) -> None:
    added = submission_fields(raw, qid, float(created), "gw.example")
    assert added == submission_fields(raw, qid, float(created), "gw.example")  # every attempt
    lines = added.split(b"\r\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == len(missing_submission_fields(raw))
    for line in lines[:-1]:
        assert line.isascii() and b"\n" not in line and b"\r" not in line
        assert line.startswith((b"Date: ", b"Message-ID: <"))


@pytest.mark.skipif(shutil.which("pdfdetach") is None, reason="poppler-utils not installed")
def test_certified_submission_gets_date_and_message_id(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    qid = submit(gateway, BARE, ["bob@example.org", CERT_ADDRESS])
    cert_mail = generated_for(mx, qid, "certificate")
    (copy,) = [m for m in mx.to("bob@example.org") if qid.encode() in m.data[:3000]]
    message = copy.message
    assert parsedate_to_datetime(message["Date"]) is not None
    assert message["Message-ID"].startswith(f"<{qid}.") and len(message.get_all("Date")) == 1
    assert copy.data.endswith(BARE)  # the received bytes, untouched, after the added fields

    pdf = certificate_pdf(cert_mail, tmp_path / "certificate.pdf")
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp_path), str(pdf)], check=True)
    assert (tmp_path / "message.eml").read_bytes() == BARE
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["message"]["sha256"] == hashlib.sha256(BARE).hexdigest()
    assert evidence["message"]["added_fields"] == ["Date", "Message-ID"]
    (bob,) = evidence["recipients"]
    assert bob["delivered_sha256"] == hashlib.sha256(copy.data).hexdigest()
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "Date, Message-ID: the message as submitted had none (RFC 6409" in text
    assert (gateway.state / "spool" / "archive" / f"{qid}.eml").read_bytes() == BARE


def test_a_message_with_both_fields_is_left_alone(gateway: Gateway, mx: Sink) -> None:
    raw = (
        b"From: alice@example.com\r\nTo: dated@example.org\r\nSubject: dated\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <kept@example.com>\r\n\r\nhi\r\n"
    )
    qid = submit(gateway, raw, ["dated@example.org"])
    got = mx.wait_for(lambda ms: any("dated@example.org" in m.rcpt_tos for m in ms))
    (copy,) = [m for m in got if "dated@example.org" in m.rcpt_tos]
    assert copy.message.get_all("Message-ID") == ["<kept@example.com>"]
    assert copy.message.get_all("Date") == ["Mon, 23 Nov 2026 10:00:00 +0000"]
    assert qid
