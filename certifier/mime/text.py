"""Text out of mail: charsets, RFC 2047 encoded words, and strings safe to show.

Standards: RFC 2045 and RFC 2046 (the ``charset`` parameter), RFC 2047 (encoded words,
decoded for display only; RFC 2231 section 5 adds a language to their charset), the
WHATWG Encoding Standard (what mailers mean by "iso-8859-1").

Decisions worth knowing:

- Text in an unknown, undeclared or mislabelled charset is shown as UTF-8 if it is valid
  UTF-8, else as Windows-1252 (the superset of Latin-1 that mailers and the WHATWG
  Encoding Standard actually use for "iso-8859-1"), with U+FFFD for undecodable bytes.
- :func:`one_line` replaces control characters, line and paragraph separators and
  bidirectional overrides by spaces, so an encoded word carrying CR LF cannot start a
  new line in a certificate or a log. :func:`body_text` keeps line breaks and tabs.
  No output string contains a surrogate.
- What cannot be read is never an exception: it is a plain-English sentence added to a
  :class:`Defects` list, which is bounded (``MAX_DEFECTS``).
"""

from __future__ import annotations

import binascii
import codecs
import re

__all__ = [
    "MAX_DEFECTS",
    "SURROGATE",
    "Defects",
    "body_text",
    "codec_for",
    "cut",
    "decode_charset",
    "decode_words",
    "no_surrogates",
    "one_line",
]

MAX_DEFECTS = 100


class Defects:
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


SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates.
_LINE_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BODY_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def no_surrogates(text: str) -> str:
    return SURROGATE.sub("\ufffd", text)


def one_line(text: str) -> str:
    """A string safe to show on one line: no controls, no bidi tricks, no surrogates."""
    return _LINE_UNSAFE.sub(" ", no_surrogates(text)).strip()


def cut(text: str, limit: int, what: str, defects: Defects) -> str:
    if len(text) <= limit:
        return text
    defects.add(f"{what} longer than {limit} characters: cut")
    return text[:limit] + "\u2026"


def body_text(text: str) -> str:
    text = no_surrogates(text).replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\u2028", "\n").replace("\u2029", "\n")
    return _BODY_UNSAFE.sub(" ", text)


# -- charsets ------------------------------------------------------------

# Decoders that are not plain charsets: they interpret escapes, or map host names.
_UNSAFE_CODECS = frozenset(
    {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"}
)
_FALLBACK_LABELS = frozenset({"us-ascii", "ascii", "unknown-8bit", "x-unknown", "default"})
_LATIN1_LABELS = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "iso_8859-1"})


def codec_for(charset: str) -> str | None:
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
        return no_surrogates(data.decode(codec, "replace"))
    except Exception:  # a codec that fails even with "replace" counts as unknown
        return None


def decode_charset(data: bytes, charset: str | None, where: str, defects: Defects) -> str:
    """Decode ``data`` in ``charset``; unknown charsets fall back as documented."""
    if charset:
        label = charset.strip().strip("\"'").lower()
        if label not in _FALLBACK_LABELS:
            codec = codec_for(label)
            decoded = _decode_with(data, codec) if codec is not None else None
            if decoded is not None:
                return decoded
            shown = one_line(charset)[:40]
            defects.add(f"unknown charset {shown!r} {where}: shown as UTF-8 or Windows-1252")
    return no_surrogates(_decode_fallback(data))


# -- RFC 2047 encoded words, linear time (no backtracking beyond the next "?")

_ENCODED_WORD = re.compile(r"=\?([!->@-~]{1,100})\?([bBqQ])\?([!->@-~]*)\?=")
_ONLY_SPACE = re.compile(r"[ \t\r\n]*")


def decode_words(text: str, where: str, defects: Defects) -> str:
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
            out.append(decode_charset(b"".join(piece[1]), piece[0], where, defects))
        else:
            out.append(piece)
    return "".join(out)
