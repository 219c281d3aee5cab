"""The hosted modes, how a sender asks for one, and the links' tokens (docs/hosted.md).

A sender asks per message, by a tag of the certification address in Cc
(``certifica+hosted@``, ``+hosted-code``, ``+accept``: :data:`TAGS`, which
:mod:`relay.addresses` lists) or by the header field ``X-Certifica-Mode: hosted|accept``
(:data:`MODE_FIELD`), or per user (``certifica users set ADDR --mode``). The tag wins
over the field, the field over the user's default. Hosted mode is submission only: on
the MX port the sender's own provider has already delivered the content.

Each recipient's link is ``<[web] public_url>/h/<token>``: the token is an HMAC-SHA256
of the queue id and the recipient's id under the gateway's tracking key (256 bits,
base64url), so every delivery attempt writes the same link, and nobody without the key
can make one. The database keeps only the token's SHA-256 (:func:`token_hash`): a copy of
the database opens no link.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
from typing import TYPE_CHECKING, Protocol

from certifier.mime import field_name, header_end, header_fields

if TYPE_CHECKING:  # relay.addresses lists this module's tags
    from relay.addresses import GatewayAddresses


class UserModes(Protocol):
    """Where a user's default mode is read (the queue's store)."""

    async def user_hosted_mode(self, address: str) -> str | None: ...


class Mode(enum.StrEnum):
    """What the recipients of a message get (NULL in the database: the content)."""

    HOSTED = "hosted"  # a link; the content is handed over on the page
    HOSTED_CODE = "hosted-code"  # the same, after a one-time code mailed to the recipient
    ACCEPT = "accept"  # the content, and accept / reject buttons
    ACCEPT_CODE = "accept-code"  # both tags, +accept and +hosted-code: the code, then accept


CODE_MODES = (Mode.HOSTED_CODE, Mode.ACCEPT_CODE)
"""The modes whose page asks for a one-time code mailed to the recipient first."""
DECISION_MODES = (Mode.ACCEPT, Mode.ACCEPT_CODE)
"""The modes whose page asks the recipient to accept or reject."""


TAGS: dict[str, str] = {
    Mode.HOSTED: "recipients get a link to the content, handed over with evidence",
    Mode.HOSTED_CODE: "the same, and the page asks for a code mailed to the recipient",
    Mode.ACCEPT: "recipients accept or reject the content on the page",
}
"""The tags of the certification address that ask for a mode (:mod:`relay.addresses`)."""

MODE_FIELD = "X-Certifica-Mode"
"""The header field asking for a mode; it never reaches a recipient (they get a
notification, not the message)."""

USER_MODES = ("hosted", "hosted-code", "accept", "plain")
"""What ``certifica users set --mode`` takes; ``plain``: the content is delivered."""

_FIELD_VALUE = re.compile(r"\s*(hosted|hosted-code|accept)\s*", re.IGNORECASE)


def _field_value(raw: bytes) -> str | None:
    """The value of the first ``X-Certifica-Mode`` of ``raw``'s header, unfolded, or None."""
    for field in header_fields(raw[: header_end(raw)]):
        if field_name(field) == MODE_FIELD.lower().encode():
            return " ".join(field.split(b":", 1)[1].decode("ascii", "replace").split())
    return None


def field_mode(raw: bytes) -> Mode | None:
    """The mode ``X-Certifica-Mode`` asks for in the header of ``raw`` (the first such
    field), or None (absent, ``plain``, or a value that names no mode)."""
    value = _field_value(raw)
    match = _FIELD_VALUE.fullmatch(value) if value is not None else None
    return Mode(match.group(1).lower()) if match else None


def unknown_field_value(raw: bytes) -> str | None:
    """The value of an ``X-Certifica-Mode`` that names no mode (nor ``plain``), to refuse
    the message with rather than deliver it with the field in it; None when the field
    is absent or names a mode."""
    value = _field_value(raw)
    if value is None or _FIELD_VALUE.fullmatch(value) or value.lower() == "plain":
        return None
    return value


def chosen_mode(tags: list[str], raw: bytes, user_default: str | None) -> Mode | None:
    """The message's mode: a tag of the certification address, else the header field,
    else the user's default (``plain`` or unset: None, the content is delivered)."""
    if Mode.ACCEPT in tags and Mode.HOSTED_CODE in tags:
        return Mode.ACCEPT_CODE  # both asked: neither is dropped
    for tag in (Mode.ACCEPT, Mode.HOSTED_CODE, Mode.HOSTED):  # the strongest asked
        if tag in tags:
            return tag
    found = field_mode(raw)
    if found is not None:
        return found
    if user_default and user_default != "plain":
        return Mode(user_default)
    return None


async def hosted_mode(
    store: UserModes, addresses: GatewayAddresses, rcpt_tos: list[str], raw: bytes, user: str
) -> Mode | None:
    """The mode of a message submitted by ``user`` to ``rcpt_tos``: a hosted tag of the
    certification address among them, the header field (either makes the message
    certified), or for a certified message the user's default; None: the content is
    delivered."""
    certification = [addresses.classify(a) for a in rcpt_tos if addresses.is_certification(a)]
    if not certification and field_mode(raw) is None:
        return None
    default = await store.user_hosted_mode(user)
    return chosen_mode([d.detail for d in certification], raw, default)


def make_token(key: bytes, qid: str, recipient_id: int) -> str:
    """The token of one recipient's link: 256 bits, the same at every attempt."""
    mac = hmac.new(key, f"hosted|{qid}|{recipient_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
"""What a token looks like (43 base64url characters): anything else is not looked up."""


def token_hash(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()
