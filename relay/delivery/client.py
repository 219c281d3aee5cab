"""Delivery out: one SMTP transaction to one destination for one or more recipients.

An attempt ends, for each recipient, in exactly one of three outcomes (Haraka's
``temp_fail``/``bounce``; RFC 5321 §4.2.1, §4.5.4.1):

* ``delivered`` -- the remote server answered 2xx to the final dot;
* ``deferred``  -- 4xx, a refused or dropped connection, a timeout, a 421: try again;
* ``failed``    -- 5xx: this recipient is not reachable; the others go on.

Every outcome carries what the remote said (code, enhanced code, text and any remote
queue id), where it was said (MX host, IP, port), the TLS of the session and the
SHA-256 of the exact bytes handed over. A connection lost after the final dot is
deferred and noted as a possible duplicate: the remote may have the message already.

How an attempt runs (Postfix's smtp(8) is the model):

* the hops come from :class:`relay.delivery.routing.Router`, most preferred first; a connection
  failure, a greeting other than 220, a 4xx before MAIL FROM or a 421 (or a lost
  connection) before any recipient is decided moves on to the next hop;
* every wait has a limit (RFC 5321 §4.5.3.2, Postfix's names in brackets): the TCP
  connection ``connect_timeout`` (smtp_connect_timeout), the 220 greeting
  ``greeting_timeout`` (5 min, §4.5.3.2.1), each of EHLO, STARTTLS, MAIL and RCPT
  ``command_timeout`` (5 min), the 354 after DATA ``data_init_timeout`` (2 min,
  §4.5.3.2.4), the message and the reply to the final dot ``data_timeout`` (10 min,
  §4.5.3.2.6); a timeout reads "timed out waiting for ... from host[ip]:port". Only a
  loss or a timeout after the final dot was sent is a possible duplicate;
* with ``reuse_seconds`` > 0, a session that ended cleanly stays open, idle, for that
  long, one per hop; the next attempt to that hop takes it after a good RSET. A taken
  session belongs to one attempt only; a 421 or any error closes it.

Inside this module a session that cannot go on raises ``_Broken``; :meth:`attempt`
turns it into ``deferred`` (or ``failed``, for a 5xx) for every undecided recipient
and never raises for anything the remote server or the network does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import socket
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from certifier.errors import DeliveryError
from relay.delivery.routing import Hop, RouteError, Router

log = logging.getLogger("certifica/delivery")

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"

QUIT_TIMEOUT = 10.0
"""Seconds to wait for the reply to QUIT: the outcome is decided by then."""
REUSE_TIME_LIMIT = 300.0
"""A session is not reused once it is this old (Postfix's smtp_connection_reuse_time_limit)."""
DUPLICATE_NOTE = (
    "possible duplicate: the remote server may have received the message before "
    "the connection was lost"
)

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")
# How MTAs name the queue id in their 250 reply, most specific first (Postfix and Exim
# say "queued as", Sendmail "Message accepted", Exchange/Gmail put it after "OK" or "id=").
_REMOTE_QID = [
    re.compile(r"queued as\s+<?([A-Za-z0-9._@\-]{4,})", re.I),
    re.compile(r"\bid=<?([A-Za-z0-9._@\-]{4,})", re.I),
    re.compile(r"([A-Za-z0-9._\-]{6,}) Message accepted", re.I),
    re.compile(r"^(?:ok|accepted)\b[\s:]*<?([A-Za-z0-9._@\-]{6,})", re.I),
]
_SERVICE_CLOSING = 421  # RFC 5321 §3.8: the server is closing the channel


@dataclass(frozen=True)
class RecipientResult:
    address: str
    status: str
    code: int | None
    enhanced: str | None
    text: str
    remote_qid: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt found out; ``hop`` is the server that gave the final answer."""

    results: tuple[RecipientResult, ...]
    hop: Hop | None
    tls_version: str | None
    tls_cipher: str | None
    delivered_sha256: str | None
    # Seconds from the start of the attempt until the transaction could begin (DNS,
    # connect, greeting, EHLO, STARTTLS): Postfix's "c" in delays=a/b/c/d.
    setup_seconds: float | None = None


def split_reply(code: int | None, message: str) -> tuple[str | None, str]:
    """Split an SMTP reply text into (enhanced status code, rest), one line."""
    text = " ".join(message.split())
    match = _ENHANCED.match(text)
    if match:
        return match.group(1), text[match.end() :]
    return None, text


def remote_queue_id(text: str) -> str | None:
    """The queue id the remote server gave in its 250 reply, if it gave one."""
    for pattern in _REMOTE_QID:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _outcome_for(code: int) -> str:
    if 200 <= code < 300:
        return DELIVERED
    if 500 <= code < 600:
        return FAILED
    return DEFERRED


def _all(
    addresses: list[str], status: str, code: int | None, message: str
) -> tuple[RecipientResult, ...]:
    enhanced, text = split_reply(code, message)
    return tuple(RecipientResult(a, status, code, enhanced, text) for a in addresses)


def _where(hop: Hop) -> str:
    return f"{hop.host}[{hop.ip}]:{hop.port}"


def _sni(hop: Hop) -> str | None:
    """The name to send in TLS SNI: the MX host name, never an address."""
    return None if hop.host == hop.ip or hop.host.startswith("[") else hop.host


def _reason(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        return f"TLS handshake failed ({err.reason or err.__class__.__name__})"
    if isinstance(err, ConnectionRefusedError) or "refused" in str(err).lower():
        return "Connection refused"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return err.__class__.__name__


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _crlf(message: bytes) -> bytes:
    """``message`` with every line ending CRLF (RFC 5321 §2.3.8), ending in one."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        message = _LINE_END.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


def _stuffed(message: bytes) -> bytes:
    """The DATA content on the wire (``message`` already CRLF throughout): dot-stuffed
    (RFC 5321 §4.5.2) and terminated."""
    data = message.replace(b"\r\n.", b"\r\n..")
    return (b"." + data if data.startswith(b".") else data) + b".\r\n"


class _Broken(DeliveryError):
    """The session with one hop ended before the transaction did.

    ``code``/``message`` are the remote's reply when it gave one; ``next_hop`` says
    whether another hop may be tried; ``after_dot`` marks a possible duplicate.
    """

    def __init__(
        self,
        text: str,
        *,
        code: int | None = None,
        next_hop: bool = True,
        after_dot: bool = False,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.next_hop = next_hop
        self.after_dot = after_dot

    def result(self, address: str) -> RecipientResult:
        if self.code is None:
            note = DUPLICATE_NOTE if self.after_dot else None
            return RecipientResult(address, DEFERRED, None, None, self.text, note=note)
        enhanced, text = split_reply(self.code, self.text)
        return RecipientResult(address, _outcome_for(self.code), self.code, enhanced, text)


@dataclass
class _Session:
    """An open SMTP session with one hop, greeted and past EHLO (and STARTTLS)."""

    hop: Hop
    client: aiosmtplib.SMTP
    opened: float
    tls_version: str | None = None
    tls_cipher: str | None = None
    reusable: bool = True

    @property
    def where(self) -> str:
        return _where(self.hop)


@dataclass
class _Idle:
    session: _Session
    timer: asyncio.TimerHandle


class Deliverer:
    """Delivers with aiosmtplib through the hops a :class:`Router` gives."""

    def __init__(
        self,
        router: Router,
        helo_name: str,
        require_tls: bool,
        connect_timeout: float,
        command_timeout: float,
        *,
        data_timeout: float = 600.0,
        greeting_timeout: float = 300.0,
        data_init_timeout: float = 120.0,
        reuse_seconds: float = 0.0,
        max_idle: int = 1,
    ) -> None:
        self.router = router
        self.helo_name = helo_name
        self.require_tls = require_tls
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.greeting_timeout = greeting_timeout
        self.data_init_timeout = data_init_timeout
        self.reuse_seconds = reuse_seconds
        # Opportunistic TLS as Postfix's "may": encrypt when offered, do not authenticate
        # the peer (most MX certificates would not verify; RFC 7435).
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE
        # Idle sessions per hop, most recently used last; at most ``max_idle`` each.
        self._idle: dict[Hop, list[_Idle]] = {}
        self.max_idle = max_idle
        self._quitting: set[asyncio.Task[None]] = set()
        self._closed = False

    async def attempt(
        self, domain: str, sender: str, recipients: list[str], message: bytes, qid: str = ""
    ) -> AttemptResult:
        started = time.monotonic()
        # CRLF throughout, once: what is sent, sized (SIZE=) and hashed (delivered hash).
        message = _crlf(message)
        try:
            hops = await self.router.resolve(domain)
        except RouteError as err:
            status = DEFERRED if err.temporary else FAILED
            return AttemptResult(_all(recipients, status, None, err.text), None, None, None, None)
        # A session left open by an earlier attempt goes first, like Postfix's
        # connection cache; if it turns out stale, connect afresh in order.
        session = await self._take_idle(hops)
        if session is not None:
            result, next_hop = await self._run(session, sender, recipients, message, started)
            if not next_hop:
                return result
        last: AttemptResult | None = None
        for i, hop in enumerate(hops):
            try:
                session = await self._open(hop)
            except _Broken as err:
                last = AttemptResult(
                    tuple(err.result(a) for a in recipients), hop, None, None, None
                )
                next_hop = err.next_hop
            else:
                last, next_hop = await self._run(session, sender, recipients, message, started)
            if not next_hop:
                return last
            if i + 1 < len(hops) and last.results:
                log.info(
                    "%s: to=<%s>: %s; trying the next mail server",
                    qid or "NOQUEUE",
                    recipients[0],
                    last.results[0].text,
                )
        assert last is not None  # the router never returns an empty list
        return last

    async def close(self) -> None:
        """Close the idle sessions (with QUIT) and wait until they are closed."""
        self._closed = True
        idle, self._idle = [e for entries in self._idle.values() for e in entries], {}
        for entry in idle:
            entry.timer.cancel()
            self._quit_later(entry.session)
        if self._quitting:
            await asyncio.gather(*list(self._quitting), return_exceptions=True)

    # -- one session -------------------------------------------------------------------
    async def _open(self, hop: Hop) -> _Session:
        """Connect, read the greeting, EHLO and STARTTLS when offered; raise _Broken."""
        where = _where(hop)
        loop = asyncio.get_running_loop()
        sock = socket.socket(
            socket.AF_INET6 if ":" in hop.ip else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                loop.sock_connect(sock, (hop.ip, hop.port)), self.connect_timeout
            )
        except TimeoutError:
            sock.close()
            raise _Broken(f"timed out waiting for the TCP handshake from {where}") from None
        except OSError as err:
            sock.close()
            raise _Broken(f"connect to {where}: {_reason(err)}") from None
        except BaseException:
            sock.close()
            raise
        client = aiosmtplib.SMTP(
            hostname=hop.ip,
            sock=sock,
            local_hostname=self.helo_name,
            timeout=self.command_timeout,
            start_tls=False,
            use_tls=False,
        )
        try:
            await client.connect(timeout=self.greeting_timeout)
        except aiosmtplib.SMTPConnectResponseError as err:
            sock.close()
            reply = " ".join(f"{err.code} {err.message}".split())
            raise _Broken(f"{where} refused to talk to me: {reply}") from None
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            sock.close()
            raise _Broken(f"timed out waiting for the greeting from {where}") from None
        except (aiosmtplib.SMTPException, OSError):
            sock.close()
            raise _Broken(f"lost connection with {where} while waiting for the greeting") from None
        except BaseException:
            sock.close()
            raise
        session = _Session(hop, client, loop.time())
        try:
            await self._hello(session)
            if client.supports_extension("starttls"):
                await self._step(
                    session,
                    "STARTTLS",
                    client.starttls(tls_context=self._tls, server_hostname=_sni(hop)),
                )
                transport = client.transport
                ssl_object = transport.get_extra_info("ssl_object") if transport else None
                if ssl_object is not None:
                    session.tls_version = ssl_object.version()
                    session.tls_cipher = ssl_object.cipher()[0]
                await self._hello(session)
            elif self.require_tls:
                raise _Broken(f"{where} does not offer STARTTLS, which is required")
        except BaseException:
            client.close()
            raise
        return session

    async def _hello(self, session: _Session) -> None:
        """EHLO, or HELO for a server that does not know EHLO (RFC 5321 §4.1.1.1)."""
        try:
            await self._step(session, "EHLO", session.client.ehlo())
        except _Broken as err:
            if err.code is None or err.code < 500 or not session.client.is_connected:
                raise
            await self._step(session, "HELO", session.client.helo())
            session.reusable = True

    async def _step(
        self, session: _Session, command: str, call: Awaitable[SMTPResponse]
    ) -> SMTPResponse:
        """Await one command's reply; a timeout, a lost connection or a 4xx/5xx is _Broken.

        ``next_hop`` is set for the failures that say nothing about a recipient: no
        reply at all, a 4xx, a 421. The caller decides what a 5xx means.
        """
        where = session.where
        try:
            return await call
        except aiosmtplib.SMTPResponseException as err:
            session.reusable = False
            if err.code < 200:  # aiosmtplib's -1: not an SMTP reply at all
                raise _Broken(f"{where} sent a malformed reply to {command}") from None
            raise _Broken(err.message, code=err.code, next_hop=err.code < 500) from err
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            session.reusable = False
            raise _Broken(f"timed out waiting for the reply to {command} from {where}") from None
        except aiosmtplib.SMTPServerDisconnected:
            session.reusable = False
            raise _Broken(
                f"lost connection with {where} while waiting for the reply to {command}"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as err:
            session.reusable = False
            raise _Broken(f"{command} with {where} failed: {_reason(err)}") from None

    async def _run(
        self,
        session: _Session,
        sender: str,
        recipients: list[str],
        message: bytes,
        started: float,
    ) -> tuple[AttemptResult, bool]:
        """One transaction on ``session``: the result and whether to try the next hop."""
        setup = time.monotonic() - started
        decided: dict[str, RecipientResult] = {}
        next_hop = False
        try:
            await self._transact(session, sender, recipients, message, decided)
        except _Broken as err:
            session.reusable = False
            undecided = [a for a in recipients if a not in decided]
            for address in undecided:
                decided[address] = err.result(address)
            # Another hop only when this one decided nothing: no mixed evidence.
            next_hop = err.next_hop and len(undecided) == len(set(recipients))
        except BaseException:
            session.client.close()
            raise
        if not (session.reusable and session.client.is_connected):
            session.client.close()
        elif not self._park(session):
            await self._quit(session)
        results = tuple(decided[a] for a in recipients)
        delivered = any(r.status == DELIVERED for r in results)
        # The bytes the remote stores once it has undone the dot-stuffing (CRLF already).
        sha = hashlib.sha256(message).hexdigest() if delivered else None
        result = AttemptResult(
            results, session.hop, session.tls_version, session.tls_cipher, sha, setup
        )
        return result, next_hop

    async def _transact(
        self,
        session: _Session,
        sender: str,
        recipients: list[str],
        message: bytes,
        decided: dict[str, RecipientResult],
    ) -> None:
        """MAIL, RCPT for each recipient, DATA: fill ``decided``; raise _Broken."""
        client, where = session.client, session.where
        options: list[str] = []
        if client.supports_extension("size"):
            options.append(f"SIZE={len(message)}")
        if not message.isascii() and client.supports_extension("8bitmime"):
            options.append("BODY=8BITMIME")
        encoding = "ascii"
        if not (sender.isascii() and all(a.isascii() for a in recipients)):
            if not client.supports_extension("smtputf8"):
                # RFC 6531 §3.4: never downgrade an address; the recipients fail.
                text = f"{where} does not support SMTPUTF8, needed for a non-ASCII address"
                decided.update(
                    (a, RecipientResult(a, FAILED, None, None, text)) for a in recipients
                )
                return
            options.append("SMTPUTF8")
            encoding = "utf-8"
        try:
            await self._step(
                session, "MAIL FROM", client.mail(sender, options=options, encoding=encoding)
            )
        except ValueError:  # a control character: never put on the wire
            text = "the sender address cannot be sent over SMTP"
            decided.update((a, RecipientResult(a, FAILED, None, None, text)) for a in recipients)
            return
        except _Broken as err:
            # 4xx/5xx to MAIL FROM decides for everyone; only a 421 looks for another hop.
            if err.code is not None and err.code != _SERVICE_CLOSING:
                err.next_hop = False
                session.reusable = client.is_connected
            raise
        accepted: list[str] = []
        for address in recipients:
            try:
                await self._step(session, "RCPT TO", client.rcpt(address, encoding=encoding))
            except ValueError:
                text = "the recipient address cannot be sent over SMTP"
                decided[address] = RecipientResult(address, FAILED, None, None, text)
                continue
            except _Broken as err:
                if err.code is None or err.code == _SERVICE_CLOSING:
                    raise  # the server is gone: everything not yet decided is deferred
                session.reusable = client.is_connected
                decided[address] = err.result(address)
                continue
            accepted.append(address)
        if not accepted:
            return
        # DATA and its 354 first, with their own limit: a failure there cannot have
        # delivered anything, so it is never a possible duplicate.
        start = await self._step(
            session, "DATA", client.execute_command(b"DATA", timeout=self.data_init_timeout)
        )
        if start.code != 354:
            session.reusable = start.code != _SERVICE_CLOSING and client.is_connected
            enhanced, text = split_reply(start.code, start.message)
            status = DEFERRED if start.code < 500 else FAILED
            decided.update(
                (a, RecipientResult(a, status, start.code, enhanced, text)) for a in accepted
            )
            return
        try:
            protocol = client.protocol
            if protocol is None:
                raise aiosmtplib.SMTPServerDisconnected("Connection lost")
            protocol.write(_stuffed(message))
            response = await protocol.read_response(timeout=self.data_timeout)
        except aiosmtplib.SMTPResponseException as err:  # not an SMTP reply at all
            session.reusable = False
            raise _Broken(
                f"{where} sent a malformed reply to the end of data",
                next_hop=False,
                after_dot=True,
            ) from err
        except (aiosmtplib.SMTPTimeoutError, TimeoutError):
            session.reusable = False
            raise _Broken(
                f"timed out waiting for the reply to the end of data from {where}",
                next_hop=False,
                after_dot=True,
            ) from None
        except (aiosmtplib.SMTPException, OSError):
            session.reusable = False
            raise _Broken(
                f"lost connection with {where} after the end of data",
                next_hop=False,
                after_dot=True,
            ) from None
        if response.code != 250:
            # The server refused the message in so many words: no duplicate possible.
            session.reusable = response.code != _SERVICE_CLOSING and client.is_connected
            if response.code == _SERVICE_CLOSING:
                client.close()
            enhanced, text = split_reply(response.code, response.message)
            status = _outcome_for(response.code)
            decided.update(
                (a, RecipientResult(a, status, response.code, enhanced, text)) for a in accepted
            )
            return
        enhanced, text = split_reply(response.code, response.message)
        qid = remote_queue_id(text)
        decided.update(
            (a, RecipientResult(a, DELIVERED, response.code, enhanced, text, qid)) for a in accepted
        )

    # -- connection reuse --------------------------------------------------------------
    async def _take_idle(self, hops: list[Hop]) -> _Session | None:
        """An idle session to one of ``hops`` that answered RSET, taken from the cache."""
        for hop in hops:
            entries = self._idle.get(hop)
            while entries:
                entry = entries.pop()
                if not entries:
                    del self._idle[hop]
                entry.timer.cancel()
                session = entry.session
                try:
                    if session.client.is_connected:
                        await self._step(session, "RSET", session.client.rset())
                        return session
                except _Broken:
                    pass
                except BaseException:
                    session.client.close()
                    raise
                session.client.close()
                entries = self._idle.get(hop)
        return None

    def _park(self, session: _Session) -> bool:
        """Keep a clean session idle for the next attempt to its hop, if reuse is on; the
        oldest idle one goes when the hop already has ``max_idle``."""
        loop = asyncio.get_running_loop()
        if (
            self._closed
            or self.reuse_seconds <= 0
            or loop.time() - session.opened > REUSE_TIME_LIMIT
        ):
            return False
        entries = self._idle.setdefault(session.hop, [])
        while len(entries) >= self.max_idle:
            old = entries.pop(0)
            old.timer.cancel()
            self._quit_later(old.session)
        timer = loop.call_later(self.reuse_seconds, self._expire, session)
        entries.append(_Idle(session, timer))
        return True

    def _expire(self, session: _Session) -> None:
        entries = self._idle.get(session.hop, [])
        for entry in entries:
            if entry.session is session:
                entries.remove(entry)
                break
        if not entries:
            self._idle.pop(session.hop, None)
        self._quit_later(session)

    def _quit_later(self, session: _Session) -> None:
        task = asyncio.get_running_loop().create_task(self._quit(session))
        self._quitting.add(task)
        task.add_done_callback(self._quitting.discard)

    async def _quit(self, session: _Session) -> None:
        try:
            if session.client.is_connected:
                await session.client.quit(timeout=min(QUIT_TIMEOUT, self.command_timeout))
        except (aiosmtplib.SMTPException, OSError):
            pass
        finally:
            session.client.close()


__all__ = [
    "DELIVERED",
    "DEFERRED",
    "FAILED",
    "AttemptResult",
    "Deliverer",
    "RecipientResult",
    "SMTPResponse",
    "remote_queue_id",
    "split_reply",
]
