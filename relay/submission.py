"""The submission listener's decisions (RFC 6409): who may send, what, and to whom.

The handler only decides, stores and answers; it never delivers (the queue manager
does). A message is answered 250 only after its bytes are fsynced in the spool and
its row committed in the store; if either fails the client gets 451/452.

The certification address among the envelope recipients (the sender put it in Cc)
asks for certification: it is taken out of delivery, and the Cc header is left as
written so the recipients see the message is certified.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from certifier.message import header_from_addresses
from relay import replies
from relay.config import Config
from relay.qmgr import new_certificate_id, new_queue_id
from relay.spool import Spool, is_disk_full
from relay.store import NewMessage, Store, StoreError, StoreFullError
from relay.users import check_password, normalise_address

log = logging.getLogger("certifica/submission")


def _address_problem(address: str) -> str | None:
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it needs a local part and a domain"
    if len(address) > 254 or len(local) > 64:
        return "it is too long"
    if domain.startswith("[") or "." not in domain and domain != "localhost":
        return "the domain must be a host name"
    if "%" in local or "!" in local:
        return "source routes and % hacks are not accepted"
    return None


class SubmissionHandler:
    """aiosmtpd hooks for authenticated submission."""

    def __init__(self, cfg: Config, store: Store, spool: Spool, wake: Callable[[], None]) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.wake = wake
        self.cert_address = normalise_address(cfg.gateway.certification_address)
        self.accepting = True

    async def verify_password(self, user: str, password: str) -> bool:
        stored = await self.store.user_hash(normalise_address(user))
        return await asyncio.to_thread(check_password, password, stored)

    @staticmethod
    def _user(session: Any) -> str:
        auth = session.auth_data
        login = getattr(auth, "login", b"")
        return normalise_address(
            login.decode("utf-8", "replace") if isinstance(login, bytes) else str(login)
        )

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.accepting:
            return replies.SHUTTING_DOWN
        user = self._user(session)
        if normalise_address(address) != user:
            return replies.SENDER_NOT_OWNED.format(user=user, sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        problem = _address_problem(address)
        if problem:
            return replies.BAD_ADDRESS.format(why=problem)
        if len(envelope.rcpt_tos) >= self.cfg.limits.recipients:
            return replies.TOO_MANY_RECIPIENTS
        if normalise_address(address) == self.cert_address:
            if address not in envelope.rcpt_tos:
                envelope.rcpt_tos.append(address)
            return replies.CERTIFICATION_OK
        if normalise_address(address) not in {normalise_address(a) for a in envelope.rcpt_tos}:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.accepting:
            return replies.SHUTTING_DOWN
        raw: bytes = envelope.original_content
        user = self._user(session)
        if b"\r\n\r\n" not in raw and not raw.endswith(b"\r\n"):
            return replies.NOT_A_MESSAGE
        end = raw.find(b"\r\n\r\n")
        header = raw if end < 0 else raw[: end + 2]
        if [normalise_address(a) for a in header_from_addresses(header)] != [user]:
            return replies.FROM_NOT_OWNED.format(user=user)
        certified = any(normalise_address(a) == self.cert_address for a in envelope.rcpt_tos)
        recipients = tuple(
            a for a in envelope.rcpt_tos if normalise_address(a) != self.cert_address
        )
        if not recipients:
            return replies.NO_OTHER_RECIPIENTS
        if not certified and not self.cfg.gateway.relay_uncertified:
            return replies.RELAY_UNCERTIFIED_OFF.format(
                address=self.cfg.gateway.certification_address
            )
        qid = new_queue_id()
        tls_version, tls_cipher = _session_tls(server)
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        try:
            sha256 = await asyncio.to_thread(self._spool_message, qid, raw)
        except OSError as err:
            log.error("%s: could not store the message: %s", qid, err.strerror or err)
            return replies.DISK_FULL if is_disk_full(err) else replies.STORE_FAILED
        tracking = certified and self.cfg.tracking.enabled and await self.store.user_tracking(user)
        msg = NewMessage(
            qid=qid,
            kind="mail",
            sender=envelope.mail_from,
            size=len(raw),
            sha256=sha256,
            recipients=recipients,
            certified=certified,
            method="submission",
            cert_id=new_certificate_id() if certified else None,
            auth_user=user,
            client_ip=peer,
            client_helo=session.host_name,
            tls_version=tls_version,
            tls_cipher=tls_cipher,
            tracking=tracking,
            event="SubmissionAcceptance" if certified else None,
            event_detail={
                "sha256": sha256,
                "size": len(raw),
                "envelope_from": envelope.mail_from,
                "recipients": list(recipients),
                "client_ip": peer,
                "authenticated_user": user,
                "tls": tls_version,
            },
        )
        try:
            await self.store.enqueue(msg, time.time())
        except (StoreError, OSError) as err:
            await asyncio.to_thread(self.spool.remove, qid)
            log.error("%s: could not record the message: %s", qid, err)
            full = isinstance(err, StoreFullError) or is_disk_full(err)
            return replies.DISK_FULL if full else replies.STORE_FAILED
        log.info(
            "%s: client=%s[%s], sasl_username=%s", qid, session.host_name or "unknown", peer, user
        )
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, certified=%s",
            qid,
            envelope.mail_from,
            len(raw),
            len(recipients),
            "yes" if certified else "no",
        )
        self.wake()
        template = replies.QUEUED_CERTIFIED if certified else replies.QUEUED
        return template.format(qid=qid)

    def _spool_message(self, qid: str, raw: bytes) -> str:
        self.spool.store(qid, raw)
        return hashlib.sha256(raw).hexdigest()


def _session_tls(server: Any) -> tuple[str | None, str | None]:
    """TLS version and cipher of the session, for STARTTLS and implicit TLS alike."""
    transport = getattr(server, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None
