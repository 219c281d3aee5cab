"""Opting out of an organisation's SMS (docs/sms.md, "Contacts, consent and opt-out"):
a reply such as STOP, and what the opt-out page records.

:func:`handle_mo` is given every message a phone sends (an MO ``deliver_sm``, by the
``sms`` process, before the SMSC is answered): the message is kept (``sms_inbound``),
and when its text is one of ``[sms] optout_keywords`` (any case; spaces and punctuation
around it ignored: "Stop.", " baja ") the sending number is opted out of the
organisation it answers, at once, with an ``SmsOptOut`` evidence entry holding the MO,
and one SMS confirms it in the gateway's language. The number the reply was sent to is
read in E.164 first (:func:`destination_numbers`: its TON, national numbers in ``[sms]
default_region``). The organisation is the one whose ``sms_number`` that is; for any
other number (the shared ``[sms] source``) the one that last sent the phone an SMS
*from that number*, never one that wrote under an alphanumeric sender ID (nobody can
reply to one). When nothing matches the MO is kept and nobody is opted out. A number
that was opted out already is not confirmed again, so a repeated STOP costs nothing and
no conversation of confirmations can start.

Everything is written in one transaction before :func:`handle_mo` returns, so the SMSC
is answered only once the MO is on disk (SMPP 3.4 section 4.6.2); an error raises, and
the SMSC delivers the MO again.

The page ``<public_url>/sms/optout`` (:mod:`relay.web.sms_optout`) opts a number out of
the organisations whose sender ID the reader typed; it sends no SMS (anyone can type
anyone's number, and a page must not become a way to send SMS to strangers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import phonenumbers
from jinja2 import Environment, PackageLoader, StrictUndefined
from phonenumbers import NumberParseException

from certifier.i18n import translations
from relay.config import Config
from relay.logs import printable
from relay.queue.ids import new_queue_id
from relay.queue.records import NewMessage
from relay.queue.spool import Spool
from relay.queue.states import MessageKind
from relay.sms.compose import sms_content
from relay.sms.encoding import SmsTooLong, encode_sms
from relay.sms.inbound import MobileOriginated
from relay.sms.numbers import NumberRefused, parse_number, sms_domain

__all__ = [
    "MoRecord",
    "confirmation_text",
    "destination_numbers",
    "destination_ton",
    "handle_mo",
    "optout_keyword",
    "phone_number",
]

log = logging.getLogger("certifica/sms")

_AROUND = re.compile(r"^[\W_]+|[\W_]+$")


def optout_keyword(cfg: Config, text: str) -> str | None:
    """The keyword of ``[sms] optout_keywords`` that ``text`` is (as configured), or None."""
    word = _AROUND.sub("", text.strip()).casefold()
    for keyword in cfg.sms.optout_keywords:
        if word == keyword.casefold():
            return keyword
    return None


def phone_number(text: str, default_region: str) -> str | None:
    """A phone's number as an SMSC wrote it, in E.164 when it can be read (international,
    or national in ``default_region``); None when it is no number at all."""
    found = parse_number(text, default_region)
    if not isinstance(found, NumberRefused):
        return found.e164
    digits = re.sub(r"[^0-9]", "", text)
    if text.strip().startswith("+") and 7 <= len(digits) <= 15:
        return "+" + digits  # valid in form, if not a mobile by libphonenumber's data
    return None


TON_INTERNATIONAL = 1  # SMPP 3.4 section 5.2.5
TON_NATIONAL = 2
_DELIVER_SM = (0x00000005, 0x00000103)  # deliver_sm, data_sm: the same address fields


def destination_ton(raw: bytes) -> int | None:
    """The ``dest_addr_ton`` of an MO's PDU (``raw``, its octets as received: SMPP 3.4
    section 4.6.1, the header, ``service_type``, the source's TON, NPI and address,
    then the destination's); None when ``raw`` is not such a PDU."""
    if len(raw) < 16 or int.from_bytes(raw[4:8], "big") not in _DELIVER_SM:
        return None
    at = raw.find(b"\x00", 16)  # the end of service_type
    if at < 0:
        return None
    at = raw.find(b"\x00", at + 3)  # after source TON and NPI, the end of source_addr
    if at < 0 or at + 1 >= len(raw):
        return None
    return raw[at + 1]


def destination_numbers(destination: str, ton: int | None, default_region: str) -> list[str]:
    """The number an MO was sent to, in E.164, as the SMSC wrote it: international
    (TON 1, a leading ``+`` or ``00``), national in ``default_region`` (TON 2), and,
    when the TON says neither, both readings, international first (an organisation's
    number or the shared ``[sms] source`` is then found either way)."""
    text = destination.strip()
    digits = re.sub(r"[^0-9]", "", text)
    if not digits or len(digits) > 17:
        return []
    found: list[str] = []

    def international(value: str) -> None:
        try:
            parsed = phonenumbers.parse("+" + value, None)
        except NumberParseException:
            if 7 <= len(value) <= 15:
                found.append("+" + value)
            return
        found.append(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))

    def national(value: str) -> None:
        if not default_region:
            return
        try:
            parsed = phonenumbers.parse(value, default_region)
        except NumberParseException:
            return
        if phonenumbers.is_valid_number(parsed):
            found.append(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))

    if text.startswith("+") or ton == TON_INTERNATIONAL:
        international(digits)
    elif text.startswith("00"):
        international(digits[2:])
    elif ton == TON_NATIONAL:
        national(digits)
    else:
        international(digits)
        national(digits)
    return list(dict.fromkeys(found))


@lru_cache(maxsize=8)
def _environment(language: str) -> Environment:
    env = Environment(
        loader=PackageLoader("relay", "templates/mail"),
        undefined=StrictUndefined,
        autoescape=False,  # noqa: S701 - an SMS text, not HTML
        extensions=["jinja2.ext.i18n"],
    )
    env.policies["ext.i18n.trimmed"] = True
    env.install_gettext_translations(translations(language, "mail"), newstyle=True)  # type: ignore[attr-defined]
    return env


def confirmation_text(cfg: Config, organisation: str) -> str:
    """The SMS confirming an opt-out, in the gateway's language."""
    template = _environment(cfg.gateway.language).get_template("sms_optout.txt")
    every = cfg.sms.optout_scope == "all"
    return template.render(organisation=organisation, every_sms=every).strip()


@dataclass(frozen=True)
class MoRecord:
    """One MO as :meth:`relay.queue.contacts.Contacts.record_mo_optout` keeps it."""

    received: float
    source: str
    destination: str
    text: str
    raw: bytes
    number: str | None  # the source in E.164, when it is one
    keyword: str | None


def _confirmation(
    cfg: Config, number: str, organisation: str, sender_id: str, now: float
) -> tuple[NewMessage, bytes] | None:
    """The confirmation SMS to ``number`` as a generated message and its spool bytes."""
    text = confirmation_text(cfg, organisation)
    encoded = encode_sms(
        text,
        max_segments=cfg.sms.max_segments,
        reference=int(now) % 256,
        gsm_data_coding=cfg.sms.gsm_data_coding,
    )
    if isinstance(encoded, SmsTooLong):  # an organisation's name of hundreds of characters
        return None
    address = f"{number}@{sms_domain(cfg.gateway.domain)}"
    qid = new_queue_id()
    data = (
        f"From: <{cfg.gateway.certification_address}>\r\nTo: <{address}>\r\n"
        f"Subject: SMS opt-out confirmation\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"{text}\r\n"
    ).encode()
    content = sms_content(encoded, sender_id)
    msg = NewMessage(
        qid=qid,
        kind=MessageKind.NOTICE,
        sender="",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        recipients=(address,),
        method="generated",
        sms=content,
    )
    return msg, data


async def handle_mo(cfg: Config, store: Any, mo: MobileOriginated, raw: bytes) -> None:
    """Keep the MO ``mo`` (``raw``: its PDU's octets) and act on an opt-out keyword
    (module docstring). Returns once it is committed; raises when it could not be."""
    from relay.process.gateway import state_paths

    now = time.time()
    number = phone_number(mo.source_addr, cfg.sms.default_region)
    keyword = optout_keyword(cfg, mo.text)
    record = MoRecord(now, mo.source_addr, mo.destination_addr, mo.text, raw, number, keyword)
    destinations = destination_numbers(
        mo.destination_addr, destination_ton(raw), cfg.sms.default_region
    )
    target = await store.mo_organisation(destinations, number, sms_domain(cfg.gateway.domain))
    confirmation: tuple[NewMessage, bytes] | None = None
    spool = Spool(state_paths(cfg)["spool"])
    if keyword and number and target is not None:
        org, name, sender = target
        if not await store.opted_out(org, number):
            confirmation = _confirmation(cfg, number, name, sender or cfg.sms.source, now)
    if confirmation is not None:
        await asyncio.to_thread(spool.store, confirmation[0].qid, confirmation[1])
    try:
        opted = await store.record_mo_optout(
            record, target[0] if target else None, confirmation, now
        )
    except BaseException:
        if confirmation is not None:
            await asyncio.to_thread(spool.remove, confirmation[0].qid)
        raise
    if confirmation is not None and not opted:  # opted out meanwhile: nothing to confirm
        await asyncio.to_thread(spool.remove, confirmation[0].qid)
    log.info(
        "MO from %s to %s: %s",
        printable(mo.source_addr, 40),
        printable(mo.destination_addr, 40),
        f"opted out of {target[0]} ({keyword})"
        if opted and target
        else ("kept (no keyword)" if not keyword else "kept (no organisation or already out)"),
    )
