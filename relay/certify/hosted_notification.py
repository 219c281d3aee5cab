"""The notification a recipient of a hosted message gets instead of the content
(docs/hosted.md): who sent what subject, the link, until when it works; never the
content. Written in the recipient's language when the gateway knows it (a user of the
gateway), else the sender's, with the ``mail`` catalog, like every mail of
:mod:`relay.certify.notices`.

It is a mail the gateway writes on the sender's behalf: From is the certification
address with the sender's name, Reply-To the sender, so an answer reaches them. The
delivery agent sends it where the message would have gone, and the evidence of the relay
(``RelayToNonERDS``) is about these bytes.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, Protocol

from certifier.i18n import Reader
from relay.certify import notices
from relay.certify.notices import (
    DOMAIN,
    N_,
    OriginalHeaders,
    one_line,
    original_headers,
    quoted_subject,
)
from relay.config import Config
from relay.delivery.outbound import display_name
from relay.hosted.modes import Mode, make_token, token_hash

_SUBJECTS = {
    Mode.HOSTED: N_("%(sender)s sent you a certified message: “%(subject)s”"),
    Mode.HOSTED_CODE: N_("%(sender)s sent you a certified message: “%(subject)s”"),
    Mode.ACCEPT: N_("%(sender)s asks you to accept or reject: “%(subject)s”"),
    Mode.ACCEPT_CODE: N_("%(sender)s asks you to accept or reject: “%(subject)s”"),
}

_INTROS = {
    Mode.HOSTED: N_("%(name)s <%(sender)s> sent you a certified message."),
    Mode.HOSTED_CODE: N_("%(name)s <%(sender)s> sent you a certified message."),
    Mode.ACCEPT: N_(
        "%(name)s <%(sender)s> sent you a certified message and asks you to accept or reject it."
    ),
    Mode.ACCEPT_CODE: N_(
        "%(name)s <%(sender)s> sent you a certified message and asks you to accept or reject it."
    ),
}
"""The notification's first sentence: who sent it, name and address. Made here as plain
text, so the HTML part escapes the address's angle brackets like any text (in a
template's ``_()`` the msgid would be trusted markup, and ``<address>`` a tag)."""


def build_notification(
    *,
    gateway_name: str,
    from_address: str,
    hostname: str,
    to: str,
    sender: str,
    sender_name: str,
    qid: str,
    link: str,
    expires: float,
    mode: Mode,
    original: OriginalHeaders,
    reader: Reader,
) -> bytes:
    """The notification of one recipient (``to``) of the hosted message ``qid``."""
    _ = reader.catalog(DOMAIN).gettext
    subject = quoted_subject(original, reader)
    who = one_line(sender_name, 100) or sender
    context = {
        "sender": one_line(sender, 320),
        "sender_name": who,
        "intro": _(_INTROS[mode]) % {"name": who, "sender": one_line(sender, 320)},
        "subject": subject,
        "link": link,
        "expires": reader.moment(expires),
        "mode": str(mode),
        "qid": qid,
        "gateway": gateway_name,
    }
    fields = [
        ("From", _from_field(who, from_address)),
        ("Reply-To", one_line(sender, 320)),
        ("To", to),
        (
            "Subject",
            one_line(_(_SUBJECTS[mode]) % {"sender": who, "subject": subject}, 250),
        ),
    ]
    base = notices.header_fields(
        gateway_name, from_address, to, "", hostname, original.message_id, qid, reader.language
    )
    # The gateway's own fields after ours, less the ones ours replace.
    fields += [(n, v) for n, v in base if n not in ("From", "To", "Subject")]
    return notices.assemble(fields, "hosted", context, reader)


def _from_field(name: str, address: str) -> str:
    return email.utils.formataddr((f"{name} via Certifica", address), charset="utf-8")


class NotificationStore(Protocol):
    """What :func:`notification_for` reads and writes (the queue's store)."""

    async def hosted_link(
        self, qid: str, recipient_id: int, token_sha256: str, mode: str, now: float, days: int
    ) -> float: ...

    async def user_reading(self, address: str) -> tuple[str | None, str | None]: ...


async def notification_for(
    cfg: Config, store: NotificationStore, key: bytes, row: Mapping[str, Any], raw: bytes
) -> bytes:
    """The notification that leaves instead of the hosted message ``raw`` for the one
    recipient of ``row`` (a leased recipient row, :mod:`relay.queue.leases`): its link
    is made (or found) first, so the link in the mail always exists."""
    mode = Mode(str(row["hosted"]))
    qid, recipient_id = str(row["qid"]), int(row["id"])
    token = make_token(key, qid, recipient_id)
    expires = await store.hosted_link(
        qid, recipient_id, token_hash(token), mode, time.time(), cfg.hosted.expiry_days
    )
    sender = str(row.get("header_from") or row.get("auth_user") or row["sender"])
    language, timezone = await store.user_reading(str(row["address"]))
    if language is None:
        language, timezone = await store.user_reading(sender)
    reader = Reader(language or cfg.gateway.language, timezone or cfg.gateway.timezone)
    return build_notification(
        gateway_name=f"Certifica ({cfg.gateway.domain})",
        from_address=cfg.gateway.certification_address,
        hostname=cfg.gateway.hostname,
        to=str(row["address"]),
        sender=sender,
        sender_name=display_name(raw),
        qid=qid,
        link=f"{cfg.web.public_url.rstrip('/')}/h/{token}",
        expires=expires,
        mode=mode,
        original=original_headers(raw),
        reader=reader,
    )


def build_code_mail(cfg: Config, to: str, code: str, reader: Reader, qid: str) -> bytes:
    """The mail carrying a one-time code for the page of a ``+hosted-code`` message."""
    _ = reader.catalog(DOMAIN).gettext
    gateway_name = f"Certifica ({cfg.gateway.domain})"
    fields = notices.header_fields(
        gateway_name,
        cfg.gateway.certification_address,
        to,
        one_line(_("Your code to open a certified message: %(code)s") % {"code": code}),
        cfg.gateway.hostname,
        None,
        qid,
        reader.language,
    )
    context = {
        "code": code,
        "minutes": cfg.hosted.code_minutes,
        "gateway": gateway_name,
    }
    return notices.assemble(fields, "hosted_code", context, reader)
