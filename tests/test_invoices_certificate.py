"""Invoices on the certificate, in evidence.json and in the ETSI evidence, without a
gateway: a message carrying one invoice of each format goes through the certificate
worker's own steps (:func:`certifier.pipeline.complete_evidence`, the renderer, the ETSI
documents), and the pages are read back with pdftotext in every language.
"""

from __future__ import annotations

import json
import subprocess
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path
from typing import Any

import pytest
import xmlschema
from lxml import etree

from certifier import pool
from certifier.document import render_certificate
from certifier.etsi import EXT_NS, evidence_documents
from certifier.evidence_record import schema_problem
from certifier.i18n import Reader
from certifier.invoices import InvoiceSettings
from certifier.pipeline import complete_evidence
from tests.conftest import FIXTURES
from tests.invoice_samples import Signer, facturx_pdf, make_signer, p7m, sample, signed_facturae
from tests.test_certificate_pdf import make_evidence
from tests.test_etsi_evidence import schema  # noqa: F401 - the XSD fixture

SENTENCES = {
    "en": [
        "factura.xml: Invoice no. FAC-2026-0001 of 28 November 2026 from Talleres Ejemplo, "
        "S.L. (B12345674) to Núria Puig Ferrer (12345678Z), total 1,234.56 EUR (Facturae 3.2.2).",
        "Its electronic signature is intact: the file has not changed since TALLERES EJEMPLO "
        "SL signed it. Who the signer is was not checked against a trust list.",
        "Invoice no. F20260023 of 31 January 2026 from LE FOURNISSEUR (FR11123456782) to "
        "LE CLIENT (FR19987654321), total 1,234.56 EUR (Factur-X EN 16931).",
    ],
    "es": [
        "factura.xml: Factura n.º FAC-2026-0001 de fecha 28 de noviembre de 2026, emitida "
        "por Talleres Ejemplo, S.L. (B12345674) a Núria Puig Ferrer (12345678Z), por un "
        "total de 1.234,56 EUR (Facturae 3.2.2).",
        "La firma electrónica de la factura está intacta: el archivo no ha cambiado desde "
        "que TALLERES EJEMPLO SL lo firmó.",
        "Factura n.º F20260023 de fecha 31 de enero de 2026, emitida por LE FOURNISSEUR "
        "(FR11123456782) a LE CLIENT (FR19987654321), por un total de 1.234,56 EUR "
        "(Factur-X EN 16931).",
    ],
    "ca": [
        "factura.xml: Factura núm. FAC-2026-0001 de data 28 de novembre del 2026, emesa per "
        "Talleres Ejemplo, S.L. (B12345674) a Núria Puig Ferrer (12345678Z), per un total "
        "de 1.234,56 EUR (Facturae 3.2.2).",
        "La signatura electrònica de la factura està intacta",
    ],
    "it": [
        "factura.xml: Fattura n. FAC-2026-0001 del 28 novembre 2026 emessa da Talleres "
        "Ejemplo, S.L. (B12345674) nei confronti di Núria Puig Ferrer (12345678Z), per un "
        "totale di 1.234,56 EUR (Facturae 3.2.2).",
        "La firma elettronica del documento è integra",
        "Nota di credito n. CN-2026-0042 del 30 novembre 2026",
    ],
}


def invoice_message(signer: Signer) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.com>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = "Facturas de noviembre"
    msg["Date"] = "Mon, 30 Nov 2026 10:00:00 +0000"
    msg["Message-ID"] = "<invoices.1@example.com>"
    msg.set_content("Adjunto las facturas.\n")
    for data, subtype, name in [
        (signed_facturae(signer), "xml", "factura.xml"),
        (facturx_pdf(), "pdf", "F20260023.pdf"),
        (sample("ubl-creditnote.xml"), "xml", "abono.xml"),
        (p7m(sample("fatturapa-FPR12.xml"), signer), "pkcs7-mime", "IT01234567890_00001.xml.p7m"),
        (sample("ubl-invoice.xml")[:-150], "xml", "rota.xml"),
        (b"%PDF-1.4\nnot an invoice\n", "pdf", "folleto.pdf"),
    ]:
        msg.add_attachment(data, maintype="application", subtype=subtype, filename=name)
    return msg.as_bytes(policy=SMTP)  # CRLF line ends, as SMTP carries them


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


@pytest.fixture(scope="module")
def completed(signer: Signer) -> tuple[dict[str, Any], bytes]:
    eml = invoice_message(signer)
    return complete_evidence(make_evidence(eml), eml), eml


def pdf_text(pdf: bytes, tmp: Path) -> str:
    path = tmp / "certificate.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split())


def test_the_record_holds_each_invoice_on_its_attachment_and_matches_the_schema(
    completed: tuple[dict[str, Any], bytes],
) -> None:
    evidence, _eml = completed
    assert schema_problem(evidence) is None
    by_name = {a["filename"]: a.get("invoice") for a in evidence["message"]["attachments"]}
    assert by_name["factura.xml"] == {
        "format": "Facturae",
        "version": "3.2.2",
        "kind": "invoice",
        "number": "FAC-2026-0001",
        "issue_date": "2026-11-28",
        "seller": {"name": "Talleres Ejemplo, S.L.", "tax_id": "B12345674"},
        "buyer": {"name": "Núria Puig Ferrer", "tax_id": "12345678Z"},
        "total": "1234.56",
        "currency": "EUR",
        "signature": {"status": "intact", "kind": "XAdES", "signer": "TALLERES EJEMPLO SL"},
    }
    assert by_name["F20260023.pdf"]["format"] == "Factur-X"
    assert by_name["abono.xml"]["kind"] == "credit note"
    assert by_name["IT01234567890_00001.xml.p7m"]["signature"] == {
        "status": "present",
        "kind": "CAdES",
        "signer": "TALLERES EJEMPLO SL",
    }
    assert by_name["rota.xml"]["problem"].startswith("not well-formed XML")
    assert by_name["folleto.pdf"] is None


def test_the_worker_reads_invoices_as_its_settings_say(signer: Signer) -> None:
    eml = invoice_message(signer)
    assert pool.invoice_settings() == InvoiceSettings()  # before init_process: the defaults
    off = complete_evidence(make_evidence(eml), eml, InvoiceSettings(enabled=False))
    assert all("invoice" not in a for a in off["message"]["attachments"])
    small = complete_evidence(make_evidence(eml), eml, InvoiceSettings(max_size=6000))
    attachments = small["message"]["attachments"]
    assert [a["filename"] for a in attachments if a["size"] > 6000] == ["factura.xml"]
    read = [a["filename"] for a in attachments if "invoice" in a]
    assert read == ["F20260023.pdf", "abono.xml", "IT01234567890_00001.xml.p7m", "rota.xml"]


@pytest.mark.parametrize("language", ["en", "es", "ca", "it"])
def test_the_certificate_states_each_invoice_in_the_readers_language(
    completed: tuple[dict[str, Any], bytes], language: str, tmp_path: Path
) -> None:
    evidence, eml = completed
    text = pdf_text(render_certificate(evidence, eml, Reader(language, "Europe/Madrid")), tmp_path)
    for sentence in SENTENCES[language]:
        assert sentence in text, sentence
    if language == "en":
        assert "The message carried 5 invoices:" in text
        assert "Invoice in the attached file rota.xml" in text
        assert "What could not be read not well-formed XML" in text
        assert "An invoice in the UBL format that could not be read" in text
        assert "Signer (as its certificate names it) TALLERES EJEMPLO SL" in text
        assert (
            "It came in an envelope electronically signed by TALLERES EJEMPLO SL; that "
            "signature was not checked." in text
        )


def test_hostile_invoice_values_are_set_as_plain_text(tmp_path: Path) -> None:
    hostile = sample("ubl-invoice.xml").replace(
        b"<cbc:ID>TOSL108</cbc:ID>", b"<cbc:ID>&lt;b&gt;X&lt;/b&gt; {{7*7}} \xe2\x80\xae1</cbc:ID>"
    )
    msg = EmailMessage()
    msg["From"] = "alice@example.com"
    msg["Subject"] = "x"
    msg.set_content("x")
    msg.add_attachment(hostile, maintype="application", subtype="xml", filename="i.xml")
    eml = bytes(msg)
    evidence = complete_evidence(make_evidence(eml), eml)
    text = pdf_text(render_certificate(evidence, eml, Reader("en")), tmp_path)
    assert "Invoice no. <b>X</b> {{7*7}} 1 of 15 December 2009" in text


def test_every_etsi_document_carries_the_invoices_and_validates_against_the_xsd(
    completed: tuple[dict[str, Any], bytes],
    schema: xmlschema.XMLSchema,  # noqa: F811
) -> None:
    evidence, eml = completed
    documents = evidence_documents(evidence, eml)
    assert documents
    for name, document in documents:
        xml = etree.tostring(document).decode()
        errors = list(schema.iter_errors(xml))
        assert not errors, f"{name}: {errors[0]}"
        invoices = document.findall(f".//{{{EXT_NS}}}Invoice")
        assert [i.get("part") for i in invoices] == [
            "factura.xml",
            "F20260023.pdf",
            "abono.xml",
            "IT01234567890_00001.xml.p7m",
            "rota.xml",
        ]
        facturae = invoices[0]
        assert facturae.get("format") == "Facturae" and facturae.get("version") == "3.2.2"
        assert facturae.findtext(f"{{{EXT_NS}}}Number") == "FAC-2026-0001"
        assert facturae.findtext(f"{{{EXT_NS}}}IssueDate") == "2026-11-28"
        assert facturae.find(f"{{{EXT_NS}}}Seller").get("taxId") == "B12345674"  # type: ignore[union-attr]
        total = facturae.find(f"{{{EXT_NS}}}Total")
        assert total is not None and (total.text, total.get("currency")) == ("1234.56", "EUR")
        seal = facturae.find(f"{{{EXT_NS}}}Signature")
        assert seal is not None and seal.get("status") == "intact"
        assert invoices[4].findtext(f"{{{EXT_NS}}}Problem", "").startswith("not well-formed")
        # The invoice names the part UserContentInfo lists, by its digest.
        digests = {a["filename"]: a["sha256"] for a in evidence["message"]["attachments"]}
        assert facturae.get("sha256") == digests["factura.xml"]


def test_a_reception_certificate_states_the_invoice_that_arrived(
    completed: tuple[dict[str, Any], bytes], tmp_path: Path
) -> None:
    """Certified reception (README, "For mailbox owners"): the same words on page 1."""
    evidence, _eml = completed
    record = json.loads((FIXTURES / "evidence" / "reception.json").read_text(encoding="utf-8"))
    facturae = next(a for a in evidence["message"]["attachments"] if a["filename"] == "factura.xml")
    record["message"]["attachments"] = [facturae]
    assert schema_problem(record) is None
    text = pdf_text(render_certificate(record, None, Reader("it", "Europe/Rome")), tmp_path)
    assert "Il messaggio conteneva una fattura:" in text
    assert (
        "factura.xml: Fattura n. FAC-2026-0001 del 28 novembre 2026 emessa da Talleres "
        "Ejemplo, S.L. (B12345674) nei confronti di Núria Puig Ferrer (12345678Z), per un "
        "totale di 1.234,56 EUR (Facturae 3.2.2)."
    ) in text
