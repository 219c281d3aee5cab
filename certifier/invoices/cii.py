"""UN/CEFACT Cross Industry Invoice (CII, D16B), the XML inside Factur-X and ZUGFeRD 2.x.

Root ``rsm:CrossIndustryInvoice`` in ``urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100``
(Factur-X 1.0 / ZUGFeRD 2.x, profiles of EN 16931-1 in the CII syntax of
CEN/TS 16931-3-3). Read (EN 16931 business terms in brackets): ``rsm:ExchangedDocument``
``ram:ID`` (BT-1), ``ram:TypeCode`` (BT-3: 381 and 396 are credit notes),
``ram:IssueDateTime/udt:DateTimeString`` (BT-2, format 102 ``YYYYMMDD``); in
``rsm:SupplyChainTradeTransaction``: ``ram:ApplicableHeaderTradeAgreement`` with
``ram:SellerTradeParty`` and ``ram:BuyerTradeParty`` (``ram:Name`` BT-27/BT-44; tax id
``ram:SpecifiedTaxRegistration/ram:ID`` with ``schemeID`` VA, BT-31/BT-48, else FC,
else the legal registration ``ram:SpecifiedLegalOrganization/ram:ID``), and
``ram:ApplicableHeaderTradeSettlement`` with ``ram:InvoiceCurrencyCode`` (BT-5) and
``ram:SpecifiedTradeSettlementHeaderMonetarySummation/ram:GrandTotalAmount`` (BT-112),
else ``ram:DuePayableAmount`` (BT-115). The profile is read from
``rsm:ExchangedDocumentContext/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID``
(BT-24).
"""

from __future__ import annotations

from lxml import etree

from certifier.invoices.model import Invoice
from certifier.invoices.xml import decimal_text, first, iso_date, value

__all__ = ["NAMESPACE", "profile", "read"]

NAMESPACE = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
_NS = {
    "rsm": NAMESPACE,
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
    "udt": "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100",
}
_CREDIT_NOTES = frozenset({"381", "396"})
# BT-24 specification identifiers (Factur-X 1.0 and ZUGFeRD 2.x, section "profiles"),
# most specific first.
_PROFILES = [
    ("xrechnung", "XRechnung"),
    (":extended", "EXTENDED"),
    ("urn:factur-x.eu:1p0:basicwl", "BASIC WL"),
    ("urn:factur-x.eu:1p0:basic", "BASIC"),
    ("urn:factur-x.eu:1p0:minimum", "MINIMUM"),
    ("urn:cen.eu:en16931:2017", "EN 16931"),
]


def profile(guideline: str) -> str:
    """The profile named by a BT-24 identifier, or the identifier itself."""
    lowered = guideline.lower()
    for marker, name in _PROFILES:
        if marker in lowered:
            return name
    return guideline


def _party(party: etree._Element | None) -> tuple[str, str]:
    name = value(party, ["ram:Name"], _NS)
    tax_id = value(
        party,
        [
            "ram:SpecifiedTaxRegistration/ram:ID[@schemeID='VA']",
            "ram:SpecifiedTaxRegistration/ram:ID[@schemeID='FC']",
            "ram:SpecifiedTaxRegistration/ram:ID",
            "ram:SpecifiedLegalOrganization/ram:ID",
        ],
        _NS,
    )
    return name, tax_id


def read(root: etree._Element, format_name: str = "CII") -> Invoice:
    """The essentials of a CII ``CrossIndustryInvoice`` root element; ``format_name``
    says what carried it (``Factur-X``, ``ZUGFeRD``, or ``CII`` for a bare XML file)."""
    problems: list[str] = []
    document = first(root, ["rsm:ExchangedDocument"], _NS)
    agreement = first(
        root, ["rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeAgreement"], _NS
    )
    settlement = first(
        root, ["rsm:SupplyChainTradeTransaction/ram:ApplicableHeaderTradeSettlement"], _NS
    )
    seller_name, seller_tax = _party(
        first(agreement, ["ram:SellerTradeParty"], _NS) if agreement is not None else None
    )
    buyer_name, buyer_tax = _party(
        first(agreement, ["ram:BuyerTradeParty"], _NS) if agreement is not None else None
    )
    summation = "ram:SpecifiedTradeSettlementHeaderMonetarySummation/"
    total = (
        first(
            settlement,
            [summation + "ram:GrandTotalAmount", summation + "ram:DuePayableAmount"],
            _NS,
        )
        if settlement is not None
        else None
    )
    currency = value(settlement, ["ram:InvoiceCurrencyCode"], _NS)
    if total is not None and not currency:
        currency = str(total.get("currencyID") or "")
    number = value(document, ["ram:ID"], _NS)
    if document is None or not number:
        problems.append("no invoice number (rsm:ExchangedDocument/ram:ID)")
    if total is None:
        problems.append("no total (ram:SpecifiedTradeSettlementHeaderMonetarySummation)")
    guideline = value(
        root,
        ["rsm:ExchangedDocumentContext/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID"],
        _NS,
    )
    return Invoice(
        format=format_name,
        version=profile(guideline),
        kind="credit note"
        if value(document, ["ram:TypeCode"], _NS) in _CREDIT_NOTES
        else "invoice",
        number=number,
        issue_date=iso_date(
            value(document, ["ram:IssueDateTime/udt:DateTimeString"], _NS), problems
        ),
        seller_name=seller_name,
        seller_tax_id=seller_tax,
        buyer_name=buyer_name,
        buyer_tax_id=buyer_tax,
        total=decimal_text(value(total, ["."], _NS), problems),
        currency=currency,
        problem="; ".join(problems) or None,
    )
