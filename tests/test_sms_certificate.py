"""The certificate of a message with SMS recipients (docs/sms.md, "The certificate").

Messages are queued in a real store with their SMS text encoded by
:func:`relay.sms.encoding.encode_sms`; each SMS recipient then goes through the store's
own SMS writes as the SMS agent drives them (a ``submitting`` row per part before it
leaves, the SMSC's answers, a part whose answer was lost sent again, receipts made as
``deliver_sm`` PDUs by smpp34 and read back by the gateway's reader, the receipt
timeout). The certificate is made by the certify stage (:class:`DocumentMaker`, the
process pool running :func:`certifier.pipeline.certify`), exactly as for e-mail, and
checked with tools that are not the gateway's: pdftotext (what page 1 says, in English,
Spanish, Catalan and Italian), pdfsig (the signature), hashlib (the text's SHA-256), a
JSON Schema validator (the evidence) and ``certifica verify``.

With ``CERTIFICA_SCREENSHOTS=1`` page 1 is also written to
``docs/screenshots/sms-certificate-page1.png`` (pdftoppm, 80 dpi).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import time
import typing
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import smpp34
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.pdf_utils.reader import PdfFileReader
from smpplib import smpp as smpplib_pdu
from yarl import URL

from certifier import evidence_record
from certifier.document import render_certificate
from certifier.document.pages import hash_groups
from certifier.document.sms import shown_text
from certifier.evidence_record import schema, schema_problem
from certifier.i18n import Reader
from certifier.pipeline import complete_evidence
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import CertificatePool, SigningSettings, build_signer, render_and_sign
from relay.certify.documents import DocumentMaker
from relay.certify.evidence_record import build_evidence
from relay.config import Config, load_config
from relay.process.gateway import PipelineCertifier, signing_settings, state_paths
from relay.queue.jobs import DocumentJob, DocumentKind
from relay.queue.records import NewMessage, Outcome, SmsContent
from relay.queue.sms import SmsAttempt
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.sms.encoding import EncodedSms, encode_sms
from relay.sms.inbound import DeliveryReceipt, receipt_from_pdu
from relay.sms.numbers import sms_domain
from relay.sms.smpp import Outcome as SubmitOutcome
from relay.sms.smpp import SubmitResult
from relay.web.tracking import StoreBackend, make_http_runner
from tests.conftest import write_config
from tests.test_evidence_schema import cli_verify, embedded_evidence

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "screenshots" / "sms-certificate-page1.png"

TEXT = (
    "Estimado cliente: le comunicamos que el contrato 2026/118 vence el 15/12/2026. "
    "Si desea renovarlo, responda antes del 10/12/2026 o llame al 900 100 200. "
    "Gracias. ACME Seguros"
)
HOSTILE_TEXT = (
    "<b>pay</b> &amp; <font color=red>now</font> %PDF-1.7 ]]> {{7*7}}\n"
    "abc\u202etxt.exe\u200b ok\n" + "W" * 280
)
SENDER = "alice@acme.example"
DELIVERED, UNDELIVERED, NO_RECEIPT, REFUSED, NOT_SENT = (
    "+34600111222",
    "+34600111333",
    "+393471234567",
    "+34600111555",
    "+34600111666",
)


@dataclass
class Made:
    """A certificate the certify stage made, and what it was made of."""

    pdf: Path
    evidence: dict[str, Any]
    text: str
    pki: Pki
    mail: bytes  # the certificate mail queued to the sender
    erased: dict[str, Any]  # the evidence built again once retention cleared the text
    cfg: Config
    store: Store


def encoded(text: str) -> EncodedSms:
    result = encode_sms(text, max_segments=6, reference=42)
    assert isinstance(result, EncodedSms)
    return result


def sms_content(text: str, **extra: Any) -> SmsContent:
    sms = encoded(text)
    return SmsContent(
        text=text,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        alphabet=str(sms.alphabet),
        data_coding=sms.data_coding,
        esm_class=sms.esm_class,
        parts=tuple(p.hex() for p in sms.parts),
        units=sms.units,
        sender_id="ACME",
        **extra,
    )


class _Sequence:
    """Sequence numbers for smpplib's PDU parser."""

    sequence = 0

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence


def receipt(
    number: str, message_id: str, state: str, error: str = "000", esm_class: int = 0x04
) -> DeliveryReceipt:
    """An operator's receipt as the SMSC sends it: a ``deliver_sm`` with the SMPP 3.4
    Appendix B text, encoded by smpp34 (as tests/smsc.py does) and read back as the
    gateway reads it (smpplib, :func:`receipt_from_pdu`), the PDU kept raw;
    ``esm_class`` 0x20: an intermediate notification (section 5.2.12), never final."""
    text = (
        f"id:{message_id} sub:001 dlvrd:{'001' if state == 'DELIVRD' else '000'} "
        f"submit date:2612031802 done date:2612031804 stat:{state} err:{error} text:Estimado"
    ).encode("ascii")
    pdu = smpp34.DeliverSm(
        number.lstrip("+"), "ACME", text, source_addr_ton=1, source_addr_npi=1,
        dest_addr_ton=5, dest_addr_npi=0, esm_class=esm_class, tlvs=[], sequence_number=9,
    )  # fmt: skip
    raw = pdu.encode()
    parsed = smpplib_pdu.parse_pdu(raw, client=_Sequence(), allow_unknown_opt_params=True)
    return receipt_from_pdu(parsed, raw)


def accepted(message_id: str) -> SubmitResult:
    return SubmitResult(SubmitOutcome.ACCEPTED, message_id=message_id, command_status=0)


async def attempt(
    store: Store, qid: str, rid: int, attempts: int, answers: dict[int, SubmitResult], now: float
) -> str:
    """One attempt of the SMS agent on one recipient, through the store's own writes:
    a ``submitting`` row per part still to send, then the SMSC's answers (a part left
    out of ``answers`` never got one: the process died with it out)."""
    parts = await store.sms_start_attempt(qid, rid, attempts + 1, now)
    sms = SmsAttempt(qid, rid, attempts, expires=now + 3600, next_attempt=now + 60)
    results = [(p, answers[p.seq]) for p in parts if p.seq in answers]
    return await store.record_sms_attempt(sms, results, now + 0.2)


def eml(subject: str, to: str, body: str) -> bytes:
    return (
        (
            f"From: Alice <{SENDER}>\r\nTo: {to}\r\nCc: certifica@certifica.localhost\r\n"
            f"Subject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@acme.example>\r\n"
            "Date: Thu, 03 Dec 2026 18:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + body.replace("\n", "\r\n").encode("utf-8")
        + b"\r\n"
    )


async def _sms_only(cfg: Config, store: Store, spool: Spool) -> str:
    """Five numbers: delivered (two parts, the second sent twice), undelivered (with
    intermediate notifications before and after its final receipts), no receipt within
    the timeout, refused by the SMSC, not sent before the message's time in the queue ran
    out (throttled, then no session); and a group member skipped."""
    domain = sms_domain(cfg.gateway.domain)
    qid = "SMS0000000A1"
    raw = eml("Vencimiento", f"clientes@{domain}", TEXT)
    spool.store(qid, raw)
    numbers = (DELIVERED, UNDELIVERED, NO_RECEIPT, REFUSED, NOT_SENT)
    # As relay.sms.compose lists them (docs/sms.md, "Groups").
    skipped = (
        {"address": "", "name": "Juan Pérez", "group": "clientes", "reason": "no phone number",
         "why": "no_number"},
        {"address": f"+34600111999@{domain}", "name": "", "group": "",
         "reason": "opted out on 2026-12-01 (reply STOP)", "why": "opted_out"},
    )  # fmt: skip
    await store.enqueue(
        NewMessage(
            qid=qid,
            kind="mail",
            sender=SENDER,
            size=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            recipients=tuple(f"{n}@{domain}" for n in numbers),
            certified=True,
            method="submission",
            cert_id="CF-5A5A000000000001",
            auth_user=SENDER,
            client_ip="192.0.2.10",
            sms=sms_content(TEXT, skipped=skipped),
        )
    )
    ids = {r["address"].partition("@")[0]: r["id"] for r in await store.recipients(qid)}
    now = time.time()
    # Delivered: part 2's first submit_sm never got its answer, so it is sent again.
    first = {1: accepted("4f2a01")}
    assert await attempt(store, qid, ids[DELIVERED], 0, first, now) == "deferred"
    assert await attempt(store, qid, ids[DELIVERED], 1, {2: accepted("4f2a02")}, now + 60) == (
        "submitted"
    )
    await store.record_sms_receipt(receipt(DELIVERED, "4f2a01", "DELIVRD"), now + 120)
    await store.record_sms_receipt(receipt(DELIVERED, "4f2a02", "DELIVRD"), now + 121)
    # Undelivered: both parts accepted, part 1 UNDELIV error 001. Intermediate
    # notifications (esm_class 0x20, ACCEPTD) come before and after: never final.
    both = {1: accepted("4f2a03"), 2: accepted("4f2a04")}
    assert await attempt(store, qid, ids[UNDELIVERED], 0, both, now) == "submitted"
    await store.record_sms_receipt(
        receipt(UNDELIVERED, "4f2a03", "ACCEPTD", esm_class=0x20), now + 125
    )
    await store.record_sms_receipt(receipt(UNDELIVERED, "4f2a03", "UNDELIV", "001"), now + 130)
    await store.record_sms_receipt(receipt(UNDELIVERED, "4f2a04", "DELIVRD"), now + 131)
    await store.record_sms_receipt(
        receipt(UNDELIVERED, "4f2a04", "ACCEPTD", esm_class=0x20), now + 140
    )
    # Refused: the SMSC refused the destination.
    refusal = SubmitResult(
        SubmitOutcome.FAILED,
        command_status=0x0B,
        sentence="the SMSC refused the SMS: the destination number was refused "
        "(ESME_RINVDSTADR, 0x0000000B)",
    )
    assert await attempt(store, qid, ids[REFUSED], 0, {1: refusal, 2: refusal}, now) == "failed"
    # No receipt: accepted, nothing comes back within [sms] receipt_timeout.
    both = {1: accepted("4f2a11"), 2: accepted("4f2a12")}
    assert await attempt(store, qid, ids[NO_RECEIPT], 0, both, now) == "submitted"
    timeout = cfg.sms.receipt_timeout
    assert await store.sms_receipt_timeouts(now + timeout + 1, timeout) == [qid]
    # Not sent: throttled, then no session with the SMSC, until the message expired.
    throttled = SubmitResult(
        SubmitOutcome.DEFERRED,
        command_status=0x58,
        sentence="the SMSC refused the SMS: too many messages were sent too fast "
        "(throttling) (ESME_RTHROTTLED, 0x00000058)",
    )
    unbound = SubmitResult(SubmitOutcome.DEFERRED, sentence="not bound to the SMSC")
    rid = ids[NOT_SENT]
    assert await attempt(store, qid, rid, 0, {1: throttled, 2: throttled}, now) == "deferred"
    parts = await store.sms_start_attempt(qid, rid, 2, now + 60)
    last = SmsAttempt(qid, rid, 1, expires=now + 30, next_attempt=now + 120)
    said = await store.record_sms_attempt(last, [(p, unbound) for p in parts], now + 60.2)
    assert said == "failed"
    return qid


async def _mixed_hostile(cfg: Config, store: Store, spool: Spool) -> str:
    """One e-mail recipient and one phone; the SMS text looks like markup and PDF
    syntax, holds a right-to-left override and a zero-width space, and a 280-letter
    word (UCS-2, because of the override)."""
    domain = sms_domain(cfg.gateway.domain)
    qid = "SMS0000000B2"
    raw = eml("Mixed", f"bob@example.org, {DELIVERED}@{domain}", "See the SMS.")
    spool.store(qid, raw)
    await store.enqueue(
        NewMessage(
            qid=qid,
            kind="mail",
            sender=SENDER,
            size=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            recipients=("bob@example.org", f"{DELIVERED}@{domain}"),
            certified=True,
            method="submission",
            cert_id="CF-5A5A000000000002",
            auth_user=SENDER,
            client_ip="192.0.2.10",
            sms=sms_content(HOSTILE_TEXT, marketing=True),
        )
    )
    ids = {r["address"]: r["id"] for r in await store.recipients(qid)}
    phone = ids[f"{DELIVERED}@{domain}"]
    now = time.time()
    segments = len(encoded(HOSTILE_TEXT).parts)
    answers = {seq: accepted(f"77{seq:02d}") for seq in range(1, segments + 1)}
    assert await attempt(store, qid, phone, 0, answers, now) == "submitted"
    for seq in range(1, segments + 1):
        await store.record_sms_receipt(receipt(DELIVERED, f"77{seq:02d}", "DELIVRD"), now + 5)
    await store.record(
        qid,
        [
            Outcome(
                ids["bob@example.org"],
                "delivered",
                250,
                "2.0.0",
                "Ok: queued as B1",
                mx_host="mx.example.org",
                ip="127.0.0.1",
                port=25,
            ),  # fmt: skip
        ],
        now + 10,
    )
    return qid


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Made]]:
    """Both certificates, made by the certify stage from a real store."""
    tmp = tmp_path_factory.mktemp("sms-certificate")
    cfg = load_config(write_config(tmp, {"example.org": 9}))
    paths = state_paths(cfg)
    for key in ("keys", "spool", "certificates"):
        paths[key].mkdir(parents=True, exist_ok=True)
    pki = ensure_dev_pki(paths["keys"], cfg.gateway.hostname)
    pool = CertificatePool(signing_settings(cfg, pki), workers=1)
    store = Store(paths["db"], cfg.queue.lifetime)
    spool = Spool(paths["spool"])

    async def make() -> dict[str, str]:
        maker = DocumentMaker(
            cfg, store, spool, PipelineCertifier(pool), paths["certificates"], b"k" * 32
        )
        qids = {
            "sms": await _sms_only(cfg, store, spool),
            "mixed": await _mixed_hostile(cfg, store, spool),
        }
        for qid in qids.values():
            await maker.make(DocumentJob(DocumentKind.NOTICE, qid))
            await maker.make(DocumentJob(DocumentKind.FINISH, qid))
        return qids

    try:
        qids = asyncio.run(make())
        mails = {}
        for queued in asyncio.run(store.all_qids()):
            row = asyncio.run(store.message(queued))
            if row is not None and row["parent_qid"]:
                mails[(row["parent_qid"], row["kind"])] = spool.read(queued)
        # As retention leaves a message's SMS (docs/retention.md): no text, no octets.
        store.run_sync(lambda db: db.execute("UPDATE sms_messages SET text = NULL, parts = '[]'"))
        erased = {
            qid: asyncio.run(build_evidence(cfg, store, asyncio.run(store.message(qid)) or {}))
            for qid in qids.values()
        }
        out = {}
        for name, qid in qids.items():
            row = asyncio.run(store.message(qid))
            assert row is not None and row["cert_state"] == "done", row
            pdf = paths["certificates"] / f"{row['cert_id']}.pdf"
            text = TEXT if name == "sms" else HOSTILE_TEXT
            out[name] = Made(
                pdf,
                embedded_evidence(pdf.read_bytes()),
                text,
                pki,
                mails[(qid, "certificate")],
                erased[qid],
                cfg,
                store,
            )
        yield out
    finally:
        store.close()
        pool.close()


def pdftotext(pdf: Path, *pages: int) -> str:
    span = ["-f", str(pages[0]), "-l", str(pages[-1])] if pages else []
    done = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", *span, str(pdf), "-"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return " ".join(done.stdout.split())


def rendered(made: Made, language: str, tmp: Path) -> Path:
    signer = build_signer(SigningSettings.from_pki(made.pki))
    path = tmp / f"{language}.pdf"
    reader = Reader(language, "Europe/Madrid")
    path.write_bytes(
        render_and_sign(made.evidence, embedded_message(made.pdf), signer, reader=reader)
    )
    return path


def embedded_message(pdf: Path) -> bytes:
    reader = PdfFileReader(io.BytesIO(pdf.read_bytes()))
    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    files = {
        str(names[i]): names[i + 1].get_object()["/EF"]["/F"].get_object().data
        for i in range(0, len(names), 2)
    }
    data: bytes = files["message.eml"]
    return data


# --- the evidence -------------------------------------------------------------------


def by_number(made: Made) -> dict[str, dict[str, Any]]:
    return {r["sms"]["number"]: r for r in made.evidence["recipients"] if "sms" in r}


def test_the_evidence_holds_the_exact_text_its_hash_and_the_octets_sent(
    made: dict[str, Made],
) -> None:
    for m in made.values():
        sms = m.evidence["sms"]
        assert sms["text"] == m.text
        assert sms["text_sha256"] == hashlib.sha256(m.text.encode("utf-8")).hexdigest()
        sent = encoded(m.text)
        assert sms["parts"] == [p.hex() for p in sent.parts]
        assert sms["segments"] == len(sent.parts) and sms["units"] == sent.units
        assert sms["data_coding"] == sent.data_coding and sms["esm_class"] == sent.esm_class
        assert sms["sender_id"] == "ACME"
    assert made["sms"].evidence["sms"]["alphabet"] == "gsm"
    assert made["mixed"].evidence["sms"]["alphabet"] == "ucs2"  # U+202E is not GSM
    assert made["mixed"].evidence["sms"]["marketing"] is True
    assert made["sms"].evidence["sms"]["skipped"] == [
        {"address": "", "name": "Juan Pérez", "group": "clientes", "reason": "no phone number",
         "why": "no_number"},
        {"address": "+34600111999@sms.certifica.localhost", "name": "", "group": "",
         "reason": "opted out on 2026-12-01 (reply STOP)", "why": "opted_out"},
    ]  # fmt: skip


def test_each_number_has_its_outcome_parts_and_receipts(made: dict[str, Made]) -> None:
    phones = by_number(made["sms"])
    assert {n: r["sms"]["outcome"] for n, r in phones.items()} == {
        DELIVERED: "delivered",
        UNDELIVERED: "undelivered",
        NO_RECEIPT: "no_receipt",
        REFUSED: "refused",
        NOT_SENT: "not_sent",
    }
    delivered = phones[DELIVERED]["sms"]
    assert delivered["possible_duplicate"] is True
    assert [
        (p["seq"], p["attempt"], p["state"], p["maybe_duplicate"]) for p in delivered["parts"]
    ] == [
        (1, 1, "accepted", False),
        (2, 1, "submitting", False),
        (2, 2, "accepted", True),
    ]
    assert [p["message_id"] for p in delivered["parts"]] == ["4f2a01", None, "4f2a02"]
    assert [(x["seq"], x["state"]) for x in delivered["receipts"]] == [
        (1, "DELIVRD"),
        (2, "DELIVRD"),
    ]
    # The whole deliver_sm as the SMSC sent it, its Appendix B text inside.
    raw = bytes.fromhex(delivered["receipts"][0]["raw"])
    assert raw == receipt(DELIVERED, "4f2a01", "DELIVRD").raw
    assert b"id:4f2a01 sub:001 dlvrd:001 submit date:2612031802 done date:2612031804" in raw
    assert delivered["receipts"][0]["done_date"] == "2612031804"  # as the operator wrote it
    undelivered = phones[UNDELIVERED]["sms"]
    assert undelivered["failure"] == {"seq": 1, "state": "UNDELIV", "error": "001"}
    assert undelivered["possible_duplicate"] is False
    assert phones[NO_RECEIPT]["sms"]["receipts"] == []
    assert phones[NO_RECEIPT]["status"] == "delivered"
    refused = phones[REFUSED]["sms"]
    assert refused["failure"]["command_status"] == 0x0B
    assert "ESME_RINVDSTADR" in refused["failure"]["sentence"]
    assert refused["submitted_at"] is None
    assert refused["failure"]["status_name"] == "ESME_RINVDSTADR"
    # The e-mail recipient of the mixed message has no sms object.
    mixed = {r["address"]: r for r in made["mixed"].evidence["recipients"]}
    assert "sms" not in mixed["bob@example.org"]


def test_only_final_receipts_decide_and_intermediate_ones_are_marked(
    made: dict[str, Made],
) -> None:
    """An intermediate notification (esm_class 0x20, ACCEPTD) is kept and shown, but
    neither the failure nor the receipt's time: the receipts that ended each part do."""
    undelivered = by_number(made["sms"])[UNDELIVERED]["sms"]
    assert [(x["seq"], x["state"], x["final"]) for x in undelivered["receipts"]] == [
        (1, "ACCEPTD", False),
        (1, "UNDELIV", True),
        (2, "DELIVRD", True),
        (2, "ACCEPTD", False),
    ]
    assert undelivered["failure"] == {"seq": 1, "state": "UNDELIV", "error": "001"}
    finals = [x["received_at"] for x in undelivered["receipts"] if x["final"]]
    assert undelivered["receipt_at"] == max(finals)
    assert undelivered["receipt_at"] < undelivered["receipts"][-1]["received_at"]
    delivered = by_number(made["sms"])[DELIVERED]["sms"]
    assert all(x["final"] for x in delivered["receipts"])
    text = pdftotext(made["sms"].pdf)
    assert text.count("Operator's intermediate notification (not the final receipt)") == 2


def test_an_sms_the_smsc_never_took_before_the_queue_lifetime_is_not_sent(
    made: dict[str, Made], tmp_path: Path
) -> None:
    """Throttled, then no session: no part refused, no receipt; the message's time in
    the queue ran out. Not "refused": "not sent", with the last answer."""
    r = by_number(made["sms"])[NOT_SENT]
    assert r["status"] == "failed"
    assert r["sms"]["submitted_at"] is None and r["sms"]["receipts"] == []
    failure = r["sms"]["failure"]
    assert failure["sentence"] == r["reply"]["text"]
    assert failure["sentence"].startswith("retries exhausted after 2 attempts")
    assert failure["command_status"] is None and failure["status_name"] is None
    assert made["sms"].evidence["sms"]["queue_lifetime"] == made["sms"].cfg.queue.lifetime
    page = pdftotext(made["sms"].pdf, 1)
    assert "SMS to +34 600 11 16 66: not taken by the operator's SMS centre. Not sent:" in page
    assert "time in the queue ran out (1 minute)" in page  # the test's [queue] lifetime
    assert page.count("Refused by the operator's SMS centre") == 1  # REFUSED only
    # The annex keeps the gateway's own account of it.
    assert f"from the SMS centre's answer: “{failure['sentence']}”" in pdftotext(made["sms"].pdf)
    evidence = json.loads(json.dumps(made["sms"].evidence))
    evidence["sms"]["queue_lifetime"] = 5 * 86400  # the default [queue] lifetime
    pdf = tmp_path / "days.pdf"
    pdf.write_bytes(render_certificate(evidence, embedded_message(made["sms"].pdf)))
    assert "time in the queue ran out (5 days)." in pdftotext(pdf, 1)


def test_the_evidence_follows_the_schema_and_the_types_name_its_fields(
    made: dict[str, Made],
) -> None:
    for m in made.values():
        assert schema_problem(m.evidence) is None
    defs = schema()["$defs"]
    for typed, node in [
        (evidence_record.Sms, defs["sms"]),
        (evidence_record.SmsSkipped, defs["sms_skipped"]),
        (evidence_record.SmsRecipient, defs["sms_recipient"]),
        (evidence_record.SmsPart, defs["sms_part"]),
        (evidence_record.SmsReceipt, defs["sms_receipt"]),
        (evidence_record.SmsFailure, defs["sms_failure"]),
    ]:
        assert set(typing.get_type_hints(typed)) == set(node["properties"]), typed
        assert set(typed.__required_keys__) == set(node.get("required", [])), typed
    # A recipient still waiting for its receipts is "submitted"; a wrong outcome is not allowed.
    waiting = json.loads(json.dumps(made["sms"].evidence))
    waiting["recipients"][0]["status"] = "submitted"
    assert schema_problem(waiting) is None
    waiting["recipients"][0]["sms"]["outcome"] = "read"
    assert (
        schema_problem(waiting)
        == "recipients[0].sms.outcome holds a value this format does not allow"
    )


# --- the PDF ---------------------------------------------------------------------------

PAGE_ONE = {
    "en": [
        "Certificate of partial delivery of a certified SMS",
        "SMS sent to +34 600 11 12 22",
        "Delivered to the phone (operator's receipt, received on",
        "It may have arrived twice",
        "Not delivered: the operator reported UNDELIV (the SMS could not be delivered), error 001.",
        "Sent; the operator sent no delivery receipt within 48 hours.",
        "+39 347 123 4567",
        "Refused by the operator's SMS centre:",
        "Refused by the operator's SMS centre: the destination number is not valid (code ESME_RINVDSTADR, 0x0000000B).",
        "Not sent: the operator's SMS centre could not be reached or did not take it before the message's time in the queue ran out (",
        "Juan Pérez, of the group clientes: not sent, because no mobile number is recorded",
        "+34 600 11 19 99: not sent, because the number opted out of these messages.",
        "with the sender name ACME",
    ],
    "es": [
        "Certificado de entrega parcial de un SMS certificado",
        "SMS enviado al +34 600 11 12 22",
        "Entregado en el teléfono (acuse de entrega de la operadora, recibido el",
        "Puede haber llegado dos veces",
        "No entregado: la operadora comunicó UNDELIV (no se pudo entregar el SMS), error 001.",
        "Enviado; la operadora no remitió acuse de entrega en un plazo de 48 horas.",
        "Rechazado por el centro de mensajes de la operadora:",
        "Rechazado por el centro de mensajes de la operadora: el número de destino no es válido (código ESME_RINVDSTADR, 0x0000000B).",
        "No enviado: no se pudo contactar con el centro de mensajes de la operadora, o este no lo aceptó, antes de que se agotara el tiempo del mensaje en la cola (",
        "Juan Pérez, del grupo clientes: no se envió, porque no consta ningún número",
        "+34 600 11 19 99: no se envió, porque el número figura dado de baja de estos mensajes.",
        "con ACME como nombre del remitente",
    ],
    "ca": [
        "Certificat de lliurament parcial d'un SMS certificat",
        "SMS enviat al +34 600 11 12 22",
        "Lliurat al telèfon (justificant de lliurament de l'operadora, rebut el",
        "Pot haver arribat dues vegades",
        "No lliurat: l'operadora va comunicar UNDELIV (no s'ha pogut lliurar l'SMS), error 001.",
        "Enviat; l'operadora no va trametre cap justificant de lliurament en un termini de 48 hores.",
        "Rebutjat pel centre de missatges de l'operadora:",
        "Rebutjat pel centre de missatges de l'operadora: el número de destinació no és vàlid (codi ESME_RINVDSTADR, 0x0000000B).",
        "No enviat: no es va poder contactar amb el centre de missatges de l'operadora",
        "Juan Pérez, del grup clientes: no es va enviar",
        "+34 600 11 19 99: no es va enviar, perquè el número consta com a donat de baixa",
    ],
    "it": [
        "Certificato di consegna parziale di un SMS certificato",
        "SMS inviato al +34 600 11 12 22",
        "Consegnato al telefono (notifica di consegna dell'operatore telefonico, pervenuta il",
        "Potrebbe essere arrivato due volte",
        "Non consegnato: l'operatore telefonico ha comunicato UNDELIV (non è stato possibile consegnare l'SMS), errore 001.",
        "Inviato; l'operatore telefonico non ha trasmesso alcuna notifica di consegna entro 48 ore.",
        "Rifiutato dal centro messaggi dell'operatore telefonico:",
        "Rifiutato dal centro messaggi dell'operatore telefonico: il numero di destinazione non è valido (codice ESME_RINVDSTADR, 0x0000000B).",
        "Non inviato: non è stato possibile contattare il centro messaggi dell'operatore telefonico",
        "Juan Pérez, del gruppo clientes: non inviato, perché",
        "+34 600 11 19 99: non inviato, perché per questo numero risulta un'opposizione",
    ],
}


@pytest.mark.parametrize("language", sorted(PAGE_ONE))
def test_page_one_states_number_text_and_outcomes_in_words(
    made: dict[str, Made], language: str, tmp_path: Path
) -> None:
    m = made["sms"]
    pdf = m.pdf if language == "en" else rendered(m, language, tmp_path)
    page = pdftotext(pdf, 1)
    for said in PAGE_ONE[language]:
        assert said in page, (said, page)
    # Wholly in the reader's language: the SMSC's English answer is the annex's detail.
    assert "SMSC" not in page and "refused the SMS" not in page
    assert "e-mail" not in page and "correo" not in page and "correu" not in page
    assert "posta elettronica" not in page
    assert " ".join(TEXT.split()) in page  # the exact text, in its box
    if language == "es":  # dates as the reader writes them, in the reader's time zone
        submitted = made["sms"].evidence["recipients"][0]["sms"]["submitted_at"]
        said = Reader("es", "Europe/Madrid").moment(submitted)
        assert "CET (" in said
        assert f"aceptado por el centro de mensajes de la operadora el {said}" in page


def test_the_annex_states_the_text_hash_encoding_ids_and_raw_receipts(
    made: dict[str, Made],
) -> None:
    m = made["sms"]
    text = pdftotext(m.pdf)
    digest = hashlib.sha256(TEXT.encode("utf-8")).hexdigest()
    assert f"SHA-256 of the text (UTF-8) {hash_groups(digest)}" in text
    assert "GSM 7-bit default alphabet (3GPP TS 23.038)" in text
    assert "data_coding (SMPP 3.4, section 5.2.19) 0 (0x00)" in text
    assert "Segments 2" in text
    for message_id in ("4f2a01", "4f2a02", "4f2a03", "4f2a11", "4f2a12"):
        assert message_id in text
    # Each part's octets and each receipt, in hexadecimal pairs.
    first = encoded(TEXT).parts[0].hex()
    assert " ".join(first[i : i + 2] for i in range(0, 24, 2)) in text
    assert "2612031804 (2026-12-03 18:04)" in text  # the operator's clock, as written
    assert "69 64 3a 34 66 32 61 30 33" in text  # "id:4f2a03" of the UNDELIV receipt raw
    # The timeline names what ended each phone in the words of SMS, not of mail servers.
    assert "SMS delivered to the phone (operator's receipt)" in text
    assert "SMS not delivered (operator's receipt)" in text
    assert "SMS sent; no delivery receipt from the operator" in text


@pytest.mark.parametrize("name", ["sms", "mixed"])
def test_pdfsig_and_certifica_verify_accept_it(made: dict[str, Made], name: str) -> None:
    m = made[name]
    signed = subprocess.run(["pdfsig", str(m.pdf)], capture_output=True, text=True, timeout=60)
    assert "Signature is Valid" in signed.stdout, signed.stdout + signed.stderr
    assert "Total document signed" in signed.stdout
    result = cli_verify(m.pdf, m.pki.ca_cert)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   evidence-schema" in result.stdout


def test_hostile_sms_text_stays_text_and_the_mixed_message_has_both_sections(
    made: dict[str, Made],
) -> None:
    m = made["mixed"]
    page = pdftotext(m.pdf, 1)
    assert "Certificate of delivery of a certified e-mail" in page  # e-mail on its terms
    assert "certified e-mail and SMS" in page  # the statement names both services
    assert "The mail server of example.org accepted the message for bob@example.org" in page
    assert "The SMS On " in page and "SMS sent to +34 600 11 12 22" in page
    assert "<b>pay</b> &amp; <font color=red>now</font> %PDF-1.7 ]]> {{7*7}}" in page
    assert "abc[U+202E]txt.exe[U+200B] ok" in page  # shown as codes, never applied
    assert "\u202e" not in pdftotext(m.pdf) and "\u200b" not in pdftotext(m.pdf)
    assert "W" * 50 in page  # the long word wraps inside the box
    assert "This SMS is a marketing message" in page
    whole = pdftotext(m.pdf)
    assert "Delivery to each recipient bob@example.org" in whole
    assert (
        "+34600111222@sms"
        not in whole.partition("Delivery to each recipient")[2].partition(
            "The SMS and the operator's receipts"
        )[0]
    )


def test_the_certificate_mail_says_what_became_of_each_phone(made: dict[str, Made]) -> None:
    message = email.message_from_bytes(made["sms"].mail, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    body = message.get_body(("plain",))
    assert body is not None
    text = " ".join(body.get_content().split())
    assert "SMS delivered to the phone, as the operator's receipt confirms" in text
    assert "SMS not delivered: the operator's receipt says so" in text
    assert "SMS sent; the operator sent no delivery receipt" in text
    assert "SMS not sent: the operator's SMS centre refused it" in text
    assert "SMS not sent: the operator's SMS centre could not be reached or did not" in text
    assert "mail server" not in text.partition("Technical details")[0]
    mixed = email.message_from_bytes(made["mixed"].mail, policy=email.policy.default)
    assert isinstance(mixed, email.message.EmailMessage)
    body = mixed.get_body(("plain",))
    assert body is not None
    said = " ".join(body.get_content().split())
    assert "accepted by the recipient's mail server" in said  # bob@example.org
    assert "SMS delivered to the phone, as the operator's receipt confirms" in said


def test_once_the_text_is_erased_its_hash_and_the_receipts_remain(
    made: dict[str, Made], tmp_path: Path
) -> None:
    m = made["sms"]
    erased = m.erased
    assert erased["sms"]["text"] is None and erased["sms"]["parts"] == []
    assert erased["sms"]["text_sha256"] == m.evidence["sms"]["text_sha256"]
    assert erased["sms"]["segments"] == 2  # from the parts submitted
    assert [r["sms"] for r in erased["recipients"]] == [r["sms"] for r in m.evidence["recipients"]]
    eml = embedded_message(m.pdf)
    evidence = complete_evidence(erased, eml) | {"verification": m.evidence["verification"]}
    assert schema_problem(evidence) is None
    signer = build_signer(SigningSettings.from_pki(m.pki))
    pdf = tmp_path / "erased.pdf"
    pdf.write_bytes(render_and_sign(evidence, eml, signer))
    page = pdftotext(pdf, 1)
    assert (
        "The text is no longer kept (it was erased); its SHA-256 in annex C still identifies it."
        in page
    )
    assert "Delivered to the phone" in page


async def _page(made: Made, language: str) -> str:
    """The verification page of ``made`` (the QR code's link), served by the gateway's
    own HTTP application on a port of its own, in ``language``."""
    runner = await make_http_runner(
        made.cfg, b"k" * 32, StoreBackend(made.cfg, made.store, lambda: None)
    )
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        path = URL(made.evidence["verification"]["url"]).path
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}{path}", headers={"Accept-Language": language}
            ) as response,
        ):
            assert response.status == 200
            return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", await response.text())).split())
    finally:
        await runner.cleanup()


def test_the_verification_page_names_it_and_each_phone_as_the_pdf_does(
    made: dict[str, Made],
) -> None:
    page = asyncio.run(_page(made["sms"], "es"))
    assert "Certificado de entrega parcial de un SMS certificado" in page
    assert "SMS entregado en el teléfono (acuse de la operadora)" in page
    assert "SMS no entregado (acuse de la operadora)" in page
    assert "SMS enviado; sin acuse de entrega de la operadora" in page
    assert "SMS rechazado por el centro de mensajes de la operadora" in page
    assert "SMS no enviado: el centro de mensajes de la operadora no lo aceptó a tiempo" in page
    assert "servidor de correo" not in page
    mixed = asyncio.run(_page(made["mixed"], "en"))
    assert "Certificate of delivery of a certified e-mail" in mixed
    assert "Accepted by the recipient's mail server" in mixed  # bob@example.org
    assert "SMS delivered to the phone (operator's receipt)" in mixed


def test_a_text_of_many_lines_goes_on_in_the_annex(made: dict[str, Made], tmp_path: Path) -> None:
    """Page 1's box is one table cell, which cannot be split between pages: it shows the
    beginning, and the annex every line (no plainer fallback document)."""
    evidence = json.loads(json.dumps(made["sms"].evidence))
    evidence["sms"]["text"] = "\n".join(f"line {i}" for i in range(1, 401))
    pdf = tmp_path / "lines.pdf"
    pdf.write_bytes(render_certificate(evidence, embedded_message(made["sms"].pdf)))
    page = pdftotext(pdf, 1)
    assert "line 1 line 2" in page and "line 24 " in page and "line 25 " not in page
    assert "The text goes on: annex C shows it whole." in page
    whole = pdftotext(pdf)
    assert "The text exactly as sent" in whole and "line 400" in whole
    assert "could not be laid out" not in whole


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_the_text_shown_keeps_every_character_and_applies_none(text: str) -> None:
    shown = shown_text(text)
    hidden = ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")
    assert all(c == "\n" or unicodedata.category(c) not in hidden for c in shown)

    # Every character is there, as itself or as its code, in order.
    def code(c: str) -> str:
        return f"[U+{ord(c):04X}]" if unicodedata.category(c) in hidden else c

    expected = "".join("\n" if c == "\n" else code(c) for c in text if c != "\r")
    assert shown == expected


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(min_size=1, max_size=400))
def test_any_text_renders_as_text(made: dict[str, Made], text: str) -> None:
    evidence = json.loads(json.dumps(made["mixed"].evidence))
    evidence["sms"]["text"] = text
    pdf = render_certificate(evidence, embedded_message(made["mixed"].pdf))
    done = subprocess.run(
        ["pdftotext", "-f", "1", "-l", "1", "-", "-"], input=pdf, capture_output=True, timeout=60
    )
    page = done.stdout.decode("utf-8")
    assert "The SMS" in page and "SMS sent to +34 600 11 12 22" in " ".join(page.split())


def test_an_sms_sent_without_any_receipt_is_titled_as_sent(made: dict[str, Made]) -> None:
    from certifier.outcome import Outcome, outcome, title_id

    evidence = json.loads(json.dumps(made["sms"].evidence))
    only = [r for r in evidence["recipients"] if r["sms"]["outcome"] == "no_receipt"]
    assert title_id(evidence | {"recipients": only}) == "Certificate of sending of a certified SMS"
    delivered = [r for r in evidence["recipients"] if r["sms"]["outcome"] == "delivered"]
    assert outcome(evidence | {"recipients": delivered}) == Outcome.DELIVERY
    assert (
        title_id(evidence | {"recipients": delivered})
        == "Certificate of delivery of a certified SMS"
    )
    failed = [r for r in evidence["recipients"] if r["status"] == "failed"]
    assert (
        title_id(evidence | {"recipients": failed})
        == "Certificate of non-delivery of a certified SMS"
    )


def test_page_one_screenshot(made: dict[str, Made], tmp_path: Path) -> None:
    """Page 1 as a reader sees it (docs/screenshots/sms-certificate-page1.png)."""
    subprocess.run(
        [
            "pdftoppm",
            "-r",
            "80",
            "-png",
            "-f",
            "1",
            "-l",
            "1",
            str(made["sms"].pdf),
            str(tmp_path / "page"),
        ],
        check=True,
        timeout=60,
    )
    (png,) = tmp_path.glob("page*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("CERTIFICA_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, SCREENSHOT)
