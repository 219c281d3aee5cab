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
* CR, LF or NUL inside an envelope argument is a 501 before any parsing, and so is a
  command line ended by a bare LF (aiosmtpd would split the line there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import re
import time
from base64 import b64decode
from collections.abc import Awaitable, Callable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from certifier.message import PLAIN_ADDR_SPEC
from relay import replies
from relay.logs import log_failure

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
        if len(self._failures) >= self.max_clients and self._key(peer) not in self._failures:
            # Bounded memory: forget the address whose last failure is oldest.
            oldest = min(self._failures, key=lambda k: self._failures[k][-1])
            del self._failures[oldest]
        self._failures.setdefault(self._key(peer), []).append(now)
        return count


class DataRefused(Exception):
    """DATA content that must be refused; ``reply`` is what the client is told."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class BareLineFeed(Exception):
    """A command line ended with a LF without its CR (RFC 5321 2.3.8 requires CRLF)."""


class _CommandReader(asyncio.StreamReader):
    """The session's reader: a command line must end with CRLF.

    aiosmtpd splits commands at any LF, so ``RCPT TO:<bob@example.org\n>`` would name
    bob as a recipient; the DATA reader already refuses bare line endings, and the
    command reader now does too. The line is consumed, then refused with a 501.
    """

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        line = await super().readuntil(separator)
        if separator == b"\n" and not line.endswith(b"\r\n"):
            raise BareLineFeed
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


class CertificaSMTP(SMTP):
    """One SMTP session; hooks in the handler decide, this class speaks the protocol."""

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
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        if min_data_rate <= 0:
            raise ValueError("min_data_rate must be > 0")
        self._min_data_rate = min_data_rate
        self._verifier = verifier
        self._header_limit = header_limit
        self._auth_failures_allowed = auth_failures
        self._auth_delay = auth_delay
        self._auth_failures = 0
        self._throttle = throttle or AuthThrottle()
        self._bare_reply = False
        if verifier is None:
            self._auth_methods.clear()

    # -- replies -------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        if isinstance(status, str) and not self._bare_reply:
            status = replies.with_enhanced_code(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        # RFC 2034: no enhanced codes in the EHLO response
        self._bare_reply = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._bare_reply = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._bare_reply = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._bare_reply = False

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, BareLineFeed):
            return replies.BAD_CHARACTERS
        try:
            raise error
        except Exception:
            log_failure(
                log,
                "%s: internal error in the session",
                _peer_text(self.session.peer if self.session else None),
            )
        return replies.INTERNAL_ERROR

    def _cb_client_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # aiosmtpd builds a plain StreamReader; the subclass adds only the CRLF check.
        reader.__class__ = _CommandReader
        super()._cb_client_connected(reader, writer)

    def _timeout_cb(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._writer.write(replies.TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()

    # -- envelope --------------------------------------------------------------------
    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's ``_getaddr``, same answers, without its per-call class and parse
        tree for the plain ``<local@domain>`` path (7% of the CPU under `make bench`).

        Where the stdlib's parser raises IndexError (``MAIL FROM:"``), the answer is
        "no address" (501), not an internal error."""
        if not arg:
            return "", ""
        plain = _PLAIN_PATH.match(arg)
        rest = arg[plain.end() :] if plain else ""
        if plain and "(" not in rest:  # a comment after the path: the stdlib's CFWS
            addr, rest = plain.group(1), rest.lstrip(" \t")
        else:
            try:
                parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
                address, rest = parse(arg)
                addr = address.addr_spec
            except (HeaderParseError, IndexError):  # the stdlib's IndexError: on '<"'
                return None, None  # a 501 syntax error, not an internal error
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_MAIL(self, arg: str | None) -> None:
        if arg and any(c in arg for c in "\r\n\0"):
            await self.push(replies.BAD_CHARACTERS)
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if arg and any(c in arg for c in "\r\n\0"):
            await self.push(replies.BAD_CHARACTERS)
            return
        await super().smtp_RCPT(arg)

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
                    _peer_text(self.session.peer if self.session else None),
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
                        _peer_text(peer))  # fmt: skip
            await self.push(replies.AUTH_BLOCKED)
            if self.transport is not None:
                self.transport.close()
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
                    _peer_text(peer), self._auth_failures, recent)  # fmt: skip
        # Each failure waits longer than the one before, across reconnections too:
        # guessing gets slow.
        await asyncio.sleep(min(self._auth_delay * recent, AUTH_DELAY_CAP))
        if self._auth_failures >= self._auth_failures_allowed:
            await self.push(replies.TOO_MANY_AUTH_FAILURES)
            if self.transport is not None:
                self.transport.close()
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=replies.AUTH_FAILED)


def _peer_text(peer: Any) -> str:
    if isinstance(peer, tuple) and peer:
        return f"[{peer[0]}]:{peer[1]}" if len(peer) > 1 else str(peer[0])
    return "unknown"
