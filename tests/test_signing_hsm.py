"""The document signing key in an HSM, through PKCS#11: SoftHSM2 as the token.

A token is initialised in the test (its own SOFTHSM2_CONF directory), an RSA key pair is
generated inside it (sensitive, not extractable: it never leaves), and the development CA
issues a certificate for the public key read from the token. Certificates signed through
the token verify with pdfsig, pyHanko and ``certifica verify``; a gateway configured with
``[signing] pkcs11_*`` certifies a message; a wrong PIN stops ``certifica serve`` with one
line naming the key.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import SigningSettings, build_signer, check_settings, render_and_sign
from certifier.signing import Pkcs11Key
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
PIN = "4711-0815"


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

    def signing_lines(self, pin_file: Path | None = None) -> str:
        return (
            f'pkcs11_module = "{MODULE}"\npkcs11_token = "{TOKEN}"\n'
            f'pkcs11_key_label = "{LABEL}"\npkcs11_pin_file = "{pin_file or self.pin_file}"\n'
            f'pkcs11_cert = "{self.cert}"\nchain = ["{self.pki.ca_cert}"]\n'
        )


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    before = os.environ.get("SOFTHSM2_CONF")
    root = tmp_path_factory.mktemp("hsm")
    yield Hsm(root, ensure_dev_pki(root / "pki", "hsm.example", "HSM Test CA"))
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before


@pytest.fixture(scope="module")
def signed(hsm: Hsm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    check_settings(hsm.settings())
    signer = build_signer(hsm.settings())
    path = tmp_path_factory.mktemp("pdf") / "hsm-certificate.pdf"
    path.write_bytes(render_and_sign(make_evidence(), EML, signer))
    return path


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
