"""The evidence record ``certifica-evidence/1``: its type, and its JSON Schema.

A certificate embeds what the gateway recorded about one message as ``evidence.json``
(:mod:`certifier.document`): the queue builds the record (sender, recipients' outcomes,
timeline, evidence log), :mod:`certifier.pipeline` adds what the message says
(:meth:`certifier.message.MessageSummary.as_evidence`), and ``certifica verify``
(:mod:`certifier.verify`) reads it back from the PDF, years later, without the gateway.

The contract is the JSON Schema (draft 2020-12) shipped beside this module,
``certifier/schemas/certifica-evidence-1.schema.json``: anyone can check a record with
any JSON Schema validator. The ``TypedDict`` classes below say the same for mypy (a
test holds the two to the same keys). Fields that every record of this format has are
``Required``; the others appeared as the gateway learnt more (tracking, reception,
late bounces) and are typed where present. Objects may carry more fields than listed:
a verifier ignores what it does not know.

:func:`schema_problem` is what ``certifica verify`` asks: None when the record matches,
else one sentence naming the first field that does not (where in the record, and what
was expected), safe to print on one line.
"""

# No "from __future__ import annotations": TypedDict reads Required[...] at run time.
import functools
import json
from importlib import resources
from typing import Any, Literal, Required, TypedDict

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

__all__ = [
    "FORMAT",
    "SCHEMA_FILE",
    "Attachment",
    "Copy",
    "CopyChange",
    "CopyEdit",
    "EvidenceLog",
    "EvidenceRecord",
    "Gateway",
    "Invoice",
    "InvoiceParty",
    "InvoiceSignature",
    "LateBounce",
    "LateBounceReport",
    "LegacyEvidenceLog",
    "LegacyLogEntry",
    "LogCheckpoint",
    "LogEntry",
    "Message",
    "Provider",
    "Reception",
    "Recipient",
    "RecipientTracking",
    "ReportedBefore",
    "Reply",
    "Seal",
    "Sender",
    "Sms",
    "SmsFailure",
    "SmsPart",
    "SmsReceipt",
    "SmsRecipient",
    "SmsSkipped",
    "TimelineEntry",
    "Tls",
    "Tracking",
    "TrackingEvent",
    "Verification",
    "schema",
    "schema_problem",
]

FORMAT = "certifica-evidence/1"
SCHEMA_FILE = "certifica-evidence-1.schema.json"
MAX_PROBLEM_CHARS = 300


class Tls(TypedDict):
    version: str | None
    cipher: str | None


class Gateway(TypedDict):
    hostname: str
    domain: str
    software: str


class Provider(TypedDict, total=False):
    """``[provider]`` of the gateway that issued the record: who attests it, and under
    which policy (``policy_id`` a URI; an OID as ``urn:oid:1.2.3``, RFC 3061)."""

    name: Required[str]
    legal_id: str
    address: str
    website: str
    contact: str
    policy_id: Required[str]
    policy_url: str


class Verification(TypedDict):
    """Where anyone checks the document: ``<public_url>/v/<code>``, the code at least
    128 bits (README, "Verifying a certificate")."""

    url: str


class Seal(TypedDict, total=False):
    """The signing certificate's holder, as the page's visible seal names it."""

    signer: Required[str]
    organization: str | None
    issuer: str
    serial: str
    not_after: str


class Sender(TypedDict, total=False):
    envelope_from: Required[str]
    header_from: str | None
    authentication: dict[str, Any] | None  # MX and reception: the RFC 8601 results
    authenticated_user: str | None
    client_ip: str | None
    client_helo: str | None
    tls: Tls | None
    method: Required[str]  # submission, certified copy (MX), reception


class InvoiceParty(TypedDict):
    name: str
    tax_id: str


class InvoiceSignature(TypedDict, total=False):
    """An invoice's own signature (:class:`certifier.invoices.SignatureStatus`)."""

    status: Required[
        Literal["trusted", "untrusted", "intact", "not-intact", "unchecked", "present"]
    ]
    kind: Required[str]
    signer: str
    detail: str


class Invoice(TypedDict, total=False):
    """The essentials of an attachment that is an invoice (:mod:`certifier.invoices`)."""

    format: Required[Literal["Facturae", "Factur-X", "ZUGFeRD", "CII", "UBL", "FatturaPA"]]
    version: Required[str]
    kind: Required[Literal["invoice", "credit note"]]
    number: Required[str]
    issue_date: Required[str]
    seller: Required[InvoiceParty]
    buyer: Required[InvoiceParty]
    total: Required[str]
    currency: Required[str]
    problem: str
    signature: InvoiceSignature


class Attachment(TypedDict, total=False):
    filename: Required[str]
    content_type: Required[str]
    size: Required[int]
    sha256: Required[str]
    invoice: Invoice  # when the attachment is an invoice


# "from" is a Python keyword: the functional form.
Message = TypedDict(
    "Message",
    {
        "sha256": Required[str],  # of the message as received
        "size": Required[int],
        "subject": str,
        "date": str,
        "message_id": str,
        "from": str,
        "to": list[str],
        "cc": list[str],
        "attachments": list[Attachment],
        "text": str,
        "text_truncated": bool,
        "defects": list[str],
        "added_fields": list[str],  # header fields the gateway added (RFC 6409 section 8)
        "summary_pending": bool,
        "content_unavailable": str,  # the gateway lost the message: why
    },
    total=False,
)


class Reply(TypedDict, total=False):
    code: int | None
    enhanced: str | None
    text: str | None


class RecipientTracking(TypedDict, total=False):
    tracked: Required[bool]
    notes: list[str]


class CopyEdit(TypedDict):
    offset: int
    length: int
    insert: str  # base64


class CopyChange(TypedDict, total=False):
    change: Required[
        Literal[
            "header_added",
            "link_tracked",
            "open_pixel_added",
            "from_rewritten",
            "part_reencoded",
            "other",
        ]
    ]
    field: str  # header_added: the field's name
    link: int  # link_tracked: its number (1 first), as the tracking evidence numbers it
    url: str  # link_tracked: where it pointed
    part: str  # part_reencoded: which part, in words
    encoding: str  # part_reencoded: the new transfer encoding or charset
    detail: str  # other: what, in words, when known


class Copy(TypedDict):
    """How to rebuild a recipient's delivered copy from message.eml (:mod:`certifier.copies`)."""

    prefix: str
    edits: list[CopyEdit]
    changes: list[CopyChange]


class HostedLink(TypedDict, total=False):
    """What became of a recipient's link to hosted content (docs/hosted.md)."""

    mode: Required[Literal["hosted", "hosted-code", "accept", "accept-code"]]
    state: Required[Literal["waiting", "handed_over", "expired"]]
    expires: str | None
    handed_over_at: str | None
    expired_at: str | None
    decision: Literal["accepted", "rejected"] | None
    decided_at: str | None
    handover: dict[str, Any]  # the first opening: automatic, reason, code_checked


class SmsSkipped(TypedDict, total=False):
    """A group member the SMS was not sent to (docs/sms.md, "Groups"), and why."""

    address: Required[str]  # empty when the contact has no number
    name: str
    group: str  # the group it was named through; empty for a number named directly
    reason: Required[str]  # in the gateway's words
    why: str  # no_number | opted_out | no_consent | refused


class Sms(TypedDict, total=False):
    """What a message's SMS recipients were sent (docs/sms.md, "The certificate"): the
    text exactly as sent (None once erased) and its SHA-256 (of its UTF-8), its
    encoding (``gsm`` or ``ucs2``; ``data_coding`` SMPP 3.4 section 5.2.19), each
    part's ``short_message`` octets in hexadecimal (UDH included)."""

    text: Required[str | None]
    text_sha256: Required[str]
    alphabet: Required[str]
    data_coding: Required[int]
    esm_class: int
    segments: Required[int]
    units: int
    parts: Required[list[str]]
    sender_id: Required[str]
    marketing: bool
    skipped: list[SmsSkipped]
    receipt_timeout: float  # [sms] receipt_timeout, seconds
    queue_lifetime: float  # [queue] lifetime, seconds: how long an SMS not taken is tried


class SmsPart(TypedDict, total=False):
    """One ``submit_sm`` of one part, and the SMSC's answer."""

    seq: Required[int]
    attempt: Required[int]
    message_id: str | None
    submitted_at: str | None
    answered_at: str | None
    state: Required[Literal["submitting", "accepted", "deferred", "failed"]]
    command_status: int | None
    sentence: str | None
    maybe_duplicate: bool  # the answer to an earlier submit of this part was lost


class SmsReceipt(TypedDict, total=False):
    """An operator's delivery receipt, parsed and raw; its dates as the operator wrote
    them (``YYMMDDhhmm``, the operator's clock)."""

    seq: int | None
    message_id: Required[str]
    state: Required[str | None]
    submit_date: str | None
    done_date: str | None
    error: str | None
    received_at: str | None
    raw: Required[str]  # hexadecimal
    final: bool  # it ended its part (false: an intermediate notification, esm_class 0x20)


class SmsFailure(TypedDict, total=False):
    """What ended an undelivered SMS (a receipt's state and error), a refused one (the
    SMSC's command_status, its name in SMPP 3.4 section 5.1.3 and its sentence) or one
    not sent before the queue lifetime ran out (the last answer)."""

    seq: int | None
    state: str | None
    error: str | None
    command_status: int | None
    status_name: str | None  # ESME_RINVDSTADR; None when the standard names none
    sentence: str | None


class SmsRecipient(TypedDict, total=False):
    """An SMS recipient: its number (E.164) and what became of its SMS."""

    number: Required[str]
    outcome: Required[
        Literal[
            "delivered", "undelivered", "no_receipt", "refused", "not_sent", "withdrawn", "pending"
        ]
    ]
    possible_duplicate: bool
    submitted_at: str | None
    receipt_at: str | None
    failure: SmsFailure
    parts: Required[list[SmsPart]]
    receipts: Required[list[SmsReceipt]]


class Recipient(TypedDict, total=False):
    address: Required[str]
    status: Required[
        Literal["queued", "deferred", "submitted", "delivered", "failed", "withdrawn", "bounced"]
    ]
    time: str | None
    mx_host: str | None
    ip: str | None
    port: int | None
    reply: Reply | None
    remote_qid: str | None
    tls: Tls | None
    attempts: int
    delivered_sha256: str | None
    copy: Copy | None
    note: str | None
    restored_from: str
    tracking: RecipientTracking | None
    hosted: HostedLink  # hosted content (docs/hosted.md)
    sms: SmsRecipient  # an SMS recipient (docs/sms.md)


class TrackingEvent(TypedDict, total=False):
    time: Required[str]
    recipient: str | None
    kind: Required[Literal["open", "click"]]
    link: int | None
    url: str | None
    ip: str | None
    user_agent: str | None
    method: str | None
    automatic: bool
    reason: str | None


class ReportedBefore(TypedDict):
    until_event: int
    certificate_id: str | None


class Tracking(TypedDict, total=False):
    enabled: Required[bool]
    public_url: str | None
    last_event_id: int
    reported_before: ReportedBefore | None
    events: Required[list[TrackingEvent]]


class TimelineEntry(TypedDict, total=False):
    time: Required[str]
    event: Required[str]  # ETSI EN 319 522 names where one fits
    recipient: str | None
    detail: str | None


class LogEntry(TypedDict, total=False):
    """One entry of the hash-chained evidence log, every hashed field (certifier.evidence).
    Format 2 adds ``salt`` (or, once the values were forgotten, ``commitment``)."""

    seq: Required[int]
    time: Required[str]
    qid: Required[str]
    recipient: Required[str | None]
    event: Required[str]
    detail: Required[str]
    prev: Required[str]
    hash: Required[str]
    salt: str
    commitment: str


class LogCheckpoint(TypedDict):
    format: str
    seq: int
    head: str
    time: str
    timestamp: str
    token: str  # base64 of the DER RFC 3161 TimeStampToken


class EvidenceLog(TypedDict, total=False):
    format: Required[Literal["certifica-log-excerpt/1", "certifica-log-excerpt/2"]]
    head: Required[str]
    entries: Required[list[LogEntry]]
    checkpoint: LogCheckpoint | None
    checkpoint_note: str


class LegacyLogEntry(TypedDict):
    seq: int
    event: str
    hash: str


class LegacyEvidenceLog(TypedDict):
    """The first form of ``evidence_log``: entries by hash only, no format."""

    head: str
    entries: list[LegacyLogEntry]


class Reception(TypedDict, total=False):
    owner: Required[str | None]
    arrived_at: Required[str | None]
    envelope: dict[str, Any] | None
    original_from: str | None
    trace: dict[str, Any] | None
    arc: dict[str, Any] | None
    receipt: dict[str, Any] | None


class LateBounceReport(TypedDict, total=False):
    recipient: Required[str]
    action: Required[Literal["failed", "delayed", "delivered", "relayed", "expanded"]]
    status: str | None
    diagnostic: str | None
    remote_mta: str | None
    reporting_mta: str | None
    arrival_date: str | None


class LateBounce(TypedDict):
    dsn_queue_id: str
    dsn_sha256: str
    reports: list[LateBounceReport]


class Decision(TypedDict, total=False):
    """A recipient's acceptance or rejection of hosted content (docs/hosted.md)."""

    decision: Required[Literal["accepted", "rejected"]]
    recipient: Required[str]
    time: Required[str]  # UTC, ISO 8601 with Z
    name: str  # typed by the recipient, optional
    comment: str
    page_sha256: str  # the content page the server sent that recipient, decided on
    page_file: str  # that page's bytes, embedded in the certificate (shown-page.html)
    message_sha256: str
    attachments: list[dict[str, str]]  # name, sha256
    ip: str
    user_agent: str
    automatic: bool
    reason: str
    code_checked: bool  # a one-time code sent to the mailbox was typed before the page


class EvidenceRecord(TypedDict, total=False):
    """The whole record, as ``evidence.json`` holds it."""

    format: Required[Literal["certifica-evidence/1"]]
    kind: Required[Literal["sending", "reception", "addendum", "acceptance"]]
    certificate_id: Required[str]
    addendum_of: str  # kind addendum: the certificate this one adds to
    queue_id: Required[str]
    issued_at: Required[str]  # UTC, ISO 8601 with Z
    gateway: Required[Gateway]
    provider: Provider  # records since the readers' issue (README, "Your language and time zone")
    verification: Verification
    seal: Seal
    sender: Required[Sender]
    message: Required[Message]
    recipients: Required[list[Recipient]]
    tracking: Tracking | None
    timeline: Required[list[TimelineEntry]]
    evidence_log: Required[EvidenceLog | LegacyEvidenceLog]
    reception: Reception  # kind reception
    late_bounce: LateBounce  # an addendum about a late delivery report
    decision: Decision  # kind acceptance (docs/hosted.md)
    sms: Sms  # a message with SMS recipients (docs/sms.md)


@functools.cache
def schema() -> dict[str, Any]:
    """The JSON Schema of ``certifica-evidence/1``, as shipped in the package."""
    text = resources.files("certifier").joinpath("schemas", SCHEMA_FILE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(schema())


def schema_problem(record: object) -> str | None:
    """None when ``record`` matches the schema; else one printable sentence saying where
    and what (the most relevant error, as jsonschema ranks them)."""
    error = best_match(_validator().iter_errors(record))
    if error is None:
        return None
    return _sentence(error)


def _sentence(error: ValidationError) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    where = where.lstrip(".") or "the record"
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in error.instance]
        what = f"lacks the required field {', '.join(map(str, missing)) or '?'}"
    elif error.validator == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else str(expected)
        what = f"is a {_json_type(error.instance)} where {expected} is expected"
    elif error.validator in ("enum", "const"):
        what = "holds a value this format does not allow"
    elif error.validator == "pattern":
        what = "is not written as this format requires"
    elif error.validator in ("anyOf", "oneOf"):
        what = "matches none of the forms this format allows"
    else:
        what = f"does not match the schema ({error.validator})"
    sentence = f"{where} {what}"
    # Field names come from the file: keep the sentence one printable line.
    sentence = "".join(c if c.isprintable() else "?" for c in sentence)
    return sentence[:MAX_PROBLEM_CHARS]


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"
