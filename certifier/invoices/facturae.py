"""Facturae 3.2, 3.2.1 and 3.2.2: Spain's electronic invoice (Orden HAP/1650/2015 and
the Facturae schema published by the Ministerio de Hacienda, facturae.gob.es).

Root ``Facturae`` in one of three namespaces (the children are unqualified, the schema's
``elementFormDefault`` being unqualified):

- 3.2: ``http://www.facturae.es/Facturae/2009/v3.2/Facturae``
- 3.2.1: ``http://www.facturae.es/Facturae/2014/v3.2.1/Facturae``
- 3.2.2: ``http://www.facturae.gob.es/formato/Versiones/Facturaev3_2_2.xml``

Read: ``FileHeader/SchemaVersion``; the seller ``Parties/SellerParty`` and buyer
``Parties/BuyerParty`` (tax id ``TaxIdentification/TaxIdentificationNumber``; name
``LegalEntity/CorporateName``, or ``Individual/Name`` with ``FirstSurname`` and
``SecondSurname``); of the first ``Invoices/Invoice``: ``InvoiceHeader/InvoiceNumber``
(after ``InvoiceSeriesCode`` when there is one), ``InvoiceHeader/InvoiceClass`` (``OR``,
``OC``... are corrective: credit notes), ``InvoiceIssueData/IssueDate``,
``InvoiceIssueData/InvoiceCurrencyCode`` and ``InvoiceTotals/InvoiceTotal`` (the total,
tax included), else ``TotalExecutableAmount`` (the amount payable). A batch of several
invoices (``FileHeader/Batch/InvoicesCount``) is stated by its first, with a note.
The enveloped XAdES signature is judged by :mod:`certifier.invoices.signature`.
"""

from __future__ import annotations

from pathlib import Path

from lxml import etree

from certifier.invoices import signature
from certifier.invoices.model import Invoice
from certifier.invoices.xml import decimal_text, first, iso_date, value

__all__ = ["VERSIONS", "read"]

VERSIONS = {
    "http://www.facturae.es/Facturae/2009/v3.2/Facturae": "3.2",
    "http://www.facturae.es/Facturae/2014/v3.2.1/Facturae": "3.2.1",
    "http://www.facturae.gob.es/formato/Versiones/Facturaev3_2_2.xml": "3.2.2",
}
_CORRECTIVE = frozenset({"OR", "CR", "OC", "CC"})  # InvoiceClass: rectificativa
_NO_NS: dict[str, str] = {}


def _party(party: etree._Element | None) -> tuple[str, str]:
    if party is None:
        return "", ""
    tax_id = value(party, ["TaxIdentification/TaxIdentificationNumber"], _NO_NS)
    name = value(party, ["LegalEntity/CorporateName"], _NO_NS)
    if not name:
        parts = [
            value(party, [f"Individual/{field}"], _NO_NS)
            for field in ("Name", "FirstSurname", "SecondSurname")
        ]
        name = " ".join(p for p in parts if p)
    return name, tax_id


def read(root: etree._Element, trust_roots: Path | None) -> Invoice:
    """The essentials of a Facturae ``root`` element, with its signature's verdict."""
    problems: list[str] = []
    version = VERSIONS.get(etree.QName(root).namespace or "", "")
    stated = value(root, ["FileHeader/SchemaVersion"], _NO_NS)
    if stated and stated != version:
        problems.append(f"the file says version {stated} in the namespace of {version}")
    seller_name, seller_tax = _party(first(root, ["Parties/SellerParty"], _NO_NS))
    buyer_name, buyer_tax = _party(first(root, ["Parties/BuyerParty"], _NO_NS))
    invoices = root.findall("Invoices/Invoice")
    invoice = invoices[0] if invoices else None
    if invoice is None:
        problems.append("no invoice in the file (Invoices/Invoice)")
    elif len(invoices) > 1:
        problems.append(f"the file holds {len(invoices)} invoices: the first is stated")
    number = value(invoice, ["InvoiceHeader/InvoiceNumber"], _NO_NS)
    series = value(invoice, ["InvoiceHeader/InvoiceSeriesCode"], _NO_NS)
    if invoice is not None and not number:
        problems.append("no invoice number (InvoiceHeader/InvoiceNumber)")
    total = value(
        invoice, ["InvoiceTotals/InvoiceTotal", "InvoiceTotals/TotalExecutableAmount"], _NO_NS
    )
    invoice_class = value(invoice, ["InvoiceHeader/InvoiceClass"], _NO_NS)
    return Invoice(
        format="Facturae",
        version=version,
        kind="credit note" if invoice_class in _CORRECTIVE else "invoice",
        number=f"{series}{number}" if series and number else number,
        issue_date=iso_date(value(invoice, ["InvoiceIssueData/IssueDate"], _NO_NS), problems),
        seller_name=seller_name,
        seller_tax_id=seller_tax,
        buyer_name=buyer_name,
        buyer_tax_id=buyer_tax,
        total=decimal_text(total, problems),
        currency=value(invoice, ["InvoiceIssueData/InvoiceCurrencyCode"], _NO_NS),
        problem="; ".join(problems) or None,
        signature=signature.judge(root, trust_roots),
    )
