"""The evidence record certifica-evidence/1: its JSON Schema, its types, and verify's check.

Real records: a certificate the running gateway makes and mails (end to end), and
records of every kind the gateway wrote in the end-to-end suites (``fixtures/evidence``:
sending, tracked, content lost, both addenda, reception). Tamper tests sign a record
that lacks a required field or has a wrong type with the real signer: the signature is
intact, and verify fails on the schema alone, saying which field in one sentence.
"""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pyhanko.pdf_utils.reader import PdfFileReader

from certifier import evidence_record
from certifier.evidence_record import EvidenceRecord, schema, schema_problem
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import SigningSettings, build_signer, render_and_sign
from certifier.signing import DocumentSigner
from certifier.verify import verify_certificate
from tests.conftest import CERT_ADDRESS, Gateway, Sink, fixture_bytes
from tests.test_certificate_pdf import EML, make_evidence
from tests.test_certified_sending import certificate_pdf, generated_for, submit

ROOT = Path(__file__).resolve().parent.parent
RECORDS = sorted((Path(__file__).resolve().parent / "fixtures" / "evidence").glob("*.json"))


def embedded_evidence(pdf: bytes) -> dict[str, Any]:
    reader = PdfFileReader(io.BytesIO(pdf))
    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    files = {
        str(names[i]): names[i + 1].get_object()["/EF"]["/F"].get_object().data
        for i in range(0, len(names), 2)
    }
    loaded: dict[str, Any] = json.loads(files["evidence.json"])
    return loaded


def cli_verify(pdf: Path, ca: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "verify", str(pdf), "--trust", str(ca)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=pdf.parent,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("keys") / "pki", "certifica.localhost")


@pytest.fixture(scope="module")
def signer(pki: Pki) -> DocumentSigner:
    return build_signer(SigningSettings.from_pki(pki))


# --- the schema and the types ------------------------------------------------------------


def test_the_schema_is_draft_2020_12_and_shipped_in_the_package() -> None:
    loaded = schema()
    assert loaded["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(loaded)
    assert loaded["properties"]["format"] == {"const": evidence_record.FORMAT}
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"schemas/*.json"' in pyproject and '"jsonschema==' in pyproject
    shipped = ROOT / "certifier" / "schemas" / evidence_record.SCHEMA_FILE
    assert json.loads(shipped.read_text(encoding="utf-8")) == loaded


def _typed_dicts() -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, TypedDict, schema object) pairs that say the same thing."""
    defs = schema()["$defs"]
    pairs = [("EvidenceRecord", EvidenceRecord, schema())]
    for name, definition in [
        ("Gateway", "gateway"),
        ("Sender", "sender"),
        ("Message", "message"),
        ("Attachment", "attachment"),
        ("Invoice", "invoice"),
        ("InvoiceParty", "invoice_party"),
        ("InvoiceSignature", "invoice_signature"),
        ("Recipient", "recipient"),
        ("Copy", "copy"),
        ("CopyEdit", "copy_edit"),
        ("CopyChange", "copy_change"),
        ("Reply", "reply"),
        ("Tls", "tls"),
        ("Tracking", "tracking"),
        ("TrackingEvent", "tracking_event"),
        ("TimelineEntry", "timeline_entry"),
        ("LogEntry", "log_entry"),
        ("LogCheckpoint", "checkpoint"),
        ("EvidenceLog", "log_excerpt"),
        ("LegacyEvidenceLog", "legacy_log"),
        ("Reception", "reception"),
        ("LateBounce", "late_bounce"),
        ("Provider", "provider"),
        ("Verification", "verification"),
        ("Seal", "seal"),
    ]:
        pairs.append((name, getattr(evidence_record, name), defs[definition]))
    return pairs


@pytest.mark.parametrize(("name", "typed", "node"), _typed_dicts(), ids=lambda v: str(v)[:20])
def test_the_types_and_the_schema_name_the_same_fields(name: str, typed: Any, node: Any) -> None:
    hints = typing.get_type_hints(typed)
    assert set(hints) == set(node["properties"]), name
    assert set(typed.__required_keys__) == set(node.get("required", [])), name


# --- real records ------------------------------------------------------------------------


@pytest.mark.parametrize("path", RECORDS, ids=lambda p: p.stem)
def test_every_kind_of_record_the_gateway_wrote_matches(path: Path) -> None:
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["format"] == "certifica-evidence/1"
    assert schema_problem(record) is None


def test_the_fixture_records_cover_every_kind() -> None:
    records = [json.loads(p.read_text(encoding="utf-8")) for p in RECORDS]
    assert {r["kind"] for r in records} == {"sending", "addendum", "reception"}
    assert any("content_unavailable" in r["message"] for r in records)
    assert any(r.get("late_bounce") for r in records)
    assert any(r.get("tracking") for r in records)


def test_a_certificate_the_gateway_mails_matches_and_verifies(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    raw = fixture_bytes("thunderbird_attachments.eml")
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    pdf = certificate_pdf(generated_for(mx, qid, "certificate"), tmp_path / "certificate.pdf")
    evidence = embedded_evidence(pdf.read_bytes())
    assert evidence["queue_id"] == qid
    assert schema_problem(evidence) is None
    ca = gateway.state / "keys" / "ca.pem"
    report = verify_certificate(pdf.read_bytes(), [ca])
    checks = {c.name: c for c in report.checks}
    assert report.ok, [c for c in report.checks if not c.ok]
    assert checks["evidence-schema"].ok
    result = cli_verify(pdf, ca)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   evidence-schema: evidence.json follows the certifica-evidence/1 schema." in (
        result.stdout
    )


def test_a_signed_record_verifies_with_the_schema_check(signer: DocumentSigner, pki: Pki) -> None:
    report = verify_certificate(render_and_sign(make_evidence(), EML, signer), [pki.ca_cert])
    assert report.ok, [c for c in report.checks if not c.ok]
    assert [c.ok for c in report.checks if c.name == "evidence-schema"] == [True]


# --- tampered records --------------------------------------------------------------------


def _without_gateway(evidence: dict[str, Any]) -> None:
    del evidence["gateway"]


def _port_as_text(evidence: dict[str, Any]) -> None:
    evidence["recipients"][1]["port"] = "25"


def _bad_attachment_hash(evidence: dict[str, Any]) -> None:
    evidence["message"]["attachments"][0]["sha256"] = "not a hash"


def _unknown_kind(evidence: dict[str, Any]) -> None:
    evidence["kind"] = "invoice"


def _summary_gone(evidence: dict[str, Any]) -> None:
    del evidence["message"]["subject"]


TAMPERED = [
    (_without_gateway, "the record lacks the required field gateway"),
    (_port_as_text, "recipients[1].port is a string where integer or null is expected"),
    (_bad_attachment_hash, "message.attachments[0].sha256 is not written as this format requires"),
    (_unknown_kind, "kind holds a value this format does not allow"),
    (_summary_gone, "message matches none of the forms this format allows"),
]


@pytest.mark.parametrize(("tamper", "why"), TAMPERED, ids=lambda v: getattr(v, "__name__", ""))
def test_a_signed_record_off_the_schema_fails_verification_with_a_sentence(
    tamper: Any, why: str, signer: DocumentSigner, pki: Pki, tmp_path: Path
) -> None:
    evidence = copy.deepcopy(make_evidence())
    tamper(evidence)
    pdf = render_and_sign(evidence, EML, signer)
    report = verify_certificate(pdf, [pki.ca_cert])
    assert not report.ok
    failed = {c.name: c.detail for c in report.checks if not c.ok}
    sentence = f"evidence.json does not follow the certifica-evidence/1 schema: {why}."
    assert failed == {"evidence-schema": sentence}  # the signature itself is intact

    path = tmp_path / "off-schema.pdf"
    path.write_bytes(pdf)
    result = cli_verify(path, pki.ca_cert)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"FAIL evidence-schema: {sentence}" in result.stdout
    assert "NOT VALID" in result.stderr and "Traceback" not in result.stderr


def test_a_hostile_field_name_stays_one_printable_line() -> None:
    evidence = make_evidence()
    evidence["sender"] = {"envelope_from": "a@b", "\x1b[31mmethod\n": "x"}
    problem = schema_problem(evidence)
    assert problem == "sender lacks the required field method"
    evidence["recipients"][0]["\u202ex\n"] = 1
    del evidence["recipients"][0]["address"]
    problem = schema_problem(make_evidence() | {"recipients": evidence["recipients"]})
    assert problem is not None and problem.isprintable()
