"""Client text in logs: one line, nothing a terminal interprets, readable back (relay.logs)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import unicodedata

from hypothesis import example, given
from hypothesis import strategies as st

from relay.logs import OneLineFormatter, loop_exception_handler, one_line, printable

_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_TOKEN = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def unescape(shown: str) -> str:
    """The inverse of printable() (no cut): the test's own reading of the format."""

    def one(m: re.Match[str]) -> str:
        token = m.group(1)
        if token == "\\":
            return "\\"
        n = int(token[1:], 16)
        if token[0] == "x" and n >= 0x80:
            return chr(0xDC00 + n)  # a byte that was not UTF-8
        return chr(n)

    rest = _TOKEN.sub("", shown)
    assert "\\" not in rest, shown  # every backslash belongs to an escape
    return _TOKEN.sub(one, shown)


def assert_safe(shown: str) -> None:
    assert "\n" not in shown and "\r" not in shown
    assert not (set(shown) & _BIDI)
    for c in shown:
        assert c.isprintable(), (c, shown)
        assert unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs"), (c, shown)


# Text as clients send it: any code point, surrogate-escaped bytes, and the dangerous ones.
_DANGEROUS = st.sampled_from(
    list("\r\n\x00\x1b\x7f\x85\x9b\u2028\u2029\\")
    + sorted(_BIDI)
    + ["\udcff", "\udc80", "\ud800", "\U0010ffff"]
)
client_text = st.lists(st.one_of(st.characters(codec=None), _DANGEROUS), max_size=60).map("".join)


@given(client_text)
@example("\x1b[31mred\x1b[0m")
@example("alice\r\n2026-12-03T06:00:00 certifica/submission: ABC: from=<x>")
@example("\u202eelif.exe")
@example("\\x1b")  # looks like an escape: must not read back as ESC
def test_escaped_text_is_one_safe_line_and_reads_back(text: str) -> None:
    shown = printable(text, limit=None)
    assert_safe(shown)
    assert unescape(shown) == text


@given(client_text)
def test_one_line_leaves_escaped_text_alone(text: str) -> None:
    shown = printable(text, limit=None)
    assert one_line(shown) == shown
    assert_safe(one_line(text))


@given(st.binary(max_size=80))
def test_bytes_that_are_not_utf8_are_shown_not_replaced(data: bytes) -> None:
    shown = printable(data, limit=None)
    assert_safe(shown)
    assert unescape(shown).encode("utf-8", "surrogateescape") == data


def test_cut_is_marked() -> None:
    assert printable("x" * 10, limit=4) == "xxxx..."
    assert printable("xxxx", limit=4) == "xxxx"


def test_formatter_keeps_one_event_per_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(name)s: %(message)s"))
    log = logging.getLogger("test-escaping")
    log.propagate = False
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        forged = "x\r\ntest-escaping: 2026 forged line\x1b[2J\u202e"
        log.info("helo=%s", forged)
        log.info("already escaped: %s", printable(forged))
    finally:
        log.removeHandler(handler)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert (
        lines[0] == "test-escaping: helo=x\\x0d\\x0atest-escaping: 2026 forged line\\x1b[2J\\u202e"
    )
    assert lines[1].endswith(printable(forged))
    for line in lines:
        assert_safe(line)


def test_loop_exception_handler_writes_one_line() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("certifica/loop")
    log.addHandler(handler)
    old_level, log.level = log.level, logging.INFO
    loop = asyncio.new_event_loop()
    try:
        try:
            raise ValueError("secret\ntext")
        except ValueError as err:
            loop_exception_handler(loop, {"message": "Task exception\r\n", "exception": err})
        loop_exception_handler(
            loop, {"message": "Fatal error", "exception": ConnectionResetError()}
        )
    finally:
        loop.close()
        log.removeHandler(handler)
        log.setLevel(old_level)
    lines = out.getvalue().splitlines()
    assert lines == [
        "ERROR certifica/loop: Task exception\\x0d\\x0a (ValueError)",
        "INFO certifica/loop: Fatal error: ConnectionResetError",
    ], lines
