"""What a document says happened, in one word: the title of a certificate, the subject of
its mail and the heading of its verification page all come from :func:`outcome`.

A certificate of certified sending is titled by what happened to its recipients, so a
failed or withdrawn message is never called a delivery:

=================  =========================================================
``delivery``       every recipient's server accepted the message
``non_delivery``   no recipient's server accepted it (failed, bounced)
``partial``        some accepted it, others did not (or it was withdrawn for them)
``withdrawal``     the operator withdrew it for every recipient before delivery
``pending``        not every recipient is final (never so for a certificate)
``reception``      certified reception: a message arrived for a mailbox owner
``addendum``       events after the certificate (opens, clicks, a late bounce)
=================  =========================================================

Statuses are those of the evidence record (``recipients[].status``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

__all__ = ["Outcome", "outcome", "recipients_outcome"]


class Outcome(StrEnum):
    DELIVERY = "delivery"
    NON_DELIVERY = "non_delivery"
    PARTIAL = "partial"
    WITHDRAWAL = "withdrawal"
    PENDING = "pending"
    RECEPTION = "reception"
    ADDENDUM = "addendum"


def recipients_outcome(statuses: Iterable[object]) -> Outcome:
    """The outcome of a sending whose recipients ended with ``statuses``."""
    seen = [str(s) for s in statuses]
    if not seen:
        return Outcome.NON_DELIVERY
    if any(s in ("queued", "deferred") for s in seen):
        return Outcome.PENDING
    delivered = sum(s == "delivered" for s in seen)
    if delivered == len(seen):
        return Outcome.DELIVERY
    if delivered:
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
    recipients = evidence.get("recipients")
    if not isinstance(recipients, list):
        return Outcome.NON_DELIVERY
    return recipients_outcome(r.get("status") if isinstance(r, dict) else None for r in recipients)
