"""The names of the queue's states, and the shapes of the rows the store returns.

Every state the database holds is a member of one of these enumerations. They are
``StrEnum``: a member equals the string stored in the database (``RecipientState.DEFERRED
== "deferred"``), so the schema and the rows already written do not change, rows read
back compare equal to the members, and mypy finds a misspelt state where a bare string
would have passed. A reader looking for every place a recipient changes state searches
for the member (``RecipientState.DELIVERED``), as for Haraka's named outcomes.

Recipient states: ``queued`` (never tried), ``deferred`` (tried, will be retried),
``submitted`` (an SMS the SMSC took, waiting for the operator's receipt), and the
final ones (:data:`FINAL`) ``delivered``, ``failed``, ``withdrawn`` (the operator deleted
the message before delivery) and ``bounced`` (delivered, then a DSN said it failed after
all, RFC 3464).

The row types (:class:`MessageRow`, :class:`RecipientRow`, :class:`DueRecipient`) name the
columns of ``SELECT *`` from the two queue tables (see :mod:`relay.queue.migrations`);
they are ``TypedDict``: the rows stay the plain dicts every caller already reads.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypedDict


class RecipientState(StrEnum):
    """``recipients.status``: where one recipient of one message stands."""

    QUEUED = "queued"  # never tried
    DEFERRED = "deferred"  # tried, will be tried again
    # an SMS whose every part the SMSC took, waiting for the operator's receipts (not
    # final, not due: a receipt or [sms] receipt_timeout ends it; docs/sms.md)
    SUBMITTED = "submitted"
    DELIVERED = "delivered"  # the next hop took it (RFC 5321 250)
    FAILED = "failed"  # permanently refused, or expired in the queue
    WITHDRAWN = "withdrawn"  # the operator deleted the message before delivery
    BOUNCED = "bounced"  # delivered, then a late DSN said it failed after all


PENDING: frozenset[RecipientState] = frozenset({RecipientState.QUEUED, RecipientState.DEFERRED})
"""The states of a recipient still to be tried."""

FINAL: frozenset[RecipientState] = frozenset(
    {
        RecipientState.DELIVERED,
        RecipientState.FAILED,
        RecipientState.WITHDRAWN,
        RecipientState.BOUNCED,
    }
)
"""The states no attempt changes any more (a late DSN may still turn delivered into bounced)."""


class MessageKind(StrEnum):
    """``messages.kind``: what a queued message is."""

    MAIL = "mail"  # what a user sent, certified or plain
    POSTMASTER = "postmaster"  # mail for postmaster@/abuse@, relayed to the operator
    RECEPTION = "reception"  # certified reception: a copy forwarded by a mailbox owner
    DSN = "dsn"  # a late delivery report (RFC 3464) to the gateway's return path
    NOTICE = "notice"  # the gateway's "your certified mail was received"
    CERTIFICATE = "certificate"  # the certificate mail to the sender
    ADDENDUM = "addendum"  # a later certificate: opens, clicks, a late bounce
    RECEIPT = "receipt"  # the proof of receipt a reception owner's sender gets
    REPORT = "report"  # a delivery status notification to the sender of plain mail


class MessageState(StrEnum):
    """``messages.state``: whether the queue still works on a message."""

    ACTIVE = "active"  # recipients to try or documents to make
    HELD = "held"  # the operator put it on hold: no delivery attempts
    DONE = "done"  # nothing more to do; its spool file is removed or archived


class DocumentState(StrEnum):
    """``messages.notice_state`` and ``messages.cert_state``: a document owed to the sender."""

    NONE = "none"  # none is owed
    PENDING = "pending"  # owed, not yet queued
    DONE = "done"  # queued (or found impossible and recorded so)
    # owed, waiting for its organisation's credits (a reception certificate, an
    # addendum: docs/accounts.md "Credits"); pending again when credits are added
    WAITING = "waiting"


class Method(StrEnum):
    """``messages.method``: how a message entered the queue."""

    SUBMISSION = "submission"  # an authenticated user (RFC 6409)
    MX = "mx"  # port 25: a Cc copy, postmaster mail, a DSN (RFC 5321)
    RECEPTION = "reception"  # forwarded to a reception owner's token address
    GENERATED = "generated"  # made by the gateway itself


class TrackingKind(StrEnum):
    """``tracking_events.kind``: what a tracked copy's recipient did (the addendum)."""

    OPEN = "open"  # the copy's image was fetched
    CLICK = "click"  # a link of the copy was followed


class Role(StrEnum):
    """``users.role``: what a user of an organisation may do (relay/roles.py, docs/accounts.md)."""

    ADMIN = "admin"  # manages the organisation's users, sees all its certificates, sends
    SENDER = "sender"  # sends, sees its own certificates
    AUDITOR = "auditor"  # reads all the organisation's certificates, sends nothing


class Product(StrEnum):
    """What credits are spent on: one ``[credits]`` price each (docs/accounts.md)."""

    EMAIL_RECIPIENT = "email_recipient"  # a recipient of a certified message
    ADDENDUM = "addendum"  # an addendum document (opens, clicks, a late bounce)
    RECEPTION = "reception"  # a certificate of certified reception
    SMS_SEGMENT = "sms_segment"  # one segment of a certified SMS


class CreditKind(StrEnum):
    """``credit_movements.kind``: why an organisation's balance moved."""

    PURCHASE = "purchase"  # a bundle the operator added (certifica credits add)
    RESERVE = "reserve"  # taken when a message was accepted (with its 250)
    REFUND = "refund"  # given back: a recipient withdrawn before any attempt
    CHARGE = "charge"  # taken when a document was made (an addendum, a reception certificate)
    ADJUST = "adjust"  # an operator's correction, with a note


class HoldState(StrEnum):
    """``credit_holds.state``: a reservation until the message ends."""

    RESERVED = "reserved"  # taken from the balance, not yet settled
    SPENT = "spent"  # attempted (delivered or failed): the evidence was produced
    REFUNDED = "refunded"  # never attempted: given back


class MessageRow(TypedDict):
    """One row of ``messages`` as :meth:`relay.queue.store.Store.message` returns it."""

    qid: str
    kind: str  # a MessageKind
    parent_qid: str | None
    created: float
    expires: float
    sender: str
    size: int
    sha256: str
    certified: int
    cert_id: str | None
    auth_user: str | None
    client_ip: str | None
    client_helo: str | None
    tls_version: str | None
    tls_cipher: str | None
    method: str  # a Method
    summary: str | None  # JSON
    state: str  # a MessageState
    notice_state: str  # a DocumentState
    cert_state: str  # a DocumentState
    done_at: float | None
    tracking: int
    header_from: str | None
    envelope_from: str | None
    authentication: str | None  # JSON
    tracking_reported: int
    reception: str | None  # JSON
    content_key: str | None
    addendum_pending: int
    dsn_ret: str | None
    dsn_envid: str | None
    reports_pending: int
    delay_report_qid: str | None
    original_to: str | None  # JSON
    header_section: bytes | None
    org: str | None  # the organisation it is attributed to
    subject: str | None  # decoded; NULL once the content is past retention or erased


class RecipientRow(TypedDict):
    """One row of ``recipients`` as :meth:`relay.queue.store.Store.recipients` returns it."""

    id: int
    qid: str
    address: str
    domain: str
    status: str  # a RecipientState
    attempts: int
    next_attempt: float
    last_attempt: float | None
    reply_code: int | None
    reply_enhanced: str | None
    reply_text: str | None
    remote_qid: str | None
    mx_host: str | None
    ip: str | None
    port: int | None
    tls_version: str | None
    tls_cipher: str | None
    delivered_sha256: str | None
    note: str | None
    lease_until: float | None
    handed_out: float | None  # first handed to a delivery agent: an attempt began
    lease_owner: str | None
    addendum_at: float | None
    tracked: int | None
    tracking_notes: str | None  # JSON
    notify: str | None
    orcpt: str | None
    report_qid: str | None


class DueRecipient(RecipientRow):
    """A recipient leased by :meth:`relay.queue.store.Store.take_due`, with what its
    delivery needs of its message."""

    sender: str
    kind: str
    created: float
    expires: float
    client_ip: str | None
    client_helo: str | None
    auth_user: str | None
    in_tls_version: str | None
    method: str
    tracking: int
    header_from: str | None
    cert_id: str | None
    original_to: str | None
