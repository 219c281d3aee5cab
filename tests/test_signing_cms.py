"""The lean CMS and PAdES signer: DER that asn1crypto re-encodes unchanged, the RFC 3161
authority's answers, and PDFs other than our own certificates.

The certificate-level checks (pdfsig, pyHanko's validator, ``openssl ts -verify``, one-
byte tampering) are in test_certificate_pdf.py; this file checks the pieces those do
not reach: every structure is canonical DER, the PAdES attribute set is the baseline
one, the TSA refuses what it cannot do, and the signer copes with existing forms and
annotations, an undersized placeholder and a TSA that stamps the wrong thing.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from asn1crypto import cms, core, tsp
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.general import SigningError
from pyhanko.sign.timestamps import TimeStamper, TimestampRequestError
from pyhanko.sign.timestamps.common_utils import handle_tsp_response
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from reportlab.lib.pagesizes import A4
from reportlab.pdfgen import canvas

from certifier.cms import generalized_time, integer, octet_string, utc_time
from certifier.document import render_certificate
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import SigningSettings, build_signer
from certifier.signing import DocumentSigner
from certifier.tsa import LocalTimeStamper
from certifier.verify import verify_certificate


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("keys") / "pki", "certifica.localhost")


@pytest.fixture(scope="module")
def signer(pki: Pki) -> DocumentSigner:
    return build_signer(SigningSettings.from_pki(pki))


@pytest.fixture(scope="module")
def tsa(pki: Pki) -> LocalTimeStamper:
    return LocalTimeStamper.from_pki(pki)


def plain_pdf(*, link: bool = False, form: bool = False) -> bytes:
    """A reportlab PDF that is not a certificate: optionally a link and a form field."""
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    c.drawString(72, 720, "Not a certificate")
    if link:
        c.linkURL("https://example.org/", (72, 700, 200, 715))
    if form:
        c.acroForm.textfield(name="comment", x=72, y=600, width=200, height=20)
    c.showPage()
    c.save()
    return buf.getvalue()


def validate(pdf: bytes, pki: Pki) -> None:
    """pyHanko's validator and poppler's pdfsig both accept the one signature."""
    (sig,) = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    context = ValidationContext(
        trust_roots=[load_cert_from_pemder(str(pki.ca_cert))], allow_fetching=False
    )
    status = validate_pdf_signature(sig, signer_validation_context=context)
    assert status.intact and status.valid and status.trusted
    assert status.coverage == SignatureCoverageLevel.ENTIRE_FILE
    ts = status.timestamp_validity
    assert ts is not None and ts.intact and ts.valid and ts.trusted


def pdfsig(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "signed.pdf"
    path.write_bytes(pdf)
    done = subprocess.run(["pdfsig", str(path)], capture_output=True, timeout=30, check=False)
    return (done.stdout + done.stderr).decode("utf-8", "replace")


# --- DER ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 127, 128, 255, 256, 2**63, 2**64 - 1, 2**200])
def test_integer_is_asn1crypto_der(value: int) -> None:
    assert integer(value) == core.Integer(value).dump()


@pytest.mark.parametrize("length", [0, 1, 127, 128, 255, 256, 65535, 65536])
def test_lengths_are_shortest_form(length: int) -> None:
    data = b"x" * length
    assert octet_string(data) == core.OctetString(data).dump()


@pytest.mark.parametrize("micro", [0, 100, 120000, 123456, 999999])
def test_times_are_asn1crypto_der(micro: int) -> None:
    when = datetime(2026, 11, 23, 10, 0, 3, micro, tzinfo=UTC)
    assert generalized_time(when) == core.GeneralizedTime(when).dump()
    assert utc_time(when) == core.UTCTime(when.replace(microsecond=0)).dump()


def test_signature_and_token_are_canonical_der(signer: DocumentSigner) -> None:
    pdf = signer.sign(render_certificate({}, b""))
    (sig,) = PdfFileReader(io.BytesIO(pdf)).embedded_signatures
    contents = sig.pkcs7_content
    der = cms.ContentInfo.load(contents, strict=False).dump()
    assert cms.ContentInfo.load(der).dump(force=True) == der
    assert not contents[len(der) :].strip(b"\x00")

    signer_info = sig.signer_info
    signed = {a["type"].native for a in signer_info["signed_attrs"]}
    # PAdES baseline: no CMS signing-time; the claimed time is the dictionary's /M.
    assert signed == {"content_type", "message_digest", "signing_certificate_v2"}
    assert sig.sig_object["/M"]
    (unsigned,) = signer_info["unsigned_attrs"]
    assert unsigned["type"].native == "signature_time_stamp_token"

    token = unsigned["values"][0]
    tst_info = token["content"]["encap_content_info"]["content"]
    raw = tst_info.contents
    assert tsp.TSTInfo.load(raw).dump(force=True) == raw
    imprint = tst_info.parsed["message_imprint"]["hashed_message"].native
    assert imprint == hashlib.sha256(signer_info["signature"].native).digest()


# --- the in-process authority ----------------------------------------------------------------


def test_local_tsa_answers_rfc3161_requests(tsa: LocalTimeStamper) -> None:
    digest = hashlib.sha384(b"document").digest()
    nonce, request = TimeStamper().request_cms(digest, "sha384")
    response = tsa.request_tsa_response(tsp.TimeStampReq.load(request.dump()))
    token = handle_tsp_response(tsp.TimeStampResp.load(response.dump()), nonce)
    tst_info = token["content"]["encap_content_info"]["content"].parsed
    assert tst_info["message_imprint"].dump() == request["message_imprint"].dump()
    assert tst_info["nonce"].native == nonce
    assert tst_info["policy"].native == tsa.policy


def test_local_tsa_refuses_an_unknown_algorithm(tsa: LocalTimeStamper) -> None:
    request = tsp.TimeStampReq(
        {
            "version": 1,
            "message_imprint": {
                "hash_algorithm": {"algorithm": "md5"},
                "hashed_message": hashlib.md5(b"x").digest(),  # noqa: S324 - what is refused
            },
            "cert_req": True,
        }
    )
    with pytest.raises(ValueError):
        tsa.request_tsa_response(request)
    with pytest.raises(ValueError):
        tsa.timestamp_token(b"short", "sha256")


# --- the signer on other PDFs, and its fallbacks -----------------------------------------------


@pytest.mark.parametrize("link, form", [(False, False), (True, False), (True, True)])
def test_signs_pdfs_with_annotations_and_forms(
    signer: DocumentSigner, pki: Pki, tmp_path: Path, link: bool, form: bool
) -> None:
    signed = signer.sign(plain_pdf(link=link, form=form))
    validate(signed, pki)
    out = pdfsig(signed, tmp_path)
    assert "Signature is Valid" in out and "Total document signed" in out, out
    reader = PdfFileReader(io.BytesIO(signed))
    fields = [f.get_object()["/T"] for f in reader.root["/AcroForm"]["/Fields"]]
    assert fields == (["comment"] if form else []) + ["CertificaSignature"]
    annots = reader.root["/Pages"]["/Kids"][0].get_object()["/Annots"]
    assert len(annots) == 1 + link + form


def test_refuses_to_sign_twice(signer: DocumentSigner) -> None:
    with pytest.raises(SigningError):
        signer.sign(signer.sign(plain_pdf()))


def test_an_undersized_placeholder_is_retried(pki: Pki) -> None:
    signer = build_signer(SigningSettings.from_pki(pki))
    signer.contents_size = 1000  # less than the certificates alone
    pdf = signer.sign(render_certificate({}, b""))
    report = verify_certificate(pdf, [pki.ca_cert])
    # The evidence is empty, so only the signature's own checks can pass.
    passed = {c.name for c in report.checks if c.ok}
    assert passed >= {"coverage", "container", "integrity", "trust", "timestamp"}


class _WrongImprintTSA(TimeStamper):
    """A remote authority (in form) that answers every request for another digest."""

    def __init__(self, authority: LocalTimeStamper) -> None:
        super().__init__()
        self.authority = authority

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        _, other = self.request_cms(hashlib.sha256(b"something else").digest(), "sha256")
        other["nonce"] = req["nonce"]
        return self.authority.request_tsa_response(other)


def test_a_token_for_something_else_is_refused(pki: Pki, tsa: LocalTimeStamper) -> None:
    signer = DocumentSigner(pki.signing_cert, pki.signing_key, [pki.ca_cert], _WrongImprintTSA(tsa))
    with pytest.raises(TimestampRequestError):
        signer.sign(plain_pdf())
    # The honest authority behind the same remote interface is accepted.
    honest = _WrongImprintTSA(tsa)
    honest.async_request_tsa_response = tsa.async_request_tsa_response  # type: ignore[method-assign]
    signed = DocumentSigner(pki.signing_cert, pki.signing_key, [pki.ca_cert], honest).sign(
        plain_pdf()
    )
    validate(signed, pki)


class _RefusingTSA(TimeStamper):
    """A remote authority that refuses every request (RFC 3161 status rejection)."""

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        status = tsp.PKIStatusInfo({"status": "rejection", "fail_info": {"system_failure"}})
        return tsp.TimeStampResp.load(b"\x30" + bytes([len(status.dump())]) + status.dump())


def test_a_refusing_tsa_is_a_temporary_error(pki: Pki) -> None:
    signer = DocumentSigner(pki.signing_cert, pki.signing_key, [pki.ca_cert], _RefusingTSA())
    with pytest.raises(TimestampRequestError):
        signer.sign(plain_pdf())
