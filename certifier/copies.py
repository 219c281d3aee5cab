"""Rebuilding, byte for byte, the copy each recipient received from the message as received.

The certificate embeds ``message.eml``, the bytes the sender sent. The copy that left for
a recipient can differ: header fields the gateway put in front (``Received``, ``Date`` and
``Message-ID`` on submission, RFC 6409 §8; the certified-copy field; DKIM signatures,
RFC 6376), ``From`` rewritten so DKIM aligns (RFC 7489 §3.1), links and the open pixel
of tracking, and line ends made CRLF for SMTP (RFC 5321 §2.3.8). Each recipient's
evidence then holds a *recipe* (``recipients[i].copy``)::

    {"prefix": "<text put in front, ASCII>",
     "edits": [{"offset": 1234, "length": 56, "insert": "<base64>"}],
     "changes": [{"change": "header_added", "field": "Received"}, ...]}

and the delivered copy is ``prefix`` followed by ``message.eml`` with each edit applied
(``length`` bytes at ``offset`` replaced by ``insert``; offsets into ``message.eml``,
ascending, not overlapping). Its SHA-256 is the recipient's ``delivered_sha256``.
``changes`` says in words what differs; it is what a reader is told, the edits are what
a verifier recomputes. A recipe holds the bytes that changed (:func:`compact`), never
the copy again; where re-encoding changed a part throughout (base64, or the rest of a
quoted-printable line after a link) that is the re-encoded part from there on.

:func:`rebuild` applies a recipe; a recipe that does not apply (not base64, an edit
beyond the message, edits out of order) raises
:class:`certifier.errors.VerificationError` with a sentence that says which, never
anything else. :func:`compose` turns two successive rewrites into one
recipe, which is how the delivery agent builds it from each step's edits.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import itertools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certifier.errors import VerificationError

__all__ = [
    "CHANGES",
    "Edit",
    "Recipe",
    "apply",
    "check",
    "compact",
    "compose",
    "describe",
    "diff",
    "rebuild",
]

# What a change may be; the certificate words each one (certifier.document).
CHANGES = (
    "header_added",
    "link_tracked",
    "open_pixel_added",
    "from_rewritten",
    "part_reencoded",
    "other",
)

# Bounds a hostile evidence.json cannot exceed (a real recipe has a few dozen edits).
MAX_EDITS = 100_000
MAX_CHANGES = 10_000


@dataclass(frozen=True)
class Edit:
    """``length`` bytes at ``offset`` replaced by ``insert`` (an insertion when length is 0)."""

    offset: int
    length: int
    insert: bytes


@dataclass(frozen=True)
class Recipe:
    """How one delivered copy is made from the message as received."""

    prefix: bytes
    edits: tuple[Edit, ...]
    changes: tuple[dict[str, Any], ...]

    def to_json(self) -> dict[str, Any]:
        """The evidence form (``recipients[i].copy``)."""
        return {
            "prefix": self.prefix.decode("latin-1"),
            "edits": [
                {
                    "offset": e.offset,
                    "length": e.length,
                    "insert": base64.b64encode(e.insert).decode("ascii"),
                }
                for e in self.edits
            ],
            "changes": [dict(c) for c in self.changes],
        }

    @classmethod
    def from_json(cls, copy: object) -> Recipe:
        """A recipe read from evidence; :class:`~certifier.errors.VerificationError` names what is wrong."""
        if not isinstance(copy, Mapping):
            raise VerificationError("the copy is not a JSON object")
        prefix = copy.get("prefix", "")
        if not isinstance(prefix, str):
            raise VerificationError("its prefix is not text")
        try:
            prefix_bytes = prefix.encode("latin-1")
        except UnicodeEncodeError:
            raise VerificationError("its prefix has characters beyond one byte each") from None
        edits_in = copy.get("edits", [])
        if not isinstance(edits_in, list) or len(edits_in) > MAX_EDITS:
            raise VerificationError("its edits are not a list (or more than the bound)")
        edits: list[Edit] = []
        for i, item in enumerate(edits_in, 1):
            if not isinstance(item, Mapping):
                raise VerificationError(f"edit {i} is not a JSON object")
            offset, length, insert = item.get("offset"), item.get("length"), item.get("insert")
            if not _count(offset) or not _count(length):
                raise VerificationError(f"edit {i} has no valid offset and length")
            if not isinstance(insert, str):
                raise VerificationError(f"edit {i} has no insert text")
            try:
                data = base64.b64decode(insert.encode("ascii"), validate=True)
            except (binascii.Error, ValueError, UnicodeEncodeError):
                raise VerificationError(f"the insert of edit {i} is not base64") from None
            edits.append(Edit(offset, length, data))  # type: ignore[arg-type]
        changes = copy.get("changes", [])
        if not isinstance(changes, list) or len(changes) > MAX_CHANGES:
            raise VerificationError("its changes are not a list (or more than the bound)")
        if not all(isinstance(c, Mapping) for c in changes):
            raise VerificationError("a change is not a JSON object")
        return cls(prefix_bytes, tuple(edits), tuple(dict(c) for c in changes))


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check(edits: Sequence[Edit], size: int) -> None:
    """Raise :class:`~certifier.errors.VerificationError` unless ``edits`` apply to ``size`` bytes: within them,
    ascending, not overlapping."""
    pos = 0
    for i, e in enumerate(edits, 1):
        if e.offset < pos:
            raise VerificationError(
                f"edit {i} (offset {e.offset}) overlaps or comes before the edit ahead of it"
            )
        if e.offset + e.length > size:
            raise VerificationError(
                f"edit {i} (offset {e.offset}, length {e.length}) goes beyond the "
                f"message's {size} bytes"
            )
        pos = e.offset + e.length


def apply(data: bytes, edits: Sequence[Edit]) -> bytes:
    """``data`` with ``edits`` applied; :class:`~certifier.errors.VerificationError` if they do not fit."""
    check(edits, len(data))
    out: list[bytes] = []
    pos = 0
    for e in edits:
        out.append(data[pos : e.offset])
        out.append(e.insert)
        pos = e.offset + e.length
    out.append(data[pos:])
    return b"".join(out)


def rebuild(eml: bytes, copy: object) -> bytes:
    """The delivered copy: ``copy``'s prefix, then ``eml`` with its edits applied.

    ``copy`` is the evidence form (a dict) or a :class:`Recipe`; :class:`~certifier.errors.VerificationError`
    says why one does not apply."""
    recipe = copy if isinstance(copy, Recipe) else Recipe.from_json(copy)
    return recipe.prefix + apply(bytes(eml), recipe.edits)


# --- building recipes -----------------------------------------------------------------


def compose(first: Sequence[Edit], second: Sequence[Edit], size: int) -> list[Edit]:
    """One list of edits on the ``size`` original bytes doing ``first``, then ``second``
    (whose offsets are into the result of ``first``).

    The result of ``first`` is seen as pieces, each either a range of the original or
    bytes ``first`` inserted; ``second`` cuts and splices those pieces; what is left
    is read back as edits wherever the original is not copied straight through.
    """
    check(first, size)
    # (original start, original end, None) copies; (-1, -1, bytes) inserted bytes.
    pieces: list[tuple[int, int, bytes | None]] = []
    pos = 0
    for e in first:
        if e.offset > pos:
            pieces.append((pos, e.offset, None))
        if e.insert:
            pieces.append((-1, -1, e.insert))
        pos = e.offset + e.length
    if pos < size:
        pieces.append((pos, size, None))
    middle = sum((b - a) if data is None else len(data) for a, b, data in pieces)
    check(second, middle)

    result: list[tuple[int, int, bytes | None]] = []
    at = 0  # position in the middle text where pieces[k] starts
    k = 0

    def take(until: int) -> None:
        """Move the pieces (or parts of them) up to middle offset ``until`` to result."""
        nonlocal at, k
        while k < len(pieces) and at < until:
            a, b, data = pieces[k]
            length = (b - a) if data is None else len(data)
            n = min(length, until - at)
            if data is None:
                result.append((a, a + n, None))
                rest: tuple[int, int, bytes | None] = (a + n, b, None)
            else:
                result.append((-1, -1, data[:n]))
                rest = (-1, -1, data[n:])
            at += n
            if n == length:
                k += 1
            else:
                pieces[k] = rest

    def skip(until: int) -> None:
        """Drop the pieces up to middle offset ``until``."""
        nonlocal at, k
        while k < len(pieces) and at < until:
            a, b, data = pieces[k]
            length = (b - a) if data is None else len(data)
            n = min(length, until - at)
            at += n
            if n == length:
                k += 1
            else:
                pieces[k] = (a + n, b, None) if data is None else (-1, -1, data[n:])

    for e in second:
        take(e.offset)
        skip(e.offset + e.length)
        if e.insert:
            result.append((-1, -1, e.insert))
    take(middle)

    edits: list[Edit] = []
    cursor = 0
    pending: list[bytes] = []
    for a, b, data in result:
        if data is not None:
            pending.append(data)
            continue
        if a != cursor or pending:
            edits.append(Edit(cursor, a - cursor, b"".join(pending)))
            pending = []
        cursor = b
    if cursor < size or pending:
        edits.append(Edit(cursor, size - cursor, b"".join(pending)))
    return edits


def _common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix (binary search over C-speed comparisons)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: bytes, b: bytes, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid : len(a) - lo] == b[len(b) - mid : len(b) - lo]:
            lo = mid
        else:
            hi = mid - 1
    return lo


# An edit whose old and new bytes are both longer than this is split further: by
# lines, then within a changed line by what it shares with its counterpart, then by
# words. difflib's matcher is quadratic in the worst case: above the bounds an edit is
# kept whole (correct, only larger).
_DIFF_BYTES = 512
_MAX_LINES = 2_000
_MAX_WORDS = 2_000
# Edits closer than this are merged: each costs some 40 bytes of JSON of its own.
_MERGE_GAP = 16
_WORD = re.compile(rb"[A-Za-z0-9]+|[^A-Za-z0-9]")


def compact(data: bytes, edits: Iterable[Edit]) -> list[Edit]:
    """The same changes to ``data`` holding fewer bytes: each edit loses what its old and
    new bytes share at both ends, and a long one (a re-encoded body) is split where
    lines, or the ends of lines, or words, are unchanged."""
    out: list[Edit] = []
    for e in edits:
        old = data[e.offset : e.offset + e.length]
        if len(old) > _DIFF_BYTES and len(e.insert) > _DIFF_BYTES:
            # Whole lines first: trimming first would cut a line in two and misalign them.
            out.extend(_by_lines(old, e.insert, e.offset))
        else:
            out.extend(_trimmed(old, e.insert, e.offset, _by_words))
    return _merged(data, out)


def _trimmed(
    old: bytes, new: bytes, start: int, finer: Callable[[bytes, bytes, int], list[Edit]]
) -> list[Edit]:
    head = _common_prefix(old, new)
    tail = _common_suffix(old, new, min(len(old), len(new)) - head)
    old, new = old[head : len(old) - tail], new[head : len(new) - tail]
    if not old and not new:
        return []
    if len(old) <= _DIFF_BYTES or len(new) <= _DIFF_BYTES:
        return [Edit(start + head, len(old), new)]
    return finer(old, new, start + head)


def _lines(data: bytes) -> list[bytes]:
    """Lines, a quoted-printable soft line break (RFC 2045 6.7 rule 5) joining the next:
    re-encoding moves soft breaks only up to the next hard one."""
    out: list[bytes] = []
    joined = b""
    for line in data.splitlines(keepends=True):
        joined += line
        if not line.rstrip(b"\r\n").endswith(b"="):
            out.append(joined)
            joined = b""
    if joined:
        out.append(joined)
    return out


def _by_lines(old: bytes, new: bytes, start: int) -> list[Edit]:
    """By hard lines, then (a long quoted-printable line) by its physical lines."""
    return _by_units(old, new, start, _lines, _by_physical_lines)


def _by_physical_lines(old: bytes, new: bytes, start: int) -> list[Edit]:
    return _by_units(old, new, start, _physical_lines, _by_words)


def _physical_lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def _by_units(
    old: bytes,
    new: bytes,
    start: int,
    split: Callable[[bytes], list[bytes]],
    finer: Callable[[bytes, bytes, int], list[Edit]],
) -> list[Edit]:
    a, b = split(old), split(new)
    at_a = list(itertools.accumulate(map(len, a), initial=0))
    at_b = list(itertools.accumulate(map(len, b), initial=0))
    edits: list[Edit] = []
    if len(a) == len(b):  # the usual case (rewriting keeps the lines): line for line
        for i, (line_a, line_b) in enumerate(zip(a, b, strict=True)):
            if line_a != line_b:
                edits.extend(_trimmed(line_a, line_b, start + at_a[i], finer))
        return edits
    # Lines added or removed: the same lines at both ends are kept, the middle diffed.
    shorter = min(len(a), len(b))
    lo = 0
    while lo < shorter and a[lo] == b[lo]:
        lo += 1
    hi = 0
    while hi < shorter - lo and a[len(a) - 1 - hi] == b[len(b) - 1 - hi]:
        hi += 1
    mid_a, mid_b = a[lo : len(a) - hi], b[lo : len(b) - hi]
    if len(mid_a) > _MAX_LINES or len(mid_b) > _MAX_LINES:
        piece_old = old[at_a[lo] : at_a[len(a) - hi]]
        return [Edit(start + at_a[lo], len(piece_old), new[at_b[lo] : at_b[len(b) - hi]])]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, mid_a, mid_b).get_opcodes():
        if tag == "equal":
            continue
        i1, i2, j1, j2 = i1 + lo, i2 + lo, j1 + lo, j2 + lo
        if i2 - i1 == j2 - j1:  # line for line: each changed line on its own
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                edits.extend(_trimmed(a[i], b[j], start + at_a[i], finer))
        else:
            piece_old, piece_new = old[at_a[i1] : at_a[i2]], new[at_b[j1] : at_b[j2]]
            edits.extend(_trimmed(piece_old, piece_new, start + at_a[i1], finer))
    return edits


def _by_words(old: bytes, new: bytes, start: int) -> list[Edit]:
    a, b = _WORD.findall(old), _WORD.findall(new)
    if len(a) > _MAX_WORDS or len(b) > _MAX_WORDS:
        return [Edit(start, len(old), new)]
    at_a = list(itertools.accumulate(map(len, a), initial=0))
    at_b = list(itertools.accumulate(map(len, b), initial=0))
    return [
        Edit(start + at_a[i1], at_a[i2] - at_a[i1], new[at_b[j1] : at_b[j2]])
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b).get_opcodes()
        if tag != "equal"
    ]


def _merged(data: bytes, edits: list[Edit]) -> list[Edit]:
    out: list[Edit] = []
    for e in edits:
        if out and e.offset - (out[-1].offset + out[-1].length) < _MERGE_GAP:
            last = out[-1]
            gap = data[last.offset + last.length : e.offset]
            out[-1] = Edit(
                last.offset, e.offset + e.length - last.offset, last.insert + gap + e.insert
            )
        else:
            out.append(e)
    return out


def diff(original: bytes, copy: bytes) -> list[Edit]:
    """Edits making ``copy`` from ``original`` when nothing better is known: what differs
    between their common beginning and end, diffed by lines and words."""
    return compact(original, [Edit(0, len(original), copy)])


# --- words ----------------------------------------------------------------------------


def describe(change: Mapping[str, Any]) -> str:
    """One change in plain English (the certificate words them in the reader's language)."""
    kind = change.get("change")
    if kind == "header_added":
        return f"The header field {change.get('field')} was added."
    if kind == "link_tracked":
        return f"Link {change.get('link')} ({change.get('url')}) was replaced by a tracking link."
    if kind == "open_pixel_added":
        return "An image that reports when the message is opened was added."
    if kind == "from_rewritten":
        return (
            "The From field was rewritten to the gateway's address; the sender's address "
            "is in Reply-To."
        )
    if kind == "part_reencoded":
        part = str(change.get("part") or "a part")  # "part 1.2", "the message body"
        return f"{part[:1].upper()}{part[1:]} was re-encoded as {change.get('encoding')}."
    detail = change.get("detail")
    return f"Other change: {detail}." if detail else "Another change was made."
