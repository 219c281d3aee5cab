"""Property tests for the pure parsing pieces of the SMTP side (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from relay import replies
from relay.delivery import remote_queue_id, split_reply
from relay.notices import one_line, original_headers
from relay.qmgr import received_header
from relay.smtpd import DataRefused, check_data, unstuff

LINE = st.text(alphabet=st.characters(blacklist_characters="\r\n", codec="utf-8"), max_size=80)


def stuff(lines: list[bytes]) -> bytes:
    """What a client sends (RFC 5321 4.5.2): a leading dot doubled on every line."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


@given(st.lists(LINE.map(lambda s: s.encode()), max_size=30))
def test_unstuff_inverts_stuffing(lines: list[bytes]) -> None:
    original = b"".join(line + b"\r\n" for line in lines)
    assert unstuff(stuff(lines)) == original


@given(st.binary(max_size=3000), st.booleans())
@settings(max_examples=300)
def test_check_data_refuses_cleanly_or_accepts(data: bytes, utf8: bool) -> None:
    try:
        check_data(data, header_limit=1024, smtputf8=utf8)
    except DataRefused as refusal:
        assert re.match(r"^5\d\d 5\.\d\.\d+ ", refusal.reply)
    else:
        assert not re.search(rb"\r(?!\n)|(?<!\r)\n", data)


@given(st.sampled_from([b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n"]))
def test_every_smuggling_ending_is_refused(ending: bytes) -> None:
    data = b"Subject: x\r\n\r\nbody" + ending + b"MAIL FROM:<a@b.c>\r\n"
    try:
        check_data(data, header_limit=1024, smtputf8=False)
    except DataRefused as refusal:
        assert refusal.reply == replies.BARE_LINE_ENDING
    else:
        raise AssertionError("a bare line ending was accepted")


@given(st.text(max_size=200))
def test_enhanced_code_is_added_once(text: str) -> None:
    for code in ("250", "451", "550", "503"):
        once = replies.with_enhanced_code(f"{code} {text}")
        assert replies.with_enhanced_code(once) == once
        assert re.match(rf"^{code} [245]\.\d+\.\d+( |$)", once)


def test_every_named_reply_has_an_enhanced_code() -> None:
    for name in dir(replies):
        value = getattr(replies, name)
        if name.isupper() and isinstance(value, str) and re.match(r"^\d{3} ", value):
            assert re.match(r"^[245]\d\d [245]\.\d+\.\d+ \S", value), name


@given(st.text(max_size=300))
def test_reply_parsing_never_raises(text: str) -> None:
    enhanced, rest = split_reply(250, text)
    assert "\n" not in rest and "\r" not in rest
    qid = remote_queue_id(text)
    assert qid is None or qid in text


@given(st.text(max_size=300))
def test_one_line_has_no_control_characters(text: str) -> None:
    line = one_line(text)
    assert not re.search(r"[\x00-\x1f\x7f]", line) and len(line) <= 200


@given(st.binary(max_size=2000))
def test_original_headers_never_raise(raw: bytes) -> None:
    headers = original_headers(raw)
    assert "\n" not in headers.subject and "\r" not in headers.subject


@given(st.text(max_size=100), st.text(max_size=60))
def test_received_header_is_one_clean_field(helo: str, ip: str) -> None:
    row = {
        "qid": "ABCDEF123456",
        "client_helo": helo,
        "client_ip": ip,
        "created": 1.8e9,
        "auth_user": "alice@example.com",
        "in_tls_version": "TLSv1.3",
    }
    header = received_header(row, "certifica.localhost", ["bob@example.org"])
    assert header.startswith(b"Received: from ") and header.endswith(b"\r\n")
    # every line after the first is a folded continuation: the client cannot add a field
    for line in header.split(b"\r\n")[1:-1]:
        assert line.startswith(b"\t")
    assert header.isascii()
