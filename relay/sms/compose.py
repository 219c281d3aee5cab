"""From a submitted mail to what its SMS recipients are sent (docs/sms.md, "Sending").

The submission listener calls :func:`compose` at DATA with the numbers and groups the
envelope named (checked at RCPT by :mod:`relay.sms.numbers`) and what the
organisation's contacts say about them (:class:`relay.queue.contacts.Audience`). It
returns the :class:`relay.queue.records.SmsContent` of the message (the exact octets of
each part, the text's SHA-256, who is skipped and why) and the recipient rows, one per
number (a group is never a row). A skipped entry is ``{"address": the number in E.164
("" for a contact without one), "name", "group", "reason": in words, "why": no_number |
no_consent | opted_out | refused}``:

1. **The text** is :func:`relay.sms.text.sms_text` of the message.
2. **Marketing** is asked for with ``X-Certifica-SMS: marketing`` (any case;
   ``transactional`` is the default). A marketing text gets ``[sms] optout_text`` on a
   line of its own, ``{optout_url}`` being ``<[web] public_url>/sms/optout``; it is
   part of the text, so it counts in the segments and is certified with it.
3. **Encoding**: :func:`relay.sms.encoding.encode_sms` with ``[sms] max_segments``.
4. **Who gets it**: each number named directly, and each contact of each group named
   (a number once, however often it is named). Marketing goes only to numbers with a
   recorded consent (GDPR art. 6(1)(a) and 7; docs/sms.md) and no opt-out; with ``[sms]
   optout_scope = "all"`` an opt-out stops every SMS. The others are listed in
   ``skipped`` with the reason in words (the certificate shows them): "no phone number",
   "no recorded consent to marketing", "opted out on 2026-12-03 (reply STOP)", or why a
   stored number cannot receive SMS.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from certifier.mime import field_name, header_end, header_fields
from relay.cleanup.intake import subject_of
from relay.config import Config
from relay.queue.contacts import Audience, OptOut, optout_stops
from relay.queue.records import SmsContent
from relay.sms.encoding import EncodedSms, SmsTooLong, encode_sms
from relay.sms.numbers import NumberRefused, SmsGroup, SmsNumber, parse_number, sms_domain
from relay.sms.text import NoText, sms_text

__all__ = [
    "KIND_FIELD",
    "Composed",
    "SmsKind",
    "compose",
    "optout_reason",
    "optout_url",
    "sms_kind",
]

KIND_FIELD = "X-Certifica-SMS"
"""The header field saying what kind of SMS a message is."""


class SmsKind(StrEnum):
    """What an SMS is, for consent and opt-outs."""

    TRANSACTIONAL = "transactional"  # a notice to a customer: the default
    MARKETING = "marketing"  # needs a recorded consent and carries the opt-out text


@dataclass(frozen=True)
class Composed:
    """What a message's SMS recipients get: the content and one address per number to
    send to (``+34600111222@sms.<domain>``); ``addresses`` may be empty when everyone
    was skipped."""

    content: SmsContent
    addresses: tuple[str, ...]
    segments: int


def sms_kind(raw: bytes, marketing_subject: str = "") -> SmsKind | str:
    """The kind of SMS ``raw`` is: what ``X-Certifica-SMS`` asks for (the first such
    field), else marketing when its Subject matches ``[sms] marketing_subject`` (a
    regular expression, any case), else transactional; the field's value as written
    when it names no kind."""
    for line in header_fields(raw[: header_end(raw)]):
        if field_name(line) == KIND_FIELD.lower().encode():
            value = " ".join(line.split(b":", 1)[1].decode("ascii", "replace").split())
            try:
                return SmsKind(value.lower())
            except ValueError:
                return value
    if marketing_subject:
        subject = subject_of(raw) or ""
        if re.search(marketing_subject, subject, re.IGNORECASE):
            return SmsKind.MARKETING
    return SmsKind.TRANSACTIONAL


def optout_url(cfg: Config) -> str:
    """The opt-out page (``<[web] public_url>/sms/optout``)."""
    return cfg.web.public_url.rstrip("/") + "/sms/optout"


def optout_reason(optout: OptOut) -> str:
    """``opted out on 2026-12-03 (reply STOP)``: a skipped recipient's reason."""
    day = time.strftime("%Y-%m-%d", time.gmtime(optout.time))
    if optout.how == "mo":
        how = f"reply {optout.detail.get('keyword') or 'STOP'}"
    elif optout.how == "web":
        how = "on the opt-out page"
    else:
        how = "recorded by the operator"
    return f"opted out on {day} ({how})"


def compose(
    cfg: Config,
    raw: bytes,
    targets: Sequence[SmsNumber | SmsGroup],
    audience: Audience,
    sender_id: str,
    kind: SmsKind,
    reference: int | None = None,
) -> Composed | NoText | SmsTooLong:
    """The SMS of ``raw`` for ``targets`` (module docstring); :class:`NoText` or
    :class:`SmsTooLong` (each with its sentence) when there is nothing to send or too
    much."""
    found = sms_text(raw)
    if isinstance(found, NoText):
        return found
    marketing = kind is SmsKind.MARKETING
    text = found.text
    if marketing and cfg.sms.optout_text:
        text += "\n" + cfg.sms.optout_text.format(optout_url=optout_url(cfg))
    encoded = encode_sms(
        text,
        max_segments=cfg.sms.max_segments,
        reference=secrets.randbelow(256) if reference is None else reference,
        gsm_data_coding=cfg.sms.gsm_data_coding,
    )
    if isinstance(encoded, SmsTooLong):
        return encoded
    domain = sms_domain(cfg.gateway.domain)
    sent: list[str] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()

    def consider(number: str, name: str | None, group: str) -> None:
        if number in seen:
            return
        seen.add(number)
        contact = audience.by_number.get(number)
        shown = name or (contact.name if contact else None) or ""
        optout = audience.optouts.get(number)
        reason: str | None = None
        why = ""
        if optout is not None and optout_stops(optout, marketing, cfg.sms.optout_scope):
            reason, why = optout_reason(optout), "opted_out"
        elif marketing and (contact is None or contact.consent_marketing is None):
            reason, why = "no recorded consent to marketing", "no_consent"
        if reason is None:
            sent.append(f"{number}@{domain}")
        else:
            skipped.append(_skip(number, shown, group, reason, why))

    for target in targets:
        if isinstance(target, SmsNumber):
            consider(target.e164, None, "")
            continue
        for member in audience.groups.get(target.name, ()):
            if member.number is None:
                skipped.append(
                    _skip("", member.name or "", target.name, "no phone number", "no_number")
                )
                continue
            checked = parse_number(member.number, "")
            if isinstance(checked, NumberRefused):
                if member.number not in seen:
                    seen.add(member.number)
                    skipped.append(
                        _skip(
                            member.number,
                            member.name or "",
                            target.name,
                            checked.sentence,
                            "refused",
                        )
                    )
                continue
            consider(checked.e164, member.name, target.name)
    content = sms_content(encoded, sender_id, marketing, skipped)
    return Composed(content, tuple(sent), encoded.segments)


def _skip(address: str, name: str, group: str, reason: str, why: str) -> dict[str, str]:
    return {"address": address, "name": name, "group": group, "reason": reason, "why": why}


def sms_content(
    encoded: EncodedSms,
    sender_id: str,
    marketing: bool = False,
    skipped: Sequence[dict[str, str]] = (),
) -> SmsContent:
    """The ``sms_messages`` row of ``encoded``, sent as ``sender_id``: the text, its
    SHA-256 (of its UTF-8), the alphabet and each part's octets in hexadecimal."""
    return SmsContent(
        text=encoded.text,
        text_sha256=hashlib.sha256(encoded.text.encode("utf-8")).hexdigest(),
        alphabet="gsm" if encoded.alphabet.name == "GSM7" else "ucs2",
        data_coding=encoded.data_coding,
        esm_class=encoded.esm_class,
        parts=tuple(p.hex() for p in encoded.parts),
        units=encoded.units,
        sender_id=sender_id,
        marketing=marketing,
        skipped=tuple(skipped),
    )
