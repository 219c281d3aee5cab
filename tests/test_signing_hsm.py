"""The document signing key and the development TSA's key in an HSM, through PKCS#11:
SoftHSM2 as the token.

A token is initialised in the test (its own SOFTHSM2_CONF directory), an RSA key pair is
generated inside it (sensitive, not extractable: it never leaves), and the development CA
issues a certificate for the public key read from the token. Certificates signed through
the token verify with pdfsig, pyHanko and ``certifica verify``; a gateway configured with
``[signing] pkcs11_*`` certifies a message; a wrong PIN stops ``certifica serve`` with one
line naming the key.

The development timestamp authority's key is a second key pair in the token, made with
OpenSC's ``pkcs11-tool`` as README "Keys in an HSM" says (``pkcs11-tool --list-objects``
shows it sensitive and never extractable); its certificate carries only the timeStamping
usage. A PAdES B-LTA certificate whose signature timestamp and document timestamp were
both made in the token passes ``openssl ts -verify`` (each token extracted from the PDF),
pyHanko's AdES validator and pdfsig; a gateway configured with ``pkcs11_tsa_key_label``
timestamps in the token, and ``certifica evidence export`` signs XAdES with the key in it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from signxml.xades import XAdESVerifier

from certifier.hsm import Pkcs11Key
from certifier.pki import Pki, ensure_dev_pki, ensure_token_tsa_cert
from certifier.pool import (
    SigningSettings,
    build_archiver,
    build_signer,
    check_settings,
    render_and_sign,
)
from certifier.verify import embedded_evidence, extract_timestamp_token, signature_value
from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certificate_pdf import EML, make_evidence
from tests.test_certified_sending import certificate_pdf, generated_for, submit

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "certifica-test"
LABEL = "document-signing"
TSA_LABEL = "timestamping"
PIN = "4711-0815"
PYHANKO = str(Path(sys.executable).with_name("pyhanko"))


def pkcs11_tool(*args: str) -> str:
    """OpenSC's pkcs11-tool on the test token, logged in (another process: its session
    is its own)."""
    done = subprocess.run(
        ["pkcs11-tool", "--module", str(MODULE), "--token-label", TOKEN, "--login",
         "--pin", PIN, *args],
        check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout


class Hsm:
    """A SoftHSM2 token with a key in it, and the certificate the development CA issued
    for that key."""

    def __init__(self, root: Path, pki: Pki) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType

        self.pki = pki
        tokens = root / "tokens"
        tokens.mkdir()
        self.conf = root / "softhsm2.conf"
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
             "--pin", PIN, "--so-pin", "12345678"],
            check=True, capture_output=True,
        )  # fmt: skip
        lib = pkcs11.lib(str(MODULE))
        with lib.get_token(token_label=TOKEN).open(user_pin=PIN, rw=True) as session:
            public, private = session.generate_keypair(
                KeyType.RSA, 2048, label=LABEL, store=True,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )  # fmt: skip
            assert private[Attribute.EXTRACTABLE] is False
            modulus = int.from_bytes(public[Attribute.MODULUS], "big")
            exponent = int.from_bytes(public[Attribute.PUBLIC_EXPONENT], "big")
        lib.finalize()
        from cryptography.hazmat.primitives.asymmetric import rsa

        public_key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        template = x509.load_pem_x509_certificate(pki.signing_cert.read_bytes())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name.from_rfc4514_string("CN=Certifica HSM Seal,O=Certifica Test"))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
        )
        # The same profile as the development signing certificate (key usage, EKU...).
        for ext in template.extensions:
            if ext.oid == x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
                ext = x509.Extension(
                    ext.oid, ext.critical, x509.SubjectKeyIdentifier.from_public_key(public_key)
                )
            builder = builder.add_extension(ext.value, ext.critical)
        cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        self.cert = root / "hsm-signing.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.pin_file = root / "pin"
        self.pin_file.write_text(PIN + "\n")
        self.pin_file.chmod(0o600)
        # The development TSA's own key, made as README "Keys in an HSM" says.
        pkcs11_tool(
            "--keypairgen", "--key-type", "rsa:2048", "--label", TSA_LABEL, "--id", "02",
            "--usage-sign", "--sensitive",
        )  # fmt: skip
        tsa_key = Pkcs11Key(MODULE, TOKEN, TSA_LABEL, PIN)
        try:
            self.tsa_cert = ensure_token_tsa_cert(pki, tsa_key.public_key(), "hsm.example")
        finally:
            tsa_key.close()

    def settings(self, pin: str = PIN) -> SigningSettings:
        return SigningSettings(
            signing_cert=self.cert,
            signing_key=self.cert,
            extra_certs=(self.pki.ca_cert,),
            tsa_url=None,
            tsa_cert=self.pki.tsa_cert,
            tsa_key=self.pki.tsa_key,
            tsa_chain=(self.pki.ca_cert,),
            pkcs11_module=MODULE,
            pkcs11_token=TOKEN,
            pkcs11_key_label=LABEL,
            pkcs11_pin=pin,
        )

    def lta_settings(self) -> SigningSettings:
        """Both keys in the token, and what makes the certificates B-LTA."""
        return dataclasses.replace(
            self.settings(),
            tsa_cert=self.tsa_cert,
            tsa_key=None,
            pkcs11_tsa_key_label=TSA_LABEL,
            revocation_keys_dir=self.pki.ca_cert.parent,
        )

    def signing_lines(self, pin_file: Path | None = None, tsa_label: str = "") -> str:
        return (
            f'pkcs11_module = "{MODULE}"\npkcs11_token = "{TOKEN}"\n'
            f'pkcs11_key_label = "{LABEL}"\npkcs11_pin_file = "{pin_file or self.pin_file}"\n'
            f'pkcs11_cert = "{self.cert}"\nchain = ["{self.pki.ca_cert}"]\n'
            + (f'pkcs11_tsa_key_label = "{tsa_label}"\n' if tsa_label else "")
        )


@pytest.fixture(scope="module")
def signed(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    check_settings(hsm.settings())
    signer = build_signer(hsm.settings())
    path = tmp_path_factory.mktemp("pdf") / "hsm-certificate.pdf"
    path.write_bytes(render_and_sign(make_evidence(), EML, signer))
    return path


@pytest.fixture(scope="module")
def lta_signed(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A B-LTA certificate: signature, signature timestamp and document timestamp all
    made by keys in the token."""
    settings = hsm.lta_settings()
    check_settings(settings)
    signer = build_signer(settings)
    archiver = build_archiver(settings, signer)
    path = tmp_path_factory.mktemp("pdf") / "hsm-lta-certificate.pdf"
    path.write_bytes(render_and_sign(make_evidence(), EML, signer, archiver=archiver))
    return path


def test_the_tsa_key_was_made_in_the_token_and_stays_there(hsm: Hsm) -> None:
    listing = pkcs11_tool("--list-objects", "--type", "privkey", "--label", TSA_LABEL)
    assert "sensitive, always sensitive, never extractable, local" in listing, listing
    key = hsm.lta_settings().pkcs11_tsa_key()
    try:
        with pytest.raises(ValueError, match="cannot leave the token"):
            key.private_bytes()
        cert = x509.load_pem_x509_certificate(hsm.tsa_cert.read_bytes())
        assert cert.public_key() == key.public_key()
    finally:
        key.close()


def test_the_tsa_certificate_carries_only_the_timestamping_usage(hsm: Hsm) -> None:
    cert = x509.load_pem_x509_certificate(hsm.tsa_cert.read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [x509.oid.ExtendedKeyUsageOID.TIME_STAMPING]
    ca = x509.load_pem_x509_certificate(hsm.pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert "timestamp authority (token)" in cert.subject.rfc4514_string()


def test_the_tsa_certificate_is_reused_for_its_key_only(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pki = ensure_dev_pki(tmp_path / "pki", "hsm.example")
    one = rsa.generate_private_key(65537, 2048).public_key()
    first = ensure_token_tsa_cert(pki, one, "hsm.example").read_bytes()
    assert ensure_token_tsa_cert(pki, one, "hsm.example").read_bytes() == first
    other = rsa.generate_private_key(65537, 2048).public_key()
    again = x509.load_pem_x509_certificate(
        ensure_token_tsa_cert(pki, other, "hsm.example").read_bytes()
    )
    assert again.public_key() == other


def test_openssl_verifies_both_timestamps_made_in_the_token(
    lta_signed: Path, hsm: Hsm, tmp_path: Path
) -> None:
    pdf = lta_signed.read_bytes()
    ca = str(hsm.pki.ca_cert)
    # The signature timestamp: an unsigned attribute of the signature, over its value.
    token, data = tmp_path / "signature-token.der", tmp_path / "signature.bin"
    token.write_bytes(extract_timestamp_token(pdf))
    data.write_bytes(signature_value(pdf))
    # The document timestamp: its /Contents is the token, over the bytes it covers.
    (stamp,) = PdfFileReader(io.BytesIO(pdf)).embedded_timestamp_signatures
    doc_token, doc_data = tmp_path / "document-token.der", tmp_path / "document.bin"
    # (The placeholder's zero padding after the DER is not part of it.)
    doc_token.write_bytes(cms.ContentInfo.load(bytes(stamp.pkcs7_content)).dump())
    start, length, rest, rest_length = (int(n) for n in stamp.byte_range)
    doc_data.write_bytes(pdf[start : start + length] + pdf[rest : rest + rest_length])
    for tok, covered in ((token, data), (doc_token, doc_data)):
        verify = subprocess.run(
            ["openssl", "ts", "-verify", "-in", str(tok), "-token_in", "-data", str(covered),
             "-CAfile", ca],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "Verification: OK" in verify.stdout, verify.stdout + verify.stderr
        text = subprocess.run(
            ["openssl", "ts", "-reply", "-in", str(tok), "-token_in", "-text"],
            capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        assert "timestamp authority (token)" in text, text
    # Changed data fails: the check above is not vacuous.
    data.write_bytes(b"something else")
    verify = subprocess.run(
        ["openssl", "ts", "-verify", "-in", str(token), "-token_in", "-data", str(data),
         "-CAfile", ca],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Verification: OK" not in verify.stdout


def test_pyhanko_and_pdfsig_accept_the_lta_certificate(lta_signed: Path, hsm: Hsm) -> None:
    result = subprocess.run(
        [PYHANKO, "sign", "adesverify", "--trust", str(hsm.pki.ca_cert), "--trust-replace",
         str(lta_signed)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert ":INTACT:TRUSTED," in line and "TIMESTAMP_TOKEN<INTACT:TRUSTED>" in line, line
    assert "EXTENDED_WITH_LTA_UPDATES" in line, line
    out = subprocess.run(
        ["pdfsig", str(lta_signed)], capture_output=True, text=True, timeout=60
    ).stdout
    signature, stamp = out.split("Signature #2:")
    assert "Signature is Valid" in signature and "Certifica HSM Seal" in signature, out
    # (poppler shows a document timestamp but does not check it: openssl did, above.)
    assert "timestamp authority (token)" in stamp and "Total document signed" in stamp, out
    verify = subprocess.run(
        [CERTIFICA, "verify", str(lta_signed), "--trust", str(hsm.pki.ca_cert)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_key_cannot_leave_the_token(hsm: Hsm) -> None:
    key = hsm.settings().pkcs11_key()
    try:
        with pytest.raises(ValueError, match="cannot leave the token"):
            key.private_numbers()
        cert = x509.load_pem_x509_certificate(hsm.cert.read_bytes())
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    finally:
        key.close()


def test_pdfsig_pyhanko_and_certifica_verify_accept_it(signed: Path, hsm: Hsm) -> None:
    out = subprocess.run(["pdfsig", str(signed)], capture_output=True, text=True).stdout
    assert "Signature is Valid" in out and "Certifica HSM Seal" in out, out
    reader = PdfFileReader(io.BytesIO(signed.read_bytes()))
    (sig,) = reader.embedded_signatures
    context = ValidationContext(
        trust_roots=[load_cert_from_pemder(str(hsm.pki.ca_cert))], allow_fetching=False
    )
    status = validate_pdf_signature(sig, signer_validation_context=context)
    assert status.intact and status.valid and status.trusted
    assert status.signing_cert.subject.native["common_name"] == "Certifica HSM Seal"
    ts = status.timestamp_validity
    assert ts is not None and ts.intact and ts.valid and ts.trusted
    verify = subprocess.run(
        [CERTIFICA, "verify", str(signed), "--trust", str(hsm.pki.ca_cert)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_wrong_label_is_one_line_naming_the_key(hsm: Hsm) -> None:
    # (A wrong PIN: test_a_wrong_pin_stops_the_gateway_with_one_line, in a process of
    # its own, since this one is logged in to the token already: login is per process.)
    key = Pkcs11Key(MODULE, TOKEN, "no-such-key", PIN)
    with pytest.raises(ValueError, match="'no-such-key'.*no RSA private key of that label"):
        key.public_key()
    key = Pkcs11Key(MODULE, "no-such-token", LABEL, PIN)
    with pytest.raises(ValueError, match="no token labelled 'no-such-token'"):
        key.public_key()


def _config(tmp: Path, routes: dict[str, int], signing: str) -> Path:
    cfg = write_config(tmp, routes)
    text = cfg.read_text()
    assert "[signing]\nworkers = 1\n" in text
    cfg.write_text(text.replace("[signing]\nworkers = 1\n", f"[signing]\nworkers = 1\n{signing}"))
    return cfg


def test_a_gateway_signs_through_the_token(
    hsm: Hsm, sink_server: SinkServer, tmp_path: Path
) -> None:
    sink = sink_server.start(Sink())
    to = "judge@example.org"
    routes = {"example.org": sink.port, "example.com": sink.port}
    gw = start_gateway(_config(tmp_path, routes, hsm.signing_lines()))
    try:
        qid = submit(gw, make_message(to=to), [to, CERT_ADDRESS])
        pdf = certificate_pdf(generated_for(sink, qid, "certificate"), tmp_path / "c.pdf")
    finally:
        gw.stop()
    out = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout
    assert "Signature is Valid" in out and "Certifica HSM Seal" in out, out
    verify = subprocess.run(
        [CERTIFICA, "verify", str(pdf), "--trust", str(hsm.pki.ca_cert),
         "--trust", str(gw.state / "keys" / "ca.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert PIN not in gw.log()
    assert_clean_log(gw.log())


def test_a_gateway_timestamps_with_the_key_in_the_token(
    hsm: Hsm, sink_server: SinkServer, tmp_path: Path
) -> None:
    sink = sink_server.start(Sink())
    to = "judge@example.org"
    routes = {"example.org": sink.port, "example.com": sink.port}
    cfg = _config(tmp_path, routes, hsm.signing_lines(tsa_label=TSA_LABEL))
    gw = start_gateway(cfg)
    try:
        qid = submit(gw, make_message(to=to), [to, CERT_ADDRESS])
        pdf = certificate_pdf(generated_for(sink, qid, "certificate"), tmp_path / "c.pdf")
    finally:
        gw.stop()
    keys = gw.state / "keys"
    # The gateway's development CA certified the token's key.
    tsa_cert = x509.load_pem_x509_certificate((keys / "tsa-token.pem").read_bytes())
    key = hsm.lta_settings().pkcs11_tsa_key()
    try:
        assert tsa_cert.public_key() == key.public_key()
    finally:
        key.close()
    data = pdf.read_bytes()
    token, value = tmp_path / "token.der", tmp_path / "signature.bin"
    token.write_bytes(extract_timestamp_token(data))
    value.write_bytes(signature_value(data))
    verify = subprocess.run(
        ["openssl", "ts", "-verify", "-in", str(token), "-token_in", "-data", str(value),
         "-CAfile", str(keys / "ca.pem")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Verification: OK" in verify.stdout, verify.stdout + verify.stderr
    out = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout
    signature, stamp = out.split("Signature #2:")
    assert "Signature is Valid" in signature and "Certifica HSM Seal" in signature, out
    assert "timestamp authority (token)" in stamp, out
    verify = subprocess.run(
        [CERTIFICA, "verify", str(pdf), "--trust", str(hsm.pki.ca_cert),
         "--trust", str(keys / "ca.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The ETSI evidence exported later is XAdES-signed by the key in the token too.
    cert_id = embedded_evidence(data)["certificate_id"]  # type: ignore[index]
    export = gw.cli("evidence", "export", cert_id, str(tmp_path / "out"))
    assert export.returncode == 0, export.stdout + export.stderr
    exported = sorted((tmp_path / "out" / "evidence").iterdir())
    assert exported
    for path in exported:
        XAdESVerifier().verify(path.read_bytes(), ca_pem_file=str(hsm.pki.ca_cert))
    assert PIN not in gw.log()
    assert_clean_log(gw.log())


def test_a_wrong_tsa_label_stops_the_gateway_with_one_line(hsm: Hsm, tmp_path: Path) -> None:
    cfg = _config(tmp_path, {}, hsm.signing_lines(tsa_label="no-such-tsa-key"))
    out = subprocess.run(
        [CERTIFICA, "-c", str(cfg), "serve"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("certifica: ")]
    assert str(cfg) in line and "signing.pkcs11_tsa_key_label" in line, line
    assert "'no-such-tsa-key'" in line and "no RSA private key of that label" in line, line


def test_a_wrong_pin_stops_the_gateway_with_one_line(hsm: Hsm, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("0000-0000\n")
    cfg = _config(tmp_path, {}, hsm.signing_lines(wrong))
    out = subprocess.run(
        [CERTIFICA, "-c", str(cfg), "serve"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("certifica: ")]
    assert str(cfg) in line and f"PKCS#11 key {LABEL!r}" in line and "PIN is wrong" in line
    assert "0000-0000" not in out.stderr


def test_config_needs_a_pin_source_and_an_existing_module(tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cases = {
        f'pkcs11_module = "{tmp_path}/nope.so"\n': "signing.pkcs11_module",
        (
            f'pkcs11_module = "{MODULE}"\npkcs11_token = "t"\npkcs11_key_label = "k"\n'
            f'pkcs11_cert = "{cert}"\n'
        ): "signing.pkcs11_pin_file",
        f'pkcs11_module = "{MODULE}"\npkcs11_token = "t"\n': "signing.pkcs11_key_label",
        'pkcs11_pin = "1234"\n': "unknown key 'signing.pkcs11_pin'",
        (
            f'pkcs11_module = "{MODULE}"\npkcs11_token = "t"\npkcs11_key_label = "k"\n'
            f'pkcs11_cert = "{cert}"\npkcs11_pin_file = "{cert}"\npkcs11_tsa_key_label = "k"\n'
        ): "signing.pkcs11_tsa_key_label = 'k' is the signing key's label",
        (
            f'pkcs11_module = "{MODULE}"\npkcs11_token = "t"\npkcs11_key_label = "k"\n'
            f'pkcs11_cert = "{cert}"\npkcs11_pin_file = "{cert}"\n'
            'pkcs11_tsa_key_label = "tsa"\ntsa_url = "https://tsa.example.net/"\n'
        ): "signing.tsa_url replaces that authority",
    }
    env = {k: v for k, v in os.environ.items() if k != "CERTIFICA_PKCS11_PIN"}
    for lines, named in cases.items():
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[signing]\n{lines}")
        out = subprocess.run(
            [CERTIFICA, "-c", str(cfg), "serve"], capture_output=True, text=True, env=env
        )
        assert out.returncode == 2 and named in out.stderr and str(cfg) in out.stderr, out.stderr


def test_production_mode_takes_an_hsm_key_as_the_operators_own(hsm: Hsm, tmp_path: Path) -> None:
    from relay.config import load_config
    from relay.production import CHECKS

    def problems(signing: str) -> list[str]:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"[signing]\n{signing}")
        return [key for check in CHECKS for key, _ in check(load_config(cfg))]

    assert "signing.cert" in problems("")
    assert "signing.cert" not in problems(hsm.signing_lines())
    # The development TSA stays the development TSA with its key in the token.
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[signing]\n{hsm.signing_lines(tsa_label=TSA_LABEL)}")
    why = dict(problem for check in CHECKS for problem in check(load_config(cfg)))
    assert "the development CA certifies it" in why["signing.tsa_url"]
