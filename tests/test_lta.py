"""PAdES B-LT and B-LTA certificates (ETSI EN 319 142-1), checked by validators not ours.

A certificate made by the real gateway is validated with pyHanko's AdES validator
(ETSI EN 319 102-1), through its command line (``pyhanko sign adesverify``, package
pyhanko-cli) with only the development root as trust anchor and no network, and through
its API at a validation time after the signing certificate has expired
(``simulate_future_ades_lta_validation``: the newest document timestamp is taken as
maintained, everything else must come from the file). poppler's pdfsig shows the
signature and the document timestamp; ``certifica verify`` accepts the certificate and
refuses it changed. The CRL and CA certificate the certificates point at are fetched
from the gateway's public HTTP listener.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation.ades import simulate_future_ades_lta_validation
from pyhanko.sign.validation.policy_decl import (
    PdfSignatureValidationSpec,
    SignatureValidationSpec,
)
from pyhanko_certvalidator.context import CertValidationPolicySpec
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from pyhanko_certvalidator.registry import SimpleTrustManager

from certifier.verify import verify_certificate
from tests.conftest import CERT_ADDRESS, Gateway, Sink, make_message
from tests.test_certified_sending import certificate_pdf, generated_for, submit

PYHANKO = str(Path(sys.executable).with_name("pyhanko"))
PUBLIC_URL = "http://127.0.0.1:8080"  # [web] public_url's default, as the test config has it


@pytest.fixture(scope="module")
def certificate(gateway: Gateway, mx: Sink, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = make_message("LTA please")
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    mail = generated_for(mx, qid, "certificate")
    return certificate_pdf(mail, tmp_path_factory.mktemp("lta") / "certificate.pdf")


def ca(gateway: Gateway) -> Path:
    return gateway.state / "keys" / "ca.pem"


def adesverify(pdf: Path, root: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own arguments
        [PYHANKO, "sign", "adesverify", "--trust", str(root), "--trust-replace", *more, str(pdf)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def future_validation(pdf: bytes, root: Path, when: dt.datetime) -> tuple[bool, str]:
    """pyHanko's AdES LTA validation of the signature at *when*, from the file alone."""
    spec = PdfSignatureValidationSpec(
        SignatureValidationSpec(
            cert_validation_policy=CertValidationPolicySpec(
                trust_manager=SimpleTrustManager.build([load_cert_from_pemder(str(root))]),
                revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
            )
        )
    )
    sig = PdfFileReader(io.BytesIO(pdf)).embedded_regular_signatures[0]
    result = asyncio.run(simulate_future_ades_lta_validation(sig, spec, when))
    return result.api_status.bottom_line, result.api_status.summary()


def signing_cert(pdf: bytes) -> x509.Certificate:
    sig = PdfFileReader(io.BytesIO(pdf)).embedded_regular_signatures[0]
    return x509.load_der_x509_certificate(sig.signer_cert.dump())


def test_the_gateway_publishes_the_crl_and_ca_the_certificates_name(
    gateway: Gateway, certificate: Path
) -> None:
    base = f"http://{gateway.listen['http']}"
    with urllib.request.urlopen(base + "/pki/ca.crl", timeout=10) as reply:  # noqa: S310
        assert reply.headers["Content-Type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(reply.read())
    with urllib.request.urlopen(base + "/pki/ca.crt", timeout=10) as reply:  # noqa: S310
        assert reply.headers["Content-Type"] == "application/pkix-cert"
        served_ca = x509.load_der_x509_certificate(reply.read())
    root = x509.load_pem_x509_certificate(ca(gateway).read_bytes())
    assert served_ca == root
    assert crl.is_signature_valid(root.public_key())
    assert crl.next_update_utc is not None and crl.next_update_utc > dt.datetime.now(dt.UTC)
    assert len(crl) == 0
    cert = signing_cert(certificate.read_bytes())
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for p in points for n in p.full_name or []] == [PUBLIC_URL + "/pki/ca.crl"]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [d.access_location.value for d in aia] == [PUBLIC_URL + "/pki/ca.crt"]


def test_pyhanko_adesverify_finds_the_certificate_trusted_offline(
    gateway: Gateway, certificate: Path
) -> None:
    result = adesverify(certificate, ca(gateway))
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert ":INTACT:TRUSTED," in line, line
    assert "TIMESTAMP_TOKEN<INTACT:TRUSTED>" in line
    assert "EXTENDED_WITH_LTA_UPDATES" in line


def test_still_trusted_after_the_signing_certificate_expired(
    gateway: Gateway, certificate: Path
) -> None:
    pdf = certificate.read_bytes()
    later = signing_cert(pdf).not_valid_after_utc + dt.timedelta(days=30)
    ok, summary = future_validation(pdf, ca(gateway), later)
    assert ok, summary
    assert summary.startswith("INTACT:TRUSTED,"), summary
    # The same signature without what came after it (its own revision, PAdES B-T) is
    # not trusted then: the DSS and the document timestamp are what keep it valid.
    sig = PdfFileReader(io.BytesIO(pdf)).embedded_regular_signatures[0]
    revision_end = int(sig.byte_range[2]) + int(sig.byte_range[3])
    ok, summary = future_validation(pdf[:revision_end], ca(gateway), later)
    assert not ok, summary


def test_the_certificate_has_a_dss_with_vri_and_a_document_timestamp(certificate: Path) -> None:
    reader = PdfFileReader(io.BytesIO(certificate.read_bytes()))
    dss = reader.root["/DSS"]
    assert len(dss["/Certs"]) >= 3  # signing, TSA, CA
    assert len(dss["/CRLs"]) >= 1
    assert len(dss["/VRI"]) == 1  # the signature's
    stamps = reader.embedded_timestamp_signatures
    assert len(stamps) == 1
    assert stamps[0].sig_object["/SubFilter"] == "/ETSI.RFC3161"


def test_pdfsig_shows_the_signature_and_the_document_timestamp(certificate: Path) -> None:
    out = subprocess.run(  # noqa: S603
        ["pdfsig", str(certificate)],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    first, second = out.split("Signature #2:")
    assert "Signature #1:" in first
    assert "Signature Validation: Signature is Valid." in first
    assert "document signing" in first
    assert "timestamp authority" in second
    assert "Total document signed" in second


def test_certifica_verify_accepts_the_lta_certificate(gateway: Gateway, certificate: Path) -> None:
    report = verify_certificate(certificate.read_bytes(), [ca(gateway)])
    assert report.ok, [c for c in report.checks if not c.ok]
    details = {c.name: c.detail for c in report.checks}
    assert "1 document timestamp" in details["signature-count"]
    result = gateway.cli("verify", str(certificate), "--trust", str(ca(gateway)))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("where", ["dss", "timestamp", "last byte"])
def test_certifica_verify_refuses_a_changed_lta_certificate(
    gateway: Gateway, certificate: Path, where: str
) -> None:
    pdf = bytearray(certificate.read_bytes())
    reader = PdfFileReader(io.BytesIO(bytes(pdf)))
    sig_range = reader.embedded_regular_signatures[0].byte_range
    sig_end = int(sig_range[2]) + int(sig_range[3])
    stamp_start = reader.embedded_timestamp_signatures[0].byte_range[1]
    position = {
        "dss": (sig_end + stamp_start) // 2,
        "timestamp": stamp_start + 200,
        "last byte": len(pdf) - 1,
    }[where]
    pdf[position] ^= 0x01
    assert not verify_certificate(bytes(pdf), [ca(gateway)]).ok, where


def test_certifica_verify_refuses_an_update_after_the_timestamp(
    gateway: Gateway, certificate: Path
) -> None:
    writer = IncrementalPdfFileWriter(io.BytesIO(certificate.read_bytes()))
    writer.root["/Lang"] = writer.root.get("/Lang", "en")
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)
    report = verify_certificate(out.getvalue(), [ca(gateway)])
    assert not report.ok
    assert not {c.name: c.ok for c in report.checks}["coverage"]


def openssl(*args: str) -> tuple[bool, str]:
    done = subprocess.run(  # noqa: S603 - our own arguments
        ["openssl", *args],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode == 0, done.stdout + done.stderr


def test_openssl_verifies_the_signature_and_the_document_timestamp_over_their_byte_ranges(
    gateway: Gateway, certificate: Path, tmp_path: Path
) -> None:
    """Not our code: the PAdES signature is a detached CMS SignedData over the bytes its
    /ByteRange names (``openssl cms -verify``); the document timestamp is an RFC 3161
    token whose imprint is the hash of its own byte range (``openssl ts -verify``). Both
    chain to the development root, and one changed byte in a covered range fails."""
    pdf = certificate.read_bytes()
    reader = PdfFileReader(io.BytesIO(pdf))
    signature, timestamp = reader.embedded_signatures  # the gateway's, then the LTA one
    root = str(ca(gateway))
    for n, embedded in enumerate((signature, timestamp)):
        start1, length1, start2, length2 = (int(x) for x in embedded.sig_object["/ByteRange"])
        covered = pdf[start1 : start1 + length1] + pdf[start2 : start2 + length2]
        changed = covered[:100] + bytes([covered[100] ^ 1]) + covered[101:]
        token = tmp_path / f"{n}.der"
        token.write_bytes(embedded.pkcs7_content)
        for data, expected in ((covered, True), (changed, False)):
            (tmp_path / "data.bin").write_bytes(data)
            if embedded is signature:
                ok, out = openssl(
                    "cms", "-verify", "-binary", "-inform", "DER", "-in", str(token),
                    "-content", str(tmp_path / "data.bin"), "-CAfile", root,
                    "-purpose", "any", "-out", "/dev/null",
                )  # fmt: skip
            else:
                ok, out = openssl(
                    "ts", "-verify", "-data", str(tmp_path / "data.bin"), "-in", str(token),
                    "-token_in", "-CAfile", root,
                )  # fmt: skip
            assert ok is expected, out
            said = (
                ("Verification successful", "Verification: OK")
                if expected
                else ("failure", "FAILED")
            )
            assert any(words in out for words in said), out
    assert timestamp.sig_object["/Type"] == "/DocTimeStamp"


def test_a_bt_file_is_not_renewed_without_its_signers_validation_data(tmp_path: Path) -> None:
    """A certificate left PAdES B-T at issue (its signer's chain could not be built) is
    renewed only once its signer's chain and revocation data can be added first: with a
    trust root that is not its issuer, the renewal refuses (one line in the pass's
    report, the file left as it was), rather than adding the timestamp's data alone
    and a document timestamp, after which no renewal would ever add the signer's."""
    import dataclasses
    import datetime as dt

    from pyhanko.sign.validation import DocumentSecurityStore

    from certifier.lta import Archiver, NoValidationData
    from certifier.pki import ensure_dev_pki
    from certifier.pool import SigningSettings, build_signer, render_and_sign
    from relay.certify.renewal import renew_archive_sync
    from relay.queue.store import Store
    from tests.verification_site import EML, evidence

    pki = ensure_dev_pki(tmp_path / "keys", "certifica.localhost")
    stranger = ensure_dev_pki(tmp_path / "other", "other.localhost")
    settings = SigningSettings.from_pki(pki)
    # The signature carries no CA certificate: its chain is built from the roots given.
    signer = build_signer(
        dataclasses.replace(settings, extra_certs=(), tsa_chain=settings.extra_certs)
    )
    pdf = render_and_sign(evidence(), EML, signer)
    assert "/DSS" not in PdfFileReader(io.BytesIO(pdf)).root  # B-T

    def archiver(root: Path) -> Archiver:
        return Archiver(signer.timestamper, [load_cert_from_pemder(str(root))], None, fetch=True)

    with pytest.raises(NoValidationData, match="no validation data for the signer's certificate"):
        archiver(stranger.ca_cert).renew(pdf)
    archive = tmp_path / "certificates"
    archive.mkdir()
    (archive / "CF-BT.pdf").write_bytes(pdf)
    with Store(tmp_path / "queue.db", 30.0) as store:
        report = renew_archive_sync(
            archive,
            archiver(stranger.ca_cert),
            store.record_certificate_version_sync,
            store.forget_certificate_renewal_sync,
            before=dt.timedelta(days=4000),
        )
    assert report.renewed == []
    assert len(report.failed) == 1 and report.failed[0].startswith("CF-BT: not renewed (")
    assert "\n" not in report.failed[0]
    assert (archive / "CF-BT.pdf").read_bytes() == pdf
    # With its issuer's root the same file is renewed, its signer's data added first.
    renewed = archiver(pki.ca_cert).renew(pdf)
    reader = PdfFileReader(io.BytesIO(renewed))
    signer_cert = reader.embedded_regular_signatures[0].signer_cert
    assert signer_cert.issuer_serial in DocumentSecurityStore.read_dss(reader).certs
    assert len(reader.embedded_timestamp_signatures) == 1
