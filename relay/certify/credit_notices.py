"""The mail an organisation's admins get about its credits (docs/credits.md): the
balance fell below ``[credits] warn_below``, and certificates of certified reception or
addenda wait for credits. Written as the gateway writes its other mail
(:mod:`relay.certify.notices`): in each admin's language and time zone (the ``mail``
gettext catalog), text and HTML, ``Auto-Submitted: auto-generated`` (RFC 3834), from
the null reverse-path. Each says the balance and how to top up: credits are added by
the gateway's operator (``certifica credits add``), whose contact is ``[provider]
contact``.
"""

from __future__ import annotations

from typing import Any

from certifier.i18n import Reader
from relay.certify.notices import DOMAIN, assemble, header_fields, one_line


def _context(org_name: str, balance: int, contact: str, gateway: str) -> dict[str, Any]:
    return {
        "organisation": one_line(org_name),
        "balance": balance,
        "contact": one_line(contact),
        "gateway": gateway,
    }


def build_low_balance(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    org_name: str,
    balance: int,
    threshold: int,
    contact: str,
    reader: Reader,
) -> bytes:
    """The notice that ``org_name``'s balance fell below ``threshold``."""
    _ = reader.catalog(DOMAIN).gettext
    context = _context(org_name, balance, contact, gateway_name)
    context["threshold"] = threshold
    subject = _("Credits running low: %(balance)s left for %(organisation)s") % {
        "balance": balance,
        "organisation": context["organisation"],
    }
    fields = header_fields(
        gateway_name, from_address, to, one_line(subject), hostname, None, qid, reader.language
    )
    return assemble(fields, "credit_low", context, reader)


def build_waiting(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    org_name: str,
    balance: int,
    receptions: int,
    addenda: int,
    contact: str,
    reader: Reader,
) -> bytes:
    """The notice that ``receptions`` reception certificates and ``addenda`` addenda of
    ``org_name`` wait for credits."""
    _ = reader.catalog(DOMAIN).gettext
    context = _context(org_name, balance, contact, gateway_name)
    context.update(receptions=receptions, addenda=addenda)
    subject = _("Certificates wait for credits: %(organisation)s") % {
        "organisation": context["organisation"]
    }
    fields = header_fields(
        gateway_name, from_address, to, one_line(subject), hostname, None, qid, reader.language
    )
    return assemble(fields, "credit_waiting", context, reader)
