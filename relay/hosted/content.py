"""The hosted message as its page shows it: the header fields a person recognises, the
text, the HTML body (shown sandboxed) and the attachments with their SHA-256.

Read with the standard library's parser (``email.policy.default``): the page shows the
message, it does not certify how it was built; the certificate's own reading is
:mod:`certifier.message`. Never raises on the content: a message it cannot read is
shown as its text, with no attachment.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
from dataclasses import dataclass

from relay.certify.notices import one_line

MAX_ATTACHMENTS = 200
HTML_LIMIT = 2_000_000  # characters of HTML shown; a larger body is shown as text only


@dataclass(frozen=True)
class Attachment:
    number: int  # 1-based, in the message's order: the download's address
    name: str
    content_type: str
    size: int
    sha256: str
    data: bytes


@dataclass(frozen=True)
class Content:
    from_: str
    to: str
    cc: str
    subject: str
    date: str
    text: str
    html: str | None
    attachments: tuple[Attachment, ...]


def read_content(raw: bytes) -> Content:
    """The parts of ``raw`` the page shows."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        if not isinstance(msg, email.message.EmailMessage):  # policy.default makes one
            raise TypeError("not an EmailMessage")
        return _read(msg)
    except Exception:  # a message the parser cannot read: its bytes as text
        return Content("", "", "", "", "", raw.decode("utf-8", "replace"), None, ())


def _field(msg: email.message.EmailMessage, name: str) -> str:
    try:
        return one_line(str(msg.get(name, "") or ""), 2000)
    except Exception:
        return ""


def _text_of(part: email.message.Message | None) -> str:
    if part is None:
        return ""
    try:
        return str(part.get_content())  # type: ignore[attr-defined]
    except Exception:
        payload = part.get_payload(decode=True)
        return payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""


def _read(msg: email.message.EmailMessage) -> Content:
    plain = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    html = _text_of(html_part) if html_part is not None else None
    text = _text_of(plain) if plain is not None else ""
    if html is not None and len(html) > HTML_LIMIT:
        html = None
    attachments = []
    for number, part in enumerate(msg.iter_attachments(), start=1):
        if number > MAX_ATTACHMENTS:
            break
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            data = part.as_bytes()
        attachments.append(
            Attachment(
                number,
                one_line(part.get_filename() or "", 255) or f"attachment-{number}",
                part.get_content_type(),
                len(data),
                hashlib.sha256(data).hexdigest(),
                data,
            )
        )
    return Content(
        _field(msg, "From"),
        _field(msg, "To"),
        _field(msg, "Cc"),
        _field(msg, "Subject"),
        _field(msg, "Date"),
        text,
        html,
        tuple(attachments),
    )
