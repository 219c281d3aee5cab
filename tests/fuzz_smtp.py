"""A bounded fuzz campaign against the real gateway, over both of its SMTP ports.

``make fuzz`` (``FUZZ_SECONDS``, default 600) runs it; ``python -m tests.fuzz_smtp
--seconds N --seed S`` is the same from the command line, ``--session N`` replays
one session and ``--debug-log`` has the gateway log tracebacks. It starts the gateway as the tests do (tests/conftest.py: a config with
port 0, ``listen.json``, aiosmtpd sinks as the remote MXs through ``[delivery.routes]``,
a local DNS server), registers a submission user and an MX-mode user, enables a
certified-reception owner, and drives SMTP sessions from a few client threads:

* submission (STARTTLS then AUTH) and submission over implicit TLS, as ``alice``;
* the MX port: the certification address (a registered sender whose SPF passes), a
  reception address, the VERP return path of a message accepted earlier (a DSN), and
  addresses the MX must refuse.

Each session mixes well-formed commands with mutated ones (random bytes, invalid UTF-8,
C0/C1 controls, NUL, bare CR, bare LF, overlong arguments, odd ESMTP parameters,
unknown commands, pipelined groups, AUTH garbage, STARTTLS with commands pipelined
after it) and sends messages built with mutated MIME (deep nesting, many parts, broken
base64 and quoted-printable, missing or absent boundaries, huge parameters, invalid
UTF-8 and 8-bit headers, RFC 2047 encoded words carrying CR/LF, random byte flips).

Findings, each with the seed and session number that replay it:

* a ``451`` reply that says "internal"; a reply that is not ``ddd[ -]text``, that
  carries a control character or invalid UTF-8, or a 4xx/5xx without an RFC 3463
  enhanced status code (replies to HELO and EHLO have none, RFC 2034 §3); a command
  line (CRLF-ended) that gets no reply in time;
* after the campaign: the gateway not answering EHLO on every port (or gone); a
  ``Traceback``, "internal error", an ``error:`` line, or a line not in the log format
  (an unescaped line break) in the gateway's log; an accepted message (250 after DATA)
  not delivered to a sink nor certified as failed once the queue drained; a spool file
  with no database row, or a temporary spool file left.

Why a seeded generator and not a coverage-guided fuzzer: the target is a server in
another process reached over TCP and TLS, and what must hold is about the whole
system (replies, log, queue, spool), not a crash of one function. atheris (libFuzzer)
instruments and drives a function in its own process; it cannot see coverage across
the socket, and a harness calling the parsers directly would skip the protocol, the
queue and the certificate workers where the faults were. Every session is generated
from ``random.Random(f"{seed}:{session}")`` alone, so a finding is replayed from two
numbers, whatever ran before or beside it. hypothesis, the other candidate, earns its
keep by shrinking a failing input, which here would mean replaying many sessions
against a gateway whose queue, throttles and logs have moved on since the failure;
the parsers themselves have hypothesis property tests in the suite.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import random
import re
import socket
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.cleanup.bounces import make_return_path
from tests.conftest import (
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    client_tls_context,
    run_cli,
    start_gateway,
)
from tests.dnsserver import DNSServer

DOMAIN = "certifica.localhost"
CERT_ADDRESS = f"certifica@{DOMAIN}"
USER = "alice@example.com"  # submission user
MX_USER = "bob@spf.test"  # MX-mode user: spf.test's SPF passes for 127.0.0.1
OWNER = "owner@owner.test"  # certified reception
SINK_DOMAINS = ("example.com", "example.net", "example.org", "spf.test", "owner.test")
FINAL = ("delivered", "failed", "withdrawn", "bounced")
REPLY_TIMEOUT = 15.0  # seconds for the answer to one command line
DATA_TIMEOUT = 90.0  # seconds for the answer to the final dot (DNS, DKIM, spool fsync)
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d [\w./-]+(?:\[\d+\])?: ")
ENHANCED = re.compile(rb"\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
QUEUED = re.compile(rb"queued as ([A-Za-z0-9]+)")


# -- the world: gateway, sinks, DNS ------------------------------------------------------
def fuzz_config(tmp: Path, sink_port: int, dns: DNSServer, debug: bool = False) -> Path:
    routes = "\n".join(f'"{d}" = "127.0.0.1:{sink_port}"' for d in SINK_DOMAINS)
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""
[gateway]
state_dir = "state"
[listen]
submission = "127.0.0.1:0"
submission_tls = "127.0.0.1:0"
mx = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[limits]
auth_delay = 0.0
auth_block = 1000000
message_size = 2097152
recipients = 5
timeout = 30.0
[queue]
first_retry = 1.0
max_retry = 2.0
lifetime = 20.0
scan_interval = 0.2
[delivery]
connect_timeout = 5.0
[delivery.routes]
{routes}
{dns.config_toml(timeout=1.0)}
[log]
level = "{"debug" if debug else "info"}"
"""
    )
    return cfg


class World:
    """The gateway under test and what it talks to; ``close`` stops them."""

    def __init__(self, workdir: Path, debug: bool = False) -> None:
        self.workdir = workdir
        self.dns = DNSServer()
        self.dns.__enter__()
        self.dns.add("spf.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        self.dns.add("_dmarc.spf.test", "TXT", "v=DMARC1; p=none")
        self.dns.add("partner.test", "TXT", "v=spf1 -all")
        self.sinks = SinkServer()
        self.sink = self.sinks.start(Sink())
        cfg = fuzz_config(workdir, self.sink.port, self.dns, debug)
        self.gw: Gateway = start_gateway(cfg, {USER: PASSWORD, MX_USER: PASSWORD})
        out = run_cli(cfg, "reception", "enable", OWNER, "--ack-sender")
        found = re.search(r"recepcion\+[a-z2-7]+@" + re.escape(DOMAIN), out.stdout)
        if out.returncode != 0 or not found:
            raise RuntimeError(f"reception enable failed: {out.stdout}{out.stderr}")
        self.reception = found.group(0)
        self.verp_key = (self.gw.state / "keys" / "verp.key").read_bytes()
        self.tls = client_tls_context(self.gw.state)
        self.accepted: list[Accepted] = []
        # client port -> (start, end, session) of each session that used it: the log
        # names a client by its port, and ports are reused over a long campaign
        self.peers: dict[int, list[tuple[float, float, int]]] = {}
        self._lock = threading.Lock()

    def port(self, name: str) -> int:
        return self.gw.port(name)

    def add_accepted(self, item: Accepted) -> None:
        with self._lock:
            self.accepted.append(item)

    def some_accepted(self, rng: random.Random) -> str | None:
        with self._lock:
            return rng.choice(self.accepted).qid if self.accepted else None

    def close(self) -> None:
        self.gw.stop()
        self.sinks.close()
        self.dns.__exit__(None, None, None)


@dataclass
class Accepted:
    qid: str
    session: int
    kind: str


@dataclass
class Finding:
    kind: str
    detail: str
    session: int | None = None
    transcript: list[str] = field(default_factory=list)


@dataclass
class Stats:
    sessions: int = 0
    commands: int = 0
    messages_sent: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # final-dot replies by code
    replies: Counter[str] = field(default_factory=Counter)  # every reply by class
    lock: threading.Lock = field(default_factory=threading.Lock)


# -- one connection --------------------------------------------------------------------
class Closed(Exception):
    """The server closed the connection (or reset it)."""


class Stall(Exception):
    """No complete reply in time."""


class Conn:
    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
        self.local_port = int(sock.getsockname()[1])  # how the gateway's log names this client
        self.sock: socket.socket = tls.wrap_socket(sock) if tls else sock
        self.buf = b""
        self.transcript: list[str] = []

    def send(self, data: bytes) -> None:
        self.transcript.append(f"C: {data[:600]!r}{' ...' if len(data) > 600 else ''}")
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as err:
            raise Closed(str(err)) from None

    def reply(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        """One whole reply, its lines joined with CRLF and without the last CRLF."""
        lines: list[bytes] = []
        deadline = time.monotonic() + timeout
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 2 :]
                lines.append(line)
                if len(line) < 4 or line[3:4] != b"-":
                    text = b"\r\n".join(lines)
                    self.transcript.append(f"S: {text[:600]!r}")
                    return text
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise Stall(repr(self.buf[:200]))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                raise Stall(repr(self.buf[:200])) from None
            except (OSError, ssl.SSLError) as err:
                raise Closed(str(err)) from None
            if not chunk:
                raise Closed("EOF" + (f" after {self.buf[:200]!r}" if self.buf else ""))
            self.buf += chunk

    def starttls(self, tls: ssl.SSLContext) -> None:
        self.sock.settimeout(REPLY_TIMEOUT)
        try:
            self.sock = tls.wrap_socket(self.sock)
        except (OSError, ssl.SSLError) as err:
            raise Closed(f"TLS handshake: {err}") from None
        self.transcript.append("C: <TLS handshake>")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# -- mutations of command lines ---------------------------------------------------------
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80"]  # fmt: skip
CONTROLS = [bytes([c]) for c in [*range(1, 9), 11, 12, *range(14, 32), 127]] + [
    b"\xc2\x85", b"\xc2\x9b", b"\xe2\x80\xae", b"\xe2\x80\xa8", b"\x1b[31m", b"\x1b]0;x\x07",
]  # fmt: skip
ODD_PARAMS = [
    b"SIZE=abc", b"SIZE=-1", b"SIZE=99999999999999999999", b"SIZE=", b"SIZE=1 SIZE=2",
    b"BODY=8BITMIME", b"BODY=BINARYMIME", b"BODY=7BIT", b"BODY=FOO", b"BODY=",
    b"SMTPUTF8", b"SMTPUTF8=yes", b"RET=FULL", b"RET=HDRS", b"RET=NONE", b"RET=",
    b"ENVID=abc+2Bdef", b"ENVID=" + b"x" * 120, b"ENVID=\xff\xfe", b"NOTIFY=NEVER",
    b"NOTIFY=SUCCESS,FAILURE,DELAY", b"NOTIFY=NEVER,SUCCESS", b"NOTIFY=", b"NOTIFY=bogus",
    b"ORCPT=rfc822;bob@example.org", b"ORCPT=rfc822;bob+2B@x", b"ORCPT=garbage", b"ORCPT=",
    b"AUTH=<>", b"AUTH=alice@example.com", b"MT-PRIORITY=3", b"HOLDFOR=10", b"REQUIRETLS",
    b"X=Y", b"=", b"==", b"A" * 300 + b"=1", b"BY=120;R", b"MTRK=x", b"TRANSID=<1@x>",
]  # fmt: skip
UNKNOWN = [b"BDAT 10 LAST", b"ETRN example.org", b"TURN", b"ATRN", b"XCLIENT ADDR=1.2.3.4",
           b"XFORWARD NAME=x", b"GET / HTTP/1.1", b"POST /x HTTP/1.0", b"SIZE 10", b"X" * 40,
           b"\xffCMD", b"MAIL", b"RCPT", b"MAILFROM:<a@b.c>", b"CONNECT x:25 HTTP/1.1"]  # fmt: skip


def _insert(rng: random.Random, line: bytes, piece: bytes) -> bytes:
    at = rng.randint(0, len(line))
    return line[:at] + piece + line[at:]


def mutate_line(rng: random.Random, line: bytes) -> bytes:
    """``line`` (no line ending) changed in one to three ways; may hold CR, LF or NUL."""
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        how = rng.randrange(14)
        if how == 0:
            line = _insert(rng, line, bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))))
        elif how == 1:
            line = _insert(rng, line, rng.choice(INVALID_UTF8))
        elif how == 2:
            line = _insert(rng, line, rng.choice(CONTROLS))
        elif how == 3:
            line = _insert(rng, line, b"\x00")
        elif how == 4:
            line = _insert(rng, line, b"\r")
        elif how == 5:
            line = _insert(rng, line, b"\n")
        elif how == 6:
            chunk = line[rng.randrange(len(line) + 1) :] or b"A"
            line = line + chunk * (rng.choice((200, 600, 1100, 5000)) // len(chunk) + 1)
        elif how == 7:
            line = line + b" " + b" ".join(rng.sample(ODD_PARAMS, rng.randint(1, 4)))
        elif how == 8:
            line = line[: rng.randint(0, len(line))]
        elif how == 9:
            line = bytes(c ^ 0x20 if 65 <= c <= 90 or 97 <= c <= 122 else c for c in line)
        elif how == 10:
            line = line.replace(b":", rng.choice((b": ", b" : ", b":\t", b"::", b"")), 1)
        elif how == 11:
            line = line.replace(b"<", rng.choice((b"<<", b"", b"< ", b'<"', b"<@a,@b:")), 1)
        elif how == 12:
            line = _insert(rng, line, "ñé日本\u202e".encode()[: rng.randint(1, 12)])
        else:
            line = bytes(rng.randrange(32, 127) for _ in range(rng.randint(0, 80)))
    return line


def fuzz_command(rng: random.Random, base: list[bytes]) -> bytes:
    """One fuzzed command line with its line ending (usually CRLF)."""
    r = rng.random()
    if r < 0.15:
        line = rng.choice(UNKNOWN)
    elif r < 0.25:
        line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 120))).replace(b"\n", b"")
    else:
        line = mutate_line(rng, rng.choice(base))
    ending = rng.choices((b"\r\n", b"\n", b"\r\r\n", b" \r\n"), (90, 4, 3, 3))[0]
    return line + ending


def auth_garbage(rng: random.Random) -> list[bytes]:
    """Lines of one bad AUTH exchange (the first is the AUTH command)."""

    def b64(data: bytes) -> bytes:
        return base64.b64encode(data)

    user, pw = USER.encode(), PASSWORD.encode()
    return rng.choice(
        [
            [b"AUTH PLAIN " + b64(bytes(rng.randrange(256) for _ in range(rng.randint(0, 60))))],
            [b"AUTH PLAIN !!!not base64"],
            [b"AUTH PLAIN ="],
            [b"AUTH PLAIN " + b64(b"\0" + user + b"\0\xff\xfe" + pw)],
            [b"AUTH PLAIN " + b64(b"\0\xff" + user + b"\x00" + pw)],
            [b"AUTH PLAIN " + b64(b"someone@example.com\0" + user + b"\0" + pw)],
            [b"AUTH PLAIN " + b64(user + b"\0" + pw)],
            [b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + pw + b"\0extra")],
            [b"AUTH PLAIN " + b64(b"\0" + user + b"\r\n\0" + pw)],
            [b"AUTH PLAIN " + b"A" * rng.choice((700, 3000))],
            [b"AUTH PLAIN", b"*"],
            [b"AUTH PLAIN", bytes(rng.randrange(33, 127) for _ in range(30))],
            [b"AUTH LOGIN", b64(b"\xff\xfe"), b64(b"x")],
            [b"AUTH LOGIN " + b64(user), b"not-base64!"],
            [b"AUTH LOGIN", b"*"],
            [b"AUTH CRAM-MD5"],
            [b"AUTH XOAUTH2 " + b64(b"user=" + user + b"\x01auth=Bearer x\x01\x01")],
            [b"AUTH"],
            [b"AUTH PLAIN " + b64(b"\0" + user + b"\0" + pw) + b" extra"],
        ]
    )


# -- mutated MIME ------------------------------------------------------------------------
def encoded_word(rng: random.Random, text: bytes) -> bytes:
    if rng.random() < 0.5:
        return b"=?utf-8?b?" + base64.b64encode(text) + b"?="
    q = b"".join(bytes([c]) if 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 else b"=%02X" % c
                 for c in text)  # fmt: skip
    return (
        rng.choice((b"=?utf-8?q?", b"=?iso-8859-1?q?", b"=?x-unknown?q?", b"=?utf-8*es?q?"))
        + q
        + b"?="
    )


URLS = [
    b"http://example.org/a", b"https://example.org/p?q=1#f", b"http://\xc3\xa9xample.test/\xe2\x82\xac",
    b"https://ok@evil.example/", b"javascript:alert(1)", b"http://[::1]/x", b"http://[::1",
    b"https://example.org/" + b"a" * 900, b"http://x.test/%0D%0ABcc:%20y", b"HTTP://EXAMPLE.ORG",
    b"http://xn--nxasmq6b.test/", b"http://a.test/\x00b", b"  http://sp.test/  ", b"http:/x",
    b"https://example.org/\\evil", b"mailto:a@b.test", b"data:text/html,<b>x</b>", b"http://",
    b"http://example.org/\xff\xfe", b"http://1.2.3.4:99999/", b"https://xn--/", b"http://a..b/",
]  # fmt: skip
NASTY_TEXT = [
    b"Hello\r\nBcc: mallory@evil.test", b"a\rb\nc\x00d", b"<b>bold</b> <font size=99>x</font>",
    b"{{7*7}} ${jndi:ldap://x} '; DROP TABLE messages; --", b"\x1b[2J\x1b[31mred",
    b"\xe2\x80\xaeevil\xe2\x80\xac", "日本語 한국어 ñandú".encode(), b"\xff\xfe\xfd", b"=?=?=",
    b"x" * 500, b"\r\n\r\n--boundary--\r\n",
]  # fmt: skip


AUTH_HEADERS = [
    b"DKIM-Signature: v=1; a=rsa-sha256; d=spf.test; s=sel; h=from:to; bh=; b=",
    b"DKIM-Signature: v=1; a=ed25519-sha256; d=spf.test; s=sel; l=5; h=from; bh=AA==; b=AA==",
    b"DKIM-Signature: v=1; a=rsa-sha1; d=\xff; s=; h=; bh=; b=",
    b"DKIM-Signature: ",
    b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=spf.test; s=sel; b=",
    b"ARC-Message-Signature: i=1; a=rsa-sha256; d=spf.test; s=sel; h=from; bh=; b=",
    b"ARC-Authentication-Results: i=1; mx.test; dkim=pass",
    b"ARC-Seal: i=99999999999999999999; cv=pass; b=",
    b"Authentication-Results: certifica.localhost; dkim=pass header.d=spf.test",
    b"Received: from \xff ([999.1.1.1]) by x; ",
    b"Auto-Submitted: auto-replied; ",
    b"Content-Type: multipart/report; report-type=delivery-status; ",
    b"Return-Path: <",
    b"Resent-From: ",
]  # fmt: skip


def header_value(rng: random.Random, plain: bytes) -> bytes:
    r = rng.random()
    if r < 0.55:
        return plain
    if r < 0.75:
        return plain + b" " + encoded_word(rng, rng.choice(NASTY_TEXT))
    if r < 0.85:
        return plain + b" " + rng.choice(NASTY_TEXT).replace(b"\r", b"").replace(b"\n", b"")
    if r < 0.92:  # folded, many times
        return b"\r\n ".join([plain] * rng.randint(2, 300))
    return plain + b" " + bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 20)))


def wrap76(data: bytes) -> bytes:
    return b"\r\n".join(data[i : i + 76] for i in range(0, len(data), 76)) or b""


def leaf(rng: random.Random) -> tuple[list[bytes], bytes]:
    payload = bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    kind = rng.randrange(10)
    if kind == 0:
        charset = rng.choice((b"utf-8", b"iso-8859-1", b"x-unknown", b"utf-7", b"", b'"utf-8'))
        text = rng.choice(NASTY_TEXT).replace(b"\r", b"").replace(b"\n", b"\r\n")
        links = b"\r\n".join(
            rng.choice(URLS) + b"?%d" % i for i in range(rng.choice((0, 1, 3, 600)))
        )
        return [b"Content-Type: text/plain; charset=" + charset], text + b"\r\n" + links + b"\r\n"
    if kind == 1:
        anchors = b"".join(
            b"<a href=" + rng.choice((b"'", b'"', b"")) + rng.choice(URLS) + b"#%d'>x</a>\r\n" % i
            for i in range(rng.choice((1, 3, 600)))
        )
        html = (b"<html><body>" + anchors + b"<img src='http://example.net/p.png'><a href="
                b"'http://example.org/x?a=1&b=2'>link</a><!--[if mso]><a href='http://x.test/'>"
                b"<![endif]--><script>alert(1)</script><area href=http://a.test/ " + encoded_word(rng, b"x")
                + rng.choice((b"</body></html>", b"</html>", b"", b"</body", b"<a href='"))
               )  # fmt: skip
        charset = rng.choice((b"utf-8", b"utf-16", b"iso-2022-jp", b"latin1", b"bogus"))
        cte = rng.choice((b"", b"quoted-printable", b"base64"))
        if cte == b"base64":
            html = wrap76(base64.b64encode(html))
        elif cte == b"quoted-printable":
            html = html.replace(b"=", b"=3D").replace(b"://", b":=\r\n//")
        return [
            b"Content-Type: text/html; charset=" + charset,
            b"Content-Transfer-Encoding: " + (cte or b"8bit"),
        ], html + b"\r\n"
    if kind == 2:  # base64, sometimes broken
        body = wrap76(base64.b64encode(payload))
        how = rng.randrange(5)
        if how == 1:
            body = body.replace(b"A", b"!", 3) + b"===="
        elif how == 2:
            body = body[: max(0, len(body) - rng.randint(1, 5))]
        elif how == 3:
            body = b"@@@@ not base64 at all \xff\r\n" + body
        name = header_value(rng, b'"report.pdf"')
        return [
            b"Content-Type: application/octet-stream; name=" + name,
            b"Content-Transfer-Encoding: " + rng.choice((b"base64", b"BASE64", b"base64 ", b"b64")),
            b"Content-Disposition: attachment; filename=" + name,
        ], body + b"\r\n"
    if kind == 3:  # quoted-printable, sometimes broken
        body = rng.choice(
            (b"caf=C3=A9 =\r\nsoft break", b"=ZZ=4=\r\n=", b"=\r\n" * 20, b"a=0D=0Ab")
        )
        return [b"Content-Type: text/plain; charset=utf-8",
                b"Content-Transfer-Encoding: quoted-printable"], body + b"\r\n"  # fmt: skip
    if kind == 4:  # 8-bit body, invalid UTF-8
        return [b"Content-Type: text/plain; charset=utf-8", b"Content-Transfer-Encoding: 8bit"], (
            payload.replace(b"\r", b"").replace(b"\n", b"\r\n").replace(b"\x00", b"") + b"\r\n"
        )
    if kind == 5:  # huge parameters
        big = b"x" * rng.choice((100, 900, 990))
        lines = [b'Content-Type: application/pdf; name="' + big + b'"']
        if rng.random() < 0.5:  # RFC 2231 continuations, percent-encoded
            lines += [b"Content-Disposition: attachment;"] + [
                b"\tfilename*%d*=%s" % (i, b"utf-8''%FF%FE" if i == 0 else b"%0D%0A%00abc;")
                for i in range(rng.randint(1, 400))
            ]
        return lines, wrap76(base64.b64encode(payload)) + b"\r\n"
    if kind == 6:  # odd encodings and types
        return [
            b"Content-Type: " + rng.choice((b"text/", b"/", b"a/b/c", b"text/plain;;;", b"\xff/\xfe",
                                             b"message/delivery-status", b"image/png; x*=''")),
            b"Content-Transfer-Encoding: " + rng.choice((b"x-uuencode", b"7bit; x", b"", b"\xff")),
        ], b"begin 644 x\r\n" + wrap76(base64.b64encode(payload)) + b"\r\nend\r\n"  # fmt: skip
    if kind == 7:  # an attached message
        inner = (
            b"From: someone@example.net\r\nSubject: "
            + header_value(rng, b"inner")
            + b"\r\n\r\nhi\r\n"
        )
        return [b"Content-Type: message/rfc822"], inner
    if kind == 8:  # header lines that are not headers
        return [
            rng.choice(
                (b"no colon here", b": empty name", b" leading space: x", b"X" * 900 + b": y")
            )
        ], b"x\r\n"
    return [], b""  # an empty part


def entity(rng: random.Random, depth: int, budget: list[int]) -> tuple[list[bytes], bytes]:
    budget[0] -= 1
    if depth < 6 and budget[0] > 0 and rng.random() < 0.35:
        return multipart(rng, depth, budget, rng.randint(1, 5))
    return leaf(rng)


def multipart(
    rng: random.Random, depth: int, budget: list[int], count: int
) -> tuple[list[bytes], bytes]:
    boundary = rng.choice((b"b" + str(depth).encode() + b"x", b"simple", b"=_", b"a" * 70, b"a b",
                           b"b" * 200, b'"', b""))  # fmt: skip
    sub = rng.choice((b"mixed", b"alternative", b"related", b"signed", b"report", b"digest"))
    ct = b"Content-Type: multipart/" + sub
    how = rng.random()
    if how > 0.1:  # else: no boundary parameter at all
        ct += b'; boundary="' + boundary + b'"'
    parts = [entity(rng, depth + 1, budget) for _ in range(count)]
    body = b"preamble \xff\r\n" if rng.random() < 0.2 else b""
    for headers, content in parts:
        delim = boundary if rng.random() > 0.05 else b"wrong"
        body += b"--" + delim + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + content
    if rng.random() > 0.15:  # else: no closing boundary
        body += b"--" + boundary + b"--\r\n"
    if rng.random() < 0.1:
        body += b"epilogue \x00 junk\r\n"
    return [b"MIME-Version: 1.0", ct], body


def deep(rng: random.Random) -> tuple[list[bytes], bytes]:
    """A chain of nested multiparts or attached messages, hundreds deep."""
    depth = rng.randint(50, 600)
    headers, body = [b"Content-Type: text/plain"], b"the bottom\r\n"
    rfc822 = rng.random() < 0.5
    for i in range(depth):
        if rfc822:
            body = b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
            headers = [b"Content-Type: message/rfc822"]
        else:
            b = b"d%d" % i
            body = b"--" + b + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
            body += b"--" + b + b"--\r\n" if rng.random() > 0.1 else b""
            headers = [b'Content-Type: multipart/mixed; boundary="' + b + b'"']
    return [b"MIME-Version: 1.0", *headers], body


def many_parts(rng: random.Random) -> tuple[list[bytes], bytes]:
    count = rng.choice((100, 1000, 5000))
    body = b"".join(b"--m\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(count))
    return [
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="m"',
    ], body + b"--m--\r\n"


def dsn_body(rng: random.Random, original: str) -> tuple[list[bytes], bytes]:
    status = rng.choice((b"5.1.1", b"4.4.1", b"9.9.9", b"", b"5.1.1\r\n\tfolded", b"\xff"))
    rcpt = rng.choice((b"dave@example.org", b"<>", b"\xff@x", b"rfc822;" + b"a" * 500, b""))
    diag = header_value(rng, b"smtp; 550 5.1.1 <dave@example.org>: User unknown")
    fields = (b"Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; " + rcpt
              + b"\r\nAction: " + rng.choice((b"failed", b"delayed", b"relayed", b"", b"\x00"))
              + b"\r\nStatus: " + status + b"\r\nDiagnostic-Code: " + diag + b"\r\n")  # fmt: skip
    body = (
        b"--r\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--r\r\nContent-Type: message/delivery-status\r\n\r\n" + fields
        + b"--r\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <"
        + original.encode() + b"@example.com>\r\n--r--\r\n"
    )  # fmt: skip
    headers = [b"MIME-Version: 1.0",
               b'Content-Type: multipart/report; report-type=delivery-status; boundary="r"']  # fmt: skip
    return headers, body


def message(rng: random.Random, sender: bytes, to: bytes, cc: bytes, dsn_for: str | None) -> bytes:
    """A whole message: header section and body, CRLF line endings unless mutated."""
    r = rng.random()
    if dsn_for is not None:
        mime = dsn_body(rng, dsn_for)
    elif r < 0.06:
        mime = deep(rng)
    elif r < 0.11:
        mime = many_parts(rng)
    elif r < 0.45:
        mime = multipart(rng, 0, [rng.randint(1, 30)], rng.randint(1, 6))
    else:
        mime = leaf(rng)
    head = [
        b"From: " + (header_value(rng, b"Alice") + b" <" + sender + b">" if rng.random() < 0.5 else sender),
        b"To: " + to,
        b"Subject: " + header_value(rng, b"Fuzz"),
    ]  # fmt: skip
    if cc:
        head.append(b"Cc: " + cc)
    if rng.random() < 0.8:
        head.append(b"Date: " + rng.choice((b"Mon, 23 Nov 2026 10:00:00 +0000", b"yesterday", b"")))
    if rng.random() < 0.8:
        head.append(b"Message-ID: <" + str(rng.random()).encode() + b"@example.com>")
    if rng.random() < 0.1:
        head += [b"X-Many-%d: %d" % (i, i) for i in range(rng.choice((100, 3000)))]
    if rng.random() < 0.1:
        head.append(rng.choice((b"X-8bit: caf\xc3\xa9", b"X-Bad: \xff\xfe", b"Subject: second")))
    if rng.random() < 0.05:
        head.append(b"X-Long: " + b"y" * rng.choice((990, 1200)))
    if rng.random() < 0.2:  # what the MX's DKIM, ARC and bounce readers parse
        head.append(
            rng.choice(AUTH_HEADERS)
            + bytes(rng.randrange(33, 127) for _ in range(rng.randint(0, 40)))
        )
    rng.shuffle(head)
    headers, body = mime
    data = b"".join(h + b"\r\n" for h in head + headers) + b"\r\n" + body
    if rng.random() < 0.12:  # byte flips anywhere, line endings included
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 10)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        data = bytes(flipped)
    if rng.random() < 0.05:
        data = data[: rng.randint(0, len(data))]
    if rng.random() < 0.04:  # no header section, or one that starts oddly
        data = (
            rng.choice((b"\r\n", b" ", b"\t", b"\r\n\r\n", b":", b"From ", b"\xef\xbb\xbf")) + data
        )
    return data


def stuffed(data: bytes) -> bytes:
    """``data`` as DATA content: dot-stuffed (RFC 5321 §4.5.2) and ended with CRLF.CRLF."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# -- one session -------------------------------------------------------------------------
class Session:
    """One SMTP session of campaign ``seed``, generated from ``(seed, number)`` alone."""

    def __init__(self, world: World, stats: Stats, seed: int, number: int) -> None:
        self.world = world
        self.stats = stats
        self.seed = seed
        self.number = number
        self.rng = random.Random(f"{seed}:{number}")
        self.findings: list[Finding] = []
        self.conn: Conn | None = None
        self.commands = 0

    def finding(self, kind: str, detail: str) -> None:
        transcript = self.conn.transcript[:200] if self.conn else []
        self.findings.append(Finding(kind, detail, self.number, transcript))

    # -- talking --------------------------------------------------------------------
    def check(self, reply: bytes, command: bytes = b"") -> None:
        """``reply`` to the command line ``command`` (b"" for the greeting or DATA's end)."""
        first = reply.split(b"\r\n", 1)[0]
        code = first[:3].decode("ascii", "replace")
        with self.stats.lock:
            self.stats.replies[code[:1] + "xx"] += 1
        for line in reply.split(b"\r\n"):
            if not re.fullmatch(rb"\d{3}([ -].*)?", line, re.S):
                self.finding("malformed-reply", repr(line[:200]))
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self.finding("reply-not-utf8", repr(line[:200]))
                continue
            if any(not c.isprintable() for c in text):
                self.finding("reply-control-character", repr(line[:200]))
        if first.startswith(b"451") and b"internal" in reply.lower():
            self.finding("internal-error-reply", repr(reply[:300]))
        # RFC 2034 §3: every 2xx/4xx/5xx reply carries an enhanced code except the
        # greeting and the replies to HELO and EHLO.
        verb = command.split(b" ", 1)[0].strip().upper()
        if code[:1] in "45" and verb not in (b"HELO", b"EHLO") and not ENHANCED.match(first):
            self.finding("no-enhanced-code", repr(first[:200]))

    def lines(
        self, data: bytes, timeout: float = REPLY_TIMEOUT, expected: int | None = None
    ) -> list[bytes]:
        """Send command lines; one reply per LF (a bare LF ends a line for the server too)."""
        assert self.conn is not None
        self.conn.send(data)
        if expected is None:
            expected = data.count(b"\n")
            self.commands += expected
        commands = data.split(b"\n")
        replies = []
        for index in range(expected):
            try:
                reply = self.conn.reply(timeout)
            except Stall as stall:
                if data.endswith(b"\r\n") or replies:
                    self.finding("no-reply", f"no reply within {timeout:.0f} s; buffer {stall}")
                raise Closed("stalled") from None
            self.check(reply, commands[index] if index < len(commands) else b"")
            replies.append(reply)
        return replies

    def command(self, line: bytes, timeout: float = REPLY_TIMEOUT) -> bytes:
        return self.lines(line + b"\r\n", timeout)[-1]

    # -- the plan -------------------------------------------------------------------
    def run(self) -> None:
        rng = self.rng
        kind = rng.choices(("submission", "submission_tls", "mx"), (40, 15, 45))[0]
        try:
            self.conn = Conn(
                self.world.port(kind), self.world.tls if kind == "submission_tls" else None
            )
        except OSError as err:
            self.finding("connect-failed", f"{kind}: {err}")
            return
        started = time.time()
        try:
            self.check(self.conn.reply())
            self.talk(kind)
        except Closed:
            pass
        finally:
            self.conn.close()
            uses = self.world.peers.setdefault(self.conn.local_port, [])
            uses.append((started, time.time(), self.number))
            with self.stats.lock:
                self.stats.sessions += 1
                self.stats.commands += self.commands

    def fuzz(self, base: list[bytes], most: int) -> None:
        rng = self.rng
        for _ in range(rng.randint(0, most)):
            if rng.random() < 0.2:  # a pipelined group (RFC 2920)
                group = b"".join(fuzz_command(rng, base) for _ in range(rng.randint(2, 6)))
                self.lines(group)
            else:
                self.lines(fuzz_command(rng, base))

    def talk(self, kind: str) -> None:
        rng = self.rng
        world = self.world
        mx = kind == "mx"
        name = b"client%d.test" % self.number
        helo = b"EHLO " + name if rng.random() < 0.9 else b"HELO " + name
        if rng.random() < 0.1:
            helo = mutate_line(rng, helo).replace(b"\n", b"")
        self.lines(helo + b"\r\n")
        sender = (MX_USER if mx else USER).encode()
        base = [helo, b"MAIL FROM:<" + sender + b">", b"RCPT TO:<dave@example.org>", b"NOOP",
                b"RSET", b"VRFY alice", b"EXPN list", b"HELP", b"NOOP x", b"EHLO " + name]  # fmt: skip
        self.fuzz(base, 2)
        if kind == "submission" or (mx and rng.random() < 0.2):
            if rng.random() < 0.1:  # commands pipelined after STARTTLS must be discarded
                reply = self.lines(b"STARTTLS\r\nNOOP\r\n", expected=1)[0]
            else:
                reply = self.command(b"STARTTLS")
            if reply.startswith(b"220"):
                self.conn.starttls(world.tls)  # type: ignore[union-attr]
                self.command(b"EHLO " + name)
        if not mx:
            if rng.random() < 0.15:
                for line in auth_garbage(rng):
                    # every line of an AUTH exchange gets one reply (334, 235, 5xx)
                    self.lines(line + b"\r\n")
            auth = b"\0" + USER.encode() + b"\0" + PASSWORD.encode()
            if rng.random() < 0.9:
                self.command(b"AUTH PLAIN " + base64.b64encode(auth))
            else:
                self.lines(b"AUTH LOGIN\r\n" + base64.b64encode(USER.encode()) + b"\r\n"
                           + base64.b64encode(PASSWORD.encode()) + b"\r\n")  # fmt: skip
        for _ in range(rng.randint(1, 3)):
            self.fuzz(base, 3)
            self.transaction(kind)
        if rng.random() < 0.8:
            self.lines(b"QUIT\r\n")

    def recipients(self, kind: str) -> tuple[list[bytes], bytes, bytes, str | None]:
        """Envelope recipients, To and Cc headers, and the queue id a DSN is about."""
        rng = self.rng
        cert = CERT_ADDRESS.encode()
        if kind != "mx":
            rcpts = [b"dave@example.org"]
            if rng.random() < 0.3:
                rcpts.append(
                    rng.choice((b"erin@example.net", b"nobody@nowhere.test", b"x@owner.test"))
                )
            certified = rng.random() < 0.4
            if certified:
                rcpts.append(cert)
            return rcpts, b", ".join(rcpts[:1]), cert if certified else b"", None
        r = rng.random()
        if r < 0.45:  # MX mode: the Cc copy from the sender's provider
            to = rng.choice((b"dave@example.org", b"dave@example.org, erin@example.net",
                             b"nobody@nowhere.test", b"Dave <dave@example.org>, \xff@x"))  # fmt: skip
            return [cert], to, cert, None
        if r < 0.8:
            return [self.world.reception.encode()], b"owner@owner.test", b"", None
        if r < 0.92:
            qid = self.world.some_accepted(rng)
            if qid:
                verp = make_return_path(qid, DOMAIN, self.world.verp_key)
                return [verp.encode()], b"someone@example.org", b"", qid
        return [rng.choice((b"postmaster@" + DOMAIN.encode(), b"Postmaster", b"abuse@" + DOMAIN.encode(),
                            b"bob@example.org", b"certifica+x@" + DOMAIN.encode()))], b"x@example.org", b"", None  # fmt: skip

    def transaction(self, kind: str) -> None:
        rng = self.rng
        rcpts, to, cc, dsn_for = self.recipients(kind)
        if kind == "mx":
            sender = MX_USER.encode() if dsn_for is None else b""
            if rng.random() < 0.3 and dsn_for is None and cc != CERT_ADDRESS.encode():
                sender = rng.choice((b"", b"carol@partner.test", b"x@\xff.test"))
        else:
            sender = USER.encode()
        header_from = sender or b"mailer-daemon@example.org"
        if kind == "mx" and cc == CERT_ADDRESS.encode():
            header_from = MX_USER.encode()
        params = b""
        if rng.random() < 0.3:
            params = b" " + b" ".join(rng.sample(ODD_PARAMS[:25], rng.randint(1, 3)))
        mail = b"MAIL FROM:<" + sender + b">" + params
        if rng.random() < 0.15:
            mail = mutate_line(rng, mail)
        lines = [mail] + [b"RCPT TO:<" + r + b">" for r in rcpts]
        if rng.random() < 0.15:
            at = rng.randrange(len(lines))
            lines[at] = mutate_line(rng, lines[at])
        lines.append(b"DATA")
        if rng.random() < 0.4:  # pipelined envelope, DATA last (RFC 2920 §3.1)
            replies = self.lines(b"".join(line + b"\r\n" for line in lines))
        else:
            replies = [r for line in lines for r in self.lines(line + b"\r\n")]
        if not replies or not replies[-1].startswith(b"354"):
            return
        data = message(rng, header_from, to, cc, dsn_for)
        with self.stats.lock:
            self.stats.messages_sent += 1
        reply = self.lines(stuffed(data), DATA_TIMEOUT, expected=1)[-1]
        code = reply[:3].decode("ascii", "replace")
        found = QUEUED.search(reply)
        if code == "250":
            with self.stats.lock:
                self.stats.accepted += 1
            if found:
                self.world.add_accepted(Accepted(found.group(1).decode(), self.number, kind))
        else:
            enhanced = reply[4:11].decode("ascii", "replace").split(" ")[0]
            with self.stats.lock:
                self.stats.refused[f"{code} {enhanced}"] += 1


# -- after the campaign ------------------------------------------------------------------
def check_alive(world: World) -> list[Finding]:
    findings = []
    if world.gw.proc.poll() is not None:
        return [Finding("gateway-exited", f"exit code {world.gw.proc.returncode}")]
    for name in ("submission", "submission_tls", "mx"):
        conn = None
        try:
            conn = Conn(world.port(name), world.tls if name == "submission_tls" else None)
            conn.reply()
            conn.send(b"EHLO check.test\r\n")
            if not conn.reply().startswith(b"250"):
                findings.append(Finding("not-answering", f"{name}: EHLO not answered 250"))
        except (OSError, Closed, Stall) as err:
            findings.append(Finding("not-answering", f"{name}: {err}"))
        finally:
            if conn is not None:
                conn.close()
    return findings


def wait_drained(world: World, timeout: float) -> list[Finding]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        out = world.gw.cli("queue", "list", "--json")
        if out.returncode != 0:
            return [Finding("queue-list-failed", out.stderr[-500:])]
        rows = json.loads(out.stdout)
        if not rows:
            return []
        time.sleep(1.0)
    left = ", ".join(f"{r['qid']}({r['kind']},{r['state']})" for r in rows[:20])
    return [
        Finding(
            "queue-not-drained", f"{len(rows)} messages still queued after {timeout:.0f} s: {left}"
        )
    ]


def check_outcomes(world: World) -> list[Finding]:
    """Every accepted message delivered to the sink or certified as failed; spool clean."""
    findings: list[Finding] = []
    db = sqlite3.connect(f"file:{world.gw.state / 'queue.db'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    delivered_ids = set()
    for msg in world.sink.messages:
        delivered_ids.update(re.findall(rb"\sid ([A-Za-z0-9]+)[;\s]", msg.data[:4000]))
    for item in world.accepted:
        row = db.execute("SELECT * FROM messages WHERE qid = ?", (item.qid,)).fetchone()
        where = f"{item.qid} ({item.kind})"
        if row is None:
            findings.append(Finding("accepted-not-recorded", where, item.session))
            continue
        rcpts = db.execute("SELECT address, status, note, reply_text FROM recipients WHERE qid = ?",
                           (item.qid,)).fetchall()  # fmt: skip
        open_ = [r["address"] for r in rcpts if r["status"] not in FINAL]
        if row["state"] != "done" or open_:
            findings.append(Finding("accepted-not-final", f"{where}: state {row['state']}, open {open_}",
                                    item.session))  # fmt: skip
            continue
        for r in rcpts:
            if r["status"] == "delivered" and item.qid.encode() not in delivered_ids:
                findings.append(
                    Finding("delivered-not-at-sink", f"{where} to {r['address']}", item.session)
                )
        if row["certified"]:
            cert = db.execute("SELECT qid, state FROM messages WHERE parent_qid = ? AND kind = "
                              "'certificate'", (item.qid,)).fetchone()  # fmt: skip
            if row["cert_state"] != "done" or cert is None:
                findings.append(Finding("certified-without-certificate",
                                        f"{where}: cert_state {row['cert_state']}", item.session))  # fmt: skip
    known = {r[0] for r in db.execute("SELECT qid FROM messages")}
    spool = world.gw.state / "spool"
    for path in sorted(spool.glob("*/*")):
        if path.name.startswith("."):
            findings.append(Finding("spool-temporary-left", str(path.relative_to(spool))))
        elif path.suffix == ".eml" and path.stem not in known:
            findings.append(Finding("spool-file-without-record", str(path.relative_to(spool))))
    db.close()
    return findings


def _session_at(world: World, port: int, line: str) -> int | None:
    """The session that used client ``port`` when the log ``line`` was written."""
    try:
        when = time.mktime(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    near = [n for start, end, n in world.peers.get(port, ()) if start - 1 <= when <= end + 1]
    return near[0] if len(near) == 1 else None


def check_log(world: World) -> list[Finding]:
    """Log lines that show a fault, each with the session it came from where the line
    names the client's port or an accepted queue id (a line that is no event: the
    session of the event it broke off from)."""
    findings = []
    by_qid = {a.qid: a.session for a in world.accepted}
    previous: int | None = None
    for number, line in enumerate(world.gw.log().splitlines(), 1):
        shown = f"line {number}: {line[:400]!r}"
        peer = re.search(r"\[127\.0\.0\.1\]:(\d+)", line)
        qid = re.search(r"\b([0-9A-F]{12})\b", line)
        session = _session_at(world, int(peer.group(1)), line) if peer else None
        if session is None and qid:
            session = by_qid.get(qid.group(1))
        if LOG_LINE.match(line):
            previous = session
        else:
            session = previous
        if "Traceback" in line:
            findings.append(Finding("log-traceback", shown, session))
        elif "internal error" in line.lower():
            findings.append(Finding("log-internal-error", shown, session))
        elif ": error: " in line:
            findings.append(Finding("log-error-line", shown, session))
        elif not LOG_LINE.match(line):
            findings.append(Finding("log-line-not-an-event", shown, session))
    return findings


# -- the campaign ------------------------------------------------------------------------
@dataclass
class Result:
    seed: int
    stats: Stats
    findings: list[Finding]
    seconds: float

    def summary(self) -> str:
        s = self.stats
        kinds = Counter(f.kind for f in self.findings)
        lines = [
            f"fuzz: seed {self.seed}, {self.seconds:.0f} s",
            f"  sessions {s.sessions}, command lines {s.commands}, messages sent {s.messages_sent}, "
            f"accepted {s.accepted}",
            "  replies by class: " + ", ".join(f"{k} {v}" for k, v in sorted(s.replies.items())),
            "  messages refused (reply to the final dot): "
            + (
                ", ".join(
                    f"{c}xx {sum(v for k, v in s.refused.items() if k.startswith(c))}" for c in "45"
                )
                + " ("
                + ", ".join(f"{k}: {v}" for k, v in s.refused.most_common())
                + ")"
                if s.refused
                else "none"
            ),
            f"  findings {len(self.findings)}"
            + (": " + ", ".join(f"{k} {v}" for k, v in kinds.most_common()) if kinds else ""),
        ]
        shown: Counter[str] = Counter()
        for f in self.findings:  # the first three of each kind; all are in the file
            shown[f.kind] += 1
            if shown[f.kind] > 3:
                continue
            replay = f" (--seed {self.seed} --session {f.session})" if f.session is not None else ""
            lines.append(f"    {f.kind}: {f.detail[:300]}{replay}")
        return "\n".join(lines)


def campaign(
    workdir: Path,
    seed: int,
    seconds: float = 600.0,
    sessions: int | None = None,
    only: list[int] | None = None,
    workers: int = 4,
    drain_timeout: float | None = None,
    debug: bool = False,
) -> Result:
    """Run sessions until ``seconds`` pass (or ``sessions`` ran, or just ``only``), then check."""
    started = time.monotonic()
    world = World(workdir, debug)
    stats = Stats()
    findings: list[Finding] = []
    lock = threading.Lock()
    numbers = iter(only) if only is not None else itertools.count()
    deadline = started + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                number = next(numbers, None)
            if number is None or (sessions is not None and number >= sessions):
                return
            session = Session(world, stats, seed, number)
            try:
                session.run()
            except Exception as err:  # the fuzzer's own fault: report it, keep going
                session.finding("fuzzer-error", f"{type(err).__name__}: {err}")
            with lock:
                findings.extend(session.findings)

    try:
        with ThreadPoolExecutor(workers) as pool:
            for future in [pool.submit(worker) for _ in range(workers)]:
                future.result()
        findings += check_alive(world)
        # The gateway keeps up with the campaign (certificates are ~10 ms of CPU), so
        # what is left after this is stuck, not late.
        default = min(300.0, 60.0 + 0.02 * stats.accepted)
        drain = drain_timeout if drain_timeout is not None else default
        findings += wait_drained(world, drain)
        findings += check_outcomes(world)
        findings += check_alive(world)
    finally:
        world.close()
    findings += check_log(world)
    return Result(seed, stats, findings, time.monotonic() - started)


def write_findings(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "seed": result.seed,
                "seconds": round(result.seconds),
                "sessions": result.stats.sessions,
                "commands": result.stats.commands,
                "messages_sent": result.stats.messages_sent,
                "accepted": result.stats.accepted,
                "refused": dict(result.stats.refused),
                "findings": [
                    {
                        "kind": f.kind,
                        "detail": f.detail,
                        "session": f.session,
                        "replay": None
                        if f.session is None
                        else f"python -m tests.fuzz_smtp --seed {result.seed} --session {f.session}",
                        "transcript": f.transcript,
                    }
                    for f in result.findings
                ],
            },
            indent=2,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fuzz_smtp",
        description="Fuzz the gateway's SMTP ports for a bounded time, then check it (module docstring).",
    )
    parser.add_argument(
        "--seconds", type=float, default=600.0, help="how long to send (default 600)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="campaign seed (default: from the clock)"
    )
    parser.add_argument(
        "--session", type=int, action="append", help="replay only this session (repeatable)"
    )
    parser.add_argument("--sessions", type=int, default=None, help="stop after this many sessions")
    parser.add_argument("--workers", type=int, default=4, help="client threads (default 4)")
    parser.add_argument("--findings", type=Path, default=None,
                        help="where to write the findings (default var/fuzz/findings-SEED.json)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the gateway's state directory")
    parser.add_argument(
        "--debug-log",
        action="store_true",
        help='the gateway logs at "debug": internal errors come with their traceback',
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    root = Path(__file__).resolve().parent.parent
    out = args.findings or root / "var" / "fuzz" / f"findings-{seed}.json"
    workdir = Path(tempfile.mkdtemp(prefix="certifica-fuzz-"))
    print(f"fuzz: seed {seed}, up to {args.seconds:.0f} s, state in {workdir}", flush=True)
    result = campaign(
        workdir, seed, args.seconds, args.sessions, args.session, args.workers, debug=args.debug_log
    )
    write_findings(result, out)
    print(result.summary())
    print(f"fuzz: findings written to {out}; gateway log {result_log(workdir)}")
    if not args.keep and not result.findings:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if result.findings else 0


def result_log(workdir: Path) -> str:
    logs = sorted(workdir.glob("gateway-*.log"))
    return str(logs[-1]) if logs else "-"


if __name__ == "__main__":
    sys.exit(main())
