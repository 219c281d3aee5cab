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
import logging
from collections.abc import Callable
from typing import Any

from certifier.message import header_from_addresses
from relay import replies
from relay.config import Config
from relay.intake import accept, address_problem, session_tls
from relay.logs import printable
from relay.outbound import missing_submission_fields
from relay.qmgr import new_certificate_id, new_queue_id
from relay.spool import Spool
from relay.store import NewMessage, Store
from relay.users import check_password, normalise_address

log = logging.getLogger("certifica/submission")


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
        problem = address_problem(address)
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
        tls_version, tls_cipher = session_tls(server)
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        tracking = certified and self.cfg.tracking.enabled and await self.store.user_tracking(user)

        def message(sha256: str) -> NewMessage:
            return NewMessage(
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
                header_from=user,
                event="SubmissionAcceptance" if certified else None,
                event_detail={
                    "sha256": sha256,
                    "size": len(raw),
                    "envelope_from": envelope.mail_from,
                    "recipients": list(recipients),
                    "client_ip": peer,
                    "authenticated_user": user,
                    "tls": tls_version,
                    # added to the copy that leaves (relay.outbound), not to the spool
                    "added_fields": missing_submission_fields(raw),
                },
            )

        refused = await accept(self.store, self.spool, qid, raw, message)
        if refused:
            return refused
        log.info(  # the EHLO name is escaped already (relay.smtpd)
            "%s: client=%s[%s], sasl_username=%s",
            qid,
            session.host_name or "unknown",
            peer,
            printable(user),
        )
        log.info(
            "%s: from=<%s>, size=%d, nrcpt=%d, certified=%s",
            qid,
            printable(envelope.mail_from),
            len(raw),
            len(recipients),
            "yes" if certified else "no",
        )
        self.wake()
        template = replies.QUEUED_CERTIFIED if certified else replies.QUEUED
        return template.format(qid=qid)
