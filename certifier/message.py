"""Summarise a raw e-mail message for its certificate, robustly and strictly.

What a certificate says about a message comes from here: the SHA-256 of the exact bytes
received, the header fields a person recognises, each attachment with the hash of its
decoded content, a plain-text rendering of the body, and a list of everything that could
not be read as the standards say (``defects``, in plain English).

The message is read with :mod:`certifier.mime` (RFC 5322, RFC 2045-2049, RFC 2047,
RFC 2231, RFC 6532: see there, with why not ``email.parser``); this module decides what
of it the certificate shows. Parts are numbered like IMAP body sections ("part 1.2",
RFC 3501 section 6.4.5); ``text/html`` is turned into text with :mod:`html.parser`.

Decisions worth knowing:

- ``message/rfc822`` and ``message/global`` parts are attachments: hashed as a whole and
  not opened, so the parts of a forwarded message are not listed one by one.
- A part is an attachment when its disposition is not ``inline`` (RFC 2183: unknown
  dispositions count as ``attachment``), when it has a file name, or when it is not
  ``text/plain`` or ``text/html`` (so ``text/calendar`` is one).
- Base64 that does not decode: the attachment's size and hash are those of the part
  body as sent, and a defect says so (:func:`certifier.mime.decode_transfer`): the
  certificate never vouches for a guessed decoding.
- Charsets and single-line strings: see :mod:`certifier.mime.text` (unknown charsets
  shown as UTF-8 or Windows-1252; subject, names and file names never hold a control
  character, a line break or a bidirectional override). Body text keeps its line
  breaks and tabs.
- Attachments that are invoices (Facturae, Factur-X/ZUGFeRD, UBL, FatturaPA) carry
  their essentials (:mod:`certifier.invoices`) when :func:`summarise` is given
  ``invoices`` settings; a malformed one is listed with its problem, never refused.
- Output is bounded: at most ``max_parts`` parts and ``max_depth`` levels are examined,
  long header strings are cut at 4096 characters, at most 1000 addresses per field and
  100 defects are listed; each cut is itself reported as a defect.

Errors: :func:`summarise` never raises on the content of ``raw``. Limits that make no
sense (negative ``max_text``, ``max_parts`` < 1, negative ``max_depth``) raise
``ValueError``; a ``raw`` that is not bytes-like raises ``TypeError``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from certifier.invoices import Invoice, InvoiceSettings, read_invoice
from certifier.mime import (
    MAX_ADDRESSES,
    PART_FIELDS,
    Defects,
    Mailbox,
    PartHeaders,
    body_text,
    cut,
    decode_charset,
    decode_transfer,
    decode_words,
    from_addresses,
    header_str,
    one_line,
    parse_address_list,
    part_headers,
    read_headers,
    split_multipart,
)

# parse_single_mailbox, header_addresses and header_from_addresses moved to
# certifier.mime; re-exported here while code importing them from here is merged
# (relay/cli.py imports parse_single_mailbox).
from certifier.mime import header_addresses as header_addresses
from certifier.mime import header_from_addresses as header_from_addresses
from certifier.mime import parse_single_mailbox as parse_single_mailbox

__all__ = [
    "Attachment",
    "MessageSummary",
    "header_addresses",
    "header_from_addresses",
    "parse_single_mailbox",
    "sha256_hex",
    "summarise",
]

UNNAMED = "(unnamed)"
MAX_FIELD_CHARS = 4096  # subject, date, message-id, from: longer is cut and reported
MAX_NAME_CHARS = 1024  # one address or one file name
MAX_BOUNDARY_CHARS = 200  # RFC 2046 says 70; some mailers exceed it a little
HTML_MAX_CHARS = 2_000_000  # HTML beyond this is not converted (text_truncated is set)
_HTML_CHUNK = 65536
_TOP_FIELDS = PART_FIELDS | {b"from", b"to", b"cc", b"subject", b"date", b"message-id"}
_NAME_SPECIALS = frozenset('()<>@,;:.\\"[]')


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Attachment:
    """One attachment: size and SHA-256 of its decoded content (see module docstring),
    and what it says when it is an invoice."""

    filename: str
    content_type: str
    size: int
    sha256: str
    invoice: Invoice | None = None

    def as_evidence(self) -> dict[str, Any]:
        """The attachment as ``evidence.json`` lists it (``invoice`` only for one)."""
        out: dict[str, Any] = {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.invoice is not None:
            out["invoice"] = self.invoice.as_evidence()
        return out


@dataclass(frozen=True)
class MessageSummary:
    """What a certificate states about one message."""

    sha256: str
    size: int
    subject: str
    date: str
    message_id: str
    from_: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    from_addresses: tuple[str, ...]
    attachments: tuple[Attachment, ...]
    text: str
    text_truncated: bool
    defects: tuple[str, ...]

    def as_evidence(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the summary, as recorded in the evidence."""
        return {
            "sha256": self.sha256,
            "size": self.size,
            "subject": self.subject,
            "date": self.date,
            "message_id": self.message_id,
            "from": self.from_,
            "to": list(self.to),
            "cc": list(self.cc),
            "attachments": [a.as_evidence() for a in self.attachments],
            "text": self.text,
            "text_truncated": self.text_truncated,
            "defects": list(self.defects),
        }


# -- HTML to text, html.parser based ----------------------------------------


_HTML_SPACE_CHARS = " \t\n\r\f"
_HTML_SPACE = re.compile("[ \t\n\r\f]+")


class _HTMLText(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "title", "template"})
    _BLOCK = frozenset(
        {
            "address", "article", "aside", "blockquote", "body", "br", "center", "dd",
            "div", "dl", "dt", "fieldset", "footer", "form", "h1", "h2", "h3", "h4", "h5",
            "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
            "table", "tbody", "tfoot", "thead", "tr", "ul",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.length = 0
        self._skip: dict[str, int] = {}
        self._pre = 0
        self._last = "\n"

    def _emit(self, text: str) -> None:
        if not text:
            return
        self.out.append(text)
        self.length += len(text)
        self._last = text[-1]

    def _newline(self) -> None:
        if self._last != "\n":
            self._emit("\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip[tag] = self._skip.get(tag, 0) + 1
        elif tag == "body":
            self._skip.pop("head", None)
        if tag == "pre":
            self._pre += 1
        if tag in self._BLOCK:
            self._newline()
        if tag == "li":
            self._emit("- ")
        elif tag in ("td", "th") and self._last not in " \n":
            self._emit(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skip.get(tag):
            self._skip[tag] -= 1
        if tag == "pre" and self._pre:
            self._pre -= 1
        if tag in self._BLOCK:
            self._newline()

    def handle_data(self, data: str) -> None:
        if any(self._skip.values()):
            return
        if not self._pre:
            # HTML collapses ASCII white space only: a no-break space stays.
            words = [w for w in _HTML_SPACE.split(data) if w]
            if not words:
                if self._last not in " \n":
                    self._emit(" ")
                return
            text = " ".join(words)
            if data[0] in _HTML_SPACE_CHARS and self._last not in " \n":
                text = " " + text
            if data[-1] in _HTML_SPACE_CHARS:
                text += " "
            data = text
        self._emit(data)


def _defuse_html(html: str) -> str:
    """Escape each "<" that cannot open a tag (no ">" before the next "<").

    html.parser rescans from such a "<" to the end of its input, which is quadratic on
    input like ``"<a" * n``. Sane markup is unchanged; stray "<" become text, as browsers
    would show them.
    """
    out: list[str] = []
    pos = 0
    gt = -1
    n = len(html)
    while True:
        lt = html.find("<", pos)
        if lt < 0:
            out.append(html[pos:])
            return "".join(out)
        if gt != n and gt <= lt:
            gt = html.find(">", lt + 1)
            if gt < 0:
                gt = n
        nxt = html.find("<", lt + 1, gt if gt < n else n)
        if gt == n or nxt >= 0:
            out.append(html[pos:lt])
            out.append("&lt;")
            pos = lt + 1
        else:
            out.append(html[pos : gt + 1])
            pos = gt + 1


def _html_to_text(html: str, max_text: int, defects: Defects) -> tuple[str, bool]:
    incomplete = False
    if len(html) > HTML_MAX_CHARS:
        html = html[:HTML_MAX_CHARS]
        incomplete = True
    html = _defuse_html(html)
    parser = _HTMLText()
    want = 2 * max_text + 1000
    pos = 0
    try:
        while pos < len(html):
            cut = min(pos + _HTML_CHUNK, len(html))
            if cut < len(html):
                gt = html.rfind(">", pos, cut)
                cut = gt + 1 if gt >= 0 else cut
            parser.feed(html[pos:cut])
            pos = cut
            if parser.length > want:
                incomplete = True
                break
        else:
            parser.close()
    except Exception:  # html.parser may assert on odd markup
        defects.add("the HTML body could not be fully converted to text")
        incomplete = True
    lines: list[str] = []
    for line in "".join(parser.out).split("\n"):
        line = line.strip(" ")
        if line or (lines and lines[-1]):
            lines.append(line)
    return "\n".join(lines).strip("\n"), incomplete


def _display(box: Mailbox, where: str, defects: Defects) -> str:
    name = one_line(decode_words(box.name, where, defects))
    addr = one_line(box.addr)
    if not name:
        return addr
    if any(c in _NAME_SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


# -- the summary ------------------------------------------------------------


@dataclass
class _Leaf:
    where: str
    content_type: str
    params: dict[str, str]
    data: bytes
    truncated_input: bool


def _where(section: str) -> str:
    return f"in part {section}" if section else "in the message"


def _address_field(name: str, values: list[bytes], defects: Defects) -> list[str]:
    """Display strings for an address field; raw text when it does not parse."""
    shown: list[str] = []
    total = 0
    where = f"in the {name} header"
    for raw_value in values:
        text = header_str(raw_value, name, defects)
        parsed = parse_address_list(text)
        if parsed is None:
            defects.add(f"{name} header could not be parsed strictly: shown as written")
            total += 1
            literal = one_line(decode_words(text, where, defects))
            if literal and len(shown) < MAX_ADDRESSES:
                shown.append(cut(literal, MAX_NAME_CHARS, f"{name} header", defects))
            continue
        total += len(parsed.mailboxes)
        for box in parsed.mailboxes[: MAX_ADDRESSES - len(shown)]:
            display = _display(box, where, defects)
            shown.append(cut(display, MAX_NAME_CHARS, f"{name} address", defects))
    if len(values) > 1:
        defects.add(f"{len(values)} {name} headers")
    if total > MAX_ADDRESSES:
        defects.add(f"{name} lists {total} addresses: only the first {MAX_ADDRESSES} shown")
    return shown


def _single_field(fields: dict[str, list[bytes]], name: str, label: str, defects: Defects) -> str:
    values = fields.get(name, [])
    if not values:
        return ""
    if len(values) > 1:
        defects.add(f"{len(values)} {label} headers: the first is shown")
    text = one_line(
        decode_words(header_str(values[0], label, defects), f"in the {label} header", defects)
    )
    return cut(text, MAX_FIELD_CHARS, label, defects)


def _filename(headers: PartHeaders, where: str, defects: Defects) -> str:
    name = headers.disposition_params.get("filename") or headers.params.get("name") or ""
    name = one_line(decode_words(name, where, defects))
    return cut(name, MAX_NAME_CHARS, f"file name {where}", defects) if name else ""


def _leaf_text(leaf: _Leaf, max_text: int, defects: Defects) -> tuple[str, bool]:
    text = decode_charset(leaf.data, leaf.params.get("charset"), leaf.where, defects)
    incomplete = leaf.truncated_input
    if leaf.content_type == "text/html":
        text, html_incomplete = _html_to_text(text, max_text, defects)
        incomplete = incomplete or html_incomplete
    text = body_text(text).strip("\n")
    if len(text) > max_text:
        return text[:max_text], True
    return text, incomplete


def summarise(
    raw: bytes,
    max_text: int = 20000,
    max_parts: int = 10000,
    max_depth: int = 100,
    invoices: InvoiceSettings | None = None,
) -> MessageSummary:
    """Summarise ``raw`` (a complete RFC 5322 message) for its certificate.

    Never raises on the content of ``raw``: what cannot be read is listed in ``defects``.
    At most ``max_parts`` MIME entities (containers included) and ``max_depth`` levels of
    multipart nesting are examined; ``text`` holds at most ``max_text`` characters.
    With ``invoices``, each attachment is also read as an invoice (``[invoices]``).
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    if max_text < 0 or max_parts < 1 or max_depth < 0:
        raise ValueError("max_text and max_depth must be >= 0, max_parts >= 1")
    raw = bytes(raw)
    defects = Defects()
    try:
        return _summarise(raw, max_text, max_parts, max_depth, defects, invoices)
    except Exception as exc:  # last resort; tests assert it never happens
        defects.add(f"internal error while examining the message ({type(exc).__name__})")
        return MessageSummary(
            sha256=sha256_hex(raw), size=len(raw), subject="", date="", message_id="",
            from_="", to=(), cc=(), from_addresses=(), attachments=(), text="",
            text_truncated=False, defects=defects.result(),
        )  # fmt: skip


def _summarise(
    raw: bytes,
    max_text: int,
    max_parts: int,
    max_depth: int,
    defects: Defects,
    invoices: InvoiceSettings | None = None,
) -> MessageSummary:
    top: dict[str, list[bytes]] = {}
    attachments: list[Attachment] = []
    plain: _Leaf | None = None
    html: _Leaf | None = None
    # Explicit stack of (start, end, section, depth, default type): no recursion.
    stack: list[tuple[int, int, str, int, str]] = [(0, len(raw), "", 0, "text/plain")]
    examined = 0
    while stack:
        if examined >= max_parts:
            defects.add(f"more than {max_parts} parts: the rest not examined")
            break
        start, end, section, depth, default_type = stack.pop()
        examined += 1
        where = _where(section)
        wanted = PART_FIELDS if section else _TOP_FIELDS
        fields, body_start = read_headers(raw, start, end, wanted, where, defects)
        if wanted is _TOP_FIELDS:
            top = fields
        headers = part_headers(fields, default_type, where, defects)
        ctype = headers.content_type
        if ctype.startswith("multipart/"):
            boundary = headers.params.get("boundary", "")
            if not boundary:
                defects.add(f"multipart without a boundary {where}: read as plain text")
                ctype = "text/plain"
            elif len(boundary) > MAX_BOUNDARY_CHARS:  # RFC 2046 allows 70
                defects.add(
                    f"MIME boundary longer than {MAX_BOUNDARY_CHARS} characters {where}: "
                    "read as plain text"
                )
                ctype = "text/plain"
            elif depth >= max_depth:
                defects.add(f"nesting deeper than {max_depth} levels not examined")
                continue
            else:
                if headers.transfer_encoding not in ("", "7bit", "8bit", "binary"):
                    defects.add(f"multipart with a transfer encoding {where}: ignored")
                limit = max_parts - examined - len(stack) + 1
                split = split_multipart(
                    raw, body_start, end, boundary.encode("utf-8", "surrogatepass"), max(limit, 1)
                )
                if not split.found_start:
                    defects.add(f"MIME boundary never found {where}: its parts not examined")
                elif not split.closed and not split.cut:
                    defects.add(
                        "missing final MIME boundary" + (f" in part {section}" if section else "")
                    )
                child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
                for number in range(len(split.children), 0, -1):
                    child_start, child_end = split.children[number - 1]
                    child = f"{section}.{number}" if section else str(number)
                    stack.append((child_start, child_end, child, depth + 1, child_type))
                continue
        leaf_where = _where(section or "1")
        data = decode_transfer(raw[body_start:end], headers.transfer_encoding, leaf_where, defects)
        filename = _filename(headers, leaf_where, defects)
        is_text_body = ctype in ("text/plain", "text/html")
        if headers.disposition not in ("", "inline") or filename or not is_text_body:
            invoice = None
            if invoices is not None and invoices.enabled:
                invoice = read_invoice(data, filename, ctype, invoices)
            attachments.append(
                Attachment(filename or UNNAMED, ctype, len(data), sha256_hex(data), invoice)
            )
        elif ctype == "text/plain" and plain is None:
            plain = _leaf_slice(leaf_where, ctype, headers.params, data, max_text)
        elif ctype == "text/html" and html is None:
            html = _leaf_slice(leaf_where, ctype, headers.params, data, 0)

    if not top.get("from"):
        defects.add("no From header")
    if not top.get("date"):
        defects.add("no Date header")
    to = _address_field("To", top.get("to", []), defects)
    cc = _address_field("Cc", top.get("cc", []), defects)
    from_shown = _address_field("From", top.get("from", []), defects)
    senders = from_addresses(top.get("from", []))
    if top.get("from") and not senders:
        defects.add("the From header does not name its sender unambiguously")
    elif len(senders) > 1:
        defects.add(f"From names {len(senders)} mailboxes")
    text, truncated = "", False
    body = plain or html
    if body is not None:
        text, truncated = _leaf_text(body, max_text, defects)
    return MessageSummary(
        sha256=sha256_hex(raw),
        size=len(raw),
        subject=_single_field(top, "subject", "Subject", defects),
        date=_single_field(top, "date", "Date", defects),
        message_id=_single_field(top, "message-id", "Message-ID", defects),
        from_=cut(", ".join(from_shown), MAX_FIELD_CHARS, "From", defects),
        to=tuple(to),
        cc=tuple(cc),
        from_addresses=tuple(senders),
        attachments=tuple(attachments),
        text=text,
        text_truncated=truncated,
        defects=defects.result(),
    )


def _leaf_slice(
    where: str, ctype: str, params: dict[str, str], data: bytes, max_text: int
) -> _Leaf:
    """Keep only as many bytes of a body as its conversion to text can use."""
    if ctype == "text/plain":
        keep = (max_text + 1) * 8 + 16  # 4 bytes a character, CR LF counted twice
    else:
        keep = HTML_MAX_CHARS * 4
    if len(data) > keep:
        return _Leaf(where, ctype, params, data[:keep], True)
    return _Leaf(where, ctype, params, data, False)
