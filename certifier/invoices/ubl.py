"""UBL 2.1 invoices and credit notes (OASIS Universal Business Language 2.1, ISO/IEC
19845:2015; the syntax EN 16931-1 names for Peppol BIS Billing 3.0 and XRechnung).

Roots: ``Invoice`` in ``urn:oasis:names:specification:ubl:schema:xsd:Invoice-2`` and
``CreditNote`` in ``urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2``. Read
(EN 16931 business terms in brackets): ``cbc:ID`` (BT-1), ``cbc:IssueDate`` (BT-2),
``cbc:DocumentCurrencyCode`` (BT-5); the seller ``cac:AccountingSupplierParty/cac:Party``
(name BT-27 ``cac:PartyLegalEntity/cbc:RegistrationName``, else ``cac:PartyName/cbc:Name``;
tax id BT-31 ``cac:PartyTaxScheme/cbc:CompanyID``, else the legal registration BT-30);
the buyer ``cac:AccountingCustomerParty/cac:Party`` likewise (BT-44, BT-48, BT-47); the
total ``cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount`` (BT-112, with its
``currencyID``), else ``cbc:PayableAmount`` (BT-115). ``cbc:UBLVersionID`` is the version
(2.1 when absent, as the 2.1 schema's documents usually omit it).
"""

from __future__ import annotations

from lxml import etree

from certifier.invoices.model import Invoice
from certifier.invoices.xml import decimal_text, first, iso_date, value

__all__ = ["NAMESPACES", "read"]

INVOICE_NS = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
CREDIT_NOTE_NS = "urn:oasis:names:specification:ubl:schema:xsd:CreditNote-2"
NAMESPACES = frozenset({INVOICE_NS, CREDIT_NOTE_NS})
_NS = {
    "cbc": "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2",
    "cac": "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2",
}


def _party(party: etree._Element | None) -> tuple[str, str]:
    name = value(
        party,
        ["cac:PartyLegalEntity/cbc:RegistrationName", "cac:PartyName/cbc:Name"],
        _NS,
    )
    tax_id = value(
        party,
        ["cac:PartyTaxScheme/cbc:CompanyID", "cac:PartyLegalEntity/cbc:CompanyID"],
        _NS,
    )
    return name, tax_id


def read(root: etree._Element) -> Invoice:
    """The essentials of a UBL 2.1 ``Invoice`` or ``CreditNote`` root element."""
    problems: list[str] = []
    credit = etree.QName(root).namespace == CREDIT_NOTE_NS
    seller = first(root, ["cac:AccountingSupplierParty/cac:Party"], _NS)
    buyer = first(root, ["cac:AccountingCustomerParty/cac:Party"], _NS)
    seller_name, seller_tax = _party(seller)
    buyer_name, buyer_tax = _party(buyer)
    total = first(
        root,
        [
            "cac:LegalMonetaryTotal/cbc:TaxInclusiveAmount",
            "cac:LegalMonetaryTotal/cbc:PayableAmount",
        ],
        _NS,
    )
    currency = value(root, ["cbc:DocumentCurrencyCode"], _NS)
    if total is not None and not currency:
        currency = str(total.get("currencyID") or "")
    number = value(root, ["cbc:ID"], _NS)
    if not number:
        problems.append("no invoice number (cbc:ID)")
    if total is None:
        problems.append("no total (cac:LegalMonetaryTotal)")
    return Invoice(
        format="UBL",
        version=value(root, ["cbc:UBLVersionID"], _NS) or "2.1",
        kind="credit note" if credit else "invoice",
        number=number,
        issue_date=iso_date(value(root, ["cbc:IssueDate"], _NS), problems),
        seller_name=seller_name,
        seller_tax_id=seller_tax,
        buyer_name=buyer_name,
        buyer_tax_id=buyer_tax,
        total=decimal_text(value(total, ["."], _NS), problems),
        currency=currency,
        problem="; ".join(problems) or None,
    )
