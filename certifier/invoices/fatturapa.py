"""FatturaPA 1.2.x: Italy's electronic invoice (Agenzia delle Entrate, "Specifiche
tecniche" of the FatturaPA format, schema ``Schema_del_file_xml_FatturaPA_v1.2.x``).

Root ``FatturaElettronica`` in ``http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2``
with ``versione`` ``FPR12`` (between private parties) or ``FPA12`` (to a public
administration); the children are unqualified. Read: in ``FatturaElettronicaHeader``
the seller ``CedentePrestatore/DatiAnagrafici`` and the buyer
``CessionarioCommittente/DatiAnagrafici`` (tax id ``IdFiscaleIVA`` as country and code,
``IT01234567890``, else ``CodiceFiscale``; name ``Anagrafica/Denominazione``, else
``Nome`` and ``Cognome``); of the first ``FatturaElettronicaBody``,
``DatiGenerali/DatiGeneraliDocumento``: ``Numero``, ``Data``, ``Divisa``, ``TipoDocumento``
(``TD04`` and ``TD08`` are credit notes) and ``ImportoTotaleDocumento`` (the total, tax
included), else the sum of ``DatiPagamento/DettaglioPagamento/ImportoPagamento`` (the
amount payable). A file with several bodies (a "lotto") is stated by its first.

The signed form ``.xml.p7m`` (CAdES-BES, a CMS SignedData with the XML inside, DER or
base64 of DER, as the Sistema di Interscambio accepts it) is opened with asn1crypto to
read the XML; its signature is noted as present, not verified.
"""

from __future__ import annotations

import base64
import binascii
import re
from decimal import Decimal, InvalidOperation

from lxml import etree

from certifier.invoices.model import Invoice, Signature, SignatureStatus
from certifier.invoices.xml import decimal_text, first, iso_date, value

__all__ = ["NAMESPACE", "read", "unwrap_p7m"]

NAMESPACE = "http://ivaservizi.agenziaentrate.gov.it/docs/xsd/fatture/v1.2"
_CREDIT_NOTES = frozenset({"TD04", "TD08"})
_NO_NS: dict[str, str] = {}
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\r\n]+")


def unwrap_p7m(data: bytes) -> tuple[bytes, str] | None:
    """The content of a CMS SignedData (RFC 5652) in ``data`` (DER, or base64 of DER),
    with the common name of the first certificate it carries (the signer's, as CAdES
    puts it first; "" when none); None when ``data`` is not one or holds no content."""
    from asn1crypto import cms

    der = data
    if not data.startswith(b"\x30"):
        stripped = data.strip()
        if not _BASE64.fullmatch(stripped[:4096]):
            return None
        try:
            der = base64.b64decode(stripped, validate=False)
        except (binascii.Error, ValueError):
            return None
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != "signed_data":
            return None
        signed = info["content"]
        content = signed["encap_content_info"]["content"].native
    except Exception:  # asn1crypto raises ValueError, TypeError, KeyError... on bad DER
        return None
    if not isinstance(content, bytes):
        return None
    return content, _first_signer(signed)


def _first_signer(signed: object) -> str:
    try:
        for choice in signed["certificates"] or []:  # type: ignore[index]
            name = choice.chosen.subject.native.get("common_name")
            if isinstance(name, str):
                return name[:300]
    except Exception:  # a damaged certificate list: no name, the content still read
        return ""
    return ""


def _party(party: etree._Element | None) -> tuple[str, str]:
    if party is None:
        return "", ""
    country = value(party, ["IdFiscaleIVA/IdPaese"], _NO_NS)
    code = value(party, ["IdFiscaleIVA/IdCodice"], _NO_NS)
    tax_id = f"{country}{code}" if code else value(party, ["CodiceFiscale"], _NO_NS)
    name = value(party, ["Anagrafica/Denominazione"], _NO_NS)
    if not name:
        parts = [value(party, [f"Anagrafica/{f}"], _NO_NS) for f in ("Nome", "Cognome")]
        name = " ".join(p for p in parts if p)
    return name, tax_id


def _payable(body: etree._Element, problems: list[str]) -> str:
    amounts = body.findall("DatiPagamento/DettaglioPagamento/ImportoPagamento")[:1000]
    if not amounts:
        return ""
    try:
        total = sum((Decimal((a.text or "").strip()) for a in amounts), Decimal(0))
    except InvalidOperation:
        problems.append("a payment amount is not a number")
        return ""
    return str(total)


def read(root: etree._Element, signed: bool = False, signer: str = "") -> Invoice:
    """The essentials of a FatturaPA ``root`` element; ``signed``: it came out of a
    ``.p7m`` envelope, whose signature is noted as present (with the ``signer`` its
    certificate names, not verified)."""
    problems: list[str] = []
    header = first(root, ["FatturaElettronicaHeader"], _NO_NS)
    seller_name, seller_tax = _party(
        first(header, ["CedentePrestatore/DatiAnagrafici"], _NO_NS) if header is not None else None
    )
    buyer_name, buyer_tax = _party(
        first(header, ["CessionarioCommittente/DatiAnagrafici"], _NO_NS)
        if header is not None
        else None
    )
    bodies = root.findall("FatturaElettronicaBody")
    body = bodies[0] if bodies else None
    if body is None:
        problems.append("no invoice body (FatturaElettronicaBody)")
    elif len(bodies) > 1:
        problems.append(f"the file holds {len(bodies)} invoices: the first is stated")
    document = (
        first(body, ["DatiGenerali/DatiGeneraliDocumento"], _NO_NS) if body is not None else None
    )
    number = value(document, ["Numero"], _NO_NS)
    if body is not None and not number:
        problems.append("no invoice number (DatiGeneraliDocumento/Numero)")
    total = value(document, ["ImportoTotaleDocumento"], _NO_NS)
    if not total and body is not None:
        total = _payable(body, problems)
    return Invoice(
        format="FatturaPA",
        version=str(root.get("versione") or "")[:20] or "1.2",
        kind="credit note"
        if value(document, ["TipoDocumento"], _NO_NS) in _CREDIT_NOTES
        else "invoice",
        number=number,
        issue_date=iso_date(value(document, ["Data"], _NO_NS), problems),
        seller_name=seller_name,
        seller_tax_id=seller_tax,
        buyer_name=buyer_name,
        buyer_tax_id=buyer_tax,
        total=decimal_text(total, problems),
        currency=value(document, ["Divisa"], _NO_NS),
        problem="; ".join(problems) or None,
        signature=Signature(SignatureStatus.PRESENT, "CAdES", signer or None) if signed else None,
    )
