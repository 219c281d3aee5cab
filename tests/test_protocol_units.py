"""Property tests for the pure parsing pieces of the SMTP side (hypothesis)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.certify.notices import one_line, original_headers
from relay.delivery.agent import received_header
from relay.delivery.client import remote_queue_id, split_reply
from relay.smtpd import replies
from relay.smtpd.protocol import MAX_LINE, DataRefused, check_data, unstuff

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


def _refusal(data: bytes, header_limit: int = 1 << 20) -> str | None:
    try:
        check_data(data, header_limit=header_limit, smtputf8=False)
    except DataRefused as refusal:
        return refusal.reply
    return None


@pytest.mark.parametrize("where", ["first", "later"])
@pytest.mark.parametrize(
    ("line", "refused"),
    [
        (b"z" * 998, False),
        (b"z" * 999, True),
        (b"." + b"z" * 997, False),  # 998 after unstuffing: the stuffed dot does not count
        (b"." + b"z" * 998, True),
        (b"." * 998, False),
        (b"." * 999, True),
    ],
    ids=["998", "999", "dot+997", "dot+998", "998-dots", "999-dots"],
)
def test_line_limit_is_1000_octets_with_crlf_after_unstuffing(
    line: bytes, refused: bool, where: str
) -> None:
    """RFC 5321 4.5.3.1.6: 998 octets of text plus CRLF; the client stuffs a leading dot."""
    stuffed = stuff([line])
    data = stuffed if where == "first" else b"Subject: x\r\n\r\n" + stuffed + b"end\r\n"
    assert len(unstuff(stuffed)) == len(line) + 2
    assert _refusal(data) == (replies.LINE_TOO_LONG if refused else None)


@given(
    st.lists(
        st.tuples(
            st.booleans(),
            st.integers(0, 80) | st.integers(MAX_LINE - 3, MAX_LINE + 3),  # near the limit
        ),
        min_size=1,
        max_size=6,
    )
)
def test_line_limit_counts_unstuffed_octets(shapes: list[tuple[bool, int]]) -> None:
    lines = [b"." * dot + b"a" * n for dot, n in shapes]
    too_long = any(len(line) > MAX_LINE for line in lines)
    assert (_refusal(stuff(lines)) == replies.LINE_TOO_LONG) is too_long


def test_header_limit_boundary() -> None:
    header = b"Subject: " + b"h" * 80 + b"\r\n"
    fields = header * 20
    data = fields + b"\r\nbody\r\n"
    assert _refusal(data, header_limit=len(fields)) is None
    refusal = _refusal(data, header_limit=len(fields) - 1)
    assert refusal == replies.HEADER_TOO_LARGE.format(limit=len(fields) - 1)


_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
PATH_TEXT = st.text(alphabet=_ATEXT + '.@<>[]"\\ ()\t,:;é', max_size=40)
PLAINISH_PATH = st.builds(
    lambda local, domain, rest: f"<{local}@{domain}>{rest}",
    st.text(alphabet=_ATEXT + ".", min_size=1, max_size=70),
    st.text(alphabet="abz09-.", min_size=1, max_size=30),
    st.sampled_from(["", " SIZE=100", " BODY=8BITMIME SMTPUTF8", ">", " <x@y>", "x"]),
)


@given(st.one_of(PLAINISH_PATH, PATH_TEXT, st.text(max_size=60)), st.sampled_from([0, 64]))
@settings(max_examples=500)
def test_envelope_path_parsing_matches_aiosmtpd(arg: str, local_limit: int) -> None:
    """The fast path for <local@domain> gives aiosmtpd's own answer, for any argument
    without a control character (with one, the answer is a syntax error)."""
    from types import SimpleNamespace

    from aiosmtpd.smtp import SMTP

    from relay.smtpd.protocol import CertificaSMTP

    server = SimpleNamespace(local_part_limit=local_limit)

    try:
        expected = SMTP._getaddr(server, arg)  # type: ignore[arg-type]
    except (IndexError, AttributeError):  # the stdlib's parser on some input: a syntax error
        expected = (None, None)
    if any(c != "\t" and (c < " " or "\x7f" <= c <= "\x9f") for c in arg):
        expected = (None, None)  # a control character: a syntax error, whatever aiosmtpd says
    assert CertificaSMTP._getaddr(server, arg) == expected  # type: ignore[arg-type]
