"""Mail for ``postmaster@`` and ``abuse@``: taken on the MX and relayed to a person.

RFC 5321 §4.5.1 requires every SMTP server to accept mail for ``postmaster`` (with its
domain, or bare ``<Postmaster>``), even from the null reverse-path, and RFC 2142 names
``abuse`` for reports. The gateway keeps no mailboxes, so such mail is queued like any
relayed message, uncertified, for the one address ``[gateway] postmaster`` names
(:func:`relay.addresses.postmaster_address`), outside the gateway's own domains, and
leaves with the gateway's return path. Submitted mail for these addresses reaches this
module too: the router hands the gateway's own domains to its MX (:mod:`relay.delivery.routing`).

It is queued as its own kind, ``postmaster`` (:mod:`relay.queue.store`), never as a user's
mail: its MAIL FROM is whatever an unauthenticated client said, so nothing about it is
ever told to that sender (no non-delivery report, which would be backscatter and would
name the operator's mailbox); its From is not rewritten and no customer's delegated DKIM
key signs it; it leaves with ``X-Original-To`` naming the address it was sent to, as
Postfix's local delivery writes it (:mod:`relay.delivery.agent`). When the operator's mailbox
refuses it for good, the operator's log has one error line and the message stays in the
spool archive (``certifica queue show``).

Replies: ``250 2.0.0`` with the queue id once owned; ``451``/``452`` when it could not
be stored (:mod:`relay.cleanup.intake`).
"""

from __future__ import annotations

import logging
from typing import Any

from relay.addresses import GatewayAddresses, postmaster_address
from relay.cleanup.intake import accept, client_ip, reverse_path, session_tls
from relay.config import Config
from relay.logs import printable
from relay.queue.ids import new_queue_id
from relay.queue.spool import Spool
from relay.queue.states import MessageKind, Method
from relay.queue.store import NewMessage, Store
from relay.smtpd import replies

log = logging.getLogger("certifica/mx")


class PostmasterIntake:
    """Stores what arrives for postmaster@ and abuse@ and queues it for the operator."""

    def __init__(self, cfg: Config, store: Store, spool: Spool, wake: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.wake = wake
        self.postmaster = postmaster_address(cfg)
        self.addresses = GatewayAddresses.from_config(cfg)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Queue the message for ``[gateway] postmaster``; the reply to DATA."""
        raw: bytes = envelope.original_content
        peer = client_ip(session)
        mail_from = reverse_path(envelope)
        kinds = getattr(envelope, "local_kinds", {})
        addressed = [a for a, k in kinds.items() if k in ("postmaster", "abuse")]
        # As written in X-Original-To: the canonical form (bare <Postmaster> with the domain).
        original_to = tuple(
            dict.fromkeys(self.addresses.classify(a).address.lower() for a in addressed)
        )
        qid = new_queue_id()
        tls_version, tls_cipher = session_tls(server)

        def message(sha256: str) -> NewMessage:
            return NewMessage(
                qid=qid,
                kind=MessageKind.POSTMASTER,
                sender=mail_from,
                size=len(raw),
                sha256=sha256,
                recipients=(self.postmaster,),
                method=Method.MX,
                client_ip=peer,
                client_helo=session.host_name,
                tls_version=tls_version,
                tls_cipher=tls_cipher,
                envelope_from=mail_from,
                original_to=original_to,
            )

        refused = await accept(self.store, self.spool, qid, raw, message)
        if refused:
            return refused
        log.info(
            "%s: from=<%s>, to=<%s>, size=%d, client=%s[%s]: relayed to <%s> (gateway.postmaster)",
            qid,
            printable(mail_from),
            ">, <".join(printable(a) for a in addressed),
            len(raw),
            printable(session.host_name or "unknown", 200),
            peer,
            self.postmaster,
        )
        self.wake()
        return replies.QUEUED.format(qid=qid)
