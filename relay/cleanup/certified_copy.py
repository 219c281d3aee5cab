"""MX mode: the Cc copy a sender's own provider delivers to the certification address.

A sender who keeps Gmail, Microsoft 365 or a company server as outgoing server puts
``certifica@<domain>`` in Cc; their provider delivers that copy to this gateway's MX.
The gateway then delivers a certified copy to every To and Cc recipient and certifies
it, as if the message had been submitted, but only when all of this holds:

1. the From header names exactly one mailbox, parsed strictly
   (:func:`certifier.mime.header_from_addresses`): never certify a message as coming
   from someone its From does not unambiguously name (RFC 7489 §6.6.1);
2. that address is a registered user of the gateway, or its domain is bound to an
   organisation (``certifica org domain add ACME acme.example``; docs/accounts.md);
3. the message authenticates that address DMARC-style (:mod:`relay.smtpd.authn`): DKIM
   aligned with the From domain, or (policy ``dkim-or-spf``) an SPF pass for an aligned
   MAIL FROM. A temporary DNS failure is a 451, so the provider tries again;
4. the sender may send (:func:`relay.roles.allowed`): a registered user is active and
   its role sends (an auditor does not), and its organisation, or the bound domain's,
   is not disabled. Checked once the message authenticated, so a forged From learns
   nothing about the account;
5. To and Cc parse strictly and every address in them is deliverable; the gateway's
   own addresses are left out. Bcc recipients cannot be seen here and get nothing.

The refusals, as the sending provider reports them to its user::

    550 5.7.1  From names no single sender; sender not registered; not authenticated;
               the sender may not send (role, disabled)
    451 4.7.0  authentication records unreadable now (SERVFAIL, timeout)
    550 5.6.0  To/Cc unreadable;  550 5.1.3 a To/Cc address invalid
    552 5.5.3  more To/Cc recipients than [limits] recipients
    554 5.5.1  nobody to deliver to but the gateway itself
    451/452    the message could not be stored (:mod:`relay.cleanup.intake`)

The message is attributed (``messages.org``) to the registered sender's organisation,
else to the organisation the From domain is bound to. The notices and the certificate go
to the From address (the row's ``sender``), registered or of a bound domain; the MAIL FROM as received is kept as ``envelope_from``, and the DKIM, SPF
and DMARC results (an RFC 8601 Authentication-Results value and the details) are
evidence, shown in the certificate.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from certifier.mime import header_addresses, header_from_addresses
from relay.addresses import local_domains
from relay.cleanup.intake import accept, address_problem, client_ip, reverse_path, session_tls
from relay.config import Config
from relay.logs import peer_text, printable
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.orgs import Account
from relay.queue.spool import Spool
from relay.queue.states import MessageKind, Method
from relay.queue.store import NewMessage, Store
from relay.roles import Action, allowed
from relay.smtpd import replies
from relay.smtpd.authn import AuthResults, TemporaryAuthError, authenticate
from relay.smtpd.users import normalise_address

log = logging.getLogger("certifica/mx")

_MAX_REPLY = 500  # RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its CRLF


class CertifiedCopyIntake:
    """Decides on, stores and answers a Cc copy sent to the certification address."""

    def __init__(self, cfg: Config, store: Store, spool: Spool, wake: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.wake = wake
        self.domain = cfg.gateway.domain.lower().rstrip(".")
        self.local_domains = local_domains(cfg)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        peer = client_ip(session)
        mail_from = reverse_path(envelope)
        froms = header_from_addresses(raw)
        if len(froms) != 1:
            return self._refuse(session, mail_from, "From does not name one sender",
                                replies.FROM_NOT_ONE_SENDER)  # fmt: skip
        sender = normalise_address(froms[0])
        from_domain = sender.rpartition("@")[2]
        account = await self.store.account(sender)
        bound = None if account is not None else await self.store.org_for_domain(from_domain)
        if account is None and bound is None:
            return self._refuse(session, mail_from, f"sender <{sender}> is not registered",
                                replies.SENDER_NOT_REGISTERED.format(sender=sender))  # fmt: skip
        try:
            results = await authenticate(
                raw,
                mail_from,
                peer,
                session.host_name or "",
                from_domain,
                self.cfg.dns.nameservers,
                self.cfg.dns.timeout,
            )
        except TemporaryAuthError as err:
            log.warning(
                "NOQUEUE: defer: DATA from %s: <%s>: %s; from=<%s>",
                peer_text(session.peer), sender, err, mail_from,
            )  # fmt: skip
            return replies.AUTHENTICATION_TEMPORARY
        policy = self.cfg.mx.require
        if not results.passes(policy):
            why = results.refusal(policy)
            return self._refuse(session, mail_from, f"<{sender}>: {results.header(self.domain)}",
                                _reply(replies.NOT_AUTHENTICATED.format(why=why)))  # fmt: skip
        org = await self._organisation(account, bound)
        if org is None:
            return self._refuse(session, mail_from, f"sender <{sender}> may not send",
                                replies.SENDER_MAY_NOT_SEND.format(sender=sender))  # fmt: skip
        recipients, problem = self._recipients(raw)
        if problem:
            return self._refuse(session, mail_from, "To/Cc refused", problem)
        qid = new_queue_id()
        tls_version, tls_cipher = session_tls(server)
        tracking = self.cfg.tracking.enabled and await self.store.user_tracking(sender)
        authentication = authentication_evidence(results, self.domain)

        def message(sha256: str) -> NewMessage:
            return NewMessage(
                qid=qid,
                kind=MessageKind.MAIL,
                sender=sender,
                size=len(raw),
                sha256=sha256,
                recipients=recipients,
                certified=True,
                method=Method.MX,
                cert_id=new_certificate_id(),
                org=org,
                client_ip=peer,
                client_helo=session.host_name,
                tls_version=tls_version,
                tls_cipher=tls_cipher,
                tracking=tracking,
                header_from=sender,
                envelope_from=mail_from,
                authentication=authentication,
                event="SubmissionAcceptance",
                event_detail={
                    "sha256": sha256,
                    "size": len(raw),
                    "envelope_from": mail_from,
                    "header_from": sender,
                    "recipients": list(recipients),
                    "client_ip": peer,
                    "tls": tls_version,
                    "authentication": authentication["header"],
                },
            )

        refused = await accept(self.store, self.spool, qid, raw, message)
        if refused:
            return refused
        log.info("%s: client=%s[%s], %s", qid, session.host_name or "unknown", peer,
                 authentication["header"])  # fmt: skip
        log.info(
            "%s: from=<%s>, header_from=<%s>, size=%d, nrcpt=%d, certified=yes (Cc copy)",
            qid, mail_from, sender, len(raw), len(recipients),
        )  # fmt: skip
        self.wake()
        return replies.QUEUED_CERTIFIED.format(qid=qid)

    async def _organisation(self, account: Account | None, bound: str | None) -> str | None:
        """The organisation the copy is attributed to (docs/accounts.md): the registered
        sender's, if it may send, else the one its domain is bound to, if that is not
        disabled; None when the sender may not send."""
        if account is not None:
            may = account.active and allowed(account.role, Action.SEND)
            return account.org if may else None
        holder = None if bound is None else await self.store.organisation(bound)
        return None if holder is None or holder.disabled else holder.code

    def _recipients(self, raw: bytes) -> tuple[tuple[str, ...], str | None]:
        """The To and Cc addresses to deliver to, or the reply refusing them."""
        listed = header_addresses(raw, ("to", "cc"))
        if listed is None:
            return (), replies.RECIPIENTS_UNREADABLE
        chosen: list[str] = []
        seen: set[str] = set()
        for address in listed:
            key = normalise_address(address)
            if key in seen or key.rpartition("@")[2].rstrip(".") in self.local_domains:
                continue  # our own addresses receive nothing
            problem = address_problem(address)
            if problem:
                shown = printable(address, 200)
                return (), replies.HEADER_RECIPIENT_INVALID.format(address=shown, why=problem)
            seen.add(key)
            chosen.append(address)
        if not chosen:
            return (), replies.NO_OTHER_RECIPIENTS
        if len(chosen) > self.cfg.limits.recipients:
            return (), replies.HEADER_RECIPIENTS_TOO_MANY.format(limit=self.cfg.limits.recipients)
        return tuple(chosen), None

    def _refuse(self, session: Any, mail_from: str, why: str, reply: str) -> str:
        # Postfix's wording, so an operator's grep for "NOQUEUE: reject" finds these too.
        log.info(
            "NOQUEUE: reject: DATA from %s: %s; from=<%s>",
            peer_text(session.peer), printable(why, 400), printable(mail_from, 400),
        )  # fmt: skip
        return reply


def authentication_evidence(results: AuthResults, authserv_id: str) -> dict[str, Any]:
    """The authentication evidence: the RFC 8601 header value and every result."""
    detail = asdict(results)
    detail["dkim"] = [asdict(sig) for sig in results.dkim]
    return {"header": results.header(authserv_id), **detail}


def _reply(text: str) -> str:
    return text if len(text) <= _MAX_REPLY else text[: _MAX_REPLY - 3] + "..."
