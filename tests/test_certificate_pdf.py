"""The certificate PDF: rendering, PAdES B-T signing, RFC 3161 timestamps, verification.

Everything is real: the development PKI is made in a temporary directory, signatures are
checked by independent validators (poppler's pdfsig, pyHanko's validator, `openssl ts`),
attachments are extracted with poppler's pdfdetach, text with pdftotext, and the remote
TSA test talks HTTP to a timestamp server on a loopback port the OS picked.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import io
import json
import random
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import tsp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.embed import EmbeddedFileObject
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.timestamps import HTTPTimeStamper
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from certifier.document import TITLES, render_certificate
from certifier.document.pages import hash_groups
from certifier.i18n import Reader
from certifier.outcome import Outcome
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import CertificatePool, SigningSettings, build_signer, render_and_sign
from certifier.signing import DocumentSigner
from certifier.tsa import DEVELOPMENT_TSA_POLICY, LocalTimeStamper, make_timestamper
from certifier.verify import (
    VerifyReport,
    extract_timestamp_token,
    signature_value,
    verify_certificate,
)

HOSTILE_SUBJECT = "<b>bold</b> &amp; <font color=red>x</font> {{7*7}}"
HOSTILE_NAME = "Renée Straße 日本 <img src=http://evil.example/x.png>"
HOSTILE_FILE = 'in]]>voice<script>alert("x")</script>.pdf'
HOSTILE_REPLY = "Ok: queued as <b>ABC</b> & ]]> {{ x }}"
LONG_WORD = "W" * 2000

EML = (
    b"From: =?utf-8?q?Ren=C3=A9e?= <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Cc: certifica@certifica.localhost\r\n"
    b"Subject: <b>bold</b> &amp; <font color=red>x</font> {{7*7}}\r\n"
    b"Message-ID: <20261123100000.1@example.com>\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe contract is attached.\r\n"
)


def make_evidence(eml: bytes = EML, **message: object) -> dict[str, Any]:
    sha = hashlib.sha256(eml).hexdigest()
    evidence: dict[str, Any] = {
        "format": "certifica-evidence/1",
        "kind": "sending",
        "certificate_id": "CF-6F1C2A9E0B7D4E11",
        "queue_id": "4F2A1B3C9D",
        "issued_at": "2026-11-23T10:00:03Z",
        "gateway": {
            "hostname": "certifica.localhost",
            "domain": "certifica.localhost",
            "software": "Certifica 0.1.0",
        },
        "sender": {
            "envelope_from": "alice@example.com",
            "header_from": f"{HOSTILE_NAME} <alice@example.com>",
            "authenticated_user": "alice@example.com",
            "client_ip": "127.0.0.1",
            "client_helo": "laptop",
            "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
            "method": "submission",
        },
        "message": {
            "subject": HOSTILE_SUBJECT,
            "date": "Mon, 23 Nov 2026 10:00:00 +0000",
            "message_id": "<20261123100000.1@example.com>",
            "from": f"{HOSTILE_NAME} <alice@example.com>",
            "to": ["bob@example.org"],
            "cc": ["certifica@certifica.localhost"],
            "size": len(eml),
            "sha256": sha,
            "attachments": [
                {
                    "filename": HOSTILE_FILE,
                    "content_type": "application/pdf",
                    "size": 1234,
                    "sha256": "a1" * 32,
                }
            ],
            "text": "Hello Bob,\n\nthe contract is attached.\n\n" + LONG_WORD,
            "text_truncated": False,
            "defects": [],
        },
        "recipients": [
            {
                "address": "bob@example.org",
                "status": "delivered",
                "time": "2026-11-23T10:00:01Z",
                "mx_host": "mx.example.org",
                "ip": "127.0.0.1",
                "port": 25,
                "reply": {"code": 250, "enhanced": "2.0.0", "text": HOSTILE_REPLY},
                "remote_qid": "ABC",
                "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
                "attempts": 1,
                "delivered_sha256": "b2" * 32,
                "note": None,
            },
            {
                "address": "carol@example.net",
                "status": "failed",
                "time": "2026-11-23T10:00:02Z",
                "mx_host": "mx.example.net",
                "ip": "192.0.2.7",
                "port": 25,
                "reply": {"code": 550, "enhanced": "5.1.1", "text": "User unknown"},
                "remote_qid": None,
                "tls": None,
                "attempts": 1,
                "delivered_sha256": None,
                "note": None,
            },
        ],
        "timeline": [
            {
                "time": "2026-11-23T10:00:00Z",
                "event": "SubmissionAcceptance",
                "recipient": None,
                "detail": "250 2.0.0 queued as 4F2A1B3C9D",
            },
            {
                "time": "2026-11-23T10:00:01Z",
                "event": "RelayToNonERDS",
                "recipient": "bob@example.org",
                "detail": HOSTILE_REPLY,
            },
        ],
        "evidence_log": {
            "head": "c3" * 32,
            "entries": [{"seq": 1, "event": "SubmissionAcceptance", "hash": "d4" * 32}],
        },
    }
    evidence["message"].update(message)
    return evidence


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("keys") / "pki", "certifica.localhost")


@pytest.fixture(scope="module")
def signer(pki: Pki) -> DocumentSigner:
    return build_signer(SigningSettings.from_pki(pki))


@pytest.fixture(scope="module")
def signed(signer: DocumentSigner, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pdf") / "certificate.pdf"
    path.write_bytes(render_and_sign(make_evidence(), EML, signer))
    return path


def run(*args: str | Path, input_bytes: bytes | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], input=input_bytes, capture_output=True, timeout=30, check=False
    )
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def embedded_files(pdf: bytes) -> dict[str, bytes]:
    """Attachments as pyHanko reads them (a second extractor next to pdfdetach)."""
    reader = PdfFileReader(io.BytesIO(pdf))
    names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
    return {
        str(names[i]): names[i + 1].get_object()["/EF"]["/F"].get_object().data
        for i in range(0, len(names), 2)
    }


def failed(report: VerifyReport) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


# --- the development PKI ----------------------------------------------------------------


def test_dev_pki_is_private_idempotent_and_profiled(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    first = ensure_dev_pki(keys, "mx.example.test")
    contents = {p: p.read_bytes() for p in keys.iterdir()}
    assert ensure_dev_pki(keys, "mx.example.test") == first
    assert {p: p.read_bytes() for p in keys.iterdir()} == contents  # reused, not re-made

    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for key in (first.ca_key, first.signing_key, first.tsa_key, first.tls_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert not list(keys.glob("*.tmp"))

    out = run(
        "openssl",
        "verify",
        "-CAfile",
        first.ca_cert,
        first.signing_cert,
        first.tsa_cert,
        first.tls_cert,
    )
    assert out.count(": OK") == 3, out

    tsa = x509.load_pem_x509_certificate(first.tsa_cert.read_bytes())
    eku = tsa.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    signing = x509.load_pem_x509_certificate(first.signing_cert.read_bytes())
    usage = signing.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    ca = x509.load_pem_x509_certificate(first.ca_cert.read_bytes())
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days >= 3650
    assert (signing.not_valid_after_utc - signing.not_valid_before_utc).days <= 732

    # A new hostname re-issues only the TLS certificate, from the same CA.
    ensure_dev_pki(keys, "gw.example.test")
    assert first.ca_cert.read_bytes() == contents[first.ca_cert]
    assert first.signing_key.read_bytes() == contents[first.signing_key]
    tls = x509.load_pem_x509_certificate(first.tls_cert.read_bytes())
    san = tls.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "gw.example.test" in san.get_values_for_type(x509.DNSName)
    assert "localhost" in san.get_values_for_type(x509.DNSName)


# --- the signed certificate, checked by independent validators ---------------------------


def test_poppler_says_signature_is_valid(signed: Path) -> None:
    out = run("pdfsig", signed)
    assert "Signature is Valid" in out, out
    assert "ETSI.CAdES.detached" in out
    assert "Total document signed" in out


def test_pyhanko_validates_signature_chain_and_timestamp(signed: Path, pki: Pki) -> None:
    reader = PdfFileReader(io.BytesIO(signed.read_bytes()))
    (sig,) = reader.embedded_signatures
    assert sig.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
    context = ValidationContext(
        trust_roots=[load_cert_from_pemder(str(pki.ca_cert))], allow_fetching=False
    )
    status = validate_pdf_signature(sig, signer_validation_context=context)
    assert status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    assert status.md_algorithm == "sha256"
    ts = status.timestamp_validity
    assert ts is not None and ts.intact and ts.valid and ts.trusted
    assert abs(time.time() - ts.timestamp.timestamp()) < 600
    # The CA travels with the signature, so a verifier needs only the root's identity.
    embedded = [c.subject for c in sig.other_embedded_certs]
    assert load_cert_from_pemder(str(pki.ca_cert)).subject in embedded


def test_openssl_verifies_the_timestamp_token(signed: Path, pki: Pki, tmp_path: Path) -> None:
    pdf = signed.read_bytes()
    token = tmp_path / "token.der"
    token.write_bytes(extract_timestamp_token(pdf))
    data = tmp_path / "signature.bin"
    data.write_bytes(signature_value(pdf))
    out = run(
        "openssl", "ts", "-verify", "-in", token, "-token_in", "-data", data, "-CAfile", pki.ca_cert
    )
    assert "Verification: OK" in out, out
    text = run("openssl", "ts", "-reply", "-in", token, "-token_in", "-text")
    assert f"Policy OID: {DEVELOPMENT_TSA_POLICY}" in text, text
    # The token is over this signature only: other data fails.
    data.write_bytes(b"something else")
    assert "Verification: OK" not in run(
        "openssl", "ts", "-verify", "-in", token, "-token_in", "-data", data, "-CAfile", pki.ca_cert
    )


def test_attachments_are_byte_exact(signed: Path, tmp_path: Path) -> None:
    out = run("pdfdetach", "-saveall", "-o", tmp_path, signed)
    assert (tmp_path / "message.eml").read_bytes() == EML, out
    evidence_bytes = (tmp_path / "evidence.json").read_bytes()
    # Signing adds the seal: the holder of the certificate that signed it.
    expected = {**make_evidence(), "seal": json.loads(evidence_bytes)["seal"]}
    assert expected["seal"]["signer"] and expected["seal"]["serial"]
    assert (
        evidence_bytes
        == json.dumps(expected, indent=2, sort_keys=True, ensure_ascii=False).encode()
    )
    files = embedded_files(signed.read_bytes())
    # Beside them, one signed ETSI EN 319 522-3 document per logged event
    # (tests/test_etsi_evidence.py checks those), each saved by pdfdetach as well.
    xml = {name: data for name, data in files.items() if name.startswith("evidence-")}
    assert len(xml) == len(expected["evidence_log"]["entries"])
    for name, data in xml.items():
        assert (tmp_path / name).read_bytes() == data
    assert {n: d for n, d in files.items() if n not in xml} == {
        "evidence.json": evidence_bytes,
        "message.eml": EML,
    }


def test_visible_text_has_whole_hashes_and_literal_hostile_strings(signed: Path) -> None:
    text = run("pdftotext", "-layout", signed, "-")
    evidence = make_evidence()
    tokens = text.split()
    flat = " ".join(tokens)
    # Whole 64-digit hashes in 8 groups of 8 digits, as a reader compares them by eye
    # (in reading order: a table cell's two lines stay together).
    reading = " ".join(run("pdftotext", signed, "-").split())
    for digest in (
        evidence["message"]["sha256"],
        "a1" * 32,
        "b2" * 32,
        "c3" * 32,
        "d4" * 32,
    ):
        assert hash_groups(digest) in reading, digest
    for literal in (
        HOSTILE_SUBJECT,
        "Renée Straße 日本",
        "<img src=http://evil.example/x.png>",
        "{{ x }}",
        "<b>ABC</b> & ]]>",
        "CF-6F1C2A9E0B7D4E11",
        TITLES[Outcome.PARTIAL],  # one recipient delivered, one failed
        "certifica verify certificate.pdf",
    ):
        assert literal in flat, literal
    assert "in]]>voice<script>alert(" in flat
    assert flat.count("W") >= 2000  # the 2000-character word wrapped, not dropped
    assert "Page 1 of" in flat
    assert "bob@example.org" in flat and "carol@example.net" in flat
    assert "550 5.1.1 User unknown" in flat


# --- verify_certificate ------------------------------------------------------------------


def test_verify_accepts_the_intact_certificate(signed: Path, pki: Pki) -> None:
    report = verify_certificate(signed.read_bytes(), [pki.ca_cert])
    assert report.ok, failed(report)
    names = [c.name for c in report.checks]
    for name in (
        "signature-count",
        "coverage",
        "integrity",
        "trust",
        "timestamp",
        "attachments",
        "message-hash",
    ):
        assert name in names
    assert report.evidence == {**make_evidence(), "seal": report.evidence["seal"]}
    timestamp = next(c for c in report.checks if c.name == "timestamp")
    assert "UTC" in timestamp.detail


def test_verify_without_trust_roots_is_not_ok(signed: Path) -> None:
    report = verify_certificate(signed.read_bytes(), [])
    assert not report.ok
    assert "not checked against a trust anchor" in failed(report)["trust"]
    # Integrity is still reported on its own.
    assert "integrity" not in failed(report)


def test_verify_rejects_a_foreign_signer(tmp_path: Path, pki: Pki) -> None:
    # A forger with their own development PKI: a perfect PDF, an untrusted signer.
    forger = ensure_dev_pki(tmp_path / "forger", "certifica.localhost")
    pdf = render_and_sign(make_evidence(), EML, build_signer(SigningSettings.from_pki(forger)))
    report = verify_certificate(pdf, [pki.ca_cert])
    assert not report.ok
    assert set(failed(report)) == {"trust", "timestamp"}


def _position_inside_signature(pdf: bytes | bytearray) -> int:
    start = pdf.index(b"/Contents <") + len(b"/Contents <")
    return start + 200


def _position_in_signature_padding(pdf: bytes | bytearray) -> int:
    start = pdf.index(b"/Contents <")
    end = pdf.index(b">", start)
    return end - 10  # the zero padding after the DER object


@pytest.mark.parametrize(
    "where",
    [
        "first byte",
        "page content",
        "middle",
        "signature",
        "signature padding",
        "signature hex case",
        "last byte",
    ],
)
def test_verify_rejects_any_one_byte_change(signed: Path, pki: Pki, where: str) -> None:
    pdf = bytearray(signed.read_bytes())
    position = {
        "first byte": 0,
        "page content": pdf.index(b"stream") + 20,
        "middle": len(pdf) // 2,
        "signature": _position_inside_signature(pdf),
        "signature padding": _position_in_signature_padding(pdf),
        "signature hex case": next(
            i for i in range(_position_inside_signature(pdf), len(pdf)) if pdf[i] in b"ABCDEF"
        ),
        "last byte": len(pdf) - 1,
    }[where]
    # A case change of a hex digit keeps its value; everything else flips a bit.
    pdf[position] ^= 0x20 if where == "signature hex case" else 0x01
    report = verify_certificate(bytes(pdf), [pki.ca_cert])
    assert not report.ok, where
    assert failed(report)


def test_verify_rejects_a_re_embedded_message(signed: Path, pki: Pki) -> None:
    # Swap message.eml in an incremental update, as an editing tool would.
    writer = IncrementalPdfFileWriter(io.BytesIO(signed.read_bytes()))
    names = writer.root["/Names"]["/EmbeddedFiles"]["/Names"]
    spec = names[names.index(generic.pdf_string("message.eml")) + 1].get_object()
    forged = EML.replace(b"Hello Bob", b"Hello Eve")
    stream = EmbeddedFileObject.from_file_data(writer, forged)
    spec["/EF"] = generic.DictionaryObject(
        {
            generic.pdf_name("/F"): stream.ef_stream_ref,
            generic.pdf_name("/UF"): stream.ef_stream_ref,
        }
    )
    writer.update_container(spec)
    out = io.BytesIO()
    writer.write(out)
    report = verify_certificate(out.getvalue(), [pki.ca_cert])
    assert not report.ok
    problems = failed(report)
    assert "whole file" in problems["coverage"]
    assert "not the certified message" in problems["message-hash"]


def test_verify_rejects_a_validly_signed_wrong_message(signer: DocumentSigner, pki: Pki) -> None:
    # Even a properly signed PDF fails when message.eml is not the hashed message.
    forged = EML.replace(b"Hello Bob", b"Hello Eve")
    report = verify_certificate(render_and_sign(make_evidence(EML), forged, signer), [pki.ca_cert])
    assert set(failed(report)) == {"message-hash"}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello",
        b"%PDF-1.7",
        b"%PDF-1.7\n%%EOF\n",
        random.Random(1).randbytes(4096),
        b"%PDF-1.7\n" + random.Random(2).randbytes(4096),
    ],
    # Fixed ids and seeds: every pytest-xdist worker must collect the same tests.
    ids=["empty", "text", "header", "header-eof", "random", "header-random"],
)
def test_verify_reports_garbage_without_raising(data: bytes, pki: Pki) -> None:
    report = verify_certificate(data, [pki.ca_cert])
    assert not report.ok and report.checks and report.evidence is None


@pytest.mark.parametrize("fraction", [0.01, 0.3, 0.5, 0.9, 0.999])
def test_verify_rejects_truncated_files(signed: Path, pki: Pki, fraction: float) -> None:
    pdf = signed.read_bytes()
    report = verify_certificate(pdf[: int(len(pdf) * fraction)], [pki.ca_cert])
    assert not report.ok


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048), prefix=st.booleans())
def test_verify_never_raises_on_arbitrary_bytes(data: bytes, prefix: bool) -> None:
    report = verify_certificate((b"%PDF-1.7\n" if prefix else b"") + data, [])
    assert not report.ok


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_verify_never_accepts_a_mutated_certificate(
    signed: Path, pki: Pki, data: st.DataObject
) -> None:
    pdf = bytearray(signed.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        pdf = pdf[: data.draw(st.integers(0, len(pdf) - 1), label="length")]
    else:
        position = data.draw(st.integers(0, len(pdf) - 1), label="position")
        pdf[position] = data.draw(st.integers(0, 255).filter(lambda b: b != pdf[position]))
    assert not verify_certificate(bytes(pdf), [pki.ca_cert]).ok


def test_extract_timestamp_token_refuses_garbage() -> None:
    with pytest.raises(ValueError):
        extract_timestamp_token(b"not a pdf")


# --- rendering hostile and odd evidence ----------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(max_size=300),
    name=st.text(max_size=120),
    body=st.text(max_size=3000),
    filename=st.text(max_size=200),
    reply=st.text(max_size=400),
    odd=_json,
    kind=st.sampled_from(["sending", "reception", "addendum", "unknown", None, ["sending"]]),
)
def test_render_never_raises_on_arbitrary_text(
    subject: str,
    name: str,
    body: str,
    filename: str,
    reply: str,
    odd: object,
    kind: object,
) -> None:
    evidence = make_evidence(subject=subject, text=body, date=odd)
    evidence["kind"] = kind
    evidence["sender"]["header_from"] = name
    evidence["message"]["attachments"][0]["filename"] = filename
    evidence["recipients"][0]["reply"]["text"] = reply
    evidence["recipients"][1] = odd  # a recipient that is not even a dict
    evidence["timeline"][0]["detail"] = odd
    # The fields of the readers' issue, as hostile as the rest.
    evidence["provider"] = {"name": name, "policy_id": odd, "address": subject, "website": odd}
    evidence["seal"] = {"signer": name, "organization": odd, "not_after": odd, "serial": reply}
    evidence["verification"] = {"url": subject}  # the QR code holds whatever it is given
    evidence["recipients"][0]["copy"] = {
        "changes": [{"change": "link_tracked", "link": odd, "url": reply}, odd, {"change": odd}]
    }
    evidence["evidence_log"]["entries"][0]["detail"] = odd
    language = ["en", "es", "ca", "it"][len(subject) % 4]
    pdf = render_certificate(
        evidence, body.encode("utf-8", "surrogatepass"), Reader(language, "Atlantic/Canary")
    )
    assert pdf.startswith(b"%PDF-")
    files = embedded_files(pdf)
    assert files["message.eml"] == body.encode("utf-8", "surrogatepass")
    assert json.loads(files["evidence.json"]) == evidence


def test_render_survives_huge_and_malformed_evidence() -> None:
    many = 405  # just over the 400 rows a table shows
    wide = "Ｗ日" * 3000  # full-width: the widest glyphs, in the CJK fallback font
    evidence = make_evidence(
        subject="S" * 50_000,
        to=[f"user{i}@example.org" for i in range(500)],
        cc=[wide] * 80,
        message_id=wide,
        defects=[wide] * 30,
        text="\x00\x1b[31m\u202etxet-lanimret\u202c\n" + "line\n" * 30_000,
        attachments=[{"filename": "x" * 5000, "sha256": "f" * 64}]
        + [{"filename": f"{i}.pdf"} for i in range(many - 1)],
    )
    evidence["recipients"] = [
        {
            "address": f"r{i}@example.org" + "y" * 1000,
            "status": "bounced",
            "reply": {"text": "z" * 5000},
        }
        for i in range(20)
    ] + [["not", "a", "dict"], None, 42]
    evidence["timeline"] = [{"event": "E" * 500, "detail": "d" * 5000}] * 3 + [
        {"event": "RelayToNonERDS"}
    ] * (many - 3)
    evidence["timeline"][0] = {"time": wide, "event": wide, "recipient": wide, "detail": wide}
    evidence["gateway"] = "not a dict"
    evidence["evidence_log"] = {"head": None, "entries": "nope"}
    pdf = render_certificate(evidence, b"")
    text = " ".join(run("pdftotext", "-", "-", input_bytes=pdf).split())
    # attachments and timeline entries
    assert text.count(f"{many - 400} more entries are in the attached evidence.json") == 2
    assert "Only the first 20,000 of" in text
    assert "and 440 more (see evidence.json)" in text  # To: 60 of 500 shown
    # Control and bidi-override characters are dropped; the text itself stays.
    assert "[31mtxet-lanimret" in text
    assert "\u202e" not in text and "\x1b" not in text
    assert render_certificate({}, b"").startswith(b"%PDF-")


# --- remote TSA over HTTP, and the worker pool ----------------------------------------------


@pytest.fixture()
def tsa_url(pki: Pki) -> Iterator[str]:
    """A real RFC 3161 timestamp server on a loopback port the OS picked."""
    authority = LocalTimeStamper.from_pki(pki)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reply = authority.request_tsa_response(tsp.TimeStampReq.load(body)).dump()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/tsa"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_remote_tsa_over_http(pki: Pki, tsa_url: str) -> None:
    timestamper = make_timestamper(None, tsa_url, timeout=5.0)
    assert isinstance(timestamper, HTTPTimeStamper)
    assert isinstance(make_timestamper(pki, None), LocalTimeStamper)
    signer = DocumentSigner(pki.signing_cert, pki.signing_key, [pki.ca_cert], timestamper)
    report = verify_certificate(render_and_sign(make_evidence(), EML, signer), [pki.ca_cert])
    assert report.ok, failed(report)


def test_pool_certifies_concurrently_without_blocking_the_loop(pki: Pki) -> None:
    async def main() -> list[bytes]:
        ticks = 0

        async def heartbeat() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        beat = asyncio.create_task(heartbeat())
        with CertificatePool(SigningSettings.from_pki(pki), workers=2) as pool:
            results = await asyncio.gather(
                *(pool.certify(make_evidence(subject=f"message {i}"), EML) for i in range(4))
            )
        beat.cancel()
        assert ticks > 0  # the loop kept running while workers rendered and signed
        return list(results)

    for pdf in asyncio.run(main()):
        report = verify_certificate(pdf, [pki.ca_cert])
        assert report.ok, failed(report)


def test_timing_per_certificate(signer: DocumentSigner, capsys: pytest.CaptureFixture) -> None:
    evidence = make_evidence(text="Hello Bob,\n\nthe contract is attached.\n\nAlice\n")
    render_and_sign(evidence, EML, signer)  # warm caches
    rounds = 10
    render_s = sign_s = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        pdf = render_certificate(evidence, EML)
        t1 = time.perf_counter()
        signer.sign(pdf)
        t2 = time.perf_counter()
        render_s += t1 - t0
        sign_s += t2 - t1
    with capsys.disabled():
        print(
            f"\ncertificate: render {render_s / rounds * 1000:.1f} ms, "
            f"sign (PAdES B-T, local TSA) {sign_s / rounds * 1000:.1f} ms, "
            f"total {(render_s + sign_s) / rounds * 1000:.1f} ms per certificate"
        )


def test_signing_twice_gives_independent_valid_signatures(signer: DocumentSigner, pki: Pki) -> None:
    pdf = render_certificate(make_evidence(), EML)
    first, second = signer.sign(pdf), signer.sign(pdf)
    assert first != second  # fresh timestamp, nonce and serial each time
    rng = random.Random(1)
    for signed_pdf in (first, second):
        assert verify_certificate(signed_pdf, [pki.ca_cert]).ok
        flipped = bytearray(signed_pdf)
        flipped[rng.randrange(len(flipped))] ^= 0x40
        assert not verify_certificate(bytes(flipped), [pki.ca_cert]).ok


def test_documents_sharing_cached_font_subsets_each_show_their_own_text() -> None:
    # Font subsets are made once per process and reused; a document whose message
    # brings other characters must still show exactly its own text.
    subjects = ["Renée Müller", "Straße – ñandú “quoted”", "Renée Müller", "plain ascii only"]
    for subject in subjects:
        pdf = render_certificate(make_evidence(subject=subject), EML)
        text = " ".join(run("pdftotext", "-", "-", input_bytes=pdf).split())
        assert subject in text, subject
        assert "Renée Straße 日本" in text  # the From header, in every one


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.text(st.characters(max_codepoint=127)), st.text()),
    size=st.sampled_from([7, 7.5, 8.5, 9, 11, 16, 0.1, 300]),
    font=st.sampled_from(["CertificaSans", "CertificaSans-Bold", "CertificaMono"]),
)
def test_ascii_string_width_equals_reportlab(text: str, size: float, font: str) -> None:
    # The fast path of certifier.document.typeset._CachedSubsetsFont.stringWidth gives exactly
    # reportlab's float, so every line break and position is the same.
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    from certifier.document.typeset import fonts

    fonts()
    face = pdfmetrics.getFont(font)
    assert face.stringWidth(text, size) == TTFont.stringWidth(face, text, size)
    assert face.stringWidth(text.encode("utf-8"), size) == TTFont.stringWidth(
        face, text.encode("utf-8"), size
    )


def _drawn(flowables: list[Any], width: float, height: float) -> bytes:
    """The page bytes reportlab writes for *flowables* (invariant: no dates or ids)."""
    from reportlab import rl_config
    from reportlab.pdfgen import canvas as rl_canvas
    from reportlab.platypus import Frame

    saved = rl_config.invariant
    rl_config.invariant = 1
    try:
        buf = io.BytesIO()
        c = rl_canvas.Canvas(buf, pageCompression=0)
        for flowable in flowables:
            frame = Frame(0, 0, width, height, showBoundary=0)
            frame.addFromList([flowable], c)
            c.showPage()
        c.save()
        return buf.getvalue()
    finally:
        rl_config.invariant = saved


def test_own_paragraph_lays_out_as_a_paragraph() -> None:
    # Markup of the gateway's own wording keeps its line breaks across certificates
    # (certifier.document.typeset._OwnParagraph); drawn once, again from the cache, and split
    # over two frames, it is what a plain Paragraph draws.
    from reportlab.platypus import Paragraph

    from certifier.document.typeset import _OwnParagraph, fonts, styles, trusted

    mono = fonts()[2]
    markup = (
        "The gateway could no longer read the message (a reason with &amp; and "
        f'<font name="{mono}">certifica verify</font>). ' * 6
    )
    style = styles()["body"]
    assert isinstance(trusted(markup, "body"), _OwnParagraph)
    for width in (480.0, 300.0):
        expected = _drawn([Paragraph(markup, style)], width, 800)
        assert _drawn([_OwnParagraph(markup, style)], width, 800) == expected
        assert _drawn([_OwnParagraph(markup, style)], width, 800) == expected
        # Too little height for the whole text: split, the rest in the next frame.
        plain = Paragraph(markup, style)
        plain.wrap(width, 30)
        cached = _OwnParagraph(markup, style)
        cached.wrap(width, 30)
        parts_plain = plain.split(width, 30)
        parts_cached = cached.split(width, 30)
        assert len(parts_plain) == len(parts_cached) == 2
        assert _drawn(parts_cached, width, 800) == _drawn(parts_plain, width, 800)


def test_how_to_verify_breaks_lines_as_a_paragraph() -> None:
    # The "How to verify" text is made of RunsBlocks (commands in the mono font): their
    # lines hold the words a Paragraph of the same markup puts on each line, in every
    # language and at any width a page could have, when the Paragraph may not shrink
    # spaces (reportlab lets it shrink them by 5% to fit one more word; no TextBlock of
    # the certificate does).
    from xml.sax.saxutils import escape

    from reportlab.lib.styles import ParagraphStyle
    from reportlab.platypus import Paragraph

    from certifier.document.pages import Document, how_to_verify
    from certifier.document.typeset import RunsBlock
    from certifier.i18n import LANGUAGES, Reader

    for evidence in ({}, {"message": {"content_unavailable": "spool file missing"}}):
        for language in LANGUAGES:
            section = how_to_verify(Document(evidence, Reader(language)))
            blocks = [b for b in section if isinstance(b, RunsBlock)]
            assert len(blocks) == 2
            for block in blocks:
                markup = "".join(
                    f'<font name="{font}">{escape(text)}</font>' if font else escape(text)
                    for font, text in block.runs
                )
                style = ParagraphStyle("no-shrink", block.style, spaceShrinkage=0)
                for width in [493.2, *range(100, 600, 7)]:
                    paragraph = Paragraph(markup, style)
                    paragraph.wrap(width, 1000)
                    expected = [
                        " ".join("".join(getattr(w, "text", "") for w in line.words).split())
                        for line in paragraph.blPara.lines
                    ]
                    ours = RunsBlock(block.runs, block.style)
                    ours.wrap(width, 1000)
                    got = [" ".join("".join(t for _, t in line).split()) for line in ours._lines]
                    assert got == expected, (language, width)


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.integers(min_value=-100_000, max_value=100_000).map(lambda n: n / 64),
    )
)
def test_number_formatting_equals_reportlab(value: float) -> None:
    # certifier.document.typeset.fp writes numbers into page streams in place of reportlab's
    # fp_str (pure Python); kept per value, so asked twice.
    from reportlab.lib.rl_accel import fp_str

    from certifier.document.typeset import fp

    assert fp(value) == fp_str(value)
    assert fp(value) == fp_str(value)


def _fonts_of(pdf: bytes) -> list[dict[str, Any]]:
    """Every font of every page, its PDF objects decoded (streams as their data)."""

    def plain(obj: Any) -> Any:
        obj = obj.get_object() if isinstance(obj, generic.IndirectObject) else obj
        if isinstance(obj, generic.StreamObject):
            return {"data": obj.data, **{k: plain(v) for k, v in obj.items() if k != "/Length"}}
        if isinstance(obj, generic.DictionaryObject):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, generic.ArrayObject):
            return [plain(v) for v in obj]
        return obj

    reader = PdfFileReader(io.BytesIO(pdf))
    fonts = []
    for i in range(int(reader.root["/Pages"]["/Count"])):
        page = reader.find_page_for_modification(i)[0].get_object()
        resources = page["/Resources"]
        fonts += [plain(f) for _, f in sorted(resources["/Font"].items())]
    return fonts


def test_font_objects_are_reportlabs(monkeypatch: pytest.MonkeyPatch) -> None:
    # certifier.document.typeset._CachedSubsetsFont.addObjects writes the font objects from
    # parts made once per process; decoded, they are what reportlab's own writes
    # (several subsets: accented letters, a CJK run), in every document made after.
    from reportlab.pdfbase.ttfonts import TTFont

    from certifier.document.typeset import _CachedSubsetsFont

    evidence = make_evidence(subject="Renée Straße – ñandú “quoted” 日本 ĀăĄ")
    ours = [_fonts_of(render_certificate(evidence, EML)) for _ in range(2)]
    monkeypatch.setattr(_CachedSubsetsFont, "addObjects", TTFont.addObjects)
    reportlabs = _fonts_of(render_certificate(evidence, EML))
    assert len(reportlabs) > 3
    assert ours[0] == reportlabs
    assert ours[1] == reportlabs


@settings(max_examples=500)
@given(
    data=st.one_of(
        st.binary(max_size=200), st.text(st.characters(max_codepoint=127)).map(str.encode)
    )
)
def test_pdf_string_fast_path(data: bytes) -> None:
    # certifier.document.typeset._pdf_string_bytes skips the substitution when nothing needs an
    # escape; the result is the same either way (ISO 32000-2 7.3.4.2).
    from certifier.document.typeset import _pdf_string_bytes, _pdf_string_escaped

    assert _pdf_string_bytes(data) == _pdf_string_escaped(data)


_coordinate = st.one_of(
    st.integers(min_value=-2000, max_value=2000),
    st.floats(min_value=-2000, max_value=2000, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.tuples(*[_coordinate] * 6)), max_size=6))
def test_canvas_transform_is_reportlabs(steps: list[tuple[bool, tuple[float, ...]]]) -> None:
    # certifier.document.typeset.NumberedCanvas.transform writes its numbers with _fp; the
    # page operators and the tracked matrix are what reportlab's Canvas makes, also
    # when consecutive transforms merge into one cm operator.
    from reportlab.pdfgen import canvas as rl_canvas

    from certifier.document.typeset import NumberedCanvas

    ours, theirs = NumberedCanvas(io.BytesIO()), rl_canvas.Canvas(io.BytesIO())
    for save_first, numbers in steps:
        for c in (ours, theirs):
            if save_first:
                c.saveState()
            c.transform(*numbers)
    assert ours._code == theirs._code
    assert ours._currentMatrix == theirs._currentMatrix


@settings(max_examples=300, deadline=None)
@given(
    text=st.one_of(st.text(st.characters(max_codepoint=127)), st.text()),
    font=st.sampled_from(["CertificaSans", "CertificaSans-Bold", "CertificaMono"]),
)
def test_font_runs_fast_path(text: str, font: str) -> None:
    # certifier.document.typeset.font_runs answers printable ASCII without looking each
    # character up; the runs are what the lookup gives.
    from certifier.document.typeset import _coverage, font_runs, fonts

    fonts()
    covered = _coverage(font)
    assert covered is not None
    runs = font_runs(text, font)
    if covered.issuperset(map(ord, text.replace("\n", ""))):
        assert runs == [(None, text)]
    else:
        assert runs != [(None, text)]


@settings(max_examples=300, deadline=None)
@given(
    word=st.text(st.sampled_from("abcxyz.@-/_?&=#W日"), min_size=1, max_size=400),
    room=st.sampled_from([30.0, 80.0, 150.0, 400.0]),
)
def test_long_words_break_without_losing_a_character(word: str, room: float) -> None:
    # certifier.document.typeset._sensible_cut moves the break of a word longer than a
    # line back to just after an "@", dot, slash or hyphen: every character stays, in
    # order, and no line is wider than the room (but a single character).
    from certifier.document.typeset import _wrap_runs, fonts, text_width

    regular = fonts()[0]
    lines = _wrap_runs([(None, word)], regular, 8.5, room)
    assert "".join(text for line in lines for _, text in line) == word
    for line in lines:
        text = "".join(t for _, t in line)
        assert len(text) == 1 or text_width(text, regular, 8.5) <= room + 1e-6
