"""Invoices end to end: a certified message with invoices attached goes through the real
gateway (``[invoices] trust_roots`` set to the root of the test's Facturae signer), and
its certificate states the invoices in the sender's language (pdftotext), carries them
in evidence.json and in ETSI EN 319 522-3 documents that validate against the published
XSD (``certifica evidence export``), and passes ``certifica verify``. Also: the
``[invoices]`` keys are checked when the configuration is loaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import xmlschema
from lxml import etree
from signxml.xades import XAdESVerifier

from certifier.errors import ConfigError
from certifier.etsi import EXT_NS
from certifier.verify import embedded_evidence
from relay.config import load_config
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.invoice_samples import Signer, make_signer
from tests.test_certified_sending import submit
from tests.test_etsi_evidence import schema  # noqa: F401 - the XSD fixture
from tests.test_evidence_schema import cli_verify
from tests.test_invoices_certificate import invoice_message
from tests.test_verification_record import certificate_of


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, mx: Sink, signer: Signer
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("invoices-gw")
    roots = tmp / "invoice-roots.pem"
    roots.write_bytes(signer.root_pem())
    cfg = write_config(
        tmp,
        {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port},
        f'[invoices]\ntrust_roots = "{roots}"\n',
    )
    gw = start_gateway(cfg)
    result = gw.cli(
        "users", "set", "alice@example.com", "--language", "es", "--timezone", "Europe/Madrid"
    )
    assert result.returncode == 0, result.stderr
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


@pytest.fixture(scope="module")
def certified(gateway: Gateway, mx: Sink, signer: Signer) -> tuple[str, bytes, bytes]:
    raw = invoice_message(signer)
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    return qid, raw, certificate_of(mx, qid)


def test_the_message_is_delivered_whole_broken_invoice_included(
    certified: tuple[str, bytes, bytes], mx: Sink
) -> None:
    qid, raw, _pdf = certified
    copies = [m for m in mx.to("bob@example.org") if qid.encode() in m.data[:4000]]
    assert len(copies) == 1 and copies[0].data.endswith(raw)


def test_the_certificate_states_the_invoices_in_spanish(
    certified: tuple[str, bytes, bytes], tmp_path: Path
) -> None:
    _qid, _raw, pdf = certified
    path = tmp_path / "certificate.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True)
    text = " ".join(out.stdout.split())
    for sentence in [
        "El mensaje contenía 5 facturas:",
        "factura.xml: Factura n.º FAC-2026-0001 de fecha 28 de noviembre de 2026, emitida "
        "por Talleres Ejemplo, S.L. (B12345674) a Núria Puig Ferrer (12345678Z), por un "
        "total de 1.234,56 EUR (Facturae 3.2.2).",
        # [invoices] trust_roots holds the signer's root: the signer is on the trust list.
        "La firma electrónica de la factura está intacta y su firmante, TALLERES EJEMPLO "
        "SL, es titular de un certificado expedido por una autoridad que figura en la lista "
        "de confianza del prestador.",
        "Factura n.º F20260023 de fecha 31 de enero de 2026, emitida por LE FOURNISSEUR "
        "(FR11123456782) a LE CLIENT (FR19987654321), por un total de 1.234,56 EUR "
        "(Factur-X EN 16931).",
        "Factura rectificativa n.º CN-2026-0042 de fecha 30 de noviembre de 2026, emitida "
        "por Nordlicht Handel GmbH (DE123456789) a Grachtenbouw B.V. (NL987654321B01), por "
        "un total de 119,00 EUR (UBL 2.1).",
        "Factura n.º 123 de fecha 18 de enero de 2017, emitida por SOCIETA' ALPHA SRL "
        "(IT01234567890) a BETA GAMMA (09876543210), por un total de 6,10 EUR (FatturaPA "
        "FPR12).",
        "Una factura en formato UBL que no se ha podido leer",
        "Factura contenida en el archivo adjunto rota.xml",
    ]:
        assert sentence in text, sentence


def test_evidence_json_carries_the_invoices_and_certifica_verify_passes(
    certified: tuple[str, bytes, bytes], gateway: Gateway, tmp_path: Path
) -> None:
    _qid, _raw, pdf = certified
    evidence = embedded_evidence(pdf)
    assert evidence is not None
    invoices = {
        a["filename"]: a["invoice"] for a in evidence["message"]["attachments"] if "invoice" in a
    }
    assert set(invoices) == {
        "factura.xml",
        "F20260023.pdf",
        "abono.xml",
        "IT01234567890_00001.xml.p7m",
        "rota.xml",
    }
    assert invoices["factura.xml"]["signature"] == {
        "status": "trusted",
        "kind": "XAdES",
        "signer": "TALLERES EJEMPLO SL",
    }
    assert invoices["F20260023.pdf"]["total"] == "1234.56"
    path = tmp_path / "certificate.pdf"
    path.write_bytes(pdf)
    result = cli_verify(path, gateway.state / "keys" / "ca.pem")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_exported_etsi_evidence_validates_and_carries_the_invoices(
    certified: tuple[str, bytes, bytes],
    gateway: Gateway,
    schema: xmlschema.XMLSchema,  # noqa: F811
    tmp_path: Path,
) -> None:
    _qid, _raw, pdf = certified
    evidence = embedded_evidence(pdf)
    assert evidence is not None
    result = gateway.cli("evidence", "export", evidence["certificate_id"], str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "out" / "evidence").iterdir())
    assert written
    for path in written:
        xml = path.read_bytes()
        schema.validate(xml.decode())
        XAdESVerifier().verify(xml, ca_pem_file=str(gateway.state / "keys" / "ca.pem"))
        root = etree.fromstring(xml)
        numbers = [n.text or "" for n in root.iter(f"{{{EXT_NS}}}Number")]
        assert numbers == ["FAC-2026-0001", "F20260023", "CN-2026-0042", "123", ""], path.name
        statuses = [s.get("status") for s in root.iter(f"{{{EXT_NS}}}Signature")]
        assert statuses == ["trusted", "present"]


# --- the [invoices] keys -----------------------------------------------------------------


def _config(tmp_path: Path, invoices: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[invoices]\n{invoices}\n")
    return path


def test_invoices_keys_load_and_default(tmp_path: Path, signer: Signer) -> None:
    defaults = load_config(None).invoices
    assert (defaults.enabled, defaults.max_size, defaults.trust_roots) == (True, 10_000_000, None)
    roots = tmp_path / "roots.pem"
    roots.write_bytes(signer.root_pem())
    cfg = load_config(
        _config(tmp_path, 'enabled = false\nmax_size = 2048\ntrust_roots = "roots.pem"')
    )
    assert (cfg.invoices.enabled, cfg.invoices.max_size) == (False, 2048)
    assert cfg.invoices.trust_roots == tmp_path / "roots.pem"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("max_size = 100", "invoices.max_size must be at least 1024 bytes"),
        ('trust_roots = "missing.pem"', "invoices.trust_roots: cannot read"),
        ('trust_roots = "config.toml"', "holds no PEM certificate"),
        ('enabled = "yes"', "invoices.enabled must be true or false"),
        ("colour = 1", "unknown key 'invoices.colour'"),
    ],
)
def test_wrong_invoices_keys_are_refused_naming_the_key_and_file(
    tmp_path: Path, text: str, words: str
) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert words in str(refused.value) and str(path) in str(refused.value)
