"""What a document says happened, in one word: the title of a certificate, the subject of
its mail and the heading of its verification page all come from :func:`outcome`.

A certificate of certified sending is titled by what happened to its recipients, so a
failed or withdrawn message is never called a delivery:

=================  =========================================================
``delivery``       every recipient's server accepted the message
``non_delivery``   no recipient's server accepted it (failed, bounced)
``partial``        some accepted it, others did not (or it was withdrawn for them)
``withdrawal``     the operator withdrew it for every recipient before delivery
``pending``        not every recipient is final (never so for a certificate), or every
                   SMS was sent and no delivery receipt came (docs/sms.md)
``reception``      certified reception: a message arrived for a mailbox owner
``addendum``       events after the certificate (opens, clicks, a late bounce)
``acceptance``     a recipient accepted the hosted content (docs/hosted.md)
``rejection``      a recipient rejected it
=================  =========================================================

Statuses are those of the evidence record (``recipients[].status``). An SMS
recipient the operator sent no delivery receipt for (``recipients[].sms.outcome``
``no_receipt``) was sent, neither delivered nor failed. A message whose recipients are
all phones is titled as a certified SMS (:data:`SMS_TITLES`, :func:`title_id`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

__all__ = [
    "SMS_TITLES",
    "TITLES",
    "Outcome",
    "outcome",
    "recipients_outcome",
    "sms_only",
    "title_id",
]


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark only"
    return message


class Outcome(StrEnum):
    DELIVERY = "delivery"
    NON_DELIVERY = "non_delivery"
    PARTIAL = "partial"
    WITHDRAWAL = "withdrawal"
    PENDING = "pending"
    RECEPTION = "reception"
    ADDENDUM = "addendum"
    ACCEPTANCE = "acceptance"
    REJECTION = "rejection"


TITLES: dict[Outcome, str] = {
    Outcome.DELIVERY: N_("Certificate of delivery of a certified e-mail"),
    Outcome.NON_DELIVERY: N_("Certificate of non-delivery of a certified e-mail"),
    Outcome.PARTIAL: N_("Certificate of partial delivery of a certified e-mail"),
    Outcome.WITHDRAWAL: N_("Certificate of withdrawal of a certified e-mail"),
    Outcome.PENDING: N_("Certificate of sending of a certified e-mail"),
    Outcome.RECEPTION: N_("Certificate of reception of a certified e-mail"),
    Outcome.ADDENDUM: N_("Addendum to a certificate of certified e-mail"),
    Outcome.ACCEPTANCE: N_("Certificate of acceptance of a certified e-mail"),
    Outcome.REJECTION: N_("Certificate of rejection of a certified e-mail"),
}
"""The title of each kind of document (English message ids of the ``certificate``
catalog): the PDF and the verification page name a document alike."""


SMS_TITLES: dict[Outcome, str] = {
    Outcome.DELIVERY: N_("Certificate of delivery of a certified SMS"),
    Outcome.NON_DELIVERY: N_("Certificate of non-delivery of a certified SMS"),
    Outcome.PARTIAL: N_("Certificate of partial delivery of a certified SMS"),
    Outcome.WITHDRAWAL: N_("Certificate of withdrawal of a certified SMS"),
    Outcome.PENDING: N_("Certificate of sending of a certified SMS"),
}
"""The title of a sending whose recipients are all phones (docs/sms.md)."""

SENT = "sent"
"""The status an SMS recipient counts as when the operator sent no delivery receipt."""


def recipients_outcome(statuses: Iterable[object]) -> Outcome:
    """The outcome of a sending whose recipients ended with ``statuses`` (an SMS sent
    without a delivery receipt: :data:`SENT`)."""
    seen = [str(s) for s in statuses]
    if not seen:
        return Outcome.NON_DELIVERY
    if any(s in ("queued", "deferred", "submitted") for s in seen):
        return Outcome.PENDING
    delivered = sum(s == "delivered" for s in seen)
    sent = sum(s == SENT for s in seen)
    if delivered == len(seen):
        return Outcome.DELIVERY
    if delivered + sent == len(seen):
        return Outcome.PENDING  # sent, not every one with a receipt
    if delivered or sent:
        return Outcome.PARTIAL
    if all(s == "withdrawn" for s in seen):
        return Outcome.WITHDRAWAL
    return Outcome.NON_DELIVERY


def outcome(evidence: Mapping[str, Any]) -> Outcome:
    """The outcome a document made from ``evidence`` (an evidence record) states."""
    kind = evidence.get("kind")
    if kind == "reception":
        return Outcome.RECEPTION
    if kind == "addendum":
        return Outcome.ADDENDUM
    if kind == "acceptance":
        decision = evidence.get("decision")
        accepted = isinstance(decision, Mapping) and decision.get("decision") == "accepted"
        return Outcome.ACCEPTANCE if accepted else Outcome.REJECTION
    recipients = evidence.get("recipients")
    if not isinstance(recipients, list):
        return Outcome.NON_DELIVERY
    return recipients_outcome(_status(r) for r in recipients)


def _status(recipient: object) -> object:
    if not isinstance(recipient, dict):
        return None
    sms = recipient.get("sms")
    if isinstance(sms, dict) and sms.get("outcome") == "no_receipt":
        return SENT
    return recipient.get("status")


def sms_only(evidence: Mapping[str, Any]) -> bool:
    """Whether every recipient of a sending is a phone (docs/sms.md)."""
    recipients = evidence.get("recipients")
    return (
        evidence.get("kind") == "sending"
        and isinstance(recipients, list)
        and bool(recipients)
        and all(isinstance(r, dict) and isinstance(r.get("sms"), dict) for r in recipients)
    )


def title_id(evidence: Mapping[str, Any]) -> str:
    """The message id (``certificate`` catalog) of the title of a document made from
    ``evidence``: that of a certified SMS when every recipient is a phone."""
    said = outcome(evidence)
    if sms_only(evidence) and said in SMS_TITLES:
        return SMS_TITLES[said]
    return TITLES[said]
