"""The SMTP server protocol: aiosmtpd's, hardened where RFC 5321 and the wild demand.

What this subclass changes, and why:

* DATA is read in blocks and ended only by ``CRLF.CRLF`` (RFC 5321 §4.1.1.4). A bare
  CR or LF anywhere refuses the message (SMTP smuggling, CVE-2023-51766 family), lines
  over 1000 octets with their CRLF, counted after unstuffing, refuse it (§4.5.3.1.6),
  data past the size limit is discarded as it arrives (memory stays bounded) and
  refused with 552 (RFC 1870), and a "line" longer than the size limit is refused with
  500 as it arrives, not after an end that may never come. Block reads replace
  aiosmtpd's line-by-line loop, which costs one await per line.
* DATA has a deadline as well as the idle timeout: ``timeout`` plus one second per
  ``min_data_rate`` bytes, so a client dripping bytes gets 421 and the close.
* AUTH PLAIN and LOGIN (RFC 4954) check the password off the event loop, answer an
  unknown user and a wrong password identically, slow down each failure and close
  the connection after a few.
* Every reply carries an RFC 3463 enhanced status code; an internal error is a 451
  that never contains the exception's text; a silent client gets 421 before the close.
* Every command line is checked before aiosmtpd reads it (:class:`_CommandReader`):
  a bare LF anywhere is ``521 5.5.2`` and the connection is closed, as Postfix does with
  ``smtpd_forbid_bare_newline = yes`` (aiosmtpd would split the line there, so
  ``RCPT TO:<bob@example.org\n>`` would name bob); a CR or NUL inside the line is 501;
  bytes that are not UTF-8 are ``500 5.5.2`` (RFC 6531 §3.3 allows UTF-8 and nothing
  else). No command line reaches a handler with characters a reply, a log line or the
  database could not hold, and every reply is escaped (:func:`relay.logs.one_line`)
  before it is written, so a reply that echoes the client cannot carry its controls.
* NUL in DATA refuses the message (RFC 2045 §2.7-2.8: neither 7bit nor 8bit data may
  hold it), so it is never relayed.
* EHLO (RFC 5321 §4.1.1.1) is built here and written in one piece: some clients and TLS
  scanners read the reply once. It advertises what the gateway honours: PIPELINING,
  SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES, STARTTLS before TLS and AUTH only
  where there is an AUTH mechanism and TLS. The EHLO/HELO name is kept escaped.
* PIPELINING (RFC 2920 §3.1): the replies to a group of commands that arrived together
  are written together, in order, once no further complete command is waiting (and
  always before the gateway waits for the client, or closes).
* TLS: STARTTLS inside TLS is ``503 5.5.1``. Implicit TLS (port 465, RFC 8314) is the
  STARTTLS machinery started at connect, so both share one path; a failed handshake
  (a scanner, an old client, plaintext after STARTTLS) is one ``info`` line naming the
  peer and the reason, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import functools
import ipaddress
import logging
import math
import re
import ssl
import time
from base64 import b64decode
from collections import defaultdict
from collections.abc import Awaitable, Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, TLSSetupException, syntax

from certifier.errors import PermanentError
from certifier.mime import PLAIN_ADDR_SPEC
from relay.logs import log_failure, one_line, peer_text, printable
from relay.metrics import MESSAGES_ACCEPTED, SMTP_REFUSALS, TLS_HANDSHAKE_FAILURES, reason_class
from relay.smtpd import replies

log = logging.getLogger("certifica/smtpd")

END_OF_DATA = b"\r\n.\r\n"
_BARE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")
# RFC 5321 4.5.3.1.6: 1000 octets including the CRLF, counted after unstuffing. Matched
# on the stuffed data, where a line starting with a dot carries one extra (the stuffed
# dot). Anchored at line starts so the scan stays linear (an unanchored {999} run
# rescans every line from each of its positions).
MAX_LINE = 998  # octets of text per line, the CRLF not counted
_LONG_LINE = re.compile(rb"(?m)^(?:\.[^\r\n]{%d}|[^.\r\n][^\r\n]{%d})" % (MAX_LINE + 1, MAX_LINE))
_READ_BLOCK = 256 * 1024
# Bytes per second a client must average during DATA, once its first ``timeout`` is
# spent (Postfix's smtpd_min_data_rate idea): 32 kbit/s, slower than any working link.
MIN_DATA_RATE = 4096.0
# Without a size limit, a "line" this long is data that will never end.
_ENDLESS_LINE = 32 * 1024 * 1024

# The path almost every client sends: <dot-atom@host.name>, then the parameters. For it
# the stdlib parser's answer is the text between the brackets (a property test holds
# the two to the same result), so it is taken without building a token tree.
_PLAIN_PATH = re.compile(f"<({PLAIN_ADDR_SPEC})>")
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 but TAB, DEL, C1

Verifier = Callable[[str, str], Awaitable[bool]]
AUTH_DELAY_CAP = 30.0  # seconds: the longest wait before a failed AUTH is answered


class AuthThrottle:
    """Failed AUTH attempts per client address, shared by every session of a listener.

    Reconnecting does not start a client afresh: the delay before a failure's answer
    grows with the address's recent failures, and an address with ``limit`` failures
    within ``window`` seconds is refused at AUTH, before any password is checked (so
    guessing costs the gateway no scrypt either), until its failures age out. IPv6
    clients are counted per /64, the block one subscriber usually holds.
    """

    def __init__(self, limit: int = 20, window: float = 900.0, max_clients: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_clients = max_clients
        self._failures: dict[str, list[float]] = {}

    @staticmethod
    def _key(peer: Any) -> str:
        host = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        if ":" in host:
            try:
                return str(ipaddress.ip_network(f"{host}/64", strict=False))
            except ValueError:
                return host
        return host

    def recent(self, peer: Any, now: float | None = None) -> int:
        """Failures of this client's address within the window."""
        now = time.monotonic() if now is None else now
        key = self._key(peer)
        times = [t for t in self._failures.get(key, ()) if now - t < self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return len(times)

    def blocked(self, peer: Any) -> bool:
        return self.recent(peer) >= self.limit

    def failed(self, peer: Any) -> int:
        """Record a failure; returns the address's recent failures, this one included."""
        now = time.monotonic()
        count = self.recent(peer, now) + 1
        self.record(peer, now)
        return count

    def record(self, peer: Any, when: float) -> None:
        """Count a failure at ``when`` (``time.monotonic()``, the same clock in every
        process of the machine): this listener's, or one another acceptor saw."""
        if len(self._failures) >= self.max_clients and self._key(peer) not in self._failures:
            # Bounded memory: forget the address whose last failure is oldest.
            oldest = min(self._failures, key=lambda k: self._failures[k][-1])
            del self._failures[oldest]
        self._failures.setdefault(self._key(peer), []).append(when)


class DataRefused(PermanentError):
    """DATA content that must be refused; ``reply`` is what the client is told."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class BadCommandLine(PermanentError):
    """A command line refused before it is parsed; ``reply`` is what the client is told."""

    reply = replies.BAD_CHARACTERS
    close = False


class BareLineFeed(BadCommandLine):
    """A command line ended with a LF without its CR (RFC 5321 2.3.8 requires CRLF)."""

    reply = replies.BARE_LINE_FEED
    close = True


class ControlCharacter(BadCommandLine):
    """A CR or NUL inside a command line."""

    reply = replies.BAD_CHARACTERS


class NotUtf8(BadCommandLine):
    """A command line whose bytes are not UTF-8."""

    reply = replies.NOT_UTF8


class _CommandReader(asyncio.StreamReader):
    """The session's reader: every command line (and AUTH response) is checked whole.

    aiosmtpd splits commands at any LF and decodes arguments with surrogateescape, so
    without this ``RCPT TO:<bob@example.org\n>`` would name bob as a recipient and a
    byte that is not UTF-8 would reach the handlers, the log and the database. The line
    is consumed, then refused: :class:`BareLineFeed` (the connection is closed),
    :class:`ControlCharacter` or :class:`NotUtf8`. Before waiting for more input the
    session's pending replies are written (PIPELINING, see ``CertificaSMTP.push``).
    """

    flush: Callable[[], None] | None = None
    # The last read() ended with CR: aiosmtpd reads an overlong line in pieces, and
    # the piece after one that ended with CR may be the LF of its CRLF.
    _read_cr = False
    # Set when the session ends (521, timeout, failed TLS): what the client sent after
    # that is never executed, even if it is already in the buffer.
    stopped = False

    async def read(self, n: int = -1) -> bytes:
        if self.stopped:
            raise asyncio.CancelledError
        data = await super().read(n)
        self._read_cr = data.endswith(b"\r")
        return data

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        if self.stopped:
            raise asyncio.CancelledError
        if self.flush is not None and separator not in self._buffer:  # type: ignore[attr-defined]
            self.flush()
        line = await super().readuntil(separator)
        split_crlf, self._read_cr = self._read_cr and line == b"\n", False
        if separator == b"\n" and not split_crlf:
            if not line.endswith(b"\r\n"):
                raise BareLineFeed
            body = line[:-2]
            if b"\r" in body or b"\0" in body:
                raise ControlCharacter
            if not body.isascii():
                try:
                    body.decode("utf-8")
                except UnicodeDecodeError:
                    raise NotUtf8 from None
        return line


def unstuff(data: bytes) -> bytes:
    """Remove the transparency dots of RFC 5321 §4.5.2 from DATA content."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def check_data(data: bytes, header_limit: int, smtputf8: bool) -> None:
    """Refuse content a relay must not pass on. ``data`` is still dot-stuffed."""
    # Fast paths first (C-speed counts and splits; the patterns cost ~10 ms a megabyte):
    # only data that may hold a bare CR or LF, or a line near the limit, is scanned.
    crlf = data.count(b"\r\n")
    if (data.count(b"\r") != crlf or data.count(b"\n") != crlf) and _BARE_CR_OR_LF.search(data):
        raise DataRefused(replies.BARE_LINE_ENDING)
    if len(data) > MAX_LINE and max(map(len, data.split(b"\r\n"))) > MAX_LINE:
        if _LONG_LINE.search(data):
            raise DataRefused(replies.LINE_TOO_LONG)
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    if len(header) > header_limit:
        raise DataRefused(replies.HEADER_TOO_LARGE.format(limit=header_limit))
    if not smtputf8 and not header.isascii():
        raise DataRefused(replies.EIGHT_BIT_HEADERS)
    if b"\0" in data:
        raise DataRefused(replies.NUL_IN_DATA)


class CertificaSMTP(SMTP):
    """One SMTP session; hooks in the handler decide, this class speaks the protocol.

    ``implicit_tls``: the connection is TLS from its first byte (port 465, RFC 8314):
    the handshake runs before the greeting, through the same code as STARTTLS.
    ``listener``: the ``[listen]`` name the session came in on, for the metrics.
    """

    def __init__(
        self,
        handler: Any,
        *,
        verifier: Verifier | None = None,
        header_limit: int,
        auth_failures: int,
        auth_delay: float,
        min_data_rate: float = MIN_DATA_RATE,
        throttle: AuthThrottle | None = None,
        implicit_tls: bool = False,
        listener: str = "smtp",
        **kwargs: Any,
    ) -> None:
        if implicit_tls and kwargs.get("tls_context") is None:
            raise ValueError("implicit_tls needs a tls_context")
        if implicit_tls:
            kwargs["require_starttls"] = False  # TLS comes before the first command
        super().__init__(handler, **kwargs)
        if min_data_rate <= 0:
            raise ValueError("min_data_rate must be > 0")
        self._implicit_tls = implicit_tls
        self._min_data_rate = min_data_rate
        self._verifier = verifier
        self._header_limit = header_limit
        self._auth_failures_allowed = auth_failures
        self._auth_delay = auth_delay
        self._auth_failures = 0
        self._throttle = throttle or AuthThrottle()
        self._bare_reply = False
        self._pending: list[bytes] = []  # replies not written yet (PIPELINING)
        self._closing = False
        # aiosmtpd keeps these limits in a dict shared by every session and grows it at
        # each EHLO; a session's own, fixed: RFC 5321 4.5.3.1.4's 512 octets plus what
        # the advertised extensions add (SIZE, BODY, SMTPUTF8; RFC 3461 RET, ENVID at
        # MAIL, NOTIFY and ORCPT at RCPT).
        self.command_size_limits = defaultdict(
            lambda: self.command_size_limit, {"MAIL": 700, "RCPT": 1000}
        )
        if verifier is None:
            self._auth_methods.clear()
        # The metrics count the replies to the transaction's commands (relay/metrics.py):
        # the command being answered is known while its method runs.
        self._listener = listener
        self._verb: str | None = None
        for verb in ("MAIL", "RCPT", "DATA"):
            if verb in self._smtp_methods:
                self._smtp_methods[verb] = self._answering(verb, self._smtp_methods[verb])

    def _answering(self, verb: str, method: Any) -> Any:
        @functools.wraps(method)  # keeps aiosmtpd's __smtp_syntax__ for HELP
        async def answering(arg: str) -> None:
            self._verb = verb
            try:
                await method(arg)
            finally:
                self._verb = None

        return answering

    def _count(self, reply: bytes) -> None:
        """A transaction's outcome, for the metrics: a 250 to the end of DATA, or a
        refusal of MAIL, RCPT or DATA by its enhanced status class."""
        verb = self._verb
        if verb is None or reply[:1] not in b"2345":
            return
        if reply[:1] in b"45":
            text = reply.decode("ascii", "replace")
            SMTP_REFUSALS.labels(self._listener, verb, reason_class(text)).inc()
        elif verb == "DATA" and reply[:3] == b"250":
            MESSAGES_ACCEPTED.labels(self._listener).inc()

    # -- replies -------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        """Queue a reply; write the queue unless more pipelined commands are waiting.

        Replies are escaped (one printable line: an echoed argument carries no control
        or byte that is not UTF-8). A reply that the client waits on before it sends more
        (220, 334, 354), or that comes before a close (221, 421, 521, the last 502), is
        written at once; the others wait while a further complete command line is
        already in the buffer, and go out together with its reply (RFC 2920 §3.1).
        """
        if self._closing or status is None:
            # None: aiosmtpd's _handle_client pushes whatever handle_exception returned,
            # even when the session was cancelled inside it (a 521 close): nothing to say.
            return
        if isinstance(status, str):
            status = _OWN_WORDING.get(status, status)
            if not self._bare_reply:
                status = replies.with_enhanced_code(status)
            status = one_line(status).encode(
                "utf-8" if self.enable_SMTPUTF8 else "ascii", "backslashreplace"
            )
        self._count(status)
        self._pending.append(status + b"\r\n")
        if _writes_now(status) or b"\n" not in self._reader._buffer:  # type: ignore[attr-defined]
            self._flush_replies()
            await self._writer.drain()

    def _flush_replies(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if self.transport is not None and not self.transport.is_closing():
                self._writer.write(data)

    async def _push_and_close(self, status: str) -> None:
        await self.push(status)
        self._stop()
        if self.transport is not None:
            self.transport.close()

    def _stop(self) -> None:
        """The session is over: no more replies, and nothing more is read or executed."""
        self._closing = True
        reader = getattr(self, "_reader", None)
        if isinstance(reader, _CommandReader):
            reader.stopped = True

    def ehlo_keywords(self) -> list[str]:
        """The extensions EHLO advertises now (RFC 5321 §4.1.1.1): only what is honoured."""
        keywords = ["PIPELINING"]  # RFC 2920
        if self.data_size_limit:
            keywords.append(f"SIZE {self.data_size_limit}")  # RFC 1870
        if not self._decode_data:
            keywords.append("8BITMIME")  # RFC 6152
        if self.enable_SMTPUTF8:
            keywords.append("SMTPUTF8")  # RFC 6531
        keywords.append("ENHANCEDSTATUSCODES")  # RFC 2034
        if self.tls_context and not self._tls_active():
            keywords.append("STARTTLS")  # RFC 3207
        if self._auth_methods and (not self._auth_require_tls or self._tls_active()):
            keywords.append("AUTH " + " ".join(sorted(self._auth_methods)))  # RFC 4954
        return keywords

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: no enhanced codes in the EHLO response
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        assert self.session is not None
        self.session.extended_smtp = True
        response = [f"250-{self.hostname}", *(f"250-{k}" for k in self.ehlo_keywords())]
        response.append("250 HELP")
        if self._ehlo_hook_ver == "new":  # a handler that adds its own keywords
            response = await self._call_handler_hook("EHLO", hostname, response)
        self.session.host_name = printable(hostname, 255)
        self._bare_reply = True
        try:
            # One write: each push would be a TCP segment (or a TLS record) of its own.
            await self.push("\r\n".join(response).encode())
        finally:
            self._bare_reply = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        self._bare_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._bare_reply = False
        if self.session is not None and self.session.host_name:
            self.session.host_name = printable(self.session.host_name, 255)

    def _tls_active(self) -> bool:
        return self._tls_protocol is not None or (
            self.transport is not None and self.transport.get_extra_info("ssl_object") is not None
        )

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_active():
            await self.push(replies.TLS_ALREADY_ACTIVE)
            return
        await super().smtp_STARTTLS(arg)

    async def _handle_client(self) -> None:
        if self._implicit_tls and self._tls_protocol is None:
            if not await self._implicit_handshake():
                return
        await super()._handle_client()

    async def _implicit_handshake(self) -> bool:
        """Start TLS at once, as STARTTLS would after its 220; False when it failed."""
        assert self.tls_context is not None  # checked in __init__
        waiter = self.loop.create_future()
        self._tls_protocol = asyncio.sslproto.SSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True
        )
        self._original_transport = self.transport
        assert self._original_transport is not None
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)  # type: ignore[arg-type]
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._log_handshake_failure(err)
            self._stop()
            if self.transport is not None:
                self.transport.close()
            self.connection_lost(err)
            return False
        return True

    def _log_handshake_failure(self, err: BaseException | None) -> None:
        peer = self.session.peer if self.session else None
        TLS_HANDSHAKE_FAILURES.labels(self._listener).inc()
        log.info("%s: TLS handshake failed: %s", peer_text(peer), _tls_reason(err))

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BadCommandLine):
            if error.close:
                await self._push_and_close(error.reply)
            return error.reply
        if isinstance(error, TLSSetupException):
            # aiosmtpd closes the connection after this; the reply goes nowhere.
            self._stop()
            self._log_handshake_failure(error.__cause__)
            return replies.TLS_FAILED
        try:
            raise error
        except Exception:
            log_failure(
                log,
                "%s: internal error in the session",
                peer_text(self.session.peer if self.session else None),
            )
        return replies.INTERNAL_ERROR

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # aiosmtpd builds a plain StreamReader; the subclass adds the line checks.
        reader.__class__ = _CommandReader
        reader.flush = self._flush_replies  # type: ignore[attr-defined]
        super()._cb_client_connected(reader, writer)

    def _timeout_cb(self) -> None:
        self._flush_replies()
        if self.transport is not None and not self.transport.is_closing() and not self._closing:
            self._writer.write(replies.TIMEOUT.encode() + b"\r\n")
        self._stop()
        super()._timeout_cb()

    # -- envelope --------------------------------------------------------------------
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's ``_getaddr``, same answers, without its per-call class and parse
        tree for the plain ``<local@domain>`` path (7% of the CPU under `make bench`).

        Where the stdlib's parser raises something else than HeaderParseError
        (``MAIL FROM:"``, ``MAIL FROM:0@[``), the answer is "no address" (501), not an
        internal error."""
        if not arg:
            return "", ""
        if _CONTROL.search(arg):
            # RFC 5321 §4.1.2 (RFC 6531 for UTF-8): no control character belongs in a
            # path or an ESMTP parameter, quoted or not. The stdlib's parser keeps some
            # (<\x0calice@…> was taken as alice's, whose notice no header could carry)
            # and drops others as white space.
            return None, None
        plain = _PLAIN_PATH.match(arg)
        rest = arg[plain.end() :] if plain else ""
        if plain and "(" not in rest:  # a comment after the path: the stdlib's CFWS
            addr, rest = plain.group(1), rest.lstrip(" \t")
        else:
            try:
                parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
                address, rest = parse(arg)
                addr = address.addr_spec
            except (HeaderParseError, IndexError, AttributeError, ValueError, TypeError):
                # The stdlib's parser raises more than HeaderParseError on client text:
                # IndexError on '<"', AttributeError on '0@['. Each is the client's
                # syntax error (501/553), not an internal error.
                return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    # -- DATA ------------------------------------------------------------------------
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Need RCPT command first")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        data = await self._read_data()
        if not isinstance(data, bytes):
            if data is not None:
                await self.push(data)
            # None: answered already, or the connection is gone
            self._set_post_data_state()
            return
        try:
            check_data(data, self._header_limit, bool(self.envelope.smtp_utf8))
        except DataRefused as refusal:
            await self.push(refusal.reply)
            self._set_post_data_state()
            return
        self.envelope.original_content = unstuff(data)
        self.envelope.content = self.envelope.original_content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _read_data(self) -> bytes | str | None:
        """Read up to and excluding the final ``.CRLF``.

        Returns the data, still dot-stuffed; or the reply refusing it (over the size
        limit); or None when nothing is left to answer: the connection is gone or timed
        out, or a line that never ended was refused while it arrived.

        Memory: data past the size limit is dropped as it arrives; only the last few
        bytes are kept to find the terminator, so a client cannot make the gateway hold
        more than the limit.

        Time: the client may be silent for at most ``timeout`` seconds, and the whole
        phase may last ``timeout`` plus one second per ``min_data_rate`` bytes received
        (bytes past the size limit earn nothing). Restarting the idle timer on every
        block alone would let a client that drips a byte every few seconds hold the
        session forever; this one gets 421 4.4.2 after about ``timeout`` seconds.
        """
        loop = self.loop
        timeout = float(self._timeout_duration)
        limit = self.data_size_limit or 0
        endless = limit or _ENDLESS_LINE
        started = loop.time()
        cap = math.inf  # set once the data is refused: no more time is earned
        received = 0
        line = 0  # bytes since the last LF
        refused = False
        buf = bytearray()
        dropped = 0
        scanned = 0
        reader = self._reader
        while True:
            # A message whose first line is the terminator is empty.
            if not dropped and buf.startswith(b".\r\n"):
                self._unread(bytes(buf[3:]))
                return b""
            idx = buf.find(END_OF_DATA, max(0, scanned - 4))
            if idx >= 0:
                self._unread(bytes(buf[idx + len(END_OF_DATA) :]))
                if refused:
                    return None
                if dropped or (limit and idx + 2 > limit):
                    return replies.SIZE_EXCEEDED.format(limit=limit)
                return bytes(buf[: idx + 2])
            scanned = len(buf)
            if line > endless and not refused:
                # No CRLF in more than the whole message may hold: this is not going to
                # end as a message. Say so now rather than after an end that may never
                # come; then discard until the end, for at most one more timeout.
                log.warning(
                    "%s: DATA line of more than %d octets without CRLF; refused",
                    peer_text(self.session.peer if self.session else None),
                    endless,
                )
                await self.push(replies.LINE_TOO_LONG)
                refused = True
                cap = loop.time() + timeout
            if refused or (limit and len(buf) > limit + 4):
                # Keep only a tail long enough to hold a terminator split across reads.
                dropped += max(0, len(buf) - 4)
                del buf[:-4]
                scanned = 0
            self._flush_replies()
            try:
                block = await reader.read(_READ_BLOCK)
            except (asyncio.CancelledError, ConnectionError):
                self._writer.close()
                raise
            if not block:
                return None
            received += len(block)
            newline = block.rfind(b"\n")
            line = line + len(block) if newline < 0 else len(block) - newline - 1
            earned = min(received, limit) if limit else received
            deadline = min(started + timeout + earned / self._min_data_rate, cap)
            left = deadline - loop.time()
            if left <= 0:
                self._timeout_cb()
                return None
            self._reset_timeout(min(timeout, left))
            buf += block

    def _unread(self, rest: bytes) -> None:
        # Bytes after the terminator are the client's pipelined next commands.
        if rest:
            self._reader._buffer[0:0] = rest  # type: ignore[attr-defined]

    # -- AUTH (RFC 4954) -------------------------------------------------------------
    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Cannot decode the base64 credentials")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Malformed AUTH PLAIN credentials")
            return AuthResult(success=False, handled=True)
        return await self._check(parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except ValueError:
                await self.push("501 5.5.2 Cannot decode the base64 user name")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._check(login, password)

    async def _check(self, login: bytes, password: bytes) -> AuthResult:
        assert self._verifier is not None
        peer = self.session.peer if self.session else None
        if self._throttle.blocked(peer):
            log.warning("%s: authentication refused: too many failures from this address",
                        peer_text(peer))  # fmt: skip
            await self._push_and_close(replies.AUTH_BLOCKED)
            return AuthResult(success=False, handled=True)
        user = login.decode("utf-8", "replace")
        ok = await self._verifier(user, password.decode("utf-8", "surrogateescape"))
        if ok:
            return AuthResult(
                success=True,
                handled=False,
                auth_data=LoginPassword(login, password),
                message=replies.AUTH_OK,
            )
        self._auth_failures += 1
        recent = self._throttle.failed(peer)
        log.warning("%s: authentication failed (attempt %d, %d from this address recently)",
                    peer_text(peer), self._auth_failures, recent)  # fmt: skip
        # Each failure waits longer than the one before, across reconnections too:
        # guessing gets slow.
        await asyncio.sleep(min(self._auth_delay * recent, AUTH_DELAY_CAP))
        if self._auth_failures >= self._auth_failures_allowed:
            await self._push_and_close(replies.TOO_MANY_AUTH_FAILURES)
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)


# aiosmtpd replies that need more than an added enhanced code.
_OWN_WORDING = {"220 Ready to start TLS": replies.READY_FOR_TLS}


def _writes_now(reply: bytes) -> bool:
    """A reply after which the client waits, or the server closes: never held back."""
    return (
        reply[:1] == b"3"
        or reply[:3] in (b"220", b"221", b"421", b"521")
        or (
            reply.startswith(b"502 5.5.1 Too many")  # aiosmtpd's last word to a bogus client
        )
    )


def _tls_reason(err: BaseException | None) -> str:
    """Why a handshake failed, in OpenSSL's words where it has them."""
    if isinstance(err, ssl.SSLError) and err.reason:
        return printable(err.reason.lower().replace("_", " "), 120)
    if isinstance(err, ConnectionError | TimeoutError):
        return "the client closed the connection or timed out"
    if err is None:
        return "unknown"
    return printable(err.__class__.__name__, 120)
