"""A certified SMS end to end, as a user sends it: a mail client submits a message To a
phone number at ``sms.<gateway domain>`` with the certification address in Cc; the
gateway cuts the signature and the quoted reply, submits the text to the operator's SMSC
(the test SMSC, tests/smsc.py: smpp34's codec), the SMSC sends a delivery receipt, and
the sender receives the signed certificate, checked with poppler's pdfsig and pdftotext
and with ``certifica verify``. Then the phone answers STOP: the number is opted out of
the organisation's marketing, a confirmation SMS goes back, and the next marketing SMS
to it is not sent and is listed in its certificate.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
)
from tests.sms_queue import SMS_DOMAIN, rows, sms_config, wait_until
from tests.smsc import SmscThread

NUMBER = "+34600111222"
OTHER = "+34600111333"
ACME_NUMBER = "+34699000000"  # the organisation's own number, where replies come (MO)
BODY = "Le recordamos que su cita es el jueves 4 a las 10:00.\r\n\r\n-- \r\nAlice, Acme S.L.\r\n"
SENT_TEXT = "Le recordamos que su cita es el jueves 4 a las 10:00."


@pytest.fixture(scope="module")
def smsc() -> Iterator[SmscThread]:
    with SmscThread() as smsc:
        yield smsc


@pytest.fixture(scope="module")
def mx(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, smsc: SmscThread, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sms-e2e")
    gw = start_gateway(sms_config(tmp, smsc.port, {"example.com": mx.port}))
    for args in (
        ("org", "add", "ACME", "--name", "Acme S.L."),
        ("users", "set", "alice@example.com", "--org", "ACME", "--role", "admin"),
        ("org", "set", "ACME", "--sms-sender", "ACME", "--sms-number", ACME_NUMBER),
        ("contacts", "add", "ACME", NUMBER, "--name", "Ana", "--consent", "marketing",
         "--consent-source", "web form"),
        ("contacts", "add", "ACME", OTHER, "--name", "Bea", "--consent", "marketing",
         "--consent-source", "web form"),
    ):  # fmt: skip
        result = gw.cli(*args)
        assert result.returncode == 0, (args, result.stderr)
    smsc.wait_for(lambda: smsc.smsc.binds >= 1)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def submit(gw: Gateway, body: str, headers: str = "", numbers: tuple[str, ...] = (NUMBER,)) -> str:
    """Send ``body`` to the phones with the certification address in Cc; the queue id."""
    to = ", ".join(f"{n}@{SMS_DOMAIN}" for n in numbers)
    raw = make_message(sender="alice@example.com", to=to, body=body)
    if headers:
        raw = raw.replace(b"Subject:", headers.encode() + b"Subject:")
    with gw.smtp() as client:
        client.mail("alice@example.com")
        for rcpt in (*(f"{n}@{SMS_DOMAIN}" for n in numbers), CERT_ADDRESS):
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        code, text = client.data(raw)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def submits(smsc: SmscThread) -> list[Any]:
    return [r for r in list(smsc.smsc.received) if r.name == "submit_sm"]


def certificate_of(mx: Sink, qid: str) -> Received:
    def found(ms: list[Received]) -> list[Received]:
        return [
            m for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and any(p.get_content_type() == "application/pdf" for p in m.message.iter_attachments())
        ]  # fmt: skip

    return found(mx.wait_for(lambda ms: bool(found(ms)), 90))[0]


def pdf_of(mail: Received, dest: Path) -> Path:
    (pdf,) = [
        p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"
    ]
    payload = pdf.get_payload(decode=True)
    assert isinstance(payload, bytes)
    dest.write_bytes(payload)
    return dest


def page_one(pdf: Path) -> str:
    out = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", "-layout", str(pdf), "-"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return " ".join(out.stdout.split())


def test_a_certified_sms_is_sent_receipted_and_certified(
    gw: Gateway, smsc: SmscThread, mx: Sink, tmp_path: Path
) -> None:
    before = len(submits(smsc))
    qid = submit(gw, BODY)
    smsc.wait_for(lambda: len(submits(smsc)) > before)
    (sent,) = submits(smsc)[before:]
    # What left for the phone: the text without the signature, as GSM 7-bit, from ACME.
    assert sent.submit.destination_addr == NUMBER.lstrip("+")
    assert sent.submit.source_addr == "ACME" and sent.submit.registered_delivery == 1
    assert sent.submit.short_message == SENT_TEXT.encode("ascii")
    stored = rows(gw.state, "SELECT * FROM sms_messages WHERE qid = ?", qid)[0]
    assert stored["text"] == SENT_TEXT
    assert stored["text_sha256"] == hashlib.sha256(SENT_TEXT.encode()).hexdigest()
    assert json.loads(stored["parts"]) == [sent.submit.short_message.hex()]
    message_id = sent.fields["message_id"]
    assert smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD", style="text")) == 0

    pdf = pdf_of(certificate_of(mx, qid), tmp_path / "sms.pdf")
    sig = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True)
    assert "Signature Validation: Signature is Valid." in sig.stdout, sig.stdout
    verified = gw.cli("verify", str(pdf))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    text = page_one(pdf)
    assert "+34 600 11 12 22" in text, text
    assert SENT_TEXT in text and "Alice, Acme" not in text
    whole = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert stored["text_sha256"] in "".join(whole.split())
    assert message_id in whole


def test_stop_opts_out_confirms_and_the_next_marketing_sms_is_not_sent(
    gw: Gateway, smsc: SmscThread, mx: Sink, tmp_path: Path
) -> None:
    before = len(submits(smsc))
    reply = smsc.smsc.send_mo(NUMBER.lstrip("+"), ACME_NUMBER.lstrip("+"), b" Stop.")
    assert smsc.call(reply) == 0
    wait_until(
        lambda: bool(rows(gw.state, "SELECT * FROM sms_optouts WHERE org = 'ACME' AND number = ?",
                          NUMBER)),
        say="the opt-out",
    )  # fmt: skip
    # The confirmation: one SMS back to the number.
    smsc.wait_for(lambda: len(submits(smsc)) > before)
    confirmation = submits(smsc)[before]
    assert confirmation.submit.destination_addr == NUMBER.lstrip("+")
    after_confirmation = len(submits(smsc))

    qid = submit(
        gw, "Ofertas de diciembre: 20% en todo.\r\n", headers="X-Certifica-SMS: marketing\r\n",
        numbers=(NUMBER, OTHER),
    )  # fmt: skip
    (row,) = rows(gw.state, "SELECT skipped FROM sms_messages WHERE qid = ?", qid)
    assert [s["address"] for s in json.loads(row["skipped"])] == [NUMBER]
    sent_to = rows(gw.state, "SELECT address FROM recipients WHERE qid = ?", qid)
    assert [r["address"] for r in sent_to] == [f"{OTHER}@{SMS_DOMAIN}"]
    smsc.wait_for(lambda: len(submits(smsc)) > after_confirmation)
    (marketing,) = submits(smsc)[after_confirmation:]
    assert marketing.submit.destination_addr == OTHER.lstrip("+")  # not to the opted out
    assert smsc.call(smsc.smsc.send_receipt(marketing.fields["message_id"], "DELIVRD")) == 0
    text = page_one(pdf_of(certificate_of(mx, qid), tmp_path / "skipped.pdf"))
    assert "+34 600 11 12 22" in text and "+34 600 11 13 33" in text, text
