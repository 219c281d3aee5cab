"""Rewrite one recipient's copy of a message so that its opens and clicks can be followed.

In every inline ``text/html`` part, each ``<a href>`` and ``<area href>`` that holds an
absolute http(s) URL is pointed at ``{public_url}/c/{token}`` and a 1x1 image
``{public_url}/o/{token}`` is added before ``</body>`` (or ``</html>``, or at the end).
In inline ``text/plain`` parts, bare http(s) URLs are rewritten the same way. The
tokens come from the caller (``token_for(n)``, see :mod:`addendum.tokens`): link ``n``
is ``links[n - 1]``, the open pixel is link 0.

Standards: RFC 2045 and RFC 2046 (MIME structure, transfer encodings, line length),
RFC 5322 section 2.1.1 (998-octet lines), RFC 3986 (URL syntax), IDNA 2008 with
UTS #46 mapping as browsers apply it (the ``idna`` package that aiohttp's yarl uses;
Python's IDNA 2003 codec if it is missing), the WHATWG URL Standard (the leading and
trailing "C0 control or space" a browser strips from an href), and the HTML tokenizer
as implemented by :mod:`html.parser`.

Decisions worth knowing:

- **One index per distinct URL.** The same URL appearing twice (in the text and HTML
  alternatives, or twice in the HTML) gets one link number: a click says which
  address the recipient went to, which is what the evidence is about, and "every link
  clicked at once" (a scanner) is counted over distinct URLs.
- **Only what is certain is changed.** The MIME structure is walked as
  :mod:`certifier.message` walks it, with the readers of :mod:`certifier.mime` (same
  header, parameter and boundary readers, same bounds), so the parts rewritten are the
  parts the certificate shows as the text. Attachments (a disposition other than
  ``inline``, a file name, any other type), ``message/rfc822`` parts and everything
  inside them are never touched. A multipart whose boundary is missing, whose final
  boundary is missing, or that is nested deeper than 100 levels is left exactly as it
  is, with a note.
- **Splicing, not regenerating.** Only the bytes of the rewritten part bodies change
  (plus, rarely, that part's ``Content-Transfer-Encoding`` or ``charset``); headers,
  boundaries, preamble, epilogue and other parts stay byte-identical. Inside a part, the
  HTML is parsed with :class:`html.parser.HTMLParser`; only the value of each rewritten
  ``href`` (with its quotes) is replaced, by source offset, so the rest of the decoded
  HTML is identical. Links inside comments (Outlook's conditional comments included)
  are not links to a parser and stay as they are.
- **Read back before use.** The rewritten message is walked again: if any MIME entity
  changed or a rewritten body no longer reads back whole (a quoted-printable soft line
  break can start a line with a boundary that the original encoding had hidden), the
  message is returned unchanged, with a note.
- **Charsets.** A part is decoded with its declared charset (US-ASCII if none) when
  that decodes and re-encodes to the same bytes; otherwise, for ASCII-compatible
  charsets, as Latin-1, which round-trips any byte, and then links with non-ASCII
  characters are left alone (their meaning is unknown). The result is re-encoded with
  the same charset, or UTF-8 (with the ``charset`` parameter updated) if that charset
  cannot represent it.
- **Transfer encodings.** Quoted-printable and base64 parts are re-encoded in full
  (lines of at most 76 characters, the message's own line ends). 7bit and 8bit parts
  stay so while still valid (no NUL, 7bit is ASCII, lines at most 998 octets);
  otherwise they become quoted-printable and the header says so. Unknown encodings and
  undecodable base64 leave the part as it is.
- **Recorded URLs** (what the redirect will send the browser to) are exactly absolute
  ``http``/``https`` URLs: ASCII (non-ASCII hosts IDNA-encoded, other non-ASCII
  percent-encoded as UTF-8), no white space, control character or backslash, no user
  name before the host (``https://ok@evil.example``), at most 4096 characters. Leading
  and trailing white space and control characters are stripped first (as browsers do).
  A web link that does not meet that is left untouched and noted. ``mailto:``,
  ``javascript:``, ``data:``, ``cid:``, fragments and relative URLs are never web links
  and are left alone silently. Nothing is ever fetched.
- **Bounds:** 1000 MIME entities, 100 levels, 500 distinct links, 2,000,000 characters
  per part, 100 notes. What is beyond them is left as it is, with a note.

Errors: :func:`inject` never raises on the content of ``raw``: on an internal error
the input is returned unchanged with a note. It raises ``TypeError`` if ``raw`` is not
bytes-like and ``ValueError`` if ``public_url`` is not an absolute http(s) URL without
query or fragment or ``token_for`` returns something that is not a URL-safe token;
exceptions raised by ``token_for`` itself propagate.
"""

from __future__ import annotations

import binascii
import codecs
import html
import html.parser as _html_parser
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import quote

from certifier.copies import Edit, compact

# The MIME readers are shared with the certificate so both see the same parts.
from certifier.mime import (
    PART_FIELDS,
    Defects,
    one_line,
    part_headers,
    read_headers,
    split_multipart,
    split_semicolons,
)

__all__ = [
    "MAX_LINKS",
    "MAX_URL_CHARS",
    "Injection",
    "inject",
    "is_safe_redirect",
]

MAX_PARTS = 1000
MAX_DEPTH = 100
MAX_LINKS = 500
MAX_URL_CHARS = 4096
MAX_PART_CHARS = 2_000_000
MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF
_B64_LINE = 76  # RFC 2045 6.8
_NOTE_URL_CHARS = 120


@dataclass(frozen=True)
class Injection:
    """One recipient's rewritten copy.

    ``links[n - 1]`` is the URL recorded for link ``n``; ``parts_rewritten`` counts the
    MIME parts whose body changed; ``notes`` says, in plain English, what was left as it
    was and why. ``edits`` are the byte edits that make ``message`` from the input
    (:func:`certifier.copies.apply`; ascending, not overlapping, only the bytes that
    changed), so the copy can be rebuilt from the original; ``pixel`` says whether the
    open pixel was added; ``reencoded`` names each part (as the notes name it) whose
    transfer encoding or charset changed, with the new one.
    """

    message: bytes
    links: tuple[str, ...]
    parts_rewritten: int
    notes: tuple[str, ...]
    edits: tuple[Edit, ...] = ()
    pixel: bool = False
    reencoded: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------------
# URLs

_PRINTABLE_ASCII = re.compile(r"[!-~]+")  # no space, no controls, no DEL, ASCII only
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_C0_OR_SPACE = "".join(chr(c) for c in range(0x21))  # WHATWG "C0 control or space"
_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))  # quote() keeps these, encodes others
_WEB_SCHEME = re.compile(r"(?i)https?:")


def _port_ok(port: str) -> bool:
    return 0 < len(port) <= 5 and port.isascii() and port.isdigit() and 0 < int(port) <= 65535


def _authority_ok(authority: str) -> bool:
    """A host (name, IPv4 or bracketed IPv6) with an optional port; no user info."""
    if not authority or "@" in authority or "%" in authority:
        return False
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return False
        try:
            ipaddress.IPv6Address(authority[1:close])
        except ValueError:
            return False
        rest = authority[close + 1 :]
        return not rest or (rest[0] == ":" and _port_ok(rest[1:]))
    host, colon, port = authority.partition(":")
    if colon and not _port_ok(port):
        return False
    if not host or len(host) > 253:
        return False
    labels = host.split(".")
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # a fully qualified name may end with a dot
    return all(_HOST_LABEL.fullmatch(label) for label in labels)


def _split_web_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, authority, rest) of an ``http://`` or ``https://`` URL, else None."""
    lowered = url[:8].lower()
    if lowered.startswith("http://"):
        scheme, after = url[:4], url[7:]
    elif lowered.startswith("https://"):
        scheme, after = url[:5], url[8:]
    else:
        return None
    cut = len(after)
    for sep in "/?#":
        i = after.find(sep)
        if 0 <= i < cut:
            cut = i
    return scheme, after[:cut], after[cut:]


def is_safe_redirect(url: object) -> bool:
    """True if ``url`` is what a tracking redirect may send a browser to.

    An absolute ``http://`` or ``https://`` URL of printable ASCII (no space, control
    character or backslash), with a host, an optional port and no user info, at most
    4096 characters. The endpoint checks the stored URL again with this before answering.
    """
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL_CHARS:
        return False
    if not _PRINTABLE_ASCII.fullmatch(url) or "\\" in url:
        return False
    parts = _split_web_url(url)
    return parts is not None and _authority_ok(parts[1])


def _idna(host: str) -> str:
    """The ASCII form of a host name, as a browser computes it (UTS #46, IDNA 2008)."""
    try:
        import idna
    except ImportError:  # pragma: no cover - idna comes with aiohttp (yarl)
        return host.encode("idna").decode("ascii")
    return str(idna.encode(host, uts46=True).decode("ascii"))


def _ascii_url(url: str) -> str | None:
    """``url`` with an IDNA host and the rest percent-encoded as UTF-8; None if impossible."""
    parts = _split_web_url(url)
    if parts is None:
        return None
    scheme, authority, rest = parts
    if not authority.isascii():
        if "@" in authority or "[" in authority:
            return None
        host, colon, port = authority.rpartition(":")
        if not colon or not (port.isascii() and port.isdigit()):
            host, colon, port = authority, "", ""
        try:
            host = _idna(host)
        except (UnicodeError, ValueError):
            return None
        authority = host + colon + port
    try:
        rest = quote(rest, safe=_URL_SAFE)
    except (UnicodeError, ValueError):
        return None
    return f"{scheme}://{authority}{rest}"


def _cut_url(url: str) -> str:
    shown = one_line(url)
    return shown if len(shown) <= _NOTE_URL_CHARS else shown[:_NOTE_URL_CHARS] + "\u2026"


def _recordable(value: str, non_ascii_known: bool) -> tuple[str | None, str | None]:
    """(URL to record, None), (None, why not) for a web link, or (None, None) otherwise."""
    url = value.strip(_C0_OR_SPACE)
    if not _WEB_SCHEME.match(url):
        return None, None  # mailto:, javascript:, data:, cid:, relative...: not a web link
    if len(url) > MAX_URL_CHARS:
        return None, f"is longer than {MAX_URL_CHARS} characters"
    if "\r" in url or "\n" in url:
        return None, "contains a line break"
    if any(c <= " " or c == "\x7f" for c in url):
        return None, "contains white space or a control character"
    if "\\" in url:
        return None, "contains a backslash"
    parts = _split_web_url(url)
    if parts is None:
        return None, "is not an absolute http(s) URL"
    if "@" in parts[1]:
        return None, "names a user before the host (user@host), which can disguise the host"
    if not url.isascii():
        if not non_ascii_known:
            return None, "has non-ASCII characters in a part whose charset is unknown"
        encoded = _ascii_url(url)
        if encoded is None:
            return None, "has a host name that cannot be written in ASCII (IDNA)"
        url = encoded
    if not is_safe_redirect(url):
        return None, "is not a well-formed absolute http(s) URL"
    scheme = parts[0]  # "http" or "https" in any case, same length once encoded
    return scheme.lower() + url[len(scheme) :], None


# ---------------------------------------------------------------------------
# Finding links in HTML, by source offset

_TAGFIND = getattr(
    _html_parser, "tagfind_tolerant", re.compile(r"([a-zA-Z][^\t\n\r\f />\x00]*)(?:\s|/(?!>))*")
)
_ATTRFIND = getattr(
    _html_parser,
    "attrfind_tolerant",
    re.compile(
        r"((?<=[\'\"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*"
        r"(\'[^\']*\'|\"[^\"]*\"|(?![\'\"])[^>\s]*))?(?:\s|/(?!>))*"
    ),
)
_LINK_TAGS = frozenset({"a", "area"})
_COMMENT_CLOSE = getattr(_html_parser, "commentclose", re.compile(r"--\s*>"))


def _defuse_same_length(text: str) -> str:
    """Blank out each "<" that cannot open a tag (no ">" before the next "<").

    Comments are kept whole (they may contain tags); after an unclosed comment every
    "<" is blanked, since a browser reads the rest as comment. html.parser rescans from
    such a "<" to the end of its input, which is quadratic on input like ``"<a" * n``
    (the certificate's HTML to text conversion in :mod:`certifier.message` escapes them
    for the same reason). Replacing the character by a space keeps every offset, so
    positions found in the copy are positions in the original.
    """
    out: list[str] = []
    pos = 0
    gt = -1
    n = len(text)
    while True:
        lt = text.find("<", pos)
        if lt < 0:
            out.append(text[pos:])
            return "".join(out)
        if text.startswith("<!--", lt):
            # A comment may hold tags; it ends where html.parser ends it, or never.
            close = _COMMENT_CLOSE.search(text, lt + 4)
            if close is None:
                out.append(text[pos:lt])
                out.append(text[lt:].replace("<", " "))
                return "".join(out)
            out.append(text[pos : close.end()])
            pos = close.end()
            continue
        if gt != n and gt <= lt:
            gt = text.find(">", lt + 1)
            if gt < 0:
                gt = n
        nxt = text.find("<", lt + 1, gt if gt < n else n)
        if gt == n or nxt >= 0:
            out.append(text[pos:lt])
            out.append(" ")
            pos = lt + 1
        else:
            out.append(text[pos : gt + 1])
            pos = gt + 1


@dataclass
class _Href:
    start: int  # offsets in the decoded part text of the attribute value, quotes included
    end: int
    value: str  # unescaped, as the parser (and a browser) reads it


class _LinkFinder(HTMLParser):
    """Offsets of the first ``href`` of each ``<a>``/``<area>`` and of the last ``</body>``."""

    def __init__(self, original: str, parsed: str) -> None:
        super().__init__(convert_charrefs=True)
        self._original = original
        self._line_starts = [0]
        find = parsed.find
        i = find("\n")
        while i >= 0:
            self._line_starts.append(i + 1)
            i = find("\n", i + 1)
        self.hrefs: list[_Href] = []
        self.unlocated = 0
        self.body_end: int | None = None
        self.html_end: int | None = None

    def _offset(self) -> int:
        line, column = self.getpos()
        return self._line_starts[line - 1] + column

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _LINK_TAGS or not any(name == "href" for name, _ in attrs):
            return
        href = self._locate(attrs)
        if href is None:
            self.unlocated += 1
        elif href.value:
            self.hrefs.append(href)

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self._offset()
        elif tag == "html":
            self.html_end = self._offset()

    def _locate(self, attrs: list[tuple[str, str | None]]) -> _Href | None:
        """Where the first href value is in the source, checked against the parser's view."""
        tag_text = self.get_starttag_text()
        if not tag_text:
            return None
        start = self._offset()
        if not self._original.startswith(tag_text, start):
            return None
        match = _TAGFIND.match(tag_text, 1)
        if match is None:
            return None
        k = match.end()
        found: list[tuple[str, str | None, int, int]] = []
        while k < len(tag_text):
            m = _ATTRFIND.match(tag_text, k)
            if not m:
                break
            name, rest, value = m.group(1, 2, 3)
            if rest:
                vstart, vend = m.span(3)
                if value[:1] == "'" == value[-1:] or value[:1] == '"' == value[-1:]:
                    value = value[1:-1]
                if value:
                    value = html.unescape(value)
                found.append((name.lower(), value, vstart, vend))
            else:
                found.append((name.lower(), None, -1, -1))
            k = m.end()
        # Our reading must be the parser's reading, attribute by attribute.
        if [(n, v) for n, v, _, _ in found] != list(attrs):
            return None
        for name, value, vstart, vend in found:
            if name == "href":  # browsers use the first of repeated attributes
                if value is None or vstart < 0:
                    return None
                return _Href(start + vstart, start + vend, value)
        return None


# ---------------------------------------------------------------------------
# Finding URLs in plain text

_TEXT_URL = re.compile(r"(?<![A-Za-z0-9+.\-])https?://[^\s<>\"'`\x00-\x1f\x7f]+", re.IGNORECASE)
_TRAILING = ".,;:!?*'\""
_CLOSERS = {")": "(", "]": "[", "}": "{"}


def _trim_text_url(url: str) -> str:
    """Drop sentence punctuation and unbalanced closing brackets from a URL's end."""
    counts = {c: url.count(c) for c in "()[]{}"}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _TRAILING:
            end -= 1
        elif last in _CLOSERS and counts[last] > counts[_CLOSERS[last]]:
            counts[last] -= 1
            end -= 1
        else:
            break
    return url[:end]


# ---------------------------------------------------------------------------
# Charsets and transfer encodings

_UNSAFE_CODECS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
)
_ASCII_LABELS = frozenset({"", "us-ascii", "ascii", "default", "x-unknown", "unknown-8bit"})
_ASCII_PROBE = '<a href="http://x.example/?a=1#b">\r\n'


def _codec(charset: str | None) -> str | None:
    """Python codec for a MIME charset label; "ascii" if none; None if unknown."""
    label = (charset or "").strip().strip("\"'").lower()
    if label in _ASCII_LABELS:
        return "ascii"
    if len(label) > 40 or not label.isascii():
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _UNSAFE_CODECS:
        return None
    return info.name


def _ascii_compatible(codec: str) -> bool:
    try:
        return _ASCII_PROBE.encode(codec) == _ASCII_PROBE.encode("ascii")
    except Exception:  # any codec failure: treat as incompatible
        return False


@dataclass
class _Text:
    text: str
    codec: str
    non_ascii_known: bool  # False when decoded as Latin-1 for want of a better charset


def _strict_round_trip(data: bytes, codec: str) -> str | None:
    """``data`` decoded strictly, if encoding the text again gives the same bytes."""
    try:
        text = data.decode(codec)
        return text if text.encode(codec) == data else None
    except Exception:  # any codec failure means "not this charset"
        return None


def _decode_text(data: bytes, charset: str | None) -> _Text | None:
    codec = _codec(charset)
    if codec is not None:
        text = _strict_round_trip(data, codec)
        if text is not None:
            return _Text(text, codec, True)
    if codec is None or _ascii_compatible(codec):
        return _Text(data.decode("latin-1"), "latin-1", False)
    return None


def _decode_transfer(body: bytes, cte: str) -> bytes | None:
    if cte in ("", "7bit", "8bit", "binary"):
        return body
    if cte == "base64":
        try:
            return binascii.a2b_base64(body.translate(None, b" \t\r\n"), strict_mode=True)
        except (binascii.Error, ValueError):
            return None
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    return None


def _identity_ok(data: bytes, cte: str) -> bool:
    """Whether ``data`` may be sent as is under a 7bit, 8bit or binary label."""
    if cte == "binary":
        return True
    if b"\x00" in data or (cte in ("", "7bit") and not data.isascii()):
        return False
    return all(len(line.rstrip(b"\r")) <= MAX_LINE for line in data.split(b"\n"))


def _qp_encode(data: bytes, eol: bytes) -> bytes:
    """Quoted-printable (RFC 2045 6.7): hard breaks at LF/CRLF, a bare CR encoded."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    encoded = [
        binascii.b2a_qp(line, quotetabs=False, istext=False, header=False).replace(
            b"=\n", b"=" + eol
        )
        for line in lines
    ]
    return eol.join(encoded)


def _b64_encode(data: bytes, eol: bytes, final_eol: bool) -> bytes:
    text = binascii.b2a_base64(data, newline=False)
    lines = [text[i : i + _B64_LINE] for i in range(0, len(text), _B64_LINE)]
    return eol.join(lines) + (eol if final_eol and lines else b"")


# ---------------------------------------------------------------------------
# Header fields of one part, by offset


def _fields(raw: bytes, start: int, stop: int) -> list[tuple[bytes, int, int]]:
    """(lower-case name, start, end with its line end) of each field in [start, stop)."""
    out: list[tuple[bytes, int, int]] = []
    pos = start
    while pos < stop:
        nl = raw.find(b"\n", pos, stop)
        line_end = stop if nl < 0 else nl + 1
        if raw[pos] in (0x20, 0x09) and out:
            name, field_start, _ = out[-1]
            out[-1] = (name, field_start, line_end)
        else:
            colon = raw.find(b":", pos, line_end)
            name = raw[pos:colon].rstrip(b" \t").lower() if colon > pos else b""
            out.append((name, pos, line_end))
        pos = line_end
    return out


def _blank_line(raw: bytes, start: int, body_start: int) -> int | None:
    """Offset of the blank line that ends the header section, if there is one."""
    if body_start - start >= 2 and raw[body_start - 2 : body_start] == b"\r\n":
        blank = body_start - 2
    elif body_start - start >= 1 and raw[body_start - 1 : body_start] == b"\n":
        blank = body_start - 1
    else:
        return None
    if blank == start or raw[blank - 1 : blank] == b"\n":
        return blank
    return None


def _with_utf8_charset(field: bytes, eol: bytes) -> bytes:
    """A Content-Type field with its charset parameter(s) replaced by ``charset=utf-8``."""
    name, _, value = field.decode("latin-1").partition(":")
    value = value.rstrip("\r\n")
    segments = split_semicolons(value)
    kept = [segments[0]]
    for segment in segments[1:]:
        param = segment.split("=", 1)[0].strip().lower()
        if param.split("*", 1)[0] != "charset":
            kept.append(segment)
    text = f"{name}:{';'.join(kept).rstrip()}; charset=utf-8"
    return text.encode("latin-1") + eol


# ---------------------------------------------------------------------------
# The walk


@dataclass
class _Leaf:
    section: str
    start: int
    blank: int  # offset of the blank line ending the header section
    body_start: int
    end: int
    ctype: str
    charset: str | None
    cte: str


@dataclass
class _Plan:
    leaf: _Leaf
    text: _Text
    replacements: list[tuple[int, int, int]]  # (start, end, link number) in the text
    pixel_at: int | None


def _where(section: str) -> str:
    return f"part {section}" if section else "the message body"


def _walk(
    raw: bytes, rewrite_text: bool, notes: Defects
) -> tuple[list[_Leaf], list[tuple[str, ...]]]:
    """The parts to rewrite, and the outline of every MIME entity examined."""
    leaves: list[_Leaf] = []
    outline: list[tuple[str, ...]] = []
    stack: list[tuple[int, int, str, int, str]] = [(0, len(raw), "", 0, "text/plain")]
    examined = 0
    while stack:
        if examined >= MAX_PARTS:
            notes.add(f"more than {MAX_PARTS} MIME parts: the rest left as they are")
            break
        start, end, section, depth, default_type = stack.pop()
        examined += 1
        where = _where(section)
        scratch = Defects()  # defects are the certificate's business, not ours
        fields, body_start = read_headers(raw, start, end, PART_FIELDS, where, scratch)
        headers = part_headers(fields, default_type, where, scratch)
        ctype = headers.content_type
        named = headers.disposition_params.get("filename") or headers.params.get("name") or ""
        outline.append((section, ctype, headers.disposition, named))
        if ctype.startswith("multipart/"):
            boundary = headers.params.get("boundary", "")
            if not boundary:
                notes.add(f"multipart without a boundary in {where}: left as it is")
                continue
            if depth >= MAX_DEPTH:
                notes.add(f"MIME nesting deeper than {MAX_DEPTH} levels: left as it is")
                continue
            limit = max(MAX_PARTS - examined - len(stack) + 1, 1)
            split = split_multipart(
                raw, body_start, end, boundary.encode("utf-8", "surrogatepass"), limit
            )
            if not split.found_start:
                notes.add(f"MIME boundary never found in {where}: left as it is")
                continue
            if not split.closed and not split.cut:
                notes.add(f"missing final MIME boundary in {where}: left as it is")
                continue
            if split.cut:
                notes.add(f"more than {MAX_PARTS} MIME parts: the rest left as they are")
            child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            for number in range(len(split.children), 0, -1):
                child_start, child_end = split.children[number - 1]
                child = f"{section}.{number}" if section else str(number)
                stack.append((child_start, child_end, child, depth + 1, child_type))
            continue
        if ctype not in ("text/html", "text/plain") or (ctype == "text/plain" and not rewrite_text):
            continue
        if headers.disposition not in ("", "inline") or named:
            continue  # an attachment: never changed
        blank = _blank_line(raw, start, body_start)
        if blank is None:
            notes.add(f"header section of {where} not ended by a blank line: left as it is")
            continue
        leaves.append(
            _Leaf(
                section,
                start,
                blank,
                body_start,
                end,
                ctype,
                headers.params.get("charset"),
                headers.transfer_encoding,
            )
        )
    return leaves, outline


class _Links:
    """Distinct recorded URLs, numbered from 1 in order of first appearance."""

    def __init__(self, notes: Defects) -> None:
        self.numbers: dict[str, int] = {}
        self.notes = notes

    def number(self, value: str, known: bool, where: str) -> int | None:
        url, problem = _recordable(value, known)
        if problem is not None:
            self.notes.add(f"link {_cut_url(value)!r} in {where} not tracked: it {problem}")
            return None
        if url is None:
            return None
        if url not in self.numbers:
            if len(self.numbers) >= MAX_LINKS:
                self.notes.add(f"more than {MAX_LINKS} links: the rest not tracked")
                return None
            self.numbers[url] = len(self.numbers) + 1
        return self.numbers[url]


def _plan_html(leaf: _Leaf, text: _Text, links: _Links, notes: Defects) -> _Plan | None:
    where = _where(leaf.section)
    parsed = _defuse_same_length(text.text)
    finder = _LinkFinder(text.text, parsed)
    try:
        finder.feed(parsed)
        finder.close()
    except Exception:  # html.parser may assert on odd markup
        notes.add(f"the HTML of {where} could not be parsed: left as it is")
        return None
    if finder.unlocated:
        notes.add(
            f"{finder.unlocated} link(s) in {where} could not be located exactly: not tracked"
        )
    replacements: list[tuple[int, int, int]] = []
    for href in finder.hrefs:
        number = links.number(href.value, text.non_ascii_known, where)
        if number is not None:
            replacements.append((href.start, href.end, number))
    if finder.body_end is not None:
        pixel_at = finder.body_end
    elif finder.html_end is not None:
        pixel_at = finder.html_end
    else:
        pixel_at = len(text.text.rstrip(" \t\r\n"))
    return _Plan(leaf, text, replacements, pixel_at)


def _plan_text(leaf: _Leaf, text: _Text, links: _Links) -> _Plan:
    where = _where(leaf.section)
    replacements: list[tuple[int, int, int]] = []
    for m in _TEXT_URL.finditer(text.text):
        url = _trim_text_url(m.group(0))
        number = links.number(url, text.non_ascii_known, where)
        if number is not None:
            replacements.append((m.start(), m.start() + len(url), number))
    return _Plan(leaf, text, replacements, None)


def _plan(leaf: _Leaf, raw: bytes, links: _Links, notes: Defects) -> _Plan | None:
    where = _where(leaf.section)
    data = _decode_transfer(raw[leaf.body_start : leaf.end], leaf.cte)
    if data is None:
        if leaf.cte == "base64":
            notes.add(f"base64 in {where} could not be decoded: left as it is")
        else:
            notes.add(f"unknown transfer encoding in {where}: left as it is")
        return None
    text = _decode_text(data, leaf.charset)
    if text is None:
        notes.add(f"text of {where} could not be decoded in its charset: left as it is")
        return None
    if len(text.text) > MAX_PART_CHARS:
        notes.add(f"{where} is longer than {MAX_PART_CHARS} characters: left as it is")
        return None
    if leaf.ctype == "text/html":
        return _plan_html(leaf, text, links, notes)
    return _plan_text(leaf, text, links)


def _apply(plan: _Plan, base: str, tokens: dict[int, str]) -> str:
    """The part's new text: replacements spliced in by offset, the pixel inserted."""
    text = plan.text.text
    html_part = plan.leaf.ctype == "text/html"
    edits: list[tuple[int, int, str]] = []
    for start, end, number in plan.replacements:
        url = f"{base}/c/{tokens[number]}"
        edits.append((start, end, f'"{html.escape(url)}"' if html_part else url))
    if plan.pixel_at is not None:
        src = html.escape(f"{base}/o/{tokens[0]}")
        edits.append(
            (plan.pixel_at, plan.pixel_at, f'<img src="{src}" width="1" height="1" alt="">')
        )
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[str] = []
    pos = 0
    for start, end, new in edits:
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _part_edits(
    raw: bytes, plan: _Plan, new_text: str, reencoded: list[tuple[str, str]]
) -> list[tuple[int, int, bytes]]:
    """Byte edits (start, end, replacement) for one rewritten part: the body first, then
    maybe header fields (each such change named in ``reencoded``)."""
    leaf = plan.leaf
    eol = raw[leaf.blank : leaf.body_start]
    try:
        data = new_text.encode(plan.text.codec)
        utf8 = False
    except UnicodeError:
        data = new_text.encode("utf-8")
        utf8 = True
    old_body = raw[leaf.body_start : leaf.end]
    cte = leaf.cte
    if cte == "base64":
        body = _b64_encode(data, eol, old_body.endswith(b"\n"))
    elif cte == "quoted-printable":
        body = _qp_encode(data, eol)
    elif _identity_ok(data, cte):
        body = data
    else:
        cte = "quoted-printable"
        body = _qp_encode(data, eol)
    edits = [(leaf.body_start, leaf.end, body)]
    fields = _fields(raw, leaf.start, leaf.blank)
    if cte != leaf.cte:
        reencoded.append((_where(leaf.section), "quoted-printable"))
        new_field = b"Content-Transfer-Encoding: quoted-printable" + eol
        cte_fields = [f for f in fields if f[0] == b"content-transfer-encoding"]
        if cte_fields:
            edits.append((cte_fields[0][1], cte_fields[0][2], new_field))
        else:
            edits.append((leaf.blank, leaf.blank, new_field))
    if utf8:
        reencoded.append((_where(leaf.section), "utf-8"))
        ct_fields = [f for f in fields if f[0] == b"content-type"]
        if ct_fields:
            _, f_start, f_end = ct_fields[0]
            edits.append((f_start, f_end, _with_utf8_charset(raw[f_start:f_end], eol)))
        else:
            edits.append((leaf.blank, leaf.blank, b"Content-Type: text/plain; charset=utf-8" + eol))
    return edits


def _splice(raw: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[bytes] = []
    pos = 0
    for start, end, new in edits:
        out.append(raw[pos:start])
        out.append(new)
        pos = end
    out.append(raw[pos:])
    return b"".join(out)


_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,512}")


def _check_base(public_url: str) -> str:
    if not isinstance(public_url, str):
        raise TypeError("public_url must be a string")
    base = public_url.rstrip("/")
    parts = _split_web_url(base)
    if not is_safe_redirect(base) or parts is None or "?" in base or "#" in base:
        raise ValueError("public_url must be an absolute http(s) URL without query or fragment")
    return base


def inject(
    raw: bytes, public_url: str, token_for: Callable[[int], str], rewrite_text: bool = True
) -> Injection:
    """Rewrite links and add the open pixel in one recipient's copy of ``raw``.

    ``token_for(n)`` gives the token for link ``n`` (0 = the open pixel). See the module
    docstring for what is changed, what is left alone and why.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError("raw must be bytes")
    raw = bytes(raw)
    base = _check_base(public_url)
    notes = Defects()
    try:
        links = _Links(notes)
        plans = []
        leaves, outline = _walk(raw, rewrite_text, notes)
        for leaf in leaves:
            plan = _plan(leaf, raw, links, notes)
            if plan is not None and (plan.replacements or plan.pixel_at is not None):
                plans.append(plan)
    except Exception as exc:  # last resort; tests assert it never happens
        notes.add(f"internal error while reading the message ({type(exc).__name__}): not changed")
        return Injection(raw, (), 0, notes.result())
    if not plans:
        return Injection(raw, (), 0, notes.result())
    # Outside the guard: a failing token_for is the caller's error and must be seen.
    needed = {number for plan in plans for _, _, number in plan.replacements}
    if any(plan.pixel_at is not None for plan in plans):
        needed.add(0)
    tokens: dict[int, str] = {}
    for number in sorted(needed):
        token = token_for(number)
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise ValueError(f"token_for({number}) did not return a URL-safe token")
        tokens[number] = token
    try:
        edits: list[tuple[int, int, bytes]] = []
        bodies: dict[str, bytes] = {}
        reencoded: list[tuple[str, str]] = []
        for plan in plans:
            part_edits = _part_edits(raw, plan, _apply(plan, base, tokens), reencoded)
            bodies[plan.leaf.section] = part_edits[0][2]
            edits.extend(part_edits)
        message = _splice(raw, edits)
        # A re-encoded body must not create a boundary line (a soft line break can start a
        # line with "--boundary" that the original encoding hid): read the result again
        # and check that every part is still there and each new body is read whole.
        new_leaves, new_outline = _walk(message, rewrite_text, Defects())
        found = {leaf.section: message[leaf.body_start : leaf.end] for leaf in new_leaves}
        same = new_outline == outline and all(
            found.get(section) == body for section, body in bodies.items()
        )
    except Exception as exc:  # last resort; tests assert it never happens
        notes.add(f"internal error while rewriting the message ({type(exc).__name__}): not changed")
        return Injection(raw, (), 0, notes.result())
    if not same:
        notes.add("rewriting would have changed the MIME structure: the message is left as it is")
        return Injection(raw, (), 0, notes.result())
    # _splice sorted the edits; the recipe keeps only the bytes that changed.
    spliced = compact(raw, (Edit(start, end - start, new) for start, end, new in edits))
    return Injection(
        message,
        tuple(links.numbers),
        len(plans),
        notes.result(),
        tuple(spliced),
        any(plan.pixel_at is not None for plan in plans),
        tuple(reencoded),
    )
