"""What callers hand the store: a message to queue, the outcome of a delivery attempt.

Frozen dataclasses, so a record cannot change between the caller building it and the
store's thread writing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SmsContent:
    """What a message's SMS recipients are sent (docs/sms.md): its ``sms_messages`` row,
    written in the transaction that queues the message. ``parts`` are the exact
    ``short_message`` octets of each part (UDH included), in hexadecimal; ``skipped``
    lists who was not sent to and why (``{"address", "name", "reason"}``)."""

    text: str
    text_sha256: str
    alphabet: str  # gsm | ucs2
    data_coding: int
    esm_class: int
    parts: tuple[str, ...]
    units: int
    sender_id: str
    marketing: bool = False
    skipped: tuple[dict[str, str], ...] = ()


@dataclass(frozen=True)
class NewMessage:
    """A message to put in the queue: its row and its recipients."""

    qid: str
    kind: str
    sender: str
    size: int
    sha256: str
    recipients: tuple[str, ...]
    certified: bool = False
    method: str = "generated"
    parent_qid: str | None = None
    cert_id: str | None = None
    auth_user: str | None = None
    client_ip: str | None = None
    client_helo: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    summary: dict[str, Any] | None = None
    tracking: bool = False
    header_from: str | None = None
    envelope_from: str | None = None
    authentication: dict[str, Any] | None = None
    reception: dict[str, Any] | None = None
    content_key: str | None = None
    event: str | None = None
    event_detail: dict[str, Any] = field(default_factory=dict)
    dsn_ret: str | None = None  # RFC 3461 RET=
    dsn_envid: str | None = None  # RFC 3461 ENVID=, decoded
    notify: Mapping[str, str] = field(default_factory=dict)  # NOTIFY= per recipient given one
    org: str | None = None  # the organisation it is attributed to (docs/accounts.md)
    subject: str | None = None  # the Subject, decoded (intake.accept sets it from the bytes)
    orcpt: Mapping[str, str] = field(default_factory=dict)  # ORCPT= per recipient given one
    original_to: tuple[str, ...] = ()  # postmaster mail: the addresses it was sent to
    hosted: str | None = None  # hosted | hosted-code | accept (docs/hosted.md)
    sms: SmsContent | None = None  # what its SMS recipients are sent (docs/sms.md)


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt ended in for one recipient: delivered, deferred or failed."""

    recipient_id: int
    status: str
    reply_code: int | None
    reply_enhanced: str | None
    reply_text: str
    remote_qid: str | None = None
    mx_host: str | None = None
    ip: str | None = None
    port: int | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    delivered_sha256: str | None = None
    note: str | None = None
    next_attempt: float | None = None
    delivered_copy: str | None = None  # JSON: how to rebuild the copy (certifier.copies)
    # its credits are given back, not spent: an SMS the SMSC refused (docs/credits.md)
    refund: bool = False


def domain_of(address: str) -> str:
    """The domain of ``address``, lower case (what scheduling groups recipients by)."""
    return address.rpartition("@")[2].lower()
