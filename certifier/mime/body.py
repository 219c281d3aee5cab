"""MIME bodies: multipart boundaries and content transfer encodings.

Standards: RFC 2046 section 5.1 (multipart bodies: the CRLF before a delimiter belongs
to the delimiter, transport padding after it), RFC 2045 section 6 (``7bit``, ``8bit``,
``binary``, ``quoted-printable``, ``base64``).

Decisions worth knowing: base64 is decoded strictly (only line breaks and spaces are
ignored); when it does not decode, :func:`decode_transfer` returns the body as sent and
a defect says so, so a hash is never taken of a guessed decoding. A multipart is split
by searching only its own delimiter inside its own byte range, so an inner part can
never extend past an outer delimiter.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass, field

from certifier.mime.text import Defects, one_line

__all__ = ["Split", "decode_transfer", "split_multipart"]


@dataclass
class Split:
    """The child byte ranges of one multipart body, and how its delimiters were found."""

    children: list[tuple[int, int]] = field(default_factory=list)
    found_start: bool = False
    closed: bool = False
    cut: bool = False


def split_multipart(raw: bytes, start: int, end: int, boundary: bytes, limit: int) -> Split:
    """Child byte ranges of a multipart body, at most ``limit`` of them.

    Only this entity's own delimiter is searched, inside its own range, so an inner part
    can never extend past an outer delimiter. The search is one compiled regex with a
    literal prefix: lines that merely start like the delimiter are skipped in C.
    """
    result = Split()
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


# -- transfer encodings (RFC 2045 section 6)

_B64_SPACE = b" \t\r\n"
_QP_BAD_ESCAPE = re.compile(rb"=(?![0-9A-Fa-f]{2}|[ \t]*\r?\n|[ \t]*\Z)")


def decode_transfer(body: bytes, cte: str, where: str, defects: Defects) -> bytes:
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
    defects.add(f"unknown transfer encoding {one_line(cte)[:40]!r} {where}: hashed as sent")
    return body
