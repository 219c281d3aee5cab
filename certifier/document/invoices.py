"""Invoices on the certificate's pages: one sentence per invoice, and its details.

An attachment the gateway read as an invoice (:mod:`certifier.invoices`, recorded as
the attachment's ``invoice`` in ``evidence.json``) is stated in words on page 1 and on
its entry in the message's annex ("Invoice no. F-1 of 28 November 2026 from Talleres
Ejemplo, S.L. (B12345674) to Núria Puig Ferrer (12345678Z), total 1.234,56 EUR"), with
the verdict on its own electronic signature; the annex then lists every field read,
the signer and any problem in reading the file. Dates and amounts are written as the
reader writes them (Babel, as :mod:`certifier.i18n` does for the rest of the document);
the values from the invoice are untrusted text, cleaned and capped like every other.
"""

from __future__ import annotations

import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from babel.dates import format_date
from babel.numbers import format_decimal

from certifier.document.typeset import CAP_SHORT, as_dict, as_list, clean
from certifier.document.words import N_, Gettext
from certifier.i18n import Reader

__all__ = [
    "amount",
    "details",
    "invoice_date",
    "invoice_sentence",
    "invoices",
    "signature_sentence",
]

_SIGNATURES = {
    "trusted": N_(
        "Its electronic signature is intact, and its signer, %(signer)s, holds a "
        "certificate from an authority on the provider's trust list."
    ),
    "untrusted": N_(
        "Its electronic signature is intact, but its signer, %(signer)s, holds no "
        "certificate from an authority on the provider's trust list."
    ),
    "intact": N_(
        "Its electronic signature is intact: the file has not changed since %(signer)s "
        "signed it. Who the signer is was not checked against a trust list."
    ),
    "not-intact": N_(
        "Its electronic signature is not intact: the file was changed after it was "
        "signed, or the signature is damaged."
    ),
    "unchecked": N_("It carries an electronic signature that could not be checked."),
    "present": N_(
        "It came in an envelope electronically signed by %(signer)s; that signature was "
        "not checked."
    ),
}
STATUS_WORDS = {
    "trusted": N_("intact, signer on the trust list"),
    "untrusted": N_("intact, signer not on the trust list"),
    "intact": N_("intact, signer not checked against a trust list"),
    "not-intact": N_("not intact"),
    "unchecked": N_("could not be checked"),
    "present": N_("signed envelope, not checked"),
}


def invoices(message: object) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(attachment, invoice)`` for each attachment of ``message`` read as an invoice."""
    out = []
    for raw in as_list(as_dict(message).get("attachments")):
        attachment = as_dict(raw)
        invoice = as_dict(attachment.get("invoice"))
        if invoice:
            out.append((attachment, invoice))
    return out


def invoice_date(reader: Reader, value: object) -> str:
    """An ISO date as the reader writes it ("28 de noviembre de 2026"); else as written."""
    text = clean(value, 40)
    try:
        return format_date(datetime.date.fromisoformat(text), "long", locale=reader.locale)
    except ValueError:
        return text


def amount(reader: Reader, value: object, currency: object) -> str:
    """A decimal amount with its currency as the reader writes it ("1.234,56 EUR")."""
    text = clean(value, 40)
    try:
        number = Decimal(text)
        if not number.is_finite():
            raise InvalidOperation
        text = format_decimal(number, format="#,##0.00########", locale=reader.locale)
    except (InvalidOperation, ValueError):
        pass
    code = clean(currency, 10)
    return f"{text} {code}".strip()


def _party(_: Gettext, party: object) -> str:
    p = as_dict(party)
    name = clean(p.get("name"), CAP_SHORT) or _("(no name)")
    tax_id = clean(p.get("tax_id"), 60)
    return f"{name} ({tax_id})" if tax_id else name


def invoice_sentence(_: Gettext, reader: Reader, invoice: dict[str, Any]) -> str:
    """The invoice in one sentence, with its signature's verdict and a word on any
    problem in reading it."""
    values = {
        "number": clean(invoice.get("number"), 100) or "—",
        "date": invoice_date(reader, invoice.get("issue_date")) or "—",
        "seller": _party(_, invoice.get("seller")),
        "buyer": _party(_, invoice.get("buyer")),
        "total": amount(reader, invoice.get("total"), invoice.get("currency")) or "—",
        "format": " ".join(
            t for t in (clean(invoice.get("format"), 20), clean(invoice.get("version"), 40)) if t
        ),
    }
    if invoice.get("problem") and not invoice.get("number"):
        return _(
            "An invoice in the %(format)s format that could not be read; the annex says "
            "what failed."
        ) % {"format": values["format"] or "—"}
    if invoice.get("kind") == "credit note":
        text = _(
            "Credit note no. %(number)s of %(date)s from %(seller)s to %(buyer)s, total "
            "%(total)s (%(format)s)."
        )
    else:
        text = _(
            "Invoice no. %(number)s of %(date)s from %(seller)s to %(buyer)s, total "
            "%(total)s (%(format)s)."
        )
    out = [text % values]
    signature = signature_sentence(_, invoice.get("signature"))
    if signature:
        out.append(signature)
    if invoice.get("problem"):
        out.append(_("The file could not be read completely; the annex says what failed."))
    return " ".join(out)


def signature_sentence(_: Gettext, signature: object) -> str:
    """The verdict on an invoice's own signature in words; "" when it has none."""
    s = as_dict(signature)
    status = s.get("status")
    if not isinstance(status, str) or status not in _SIGNATURES:
        return ""
    signer = clean(s.get("signer"), CAP_SHORT) or _("an unnamed signer")
    return _(_SIGNATURES[status]) % {"signer": signer}


def details(_: Gettext, reader: Reader, invoice: dict[str, Any]) -> list[tuple[str, str]]:
    """The annex's rows for one invoice: every field read, in plain text."""
    seller = as_dict(invoice.get("seller"))
    buyer = as_dict(invoice.get("buyer"))
    kind = _("credit note") if invoice.get("kind") == "credit note" else _("invoice")
    rows = [
        (_("Format"), f"{clean(invoice.get('format'), 20)} {clean(invoice.get('version'), 40)}"),
        (_("Document"), kind),
        (_("Number"), clean(invoice.get("number"), 100)),
        (_("Issue date"), invoice_date(reader, invoice.get("issue_date"))),
        (_("Seller"), clean(seller.get("name"), CAP_SHORT)),
        (_("Seller's tax id"), clean(seller.get("tax_id"), 60)),
        (_("Buyer"), clean(buyer.get("name"), CAP_SHORT)),
        (_("Buyer's tax id"), clean(buyer.get("tax_id"), 60)),
        (_("Total"), amount(reader, invoice.get("total"), invoice.get("currency"))),
    ]
    s = as_dict(invoice.get("signature"))
    status = s.get("status")
    if isinstance(status, str) and status in STATUS_WORDS:
        verdict = _(STATUS_WORDS[status])
        kind_of = clean(s.get("kind"), 20)
        rows.append(
            (_("Its electronic signature"), f"{kind_of}: {verdict}" if kind_of else verdict)
        )
        if s.get("signer"):
            rows.append(
                (_("Signer (as its certificate names it)"), clean(s.get("signer"), CAP_SHORT))
            )
        if s.get("detail"):
            rows.append((_("Signature check"), clean(s.get("detail"), 300)))
    if invoice.get("problem"):
        rows.append((_("What could not be read"), clean(invoice.get("problem"), 600)))
    return [(label, value or "—") for label, value in rows]
