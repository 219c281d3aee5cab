"""Delivery status notifications the gateway writes, and the SMTP DSN parameters it honours.

Two halves, both pure functions (no I/O; the queue manager, :mod:`relay.queue.manager`, decides
when a report is due and queues what this module builds):

- **Parameters** (RFC 3461 §4, the SMTP DSN extension): ``RET=`` and ``ENVID=`` on
  MAIL, ``NOTIFY=`` and ``ORCPT=`` on RCPT. They are read strictly: a malformed one
  raises :class:`ParameterError`, whose text is the sentence of a ``501 5.5.4`` reply.
  ENVID and ORCPT are xtext (RFC 3461 §4) and are kept decoded, as Postfix keeps them;
  a decoded value must be printable ASCII, so it can never start a header line of the
  report it is copied into.
- **Reports** (RFC 3464 ``message/delivery-status`` inside an RFC 6522
  ``multipart/report; report-type=delivery-status``, which replaced RFC 3462): a plain
  first part for people, in the sender's language (:class:`certifier.i18n.Reader`, the
  gettext domain ``mail``; ``Content-Language``, RFC 3282, on that part), the
  machine-readable status part, the same in every language (per message
  ``Reporting-MTA``, ``Original-Envelope-Id``, ``Arrival-Date``; per recipient
  ``Final-Recipient``, ``Original-Recipient``, ``Action``, ``Status`` (RFC 3463),
  ``Remote-MTA``, ``Diagnostic-Code``, ``Last-Attempt-Date``, ``Will-Retry-Until``),
  and the original: its header section as ``text/rfc822-headers``, or the whole message
  as ``message/rfc822`` when ``RET=FULL`` asked for it and it is not above the
  configured size. The report leaves with the null reverse-path and says
  ``Auto-Submitted: auto-replied`` (RFC 3834 §5), so nothing ever answers it.

Never a report to the null sender, nor about a message that is itself a report
(:func:`is_report`): no bounce loops (RFC 3461 §6.2, RFC 5321 §6.1).

Exceptions::

    ParameterError (ValueError) -- a DSN parameter that is malformed: 501 5.5.4
"""

from __future__ import annotations

import email.policy
import email.utils
import io
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.generator import BytesGenerator
from email.message import EmailMessage, Message
from enum import StrEnum

from certifier.errors import PermanentError
from certifier.i18n import Reader
from relay.certify.notices import (
    DEFAULT_READER,
    DOMAIN,
    N_,
    one_line,
    original_headers,
    quoted_subject,
)

__all__ = [
    "MAIL_KEYWORDS",
    "RCPT_KEYWORDS",
    "Action",
    "MailParameters",
    "ParameterError",
    "RcptParameters",
    "RecipientStatus",
    "Report",
    "build_report",
    "header_section",
    "is_report",
    "late_status",
    "notification_name",
    "parse_mail_parameters",
    "parse_rcpt_parameters",
    "recipient_status",
    "split_parameters",
    "wants",
    "xtext_decode",
    "xtext_encode",
]

MAIL_KEYWORDS = frozenset({"RET", "ENVID"})
RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})
MAX_ENVID = 100  # characters, RFC 3461 §4.4
MAX_ORCPT = 500  # characters, RFC 3461 §4.2
EXPIRED_PREFIX = "retries exhausted"
"""How :mod:`relay.delivery.agent` starts the reply text of a recipient whose lifetime ended."""
NXDOMAIN_MARK = "(NXDOMAIN)"
NULL_MX_MARK = "(null MX, RFC 7505)"
"""How :mod:`relay.delivery.routing` words a domain that does not exist / accepts no mail."""

_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*")
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")
_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


class ParameterError(ValueError, PermanentError):
    """A DSN parameter that is malformed; the text is a sentence for the client."""


class Action(StrEnum):
    """RFC 3464 §2.3.3 actions the gateway reports."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"  # handed to a server that may not send DSNs (RFC 3461 §6.2.3)


# -- parameters (RFC 3461 §4) -------------------------------------------------------------
def xtext_decode(text: str) -> str:
    """The xtext ``text`` decoded (RFC 3461 §4: ``+`` and two upper-case hex digits)."""
    if not _XTEXT.fullmatch(text):
        raise ParameterError("is not valid xtext (RFC 3461 section 4)")
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """``text`` (ASCII) as xtext: ``+``, ``=`` and anything outside ``!``..``~`` as ``+XX``."""
    return "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}" for c in text
    )


@dataclass(frozen=True)
class MailParameters:
    """RET= and ENVID= of a MAIL command (None when not given)."""

    ret: str | None = None  # "FULL" | "HDRS"
    envid: str | None = None  # decoded


@dataclass(frozen=True)
class RcptParameters:
    """NOTIFY= and ORCPT= of a RCPT command (None when not given)."""

    notify: str | None = None  # "NEVER", or some of "SUCCESS,FAILURE,DELAY" in that order
    orcpt: str | None = None  # decoded: "rfc822;bob@example.org"


def split_parameters(text: str, keywords: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Take the ``keywords`` parameters out of an ESMTP parameter string.

    Returns them by upper-cased keyword, values as written (xtext is case-sensitive,
    which is why this runs before aiosmtpd upper-cases the rest), and the other
    parameters unchanged. A keyword given twice, or without a value, is an error."""
    wanted = {k.upper() for k in keywords}
    found: dict[str, str] = {}
    rest: list[str] = []
    for token in text.split():
        keyword, eq, value = token.partition("=")
        name = keyword.upper()
        if name not in wanted:
            rest.append(token)
            continue
        if not eq or not value:
            raise ParameterError(f"{name}= needs a value")
        if name in found:
            raise ParameterError(f"{name}= is given twice")
        found[name] = value
    return found, rest


def parse_mail_parameters(params: Mapping[str, str]) -> MailParameters:
    """RET= and ENVID= read strictly (RFC 3461 §4.3, §4.4)."""
    ret = params.get("RET")
    if ret is not None:
        ret = ret.upper()
        if ret not in ("FULL", "HDRS"):
            raise ParameterError("RET= must be FULL or HDRS")
    envid = params.get("ENVID")
    if envid is not None:
        try:
            envid = xtext_decode(envid)
        except ParameterError as err:
            raise ParameterError(f"ENVID= {err}") from None
        if not envid or len(envid) > MAX_ENVID or not _PRINTABLE.fullmatch(envid):
            raise ParameterError(
                f"ENVID= must be 1 to {MAX_ENVID} printable characters once decoded"
            )
    return MailParameters(ret, envid)


def parse_rcpt_parameters(params: Mapping[str, str]) -> RcptParameters:
    """NOTIFY= and ORCPT= read strictly (RFC 3461 §4.1, §4.2)."""
    notify = params.get("NOTIFY")
    if notify is not None:
        values = notify.upper().split(",")
        if values == ["NEVER"]:
            notify = "NEVER"
        elif not values or any(v not in _NOTIFY for v in values) or len(set(values)) != len(values):
            raise ParameterError(
                "NOTIFY= must be NEVER, or one or more of SUCCESS, FAILURE and DELAY "
                "separated by commas"
            )
        else:
            notify = ",".join(v for v in _NOTIFY if v in values)
    orcpt = params.get("ORCPT")
    if orcpt is not None:
        kind, semicolon, value = orcpt.partition(";")
        if not semicolon or not _ATOM.fullmatch(kind) or not value:
            raise ParameterError("ORCPT= must be an address type, ';' and an address")
        try:
            address = xtext_decode(value)
        except ParameterError as err:
            raise ParameterError(f"ORCPT= {err}") from None
        if len(orcpt) > MAX_ORCPT or not _PRINTABLE.fullmatch(address):
            raise ParameterError(
                f"ORCPT= must be at most {MAX_ORCPT} characters, printable once decoded"
            )
        orcpt = f"{kind.lower()};{address}"
    return RcptParameters(notify, orcpt)


def wants(notify: str | None, action: Action | str) -> bool:
    """Whether a recipient's NOTIFY= asks for a report of ``action``.

    No NOTIFY: failures and delays, as RFC 3461 §4.1 leaves to the MTA and Postfix does."""
    if notify is None:
        return action in (Action.FAILED, Action.DELAYED)
    kinds = notify.split(",")
    if action == Action.FAILED:
        return "FAILURE" in kinds
    if action == Action.DELAYED:
        return "DELAY" in kinds
    return "SUCCESS" in kinds


# -- what the report says -------------------------------------------------------------------
Sentence = tuple[str, tuple[tuple[str, str], ...]]
"""A sentence of the first part not yet translated: its message id (English, marked with
``N_``) and the values of its named placeholders."""


def _sentence(message: str, **values: str) -> Sentence:
    return message, tuple(values.items())


@dataclass(frozen=True)
class RecipientStatus:
    """One recipient's block of the report (RFC 3464 §2.3) and its plain explanation."""

    address: str
    action: Action
    status: str  # RFC 3463, "5.1.1"
    explanation: tuple[Sentence, ...]  # plain words for the first part (see explain)
    diagnostic: str | None = None  # the Diagnostic-Code value: "smtp; 550 5.1.1 ..."
    remote_mta: str | None = None
    original_recipient: str | None = None  # "rfc822;bob@example.org"
    last_attempt: float | None = None
    will_retry_until: float | None = None

    def explain(self, reader: Reader = DEFAULT_READER) -> str:
        """The explanation in ``reader``'s language."""
        _ = reader.catalog(DOMAIN).gettext
        return " ".join(_(message) % dict(values) for message, values in self.explanation)


@dataclass(frozen=True)
class Report:
    """Everything a report states; :func:`build_report` writes it."""

    hostname: str  # the Reporting-MTA, and the domain of the Message-ID
    domain: str  # the gateway's mail domain: From MAILER-DAEMON@domain
    to: str  # the original's envelope sender
    queue_id: str  # the original's
    arrival: float
    recipients: tuple[RecipientStatus, ...]
    original: bytes  # the original message (whole or its header section)
    return_full: bool = False  # RET=FULL asked and the original is within the cap
    full_refused: int | None = None  # RET=FULL asked, but the message has this many bytes
    envid: str | None = None
    reported_by: str | None = None  # a late report: the remote MTA that sent it
    now: float | None = field(default=None, compare=False)


def _ascii_line(text: str, limit: int = 500) -> str:
    return one_line(text, limit).encode("ascii", "replace").decode("ascii")


def recipient_status(
    *,
    address: str,
    action: Action,
    reply_code: int | None,
    reply_enhanced: str | None,
    reply_text: str | None,
    mx_host: str | None = None,
    last_attempt: float | None = None,
    orcpt: str | None = None,
    will_retry_until: float | None = None,
) -> RecipientStatus:
    """A recipient's block from what the queue recorded of its last attempt."""
    text = _ascii_line(reply_text or "")
    expired = text.startswith(EXPIRED_PREFIX)
    domain = address.rpartition("@")[2]
    if reply_enhanced and _ENHANCED.fullmatch(reply_enhanced):
        status = reply_enhanced
    elif reply_code:
        status = f"{reply_code // 100}.0.0"
    elif NXDOMAIN_MARK in text:
        status = "5.1.2"  # RFC 3463: bad destination system address
    elif NULL_MX_MARK in text:
        status = "5.1.10"  # RFC 7505 §4.2
    else:
        status = "4.4.1" if action == Action.DELAYED else "5.4.4"
    if action == Action.FAILED and expired:
        status = "5.4.7"  # RFC 3463: delivery time expired
    elif action == Action.FAILED and not status.startswith("5"):
        status = "5" + status[1:]
    if reply_code:
        reply = f"{reply_code} {reply_enhanced + ' ' if reply_enhanced else ''}"
        said = text.split("; last: ", 1)[-1] if expired else text
        diagnostic: str | None = f"smtp; {reply}{said}".strip()
    elif text:
        diagnostic = f"X-Certifica; {text}"
    else:
        diagnostic = None
    return RecipientStatus(
        address=address,
        action=action,
        status=status,
        explanation=_explain(action, status, domain, mx_host, reply_code, text, expired),
        diagnostic=diagnostic,
        remote_mta=mx_host if reply_code and mx_host else None,
        original_recipient=orcpt,
        last_attempt=last_attempt,
        will_retry_until=will_retry_until,
    )


def _explain(
    action: Action,
    status: str,
    domain: str,
    mx_host: str | None,
    code: int | None,
    text: str,
    expired: bool,
) -> tuple[Sentence, ...]:
    """One or two plain sentences: what happened, and what the other side said."""
    said = (_sentence(N_("Their server said: %(reply)s"), reply=f"{code} {text}"),) if code else ()
    if action == Action.DELAYED:
        last = f"{code} {text}" if code else text
        why = (_sentence(N_("The last problem was: %(problem)s"), problem=last),) if last else ()
        return (_sentence(N_("It has not been delivered yet; the gateway keeps trying.")), *why)
    if action in (Action.RELAYED, Action.DELIVERED):
        if mx_host:
            return (
                _sentence(
                    N_(
                        "It was handed to the recipient's mail server (%(server)s), which "
                        "accepted it. That server may not report further."
                    ),
                    server=mx_host,
                ),
            )
        return (
            _sentence(
                N_(
                    "It was handed to the recipient's mail server, which accepted it. That "
                    "server may not report further."
                )
            ),
        )
    if expired:
        return (
            _sentence(N_("The gateway kept trying but could not deliver it before giving up.")),
            _sentence(
                N_("The last problem was: %(problem)s"), problem=text.split("; last: ", 1)[-1]
            ),
        )
    if status == "5.1.2":
        return (
            _sentence(
                N_("The domain %(domain)s does not exist, so the address cannot receive mail."),
                domain=domain,
            ),
        )
    if status == "5.1.10":
        return (
            _sentence(N_("The domain %(domain)s says it accepts no mail at all."), domain=domain),
        )
    if status.startswith("5.1."):
        return (
            _sentence(N_("The recipient's mail server says this address does not exist.")),
            *said,
        )
    if status.startswith("5.2."):
        return (
            _sentence(N_("The recipient's mailbox cannot take it (full, disabled or too small).")),
            *said,
        )
    if status.startswith("5.7."):
        return (
            _sentence(
                N_("The recipient's mail server refused it by policy (for example a spam filter).")
            ),
            *said,
        )
    if code:
        return (_sentence(N_("The recipient's mail server refused it.")), *said)
    if text:
        return (_sentence(N_("It could not be delivered: %(reason)s"), reason=text),)
    return (_sentence(N_("It could not be delivered.")),)


def late_status(
    *,
    address: str,
    action: Action,
    status: str | None,
    diagnostic: str | None,
    remote_mta: str | None,
    received: float,
    orcpt: str | None = None,
) -> RecipientStatus:
    """A recipient's block from what a remote's own DSN said of it after its 250
    (as :func:`relay.cleanup.bounces.parse_dsn` read it), to pass on to the sender."""
    if not status or not _ENHANCED.fullmatch(status):
        status = {Action.FAILED: "5.0.0", Action.DELAYED: "4.0.0"}.get(action, "2.0.0")
    said = _ascii_line(diagnostic or "")
    what = {
        Action.FAILED: N_(
            "The recipient's mail server accepted the message, then reported that it could "
            "not deliver it."
        ),
        Action.DELAYED: N_(
            "The recipient's mail server accepted the message, then reported that delivery "
            "is delayed."
        ),
    }.get(
        action, N_("The recipient's mail server accepted the message, then reported it delivered.")
    )
    return RecipientStatus(
        address=address,
        action=action,
        status=status,
        explanation=(
            _sentence(what),
            *((_sentence(N_("It said: %(reply)s"), reply=said),) if said else ()),
        ),
        diagnostic=f"smtp; {said}" if said else None,
        remote_mta=_ascii_line(remote_mta, 255) if remote_mta else None,
        original_recipient=orcpt,
        last_attempt=received,
    )


def notification_name(statuses: Iterable[RecipientStatus]) -> str:
    """What Postfix calls such a report in its log: ``non-delivery notification``..."""
    actions = {s.action for s in statuses}
    if Action.FAILED in actions:
        return "non-delivery notification"
    if Action.DELAYED in actions:
        return "delay notification"
    return "delivery status notification"


def header_section(raw: bytes) -> bytes:
    """The header section of ``raw`` (its fields, CRLF-terminated, without the blank line)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
        return raw if end < 0 else raw[: end + 1]
    return raw[: end + 2]


def is_report(raw: bytes) -> bool:
    """Whether ``raw`` is itself a report (RFC 6522 ``multipart/report``): never answered."""
    head = header_section(raw)[:65536].decode("ascii", "replace")
    unfolded = re.sub(r"\r?\n[ \t]+", " ", head)
    match = re.search(r"(?im)^content-type:\s*([^;\s]+)", unfolded)
    return match is not None and match.group(1).lower() == "multipart/report"


def _address_field(address: str) -> str:
    """An address as a DSN field value: ``rfc822; bob@example.org``, or for an address
    outside ASCII (SMTPUTF8) ``utf-8;`` and the utf-8-addr-xtext of RFC 6533 §3, which
    keeps the ``message/delivery-status`` part ASCII."""
    address = one_line(address, 320)
    if address.isascii():
        return f"rfc822; {address}"
    return "utf-8; " + "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def _date(ts: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(ts, UTC))


def _block(fields: list[tuple[str, str]]) -> Message:
    block = Message(policy=email.policy.SMTP)
    for name, value in fields:
        block[name] = _ascii_line(value, 900)
    return block


_TITLES = {
    Action.FAILED: (
        N_("Undelivered mail: “%(subject)s”"),
        N_("Your message “%(subject)s” could not be delivered to the recipients below."),
    ),
    Action.DELAYED: (
        N_("Delivery delayed: “%(subject)s”"),
        N_("Your message “%(subject)s” has not yet been delivered to the recipients below."),
    ),
    Action.RELAYED: (
        N_("Delivered: “%(subject)s”"),
        N_("Your message “%(subject)s” was handed on for delivery to the recipients below."),
    ),
    Action.DELIVERED: (
        N_("Delivered: “%(subject)s”"),
        N_("Your message “%(subject)s” was delivered to the recipients below."),
    ),
}
"""The subject and first sentence of a report, by the action it is about."""


def build_report(report: Report, *, reader: Reader = DEFAULT_READER) -> bytes:
    """The report as bytes, CRLF throughout, ready for the queue (DKIM comes later). Its
    subject and first part are written for ``reader`` (the sender); the
    ``message/delivery-status`` part and the returned original are the same whoever
    reads it."""
    _ = reader.catalog(DOMAIN).gettext
    now = report.now if report.now is not None else time.time()
    first = report.recipients[0].action
    for action in (Action.FAILED, Action.DELAYED):
        if any(r.action == action for r in report.recipients):
            first = action
            break
    title, opening = _TITLES[first]
    original = original_headers(report.original)
    subject = quoted_subject(original, reader, 150)
    to = one_line(report.to, 320)
    policy = email.policy.SMTP if to.isascii() else email.policy.SMTPUTF8
    msg = EmailMessage(policy=policy)
    msg["From"] = f"Mail Delivery System <MAILER-DAEMON@{report.domain}>"
    msg["To"] = to
    msg["Subject"] = one_line(_(title) % {"subject": subject}, 200)
    msg["Date"] = _date(now)
    msg["Message-ID"] = email.utils.make_msgid(domain=report.hostname)
    if original.message_id:
        msg["In-Reply-To"] = original.message_id
        msg["References"] = original.message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Certifica-Queue-Id"] = report.queue_id
    msg["MIME-Version"] = "1.0"
    boundary = f"=_certifica_report_{secrets.token_hex(12)}"
    msg["Content-Type"] = f'multipart/report; report-type=delivery-status; boundary="{boundary}"'

    lines = [
        _("This is the mail system at %(host)s.") % {"host": report.hostname},
        "",
        _(opening) % {"subject": subject},
    ]
    if report.reported_by:
        lines += [
            "",
            _(
                "This passes on a report from %(server)s, the recipient's side, which had "
                "accepted the message."
            )
            % {"server": _ascii_line(report.reported_by, 200)},
        ]
    elif report.reported_by is not None:  # a late report whose sender did not say who it is
        lines += [
            "",
            _("This passes on a report from the recipient's side, which had accepted the message."),
        ]
    for r in report.recipients:
        lines += ["", f"  {one_line(r.address, 320)}:", f"    {r.explain(reader)}"]
    if first == Action.DELAYED:
        lines += [
            "",
            _("You do not need to send it again. You will hear from us if it fails."),
        ]
    if report.full_refused is not None:
        lines += [
            "",
            _(
                "You asked for the whole message back (RET=FULL), but it has %(size)s bytes, "
                "more than this gateway returns: only its header fields are attached."
            )
            % {"size": reader.number(report.full_refused)},
        ]
    lines += ["", _("The technical details follow, for your mail administrator.")]
    human = EmailMessage(policy=policy)
    human.set_content("\r\n".join(lines) + "\r\n", charset="utf-8")
    del human["MIME-Version"]
    human["Content-Language"] = reader.language

    per_message = [("Reporting-MTA", f"dns; {report.hostname}")]
    if report.envid:
        per_message.append(("Original-Envelope-Id", report.envid))
    per_message += [
        ("X-Certifica-Queue-Id", report.queue_id),
        ("Arrival-Date", _date(report.arrival)),
    ]
    blocks = [_block(per_message)]
    for r in report.recipients:
        fields: list[tuple[str, str]] = []
        if r.original_recipient:
            kind, _, address = r.original_recipient.partition(";")
            fields.append(("Original-Recipient", f"{kind}; {address}"))
        fields += [
            ("Final-Recipient", _address_field(r.address)),
            ("Action", r.action.value),
            ("Status", r.status),
        ]
        if r.remote_mta:
            fields.append(("Remote-MTA", f"dns; {r.remote_mta}"))
        if r.diagnostic:
            fields.append(("Diagnostic-Code", r.diagnostic))
        if r.last_attempt:
            fields.append(("Last-Attempt-Date", _date(r.last_attempt)))
        if r.will_retry_until and r.action == Action.DELAYED:
            fields.append(("Will-Retry-Until", _date(r.will_retry_until)))
        blocks.append(_block(fields))
    status = Message(policy=email.policy.SMTP)
    status["Content-Type"] = "message/delivery-status"
    status.set_payload(blocks)  # type: ignore[arg-type]  # a list of blocks, as parsed

    returned = Message(policy=email.policy.SMTP)
    content = report.original if report.return_full else header_section(report.original)
    returned["Content-Type"] = "message/rfc822" if report.return_full else "text/rfc822-headers"
    if not content.isascii():
        returned["Content-Transfer-Encoding"] = "8bit"
    if not content.endswith(b"\n"):
        content += b"\r\n"
    # Kept byte for byte: the generator writes a surrogate-escaped payload back as it was.
    returned.set_payload(content.decode("ascii", "surrogateescape"))

    msg.set_payload([human, status, returned])  # type: ignore[arg-type]
    out = io.BytesIO()
    _Generator(out, policy=policy.clone(linesep="\r\n")).flatten(msg)
    return out.getvalue()


class _Generator(BytesGenerator):
    """The stdlib's writer, with a returned ``message/rfc822`` kept byte for byte: its
    surrogate-escaped 8-bit bytes are written back as they were (the stdlib's own
    ``_encode`` is strict ASCII there, and would refuse an 8BITMIME original)."""

    def _encode(self, s: str) -> bytes:  # type: ignore[override]
        return s.encode("ascii", "surrogateescape")
