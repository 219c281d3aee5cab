"""The mail the gateway writes itself: the "being processed" notice, the certificate mail,
for certified reception the owner's certificate mail and the sender's proof of receipt,
and the mail carrying a certificate made after the gateway lost its copy of the message.

Each is written for the person who reads it (README, "The mails you receive"): in their
language and time zone (:class:`certifier.i18n.Reader`, the gettext domain ``mail``),
saying first what happened in plain words (:mod:`certifier.outcome`) and how to verify
the certificate, with the technical detail (queue id, SHA-256, the servers' replies)
further down under its own heading. The language is stated in ``Content-Language``
(RFC 3282).

All are RFC 5322 messages whose header fields refuse every control character (CR and
LF above all) and encode non-ASCII per RFC 2047, with bodies from Jinja2 templates
with HTML autoescaping on, written base64. All carry ``Auto-Submitted: auto-generated``
(RFC 3834) and leave with the null reverse-path, so nothing ever answers them, and they
are never certified.
"""

from __future__ import annotations

import base64
import email.errors
import email.header
import email.policy
import email.utils
import re
import secrets
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from certifier.i18n import Reader, translations
from certifier.outcome import Outcome, recipients_outcome

DOMAIN = "mail"
"""The gettext domain of every text in these mails (:data:`certifier.i18n.DOMAINS`)."""
WIDTH = 76
"""Columns of the text/plain part's paragraphs (RFC 5322 §2.1.1 recommends 78)."""


DEFAULT_READER = Reader()
"""English, UTC: whom a mail is written for when the caller names no reader."""


def N_(message: str) -> str:
    """Mark ``message`` for the catalogs; it is translated where it is shown."""
    return message


def _paragraph(text: str) -> str:
    """A paragraph of the text part, wrapped at :data:`WIDTH` columns; never inside a
    word, so an address or URL stays whole."""
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


def _item(text: str) -> str:
    """An item of a list in the text part: "  - " and the text, wrapped under itself."""
    return textwrap.fill(
        text,
        WIDTH,
        initial_indent="  - ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


@lru_cache(maxsize=8)
def _environment(language: str) -> Environment:
    """The templates (``relay/templates/mail``) with the ``mail`` catalog of ``language``
    installed (Jinja's i18n extension, new-style: placeholders are named and escaped in
    HTML like any other value). Whitespace in ``{% trans %}`` blocks is trimmed, as
    ``python -m certifier.catalogs`` extracts them."""
    env = Environment(
        loader=PackageLoader("relay", "templates/mail"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(language, DOMAIN), newstyle=True)  # type: ignore[attr-defined]
    env.filters["paragraph"] = _paragraph
    env.filters["item"] = _item
    return env


UNSAFE_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
"""Characters untrusted text never brings into a header, a report or a log line, as the
body of a regular expression class: C0 and C1 controls, the line and paragraph
separators, and the bidirectional embeddings, overrides and isolates (Unicode UAX #9),
which would make a line read in another order than it is written (CVE-2021-42574)."""
_CONTROL = re.compile(f"[{UNSAFE_CHARACTERS}]+")
FAILED_STATES = ("failed", "bounced")
"""Recipient states (relay/queue/store.py) in which the message did not reach the recipient."""
_MSG_ID = re.compile(r"^<[\x21-\x3b\x3d\x3f-\x7e]{1,250}@[\x21-\x3b\x3d\x3f-\x7e]{1,250}>$")


def one_line(text: str, limit: int = 200) -> str:
    """Untrusted text made safe for one header or log line: no control characters and
    no bidirectional overrides (:data:`UNSAFE_CHARACTERS`), capped."""
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


NO_SUBJECT = N_("(no subject)")
"""What stands for the subject of a message that has none (translated where shown)."""


@dataclass(frozen=True)
class OriginalHeaders:
    subject: str
    message_id: str | None


def original_headers(raw: bytes) -> OriginalHeaders:
    """Subject and Message-ID of a message, decoded and made single-line; never raises."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[: end + 2]
    try:
        msg = BytesHeaderParser(policy=email.policy.default).parsebytes(head)
        subject = one_line(str(msg.get("subject", "") or ""))
        mid = str(msg.get("message-id", "") or "").strip()
    except Exception:  # a header the stdlib cannot even decode: show nothing rather than fail
        subject, mid = "", ""
    return OriginalHeaders(subject or NO_SUBJECT, mid if _MSG_ID.match(mid) else None)


def header_fields(
    gateway_name: str,
    from_address: str,
    to: str,
    subject: str,
    hostname: str,
    original_id: str | None,
    qid: str,
    language: str = "en",
) -> list[tuple[str, str]]:
    """The header fields of a mail the gateway writes, in order (not yet encoded);
    ``language`` is the one its text is written in (``Content-Language``, RFC 3282)."""
    fields = [
        ("From", email.utils.formataddr((gateway_name, from_address), charset="utf-8")),
        ("To", to),
        ("Subject", subject),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Message-ID", email.utils.make_msgid(domain=hostname)),
        ("Content-Language", language),
        ("Auto-Submitted", "auto-generated"),
        ("X-Certifica-Queue-Id", qid),
    ]
    if original_id:
        fields += [("In-Reply-To", original_id), ("References", original_id)]
    return fields


_ADDRESS_FIELDS = frozenset({"From", "To"})


def _header_section(fields: list[tuple[str, str]]) -> bytes:
    """The fields encoded as RFC 5322 header lines (CRLF each).

    No value may hold a control character, CR or LF above all (``ValueError``, as the
    stdlib raises): a field can never start another. Text outside ASCII, or looking like
    an encoded word, becomes RFC 2047 encoded words (``email.header.Header``) from the
    first word that needs it: the words before it stay as they are ("Certificate of
    delivery: =?utf-8?q?=E2=80=9CContract...?="), readable to any tool that does not
    decode RFC 2047 (RFC 2047 §5 (1): encoded words are separated from text by white
    space, which a reader keeps). An
    address outside ASCII must not be encoded that way (RFC 6532: it travels as UTF-8,
    with SMTPUTF8): then the stdlib's EmailMessage writes the whole header with its
    SMTPUTF8 policy (0.8 ms; the path above takes 0.06).
    """
    for name, value in fields:
        if _CONTROL.search(value):
            raise ValueError(f"{name}: header values may not contain control characters")
    if not all(v.isascii() for n, v in fields if n in _ADDRESS_FIELDS):
        msg = EmailMessage(policy=email.policy.SMTPUTF8)
        try:
            for name, value in fields:
                msg[name] = value
            return b"".join(msg.policy.fold_binary(n, v) for n, v in msg.items())
        except (email.errors.HeaderParseError, IndexError) as err:  # not an address at all
            raise ValueError(
                f"a header field cannot be written ({err.__class__.__name__})"
            ) from None
    lines = []
    for name, value in fields:
        if value.isascii() and "=?" not in value and len(name) + len(value) < 900:
            lines.append(f"{name}: {value}\r\n")
            continue
        plain, rest = _plain_words(value)
        lead = f"{name}: {plain} " if plain else f"{name}: "
        encoded = email.header.Header(rest, "utf-8", header_name=lead[:-2]).encode(linesep="\r\n")
        lines.append(f"{lead}{encoded}\r\n")
    return "".join(lines).encode("ascii")


def _plain_words(value: str) -> tuple[str, str]:
    """``value`` split before its first word that is not plain ASCII (or looks like an
    encoded word), at single spaces: the plain words, at most 60 characters, and the rest.
    ("", value) when the first word already needs encoding."""
    words = value.split(" ")
    plain: list[str] = []
    for word in words[:-1]:
        if not word or not word.isascii() or "=?" in word or len(" ".join([*plain, word])) > 60:
            break
        plain.append(word)
    return " ".join(plain), " ".join(words[len(plain) :])


Recipients = Sequence[Mapping[str, Any]]
"""Each recipient as the sender's mail lists it: ``address``, ``status`` (a recipient
state of :mod:`relay.queue.states`), ``reply`` (the last reply, for the technical
details), when known ``at`` (the time of that reply: ISO 8601 or POSIX), and for a
phone ``sms``: what became of its SMS in one word (the evidence's
``recipients[].sms.outcome``, docs/sms.md)."""

_SUBJECTS: dict[str, str] = {
    Outcome.DELIVERY: N_("Certificate of delivery: “%(subject)s” (%(id)s)"),
    Outcome.NON_DELIVERY: N_("Certificate of non-delivery: “%(subject)s” (%(id)s)"),
    Outcome.PARTIAL: N_("Certificate of partial delivery: “%(subject)s” (%(id)s)"),
    Outcome.WITHDRAWAL: N_("Certificate of withdrawal: “%(subject)s” (%(id)s)"),
    Outcome.PENDING: N_("Certificate: “%(subject)s” (%(id)s)"),
    Outcome.ADDENDUM: N_("Addendum to the certificate: “%(subject)s” (%(id)s)"),
    Outcome.ACCEPTANCE: N_("Certificate of acceptance: “%(subject)s” (%(id)s)"),
    Outcome.REJECTION: N_("Certificate of rejection: “%(subject)s” (%(id)s)"),
}
"""The certificate mail's subject: what happened, the original's subject, the reference."""

_HEADLINES: dict[str, str] = {
    Outcome.DELIVERY: N_(
        "Your message “%(subject)s” was delivered: the mail server of every recipient accepted it."
    ),
    Outcome.NON_DELIVERY: N_("Your message “%(subject)s” was not delivered to %(failed)s."),
    Outcome.PARTIAL: N_(
        "Your message “%(subject)s” was delivered to some of its recipients, but not to %(failed)s."
    ),
    Outcome.WITHDRAWAL: N_(
        "Your message “%(subject)s” was withdrawn before delivery: no recipient received "
        "it from this gateway."
    ),
    Outcome.PENDING: N_("The certificate of your message “%(subject)s” is attached."),
    Outcome.ADDENDUM: N_(
        "Something happened after the certificate of your message “%(subject)s” was "
        "issued: the attached addendum records it."
    ),
    Outcome.ACCEPTANCE: N_(
        "A recipient accepted your message “%(subject)s”: the attached certificate records "
        "the decision."
    ),
    Outcome.REJECTION: N_(
        "A recipient rejected your message “%(subject)s”: the attached certificate records "
        "the decision."
    ),
}
"""The certificate mail's first sentence, by outcome."""

_STATUS_WORDS: dict[str, str] = {
    "delivered": N_("accepted by the recipient's mail server"),
    "failed": N_("not delivered: the recipient's mail server refused it, or could not be reached"),
    "bounced": N_(
        "accepted by the recipient's mail server, which reported later that it could not deliver it"
    ),
    "withdrawn": N_("withdrawn by the operator before delivery"),
    "queued": N_("not delivered yet"),
    "deferred": N_("not delivered yet"),
}
_STATUS_WORDS_AT: dict[str, str] = {
    "delivered": N_("accepted by the recipient's mail server on %(when)s"),
    # A decision on hosted content (docs/hosted.md): made on the gateway's page, not by
    # a mail server; "delivered" would contradict a rejection.
    "accepted": N_(
        "accepted on the gateway's page, through the link sent to this address, on %(when)s"
    ),
    "rejected": N_(
        "rejected on the gateway's page, through the link sent to this address, on %(when)s"
    ),
    "bounced": N_(
        "accepted by the recipient's mail server on %(when)s, which reported later that it "
        "could not deliver it"
    ),
}
_REFUSED = N_("not delivered: the recipient's mail server refused it")
_SMS_WORDS: dict[str, str] = {
    "delivered": N_("SMS delivered to the phone, as the operator's receipt confirms"),
    "no_receipt": N_("SMS sent; the operator sent no delivery receipt"),
    "undelivered": N_("SMS not delivered: the operator's receipt says so"),
    "refused": N_("SMS not sent: the operator's SMS centre refused it"),
    "not_sent": N_(
        "SMS not sent: the operator's SMS centre could not be reached or did not take it "
        "before the message's time in the queue ran out"
    ),
}
"""A phone's outcome in words (docs/sms.md): no mail server is involved."""
_SMS_DELIVERED = N_(
    "Your message “%(subject)s” was delivered as an SMS: the operator's receipts confirm "
    "delivery to every phone."
)
"""What happened to one recipient, in words (and, when known, when); a failed one whose
last reply was a 5xx was refused, else it may also never have been reached."""

_STATUS_NAMES: dict[str, str] = {
    "delivered": N_("delivered"),
    "failed": N_("failed"),
    "bounced": N_("bounced"),
    "withdrawn": N_("withdrawn"),
    "accepted": N_("accepted on the gateway's page"),
    "rejected": N_("rejected on the gateway's page"),
    "queued": N_("queued"),
    "deferred": N_("deferred"),
}
"""A recipient state (:mod:`relay.queue.states`) named in the technical details."""


def quoted_subject(original: OriginalHeaders, reader: Reader, limit: int = 120) -> str:
    """The original's subject as ``reader`` reads it, short enough that the rest of a
    header still fits."""
    if original.subject == NO_SUBJECT:
        return reader.gettext(DOMAIN, NO_SUBJECT)
    return one_line(original.subject, limit)


def _in_words(r: Mapping[str, Any], reader: Reader) -> str:
    """One recipient's outcome as the reader reads it."""
    _ = reader.catalog(DOMAIN).gettext
    status = str(r.get("status") or "")
    sms = _SMS_WORDS.get(str(r.get("sms") or ""))
    if sms and status != "withdrawn":
        return _(sms)
    when = reader.moment(r.get("at"))
    if when and status in _STATUS_WORDS_AT:
        return _(_STATUS_WORDS_AT[status]) % {"when": when}
    if status == "failed" and re.match(r"5\d\d\b", str(r.get("reply") or "")):
        return _(_REFUSED)
    return _(_STATUS_WORDS.get(status, N_("not delivered yet")))


def _status_name(status: str, reader: Reader) -> str:
    name = _STATUS_NAMES.get(status)
    return reader.gettext(DOMAIN, name) if name else status


def _listed(reader: Reader, recipients: Recipients) -> list[dict[str, str]]:
    return [
        {
            "address": one_line(str(r["address"]), 320),
            "words": _in_words(r, reader),
            "status": _status_name(str(r.get("status") or ""), reader),
            "reply": str(r.get("reply") or ""),
        }
        for r in recipients
    ]


def _verification(cert_id: str, verify_url: str | None, publicly_trusted: bool) -> dict[str, Any]:
    """What the mail says about checking the certificate (``verify.txt``/``verify.html``):
    the verification page when there is one; the claim that any PDF reader validates the
    signature only when the signer chains to a root readers trust (``[signing]
    publicly_trusted``), else what a PDF reader shows; ``certifica verify`` always."""
    return {
        "verify_url": verify_url,
        "publicly_trusted": publicly_trusted,
        "pdf_name": _pdf_name(cert_id),
    }


def _pdf_name(cert_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", cert_id) + ".pdf"


def build_notice(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    accepted_at: str,
    sha256: str,
    recipients: list[str],
    original: OriginalHeaders,
    reader: Reader = DEFAULT_READER,
    hosted: bool = False,
) -> bytes:
    """The "your certified message is being processed" notice, in ``reader``'s words;
    ``hosted``: the recipients get a link to the content (docs/hosted.md)."""
    _ = reader.catalog(DOMAIN).gettext
    subject = quoted_subject(original, reader)
    context: dict[str, Any] = {
        "subject": subject,
        "qid": qid,
        "accepted_at": reader.moment(accepted_at),
        "sha256": sha256,
        "recipients": [one_line(r, 320) for r in recipients],
        "gateway": gateway_name,
        "hosted": hosted,
    }
    msg = header_fields(
        gateway_name,
        from_address,
        to,
        one_line(_("Being certified: “%(subject)s”") % {"subject": subject}),
        hostname,
        original.message_id,
        qid,
        reader.language,
    )
    return assemble(msg, "notice", context, reader)


def build_certificate_mail(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    cert_id: str,
    sha256: str,
    recipients: Recipients,
    original: OriginalHeaders,
    pdf: bytes,
    label: str = "Certificate",
    reader: Reader = DEFAULT_READER,
    verify_url: str | None = None,
    publicly_trusted: bool = False,
    outcome: str | None = None,
) -> bytes:
    """The mail that carries the signed certificate (or, ``label="Addendum"``, an
    addendum) back to the sender.

    Its subject and first sentence say what happened (``outcome``, by default
    :func:`certifier.outcome.recipients_outcome` of the recipients' statuses): a sender
    whose message was not delivered to someone reads that, with the addresses, before
    any PDF. Then each recipient's outcome in words, how to verify the certificate
    (``verify_url``; ``publicly_trusted``: whether any PDF reader trusts its signer),
    and only then the technical details."""
    _ = reader.catalog(DOMAIN).gettext
    if label == "Addendum":
        what = Outcome.ADDENDUM.value
    else:
        what = outcome or recipients_outcome(r.get("status") for r in recipients).value
    if what not in _SUBJECTS:
        what = Outcome.PENDING.value
    subject = quoted_subject(original, reader)
    failed = [
        one_line(str(r["address"]), 320) for r in recipients if r.get("status") != "delivered"
    ]
    bounced = [
        one_line(str(r["address"]), 320) for r in recipients if r.get("status") in FAILED_STATES
    ]
    if not failed and what in (Outcome.NON_DELIVERY, Outcome.PARTIAL):
        what = Outcome.PENDING.value  # no recipient listed: nobody to name
    values = {"subject": subject, "failed": ", ".join(failed), "id": cert_id}
    context: dict[str, Any] = {
        "headline": _(
            _SMS_DELIVERED
            if what == Outcome.DELIVERY and recipients and all(r.get("sms") for r in recipients)
            else _HEADLINES[what]
        )
        % values,
        "addendum": what == Outcome.ADDENDUM,
        "not_delivered": ", ".join(bounced) if what == Outcome.ADDENDUM else "",
        "subject": subject,
        "qid": qid,
        "cert_id": cert_id,
        "sha256": sha256,
        "recipients": _listed(reader, recipients),
        "gateway": gateway_name,
        **_verification(cert_id, verify_url, publicly_trusted),
    }
    msg = header_fields(
        gateway_name,
        from_address,
        to,
        one_line(_(_SUBJECTS[what]) % values),
        hostname,
        original.message_id,
        qid,
        reader.language,
    )
    return assemble(msg, "certificate", context, reader, (pdf, cert_id))


def build_content_lost(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    cert_id: str,
    received_at: str,
    sha256: str,
    size: int,
    recipients: Recipients,
    pdf: bytes,
    addendum_of: str | None = None,
    reader: Reader = DEFAULT_READER,
    verify_url: str | None = None,
    publicly_trusted: bool = False,
    outcome: str | None = None,
) -> bytes:
    """The mail carrying a certificate (or, ``addendum_of``, an addendum) made after the
    gateway lost its copy of the message (spool file missing): it says so in plain
    words, with what the database still knows. (``outcome`` is accepted for the
    builders' common form; the subject says that the content was lost, whatever
    happened to the recipients, which the mail lists.)"""
    _ = reader.catalog(DOMAIN).gettext
    context: dict[str, Any] = {
        "addendum_of": addendum_of,
        "qid": qid,
        "cert_id": cert_id,
        "received_at": reader.moment(received_at),
        "sha256": sha256,
        "size": reader.size(size),
        "recipients": _listed(reader, recipients),
        "gateway": gateway_name,
        **_verification(cert_id, verify_url, publicly_trusted),
    }
    subject = (
        _("Addendum without the message: the gateway lost its copy (%(id)s)")
        if addendum_of
        else _("Certificate without the message: the gateway lost its copy (%(id)s)")
    )
    msg = header_fields(
        gateway_name,
        from_address,
        to,
        one_line(subject % {"id": cert_id}),
        hostname,
        None,
        qid,
        reader.language,
    )
    return assemble(msg, "content_lost", context, reader, (pdf, cert_id))


def build_reception_mail(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    cert_id: str,
    sha256: str,
    owner: str,
    original_from: str,
    original: OriginalHeaders,
    pdf: bytes,
    receipt: bool,
    reader: Reader = DEFAULT_READER,
    verify_url: str | None = None,
    publicly_trusted: bool = False,
    received_at: datetime | float | str | None = None,
) -> bytes:
    """The reception certificate mailed to the mailbox owner, or (``receipt``) the proof
    of receipt mailed to the original sender; both carry the same signed PDF.
    ``received_at``: when the message arrived, said in the first sentence when given."""
    _ = reader.catalog(DOMAIN).gettext
    subject = quoted_subject(original, reader)
    sender = one_line(original_from) or _("an unidentified sender")
    values = {
        "subject": subject,
        "owner": one_line(owner, 320),
        "sender": sender,
        "when": reader.moment(received_at),
    }
    if receipt:
        headline = (
            _(
                "%(owner)s received your message “%(subject)s” on %(when)s, and its arrival "
                "was certified. The signed proof of receipt is attached."
            )
            if values["when"]
            else _(
                "%(owner)s received your message “%(subject)s”, and its arrival was "
                "certified. The signed proof of receipt is attached."
            )
        )
    else:
        headline = (
            _(
                "A message from %(sender)s, “%(subject)s”, reached your mailbox %(owner)s "
                "on %(when)s and was certified on arrival. The signed reception certificate "
                "is attached."
            )
            if values["when"]
            else _(
                "A message from %(sender)s, “%(subject)s”, reached your mailbox %(owner)s "
                "and was certified on arrival. The signed reception certificate is attached."
            )
        )
    context: dict[str, Any] = {
        "headline": headline % values,
        "qid": qid,
        "cert_id": cert_id,
        "sha256": sha256,
        "original_from": sender,
        "gateway": gateway_name,
        "receipt": receipt,
        **_verification(cert_id, verify_url, publicly_trusted),
    }
    title = (
        _("Proof of receipt: “%(subject)s” (%(id)s)")
        if receipt
        else _("Reception certificate: “%(subject)s” (%(id)s)")
    )
    msg = header_fields(
        gateway_name,
        from_address,
        to,
        one_line(title % {"subject": subject, "id": cert_id}),
        hostname,
        original.message_id,
        qid,
        reader.language,
    )
    return assemble(msg, "reception", context, reader, (pdf, cert_id))


def assemble(
    msg: list[tuple[str, str]],
    template: str,
    context: dict[str, Any],
    reader: Reader,
    pdf: tuple[bytes, str] | None = None,
) -> bytes:
    """The header fields ``msg`` with the text and HTML of ``template`` in ``reader``'s
    language (multipart/alternative) and, given ``(pdf, certificate id)``, the signed
    PDF attached (all in multipart/mixed).

    The header fields go through :func:`_header_section` (no control characters, RFC
    2047 for the rest). The body, every byte of it base64 of ours, is written here: the
    stdlib's MIME writer spends ~7 ms on a 60 KB PDF, one line at a time, on the event
    loop.
    """
    env = _environment(reader.language)
    outer, inner = (f"=_certifica_{secrets.token_hex(12)}" for _ in range(2))
    text = env.get_template(f"{template}.txt").render(context).encode("utf-8")
    html = env.get_template(f"{template}.html").render(context).encode("utf-8")
    alternative = b"".join(
        [
            _part(inner, 'text/plain; charset="utf-8"', text),
            _part(inner, 'text/html; charset="utf-8"', html),
            f"--{inner}--\r\n".encode(),
        ]
    )
    header = _header_section(msg) + b"MIME-Version: 1.0\r\n"
    if pdf is None:
        kind = f'multipart/alternative; boundary="{inner}"'
        return header + f"Content-Type: {kind}\r\n\r\n".encode() + alternative
    data, cert_id = pdf
    return b"".join(
        [
            header,
            f'Content-Type: multipart/mixed; boundary="{outer}"\r\n\r\n'.encode(),
            f'--{outer}\r\nContent-Type: multipart/alternative; boundary="{inner}"\r\n\r\n'.encode(),
            alternative,
            _part(
                outer,
                f'application/pdf\r\nContent-Disposition: attachment; filename="{_pdf_name(cert_id)}"',
                data,
            ),
            f"--{outer}--\r\n".encode(),
        ]
    )


def _part(boundary: str, content_type: str, data: bytes) -> bytes:
    """One body part, base64 (RFC 2045 §6.8: 76-character lines, CRLF)."""
    body = base64.encodebytes(data).replace(b"\n", b"\r\n")
    head = (
        f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode("ascii") + body
