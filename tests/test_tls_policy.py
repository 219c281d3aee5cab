"""TLS on the three ports, checked with openssl s_client and Python ssl clients.

Submission (587 STARTTLS, 465 implicit): TLS 1.2 with forward-secret AEAD suites only
(Mozilla intermediate), TLS 1.3 on, no CBC. The MX (25): a broader list, since a
sender whose handshake fails delivers in plaintext (RFC 7435). A failed handshake is
one info line naming the peer, never a traceback; STARTTLS inside TLS is 503 5.5.1.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import time

import pytest

from relay.smtpd import replies
from tests.conftest import PASSWORD, Gateway, Sink, client_tls_context, make_message
from tests.test_smtp_in import Raw

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")


def s_client(gw: Gateway, port: str, *args: str) -> subprocess.CompletedProcess[str]:
    starttls = [] if port == "submission_tls" else ["-starttls", "smtp"]
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{gw.port(port)}",
            *starttls,
            "-CAfile",
            str(gw.state / "keys" / "ca.pem"),
            *args,
        ],  # fmt: skip
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


def negotiated(result: subprocess.CompletedProcess[str]) -> str | None:
    """The cipher the handshake agreed on, or None when it failed."""
    found = re.search(r"Cipher is (\S+)", result.stdout)
    if found is None or found.group(1) in ("(NONE)", "0000"):
        return None
    return found.group(1)


@pytest.mark.parametrize("cipher", ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES256-GCM-SHA384"])
@pytest.mark.parametrize("port", ["submission", "submission_tls"])
def test_submission_refuses_cbc_and_rsa_key_exchange(
    gateway: Gateway, port: str, cipher: str
) -> None:
    result = s_client(gateway, port, "-tls1_2", "-cipher", cipher)
    assert negotiated(result) is None, result.stdout[-2000:]


@pytest.mark.parametrize("cipher", ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES256-GCM-SHA384"])
def test_mx_keeps_the_broader_list(gateway: Gateway, cipher: str) -> None:
    result = s_client(gateway, "mx", "-tls1_2", "-cipher", cipher)
    assert negotiated(result) == cipher, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("port", ["submission", "submission_tls", "mx"])
def test_tls12_aead_and_tls13_work(gateway: Gateway, port: str) -> None:
    assert negotiated(s_client(gateway, port, "-tls1_2")) in (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
    assert negotiated(s_client(gateway, port, "-tls1_3")) in (
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    )


def _log_since(gw: Gateway, mark: int) -> str:
    deadline = time.monotonic() + 10
    while True:
        text = gw.log()[mark:]
        if "TLS handshake failed" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def _assert_one_info_line(gw: Gateway, mark: int) -> None:
    text = _log_since(gw, mark)
    lines = [line for line in text.splitlines() if "TLS handshake failed" in line]
    assert len(lines) == 1, text
    assert "[127.0.0.1]:" in lines[0], lines
    assert ": warning: " not in lines[0] and ": error: " not in lines[0], lines
    assert "Traceback" not in text and "internal error" not in text, text


def test_plaintext_after_starttls_is_one_info_line(gateway: Gateway) -> None:
    mark = len(gateway.log())
    raw = Raw(gateway, tls=False, login=False)
    raw.send(b"STARTTLS\r\n")
    raw.expect("220")
    raw.send(b"EHLO plaintext.test\r\n")  # no handshake: the server reads a non-TLS record
    raw.sock.settimeout(10)
    try:
        assert raw.sock.recv(1024) in (b"",) or True  # closed, possibly with a TLS alert
    except ConnectionError:
        pass
    raw.close()
    _assert_one_info_line(gateway, mark)


def test_old_protocol_on_implicit_tls_is_one_info_line(gateway: Gateway) -> None:
    mark = len(gateway.log())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("AES128-SHA")  # CBC: the submission ports offer none
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", gateway.port("submission_tls")), timeout=10) as s:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            ctx.wrap_socket(s)
    _assert_one_info_line(gateway, mark)


def test_plaintext_on_implicit_tls_is_one_info_line(gateway: Gateway) -> None:
    mark = len(gateway.log())
    with socket.create_connection(("127.0.0.1", gateway.port("submission_tls")), timeout=10) as s:
        s.sendall(b"EHLO scanner.test\r\n")
        try:
            s.recv(1024)
        except ConnectionError:
            pass
    _assert_one_info_line(gateway, mark)


def test_implicit_tls_session_offers_auth_and_no_starttls(gateway: Gateway) -> None:
    ctx = client_tls_context(gateway.state)
    with socket.create_connection(("127.0.0.1", gateway.port("submission_tls")), timeout=10) as s:
        with ctx.wrap_socket(s) as tls:
            assert tls.recv(1024).startswith(b"220 ")
            tls.sendall(b"EHLO client.test\r\n")
            ehlo = tls.recv(65536)
            assert b"250-AUTH LOGIN PLAIN\r\n" in ehlo and b"STARTTLS" not in ehlo, ehlo
            tls.sendall(b"STARTTLS\r\n")
            assert tls.recv(1024).decode().strip() == replies.TLS_ALREADY_ACTIVE
            tls.sendall(b"NOOP\r\n")
            assert tls.recv(1024).startswith(b"250 2.0.0")
    log = gateway.log()
    assert "auth_require_tls" not in log and "Requiring AUTH while not requiring TLS" not in log


@pytest.mark.parametrize("port", ["submission", "mx"])
def test_starttls_inside_tls_is_503(gateway: Gateway, port: str) -> None:
    sock = socket.create_connection(("127.0.0.1", gateway.port(port)), timeout=10)
    raw = Raw.__new__(Raw)
    raw.sock, raw.buf = sock, b""
    raw.expect("220")
    raw.send(b"EHLO client.test\r\nSTARTTLS\r\n")
    raw.reply()
    raw.expect("220")
    raw.sock = client_tls_context(gateway.state).wrap_socket(sock)
    raw.send(b"EHLO client.test\r\n")
    ehlo = raw.reply()
    assert "STARTTLS" not in ehlo
    assert ("AUTH" in ehlo) == (port == "submission"), ehlo  # the MX never offers AUTH
    raw.send(b"STARTTLS\r\n")
    assert raw.reply() == replies.TLS_ALREADY_ACTIVE
    raw.send(b"NOOP\r\n")
    assert raw.reply().startswith("250 2.0.0")
    raw.close()


@pytest.mark.parametrize("port", ["submission", "submission_tls", "mx"])
def test_tls_1_1_is_refused_with_one_info_line(gateway: Gateway, port: str) -> None:
    mark = len(gateway.log())
    result = s_client(gateway, port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert negotiated(result) is None, result.stdout[-2000:]
    _assert_one_info_line(gateway, mark)


def test_implicit_tls_submission_delivers_and_records_tls(gateway: Gateway, mx: Sink) -> None:
    rcpt = "implicit-tls@example.org"
    ctx = client_tls_context(gateway.state)
    with smtplib.SMTP_SSL("127.0.0.1", gateway.port("submission_tls"), context=ctx) as c:
        c.ehlo("client.test")
        assert c.has_extn("auth") and not c.has_extn("starttls") and c.has_extn("pipelining")
        c.login("alice@example.com", PASSWORD)
        c.sendmail("alice@example.com", [rcpt], make_message(to=rcpt, cc=""))
    mx.wait_for(lambda ms: any(rcpt in m.rcpt_tos for m in ms))
    with sqlite3.connect(f"file:{gateway.state / 'queue.db'}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT m.tls_version, m.tls_cipher FROM messages m JOIN recipients r "
            "ON r.qid = m.qid WHERE r.address = ?",
            (rcpt,),
        ).fetchone()
    db.close()
    assert row[0] in ("TLSv1.2", "TLSv1.3") and row[1], row
