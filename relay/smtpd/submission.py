"""The submission listener's decisions (RFC 6409): who may send, what, and to whom.

The handler only decides, stores and answers; it never delivers (the queue manager
does). A message is answered 250 only after its bytes are fsynced in the spool and
its row committed in the store; if either fails the client gets 451/452.

The certification address among the envelope recipients (the sender put it in Cc)
asks for certification: it is taken out of delivery, and the Cc header is left as
written so the recipients see the message is certified.

An address at one of the gateway's own domains is decided at RCPT as the MX decides
(:mod:`relay.addresses`): ``postmaster`` (bare ``<Postmaster>`` too), ``abuse``, a
reception or return-path address are accepted and handed to the gateway's own MX at
delivery (:mod:`relay.delivery.routing`); any other is ``550 5.1.1`` with a sentence, and a near
miss of the certification address (``certifca@``) says which address was meant.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from certifier.mime import header_from_addresses
from relay.addresses import AddressKind, GatewayAddresses
from relay.certify import dsn
from relay.cleanup.intake import accept, address_problem, client_ip, session_tls
from relay.config import Config
from relay.delivery.outbound import missing_submission_fields
from relay.hosted.modes import hosted_mode, unknown_field_value
from relay.logs import printable
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.orgs import Account
from relay.queue.space import FreeSpace
from relay.queue.spool import Spool
from relay.queue.states import MessageKind, Method
from relay.queue.store import NewMessage, Store
from relay.roles import Action, allowed
from relay.sms.compose import Composed, SmsKind, compose, sms_kind
from relay.sms.encoding import SmsTooLong
from relay.sms.numbers import (
    NumberRefused,
    SmsGroup,
    SmsNumber,
    is_sms_address,
    parse_sms_address,
    sms_domain,
)
from relay.sms.text import NoText
from relay.smtpd import replies
from relay.smtpd.protocol import CertificaSMTP
from relay.smtpd.users import check_password, normalise_address

log = logging.getLogger("certifica/submission")


class SubmissionSMTP(CertificaSMTP):
    """The submission ports' protocol: :class:`CertificaSMTP` honouring the DSN
    parameters (RFC 3461): RET= and ENVID= on MAIL, NOTIFY= and ORCPT= on RCPT.

    aiosmtpd refuses parameters it does not know (555) and upper-cases the others, but
    xtext is case-sensitive: they are taken out of the command here, read strictly
    (a malformed one: 501 5.5.4), and left for the handler in :attr:`dsn_mail` and
    :attr:`dsn_rcpt`; the rest of the command goes on to aiosmtpd unchanged.
    """

    dsn_mail = dsn.MailParameters()
    dsn_rcpt = dsn.RcptParameters()

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._without_dsn_parameters(super().smtp_MAIL, "MAIL", "FROM:", arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._without_dsn_parameters(super().smtp_RCPT, "RCPT", "TO:", arg)

    async def _without_dsn_parameters(
        self,
        parent: Callable[[str | None], Awaitable[None]],
        command: str,
        keyword: str,
        arg: str | None,
    ) -> None:
        """``parent`` (aiosmtpd's handler) with ``arg`` less its DSN parameters, unless a
        reply was sent already; a verb alone (``arg`` None) gets the parent's 501."""
        rest = arg if arg is None else await self._take_dsn(command, keyword, arg)
        if arg is None or rest is not None:
            await parent(rest)

    async def _take_dsn(self, command: str, keyword: str, arg: str) -> str | None:
        """``arg`` without its DSN parameters; None when a reply was already sent."""
        self.dsn_mail, self.dsn_rcpt = (
            (dsn.MailParameters(), self.dsn_rcpt)
            if command == "MAIL"
            else (self.dsn_mail, dsn.RcptParameters())
        )
        if not arg or any(c in arg for c in "\r\n\0") or self.session is None:
            return arg  # the parent's checks answer these
        if await self.check_helo_needed() or await self.check_auth_needed(command):
            return None
        inner = self._strip_command_keyword(keyword, arg)
        if inner is None or not self.session.extended_smtp:
            return arg
        if command == "RCPT" and not (self.envelope and self.envelope.mail_from):
            return arg  # the parent answers 503: MAIL first
        address, params = self._getaddr(inner)
        if not address or not params:
            return arg
        keywords = dsn.MAIL_KEYWORDS if command == "MAIL" else dsn.RCPT_KEYWORDS
        try:
            found, others = dsn.split_parameters(params, keywords)
            if command == "MAIL":
                self.dsn_mail = dsn.parse_mail_parameters(found)
            else:
                self.dsn_rcpt = dsn.parse_rcpt_parameters(found)
        except dsn.ParameterError as err:
            await self.push(replies.BAD_DSN_PARAMETER.format(why=err))
            return None
        if not found:
            return arg
        path = inner[: len(inner) - len(params)].rstrip()
        return " ".join([keyword + path, *others])


class SubmissionHandler:
    """aiosmtpd hooks for authenticated submission."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        spool: Spool,
        wake: Callable[[], None],
        verp_key: bytes = b"",
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.wake = wake
        self.addresses = GatewayAddresses.from_config(cfg, verp_key)
        self.accepting = True
        # [limits] min_free: MAIL gets 452 4.3.1 while the spool's disk is short (set
        # by the acceptor; None: no check).
        self.space: FreeSpace | None = None

    async def verify_password(self, user: str, password: str) -> bool:
        """SMTP AUTH (docs/accounts.md, "App passwords"): the account password, or one of
        the user's app passwords not void (made since its credentials last changed:
        :mod:`relay.queue.app_passwords`); a user with a second factor (TOTP) only the
        latter, since its account password alone must no longer send mail. An unknown
        user, a wrong password, a void app password and a disabled account (or
        organisation) are all just False, and the scrypt of the account password runs
        for each, so neither the reply nor the time taken tells them apart. An auditor authenticates: MAIL tells it why it
        cannot send."""
        address = normalise_address(user)
        stored = await self.store.user_hash(address)
        password_ok = await asyncio.to_thread(check_password, password, stored)
        app_password = await self.store.app_password_id(address, password)
        account = await self.store.account(address)
        if account is None or not account.active:
            return False
        if app_password is not None:
            await self.store.app_password_used(app_password, time.time())
            return True
        return password_ok and not account.totp

    @staticmethod
    def sending_refusal(account: Account | None) -> str | None:
        """None when ``account`` may send now, else the refusal (docs/accounts.md): its
        role does not send (an auditor), or it was removed or disabled since it logged in."""
        if account is None or not account.active:
            return replies.ACCOUNT_CANNOT_SEND
        if not allowed(account.role, Action.SEND):
            return replies.ROLE_DOES_NOT_SEND.format(role=account.role)
        return None

    @staticmethod
    def _user(session: Any) -> str:
        auth = session.auth_data
        login = getattr(auth, "login", b"")
        return normalise_address(
            login.decode("utf-8", "replace") if isinstance(login, bytes) else str(login)
        )

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        """The EHLO keywords, with DSN: its parameters are honoured (RFC 3461 §4)."""
        session.host_name = hostname
        return [*responses[:-1], "250-DSN", responses[-1]]

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if not self.accepting:
            return replies.SHUTTING_DOWN
        if self.space is not None and self.space.low():
            return replies.LOW_ON_SPACE
        user = self._user(session)
        refused = self.sending_refusal(await self.store.account(user))
        if refused:
            return refused
        if normalise_address(address) != user:
            return replies.SENDER_NOT_OWNED.format(user=user, sender=address)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.dsn_mail = getattr(server, "dsn_mail", dsn.MailParameters())
        envelope.dsn_rcpt = {}
        return replies.SENDER_OK

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        decision = self.addresses.classify(address)
        if decision.kind is not None:
            address = decision.address  # <Postmaster> is delivered as postmaster@<domain>
        if is_sms_address(address, self.cfg.gateway.domain):
            return await self._sms_rcpt(server, session, envelope, address, options)
        problem = address_problem(address)
        if problem:
            return replies.BAD_ADDRESS.format(why=problem)
        if decision.refusal is not None:
            return decision.refusal
        if decision.kind is AddressKind.RECEPTION and not await self.store.reception_owner(
            decision.detail
        ):
            return replies.NO_SUCH_USER  # as the MX would answer it at delivery
        if len(envelope.rcpt_tos) >= self.cfg.limits.recipients:
            return replies.TOO_MANY_RECIPIENTS
        if decision.kind is AddressKind.CERTIFY:
            if address not in envelope.rcpt_tos:
                envelope.rcpt_tos.append(address)
            return replies.CERTIFICATION_OK
        if normalise_address(address) not in {normalise_address(a) for a in envelope.rcpt_tos}:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            envelope.dsn_rcpt[address] = getattr(server, "dsn_rcpt", dsn.RcptParameters())
        return replies.RECIPIENT_OK

    def sms_refusal(self, account: Account | None) -> str | None:
        """None when ``account`` may send SMS now, else the refusal: SMS are off, or its
        role is not in ``[sms] roles`` (docs/sms.md, "Sending")."""
        if not self.cfg.sms.enabled:
            return replies.SMS_DISABLED.format(domain=sms_domain(self.cfg.gateway.domain))
        if account is None or str(account.role) not in self.cfg.sms.roles:
            return replies.SMS_ROLE_REFUSED.format(
                role=account.role if account else "none",
                roles=", ".join(self.cfg.sms.roles) or "none",
            )
        return None

    async def _sms_rcpt(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        """RCPT to ``<number or group>@sms.<domain>``: written back in E.164 (a group in
        lower case), once however it is spelt; a group must have contacts."""
        account = await self.store.account(self._user(session))
        refused = self.sms_refusal(account)
        if refused or account is None:
            return refused or replies.ACCOUNT_CANNOT_SEND
        target = parse_sms_address(address, self.cfg.gateway.domain, self.cfg.sms.default_region)
        if isinstance(target, NumberRefused):
            return replies.SMS_NUMBER_REFUSED.format(sentence=target.sentence)
        if isinstance(target, SmsGroup):
            if not await self.store.contact_group_exists(account.org, target.name):
                return replies.SMS_NO_SUCH_GROUP.format(group=target.name)
            # Each number of a group is a recipient: a group alone over the limit is
            # refused now, as it is known (the whole message is counted at DATA).
            count = await self.store.sms_group_numbers(account.org, target.name)
            if count > self.cfg.limits.recipients:
                return replies.SMS_GROUP_TOO_BIG.format(
                    group=target.name, count=count, limit=self.cfg.limits.recipients
                )
        local = target.e164 if isinstance(target, SmsNumber) else target.name
        address = f"{local}@{sms_domain(self.cfg.gateway.domain)}"
        if address in envelope.rcpt_tos:
            return replies.RECIPIENT_OK
        if len(envelope.rcpt_tos) >= self.cfg.limits.recipients:
            return replies.TOO_MANY_RECIPIENTS
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.dsn_rcpt[address] = getattr(server, "dsn_rcpt", dsn.RcptParameters())
        return replies.RECIPIENT_OK

    async def _sms(
        self, raw: bytes, user: str, account: Account, addresses: list[str]
    ) -> Composed | str:
        """The SMS of a message for its SMS ``addresses`` (:func:`relay.sms.compose.compose`),
        or the reply refusing the message."""
        refused = self.sms_refusal(account)  # its role may have changed since RCPT
        if refused:
            return refused
        kind = sms_kind(raw, self.cfg.sms.marketing_subject)
        if not isinstance(kind, SmsKind):
            shown = re.sub(r"[^A-Za-z0-9 ._-]", "?", kind[:40])  # the reply stays ASCII
            return replies.SMS_KIND_UNKNOWN.format(value=shown)
        domain, region = self.cfg.gateway.domain, self.cfg.sms.default_region
        targets = [
            t
            for t in (parse_sms_address(a, domain, region) for a in addresses)
            if isinstance(t, SmsNumber | SmsGroup)
        ]
        audience = await self.store.sms_audience(
            account.org,
            [t.e164 for t in targets if isinstance(t, SmsNumber)],
            [t.name for t in targets if isinstance(t, SmsGroup)],
        )
        sender = await self.store.sms_sender_of(user) or self.cfg.sms.source
        # Off the event loop: a group's numbers are each checked (libphonenumber), and
        # the other sessions go on meanwhile.
        composed = await asyncio.to_thread(compose, self.cfg, raw, targets, audience, sender, kind)
        if isinstance(composed, NoText):
            return replies.SMS_NO_TEXT.format(sentence=composed.sentence)
        if isinstance(composed, SmsTooLong):
            sentence = composed.sentence.replace("\u20ac", "the euro sign")
            return replies.SMS_TOO_LONG.format(sentence=sentence)
        return composed

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
        certified = any(self.addresses.is_certification(a) for a in envelope.rcpt_tos)
        recipients = tuple(a for a in envelope.rcpt_tos if not self.addresses.is_certification(a))
        # Hosted content or acceptance (docs/hosted.md): a tag, the header field, the user's default.
        unknown = unknown_field_value(raw)
        if unknown is not None:
            shown = re.sub(r"[^A-Za-z0-9 ._-]", "?", unknown[:40])  # the reply stays ASCII
            return replies.HOSTED_MODE_UNKNOWN.format(value=shown)
        sms_addresses = [a for a in recipients if is_sms_address(a, self.cfg.gateway.domain)]
        # An SMS carries its text only: hosted content is for the e-mail recipients.
        emailed = len(recipients) > len(sms_addresses)
        hosted = (
            await hosted_mode(self.store, self.addresses, envelope.rcpt_tos, raw, user)
            if emailed
            else None
        )
        certified = certified or hosted is not None
        if not recipients:
            return replies.NO_OTHER_RECIPIENTS
        if not certified and not self.cfg.gateway.relay_uncertified:
            return replies.RELAY_UNCERTIFIED_OFF.format(
                address=self.cfg.gateway.certification_address
            )
        qid = new_queue_id()
        tls_version, tls_cipher = session_tls(server)
        peer = client_ip(session)
        account = await self.store.account(user)
        refused = self.sending_refusal(account)  # disabled, or its role changed, since MAIL
        if refused or account is None:
            return refused or replies.ACCOUNT_CANNOT_SEND
        sms: Composed | None = None
        if sms_addresses:
            composed = await self._sms(raw, user, account, sms_addresses)
            if isinstance(composed, str):
                return composed
            sms = composed
            recipients = (
                *(a for a in recipients if a not in sms_addresses),
                *composed.addresses,
            )
            if not recipients:
                return replies.SMS_NOBODY.format(why=skipped_summary(composed))
            if len(recipients) > self.cfg.limits.recipients:
                return too_many_recipients(self.cfg, composed, sms_addresses, len(recipients))
        tracking = certified and self.cfg.tracking.enabled and await self.store.user_tracking(user)
        org = account.org  # docs/accounts.md

        mail_params: dsn.MailParameters = envelope.dsn_mail
        rcpt_params: dict[str, dsn.RcptParameters] = envelope.dsn_rcpt

        def message(sha256: str) -> NewMessage:
            return NewMessage(
                qid=qid,
                kind=MessageKind.MAIL,
                sender=envelope.mail_from,
                size=len(raw),
                sha256=sha256,
                recipients=recipients,
                certified=certified,
                method=Method.SUBMISSION,
                cert_id=new_certificate_id() if certified else None,
                auth_user=user,
                org=org,
                hosted=hosted,
                sms=sms.content if sms else None,
                client_ip=peer,
                client_helo=session.host_name,
                tls_version=tls_version,
                tls_cipher=tls_cipher,
                tracking=tracking,
                header_from=user,
                dsn_ret=mail_params.ret,
                dsn_envid=mail_params.envid,
                notify={a: p.notify for a, p in rcpt_params.items() if p.notify},
                orcpt={a: p.orcpt for a, p in rcpt_params.items() if p.orcpt},
                event="SubmissionAcceptance" if certified else None,
                event_detail={
                    "sha256": sha256,
                    "size": len(raw),
                    "envelope_from": envelope.mail_from,
                    "recipients": list(recipients),
                    "client_ip": peer,
                    "authenticated_user": user,
                    "tls": tls_version,
                    # added to the copy that leaves (relay.delivery.outbound), not to the spool
                    "added_fields": missing_submission_fields(raw),
                    **({"sms": sms_detail(sms)} if sms else {}),
                },
            )

        refused = await accept(self.store, self.spool, qid, raw, message)
        if refused:
            return refused
        log.info(  # the EHLO name is escaped already (relay.smtpd.protocol)
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


def sms_detail(sms: Composed) -> dict[str, Any]:
    """What the ``SubmissionAcceptance`` entry says of a message's SMS (docs/sms.md)."""
    content = sms.content
    return {
        "text_sha256": content.text_sha256,
        "segments": sms.segments,
        "alphabet": content.alphabet,
        "data_coding": content.data_coding,
        "marketing": content.marketing,
        "sender_id": content.sender_id,
        "recipients": list(sms.addresses),
        "skipped": list(content.skipped),
    }


def too_many_recipients(cfg: Config, sms: Composed, sms_addresses: list[str], total: int) -> str:
    """The refusal of a message whose groups took it over ``[limits] recipients``: each
    number a group expands to is a recipient (RCPT counted the group as one)."""
    groups = [
        a.partition("@")[0]
        for a in sms_addresses
        if isinstance(parse_sms_address(a, cfg.gateway.domain, ""), SmsGroup)
    ]
    shown = ", ".join(groups[:3]) + (f" and {len(groups) - 3} more" if len(groups) > 3 else "")
    count = len(sms.addresses)
    return replies.SMS_TOO_MANY_RECIPIENTS.format(
        s="s" if len(groups) > 1 else "",
        groups=shown,
        count=count,
        others=f"; with the other recipients that is {total}" if total > count else "",
        limit=cfg.limits.recipients,
    )


def skipped_summary(sms: Composed, shown: int = 3) -> str:
    """The first ``shown`` skipped recipients and their reasons, for a reply (ASCII:
    numbers and reasons, never a contact's name)."""
    skipped = sms.content.skipped
    if not skipped:
        return "no number to send to"
    words = [
        f"{s['address'].partition('@')[0] or 'a contact of ' + s['group']}: {s['reason']}"
        for s in skipped[:shown]
    ]
    if len(skipped) > shown:
        words.append(f"and {len(skipped) - shown} more")
    return "; ".join(words)
