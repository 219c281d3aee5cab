"""Certified reception: mail a mailbox forwards to ``recepcion+<token>@<domain>``.

A mailbox owner turns it on with ``certifica reception enable OWNER`` and has the
mailbox forward (a copy of) what it receives to the address printed. Each message that
arrives there on the MX is certified on arrival (ETSI EN 319 522 event
``ReceivedFromNonERDS``): the time, the forwarding chain (the Received fields, the ARC
chain (:rfc:`8617`) and the envelope of the last hop), the original From, Date,
Message-ID, Subject, To and Cc, the DKIM results of the original signatures as they
verify now, and the SHA-256 of the message and of each attachment. The reception
certificate goes to the owner; nothing is delivered anywhere else.

With ``--ack-sender`` the original sender also gets a proof of receipt (the same PDF),
but never (RFC 3834 §2, and no backscatter to forged senders):

* for the null reverse-path, delivery reports, mailing-list or bulk mail and anything
  ``Auto-Submitted`` other than ``no`` (:func:`relay.cleanup.bounces.is_auto_reply`);
* when the From header does not name one sender, or the sender is the owner or an
  address of the gateway's own domain;
* when the original From is not authenticated (aligned DKIM or SPF, as in MX mode),
  unless ``[reception] ack_requires_authentication = false``;
* more than once per sender per ``ack_interval`` (checked when it is sent).

The decision and its reason are evidence, in the certificate.

A message forwarded twice (the same bytes for the same owner within
``duplicate_window``, not counting the trace fields each hop adds: :func:`content_key`)
is certified once: the second arrival is answered 250 and
recorded on the first (``DuplicateReception``), and no second certificate is made.

Replies: ``250 2.0.0`` with the queue id once owned; ``451``/``452`` when it could not
be stored (:mod:`relay.cleanup.intake`). An unknown or disabled token is refused at RCPT with
``550 5.1.1`` by the MX (:mod:`relay.smtpd.mx`). A temporary DNS failure while reading the
DKIM keys does not refuse the message: reception is recorded as it happened, with the
``temperror`` in the results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any

from certifier.mime import header_end, header_fields, header_from_addresses
from relay.addresses import local_domains, reception_token
from relay.cleanup.bounces import is_auto_reply
from relay.cleanup.certified_copy import authentication_evidence
from relay.cleanup.intake import accept, client_ip, reverse_path, session_tls
from relay.config import Config
from relay.logs import peer_text
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.spool import Spool
from relay.queue.states import MessageKind, Method
from relay.queue.store import NewMessage, Store
from relay.smtpd import replies
from relay.smtpd.authn import AuthResults, TemporaryAuthError, authenticate, check_arc
from relay.smtpd.users import normalise_address

log = logging.getLogger("certifica/reception")

MAX_TRACE_FIELDS = 50  # Received and ARC fields kept as evidence
MAX_TRACE_CHARS = 2000  # per field


# Fields each hop may add or rewrite on the way: a message forwarded twice differs only
# in these, so they are left out of the key that recognises it (RFC 5321 §4.4, RFC 8617).
_TRACE_FIELDS = (b"received", b"return-path", b"delivered-to", b"x-original-to")
_TRACE_PREFIXES = (b"arc-", b"x-forwarded-")


def content_key(raw: bytes) -> str:
    """SHA-256 of ``raw`` without the trace fields forwarders add: the same message
    forwarded twice, by two rules or two hops, has the same key."""
    end = header_end(raw)
    kept = []
    for field in header_fields(raw[:end]):
        name = field.split(b":", 1)[0].strip().lower()
        if name in _TRACE_FIELDS or name.startswith(_TRACE_PREFIXES):
            continue
        if name == b"authentication-results":
            continue  # each receiving hop writes its own
        kept.append(field)
    return hashlib.sha256(b"".join(kept) + raw[end:]).hexdigest()


def trace(raw: bytes) -> dict[str, list[str]]:
    """The forwarding chain as written in the header: Received and ARC fields, top first."""
    kept: dict[str, list[str]] = {"received": [], "arc": []}
    for field in header_fields(raw[: header_end(raw)]):
        name = field.split(b":", 1)[0].strip().lower()
        key = "received" if name == b"received" else "arc" if name.startswith(b"arc-") else None
        if key is None or len(kept[key]) >= MAX_TRACE_FIELDS:
            continue
        text = " ".join(field.decode("utf-8", "replace").split())
        kept[key].append("".join(c if c.isprintable() else "?" for c in text)[:MAX_TRACE_CHARS])
    return kept


RECEIPT_REASONS = {
    "sent": "sent to the authenticated sender, at most once per interval",
    "not_requested": "the owner did not ask for proofs of receipt",
    "null_sender": "null sender (a delivery report): never answered (RFC 3834)",
    "automatic": "automatic, bulk or mailing-list mail: never answered (RFC 3834)",
    "no_single_sender": "the From header does not name one sender",
    "own_address": "the sender is the owner or the gateway itself",
    "not_authenticated": "the sender's address is not authenticated (no aligned DKIM or SPF)",
    "interval": "a proof of receipt already went to this sender within the interval (RFC 3834)",
}
"""Whether a proof of receipt went to the original sender, and why not: the key is the
language-neutral ``reception.receipt.reason`` of the evidence (the certificate words it
in the reader's language); the English sentence is ``receipt.why`` and the log's."""


class ReceptionIntake:
    """Decides on, stores and answers mail sent to the reception addresses."""

    def __init__(self, cfg: Config, store: Store, spool: Spool, wake: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.wake = wake
        self.domain = cfg.gateway.domain.lower().rstrip(".")
        self.local_domains = local_domains(cfg)

    async def owner_for(self, address: str) -> dict[str, Any] | None:
        """The enabled owner an RCPT address forwards for, or None."""
        token = reception_token(address, self.cfg.reception.prefix, self.domain)
        return await self.store.reception_owner(token) if token else None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        owners: list[dict[str, Any]] = envelope.reception_owners
        now = time.time()
        peer = client_ip(session)
        mail_from = reverse_path(envelope)
        froms = header_from_addresses(raw)
        original_from = normalise_address(froms[0]) if len(froms) == 1 else None
        results: AuthResults | None = None
        auth_problem = ""
        try:
            results = await authenticate(
                raw,
                mail_from,
                peer,
                session.host_name or "",
                original_from.rpartition("@")[2] if original_from else "",
                self.cfg.dns.nameservers,
                self.cfg.dns.timeout,
            )
        except TemporaryAuthError as err:
            auth_problem = f"temperror: {err}"
        arc = await check_arc(raw, self.cfg.dns.nameservers, self.cfg.dns.timeout)
        chain = trace(raw)
        key = content_key(raw)
        tls_version, tls_cipher = session_tls(server)
        answers = []
        for owner in owners:
            address = owner["owner"]
            sha_known = await self._duplicate(raw, key, address, now)
            if sha_known:
                answers.append(f"already certified as {sha_known}")
                continue
            qid = new_queue_id()
            reason = self._receipt(owner, raw, mail_from, original_from, results)
            org = await self._organisation(address)
            receipt, why = reason == "sent", RECEIPT_REASONS[reason]
            authentication = (
                authentication_evidence(results, self.domain)
                if results is not None
                else {"header": f"{self.domain}; dkim=temperror; {auth_problem}"[:500]}
            )
            detail = {
                "owner": address,
                "arrived_at": now,
                "envelope": {
                    "mail_from": mail_from,
                    "rcpt_to": [a for a in envelope.rcpt_tos if a in owner["addresses"]],
                    "client_ip": peer,
                    "client_helo": session.host_name,
                    "tls": tls_version,
                },
                "original_from": original_from,
                "trace": chain,
                "arc": dataclasses.asdict(arc),
                "receipt": {"to": original_from if receipt else None, "why": why, "reason": reason},
            }

            def message(sha256: str, qid: str = qid, address: str = address,
                        detail: dict[str, Any] = detail, org: str | None = org,
                        authentication: dict[str, Any] = authentication) -> NewMessage:  # fmt: skip
                return NewMessage(
                    qid=qid,
                    kind=MessageKind.RECEPTION,
                    sender=address,  # the certificate goes to the owner
                    size=len(raw),
                    sha256=sha256,
                    recipients=(),
                    certified=True,
                    method=Method.RECEPTION,
                    cert_id=new_certificate_id(),
                    org=org,
                    client_ip=peer,
                    client_helo=session.host_name,
                    tls_version=tls_version,
                    tls_cipher=tls_cipher,
                    header_from=original_from,
                    envelope_from=mail_from,
                    authentication=authentication,
                    reception=detail,
                    content_key=key,
                    event="ReceivedFromNonERDS",
                    event_detail={
                        "sha256": sha256,
                        "size": len(raw),
                        "owner": address,
                        "envelope_from": mail_from,
                        "header_from": original_from,
                        "client_ip": peer,
                        "authentication": authentication["header"],
                        "arc": arc.result,
                    },
                )

            refused = await accept(self.store, self.spool, qid, raw, message)
            if refused:
                return refused
            log.info(
                "%s: reception for <%s>: from=<%s>, header_from=<%s>, client=%s, size=%d, "
                "%s, arc=%s, receipt=%s (%s)",
                qid, address, mail_from, original_from or "?", peer_text(session.peer),
                len(raw), authentication["header"], arc.result,
                "yes" if receipt else "no", why,
            )  # fmt: skip
            answers.append(f"queued as {qid}")
            self.wake(qid)  # nothing to deliver: it is ready to be certified
        return replies.RECEPTION_CERTIFIED.format(what="; ".join(answers))

    async def _organisation(self, owner: str) -> str | None:
        """The organisation a reception owner's certificates are attributed to
        (docs/accounts.md): the owner's own as a user, else the one its domain is bound
        to, else none."""
        account = await self.store.account(owner)
        if account is not None:
            return account.org
        return await self.store.org_for_domain(owner.rpartition("@")[2])

    async def _duplicate(self, raw: bytes, key: str, owner: str, now: float) -> str | None:
        since = now - self.cfg.reception.duplicate_window
        first = await self.store.reception_duplicate(owner, key, since)
        if first is not None:
            sha256 = hashlib.sha256(raw).hexdigest()
            await self.store.append_evidence(
                first, "DuplicateReception", {"sha256": sha256, "owner": owner}, now
            )
            log.info("%s: the same message arrived again for <%s>; not certified twice",
                     first, owner)  # fmt: skip
        return first

    def _receipt(
        self,
        owner: dict[str, Any],
        raw: bytes,
        mail_from: str,
        original_from: str | None,
        results: AuthResults | None,
    ) -> str:
        """Whether the original sender gets a proof of receipt: ``"sent"``, or the
        :data:`RECEIPT_REASONS` key saying why not."""
        if not owner["ack_sender"]:
            return "not_requested"
        if not mail_from:
            return "null_sender"
        if is_auto_reply(raw):
            return "automatic"
        if original_from is None:
            return "no_single_sender"
        if (
            original_from == owner["owner"]
            or original_from.rpartition("@")[2] in self.local_domains
        ):
            return "own_address"
        if self.cfg.reception.ack_requires_authentication and not (
            results is not None and results.passes("dkim-or-spf")
        ):
            return "not_authenticated"
        return "sent"
