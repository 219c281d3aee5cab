"""Summarise a raw e-mail message for its certificate, robustly and strictly.

What a certificate says about a message comes from here: the SHA-256 of the exact bytes
received, the header fields a person recognises, each attachment with the hash of its
decoded content, a plain-text rendering of the body, and a list of everything that could
not be read as the standards say (``defects``, in plain English).

Standards:

- RFC 5322: header section, unfolding, address syntax (``mailbox``, ``group``).
- RFC 2045 and RFC 2046: ``Content-Type``, ``Content-Transfer-Encoding``, multipart
  boundaries (the CRLF before a delimiter belongs to the delimiter, RFC 2046 5.1.1).
- RFC 2047: encoded words, decoded for display only.
- RFC 2231: parameter continuations and charsets (``filename*0*=utf-8''...``).
- RFC 2183: ``Content-Disposition``; unknown dispositions count as ``attachment``.
- RFC 6532: UTF-8 in header fields, including local parts.
- RFC 3501 section 6.4.5: parts are numbered like IMAP body sections ("part 1.2").

Why not ``email.parser``: on Python 3.11 the feed parser raises ``RecursionError`` on
1000-deep multipart nesting and scans every line against every open boundary;
``Message.get_param`` is quadratic in the length of a parameter; the address parsers in
``email.utils`` and ``email.headerregistry`` recurse once per nested comment, and
``getaddresses`` misparsed addresses (CVE-2023-27043, no ``strict=`` before 3.11.10).
So the MIME structure, header fields and parameters are read here by linear, iterative
code over the raw bytes. The stdlib address parsers are used only as a second opinion
in :func:`parse_single_mailbox`, after our own strict parser has accepted the value and
bounded its nesting: both must name the same single address.

Decisions worth knowing:

- ``message/rfc822`` and ``message/global`` parts are attachments: hashed as a whole and
  not opened, so the parts of a forwarded message are not listed one by one.
- A part is an attachment when its disposition is not ``inline``, when it has a file
  name, or when it is not ``text/plain`` or ``text/html`` (so ``text/calendar`` is one).
- Base64 is decoded strictly (only line breaks and spaces are ignored). When it does not
  decode, the attachment's size and hash are those of the part body as sent, and a
  defect says so: the certificate never vouches for a guessed decoding.
- Text in an unknown, undeclared or mislabelled charset is shown as UTF-8 if it is valid
  UTF-8, else as Windows-1252 (the superset of Latin-1 that mailers and the WHATWG
  Encoding Standard actually use for "iso-8859-1"), with U+FFFD for undecodable bytes.
- Single-line strings (subject, names, file names) have control characters, line and
  paragraph separators and bidirectional overrides replaced by spaces, so an encoded
  word carrying CR LF cannot start a new line in a certificate or a log. Body text keeps
  its line breaks and tabs. No output string contains a surrogate.
- Output is bounded: at most ``max_parts`` parts and ``max_depth`` levels are examined,
  long header strings are cut at 4096 characters, at most 1000 addresses per field and
  100 defects are listed; each cut is itself reported as a defect.

Errors: :func:`summarise` never raises on the content of ``raw``. Limits that make no
sense (negative ``max_text``, ``max_parts`` < 1, negative ``max_depth``) raise
``ValueError``; a ``raw`` that is not bytes-like raises ``TypeError``.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import inspect
import re
import unicodedata
from dataclasses import dataclass, field
from email import errors as email_errors
from email import utils as email_utils
from email.headerregistry import HeaderRegistry
from html.parser import HTMLParser
from typing import Any
from urllib.parse import unquote_to_bytes

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
MAX_ADDRESSES = 1000  # per header field (To, Cc, From)
MAX_DEFECTS = 100
MAX_MAILBOX_CHARS = 4096  # parse_single_mailbox refuses longer values
MAX_BOUNDARY_CHARS = 200  # RFC 2046 says 70; some mailers exceed it a little
MAX_COMMENT_DEPTH = 8  # nested RFC 5322 comments; the stdlib recurses on each level
HTML_MAX_CHARS = 2_000_000  # HTML beyond this is not converted (text_truncated is set)
_HTML_CHUNK = 65536


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Attachment:
    """One attachment: size and SHA-256 of its decoded content (see module docstring)."""

    filename: str
    content_type: str
    size: int
    sha256: str


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
            "attachments": [
                {
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "sha256": a.sha256,
                }
                for a in self.attachments
            ],
            "text": self.text,
            "text_truncated": self.text_truncated,
            "defects": list(self.defects),
        }


# ---------------------------------------------------------------------------
# Defects and string hygiene


class _Defects:
    """Ordered, de-duplicated, bounded list of plain-English problems."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}
        self._dropped = 0

    def add(self, text: str) -> None:
        if text in self._seen:
            return
        if len(self._seen) >= MAX_DEFECTS:
            self._dropped += 1
            return
        self._seen[text] = None

    def result(self) -> tuple[str, ...]:
        items = list(self._seen)
        if self._dropped:
            items.append(f"{self._dropped} more problems not listed")
        return tuple(items)


_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates.
_LINE_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BODY_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _no_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


def _one_line(text: str) -> str:
    """A string safe to show on one line: no controls, no bidi tricks, no surrogates."""
    return _LINE_UNSAFE.sub(" ", _no_surrogates(text)).strip()


def _cut(text: str, limit: int, what: str, defects: _Defects) -> str:
    if len(text) <= limit:
        return text
    defects.add(f"{what} longer than {limit} characters: cut")
    return text[:limit] + "\u2026"


def _body_text(text: str) -> str:
    text = _no_surrogates(text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return _BODY_UNSAFE.sub(" ", text)


# ---------------------------------------------------------------------------
# Charsets

# Decoders that are not plain charsets: they interpret escapes, or map host names.
_UNSAFE_CODECS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
)
_FALLBACK_LABELS = frozenset({"us-ascii", "ascii", "unknown-8bit", "x-unknown", "default"})
_LATIN1_LABELS = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1"})


def _codec_for(charset: str) -> str | None:
    """Python codec name for a MIME charset label, None if unknown or not a charset."""
    label = charset.strip().strip("\"'").lower()
    if label in _LATIN1_LABELS:
        return "cp1252"
    if not label or len(label) > 40 or not label.isascii():
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _UNSAFE_CODECS:
        return None
    return info.name


def _decode_fallback(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_with(data: bytes, codec: str) -> str | None:
    try:
        return _no_surrogates(data.decode(codec, "replace"))
    except Exception:  # a codec that fails even with "replace" counts as unknown
        return None


def _decode_charset(data: bytes, charset: str | None, where: str, defects: _Defects) -> str:
    """Decode ``data`` in ``charset``; unknown charsets fall back as documented."""
    if charset:
        label = charset.strip().strip("\"'").lower()
        if label not in _FALLBACK_LABELS:
            codec = _codec_for(label)
            decoded = _decode_with(data, codec) if codec is not None else None
            if decoded is not None:
                return decoded
            shown = _one_line(charset)[:40]
            defects.add(f"unknown charset {shown!r} {where}: shown as UTF-8 or Windows-1252")
    return _no_surrogates(_decode_fallback(data))


# ---------------------------------------------------------------------------
# RFC 2047 encoded words, linear time (no backtracking beyond the next "?")

_ENCODED_WORD = re.compile(r"=\?([!->@-~]{1,100})\?([bBqQ])\?([!->@-~]*)\?=")
_ONLY_SPACE = re.compile(r"[ \t\r\n]*")


def _decode_words(text: str, where: str, defects: _Defects) -> str:
    """Decode RFC 2047 encoded words in ``text`` (anywhere, as mail clients do)."""
    if "=?" not in text:
        return text
    pieces: list[str | tuple[str, list[bytes]]] = []
    pos = 0
    for m in _ENCODED_WORD.finditer(text):
        between = text[pos : m.start()]
        charset = m.group(1).split("*", 1)[0].lower()  # RFC 2231 section 5: charset*lang
        raw = m.group(3).encode("ascii")
        try:
            if m.group(2) in "bB":
                data = binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
            else:
                data = binascii.a2b_qp(raw, header=True)
        except (binascii.Error, ValueError):
            defects.add(f"an encoded word {where} could not be decoded")
            pieces.append(between + m.group(0))
            pos = m.end()
            continue
        previous = pieces[-1] if pieces else None
        if isinstance(previous, tuple) and _ONLY_SPACE.fullmatch(between):
            # RFC 2047 section 6.2: space between adjacent encoded words is dropped;
            # bytes of one charset are joined so a character split across words survives.
            if previous[0] == charset:
                previous[1].append(data)
            else:
                pieces.append((charset, [data]))
        else:
            if between:
                pieces.append(between)
            pieces.append((charset, [data]))
        pos = m.end()
    if pos < len(text):
        pieces.append(text[pos:])
    out: list[str] = []
    for piece in pieces:
        if isinstance(piece, tuple):
            out.append(_decode_charset(b"".join(piece[1]), piece[0], where, defects))
        else:
            out.append(piece)
    return "".join(out)


# ---------------------------------------------------------------------------
# Header sections

_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*")  # RFC 5322 ftext, obs-optional space
_PART_FIELDS = frozenset({b"content-type", b"content-disposition", b"content-transfer-encoding"})
_TOP_FIELDS = _PART_FIELDS | {b"from", b"to", b"cc", b"subject", b"date", b"message-id"}
_MAX_SAME_FIELD = 1000


def _read_headers(
    raw: bytes, start: int, end: int, wanted: frozenset[bytes], where: str, defects: _Defects
) -> tuple[dict[str, list[bytes]], int]:
    """Unfolded values of the ``wanted`` fields in the header section at ``start``.

    Returns the fields (lower-case names, raw value bytes in order of appearance) and
    the offset where the body starts.
    """
    fields: dict[str, list[list[bytes]]] = {}
    current: list[bytes] | None = None
    seen_field = False
    pos = start
    while pos < end:
        nl = raw.find(b"\n", pos, end)
        line_end = end if nl < 0 else nl + 1
        line = raw[pos : (end if nl < 0 else nl)]
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            return _join_fields(fields), line_end
        if line[0] in (0x20, 0x09):
            if not seen_field:
                defects.add(f"header section {where} starts with a continuation line")
            elif current is not None:
                current.append(line)  # RFC 5322 2.2.3: unfolding removes only the CRLF
            pos = line_end
            continue
        colon = line.find(b":")
        if colon > 0 and _FIELD_NAME.fullmatch(line, 0, colon):
            seen_field = True
            name = line[:colon].rstrip(b" \t").lower()
            current = None
            if name in wanted:
                values = fields.setdefault(name.decode("ascii"), [])
                if len(values) < _MAX_SAME_FIELD:
                    current = [line[colon + 1 :]]
                    values.append(current)
            pos = line_end
            continue
        if pos == 0 and not seen_field and line.startswith(b"From "):
            defects.add("mbox 'From ' line before the header section ignored")
            pos = line_end
            continue
        if seen_field:
            defects.add(f"header section {where} not ended by a blank line")
        else:
            defects.add(f"no header section {where}")
        return _join_fields(fields), pos
    return _join_fields(fields), end


def _join_fields(fields: dict[str, list[list[bytes]]]) -> dict[str, list[bytes]]:
    return {name: [b"".join(v).strip(b" \t") for v in values] for name, values in fields.items()}


def _header_str(value: bytes, name: str, defects: _Defects) -> str:
    """Header bytes as text: UTF-8 (RFC 6532) or, flagged, Windows-1252."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        defects.add(f"{name} header contains 8-bit bytes that are not UTF-8")
        return value.decode("cp1252", "replace")


# ---------------------------------------------------------------------------
# MIME parameters (RFC 2045 5.1, RFC 2231), linear time

_MIME_WORD = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MIME_TYPE = re.compile(rf"\s*({_MIME_WORD})\s*/\s*({_MIME_WORD})")
# A quoted string runs to its closing quote or, unterminated, to the end of the value.
# Its pattern cannot fail once started, so it is never rescanned (escaped quotes made
# the obvious '"..."|"' alternation quadratic).
_PARAM_PIECES = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:\\\Z)?"?|[^;"]+|;', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PARAM_NAME = re.compile(r"([^*]+)(?:\*([0-9]{1,3}))?(\*)?")


def _split_semicolons(value: str) -> list[str]:
    segments: list[str] = []
    current: list[str] = []
    for m in _PARAM_PIECES.finditer(value):
        if m.group(0) == ";":
            segments.append("".join(current))
            current = []
        else:
            current.append(m.group(0))
    segments.append("".join(current))
    return segments


def _parse_structured(value: str, where: str, defects: _Defects) -> tuple[str, dict[str, str]]:
    """Split ``main; a=b; c*=...`` into the main value and decoded parameters."""
    segments = _split_semicolons(value)
    main = segments[0].strip()
    simple: dict[str, str] = {}
    pieces: dict[str, dict[int, tuple[str, bool]]] = {}
    for segment in segments[1:]:
        if not segment.strip():
            continue
        name, eq, val = segment.partition("=")
        name = name.strip().lower()
        val = val.strip()
        if not eq or not name:
            defects.add(f"malformed parameter {where}")
            continue
        if val.startswith('"') and val.endswith('"') and len(val) >= 2:
            val = _QUOTED_PAIR.sub(r"\1", val[1:-1])
        m = _PARAM_NAME.fullmatch(name)
        if m is None or (m.group(2) is None and m.group(3) is None):
            if name in simple:
                defects.add(f"parameter {_one_line(name)[:40]!r} repeated {where}")
            else:
                simple[name] = val
            continue
        base, index, extended = m.group(1), int(m.group(2) or 0), m.group(3) is not None
        pieces.setdefault(base, {}).setdefault(index, (val, extended))
    for base, parts in pieces.items():
        data = bytearray()
        charset: str | None = None
        index = 0
        while index in parts:
            val, extended = parts[index]
            if extended:
                if index == 0 and val.count("'") >= 2:
                    charset, _lang, val = val.split("'", 2)
                data += unquote_to_bytes(val)
            else:
                data += val.encode("utf-8", "surrogatepass")
            index += 1
        if len(parts) != index:
            defects.add(f"RFC 2231 parameter {_one_line(base)[:40]!r} has gaps {where}")
        if index:
            simple[base] = _decode_charset(bytes(data), charset, where, defects)
    return main, simple


@dataclass
class _PartHeaders:
    content_type: str
    params: dict[str, str]
    disposition: str
    disposition_params: dict[str, str]
    transfer_encoding: str


def _part_headers(
    fields: dict[str, list[bytes]], default_type: str, where: str, defects: _Defects
) -> _PartHeaders:
    def first(name: str) -> str:
        values = fields.get(name, [])
        if len(values) > 1:
            defects.add(f"{len(values)} {name} fields {where}: the first is used")
        return _header_str(values[0], name, defects) if values else ""

    ctype_value = first("content-type")
    main, params = _parse_structured(ctype_value, where, defects)
    m = _MIME_TYPE.match(main)
    if m:
        content_type = f"{m.group(1)}/{m.group(2)}".lower()
    else:
        # RFC 2045 5.2: an unreadable Content-Type means the default, parameters too.
        if ctype_value:
            defects.add(f"unreadable Content-Type {where}: taken as {default_type}")
        content_type, params = default_type, {}
    disp_main, disp_params = _parse_structured(first("content-disposition"), where, defects)
    disposition = disp_main.split("(", 1)[0].strip().lower()
    cte = first("content-transfer-encoding").split("(", 1)[0].strip().strip('"').lower()
    return _PartHeaders(content_type, params, disposition, disp_params, cte)


# ---------------------------------------------------------------------------
# Multipart bodies (RFC 2046 5.1)


@dataclass
class _Split:
    children: list[tuple[int, int]] = field(default_factory=list)
    found_start: bool = False
    closed: bool = False
    cut: bool = False


def _split_multipart(raw: bytes, start: int, end: int, boundary: bytes, limit: int) -> _Split:
    """Child byte ranges of a multipart body, at most ``limit`` of them.

    Only this entity's own delimiter is searched, inside its own range, so an inner part
    can never extend past an outer delimiter. The search is one compiled regex with a
    literal prefix: lines that merely start like the delimiter are skipped in C.
    """
    result = _Split()
    tail = rb"(--)?[ \t]*(?:\r?\n|\Z)"  # RFC 2046: transport padding, then CRLF
    first = re.compile(b"--" + re.escape(boundary) + tail)
    later = re.compile(b"\n--" + re.escape(boundary) + tail)
    match = first.match(raw, start, end)
    if match is None:
        match = later.search(raw, start, end)
    child_start = -1
    while match is not None:
        if child_start >= 0:
            # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1); the
            # match starts at its LF, which may also end the previous delimiter line.
            content_end = match.start()
            if content_end > child_start and raw[content_end - 1] == 0x0D:
                content_end -= 1
            result.children.append((child_start, max(content_end, child_start)))
            if len(result.children) >= limit:
                result.cut = True
                return result
        result.found_start = True
        if match.group(1):
            result.closed = True
            return result
        child_start = match.end()
        match = later.search(raw, max(match.end() - 1, start), end)
    if child_start >= 0:
        result.children.append((child_start, end))
    return result


# ---------------------------------------------------------------------------
# Transfer encodings

_B64_SPACE = b" \t\r\n"
_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\n|[ \t]*\Z)")


def _decode_transfer(body: bytes, cte: str, where: str, defects: _Defects) -> bytes:
    """Body decoded from its transfer encoding; the body as sent when that fails."""
    if cte in ("", "7bit", "8bit", "binary"):
        if cte in ("", "7bit") and not body.isascii():
            defects.add(f"undeclared 8-bit data {where}")
        return body
    if cte == "base64":
        try:
            return binascii.a2b_base64(body.translate(None, _B64_SPACE), strict_mode=True)
        except (binascii.Error, ValueError):
            defects.add(f"base64 {where} could not be decoded")
            return body
    if cte == "quoted-printable":
        if _QP_BAD_ESCAPE.search(body):
            defects.add(f"invalid quoted-printable escape {where}: kept as sent")
        return binascii.a2b_qp(body)
    defects.add(f"unknown transfer encoding {_one_line(cte)[:40]!r} {where}: hashed as sent")
    return body


# ---------------------------------------------------------------------------
# HTML to text, html.parser based


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


def _html_to_text(html: str, max_text: int, defects: _Defects) -> tuple[str, bool]:
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


# ---------------------------------------------------------------------------
# Addresses (RFC 5322 3.4), strict and iterative

_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_SPECIALS = frozenset("<>@,;:.")
_NAME_SPECIALS = frozenset('()<>@,;:.\\"[]')


# RFC 5322 atext, qtext (without '"' and '\'), ctext (without '(', ')' and '\'), and
# dtext, each widened by RFC 6532 to non-ASCII; never controls (C0, DEL, C1) or
# surrogates. Runs are matched by regex so long values cost C time, not Python loops.
_NON_ASCII = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATOM_RUN = re.compile(f"[A-Za-z0-9!#$%&'*+\\-/=?^_`{{|}}~{_NON_ASCII}]+")
_QTEXT_RUN = re.compile(f"[\t !#-\\[\\]-~{_NON_ASCII}]+")
_CTEXT_RUN = re.compile(f"[\t -'*-\\[\\]-~{_NON_ASCII}]+")
_DTEXT_RUN = re.compile(f"[\t -Z^-~{_NON_ASCII}]*")
_PAIRABLE = re.compile(f"[\t -~{_NON_ASCII}]")


def _quoted_pair(value: str, i: int) -> str | None:
    """The character escaped by the backslash at ``i``, if it may be escaped."""
    if i + 1 < len(value) and _PAIRABLE.fullmatch(value[i + 1]):
        return value[i + 1]
    return None


# Token kinds: "atom", "qs" (quoted string, unescaped), "lit" (domain literal), or a
# special character itself. The flag says whether white space or a comment preceded it.
_Token = tuple[str, str, bool]


def _tokenize(value: str) -> list[_Token] | None:
    tokens: list[_Token] = []
    i, n, gap = 0, len(value), False
    while i < n:
        c = value[i]
        if c in " \t":
            gap = True
            i += 1
        elif c == "(":
            depth = 0
            while True:
                if i >= n:
                    return None
                c = value[i]
                if c == "(":
                    depth += 1
                    if depth > MAX_COMMENT_DEPTH:
                        return None
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                elif c == "\\":
                    if _quoted_pair(value, i) is None:
                        return None
                    i += 2
                    continue
                else:
                    m = _CTEXT_RUN.match(value, i)
                    if m is None:
                        return None
                    i = m.end()
                    continue
                i += 1
            gap = True
        elif c == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    return None
                c = value[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    escaped = _quoted_pair(value, i)
                    if escaped is None:
                        return None
                    chars.append(escaped)
                    i += 2
                    continue
                m = _QTEXT_RUN.match(value, i)
                if m is None:
                    return None
                chars.append(m.group(0))
                i = m.end()
            tokens.append(("qs", "".join(chars), gap))
            gap = False
        elif c == "[":
            close = _DTEXT_RUN.match(value, i + 1)
            if close is None or not value.startswith("]", close.end()):
                return None
            tokens.append(("lit", close.group(0), gap))
            gap = False
            i = close.end() + 1
        elif c in _SPECIALS:
            tokens.append((c, c, gap))
            gap = False
            i += 1
        else:
            m = _ATOM_RUN.match(value, i)
            if m is None:
                return None
            tokens.append(("atom", m.group(0), gap))
            gap = False
            i = m.end()
    return tokens


@dataclass(frozen=True)
class _Mailbox:
    name: str
    local: str
    domain: str
    quoted_local: bool
    literal_domain: bool
    in_group: bool

    @property
    def addr(self) -> str:
        local = self.local
        if self.quoted_local:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        domain = f"[{self.domain}]" if self.literal_domain else self.domain
        return f"{local}@{domain}"


@dataclass
class _AddressList:
    mailboxes: list[_Mailbox] = field(default_factory=list)
    groups: int = 0
    empty_elements: int = 0


class _Reader:
    """Recursive-descent-free reader of an RFC 5322 address-list token stream."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> _Token | None:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else None

    def kind(self, offset: int = 0) -> str:
        tok = self.peek(offset)
        return tok[0] if tok else ""

    def phrase(self) -> str | None:
        words: list[str] = []
        while self.kind() in ("atom", "qs", "."):
            kind, text, gap = self.t[self.i]
            if words and gap:
                words.append(" ")
            words.append(text)
            self.i += 1
        return "".join(words) if words else None

    def dot_atoms(self) -> str | None:
        if self.kind() != "atom":
            return None
        parts = [self.t[self.i][1]]
        self.i += 1
        while self.kind() == "." and not self.t[self.i][2]:
            nxt = self.peek(1)
            if nxt is None or nxt[0] != "atom" or nxt[2]:
                return None
            parts.append(nxt[1])
            self.i += 2
        return ".".join(parts)

    def addr_spec(self, name: str, in_group: bool) -> _Mailbox | None:
        quoted = self.kind() == "qs"
        if quoted:
            local: str | None = self.t[self.i][1]
            self.i += 1
        else:
            local = self.dot_atoms()
        if local is None or self.kind() != "@" or self.t[self.i][2]:
            return None
        self.i += 1
        tok = self.peek()
        if tok is None or tok[2]:
            return None
        literal = tok[0] == "lit"
        if literal:
            domain: str | None = tok[1]
            self.i += 1
        else:
            domain = self.dot_atoms()
        if domain is None:
            return None
        return _Mailbox(name, local, domain, quoted, literal, in_group)

    def mailbox(self, in_group: bool) -> _Mailbox | None:
        start = self.i
        name = self.phrase()
        if self.kind() == "<":
            self.i += 1
            box = self.addr_spec(name or "", in_group)
            if box is None or self.kind() != ">":
                return None
            self.i += 1
            return box
        self.i = start
        return self.addr_spec("", in_group)


def _parse_address_list(value: str) -> _AddressList | None:
    """Mailboxes named by an address-list, or None if any of it is not RFC 5322."""
    tokens = _tokenize(value)
    if tokens is None:
        return None
    r = _Reader(tokens)
    result = _AddressList()
    expect_element = True
    while r.peek() is not None:
        if r.kind() == ",":
            if expect_element:
                result.empty_elements += 1
            r.i += 1
            expect_element = True
            continue
        if not expect_element:
            return None
        start = r.i
        r.phrase()
        if r.kind() == ":":  # group: display-name ":" [mailbox-list] ";"
            r.i += 1
            result.groups += 1
            need = True
            while r.kind() != ";":
                if r.peek() is None:
                    return None
                if r.kind() == ",":
                    r.i += 1
                    need = True
                    continue
                if not need:
                    return None
                box = r.mailbox(in_group=True)
                if box is None:
                    return None
                result.mailboxes.append(box)
                need = False
            r.i += 1
        else:
            r.i = start
            box = r.mailbox(in_group=False)
            if box is None:
                return None
            result.mailboxes.append(box)
        expect_element = False
    if expect_element and (result.mailboxes or result.groups):
        result.empty_elements += 1
    return result


def _display(box: _Mailbox, where: str, defects: _Defects) -> str:
    name = _one_line(_decode_words(box.name, where, defects))
    addr = _one_line(box.addr)
    if not name:
        return addr
    if any(c in _NAME_SPECIALS for c in name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{addr}>"


_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDR_BAD_CATEGORIES = ("C", "Z")  # controls, formats (zero-width, bidi), separators


def _strict_mailbox_ok(box: _Mailbox) -> bool:
    """The extra rules a sender address must meet to be certified."""
    if box.quoted_local or box.literal_domain:
        return False
    if "=?" in box.local or "=?" in box.domain:  # RFC 2047 5: no encoded words here
        return False
    if len(box.local.encode("utf-8")) > 64 or len(box.domain.encode("utf-8")) > 253:
        return False
    for c in box.local:
        if c >= "\x80" and unicodedata.category(c)[0] in _ADDR_BAD_CATEGORIES:
            return False
    for label in box.domain.split("."):
        if label.isascii():
            if not _LDH.fullmatch(label):
                return False
        elif (
            len(label) > 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c in "-" or c.isalnum() or unicodedata.category(c)[0] == "M" for c in label)
        ):
            return False
    return True


_GETADDRESSES_STRICT = "strict" in inspect.signature(email_utils.getaddresses).parameters
_REGISTRY = HeaderRegistry()
_TOLERATED_STDLIB_DEFECTS = (
    email_errors.NonASCIILocalPartDefect,
    email_errors.ObsoleteHeaderDefect,
)


# The From that nearly every client writes: "addr" or "Name Words <addr>", ASCII, with a
# dot-atom local part and a host name. Our parser and both stdlib parsers read it alike
# (a property test holds the shortcut to the full second opinion); asking them costs
# ~0.5 ms a message, a tenth of the gateway's CPU for a plain relay.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
PLAIN_ADDR_SPEC = rf"{_DOT_ATOM}@{_LDH.pattern}(?:\.{_LDH.pattern})*"
"""An ASCII addr-spec every parser reads alike: dot-atom local part, host-name domain
(a pattern, for the SMTP envelope's shortcut too)."""
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:[A-Za-z0-9]+[ \t]+)*<(?P<angle>{PLAIN_ADDR_SPEC})>|(?P<bare>{PLAIN_ADDR_SPEC}))[ \t]*"
)


def _stdlib_agrees(value: str, addr: str) -> bool:
    """Second opinion from both stdlib address parsers (only called on bounded input)."""
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain and "=?" not in value:  # encoded-word syntax: the slow path decides
        return (plain.group("angle") or plain.group("bare")) == addr
    return _stdlib_parsers_agree(value, addr)


def _stdlib_parsers_agree(value: str, addr: str) -> bool:
    # HeaderRegistry decodes encoded words in the display name and raises if one carries
    # CR LF, which says nothing about the address. "=_" has the same syntax as "=?"
    # (atext, qtext and ctext alike), and encoded words are refused in the addr-spec.
    value = value.replace("=?", "=_")
    try:
        if _GETADDRESSES_STRICT:
            pairs = email_utils.getaddresses([value], strict=True)  # type: ignore[call-arg]
        else:
            pairs = email_utils.getaddresses([value])
        if len(pairs) != 1 or pairs[0][1] != addr:
            return False
        header = _REGISTRY("From", value)
        addresses = header.addresses  # type: ignore[attr-defined]
        if len(addresses) != 1 or addresses[0].addr_spec != addr:
            return False
        if any(not isinstance(d, _TOLERATED_STDLIB_DEFECTS) for d in header.defects):
            return False
        return all(g.display_name is None for g in header.groups)  # type: ignore[attr-defined]
    except Exception:  # any stdlib failure means "not unambiguous"
        return False


def parse_single_mailbox(value: str) -> str | None:
    """The addr-spec if ``value`` names exactly one mailbox unambiguously, else None.

    ``value`` is an unfolded header value (RFC 5322 ``mailbox``). Refused: empty values,
    groups, lists (even with an empty second element), unbalanced brackets or quotes,
    CR, LF, NUL or other controls, comments nested deeper than 8, quoted local parts,
    domain literals, encoded words inside the address, malformed domains, and non-ASCII
    that is not a printable character (RFC 6532 UTF-8 local parts and domains are
    accepted). Our parser and both stdlib parsers must agree on the answer.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MAILBOX_CHARS:
        return None
    if "\ufffd" in value or _SURROGATE.search(value):
        return None  # bytes that were not UTF-8: not "clearly UTF-8" (RFC 6532)
    parsed = _parse_address_list(value)
    if parsed is None or parsed.groups or parsed.empty_elements or len(parsed.mailboxes) != 1:
        return None
    box = parsed.mailboxes[0]
    if not _strict_mailbox_ok(box):
        return None
    addr = box.addr
    return addr if _stdlib_agrees(value, addr) else None


def _from_addresses(values: list[bytes]) -> list[str]:
    """Addr-specs of all mailboxes of all From fields; [] if any field is unparseable."""
    result: list[str] = []
    for raw_value in values:
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            return []
        parsed = _parse_address_list(value)
        if parsed is None or not all(_strict_mailbox_ok(box) for box in parsed.mailboxes):
            return []
        addrs = [box.addr for box in parsed.mailboxes]
        if len(addrs) == 1 and not parsed.groups and parse_single_mailbox(value) != addrs[0]:
            return []
        result.extend(addrs)
    return result


def header_from_addresses(raw: bytes) -> list[str]:
    """Addr-specs of the mailboxes of every From field of ``raw``, in order.

    A message with two From fields, or one From naming two mailboxes, yields two
    entries, so a caller certifies only when the list has exactly one. If any From
    field cannot be parsed strictly, the answer is [] (not the parseable rest).
    """
    raw = bytes(raw)
    fields, _ = _read_headers(raw, 0, len(raw), frozenset({b"from"}), "", _Defects())
    return _from_addresses(fields.get("from", []))


def header_addresses(raw: bytes, names: tuple[str, ...] = ("to", "cc")) -> list[str] | None:
    """Addr-specs of every mailbox (group members included) of the ``names`` fields.

    None when any of those fields cannot be parsed strictly: a caller that delivers to
    these addresses must not guess at an address list it cannot read. Duplicates are
    kept, in header order.
    """
    raw = bytes(raw)
    wanted = frozenset(name.encode("ascii") for name in names)
    fields, _ = _read_headers(raw, 0, len(raw), wanted, "", _Defects())
    result: list[str] = []
    for name in names:
        for raw_value in fields.get(name, []):
            try:
                value = raw_value.decode("utf-8")
            except UnicodeDecodeError:
                return None
            parsed = _parse_address_list(value)
            if parsed is None or len(result) + len(parsed.mailboxes) > MAX_ADDRESSES:
                return None
            result.extend(box.addr for box in parsed.mailboxes)
    return result


# ---------------------------------------------------------------------------
# The summary


@dataclass
class _Leaf:
    where: str
    content_type: str
    params: dict[str, str]
    data: bytes
    truncated_input: bool


def _where(section: str) -> str:
    return f"in part {section}" if section else "in the message"


def _address_field(name: str, values: list[bytes], defects: _Defects) -> list[str]:
    """Display strings for an address field; raw text when it does not parse."""
    shown: list[str] = []
    total = 0
    where = f"in the {name} header"
    for raw_value in values:
        text = _header_str(raw_value, name, defects)
        parsed = _parse_address_list(text)
        if parsed is None:
            defects.add(f"{name} header could not be parsed strictly: shown as written")
            total += 1
            literal = _one_line(_decode_words(text, where, defects))
            if literal and len(shown) < MAX_ADDRESSES:
                shown.append(_cut(literal, MAX_NAME_CHARS, f"{name} header", defects))
            continue
        total += len(parsed.mailboxes)
        for box in parsed.mailboxes[: MAX_ADDRESSES - len(shown)]:
            display = _display(box, where, defects)
            shown.append(_cut(display, MAX_NAME_CHARS, f"{name} address", defects))
    if len(values) > 1:
        defects.add(f"{len(values)} {name} headers")
    if total > MAX_ADDRESSES:
        defects.add(f"{name} lists {total} addresses: only the first {MAX_ADDRESSES} shown")
    return shown


def _single_field(fields: dict[str, list[bytes]], name: str, label: str, defects: _Defects) -> str:
    values = fields.get(name, [])
    if not values:
        return ""
    if len(values) > 1:
        defects.add(f"{len(values)} {label} headers: the first is shown")
    text = _one_line(
        _decode_words(_header_str(values[0], label, defects), f"in the {label} header", defects)
    )
    return _cut(text, MAX_FIELD_CHARS, label, defects)


def _filename(headers: _PartHeaders, where: str, defects: _Defects) -> str:
    name = headers.disposition_params.get("filename") or headers.params.get("name") or ""
    name = _one_line(_decode_words(name, where, defects))
    return _cut(name, MAX_NAME_CHARS, f"file name {where}", defects) if name else ""


def _leaf_text(leaf: _Leaf, max_text: int, defects: _Defects) -> tuple[str, bool]:
    text = _decode_charset(leaf.data, leaf.params.get("charset"), leaf.where, defects)
    incomplete = leaf.truncated_input
    if leaf.content_type == "text/html":
        text, html_incomplete = _html_to_text(text, max_text, defects)
        incomplete = incomplete or html_incomplete
    text = _body_text(text).strip("\n")
    if len(text) > max_text:
        return text[:max_text], True
    return text, incomplete


def summarise(
    raw: bytes, max_text: int = 20000, max_parts: int = 10000, max_depth: int = 100
) -> MessageSummary:
    """Summarise ``raw`` (a complete RFC 5322 message) for its certificate.

    Never raises on the content of ``raw``: what cannot be read is listed in ``defects``.
    At most ``max_parts`` MIME entities (containers included) and ``max_depth`` levels of
    multipart nesting are examined; ``text`` holds at most ``max_text`` characters.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    if max_text < 0 or max_parts < 1 or max_depth < 0:
        raise ValueError("max_text and max_depth must be >= 0, max_parts >= 1")
    raw = bytes(raw)
    defects = _Defects()
    try:
        return _summarise(raw, max_text, max_parts, max_depth, defects)
    except Exception as exc:  # last resort; tests assert it never happens
        defects.add(f"internal error while examining the message ({type(exc).__name__})")
        return MessageSummary(
            sha256=sha256_hex(raw), size=len(raw), subject="", date="", message_id="",
            from_="", to=(), cc=(), from_addresses=(), attachments=(), text="",
            text_truncated=False, defects=defects.result(),
        )  # fmt: skip


def _summarise(
    raw: bytes, max_text: int, max_parts: int, max_depth: int, defects: _Defects
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
        wanted = _PART_FIELDS if section else _TOP_FIELDS
        fields, body_start = _read_headers(raw, start, end, wanted, where, defects)
        if wanted is _TOP_FIELDS:
            top = fields
        headers = _part_headers(fields, default_type, where, defects)
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
                split = _split_multipart(
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
        data = _decode_transfer(raw[body_start:end], headers.transfer_encoding, leaf_where, defects)
        filename = _filename(headers, leaf_where, defects)
        is_text_body = ctype in ("text/plain", "text/html")
        if headers.disposition not in ("", "inline") or filename or not is_text_body:
            attachments.append(Attachment(filename or UNNAMED, ctype, len(data), sha256_hex(data)))
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
    from_addresses = _from_addresses(top.get("from", []))
    if top.get("from") and not from_addresses:
        defects.add("the From header does not name its sender unambiguously")
    elif len(from_addresses) > 1:
        defects.add(f"From names {len(from_addresses)} mailboxes")
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
        from_=_cut(", ".join(from_shown), MAX_FIELD_CHARS, "From", defects),
        to=tuple(to),
        cc=tuple(cc),
        from_addresses=tuple(from_addresses),
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
