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
"""

from __future__ import annotations

import hashlib
import re
import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from relay.routing import Hop, RouteError, Router

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")
# How MTAs name the queue id in their 250 reply, most specific first (Postfix and Exim
# say "queued as", Sendmail "Message accepted", Exchange/Gmail put it after "OK" or "id=").
_REMOTE_QID = [
    re.compile(r"queued as\s+<?([A-Za-z0-9._@\-]{4,})", re.I),
    re.compile(r"\bid=<?([A-Za-z0-9._@\-]{4,})", re.I),
    re.compile(r"([A-Za-z0-9._\-]{6,}) Message accepted", re.I),
    re.compile(r"^(?:ok|accepted)\b[\s:]*<?([A-Za-z0-9._@\-]{6,})", re.I),
]


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


class Deliverer:
    """Delivers with aiosmtplib through the hops a :class:`Router` gives."""

    def __init__(
        self,
        router: Router,
        helo_name: str,
        require_tls: bool,
        connect_timeout: float,
        command_timeout: float,
    ) -> None:
        self.router = router
        self.helo_name = helo_name
        self.require_tls = require_tls
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        # Opportunistic TLS as Postfix's "may": encrypt when offered, do not authenticate
        # the peer (most MX certificates would not verify; RFC 7435).
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    async def attempt(
        self, domain: str, sender: str, recipients: list[str], message: bytes
    ) -> AttemptResult:
        try:
            hops = await self.router.resolve(domain)
        except RouteError as err:
            status = DEFERRED if err.temporary else FAILED
            return AttemptResult(_all(recipients, status, None, err.text), None, None, None, None)
        last: AttemptResult | None = None
        for hop in hops:
            last = await self._try_hop(hop, sender, recipients, message)
            # Only a failure to talk to this hop at all moves on to the next MX.
            if not (
                last.results
                and last.results[0].code is None
                and all(r.status == DEFERRED for r in last.results)
            ):
                return last
        assert last is not None
        return last

    async def _try_hop(
        self, hop: Hop, sender: str, recipients: list[str], message: bytes
    ) -> AttemptResult:
        where = f"{hop.host}[{hop.ip}]:{hop.port}"
        client = aiosmtplib.SMTP(
            hostname=hop.ip,
            port=hop.port,
            local_hostname=self.helo_name,
            timeout=self.command_timeout,
            start_tls=False,
            use_tls=False,
        )
        tls_version = tls_cipher = None
        sha = hashlib.sha256(message).hexdigest()
        try:
            try:
                await client.connect(timeout=self.connect_timeout)
            except (aiosmtplib.SMTPException, OSError) as err:
                reason = _connect_reason(err)
                return self._result(
                    _all(recipients, DEFERRED, None, f"connect to {where}: {reason}"), hop
                )
            await client.ehlo()
            if client.supports_extension("starttls"):
                await client.starttls(tls_context=self._tls, server_hostname=hop.host)
                await client.ehlo()
                ssl_object = (
                    client.transport.get_extra_info("ssl_object") if client.transport else None
                )
                if ssl_object is not None:
                    tls_version = ssl_object.version()
                    tls_cipher = ssl_object.cipher()[0]
            elif self.require_tls:
                await client.quit()
                return self._result(
                    _all(
                        recipients,
                        DEFERRED,
                        None,
                        f"{where} does not offer STARTTLS, which is required",
                    ),
                    hop,
                )
            response = await client.mail(sender)
            accepted: list[str] = []
            results: dict[str, RecipientResult] = {}
            for address in recipients:
                try:
                    await client.rcpt(address)
                    accepted.append(address)
                except aiosmtplib.SMTPRecipientRefused as err:
                    enhanced, text = split_reply(err.code, err.message)
                    results[address] = RecipientResult(
                        address, _outcome_for(err.code), err.code, enhanced, text
                    )
            if accepted:
                try:
                    response = await client.data(message)
                except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPReadTimeoutError):
                    for address in accepted:
                        results[address] = RecipientResult(
                            address,
                            DEFERRED,
                            None,
                            None,
                            f"lost connection with {where} after the end of data",
                            note="possible duplicate: the remote server may have received the "
                            "message before the connection was lost",
                        )
                    return self._result(
                        tuple(results[a] for a in recipients), hop, tls_version, tls_cipher, sha
                    )
                enhanced, text = split_reply(response.code, response.message)
                for address in accepted:
                    results[address] = RecipientResult(
                        address, DELIVERED, response.code, enhanced, text, remote_queue_id(text)
                    )
            try:
                await client.quit()
            except aiosmtplib.SMTPException:
                pass
            delivered = any(r.status == DELIVERED for r in results.values())
            return self._result(
                tuple(results[a] for a in recipients),
                hop,
                tls_version,
                tls_cipher,
                sha if delivered else None,
            )
        except aiosmtplib.SMTPResponseException as err:
            # EHLO, STARTTLS, MAIL or DATA refused for the whole transaction
            status = _outcome_for(err.code)
            return self._result(
                _all(recipients, status, err.code, err.message), hop, tls_version, tls_cipher
            )
        except (aiosmtplib.SMTPException, OSError) as err:
            reason = _connect_reason(err)
            return self._result(
                _all(recipients, DEFERRED, None, f"conversation with {where} failed: {reason}"),
                hop,
                tls_version,
                tls_cipher,
            )
        finally:
            client.close()

    @staticmethod
    def _result(
        results: tuple[RecipientResult, ...],
        hop: Hop,
        tls_version: str | None = None,
        tls_cipher: str | None = None,
        sha: str | None = None,
    ) -> AttemptResult:
        return AttemptResult(results, hop, tls_version, tls_cipher, sha)


def _connect_reason(err: BaseException) -> str:
    if isinstance(err, aiosmtplib.SMTPConnectTimeoutError | TimeoutError):
        return "Connection timed out"
    if isinstance(err, ConnectionRefusedError) or "refused" in str(err).lower():
        return "Connection refused"
    if isinstance(err, aiosmtplib.SMTPServerDisconnected):
        return "Connection closed by the remote server"
    if isinstance(err, aiosmtplib.SMTPReadTimeoutError):
        return "Timed out waiting for the remote server"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return err.__class__.__name__


__all__ = [
    "DELIVERED",
    "DEFERRED",
    "FAILED",
    "AttemptResult",
    "Deliverer",
    "RecipientResult",
    "SMTPResponse",
]
