"""The MX listener (port 25): mail for the gateway's own addresses, and nothing else.

The local addresses are listed once, in :mod:`relay.addresses`, which decides at RCPT:
the certification address, which receives the Cc copy a sender's own provider delivers
(MX mode, :mod:`relay.cleanup.certified_copy` decides on it through ``on_certify``); the
reception addresses ``<prefix>+<token>@<domain>`` of mailbox owners (certified
reception, :mod:`relay.cleanup.reception`, through ``reception_owner`` at RCPT and
``on_reception`` at DATA); the VERP return paths of relayed messages
(:mod:`relay.cleanup.bounces`): a delivery status notification that arrives there after the
remote server said 250 becomes evidence through ``on_bounce``; and ``postmaster`` and
``abuse``, relayed to the operator through ``on_postmaster`` (:mod:`relay.cleanup.postmaster`).
Every other address is refused at RCPT, so the MX is never a relay (RFC 5321 §3.6,
§7.1): a certified copy goes only to the To and Cc of a message whose registered sender
authenticated it. The handler decides and answers; it never sends mail, not even a
bounce of a bounce (RFC 3834 §2).

Replies (RFC 5321 §4.2, RFC 3463 codes); the decisions, from the client's side:

* ``MAIL``: any sender, the null reverse-path ``<>`` included (DSNs come from it).
* ``RCPT``: the certification address, an enabled reception address, a valid VERP
  address of ours, ``postmaster`` (bare too) or ``abuse`` -> ``250 2.1.5``; an unknown
  or disabled reception token too is ``550 5.1.1``; another address at our domain ->
  ``550 5.1.1`` with a sentence (:mod:`relay.addresses`: the valid forms, or "did you
  mean"); another domain, a source route (``@a,@b:x@y``), a ``%`` or
  ``!`` hack, a quoted local part holding ``@`` or ``%`` -> ``550 5.7.1`` relaying
  denied; over the recipient limit -> ``452 4.5.3``.
* ``DATA`` for the certification address: whatever ``on_certify`` answers (250 with
  the queue id once the copy is owned, else a 4xx/5xx saying why).
* ``DATA`` for a return path: a DSN -> ``250 2.0.0`` once ``on_bounce`` returned; anything else (someone
  replied to the return path) -> ``250`` too, reported to ``on_bounce`` with no
  reports; ``on_bounce`` raising -> ``451 4.3.0`` (the remote MTA retries), without
  the exception's text.

:class:`MXSMTP` is :class:`relay.smtpd.protocol.CertificaSMTP` with the null sender made to work:
aiosmtpd 1.4.6 hands ``MAIL FROM:<>`` to the handler as the literal ``"<>"``, and
treats an empty ``envelope.mail_from`` as "no MAIL yet" (RCPT then gets 503). So the
protocol keeps ``"<>"`` in the envelope, as aiosmtpd's own checks need, and every
handler hook sees ``""``, the RFC 5321 null reverse-path.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from relay.addresses import AddressKind, GatewayAddresses
from relay.cleanup.bounces import BounceReport, parse_dsn, parse_return_path
from relay.logs import log_failure, peer_text, printable
from relay.queue.space import FreeSpace
from relay.smtpd import replies
from relay.smtpd.protocol import CertificaSMTP
from relay.smtpd.replies import (
    BOUNCE_NOT_RECORDED,
    BOUNCE_RECORDED,
    NO_SUCH_USER,
    NOT_A_BOUNCE,
    RELAY_DENIED,
)

__all__ = [
    "BOUNCE_NOT_RECORDED",
    "BOUNCE_RECORDED",
    "NO_SUCH_USER",
    "NOT_A_BOUNCE",
    "RELAY_DENIED",
    "MXHandler",
    "MXSMTP",
]

log = logging.getLogger("certifica/mx")

OnBounce = Callable[[str, list[BounceReport], bytes], Awaitable[None]]
OnCertify = Callable[[Any, Any, Any], Awaitable[str]]
OwnerLookup = Callable[[str], Awaitable[dict[str, Any] | None]]

_NULL_PATH = "<>"  # how aiosmtpd's _getaddr returns the null reverse-path
_SOURCE_ROUTE = re.compile(r"\s*<(@[^<>]*:[^<>]*)>(.*)", re.S)


class MXSMTP(CertificaSMTP):
    """The MX port's protocol: CertificaSMTP with no AUTH and the null sender working."""

    def __init__(
        self,
        handler: Any,
        *,
        header_limit: int,
        auth_failures: int = 1,
        auth_delay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            verifier=None,
            header_limit=header_limit,
            auth_failures=auth_failures,
            auth_delay=auth_delay,
            **kwargs,
        )
        self._forward_path = False

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        envelope = self.envelope
        if command == "MAIL" and args and args[0] == _NULL_PATH:
            args = ("", *args[1:])
        if envelope is not None and envelope.mail_from == _NULL_PATH:
            envelope.mail_from = ""
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            # aiosmtpd reads a false mail_from as "no MAIL given": keep its spelling.
            if envelope is not None and envelope.mail_from == "":
                envelope.mail_from = _NULL_PATH

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._forward_path = True
        try:
            await super().smtp_RCPT(arg)
        finally:
            self._forward_path = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd's parser drops a source route and keeps the last hop; the handler
        # must see the route to refuse it as the relay attempt it is.
        if self._forward_path:
            route = _SOURCE_ROUTE.match(arg)
            if route:
                return route.group(1), route.group(2)
        return super()._getaddr(arg)


class MXHandler:
    """aiosmtpd hooks for the MX: accepts only the gateway's own addresses."""

    def __init__(
        self,
        *,
        domain: str,
        hostname: str,
        verp_key: bytes,
        verp_prefix: str,
        on_bounce: OnBounce,
        certification_address: str = "",
        on_certify: OnCertify | None = None,
        reception_owner: OwnerLookup | None = None,
        on_reception: OnCertify | None = None,
        reception_prefix: str = "recepcion",
        on_postmaster: OnCertify | None = None,
        max_recipients: int = 100,
    ) -> None:
        if not domain or "@" in domain:
            raise ValueError(f"the MX domain {domain!r} is not a domain")
        if max_recipients < 1:
            raise ValueError("max_recipients must be at least 1")
        parse_return_path("", domain, verp_key, verp_prefix)  # a weak key fails at start
        self.domain = domain.lower().rstrip(".")
        self.hostname = hostname
        self.verp_key = verp_key
        self.verp_prefix = verp_prefix
        self.on_bounce = on_bounce
        self.certification_address = certification_address.strip().lower()
        self.on_certify = on_certify
        self.reception_owner = reception_owner
        self.on_reception = on_reception
        self.on_postmaster = on_postmaster
        self.max_recipients = max_recipients
        self.accepting = True
        # [limits] min_free: MAIL gets 452 4.3.1 while the spool's disk is short (set
        # by the acceptor; None: no check).
        self.space: FreeSpace | None = None
        self.addresses = GatewayAddresses(
            domain=self.domain,
            hostname=hostname,
            certification_address=self.certification_address,
            verp_key=verp_key,
            verp_prefix=verp_prefix,
            reception_prefix=reception_prefix,
        )
        # The kinds this handler takes; one built without a taker refuses that kind.
        self.taken = {AddressKind.BOUNCE}
        self.taken |= {AddressKind.CERTIFY} if on_certify is not None else set()
        if reception_owner is not None and on_reception is not None:
            self.taken.add(AddressKind.RECEPTION)
        if on_postmaster is not None:
            self.taken |= {AddressKind.POSTMASTER, AddressKind.ABUSE}

    def local_address_kind(self, address: str) -> AddressKind | None:
        """What a local address of ours is for; None when it is no address of ours."""
        kind = self.addresses.classify(address).kind
        return kind if kind in self.taken else None

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.accepting:
            return replies.SHUTTING_DOWN
        if self.space is not None and self.space.low():
            return replies.LOW_ON_SPACE
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        decision = self.addresses.classify(address)
        if decision.refusal is not None:
            _log_reject(session, envelope, address, decision.refusal[10:])
            return decision.refusal
        if decision.kind is None:
            _log_reject(session, envelope, address, "Relay access denied")
            return RELAY_DENIED.format(domain=self.domain)
        if decision.kind is AddressKind.CERTIFY and decision.detail:  # a hosted mode's tag
            _log_reject(session, envelope, address, "hosted mode asked for on the MX port")
            return replies.HOSTED_ON_MX.format(address=self.certification_address)
        kind: AddressKind | None = decision.kind if decision.kind in self.taken else None
        owner = None
        if kind is AddressKind.RECEPTION and self.reception_owner is not None:
            owner = await self.reception_owner(address)
            kind = kind if owner is not None else None
        if kind is None:
            _log_reject(session, envelope, address, "No such user here (or a forged tag)")
            return NO_SUCH_USER
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            kinds = getattr(envelope, "local_kinds", None)
            if kinds is None:
                kinds = envelope.local_kinds = {}
                envelope.reception_owners = []
            kinds[address] = kind
            if owner is not None:
                known = next(
                    (o for o in envelope.reception_owners if o["owner"] == owner["owner"]), None
                )
                if known is None:
                    envelope.reception_owners.append({**owner, "addresses": [address]})
                else:
                    known["addresses"].append(address)
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.accepting:
            return replies.SHUTTING_DOWN
        raw: bytes = envelope.original_content
        kinds = set(getattr(envelope, "local_kinds", {}).values())
        # One reply answers DATA for every recipient (RFC 5321 §4.1.1.4): a message refused
        # for one purpose is refused whole, and what was taken for another (a DSN) is
        # taken again, idempotently, when the client retries.
        answers: list[str] = []
        for wanted, take, what in (
            ({AddressKind.CERTIFY}, self.on_certify, "the certified copy"),
            ({AddressKind.RECEPTION}, self.on_reception, "the certified reception"),
            (
                {AddressKind.POSTMASTER, AddressKind.ABUSE},
                self.on_postmaster,
                "the postmaster's mail",
            ),
        ):
            if not wanted & kinds or take is None:
                continue
            try:
                answer = await take(server, session, envelope)
            except Exception:
                log_failure(log, "%s: %s could not be taken", peer_text(session.peer), what)
                return replies.INTERNAL_ERROR
            if not answer.startswith("2"):
                return answer
            answers.append(answer)
        if AddressKind.BOUNCE not in kinds:
            return answers[0] if answers else NOT_A_BOUNCE
        qids: list[str] = []
        for address in envelope.rcpt_tos:
            qid = parse_return_path(address, self.domain, self.verp_key, self.verp_prefix)
            if qid and qid not in qids:
                qids.append(qid)
        # Parsing is CPU work on untrusted bytes (bounded, linear): off the event loop.
        reports = await asyncio.to_thread(parse_dsn, raw)
        for qid in qids:
            try:
                await self.on_bounce(qid, reports, raw)
            except Exception:
                log_failure(log, "%s: the delivery report could not be recorded", qid)
                return BOUNCE_NOT_RECORDED
            _log_reports(qid, envelope.mail_from, reports, session)
        if answers:
            return answers[0]
        return BOUNCE_RECORDED if reports else NOT_A_BOUNCE


def _log_reports(qid: str, sender: str, reports: list[BounceReport], session: Any) -> None:
    if not reports:
        log.info(
            "%s: from=<%s>, client=%s: not a delivery report (a reply to the return "
            "path?); not kept, nothing sent back",
            qid,
            printable(sender),
            peer_text(getattr(session, "peer", None)),
        )
    for report in reports:
        log.info(
            "%s: bounce: to=<%s>, action=%s, dsn=%s, remote=%s, reporting=%s (%s)",
            qid,
            report.recipient,
            report.action,
            report.status or "-",
            report.remote_mta or "-",
            report.reporting_mta or "-",
            report.diagnostic,
        )


def _log_reject(session: Any, envelope: Any, address: str, why: str) -> None:
    # Postfix's wording, so that operators' greps for "NOQUEUE: reject" find these too.
    log.info(
        "NOQUEUE: reject: RCPT from %s: <%s>: %s; from=<%s>",
        peer_text(getattr(session, "peer", None)),
        printable(address),
        why,
        printable(envelope.mail_from or ""),
    )
