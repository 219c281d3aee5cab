"""Certified sending end to end: submit, relay, notice, signed certificate, verify.

Everything is real: the gateway subprocess, smtplib and swaks as clients, aiosmtpd
sinks as the recipients' servers, and independent validators for the PDF (poppler's
pdfsig and pdftotext, pyHanko's validator, openssl ts -verify).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from certifier.document.pages import hash_groups
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Received,
    Sink,
    fixture_bytes,
    make_message,
)


def submit(gw: Gateway, raw: bytes, rcpts: list[str], sender: str = "alice@example.com") -> str:
    """Send one message and return the queue id from the 250 reply."""
    with gw.smtp() as c:
        c.mail(sender)
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, text
        code, text = c.data(raw)
        assert code == 250, text
    reply = text.decode()
    assert reply.startswith("2.0.0")
    return reply.rsplit(" ", 1)[1]


def generated_for(mx: Sink, qid: str, kind: str, timeout: float = 90.0) -> Received:
    """The notice or certificate mail the gateway sent about ``qid``."""

    def find(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and (m.message["Subject"] or "").startswith(
                "Certificate" if kind == "certificate" else "Being certified"
            )
        ]

    return find(mx.wait_for(lambda ms: bool(find(ms)), timeout))[0]


def certificate_pdf(mail: Received, dest: Path) -> Path:
    pdfs = [p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"]
    assert len(pdfs) == 1
    payload = pdfs[0].get_payload(decode=True)
    assert isinstance(payload, bytes)
    dest.write_bytes(payload)
    return dest


@pytest.fixture(scope="module")
def thunderbird_run(gateway: Gateway, mx: Sink, tmp_path_factory: pytest.TempPathFactory) -> dict:
    raw = fixture_bytes("thunderbird_attachments.eml")
    qid = submit(gateway, raw, ["bob@example.org", "carol@example.net", CERT_ADDRESS])
    cert_mail = generated_for(mx, qid, "certificate")
    pdf = certificate_pdf(cert_mail, tmp_path_factory.mktemp("cert") / "certificate.pdf")
    return {"raw": raw, "qid": qid, "cert_mail": cert_mail, "pdf": pdf}


def test_each_recipient_gets_the_message_once(thunderbird_run: dict, mx: Sink) -> None:
    raw, qid = thunderbird_run["raw"], thunderbird_run["qid"]
    for rcpt in ("bob@example.org", "carol@example.net"):
        copies = [m for m in mx.to(rcpt) if qid.encode() in m.data.split(b"\r\n\r\n", 1)[0]]
        assert len(copies) == 1, rcpt
        got = copies[0].data
        assert got.endswith(raw)  # the original bytes, untouched, after the gateway's fields
        added = got[: len(got) - len(raw)]
        # the gateway's DKIM signature over its Received field and the message
        assert added.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
        assert b"d=certifica.localhost;" in added
        assert b"\r\nReceived: from client.test" in added
        # the return path is ours (VERP), so late bounces come back as evidence
        assert re.fullmatch(
            r"bounces\+[0-9A-F]{12}\.[a-z2-7]{10}@certifica\.localhost", copies[0].mail_from
        )
    assert not any(CERT_ADDRESS in m.rcpt_tos for m in mx.messages)


def test_sender_gets_a_processing_notice(thunderbird_run: dict, mx: Sink) -> None:
    notice = generated_for(mx, thunderbird_run["qid"], "notice")
    assert notice.mail_from in ("", "<>")  # null reverse-path: nothing ever answers a notice
    assert notice.rcpt_tos == ["alice@example.com"]
    msg = notice.message
    assert msg["Auto-Submitted"] == "auto-generated"
    text = msg.get_body(("plain",)).get_content()
    assert hashlib.sha256(thunderbird_run["raw"]).hexdigest() in text
    assert "being processed" in text


def test_certificate_passes_pdfsig(thunderbird_run: dict) -> None:
    out = subprocess.run(["pdfsig", str(thunderbird_run["pdf"])], capture_output=True, text=True)
    assert "Signature is Valid" in out.stdout, out.stdout + out.stderr


def test_certificate_passes_pyhanko_validator(thunderbird_run: dict, gateway: Gateway) -> None:
    from pyhanko.keys import load_cert_from_pemder
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko_certvalidator import ValidationContext

    root = load_cert_from_pemder(str(gateway.state / "keys" / "ca.pem"))
    with open(thunderbird_run["pdf"], "rb") as f:
        reader = PdfFileReader(f)
        # One signature, then only the document timestamp of PAdES B-LTA (tests/test_lta.py).
        assert len(reader.embedded_regular_signatures) == 1
        assert len(reader.embedded_timestamp_signatures) == 1
        status = validate_pdf_signature(
            reader.embedded_regular_signatures[0],
            signer_validation_context=ValidationContext(trust_roots=[root]),
            ts_validation_context=ValidationContext(trust_roots=[root]),
        )
    assert status.intact and status.valid and status.trusted
    assert status.timestamp_validity is not None and status.timestamp_validity.intact
    # What follows the signature is long-term validation data only (DSS, timestamp).
    assert status.coverage.name == "ENTIRE_REVISION"
    assert status.modification_level is not None
    assert status.modification_level.name == "LTA_UPDATES"


def test_certificate_text_holds_the_received_hash_and_recipients(thunderbird_run: dict) -> None:
    text = subprocess.run(
        ["pdftotext", "-layout", str(thunderbird_run["pdf"]), "-"], capture_output=True, text=True
    ).stdout
    # The hash in 8 groups of 8 digits, as a reader compares it by eye.
    assert hash_groups(hashlib.sha256(thunderbird_run["raw"]).hexdigest()) in text
    for rcpt in ("bob@example.org", "carol@example.net"):
        assert rcpt in text
    assert "delivered" in text


def test_embedded_message_and_evidence(thunderbird_run: dict, tmp_path: Path) -> None:
    subprocess.run(
        ["pdfdetach", "-saveall", "-o", str(tmp_path), str(thunderbird_run["pdf"])], check=True
    )
    assert (tmp_path / "message.eml").read_bytes() == thunderbird_run["raw"]
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["queue_id"] == thunderbird_run["qid"]
    assert evidence["message"]["sha256"] == hashlib.sha256(thunderbird_run["raw"]).hexdigest()
    assert evidence["sender"]["authenticated_user"] == "alice@example.com"
    assert evidence["sender"]["tls"]["version"].startswith("TLSv1")
    names = {a["filename"] for a in evidence["message"]["attachments"]}
    assert any(n.endswith(".pdf") for n in names)
    by_rcpt = {r["address"]: r for r in evidence["recipients"]}
    assert set(by_rcpt) == {"bob@example.org", "carol@example.net"}
    for r in by_rcpt.values():
        assert r["status"] == "delivered" and r["reply"]["code"] == 250
        assert r["remote_qid"] == "SINK0001" and r["ip"] == "127.0.0.1"
        assert len(r["delivered_sha256"]) == 64
    events = [e["event"] for e in evidence["timeline"]]
    assert events[0] == "SubmissionAcceptance" and events.count("RelayToNonERDS") == 2


def test_delivered_hash_is_what_the_recipient_got(
    thunderbird_run: dict, mx: Sink, tmp_path: Path
) -> None:
    subprocess.run(
        ["pdfdetach", "-saveall", "-o", str(tmp_path), str(thunderbird_run["pdf"])], check=True
    )
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    qid = thunderbird_run["qid"]
    for r in evidence["recipients"]:
        copy = [m for m in mx.to(r["address"]) if qid.encode() in m.data[:2000]][0]
        assert hashlib.sha256(copy.data).hexdigest() == r["delivered_sha256"]


def test_timestamp_token_verifies_with_openssl(
    thunderbird_run: dict, gateway: Gateway, tmp_path: Path
) -> None:
    from pyhanko.pdf_utils.reader import PdfFileReader

    from certifier.verify import extract_timestamp_token

    pdf = thunderbird_run["pdf"].read_bytes()
    token = tmp_path / "token.der"
    token.write_bytes(extract_timestamp_token(pdf))
    with open(thunderbird_run["pdf"], "rb") as f:
        signer_info = PdfFileReader(f).embedded_signatures[0].signer_info
        (tmp_path / "signature.bin").write_bytes(signer_info["signature"].native)
    keys = gateway.state / "keys"
    out = subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-in",
            str(token),
            "-token_in",
            "-data",
            str(tmp_path / "signature.bin"),
            "-CAfile",
            str(keys / "ca.pem"),
            "-untrusted",
            str(keys / "tsa.pem"),
        ],
        capture_output=True,
        text=True,
    )
    assert "Verification: OK" in out.stdout, out.stdout + out.stderr


def test_verify_command_accepts_the_intact_certificate(
    thunderbird_run: dict, gateway: Gateway
) -> None:
    result = gateway.cli("verify", str(thunderbird_run["pdf"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signature" in result.stdout.lower() and "timestamp" in result.stdout.lower()


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, 0.999])
def test_verify_command_rejects_a_changed_byte(
    thunderbird_run: dict, gateway: Gateway, tmp_path: Path, where: float
) -> None:
    data = bytearray(thunderbird_run["pdf"].read_bytes())
    pos = int(len(data) * where)
    data[pos] ^= 0x01
    bad = tmp_path / "tampered.pdf"
    bad.write_bytes(bytes(data))
    result = gateway.cli("verify", str(bad))
    assert result.returncode != 0, f"byte {pos} changed and verify still passed"
    assert "Traceback" not in result.stderr


def test_swaks_certified_mail(gateway: Gateway, mx: Sink) -> None:
    if shutil.which("swaks") is None:
        pytest.fail("swaks is not installed (.ci/run installs it)")
    swaks = f"""swaks --server 127.0.0.1:{gateway.port()} --tls --auth PLAIN
        --auth-user alice@example.com --auth-password {PASSWORD!r}
        --from alice@example.com --to dave@example.org,{CERT_ADDRESS}
        --header 'To: dave@example.org' --header 'Cc: {CERT_ADDRESS}'
        --header 'Subject: swaks certified' --body 'Sent with swaks'"""
    out = subprocess.run(shlex.split(swaks), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    line = [x for x in out.stdout.splitlines() if "queued as" in x][-1]
    qid = line.rsplit(" ", 1)[1]
    cert = generated_for(mx, qid, "certificate")
    assert cert.rcpt_tos == ["alice@example.com"]
    assert len(mx.to("dave@example.org")) == 1


def test_uncertified_mail_is_relayed_plainly(gateway: Gateway, mx: Sink) -> None:
    raw = make_message(subject="plain relay", to="erin@example.org", cc="")
    qid = submit(gateway, raw, ["erin@example.org"])
    mx.wait_for(lambda ms: any("erin@example.org" in m.rcpt_tos for m in ms))
    # no notice and no certificate for it, ever: wait until the queue has removed it
    import time

    deadline = time.monotonic() + 20
    while f"{qid}: removed" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"{qid}: removed" in gateway.log()
    assert not any(m.message["X-Certifica-Queue-Id"] == qid for m in mx.messages)


def test_log_lines_in_postfix_style(thunderbird_run: dict, gateway: Gateway) -> None:
    qid = thunderbird_run["qid"]
    lines = [x for x in gateway.log().splitlines() if f" {qid}: " in x]
    text = "\n".join(lines)
    assert (
        f"{qid}: from=<alice@example.com>, size={len(thunderbird_run['raw'])}, nrcpt=2, certified=yes"
        in text
    )
    assert f"{qid}: to=<bob@example.org>, relay=127.0.0.1[127.0.0.1]:" in text
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as SINK0001)" in text
    assert (
        f"{qid}: certificate=CF-" in text
        and f"sha256={hashlib.sha256(thunderbird_run['raw']).hexdigest()}" in text
    )
    assert f"{qid}: removed" in text
