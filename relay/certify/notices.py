"""The mail the gateway writes itself: the "being processed" notice, the certificate mail,
for certified reception the owner's certificate mail and the sender's proof of receipt,
and the mail carrying a certificate made after the gateway lost its copy of the message.

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
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

_env = Environment(
    loader=PackageLoader("relay", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
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
    return OriginalHeaders(subject or "(no subject)", mid if _MSG_ID.match(mid) else None)


def _base(
    gateway_name: str,
    from_address: str,
    to: str,
    subject: str,
    hostname: str,
    original_id: str | None,
    qid: str,
) -> list[tuple[str, str]]:
    """The header fields of a mail the gateway writes, in order (not yet encoded)."""
    fields = [
        ("From", email.utils.formataddr((gateway_name, from_address), charset="utf-8")),
        ("To", to),
        ("Subject", subject),
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Message-ID", email.utils.make_msgid(domain=hostname)),
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
    an encoded word, becomes RFC 2047 encoded words (``email.header.Header``). An
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
        else:
            encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
            lines.append(f"{name}: {encoded}\r\n")
    return "".join(lines).encode("ascii")


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
) -> bytes:
    """The "your certified message is being processed" notice."""
    context: dict[str, Any] = {
        "subject": original.subject,
        "qid": qid,
        "accepted_at": accepted_at,
        "sha256": sha256,
        "recipients": recipients,
        "gateway": gateway_name,
    }
    msg = _base(
        gateway_name,
        from_address,
        to,
        one_line(f"Being certified: {original.subject}"),
        hostname,
        original.message_id,
        qid,
    )
    return _assemble(msg, "notice", context)


def build_certificate_mail(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    qid: str,
    cert_id: str,
    sha256: str,
    recipients: list[dict[str, str]],
    original: OriginalHeaders,
    pdf: bytes,
    label: str = "Certificate",
) -> bytes:
    """The mail that carries the signed certificate (or an addendum) back to the sender.

    When a recipient was not delivered to (``failed``, ``bounced``), its subject and
    first sentence say so in plain words: the sender reads that before any PDF."""
    failed = [r["address"] for r in recipients if r.get("status") in FAILED_STATES]
    not_delivered = f"not delivered to {', '.join(failed)}" if failed else ""
    context: dict[str, Any] = {
        "subject": original.subject,
        "qid": qid,
        "cert_id": cert_id,
        "sha256": sha256,
        "recipients": recipients,
        "gateway": gateway_name,
        "addendum": label == "Addendum",
        "failed": failed,
    }
    msg = _base(
        gateway_name,
        from_address,
        to,
        one_line(
            f"{label} {cert_id}: "
            + (f"{not_delivered[0].upper()}{not_delivered[1:]}: " if failed else "")
            + original.subject
        ),
        hostname,
        original.message_id,
        qid,
    )
    return _assemble(msg, "certificate", context, (pdf, cert_id))


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
    recipients: list[dict[str, str]],
    pdf: bytes,
    addendum_of: str | None = None,
) -> bytes:
    """The mail carrying a certificate (or, ``addendum_of``, an addendum) made after the
    gateway lost its copy of the message (spool file missing): it says so in plain
    words, with what the database still knows."""
    context: dict[str, Any] = {
        "addendum_of": addendum_of,
        "qid": qid,
        "cert_id": cert_id,
        "received_at": received_at,
        "sha256": sha256,
        "size": size,
        "recipients": recipients,
        "gateway": gateway_name,
    }
    label = "Addendum" if addendum_of else "Certificate"
    msg = _base(
        gateway_name,
        from_address,
        to,
        one_line(
            f"{label} {cert_id}: message {qid} could not be read by the gateway "
            "(spool file missing)"
        ),
        hostname,
        None,
        qid,
    )
    return _assemble(msg, "content_lost", context, (pdf, cert_id))


def _assemble(
    msg: list[tuple[str, str]],
    template: str,
    context: dict[str, Any],
    pdf: tuple[bytes, str] | None = None,
) -> bytes:
    """The header fields ``msg`` with the text and HTML of ``template``
    (multipart/alternative) and, given ``(pdf, certificate id)``, the signed PDF
    attached (all in multipart/mixed).

    The header fields go through :func:`_header_section` (no control characters, RFC
    2047 for the rest). The body, every byte of it base64 of ours, is written here: the
    stdlib's MIME writer spends ~7 ms on a 60 KB PDF, one line at a time, on the event
    loop.
    """
    outer, inner = (f"=_certifica_{secrets.token_hex(12)}" for _ in range(2))
    text = _env.get_template(f"{template}.txt").render(context).encode("utf-8")
    html = _env.get_template(f"{template}.html").render(context).encode("utf-8")
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
    name = re.sub(r"[^A-Za-z0-9.-]", "_", cert_id) + ".pdf"
    return b"".join(
        [
            header,
            f'Content-Type: multipart/mixed; boundary="{outer}"\r\n\r\n'.encode(),
            f'--{outer}\r\nContent-Type: multipart/alternative; boundary="{inner}"\r\n\r\n'.encode(),
            alternative,
            _part(
                outer,
                f'application/pdf\r\nContent-Disposition: attachment; filename="{name}"',
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
) -> bytes:
    """The reception certificate mailed to the mailbox owner, or (``receipt``) the proof
    of receipt mailed to the original sender; both carry the same signed PDF."""
    context: dict[str, Any] = {
        "subject": original.subject,
        "qid": qid,
        "cert_id": cert_id,
        "sha256": sha256,
        "owner": owner,
        "original_from": one_line(original_from or "(no single sender named)"),
        "gateway": gateway_name,
        "receipt": receipt,
    }
    label = "Proof of receipt" if receipt else "Reception certificate"
    msg = _base(
        gateway_name,
        from_address,
        to,
        one_line(f"{label} {cert_id}: {original.subject}"),
        hostname,
        original.message_id,
        qid,
    )
    return _assemble(msg, "reception", context, (pdf, cert_id))
