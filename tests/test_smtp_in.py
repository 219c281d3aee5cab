"""SMTP in: the bad-input cases of RFC 5321 and the wild, against the running gateway."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time

import pytest

from relay.smtpd import replies
from tests.conftest import CERT_ADDRESS, PASSWORD, Gateway, Sink, client_tls_context, make_message


class Raw:
    """A plain-socket SMTP client, for what smtplib refuses to send."""

    def __init__(self, gw: Gateway, tls: bool = True, login: bool = True) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            ("127.0.0.1", gw.port()), timeout=20
        )
        self.buf = b""
        self.expect("220")
        self.send(b"EHLO raw.test\r\n")
        self.reply()
        if tls:
            self.send(b"STARTTLS\r\n")
            self.expect("220")
            self.sock = client_tls_context(gw.state).wrap_socket(self.sock)
            self.send(b"EHLO raw.test\r\n")
            self.reply()
        if login:
            token = base64.b64encode(f"\0alice@example.com\0{PASSWORD}".encode()).decode()
            self.send(f"AUTH PLAIN {token}\r\n".encode())
            self.expect("235")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed: " + " | ".join(lines))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if len(line) < 4 or line[3:4] != b"-":
                return "\n".join(lines)

    def expect(self, code: str) -> str:
        text = self.reply()
        assert text.startswith(code), text
        return text

    def close(self) -> None:
        self.sock.close()


def _read_to_eof(sock: socket.socket | ssl.SSLSocket, buf: bytes = b"") -> bytes:
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):  # a reset or an unclean TLS close ends it too
            return buf
        if not chunk:
            return buf
        buf += chunk


def qid_of(reply: str) -> str:
    return reply.rsplit(" ", 1)[1]


def test_auth_not_offered_before_tls(gateway: Gateway) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port(), timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("starttls")
        assert not c.has_extn("auth")
        code, text = c.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHg=")
        assert code == 530 and text.startswith(b"5.7.0")
        code, text = c.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530


def test_auth_offered_after_tls_and_required_for_mail(gateway: Gateway) -> None:
    with gateway.smtp(user=None) as c:
        assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
        code, text = c.docmd("MAIL", "FROM:<alice@example.com>")
        assert code == 530 and b"5.7.0" in text


def test_unknown_user_and_wrong_password_get_the_same_reply_then_disconnect(
    gateway: Gateway,
) -> None:
    answers = []
    with gateway.smtp(user=None) as c:
        for user, password in (
            ("nobody@example.com", PASSWORD),
            ("alice@example.com", "wrong password"),
        ):
            c.user, c.password = user, password
            with pytest.raises(smtplib.SMTPAuthenticationError) as err:
                c.auth("PLAIN", c.auth_plain)  # one attempt (login() would try every mechanism)
            answers.append((err.value.smtp_code, err.value.smtp_error))
        assert answers[0] == answers[1]
        assert answers[0][0] == 535 and answers[0][1].startswith(b"5.7.8")
        started = time.monotonic()
        code, text = c.docmd("AUTH", "PLAIN " + "AGFsaWNlQGV4YW1wbGUuY29tAHdyb25n")
        assert code == 421 and b"Too many failed" in text
        assert time.monotonic() - started >= 0.5  # third failure waits 3 x auth_delay (0.2 s)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()


def test_login_mechanism_works(gateway: Gateway) -> None:
    with gateway.smtp(user=None) as c:
        c.user, c.password = "alice@example.com", PASSWORD
        code, _ = c.auth("LOGIN", c.auth_login, initial_response_ok=False)
        assert code == 235


def test_sender_must_be_the_authenticated_user(gateway: Gateway) -> None:
    with gateway.smtp() as c:
        code, text = c.docmd("MAIL", "FROM:<mallory@example.com>")
        assert code == 550 and text.startswith(b"5.7.1") and b"only send as your own" in text
        code, text = c.docmd("MAIL", "FROM:<>")
        assert code in (501, 550)


def test_from_header_must_be_the_user(gateway: Gateway, mx: Sink) -> None:
    raw = make_message(sender="ceo@example.com", subject="spoofed")
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        c.rcpt("bob@example.org")
        code, text = c.data(raw)
        assert code == 550 and text.startswith(b"5.7.1")
    two_from = b"From: alice@example.com\r\nFrom: ceo@example.com\r\n" + make_message()
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        c.rcpt("bob@example.org")
        code, _ = c.data(two_from)
        assert code == 550


def test_size_limit_at_mail_and_at_data(gateway: Gateway, mx: Sink) -> None:
    with gateway.smtp() as c:
        assert int(c.esmtp_features["size"]) == 1048576
        code, text = c.docmd("MAIL", "FROM:<alice@example.com> SIZE=2000000")
        assert code == 552
        c.rset()
        c.mail("alice@example.com")
        c.rcpt("size-test@example.org")
        big = make_message(body=("x" * 990 + "\r\n") * 1200)
        code, text = c.data(big)
        assert code == 552 and text.startswith(b"5.3.4")
        assert c.noop()[0] == 250  # the session goes on
    time.sleep(0.5)
    assert mx.to("size-test@example.org") == []


def test_recipient_limit(gateway: Gateway, mx: Sink) -> None:
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        for i in range(5):
            assert c.rcpt(f"limit{i}@example.org")[0] == 250
        code, text = c.rcpt("limit5@example.org")
        assert code == 452 and text.startswith(b"4.5.3")
        code, text = c.data(make_message(to="limit0@example.org", cc="limit1@example.org"))
        assert code == 250
    got = mx.wait_for(lambda ms: any("limit0@example.org" in m.rcpt_tos for m in ms))
    delivered = {r for m in got for r in m.rcpt_tos if r.startswith("limit")}
    mx.wait_for(
        lambda ms: (
            {r for m in ms for r in m.rcpt_tos if r.startswith("limit")}
            >= {f"limit{i}@example.org" for i in range(5)}
        )
    )
    assert "limit5@example.org" not in delivered


@pytest.mark.parametrize("arg", ["<alice@example.com\rX>", "<alice@exa\0mple.com>"])
def test_control_characters_in_envelope(gateway: Gateway, arg: str) -> None:
    raw = Raw(gateway)
    raw.send(f"MAIL FROM:{arg}\r\n".encode())
    assert raw.expect("501").startswith("501 5.5.4")
    raw.close()


@pytest.mark.parametrize(
    "address", ["<bob@exa\rmple.org>", "<bob@exa\0mple.org>", "<bob\r\0@example.org>"]
)
def test_control_characters_in_recipient(gateway: Gateway, address: str) -> None:
    raw = Raw(gateway)
    raw.send(b"MAIL FROM:<alice@example.com>\r\n")
    raw.expect("250")
    raw.send(f"RCPT TO:{address}\r\n".encode())
    assert raw.reply() == replies.BAD_CHARACTERS
    raw.send(b"DATA\r\n")  # the recipient was not taken
    assert raw.expect("503").startswith("503 5.5.1")
    raw.close()


@pytest.mark.parametrize(
    "command",
    [
        b"RCPT TO:<bob@example.org\n>\r\n",
        b"RCPT TO:<bob@exa\nmple.org>\r\n",
        b"RCPT TO:<bob@example.org>\n",
    ],
    ids=["LF-before-bracket", "LF-in-domain", "LF-ending"],
)
def test_line_feed_in_a_recipient_is_refused(gateway: Gateway, mx: Sink, command: bytes) -> None:
    # aiosmtpd alone splits at the LF and takes <bob@example.org as bob@example.org.
    # Like Postfix's smtpd_forbid_bare_newline = yes: 521 5.5.2, and the connection ends
    # there, so neither the recipient nor the commands after the LF are taken.
    tag = f"bare-lf-{command.hex()[-12:]}@example.org"
    raw = Raw(gateway)
    raw.send(b"MAIL FROM:<alice@example.com>\r\n")
    raw.expect("250")
    raw.send(command + f"RCPT TO:<{tag}>\r\nDATA\r\n".encode())
    assert raw.reply() == replies.BARE_LINE_FEED
    assert _read_to_eof(raw.sock, raw.buf) == b""  # closed, and nothing more was said
    raw.close()
    time.sleep(0.3)
    assert mx.to(tag) == [] and mx.to("bob@example.org\n") == []


def test_auth_failures_read_the_same_then_the_third_closes(gateway: Gateway) -> None:
    def plain(user: str, password: str) -> bytes:
        return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"

    raw = Raw(gateway, login=False)
    raw.send(plain("nobody@example.com", PASSWORD))  # unknown user
    unknown = raw.reply()
    raw.send(b"AUTH LOGIN\r\n")  # known user, wrong password, the other mechanism
    raw.expect("334")
    raw.send(base64.b64encode(b"alice@example.com") + b"\r\n")
    raw.expect("334")
    raw.send(base64.b64encode(b"not the password") + b"\r\n")
    wrong = raw.reply()
    assert unknown == wrong == replies.AUTH_FAILED
    raw.send(plain("alice@example.com", "still wrong"))
    assert raw.reply() == replies.TOO_MANY_AUTH_FAILURES
    assert _read_to_eof(raw.sock, raw.buf) == b""  # closed, and nothing more was said
    raw.close()


def _send_raw_message(gw: Gateway, rcpt: str, stuffed_body_line: bytes) -> str:
    head = make_message(to=rcpt, cc=rcpt, body="")
    raw = Raw(gw)
    raw.send(f"MAIL FROM:<alice@example.com>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    raw.send(head + b"before\r\n" + stuffed_body_line + b"\r\nafter\r\n.\r\n")
    reply = raw.reply()
    raw.send(b"QUIT\r\n")
    raw.close()
    return reply


@pytest.mark.parametrize(
    ("sent", "received"),
    [
        (b"w" * 998, b"w" * 998),
        (b".." + b"w" * 997, b"." + b"w" * 997),  # 999 sent, 998 after unstuffing
        (b"w" * 999, None),
        (b".." + b"w" * 998, None),
    ],
    ids=["998", "stuffed-998", "999", "stuffed-999"],
)
def test_line_limit_boundary(
    gateway: Gateway, mx: Sink, sent: bytes, received: bytes | None
) -> None:
    """998 octets plus CRLF pass, 999 do not, counted after the stuffed dot is removed."""
    rcpt = f"line-{len(sent)}-{sent[:2].hex()}@example.org"
    reply = _send_raw_message(gateway, rcpt, sent)
    if received is None:
        assert reply == replies.LINE_TOO_LONG
        return
    assert reply.startswith("250 2.0.0"), reply
    mx.wait_for(lambda ms: any(rcpt in m.rcpt_tos for m in ms))
    (got,) = mx.to(rcpt)
    assert b"\r\nbefore\r\n" + received + b"\r\nafter\r\n" in got.data


def test_long_line_refused(gateway: Gateway) -> None:
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        c.rcpt("bob@example.org")
        code, text = c.data(make_message(body="y" * 1200 + "\r\n"))
        assert code == 500 and text.startswith(b"5.5.2")


def test_eight_bit_header_without_smtputf8(gateway: Gateway) -> None:
    raw = Raw(gateway)
    raw.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    raw.send(b"From: alice@example.com\r\nSubject: caf\xc3\xa9\r\n\r\nbody\r\n.\r\n")
    assert raw.expect("550").startswith("550 5.6.7")
    raw.close()


@pytest.mark.parametrize(
    "ending",
    [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r\n.\r", b"\r.\r\n"],
    ids=["LF.LF", "CR.CR", "CRLF.LF", "LF.CRLF", "CRLF.CR", "CR.CRLF"],
)
def test_smuggling_yields_at_most_one_message(gateway: Gateway, mx: Sink, ending: bytes) -> None:
    tag = f"smuggled-{ending.hex()}@example.org"
    raw = Raw(gateway)
    raw.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<outer@example.org>\r\nDATA\r\n")
    raw.expect("250")
    raw.expect("250")
    raw.expect("354")
    payload = (
        b"From: alice@example.com\r\nSubject: outer\r\n\r\nhello"
        + ending
        + b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<"
        + tag.encode()
        + b">\r\nDATA\r\n"
        + b"From: alice@example.com\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"
    )
    raw.send(payload)
    reply = raw.reply()
    # Either refused (bare CR/LF) or, at most, one message made of everything.
    assert reply.startswith("550 5.6.0"), reply
    raw.send(b"QUIT\r\n")
    raw.close()
    time.sleep(0.5)
    assert mx.to(tag) == []


def test_commands_pipelined_with_starttls_are_discarded(gateway: Gateway) -> None:
    """RFC 3207 4.2: what came before the handshake, in the same packet, is not executed.

    The injected MAIL would be answered 503 (no EHLO since the handshake) or 530 (no
    AUTH), never 250; the NOOP sent after the handshake answers 250. So the first reply
    after TLS tells which command the server ran, and QUIT shows nothing else came.
    """
    raw = Raw(gateway, tls=False, login=False)
    raw.send(b"STARTTLS\r\nMAIL FROM:<alice@example.com>\r\n")  # injected in plaintext
    assert raw.expect("220")
    assert raw.buf == b""  # no plaintext answer to the injected MAIL either
    tls = client_tls_context(gateway.state).wrap_socket(raw.sock)
    tls.sendall(b"NOOP\r\nQUIT\r\n")
    lines = _read_to_eof(tls).split(b"\r\n")
    tls.close()
    assert lines[0] == b"250 2.0.0 OK", lines
    assert lines[1].startswith(b"221 ") and lines[2:] == [b""], lines


def test_certification_address_alone_is_refused(gateway: Gateway) -> None:
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        code, text = c.rcpt(CERT_ADDRESS)
        assert code == 250 and b"certified" in text
        code, text = c.data(make_message(to=CERT_ADDRESS, cc=""))
        assert code == 554 and text.startswith(b"5.5.1")


@pytest.mark.parametrize("arg", ['"', '<"', 'FROM:<"@example.com', "0@[", "<0@[>"])
def test_path_the_stdlib_parser_trips_on_is_a_syntax_error(gateway: Gateway, arg: str) -> None:
    # email._header_value_parser raises IndexError here; that is the client's syntax
    # error (501 or 553), not the gateway's internal error (451).
    with gateway.smtp() as c:
        code, text = c.docmd(f"MAIL FROM:{arg}")
        assert (code, text[:4]) in ((501, b"5.5."), (553, b"5.1.")), (code, text)
        code, _ = c.docmd("MAIL FROM:<alice@example.com>")
        assert code == 250
        code, text = c.docmd(f"RCPT TO:{arg}")
        assert (code, text[:4]) in ((501, b"5.5."), (553, b"5.1.")), (code, text)


def test_bad_recipient_syntax(gateway: Gateway) -> None:
    with gateway.smtp() as c:
        c.mail("alice@example.com")
        code, text = c.rcpt("no-domain")
        assert code in (501, 553)
        code, text = c.rcpt("u%ext.example@example.org")
        assert code == 501 and text.startswith(b"5.1.3")


def test_every_reply_has_an_enhanced_code(gateway: Gateway) -> None:
    with gateway.smtp() as c:
        for cmd, arg in (
            ("NOOP", ""),
            ("RSET", ""),
            ("RCPT", "TO:<bob@example.org>"),
            ("VRFY", "bob"),
            ("BOGUS", ""),
            ("DATA", ""),
        ):
            code, text = c.docmd(cmd, arg)
            assert text[:1] in (b"2", b"4", b"5") and text[1:2] == b".", (cmd, code, text)
