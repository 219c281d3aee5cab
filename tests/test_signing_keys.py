"""A production signing key: PKCS#12 or an encrypted PEM key, with the password from a
file or the environment, never inline; a wrong password stops the gateway with one line.

The "organisation's" key and certificate come from a second development PKI (another
CA than the gateway's own), the way a real document-signing certificate would.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certifier.pki import Pki, ensure_dev_pki
from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit

PASSWORD = b"correct horse battery staple 42"


@pytest.fixture(scope="module")
def organisation(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("org"), "law-firm.example", "Law Firm CA")


def _p12(org: Pki, dest: Path) -> Path:
    key = serialization.load_pem_private_key(org.signing_key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(org.signing_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(org.ca_cert.read_bytes())
    data = pkcs12.serialize_key_and_certificates(
        b"signing",
        key,
        cert,
        [ca],
        serialization.BestAvailableEncryption(PASSWORD),  # type: ignore[arg-type]
    )
    dest.write_bytes(data)
    return dest


def _signed_by(pdf: Path, org: Pki, gw_state: Path) -> None:
    out = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True)
    assert "Signature is Valid" in out.stdout, out.stdout
    subject = x509.load_pem_x509_certificate(org.signing_cert.read_bytes()).subject
    common_name = subject.rfc4514_string().split("CN=")[1].split(",")[0]
    assert common_name in out.stdout, out.stdout
    verify = subprocess.run(
        [CERTIFICA, "verify", str(pdf), "--trust", str(org.ca_cert),
         "--trust", str(gw_state / "keys" / "ca.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _config(tmp: Path, routes: dict[str, int], signing: str) -> Path:
    """The test config with ``signing`` lines added to its [signing] table."""
    cfg = write_config(tmp, routes)
    text = cfg.read_text()
    assert "[signing]\nworkers = 1\n" in text
    cfg.write_text(text.replace("[signing]\nworkers = 1\n", f"[signing]\nworkers = 1\n{signing}"))
    return cfg


@pytest.fixture()
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


def _certify_one(tmp: Path, sink: Sink, signing: str, to: str) -> tuple[Path, Gateway]:
    """Start a gateway with ``signing`` lines, certify one message to ``to``, stop it:
    the certificate PDF, and the stopped gateway (its log and state)."""
    gw = start_gateway(_config(tmp, {"example.org": sink.port, "example.com": sink.port}, signing))
    try:
        qid = submit(gw, make_message(to=to), [to, CERT_ADDRESS])
        pdf = certificate_pdf(generated_for(sink, qid, "certificate"), tmp / "c.pdf")
    finally:
        gw.stop()
    return pdf, gw


def test_pkcs12_with_a_password_file(organisation: Pki, sink: Sink, tmp_path: Path) -> None:
    p12 = _p12(organisation, tmp_path / "signing.p12")
    secret = tmp_path / "signing.password"
    secret.write_bytes(PASSWORD + b"\n")
    secret.chmod(0o600)
    extra = f'pkcs12 = "{p12}"\npassword_file = "{secret}"\n'
    pdf, gw = _certify_one(tmp_path, sink, extra, "judge@example.org")
    _signed_by(pdf, organisation, gw.state)
    assert PASSWORD.decode() not in gw.log()
    assert_clean_log(gw.log())


def test_encrypted_pem_key_with_the_password_in_the_environment(
    organisation: Pki, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = serialization.load_pem_private_key(organisation.signing_key.read_bytes(), None)
    encrypted = tmp_path / "signing.key"
    encrypted.write_bytes(
        key.private_bytes(  # type: ignore[union-attr]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSWORD),
        )
    )
    extra = (
        f'cert = "{organisation.signing_cert}"\nkey = "{encrypted}"\n'
        f'chain = ["{organisation.ca_cert}"]\n'
    )
    monkeypatch.setenv("CERTIFICA_SIGNING_PASSWORD", PASSWORD.decode())
    pdf, gw = _certify_one(tmp_path, sink, extra, "clerk@example.org")
    _signed_by(pdf, organisation, gw.state)
    assert_clean_log(gw.log())


def test_a_wrong_password_stops_the_gateway_with_one_line(
    organisation: Pki, tmp_path: Path
) -> None:
    p12 = _p12(organisation, tmp_path / "signing.p12")
    secret = tmp_path / "wrong.password"
    secret.write_text("not the password\n")
    cfg = _config(tmp_path, {}, f'pkcs12 = "{p12}"\npassword_file = "{secret}"\n')
    out = subprocess.run(
        [CERTIFICA, "-c", str(cfg), "serve"], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("certifica: ")]
    assert "signing key cannot be used" in line and "signing.pkcs12" in line and str(cfg) in line
    assert "not the password" not in out.stderr


def test_the_password_is_never_inline(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[signing]\npassword = "hunter2"\n')
    out = subprocess.run([CERTIFICA, "-c", str(cfg), "serve"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown key 'signing.password'" in out.stderr


@pytest.fixture(autouse=True)
def _no_password_in_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CERTIFICA_SIGNING_PASSWORD", raising=False)
    yield
