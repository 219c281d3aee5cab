"""Client bytes at the edges of the protocol, on both ports, against the running gateway.

Whatever a client sends (bytes that are not UTF-8, controls, NUL, odd or overlong
arguments in any command, odd MIME), it gets a proper reply with an enhanced status
code: never ``451 ... internal error``, never a traceback in the log, and a reply that
echoes the client carries none of its control characters. Also: EHLO in one write,
PIPELINING replies together, bare LF closing the session, NUL in DATA.
"""

from __future__ import annotations

import base64
import re
import socket
import sqlite3
import ssl
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.smtpd import replies
from tests.conftest import CERT_ADDRESS, Gateway, Sink, client_tls_context, make_message
from tests.test_smtp_in import Raw, _read_to_eof

REPLY = re.compile(rb"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
# What a refusal of client bytes may be: a 5xx (or 4xx for limits) with a code, and the
# session goes on; never the internal error.
NEVER = ("451 4.3.0 The gateway met an internal error", "Traceback")


def assert_clean(gw: Gateway) -> None:
    log = gw.log()
    for bad in (*NEVER, "internal error"):
        assert bad not in log, log[-3000:]
    assert "\x1b" not in log and "\x00" not in log
    # Every spool file belongs to a recorded message: a refused transaction left none.
    spooled = {p.stem for p in (gw.state / "spool" / "queue").glob("*.eml")}
    with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True) as db:
        known = {qid for (qid,) in db.execute("SELECT qid FROM messages")}
    db.close()
    assert spooled <= known, spooled - known


def assert_proper(reply: str) -> None:
    if not reply.startswith(("250-", "250 certifica.")):  # EHLO/HELO: no codes (RFC 2034)
        assert REPLY.match(reply.encode()), reply
    assert not reply.startswith("451"), reply
    for c in reply:
        assert c.isprintable() or c == "\n", repr(reply)


class Plain(Raw):
    """A raw client on the MX port (no TLS, no AUTH)."""

    def __init__(self, gw: Gateway, ehlo: bytes = b"EHLO raw.test\r\n") -> None:
        self.sock = socket.create_connection(("127.0.0.1", gw.port("mx")), timeout=20)
        self.buf = b""
        self.expect("220")
        if ehlo:
            self.send(ehlo)
            self.reply()


# -- any command, any bytes ------------------------------------------------------------

BAD_COMMANDS = [
    (b"EHLO \xff\xfe\x80\r\n", "500 5.5.2"),
    (b"HELO caf\xe9\r\n", "500 5.5.2"),
    (b"MAIL FROM:<\xff@example.com>\r\n", "500 5.5.2"),
    (b"RCPT TO:<bob@exa\x00mple.org>\r\n", "501 5.5.4"),
    (b"NOOP \x00\r\n", "501 5.5.4"),
    (b"NOOP \xc3\x28\r\n", "500 5.5.2"),  # an invalid UTF-8 sequence
    (b"NOOP \xed\xa0\x80\r\n", "500 5.5.2"),  # an encoded surrogate is not UTF-8 either
    (b"VRFY \xff\r\n", "500 5.5.2"),
    (b"HELP \x00\r\n", "501 5.5.4"),
    (b"HELP caf\xe9\r\n", "500 5.5.2"),
    (b"X\xffY\r\n", "500 5.5."),
    (b"\x1b[2J\x1b[31mRED\r\n", "500 5.5."),
    (b"\r\n", "500 5.5."),
    (b"   \r\n", "500 5.5."),
    (b"MAIL FROM:<a@b\rc>\r\n", "501 5.5.4"),
    (b"AUTH PLAIN \xff\xfe\r\n", "500 5.5.2"),
    (b"STARTTLS \xff\r\n", "500 5.5.2"),
    (b"QUIT \x00\r\n", "501 5.5.4"),
    (b"MAIL " + b"A" * 3000 + b"\r\n", "500 5.5."),
    (b"EHLO " + "é".encode() * 600 + b"\r\n", "500 5.5."),
]


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_bad_bytes_in_any_command_get_a_proper_reply(gateway: Gateway, port: str) -> None:
    raw = Raw(gateway) if port == "submission" else Plain(gateway)
    for command, expected in BAD_COMMANDS:
        raw.send(command)
        reply = raw.reply()
        assert_proper(reply)
        assert reply.startswith(expected), (command, reply)
        raw.send(b"NOOP\r\n")  # the session goes on
        assert raw.reply().startswith("250 2.0.0"), command
    raw.close()
    assert_clean(gateway)


ODD_ARGUMENTS = [
    b"EHLO \x1b[31mevil\x1b[0m.example\r\n",
    b"HELO \xe2\x80\xaeevil.example\r\n",  # a bidi override, valid UTF-8
    b"VRFY <\x1b[2J@example.org>\r\n",
    b"VRFY \xe2\x80\xa8\r\n",
    b"NOOP \x1b[31m whatever\r\n",
    b"HELP MAIL\x1b\r\n",
    b"HELP \xf0\x9f\x92\xa5\r\n",
    b"RSET \x07\r\n",
    b"MAIL FROM:<\x1b@example.com> SIZE=99999999999999999999999999\r\n",
    b"MAIL FROM:<alice@example.com> BODY=\x1b\r\n",
    b"MAIL FROM:<alice@example.com> SMTPUTF8=\xc3\xa9\r\n",
    b"MAIL FROM:<alice@example.com> X=" + b"y" * 600 + b"\r\n",
    b"RCPT TO:<\xe2\x80\xaebob@example.org>\r\n",
    b"RCPT TO:<" + b"b" * 400 + b"@example.org>\r\n",
    b'RCPT TO:<"\x1b"@example.org>\r\n',
    b"RCPT TO:<bob@[300.1.1.1]> NOTIFY=\x1b\r\n",
    b"DATA \x1b\r\n",
    b"AUTH \x1b\r\n",
    b"AUTH PLAIN ====\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\xff\x00\xfe\x00\x80") + b"\r\n",
    b"AUTH PLAIN " + base64.b64encode(b"\x1b[31m\x00\x1b[2J@x\x00pw") + b"\r\n",
    b"AUTH LOGIN \xc3\xa9\r\n",
    b"AUTH plain x y z\r\n",
    b"BDAT 10 LAST\r\n",
    b"ETRN \x1b\r\n",
]


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_odd_arguments_get_a_reply_that_echoes_nothing_raw(gateway: Gateway, port: str) -> None:
    for command in ODD_ARGUMENTS:
        raw = Raw(gateway, login=False) if port == "submission" else Plain(gateway)
        raw.send(command)
        reply = raw.reply()
        assert_proper(reply)
        raw.send(b"NOOP\r\n")
        assert raw.reply().startswith("250"), command
        raw.close()
    assert_clean(gateway)


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_a_verb_without_its_argument_is_answered(gateway: Gateway, port: str) -> None:
    """'RCPT ' with nothing after it once went unanswered on the submission port, where
    the DSN parameters are read first (found by make fuzz, seed 12)."""
    raw = Raw(gateway) if port == "submission" else Plain(gateway)
    for command in (b"MAIL\r\n", b"MAIL \r\n"):
        raw.send(command)
        assert raw.reply().startswith("501 5.5.4"), command
    raw.send(b"MAIL FROM:<alice@example.com>\r\n")
    assert raw.reply().startswith("250")
    for command in (b"RCPT\r\n", b"RCPT \r\n"):
        raw.send(command)
        assert raw.reply().startswith("501 5.5.4"), command
    raw.close()
    assert_clean(gateway)


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_a_control_character_in_a_path_is_a_syntax_error(gateway: Gateway, port: str) -> None:
    """<\x0calice@…> was once taken as alice (the comparison strips white space) and its
    notice could never be written; a recipient with \x0f was relayed (make fuzz)."""
    raw = Raw(gateway) if port == "submission" else Plain(gateway)
    for bad in (b"\x0c", b"\x0f", b"\x7f", b"\xc2\x85", b"\x1b[31m"):
        raw.send(b"MAIL FROM:<" + bad + b"alice@example.com>\r\n")
        assert raw.reply().startswith(("501 5.5.4", "553 5.1.3")), bad
    raw.send(b"MAIL FROM:<alice@example.com>\r\n")
    assert raw.reply().startswith("250")
    for bad in (b"\x0c", b"\x0f", b"\x7f", b"\xc2\x85"):
        raw.send(b"RCPT TO:<dave@example." + bad + b"org>\r\n")
        assert raw.reply().startswith(("501 5.5.4", "553 5.1.3")), bad
        raw.send(b"RCPT TO:<" + bad + CERT_ADDRESS.encode() + b">\r\n")
        assert raw.reply().startswith(("501 5.5.4", "553 5.1.3")), bad
    raw.close()
    assert_clean(gateway)


def test_auth_responses_with_bad_bytes(gateway: Gateway) -> None:
    for response in (b"\xff\xfe\r\n", b"\x00\r\n", b"*\r\n", b"!!!\r\n", b"\x1b[2J\r\n"):
        raw = Raw(gateway, login=False)
        raw.send(b"AUTH LOGIN\r\n")
        raw.expect("334")
        raw.send(response)
        reply = raw.reply()
        assert_proper(reply)
        assert reply[0] == "5", (response, reply)
        raw.close()
    assert_clean(gateway)


def test_ehlo_name_is_logged_and_stored_escaped(gateway: Gateway, mx: Sink) -> None:
    raw = Raw(gateway, login=False)
    raw.send(b"EHLO \x1b[31mred\xe2\x80\xaeevil\r\n")  # ESC and a bidi override
    raw.reply()
    raw.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice@example.com\0correct horse battery"))
    raw.send(b"\r\n")
    raw.expect("235")
    raw.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<helo-escaped@example.org>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    raw.send(make_message(to="helo-escaped@example.org", cc="") + b".\r\n")
    qid = raw.expect("250").rsplit(" ", 1)[1]
    raw.close()
    (got,) = mx.wait_for(lambda ms: any("helo-escaped@example.org" in m.rcpt_tos for m in ms))[-1:]
    assert b"\x1b" not in got.data and "\u202e".encode() not in got.data
    with sqlite3.connect(f"file:{gateway.state / 'queue.db'}?mode=ro", uri=True) as db:
        (helo,) = db.execute("SELECT client_helo FROM messages WHERE qid = ?", (qid,)).fetchone()
    db.close()
    assert helo == "\\x1b[31mred\\u202eevil"
    log = gateway.log()
    assert f"{qid}: client=\\x1b[31mred\\u202eevil[127.0.0.1]" in log
    assert_clean(gateway)


# -- bare LF, CR, NUL ------------------------------------------------------------------


@pytest.mark.parametrize(
    "stream",
    [b"NOOP\n", b"EHLO x\nNOOP\r\n", b"MAIL FROM:<a@example.com>\n\r\n", b"\n", b"QUIT\n"],
    ids=["NOOP-LF", "EHLO-LF", "LF-CRLF", "LF-alone", "QUIT-LF"],
)
@pytest.mark.parametrize("port", ["submission", "mx"])
def test_bare_lf_in_the_command_stream_closes_with_521(
    gateway: Gateway, port: str, stream: bytes
) -> None:
    raw = Raw(gateway, login=False) if port == "submission" else Plain(gateway)
    raw.send(stream + b"NOOP\r\n")
    assert raw.reply() == replies.BARE_LINE_FEED
    assert _read_to_eof(raw.sock, raw.buf) == b""
    raw.close()
    assert_clean(gateway)


@pytest.mark.parametrize("body", [b"a NUL \x00 here\r\n", b"\x00\r\n"], ids=["inline", "alone"])
def test_nul_in_data_is_refused_not_relayed(gateway: Gateway, mx: Sink, body: bytes) -> None:
    rcpt = f"nul-{body.hex()[:8]}@example.org"
    raw = Raw(gateway)
    raw.send(f"MAIL FROM:<alice@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    raw.send(make_message(to=rcpt, cc=CERT_ADDRESS, body="") + body + b".\r\n")
    assert raw.reply() == replies.NUL_IN_DATA
    raw.send(b"NOOP\r\n")
    raw.expect("250")
    raw.close()
    time.sleep(0.3)
    assert mx.to(rcpt) == []
    assert list((gateway.state / "spool" / "queue").glob("*.eml")) == [] or all(
        b"\x00" not in p.read_bytes() for p in (gateway.state / "spool" / "queue").glob("*.eml")
    )


# -- MIME that parsers trip on -----------------------------------------------------------

NASTY_BODIES = {
    "deep": b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
    + b"".join(b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n" for _ in range(400))
    + b"--a--\r\n",
    "bad-base64": b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"%%%%not base64 at all====\r\n",
    "8bit-body": b"Content-Type: text/plain; charset=utf-8\r\n\r\ncaf\xe9 \xff\xfe\r\n",
    "encoded-words": b"Subject: =?utf-8?q?line=0D=0Ab=1B[31mred?= =?bogus?b?////?=\r\n"
    b"Content-Type: text/plain; charset=\x1b\r\n\r\nx\r\n",
    "many-parts": b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    + b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 2000
    + b"--b--\r\n",
    "broken-headers": b"Content-Type: ; ; ; charset==\r\n: no name\r\n\t\r\nFrom x\r\n\r\nbody\r\n",
}


@pytest.mark.parametrize("name", sorted(NASTY_BODIES))
def test_odd_mime_gets_a_proper_reply_on_both_ports(gateway: Gateway, name: str) -> None:
    tail = NASTY_BODIES[name]
    head = (
        b"From: alice@example.com\r\nTo: bob@example.org\r\nSubject: odd "
        + name.encode()
        + b"\r\nMIME-Version: 1.0\r\n"
    )
    raw = Raw(gateway)
    raw.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<odd-mime@example.org>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    raw.send(head + tail + b".\r\n")
    reply = raw.reply()
    assert_proper(reply)
    raw.close()
    mx_raw = Plain(gateway)
    mx_raw.send(f"MAIL FROM:<nobody@elsewhere.example>\r\nRCPT TO:<{CERT_ADDRESS}>\r\n".encode())
    mx_raw.expect("250")
    mx_raw.expect("250")
    mx_raw.send(b"DATA\r\n")
    mx_raw.expect("354")
    mx_raw.send(head.replace(b"alice@example.com", b"nobody@elsewhere.example") + tail + b".\r\n")
    assert_proper(mx_raw.reply())
    mx_raw.close()
    assert_clean(gateway)


# -- EHLO in one write, PIPELINING -------------------------------------------------------


def _tls_session(gw: Gateway) -> ssl.SSLSocket:
    """A STARTTLS session on 587 (no EHLO yet after the handshake)."""
    sock = socket.create_connection(("127.0.0.1", gw.port()), timeout=20)
    raw = Raw.__new__(Raw)
    raw.sock, raw.buf = sock, b""
    raw.expect("220")
    raw.send(b"EHLO raw.test\r\n")
    raw.reply()
    raw.send(b"STARTTLS\r\n")
    raw.expect("220")
    return client_tls_context(gw.state).wrap_socket(sock)


def test_ehlo_reply_is_one_tls_record(gateway: Gateway) -> None:
    """Over TLS a read returns at most one record, and each write of the server is a
    record of its own: so one read holding the whole reply proves one write."""
    tls = _tls_session(gateway)
    tls.sendall(b"EHLO raw.test\r\n")
    first = tls.recv(65536)
    assert first.endswith(b"250 HELP\r\n"), first
    lines = first.decode().split("\r\n")[:-1]
    assert all(line.startswith("250-") for line in lines[:-1]), lines
    keywords = {line[4:].split(" ")[0] for line in lines[1:]}
    assert {"PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "AUTH"} <= (
        keywords
    ), keywords
    assert "STARTTLS" not in keywords
    tls.close()


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_plaintext_ehlo_reply_arrives_whole(gateway: Gateway, port: str) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port(port)), timeout=20)
    greeting = sock.recv(4096)
    assert greeting.startswith(b"220 ")
    sock.sendall(b"EHLO raw.test\r\n")
    first = sock.recv(65536)  # returns with the first segment the server wrote
    sock.close()
    assert first.endswith(b"250 HELP\r\n"), first
    keywords = {line[4:].split(b" ")[0] for line in first.split(b"\r\n")[1:-1]}
    assert b"STARTTLS" in keywords and b"PIPELINING" in keywords
    assert b"AUTH" not in keywords  # not before TLS on 587, never on the MX


def test_pipelined_group_is_answered_in_order_and_together(gateway: Gateway, mx: Sink) -> None:
    tls = _tls_session(gateway)
    raw = Raw.__new__(Raw)
    raw.sock, raw.buf = tls, b""
    raw.send(b"EHLO raw.test\r\n")
    raw.reply()
    token = base64.b64encode(b"\0alice@example.com\0correct horse battery")
    raw.send(b"AUTH PLAIN " + token + b"\r\n")
    raw.expect("235")
    # RFC 2920: MAIL, RCPTs and DATA in one send; one RCPT is refused in the middle.
    tls.sendall(
        b"MAIL FROM:<alice@example.com>\r\n"
        b"RCPT TO:<pipe1@example.org>\r\n"
        b"RCPT TO:<u%ext@example.org>\r\n"
        b"RCPT TO:<pipe2@example.org>\r\n"
        b"DATA\r\n"
    )
    first = tls.recv(65536)  # one TLS record: one write of the server
    lines = first.decode().split("\r\n")
    assert [line[:3] for line in lines[:-1]] == ["250", "250", "501", "250", "354"], lines
    tls.sendall(make_message(to="pipe1@example.org", cc="pipe2@example.org") + b".\r\nQUIT\r\n")
    rest = _read_to_eof(tls)
    assert rest.startswith(b"250 2.0.0") and b"\r\n221 " in rest, rest
    tls.close()
    got = mx.wait_for(lambda ms: any("pipe2@example.org" in m.rcpt_tos for m in ms))
    assert not any("u%ext@example.org" in m.rcpt_tos for m in got)
    assert_clean(gateway)


# -- clients that vanish ------------------------------------------------------------------


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed client or a scanner does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("where", ["greeting", "command", "data", "tls"])
@pytest.mark.parametrize("port", ["submission", "mx", "submission_tls"])
def test_reset_connections_leave_no_traceback(gateway: Gateway, port: str, where: str) -> None:
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", gateway.port(port)), timeout=10)
        if port == "submission_tls" and where != "tls":
            tls = client_tls_context(gateway.state).wrap_socket(sock)
            tls.recv(1024)
            tls.sendall(b"EHLO reset.test\r\nMAIL FROM:<x@example.com>\r\n")
            if where == "data":
                tls.sendall(b"DATA\r\nSubject: half")
            _reset(tls)
            continue
        if where == "tls":
            sock.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")  # half a ClientHello
        elif where != "greeting":
            sock.recv(1024)
            sock.sendall(b"EHLO reset.test\r\nMAIL FROM:<x@example.com>\r\nRCPT TO:<")
            if where == "data":
                sock.sendall(b"postmaster>\r\nDATA\r\nSubject: half a message\r\n")
        _reset(sock)
    time.sleep(0.5)
    assert_clean(gateway)
    assert "Task exception was never retrieved" not in gateway.log()


# -- a bounded fuzz of command lines -------------------------------------------------------

VERBS = [b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"AUTH", b"AUTH PLAIN", b"VRFY",
         b"NOOP", b"HELP", b"RSET", b"EXPN", b"STARTTLS", b"BDAT", b"XCLIENT", b""]  # fmt: skip
PIECES = st.one_of(
    st.binary(max_size=12),
    st.sampled_from([b"<", b">", b"@", b'"', b"\\", b"%", b"\x00", b"\r", b"\x1b[31m", b"\xff",
                     b"\xc3\xa9", b"\xe2\x80\xae", b" SIZE=", b" BODY=8BITMIME", b" SMTPUTF8",
                     b"=", b"postmaster", b"example.org", b"(", b")", b":", b",", b" ", b"\t",
                     b"[", b"]", b"0@[", b"<@a,@b:c@d>"]),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(verb=st.sampled_from(VERBS), parts=st.lists(PIECES, max_size=8))
def test_fuzzed_command_lines_get_proper_replies(
    gateway: Gateway, verb: bytes, parts: list[bytes]
) -> None:
    line = (verb + b" " + b"".join(parts)).replace(b"\n", b"")
    if b"\r" in line:
        line = line.replace(b"\r", b"\r ")  # keep it inside the line: never a CRLF
    sessions = _FUZZ_SESSIONS.setdefault(id(gateway), {})
    for port in ("submission", "mx"):
        raw = sessions.get(port)
        if raw is None:
            raw = sessions[port] = Raw(gateway) if port == "submission" else Plain(gateway)
        try:
            raw.send(line + b"\r\n")
            reply = raw.reply()
            assert_proper(reply)
            if reply.startswith("334"):  # an AUTH challenge: abort it
                raw.send(b"*\r\n")
                assert_proper(raw.reply())
            elif reply.startswith("354"):
                raw.send(b".\r\n")
                assert_proper(raw.reply())
        except BaseException:
            sessions.pop(port).close()  # the next example starts afresh
            raise
        # TLS would start, or the server ends the session (too many unknown commands)
        if reply.startswith(("220", "221", "421", "502 5.5.1 Too many")):
            sessions.pop(port).close()


_FUZZ_SESSIONS: dict[int, dict[str, Raw]] = {}


def test_fuzz_left_the_gateway_clean(gateway: Gateway) -> None:
    for raw in _FUZZ_SESSIONS.pop(id(gateway), {}).values():
        raw.close()
    assert_clean(gateway)


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_nothing_after_a_bare_lf_is_executed(gateway: Gateway, mx: Sink, port: str) -> None:
    """Commands already in the buffer behind the 521 are not run: no message is taken."""
    rcpt = CERT_ADDRESS if port == "mx" else "after-lf@example.org"
    raw = Raw(gateway) if port == "submission" else Plain(gateway)
    before = {p.name for p in (gateway.state / "spool" / "queue").glob("*.eml")}
    raw.send(
        b"MAIL FROM:<alice@example.com>\r\nNOOP\n"
        + f"RSET\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
        + make_message(to="after-lf@example.org", cc="")
        + b".\r\nQUIT\r\n"
    )
    assert raw.expect("250").startswith("250 2.1.0")
    assert raw.reply() == replies.BARE_LINE_FEED
    assert _read_to_eof(raw.sock, raw.buf) == b""
    raw.close()
    time.sleep(0.5)
    assert {p.name for p in (gateway.state / "spool" / "queue").glob("*.eml")} <= before
    assert mx.to("after-lf@example.org") == []
    assert_clean(gateway)
