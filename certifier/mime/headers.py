"""Header sections and structured header fields, read from the raw bytes.

Standards:

- RFC 5322 section 2.2: the header section, field names, unfolding (only the CRLF is
  removed), the blank line that ends it.
- RFC 6532: UTF-8 in header fields; other 8-bit bytes are read as Windows-1252 and
  reported.
- RFC 2045 section 5.1 and RFC 2231: ``main; name=value`` parameters, quoted strings,
  parameter continuations and charsets (``filename*0*=utf-8''...``).
- RFC 2045 section 5.2, RFC 2183: ``Content-Type`` (an unreadable one means the
  default, parameters too), ``Content-Disposition``, ``Content-Transfer-Encoding``.

:func:`read_headers` unfolds the fields it is asked for, for reading;
:func:`header_end`, :func:`header_fields` and :func:`field_name` cut a header section
into its fields byte for byte (folded lines and CRLF kept, the pieces join back to the
input), for code that adds, removes or rewrites fields (the outgoing copy, the
reception intake).

Every reader is linear in its input and never recurses: ``email.parser`` and
``Message.get_param`` are not (see :mod:`certifier.mime`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from certifier.mime.text import Defects, decode_charset, one_line

__all__ = [
    "PART_FIELDS",
    "PartHeaders",
    "field_name",
    "header_end",
    "header_fields",
    "header_str",
    "parse_structured",
    "part_headers",
    "read_headers",
    "split_semicolons",
]

_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*")  # RFC 5322 ftext, obs-optional space
PART_FIELDS = frozenset({b"content-type", b"content-disposition", b"content-transfer-encoding"})
_MAX_SAME_FIELD = 1000


# -- header sections as bytes, for code that splices them (RFC 5322 section 2.2) -----
# Unlike read_headers, these keep every byte: the pieces join back to the input.

_FIELD_START = re.compile(rb"(?m)^(?=[^ \t\r\n])")


def header_end(raw: bytes) -> int:
    """Offset just past the CRLF that ends the header section (its last field)."""
    if raw.startswith(b"\r\n"):
        return 0
    end = raw.find(b"\r\n\r\n")
    return len(raw) if end < 0 else end + 2


def header_fields(header: bytes) -> list[bytes]:
    """The header fields of ``header``, each with its folded lines and final CRLF.

    The pieces join back to ``header`` whatever it holds: a header section that starts
    with a continuation line (white space first, which RFC 5322 §2.2.3 does not allow)
    keeps those bytes as a first piece of their own, and an empty one has no fields."""
    if not header:
        return []
    starts = [0] + [m.start() for m in _FIELD_START.finditer(header) if m.start() > 0]
    return [header[a:b] for a, b in zip(starts, [*starts[1:], len(header)], strict=True)]


# RFC 5322 §3.6.8: a field name is printable ASCII but the colon, then the colon (an
# obsolete space before it is tolerated, §4.5). A line without one is no field.
_FIELD_NAME_COLON = re.compile(rb"([!-9;-~]+)[ \t]*:")


def field_name(field: bytes) -> bytes:
    """The field's name in lower case; empty for a piece that is no field (a line
    without a colon, continuation lines before the first field)."""
    match = _FIELD_NAME_COLON.match(field)
    return match.group(1).lower() if match else b""


# -- unfolded fields -------------------------------------------------------------------


def read_headers(
    raw: bytes, start: int, end: int, wanted: frozenset[bytes], where: str, defects: Defects
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


def header_str(value: bytes, name: str, defects: Defects) -> str:
    """Header bytes as text: UTF-8 (RFC 6532) or, flagged, Windows-1252."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        defects.add(f"{name} header contains 8-bit bytes that are not UTF-8")
        return value.decode("cp1252", "replace")


# -- MIME parameters (RFC 2045 5.1, RFC 2231), linear time

_MIME_WORD = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_MIME_TYPE = re.compile(rf"\s*({_MIME_WORD})\s*/\s*({_MIME_WORD})")
# A quoted string runs to its closing quote or, unterminated, to the end of the value.
# Its pattern cannot fail once started, so it is never rescanned (escaped quotes made
# the obvious '"..."|"' alternation quadratic).
_PARAM_PIECES = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:\\\Z)?"?|[^;"]+|;', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_PARAM_NAME = re.compile(r"([^*]+)(?:\*([0-9]{1,3}))?(\*)?")


def split_semicolons(value: str) -> list[str]:
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


def parse_structured(value: str, where: str, defects: Defects) -> tuple[str, dict[str, str]]:
    """Split ``main; a=b; c*=...`` into the main value and decoded parameters."""
    segments = split_semicolons(value)
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
                defects.add(f"parameter {one_line(name)[:40]!r} repeated {where}")
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
            defects.add(f"RFC 2231 parameter {one_line(base)[:40]!r} has gaps {where}")
        if index:
            simple[base] = decode_charset(bytes(data), charset, where, defects)
    return main, simple


@dataclass
class PartHeaders:
    """What the MIME fields of one entity say: type, parameters, disposition, encoding."""

    content_type: str
    params: dict[str, str]
    disposition: str
    disposition_params: dict[str, str]
    transfer_encoding: str


def part_headers(
    fields: dict[str, list[bytes]], default_type: str, where: str, defects: Defects
) -> PartHeaders:
    def first(name: str) -> str:
        values = fields.get(name, [])
        if len(values) > 1:
            defects.add(f"{len(values)} {name} fields {where}: the first is used")
        return header_str(values[0], name, defects) if values else ""

    ctype_value = first("content-type")
    main, params = parse_structured(ctype_value, where, defects)
    m = _MIME_TYPE.match(main)
    if m:
        content_type = f"{m.group(1)}/{m.group(2)}".lower()
    else:
        # RFC 2045 5.2: an unreadable Content-Type means the default, parameters too.
        if ctype_value:
            defects.add(f"unreadable Content-Type {where}: taken as {default_type}")
        content_type, params = default_type, {}
    disp_main, disp_params = parse_structured(first("content-disposition"), where, defects)
    disposition = disp_main.split("(", 1)[0].strip().lower()
    cte = first("content-transfer-encoding").split("(", 1)[0].strip().strip('"').lower()
    return PartHeaders(content_type, params, disposition, disp_params, cte)
