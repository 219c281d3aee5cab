"""What the JSON API reads from a request: query parameters, JSON bodies, path parts,
each checked, and refused with a 400 sentence that names the parameter (docs/api.md).

A parameter the operation does not take, or one given twice, is refused too: an
integrator's typo (``sinse=``) would otherwise widen a search without a word.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import idna
from multidict import MultiMapping

from relay.web.api.problems import Problem

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2}))?"
)
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def bad(detail: str) -> Problem:
    return Problem(400, detail)


def query(params: MultiMapping[str], allowed: frozenset[str]) -> dict[str, str]:
    """The query's parameters as a plain mapping, each at most once and each one
    ``allowed``."""
    found: dict[str, str] = {}
    for name, value in params.items():
        if name not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise bad(f"Unknown parameter {name!r}; this operation takes: {known}.")
        if name in found:
            raise bad(f"The parameter {name!r} is given more than once.")
        found[name] = value
    return found


def moment(name: str, text: str, *, end_of_day: bool = False) -> float:
    """An RFC 3339 date (``2026-11-01``: that day's start in UTC, or with ``end_of_day``
    the next day's start, so ``until=2026-11-30`` includes the 30th) or date-time with
    its offset (``2026-11-01T09:30:00+01:00``), as Unix time."""
    if not _RFC3339.fullmatch(text):
        raise bad(
            f"The parameter {name!r} must be an RFC 3339 date or date-time, such as "
            "2026-11-01 or 2026-11-01T09:30:00Z."
        )
    try:
        if len(text) == 10:
            day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
            return (day + timedelta(days=1) if end_of_day else day).timestamp()
        return datetime.fromisoformat(text.upper().replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError):  # 2026-02-30; the day after 9999-12-31
        raise bad(f"The parameter {name!r} is not a date that exists.") from None


def number(name: str, text: str, lowest: int, highest: int) -> int:
    """A whole number from ``lowest`` to ``highest``."""
    if not re.fullmatch(r"[0-9]{1,9}", text) or not lowest <= int(text) <= highest:
        raise bad(f"The parameter {name!r} must be a whole number from {lowest} to {highest}.")
    return int(text)


def choice(name: str, text: str, choices: tuple[str, ...], what: str = "parameter") -> str:
    """One of ``choices``; ``what``: "parameter" (of the query) or "field" (of a body)."""
    if text not in choices:
        raise bad(f"The {what} {name!r} must be one of: {', '.join(choices)}.")
    return text


def text(name: str, value: str, longest: int = 200) -> str:
    """Free text (a part of an address or of a subject), not empty, at most ``longest``."""
    if not value.strip() or len(value) > longest or not value.isprintable():
        raise bad(f"The parameter {name!r} must be printable text of 1 to {longest} characters.")
    return value.strip()


def month(text: str) -> str:
    """A month like ``2026-11``."""
    if not _MONTH.fullmatch(text):
        raise bad("The parameter 'month' must be a month like 2026-11.")
    return text


def domain(text: str) -> str:
    """A domain name as the database keeps it: lower case, IDNA A-labels (RFC 5890),
    no trailing dot; at least two labels."""
    name = text.strip().rstrip(".")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii") if name else ""
    except ValueError:  # idna.IDNAError, and the UnicodeError of a label over 63
        ascii_name = ""
    labels = ascii_name.split(".")
    if (
        len(labels) < 2
        or len(ascii_name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise bad(f"{printable_for_detail(text)} is not a domain name such as acme.example.")
    return ascii_name


def printable_for_detail(value: str) -> str:
    """A client's value quoted in a ``detail`` sentence: printable, cut at 100."""
    shown = "".join(c if c.isprintable() else "?" for c in value[:100])
    return repr(shown + ("..." if len(value) > 100 else ""))


_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean"}


def json_object(body: str, fields: Mapping[str, type]) -> dict[str, Any]:
    """A request body that is a JSON object with only ``fields`` (each of its type)."""
    try:
        found = json.loads(body) if body else None
    except ValueError:
        found = None
    if not isinstance(found, dict):
        raise bad("The request body must be a JSON object.")
    for key, value in found.items():
        if key not in fields:
            raise bad(f"Unknown field {printable_for_detail(key)}; expected: {', '.join(fields)}.")
        if not isinstance(value, fields[key]):
            kind = _TYPE_NAMES.get(fields[key], fields[key].__name__)
            raise bad(f"The field {key!r} must be a {kind}.")
    return found
