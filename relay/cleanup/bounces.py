"""Late bounces: the VERP return path, and reading delivery status notifications.

When the gateway relays a message its envelope sender is a VERP address of its own
(``bounces+<qid>.<tag>@<domain>``), so a DSN that arrives after the remote said 250
comes back to the gateway's MX and names the message it is about. The tag is a MAC of
the queue id: nobody can forge a bounce for a message they have not seen.

Standards and shapes read by :func:`parse_dsn`:

- RFC 3464 / RFC 6522: ``multipart/report; report-type=delivery-status`` with a
  ``message/delivery-status`` part (RFC 6533 ``message/global-delivery-status`` too):
  Postfix, Exim 4.9x, Sendmail, Office 365 / Exchange, Gmail, Yahoo... send these.
- RFC 3463 enhanced status codes, RFC 5321 reply codes in the human text.
- The common non-standard shapes, read from the human-readable text: qmail ("Hi. This
  is the qmail-send program"), older Exim ("This message was created automatically by
  mail delivery software"), Exchange 2003-2010 text NDRs ("Delivery has failed to these
  recipients or groups", "Your message did not reach some or all of the intended
  recipients"), legacy Gmail ("Delivery to the following recipient failed
  permanently"), and Postfix's own bounce text ("This is the mail system at host")
  when a relay stripped the machine-readable part.
- RFC 3834 and the de-facto headers for :func:`is_auto_reply`.

Why not flufl.bounce: its scanners return only addresses (no action, status or
diagnostic, which the evidence needs) and it parses with ``email.parser``, which on
Python 3.11 raises ``RecursionError`` on deeply nested multiparts (see
``certifier/mime``). This module reads the MIME structure with linear, iterative
code over the bytes, like ``certifier/mime`` does, with caps on parts, depth and
the bytes examined.

Errors: :func:`parse_dsn` and :func:`is_auto_reply` never raise on the content of
``raw``; what cannot be read is not reported (an unreadable DSN gives ``[]``).
:func:`make_return_path` raises ``ValueError`` for a queue id that cannot be written in
an address or a key shorter than 16 bytes (a configuration error); so does
:func:`parse_return_path` for such a key.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import hashlib
import hmac
import html
import quopri
import re
import unicodedata
from dataclasses import dataclass

__all__ = [
    "ACTIONS",
    "BounceReport",
    "is_auto_reply",
    "make_return_path",
    "parse_dsn",
    "parse_return_path",
    "returned_headers",
]

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")  # RFC 3464 2.3.3

MIN_KEY_BYTES = 16
TAG_CHARS = 10  # 50 bits of HMAC: guessing one takes ~10^15 tries against a listener
MAX_PARTS = 100  # MIME entities examined; a DSN has 3 to 6
MAX_DEPTH = 8  # multipart nesting followed; DSNs nest 3 deep at most
MAX_REPORTS = 500  # recipients reported from one DSN
MAX_HEADER_BYTES = 256 * 1024
MAX_PART_BYTES = 1024 * 1024  # of a delivery-status or text part, before decoding
MAX_TEXT_CHARS = 64 * 1024  # of human-readable text scanned for the non-standard shapes
MAX_DIAGNOSTIC = 500
MAX_FIELD_CHARS = 998  # per header field value kept (RFC 5322 line limit)
MAX_ADDRESS_CHARS = 320

_QID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_VERP_TAG = re.compile(rf"[a-z2-7]{{{TAG_CHARS}}}")


# -- the VERP return path ---------------------------------------------------------------
def _tag(qid: str, key: bytes) -> str:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the VERP key must be at least {MIN_KEY_BYTES} bytes")
    # Upper-cased: some MTAs lower-case the whole address they bounce to, and a
    # lower-cased return path must still verify. Queue ids differ by more than case.
    mac = hmac.new(key, qid.upper().encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(mac).decode("ascii")[:TAG_CHARS].lower()


def make_return_path(qid: str, domain: str, key: bytes, prefix: str = "bounces") -> str:
    """The envelope sender for relaying message ``qid``: ``prefix+qid.tag@domain``."""
    if not _QID.fullmatch(qid):
        raise ValueError(f"queue id {qid!r} cannot be written in a return path")
    return f"{prefix}+{qid}.{_tag(qid, key)}@{domain}"


def parse_return_path(address: str, domain: str, key: bytes, prefix: str = "bounces") -> str | None:
    """The queue id if ``address`` is a VERP address made by :func:`make_return_path`.

    Domain and prefix compare case-insensitively, the tag in constant time. The queue id
    is returned as written in the address (a remote may have changed its case).
    """
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the VERP key must be at least {MIN_KEY_BYTES} bytes")
    if not isinstance(address, str) or len(address) > MAX_ADDRESS_CHARS:
        return None
    local, at, dom = address.strip().removeprefix("<").removesuffix(">").rpartition("@")
    if not at or dom.lower() != domain.lower():
        return None
    head, plus, rest = local.partition("+")
    if not plus or head.lower() != prefix.lower():
        return None
    qid, dot, tag = rest.rpartition(".")
    tag = tag.lower()
    if not dot or not _QID.fullmatch(qid) or not _VERP_TAG.fullmatch(tag):
        return None
    if not hmac.compare_digest(_tag(qid, key), tag):
        return None
    return qid


# -- what a DSN says ----------------------------------------------------------------------
@dataclass(frozen=True)
class BounceReport:
    """What one delivery status notification says about one recipient."""

    recipient: str  # bare addr-spec, domain lower-cased: Original-Recipient, else Final-
    action: str  # one of ACTIONS
    status: str | None  # RFC 3463 enhanced status code, "5.1.1"
    diagnostic: str  # one line, no control characters, at most 500 characters
    remote_mta: str | None  # without the "dns;" type
    reporting_mta: str | None  # without the "dns;" type
    arrival_date: str | None


def parse_dsn(raw: bytes) -> list[BounceReport]:
    """The per-recipient reports of a DSN; ``[]`` when ``raw`` is not one (or unreadable).

    An RFC 3464 ``message/delivery-status`` part wins; without one, the human-readable
    text is read for the non-standard shapes named in the module docstring. Never
    raises on the content of ``raw``; time and memory are linear in ``len(raw)``.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    entity = _Entity.parse(memoryview(bytes(raw)))  # bytes(b) is b: no copy
    statuses, texts, htmls = _walk(entity)
    human = _cut_original("\n".join(texts) if texts else "\n".join(_html_text(h) for h in htmls))
    for status in statuses:
        reports = _reports_from_status(status, human)
        if reports:
            return reports
    return _reports_from_text(human, entity.fields)


# -- auto-replies (RFC 3834) ----------------------------------------------------------
_SUPPRESS = {"all", "oof", "autoreply", "dr", "ndr", "rn", "nrn"}


def is_auto_reply(raw: bytes) -> bool:
    """True when ``raw`` was generated automatically, or asks not to be answered.

    RFC 3834 ``Auto-Submitted`` other than ``no``; ``Precedence`` (or
    ``X-Precedence``) bulk, junk, list or auto_reply; mailing-list fields (``List-Id``,
    ``List-Unsubscribe``, ``List-Post``); the autoresponder markers ``X-Autoreply``,
    ``X-Autorespond``, ``X-Autogenerated``; Outlook's ``X-Auto-Response-Suppress``
    asking for no auto-reply; and delivery reports (null ``Return-Path``,
    ``multipart/report``, ``X-Failed-Recipients``, a ``MAILER-DAEMON`` sender).
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    header, _ = _split_header(memoryview(bytes(raw)))
    fields = _parse_fields(bytes(header).decode("utf-8", "replace"))

    def first(name: str) -> str:
        values = fields.get(name)
        return values[0].strip().lower() if values else ""

    submitted = re.split(r"[;(\s]", first("auto-submitted"), maxsplit=1)[0]
    if submitted and submitted != "no":
        return True
    if {first("precedence"), first("x-precedence")} & {"bulk", "junk", "list", "auto_reply"}:
        return True
    if any(name in fields for name in ("list-id", "list-unsubscribe", "list-post")):
        return True
    for name in ("x-autoreply", "x-autorespond", "x-autogenerated"):
        if name in fields and first(name) not in ("no", "false", "0"):
            return True
    if set(re.split(r"[\s,;]+", first("x-auto-response-suppress"))) & _SUPPRESS:
        return True
    if first("return-path") in ("<>", "<<>>") or "x-failed-recipients" in fields:
        return True
    if _content_type(fields)[0] == "multipart/report":
        return True
    sender = first("from")
    return bool(re.search(r"(?:^|[<\s\"])mailer-daemon@", sender)) or _is_bounce_envelope(fields)


# -- a small, bounded MIME reader ---------------------------------------------------------
_HEADER_END = re.compile(rb"\n\r?\n")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_PARAM = re.compile(r';\s*([A-Za-z0-9_.*!#$%&\'+^`{|}~-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


def _split_header(data: memoryview) -> tuple[memoryview, memoryview]:
    """Header section and body; slices of ``data``, not copies."""
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return data[:0], data[2 if data[:1] == b"\r" else 1 :]
    match = _HEADER_END.search(data, 0, MAX_HEADER_BYTES)
    if match is None:
        return data[:MAX_HEADER_BYTES], data[:0]
    return data[: match.start() + 1], data[match.end() :]


def _parse_fields(text: str) -> dict[str, list[str]]:
    """Header fields by lower-cased name, unfolded, in order; at most 1000 fields."""
    fields: dict[str, list[str]] = {}
    name = ""
    count = 0
    for line in _LINE_BREAK.split(text):
        if line[:1] in (" ", "\t"):
            values = fields.get(name)
            if values and len(values[-1]) < MAX_FIELD_CHARS:
                values[-1] = (values[-1] + " " + line.strip())[:MAX_FIELD_CHARS]
            continue
        head, colon, value = line.partition(":")
        head = head.strip().lower()
        if not colon or not head or not head.isascii() or " " in head:
            name = ""
            continue
        count += 1
        if count > 1000:
            break
        name = head
        fields.setdefault(name, []).append(value.strip()[:MAX_FIELD_CHARS])
    return fields


def _content_type(fields: dict[str, list[str]]) -> tuple[str, dict[str, str]]:
    value = (fields.get("content-type") or ["text/plain"])[0]
    main, _, _ = value.partition(";")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _PARAM.finditer(value[len(main) :])
    }
    ctype = main.strip().lower()
    if "/" not in ctype:
        ctype = "text/plain"
    return ctype, params


class _Entity:
    """One MIME entity: its header fields and its (still encoded) body, a view into the
    message (nested multiparts do not copy it once per level)."""

    __slots__ = ("body", "fields")

    def __init__(self, fields: dict[str, list[str]], body: memoryview) -> None:
        self.fields = fields
        self.body = body

    @classmethod
    def parse(cls, data: memoryview) -> _Entity:
        header, body = _split_header(data)
        return cls(_parse_fields(bytes(header).decode("utf-8", "replace")), body)

    def content_type(self) -> tuple[str, dict[str, str]]:
        return _content_type(self.fields)

    def decoded(self) -> bytes:
        """The body with its Content-Transfer-Encoding undone, leniently (for reading)."""
        body = bytes(self.body[:MAX_PART_BYTES])
        cte = (self.fields.get("content-transfer-encoding") or [""])[0].strip().lower()
        if cte == "base64":
            compact = re.sub(rb"[^A-Za-z0-9+/]", b"", body)
            compact = compact[: len(compact) - len(compact) % 4]
            try:
                return base64.b64decode(compact)
            except (binascii.Error, ValueError):
                return b""
        if cte == "quoted-printable":
            return quopri.decodestring(body)
        return body

    def text(self) -> str:
        data = self.decoded()
        charset = self.content_type()[1].get("charset", "utf-8").strip().lower() or "utf-8"
        if charset in _LATIN_LABELS and not data.isascii():
            # Mailers label UTF-8 as Latin-1 often enough; valid UTF-8 is not an accident.
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                charset = "windows-1252"
        return data.decode(_text_codec(charset), "replace")


_LATIN_LABELS = {"us-ascii", "ascii", "iso-8859-1", "latin1", "latin-1", "windows-1252", "cp1252"}
# Python codecs that are not mail charsets: escape decoders interpret backslashes (and
# warn about unknown ones), the others raise on "replace".
_NOT_CHARSETS = {"unicode-escape", "raw-unicode-escape", "punycode", "idna", "undefined"}


def _text_codec(charset: str) -> str:
    """The Python codec for a declared charset; UTF-8 for unknown or unsuitable ones."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, TypeError, ValueError):
        return "utf-8"
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return "utf-8"
    return info.name


def _split_multipart(body: memoryview, boundary: str, limit: int) -> list[memoryview]:
    """The parts of a multipart body, at most ``limit``; a missing close is tolerated."""
    if not boundary or len(boundary) > 200:
        return []
    delimiter = re.compile(
        rb"(?:\A|\n)--"
        + re.escape(boundary.encode("utf-8", "replace"))
        + rb"(--)?[ \t]*\r?(?:\n|\Z)"
    )
    parts: list[memoryview] = []
    start: int | None = None
    for match in delimiter.finditer(body):
        if start is not None:
            end = match.start()
            if end > start and body[end - 1] == 0x0D:
                end -= 1
            parts.append(body[start:end])
            if len(parts) >= limit:
                return parts
        if match.group(1):
            return parts
        start = match.end()
    if start is not None and start < len(body):
        parts.append(body[start:])
    return parts[:limit]


def _walk(top: _Entity) -> tuple[list[str], list[str], list[str]]:
    """Delivery-status texts, human text/plain parts and text/html parts, in order.

    The returned original (``message/rfc822``, ``text/rfc822-headers``) is not opened:
    addresses in it are not the ones the report is about.
    """
    statuses: list[str] = []
    texts: list[str] = []
    htmls: list[str] = []
    stack: list[tuple[_Entity | memoryview, int]] = [(top, 0)]
    examined = 0
    while stack and examined < MAX_PARTS:
        item, depth = stack.pop()
        entity = item if isinstance(item, _Entity) else _Entity.parse(item)
        examined += 1
        ctype, params = entity.content_type()
        if ctype.startswith("multipart/"):
            if depth >= MAX_DEPTH:
                continue
            children = _split_multipart(entity.body, params.get("boundary", ""), MAX_PARTS)
            stack.extend((child, depth + 1) for child in reversed(children))
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            statuses.append(entity.text())
        elif ctype == "text/plain":
            texts.append(entity.text()[:MAX_TEXT_CHARS])
        elif ctype == "text/html":
            htmls.append(entity.text()[: 4 * MAX_TEXT_CHARS])
    return statuses, texts, htmls


_HTML_TAG = re.compile(r"<([^<>]*)>")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")
_BREAKS = {"br", "p", "div", "tr", "li", "table", "h1", "h2", "h3", "h4", "h5", "h6"}


def _html_text(markup: str) -> str:
    """The text of an HTML part, for an NDR that has no text/plain one. One linear pass
    over the tags (a regex for <script>...</script> would rescan on every unclosed one)."""
    out: list[str] = []
    pos = 0
    skipping: str | None = None
    for tag in _HTML_TAG.finditer(markup):
        if skipping is None:
            out.append(markup[pos : tag.start()])
        inside = tag.group(1).lstrip()
        closing = inside.startswith("/")
        found = _TAG_NAME.match(inside.lstrip("/").lstrip())
        name = found.group(0).lower() if found else ""
        if skipping is None and not closing and name in ("script", "style"):
            skipping = name
        elif skipping is not None and closing and name == skipping:
            skipping = None
        elif skipping is None:
            out.append("\n" if name in _BREAKS else " ")
        pos = tag.end()
    if skipping is None:
        out.append(markup[pos:])
    return html.unescape("".join(out))[:MAX_TEXT_CHARS]


# -- cleaning untrusted values --------------------------------------------------------------
_SPACES = re.compile(r"\s+")
_TYPE_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9.+-]*\s*;\s*")
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_XTEXT_UTF8 = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


def _one_line(text: str, limit: int = MAX_DIAGNOSTIC) -> str:
    """One line: control, format (bidi) and separator characters become spaces."""
    text = text[: limit * 4]
    cleaned = "".join(
        " " if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") else c
        for c in text
    )
    cleaned = _SPACES.sub(" ", cleaned).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "\u2026"


def _untyped(value: str) -> str:
    """``dns; mx.example.org`` -> ``mx.example.org`` (RFC 3464 typed fields)."""
    return _TYPE_PREFIX.sub("", value.strip(), count=1)


def _bare_address(value: str) -> str | None:
    """A bare addr-spec with its domain lower-cased, or None if ``value`` is not one."""
    value = value.strip()
    if value.lower().startswith("utf-8;"):  # RFC 6533 utf-8-addr-xtext
        value = _XTEXT_UTF8.sub(lambda m: _chr(int(m.group(1), 16)), value[6:])
    value = _untyped(value) if ";" in value else value
    value = value.strip().strip("<>'\"").strip()
    if not value or len(value) > MAX_ADDRESS_CHARS:
        return None
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain or "@" in local and not local.startswith('"'):
        return None
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in value):
        return None
    if any(c in '<>()[],;:\\"' for c in domain) or domain.startswith(".") or ".." in domain:
        return None
    return f"{local}@{domain.lower().rstrip('.')}"


def _chr(code: int) -> str:
    return chr(code) if code < 0xD800 or 0xDFFF < code <= 0x10FFFF else "\ufffd"


def _enhanced(text: str | None) -> str | None:
    match = _ENHANCED.search(text or "")
    return ".".join(match.groups()) if match else None


def _action_for(action: str, status: str | None) -> str | None:
    action = action.strip().lower().split()[0] if action.strip() else ""
    if action in ACTIONS:
        return action
    aliases = {"failure": "failed", "fail": "failed", "delay": "delayed", "deliver": "delivered"}
    if action in aliases:
        return aliases[action]
    if status:
        return {"5": "failed", "4": "delayed", "2": "delivered"}[status[0]]
    return None


# -- RFC 3464 ---------------------------------------------------------------------------------
_BLANK_LINES = re.compile(r"\r?\n[ \t]*(?:\r?\n[ \t]*)+\r?\n?")


def _reports_from_status(text: str, human: str) -> list[BounceReport]:
    groups = [g for g in _BLANK_LINES.split(text.strip()) if g.strip()]
    if not groups:
        return []
    per_message = _parse_fields(groups[0])

    def first(fields: dict[str, list[str]], name: str) -> str:
        values = fields.get(name)
        return values[0] if values else ""

    reporting = _one_line(_untyped(first(per_message, "reporting-mta")), 255) or None
    arrival = _one_line(first(per_message, "arrival-date"), 100) or None
    reports: list[BounceReport] = []
    for group in groups[: MAX_REPORTS + 1]:
        fields = _parse_fields(group)
        recipient = _pick_recipient(fields)
        if recipient is None:
            continue
        status = _enhanced(first(fields, "status").split("(")[0])
        diagnostic = _one_line(_untyped(first(fields, "diagnostic-code")))
        if status is None:
            status = _enhanced(diagnostic)
        action = _action_for(first(fields, "action"), status)
        if action is None:
            continue
        if not diagnostic:
            diagnostic = _human_diagnostic(human, recipient)
        reports.append(
            BounceReport(
                recipient=recipient,
                action=action,
                status=status,
                diagnostic=diagnostic,
                remote_mta=_one_line(_untyped(first(fields, "remote-mta")), 255) or None,
                reporting_mta=reporting,
                arrival_date=arrival,
            )
        )
        if len(reports) >= MAX_REPORTS:
            break
    return reports


def _pick_recipient(fields: dict[str, list[str]]) -> str | None:
    # The Original-Recipient is the address the gateway relayed to (the remote may have
    # rewritten it to an internal Final-Recipient); Exchange fills it with an X.500
    # "IMCEA..." encapsulation at times, which no sender ever used.
    for name in ("original-recipient", "final-recipient"):
        for value in fields.get(name, [])[:1]:
            address = _bare_address(value)
            if address and not address.upper().startswith("IMCEA"):
                return address
    return None


def _human_diagnostic(human: str, recipient: str) -> str:
    """The human text's words about ``recipient``, else its first paragraph."""
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", human) if p.strip()]
    needle = recipient.lower()
    for paragraph in paragraphs:
        if needle in paragraph.lower():
            return _one_line(paragraph)
    return _one_line(paragraphs[0]) if paragraphs else ""


# -- the non-standard shapes, from the human text -----------------------------------------------
_ORIGINAL_MARKERS = re.compile(
    r"(?im)^[ \t]*(?:"
    r"-+ ?Below (?:this|the next) line is a copy of the message"
    r"|--- Enclosed are the original headers of the message"
    r"|-+ ?This is a copy of the (?:message|body of the message|message's headers)"
    r"|-+ ?(?:Original message|Message header follows|Original message headers) ?-*"
    r"|Original message headers:"
    r"|-+ ?The header of the original message is following"
    r"|Content-Type: message/rfc822"
    r")"
)


def _cut_original(text: str) -> str:
    text = "\n".join(_LINE_BREAK.split(text[: 2 * MAX_TEXT_CHARS]))
    match = _ORIGINAL_MARKERS.search(text)
    return (text[: match.start()] if match else text)[:MAX_TEXT_CHARS]


# Bounded repetitions with separators that cannot be confused: no regex here can
# backtrack more than a few hundred characters, whatever the text.
_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,10}"
)
_QMAIL = re.compile(r"(?i)This is the qmail-send program(?: at ([^\s.]+(?:\.[^\s.]+)*))?")
_POSTFIX = re.compile(r"(?i)This is the mail system at host ([^\s]+?)\.?\s")
_EXIM = re.compile(r"(?i)This message was created automatically by mail delivery software")
_GMAIL_LEGACY = re.compile(
    r"(?i)Delivery to the following recipients? (failed permanently|has been delayed|failed temporarily)"
)
_EXCHANGE = re.compile(
    r"(?i)(Delivery has failed to these recipients or groups"
    r"|Your message did not reach some or all of the intended recipients"
    r"|The following recipient\(s\) (?:could not be reached|cannot be reached)"
    r"|Your message (?:to .{1,320}? )?couldn't be delivered"
    r"|Delivery is delayed to these recipients or groups)"
)
# How each MTA words a delay warning (Postfix, Exim, legacy Gmail, Exchange) and a
# final failure; the failure wording wins when a text has both.
_DELAYED = re.compile(
    r"(?i)THIS IS A WARNING ONLY|has not yet been delivered|has been delayed"
    r"|Delivery is delayed|failed temporarily"
)
_PERMANENT = re.compile(r"(?i)permanent error|failed permanently|I've given up")
_SUCCESS = re.compile(
    r"(?i)was successfully delivered to the destination|delivery to the following recipients was successful"
)
_ANGLE_BLOCK = re.compile(
    r"^<([^<>\s@]{1,256}@[^<>\s]{1,256})>"
    r"(?:\s*\((?:expanded from <([^<>\s@]{1,256}@[^<>\s]{1,256})>|[^)\n]{0,400})\))?:[ \t]*(.*)",
    re.S,
)
_HOST = r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,20}"
_REMOTE_HOST = re.compile(
    rf"(?i)\bhost\s+({_HOST})|^({_HOST}) does not like recipient|\bGiving up on ({_HOST})", re.M
)
_SMTP_REPLY = re.compile(r"(?<![\d.])[45]\d\d[ -].{0,400}")


def _reports_from_text(human: str, fields: dict[str, list[str]]) -> list[BounceReport]:
    if not human.strip() and "x-failed-recipients" not in fields:
        return []
    found: list[tuple[str, str, str | None]] = []  # recipient, diagnostic, remote host
    action = "failed"
    reporting: str | None = None
    qmail = _QMAIL.search(human)
    postfix = _POSTFIX.search(human)
    if qmail or postfix:
        # The same grammar: "<address>:" then the diagnostic, one paragraph each.
        reporting = (qmail.group(1) if qmail else postfix.group(1) if postfix else None) or None
        found = _angle_blocks(human)
    elif _EXIM.search(human):
        found = _exim_blocks(human)
    elif gmail := _GMAIL_LEGACY.search(human):
        found = _gmail_blocks(human, gmail.end())
    elif exchange := _EXCHANGE.search(human):
        found = _exchange_blocks(human, exchange.start())
        # The server that wrote the NDR: "Generating server: X" (2007-2016), "DSN
        # generated by: X" (Office 365) or the host in "<X #5.1.1 smtp;550 ...>" (2003).
        server = re.search(
            r"(?im)^[ \t]*(?:Generating server|DSN generated by):[ \t]*(\S+)"
            r"|<([A-Za-z0-9.-]{1,255}) #[45]\.",
            human,
        )
        reporting = (server.group(1) or server.group(2)) if server else None
    elif _is_bounce_envelope(fields):
        found = _angle_blocks(human)
    else:
        return []
    if not found:
        failed = ",".join(fields.get("x-failed-recipients", []))
        reply = _SMTP_REPLY.search(human)
        diagnostic = reply.group(0) if reply else ""
        for candidate in failed.split(","):
            address = _bare_address(candidate)
            if address:
                found.append((address, diagnostic, None))
    intro = human[:2000]
    if _SUCCESS.search(intro):
        action = "delivered"
    elif _DELAYED.search(intro) and not _PERMANENT.search(intro):
        action = "delayed"
    reports: list[BounceReport] = []
    seen: set[str] = set()
    for recipient, diagnostic, remote in found:
        if recipient in seen:
            continue
        seen.add(recipient)
        line = _one_line(diagnostic)
        qmail_status = re.search(r"\(#([245]\.\d{1,3}\.\d{1,3})\)", line)
        reports.append(
            BounceReport(
                recipient=recipient,
                action=action,
                status=qmail_status.group(1) if qmail_status else _enhanced(line),
                diagnostic=line,
                remote_mta=_one_line(remote, 255) if remote else None,
                reporting_mta=_one_line(reporting, 255) if reporting else None,
                arrival_date=None,
            )
        )
        if len(reports) >= MAX_REPORTS:
            break
    return reports


def _is_bounce_envelope(fields: dict[str, list[str]]) -> bool:
    sender = " ".join(fields.get("from", [])).lower()
    subject = " ".join(fields.get("subject", [])).lower()
    daemon = "mailer-daemon" in sender or "postmaster@" in sender
    bouncy = re.search(
        r"undeliver|returned mail|delivery (?:status|failure|notification|has failed)"
        r"|mail delivery failed|failure notice|non[- ]?delivery",
        subject,
    )
    return daemon and bool(bouncy) or "x-failed-recipients" in fields


def _paragraphs(text: str) -> list[str]:
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _remote(text: str) -> str | None:
    match = _REMOTE_HOST.search(text)
    return next((g for g in match.groups() if g), None) if match else None


def _angle_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """qmail's and Postfix's ``<address>: diagnostic`` paragraphs."""
    found: list[tuple[str, str, str | None]] = []
    for paragraph in _paragraphs(text):
        match = _ANGLE_BLOCK.match(paragraph.strip())
        if not match:
            continue
        # Postfix names the alias the sender used: "<final> (expanded from <original>)".
        address = _bare_address(match.group(2) or match.group(1))
        if address:
            diagnostic = match.group(3)
            found.append((address, diagnostic, _remote(diagnostic)))
    return found


def _exim_blocks(text: str) -> list[tuple[str, str, str | None]]:
    """Exim: the address indented by two spaces, the diagnostic below it by four."""
    found: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        address_line = re.match(r"^ {1,3}([^\s@]{1,256}@\S{1,256})(?:\s.*)?$", line)
        if address_line and not line.lstrip().lower().startswith(("smtp ", "host ")):
            address = _bare_address(address_line.group(1).rstrip(":"))
            if address:
                found.append((address, []))
                continue
        if found and re.match(r"^(?: {4,}|\t)\S", line):
            if not line.lstrip().startswith("(generated from"):
                found[-1][1].append(line.strip())
    return [(a, " ".join(d), _remote(" ".join(d))) for a, d in found]


def _gmail_blocks(text: str, start: int) -> list[tuple[str, str, str | None]]:
    """Legacy Gmail: indented addresses, then "Technical details of ... failure:"."""
    rest = text[start:]
    details = re.search(r"(?i)Technical details of (?:permanent|temporary) failure:", rest)
    listing = rest[: details.start()] if details else rest[:2000]
    diagnostic = ""
    if details:
        diagnostic = " ".join(_paragraphs(rest[details.end() :])[:2])
    addresses = [_bare_address(m.group(0)) for m in _ADDRESS.finditer(listing)]
    return [(a, diagnostic, _remote(diagnostic)) for a in addresses if a]


_EXCHANGE_DIAGNOSTIC = re.compile(
    r"(?i)Remote Server returned '([^'\n]{1,600})'"
    r"|Reported error:[ \t]*([^\n]{1,600})"
    r"|#(\d{3}[ -][45]\.\d{1,3}\.\d{1,3}[^#\n]{0,500})"
    # Exchange 2003: <generating host #5.1.1 smtp;550 5.1.1 the remote's reply>
    r"|<([A-Za-z0-9.-]{1,255}) #[45]\.\d{1,3}\.\d{1,3} ([^\n]{0,500})>"
)


def _exchange_blocks(text: str, start: int) -> list[tuple[str, str, str | None]]:
    """Exchange text NDRs: the addresses after the opening sentence, each with the first
    diagnostic from the line of its last mention on: Exchange 2007-2016 repeat each
    address above its "#550 5.1.1 ..." line for administrators, Office 365 above its
    "Reported error: 550 ...", Exchange 2003 writes "<host #5.1.1 smtp;550 ...>" under it."""
    rest = text[start:]
    # The recipients are named before the sections for administrators, which also name
    # the sender (our own return path) and servers.
    end = re.search(
        r"(?im)^[ \t]*(?:Diagnostic information for administrators|More Info for Email Admins"
        r"|Original Message Details|How to Fix It|Original message headers)",
        rest,
    )
    listing = rest[: end.start()] if end else rest
    lowered = rest.lower()
    found: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    for match in _ADDRESS.finditer(listing):
        address = _bare_address(match.group(0))
        if not address or address in seen:
            continue
        seen.add(address)
        line_start = lowered.rfind("\n", 0, max(lowered.rfind(address.lower()), 0)) + 1
        hit = _EXCHANGE_DIAGNOSTIC.search(rest, line_start, line_start + 4000)
        if hit:
            diagnostic = hit.group(1) or hit.group(2) or hit.group(3) or _untyped(hit.group(5))
        else:
            diagnostic = rest[match.end() :].lstrip(" ')>\t").split("\n\n", 1)[0]
        found.append((address, diagnostic, None))
        if len(found) >= MAX_REPORTS:
            break
    return found


def returned_headers(raw: bytes) -> bytes | None:
    """The header section of the original that a DSN returns (its ``text/rfc822-headers``
    part, or the header of its ``message/rfc822`` part), CRLF line ends; None when it
    returns none. Bounded like :func:`parse_dsn`; never raises on the content of ``raw``."""
    stack: list[tuple[_Entity | memoryview, int]] = [(_Entity.parse(memoryview(bytes(raw))), 0)]
    examined = 0
    while stack and examined < MAX_PARTS:
        item, depth = stack.pop()
        entity = item if isinstance(item, _Entity) else _Entity.parse(item)
        examined += 1
        ctype, params = entity.content_type()
        if ctype.startswith("multipart/") and depth < MAX_DEPTH:
            children = _split_multipart(entity.body, params.get("boundary", ""), MAX_PARTS)
            stack.extend((child, depth + 1) for child in reversed(children))
        elif ctype in ("text/rfc822-headers", "message/rfc822", "message/global-headers"):
            header, _ = _split_header(memoryview(entity.decoded()))
            lines = _LINE_BREAK.split(bytes(header).decode("utf-8", "replace").strip("\r\n"))
            text = "\r\n".join(lines)
            return (text + "\r\n").encode("utf-8") if text.strip() else None
    return None
