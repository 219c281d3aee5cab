"""What a certificate says about a message's SMS recipients (docs/sms.md, "The
certificate"), in the reader's language.

Page 1, for a reader who is not a telecoms engineer: who sent the SMS (the sender ID
the phone shows, the authenticated account), the exact text in a box, and for each
number when the operator's SMS centre took it and what the operator's delivery
receipts say, in words ("Delivered to the phone", "Not delivered: the operator
reported UNDELIV", "Sent; the operator sent no delivery receipt within 48 hours",
"Refused by the operator's SMS centre: the destination number is not valid (code
ESME_RINVDSTADR, 0x0000000B)", "Not sent: ... before the message's time in the queue
ran out", "may have arrived twice"); then who in a group
was skipped and why. The annex holds what a technician checks: the SHA-256 of the
text, the alphabet (3GPP TS 23.038), ``data_coding`` and ``esm_class`` (SMPP 3.4
sections 5.2.19 and 5.2.12), each part's octets, every ``submit_sm`` with the SMSC's
answer and message id, and every receipt raw and parsed, its times as the operator
wrote them (``YYMMDDhhmm``, the operator's clock, no time zone).

The SMS text and everything the operator sent are untrusted: set as plain text only
(:mod:`certifier.document.typeset`). The text's box shows every character it holds:
a control or format character (a right-to-left override U+202E, a zero-width space)
is written as its code point, ``[U+202E]``, never applied, so that what is read is
what was sent.
"""

from __future__ import annotations

import unicodedata
from typing import Any

import phonenumbers
from reportlab.lib import colors
from reportlab.lib.units import mm
from reportlab.platypus import Flowable, KeepTogether, Spacer, Table, TableStyle

# pages.py calls this module for its SMS sections: the module, not its names, so that
# either may be imported first.
from certifier.document import pages
from certifier.document.typeset import (
    CAP_BODY,
    CAP_CELL,
    CAP_LINE,
    CAP_LIST,
    CAP_RECIPIENTS,
    CAP_ROWS,
    CAP_SHORT,
    TextBlock,
    as_dict,
    as_list,
    base_font,
    clean,
    grid_table,
    kv_table,
    para,
    styles,
)
from certifier.document.words import N_

__all__ = ["annex", "event_phrase", "is_sms", "number", "page_one", "shown_text"]

BOX_CHARS = 1200
BOX_LINES = 24
"""What page 1's box shows of the SMS text at most (6 segments are at most 918 GSM
characters): a box is one table cell, which cannot be split between pages; the annex
shows the whole text (:func:`whole_text`)."""

_RECEIPT_STATES = {
    "DELIVRD": N_("delivered to the phone"),
    "UNDELIV": N_("the SMS could not be delivered"),
    "EXPIRED": N_("its validity period ended before it could be delivered"),
    "REJECTD": N_("rejected by the network"),
    "DELETED": N_("deleted before it was delivered"),
    "UNKNOWN": N_("its state is unknown to the operator"),
    "ACCEPTD": N_("taken by the operator on the subscriber's behalf"),
    "ENROUTE": N_("on its way"),
}
"""Receipt states (SMPP 3.4 section 5.2.28 and Appendix B) in words."""

_STATUS_MEANINGS = {
    "ESME_RINVDSTADR": N_("the destination number is not valid"),
    "ESME_RINVSRCADR": N_("the sender name is not valid"),
    "ESME_RTHROTTLED": N_("too many messages were sent too fast"),
    "ESME_RMSGQFUL": N_("its message queue was full"),
    "ESME_RSYSERR": N_("it had a system error"),
}
"""The commonest ``command_status`` values (SMPP 3.4 section 5.1.3) in the reader's
words, for page 1; any other is named by its code, its meaning in the annex."""

_PART_STATES = {
    "accepted": N_("accepted by the SMS centre"),
    "deferred": N_("not accepted this time; submitted again later"),
    "failed": N_("refused by the SMS centre"),
    "submitting": N_("no answer from the SMS centre"),
}

_SKIP_REASONS = {
    "no_number": N_("no mobile number is recorded for this contact"),
    "opted_out": N_("the number opted out of these messages"),
    "no_consent": N_("no consent to marketing messages is recorded"),
    "refused": N_("the number recorded cannot receive SMS"),
}
"""Why a group member was not sent to, when the evidence gives a code; any other
reason is shown as the gateway recorded it."""


def is_sms(recipient: object) -> bool:
    """Whether an evidence recipient is a phone (it has an ``sms`` object)."""
    return isinstance(recipient, dict) and isinstance(recipient.get("sms"), dict)


def number(value: object) -> str:
    """An E.164 number as people write it (``+34 600 11 12 22``, libphonenumber's
    international format); anything else as plain text."""
    text = clean(value, 40)
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return text or "—"
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


def shown_text(text: str) -> str:
    """The SMS text for the page: every character kept, line breaks as lines, and a
    character that would be invisible or act on the others (controls, bidi overrides,
    zero-width characters, lone surrogates) written as ``[U+XXXX]``."""
    out = []
    for ch in text:
        if ch == "\n":
            out.append(ch)
        elif ch == "\r":
            continue
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            out.append(f"[U+{ord(ch):04X}]")
        else:
            out.append(ch)
    return "".join(out)


def _hex_pairs(value: object, cap: int = CAP_CELL) -> str:
    """Hexadecimal octets in pairs (``05 00 03 2a``), as a reader compares them."""
    text = clean(value, cap)
    if len(text) % 2 or any(c not in "0123456789abcdefABCDEF" for c in text):
        return text
    return " ".join(text[i : i + 2] for i in range(0, len(text), 2)).lower()


def operator_time(value: object) -> str:
    """A receipt's date as the operator wrote it (``YYMMDDhhmm`` or with seconds), and
    read as a date beside it: its clock, no time zone."""
    text = clean(value, 40)
    if not text.isdigit() or len(text) not in (10, 12):
        return text or "—"
    seconds = f":{text[10:12]}" if len(text) == 12 else ""
    return f"{text} (20{text[0:2]}-{text[2:4]}-{text[4:6]} {text[6:8]}:{text[8:10]}{seconds})"


def _period(doc: pages.Document, seconds: object) -> str:
    """``[sms] receipt_timeout`` in hours (or minutes, when not whole hours)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        return doc._("the waiting time set for the service")
    if seconds % 3600 == 0:
        hours = int(seconds // 3600)
        return doc.ngettext("%(count)s hour", "%(count)s hours", hours) % {
            "count": doc.reader.number(hours)
        }
    minutes = max(1, round(seconds / 60))
    return doc.ngettext("%(count)s minute", "%(count)s minutes", minutes) % {
        "count": doc.reader.number(minutes)
    }


def _lifetime(doc: pages.Document, seconds: object) -> str:
    """``[queue] lifetime`` in days (or hours, when not whole days)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        return doc._("the time set for the service")
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return doc.ngettext("%(count)s day", "%(count)s days", days) % {
            "count": doc.reader.number(days)
        }
    return _period(doc, seconds)


def _refusal(doc: pages.Document, failure: dict[str, Any]) -> str:
    """The SMSC's refusal, wholly in the reader's language: the status's name and code
    (SMPP 3.4 section 5.1.3) and, for the commonest, what it means; the SMSC's answer
    in English is the annex's technical detail."""
    _ = doc._
    status = failure.get("command_status")
    if isinstance(status, bool) or not isinstance(status, int):
        return _("Refused by the operator's SMS centre (its answer is in annex %(annex)s).") % {
            "annex": doc.annex("sms")
        }
    name = failure.get("status_name")
    values = {
        "name": clean(name, 40) if isinstance(name, str) and name else _("unnamed"),
        "code": f"0x{status:08X}",
        "annex": doc.annex("sms"),
    }
    meaning = _STATUS_MEANINGS.get(name) if isinstance(name, str) else None
    if meaning:
        return _("Refused by the operator's SMS centre: %(meaning)s (code %(name)s, %(code)s).") % {
            **values,
            "meaning": _(meaning),
        }
    return (
        _(
            "Refused by the operator's SMS centre (code %(name)s, %(code)s; its meaning is "
            "in annex %(annex)s)."
        )
        % values
    )


def _state_words(doc: pages.Document, state: object) -> str:
    known = _RECEIPT_STATES.get(state) if isinstance(state, str) else None
    return doc._(known) if known else doc._("a state this version does not describe")


def outcome_sentence(doc: pages.Document, sms: dict[str, Any], message: dict[str, Any]) -> str:
    """What became of the SMS sent to one number, from the operator's receipts."""
    _ = doc._
    outcome = sms.get("outcome")
    failure = as_dict(sms.get("failure"))
    if outcome == "delivered":
        text = _("Delivered to the phone (operator's receipt, received on %(time)s).") % {
            "time": doc.moment(sms.get("receipt_at"))
        }
    elif outcome == "undelivered":
        state = clean(failure.get("state"), 20) or "—"
        values = {
            "state": state,
            "meaning": _state_words(doc, failure.get("state")),
            "error": clean(failure.get("error"), 20) or "—",
        }
        text = (
            _("Not delivered: the operator reported %(state)s (%(meaning)s), error %(error)s.")
            % values
        )
    elif outcome == "no_receipt":
        text = _("Sent; the operator sent no delivery receipt within %(period)s.") % {
            "period": _period(doc, message.get("receipt_timeout"))
        }
    elif outcome == "refused":
        text = _refusal(doc, failure)
    elif outcome == "not_sent":
        text = _(
            "Not sent: the operator's SMS centre could not be reached or did not take it "
            "before the message's time in the queue ran out (%(period)s)."
        ) % {"period": _lifetime(doc, message.get("queue_lifetime"))}
    elif outcome == "withdrawn":
        text = _("Withdrawn by the provider's operator before it was sent.")
    else:
        text = _("It had not ended when this document was issued.")
    if sms.get("possible_duplicate"):
        text += " " + _(
            "It may have arrived twice: the SMS centre's answer to one submission was "
            "lost, so that part was submitted again."
        )
    return text


def _recipient_sentence(doc: pages.Document, r: dict[str, Any], message: dict[str, Any]) -> str:
    _ = doc._
    sms = as_dict(r.get("sms"))
    values = {"number": number(sms.get("number")), "time": doc.moment(sms.get("submitted_at"))}
    if sms.get("submitted_at"):
        head = _("SMS sent to %(number)s: taken by the operator's SMS centre on %(time)s.") % values
    else:
        head = _("SMS to %(number)s: not taken by the operator's SMS centre.") % values
    return f"{head} {outcome_sentence(doc, sms, message)}"


_SMS_EVENTS = {
    "delivered": N_("SMS delivered to the phone (operator's receipt)"),
    "no_receipt": N_("SMS sent; no delivery receipt from the operator"),
    "undelivered": N_("SMS not delivered (operator's receipt)"),
    "refused": N_("SMS refused by the operator's SMS centre"),
    "not_sent": N_("SMS not sent: the operator's SMS centre did not take it in time"),
}


def event_phrase(doc: pages.Document, entry: dict[str, Any]) -> str | None:
    """The name of an evidence entry that ended an SMS recipient (the events that end
    an e-mail recipient end it too: "accepted by the recipient's mail server" would
    be wrong for a phone); None for any other entry."""
    if entry.get("event") not in ("RelayToNonERDS", "RelayToNonERDSFailure"):
        return None
    for r in as_list(doc.ev.get("recipients")):
        if is_sms(r) and r.get("address") == entry.get("recipient"):
            said = _SMS_EVENTS.get(str(as_dict(r.get("sms")).get("outcome")))
            return doc._(said) if said else None
    return None


def text_box(doc: pages.Document, text: object) -> list[Flowable]:
    """The exact text, in a box: plain text, every character shown (:func:`shown_text`)."""
    _ = doc._
    if not isinstance(text, str):
        return [
            pages.sentence(
                _(
                    "The text is no longer kept (it was erased); its SHA-256 in annex "
                    "%(annex)s still identifies it."
                )
                % {"annex": doc.annex("sms")},
                "note",
            )
        ]
    whole = shown_text(text)
    lines = whole[:BOX_CHARS].split("\n")[:BOX_LINES]
    shown = "\n".join(lines)
    style = styles()["body"]
    blocks: list[Flowable] = [TextBlock(line, style) for line in lines]
    box = Table([[blocks]], colWidths=[pages.WIDTH], hAlign="LEFT")
    box.setStyle(
        TableStyle(
            [
                base_font(),
                ("BOX", (0, 0), (-1, -1), 0.8, colors.HexColor("#1f2a44")),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#fbfbf8")),
                ("LEFTPADDING", (0, 0), (-1, -1), 6),
                ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                ("TOPPADDING", (0, 0), (-1, -1), 4),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 5),
            ]
        )
    )
    out: list[Flowable] = [Spacer(1, 1 * mm), box]
    if shown != whole:
        out.append(
            pages.sentence(
                _("The text goes on: annex %(annex)s shows it whole.")
                % {"annex": doc.annex("sms")},
                "note",
            )
        )
    if whole != text.replace("\r", ""):
        out.append(
            pages.sentence(
                _(
                    "Characters that cannot be seen or that change how text is shown are "
                    "written as their code, such as [U+202E]."
                ),
                "note",
            )
        )
    return out


def whole_text(doc: pages.Document, text: object) -> list[Flowable]:
    """The annex's copy of the text: every line, split between pages as needed."""
    _ = doc._
    if not isinstance(text, str):
        return []
    out = pages.heading(_("The text exactly as sent"), "h3")
    style = styles()["body"]
    shown = shown_text(text[:CAP_BODY])
    out += [TextBlock(line, style) for line in shown.split("\n")]
    if len(text) > CAP_BODY:
        out.append(
            pages.sentence(
                _(
                    "Only the first %(shown)s of %(total)s characters are shown; the whole "
                    "text is in the attached evidence.json."
                )
                % {"shown": doc.reader.number(CAP_BODY), "total": doc.reader.number(len(text))},
                "note",
            )
        )
    return out


def _who(doc: pages.Document) -> dict[str, str]:
    ev = doc.ev
    sender = as_dict(ev.get("sender"))
    message = as_dict(ev.get("sms"))
    return {
        "time": doc.moment(pages.sent_at(ev)),
        "user": clean(sender.get("authenticated_user") or sender.get("envelope_from"), CAP_SHORT)
        or "—",
        "sender_id": clean(message.get("sender_id"), 40) or "—",
    }


def page_one(doc: pages.Document, *, titled: bool) -> list[Flowable]:
    """Page 1's account of the SMS: who sent it, the text, each number's outcome,
    who was skipped. ``titled``: under a pages.heading of its own (a message that also went
    to e-mail recipients)."""
    _ = doc._
    message = as_dict(doc.ev.get("sms"))
    phones = [as_dict(r) for r in as_list(doc.ev.get("recipients")) if is_sms(r)]
    out: list[Flowable] = pages.heading(_("The SMS")) if titled else []
    intro = doc.ngettext(
        "On %(time)s, %(user)s (an authenticated user of the service) sent this SMS "
        "through the service to %(count)s phone number, with the sender name %(sender_id)s "
        "that the phone shows:",
        "On %(time)s, %(user)s (an authenticated user of the service) sent this SMS "
        "through the service to %(count)s phone numbers, with the sender name %(sender_id)s "
        "that the phone shows:",
        len(phones),
    ) % {**_who(doc), "count": doc.reader.number(len(phones))}
    out.append(pages.sentence(intro))
    out += text_box(doc, message.get("text"))
    segments = message.get("segments")
    if isinstance(segments, int) and not isinstance(segments, bool):
        out.append(
            pages.sentence(
                doc.ngettext(
                    "The text was sent as %(count)s SMS; its SHA-256 fingerprint and the "
                    "operator's records are in annex %(annex)s.",
                    "The text was sent as %(count)s SMS joined on the phone; its SHA-256 "
                    "fingerprint and the operator's records are in annex %(annex)s.",
                    segments,
                )
                % {"count": doc.reader.number(segments), "annex": doc.annex("sms")},
                "note",
            )
        )
    out.append(Spacer(1, 2 * mm))
    shown = phones[:_PAGE1_NUMBERS]
    out += pages.bullets([_recipient_sentence(doc, r, message) for r in shown])
    if len(phones) > len(shown):
        out.append(
            pages.sentence(
                _("The results for the other %(count)s numbers are in annex %(annex)s.")
                % {
                    "count": doc.reader.number(len(phones) - len(shown)),
                    "annex": doc.annex("sms"),
                }
            )
        )
    if message.get("marketing"):
        out.append(
            pages.sentence(
                _(
                    "This SMS is a marketing message: it was sent only to numbers with a "
                    "recorded consent, and not to numbers that opted out."
                ),
                "note",
            )
        )
    out += _skipped(doc, message)
    out += [
        Spacer(1, 2 * mm),
        pages.sentence(
            _(
                "What the operator's receipt means: the mobile operator's SMS centre reports "
                "that the network delivered the SMS to the phone. It does not prove that "
                "anyone read it. Without a receipt the SMS was sent, but its delivery is not "
                "confirmed."
            ),
            "note",
        ),
    ]
    return out


_PAGE1_NUMBERS = 20


def _who_skipped(s: dict[str, Any]) -> str:
    """A skipped recipient: its name and number, whichever are known."""
    who = clean(s.get("name"), CAP_SHORT)
    address = clean(s.get("address"), CAP_SHORT)
    if address.startswith("+"):
        address = number(address.partition("@")[0])
    return f"{who} ({address})" if who and address else who or address or "—"


def _skip_reason(doc: pages.Document, s: dict[str, Any]) -> str:
    """Why, in the reader's words when the evidence gives the code (``why``), else as
    the gateway recorded it."""
    why = s.get("why") or s.get("reason")
    known = _SKIP_REASONS.get(why) if isinstance(why, str) else None
    return doc._(known) if known else clean(s.get("reason"), CAP_SHORT) or "—"


def _skipped(doc: pages.Document, message: dict[str, Any]) -> list[Flowable]:
    _ = doc._
    skipped = [as_dict(s) for s in as_list(message.get("skipped"))]
    if not skipped:
        return []
    lines = []
    for s in skipped[:CAP_LIST]:
        values = {
            "who": _who_skipped(s),
            "group": clean(s.get("group"), CAP_SHORT),
            "reason": _skip_reason(doc, s),
        }
        if values["group"]:
            lines.append(
                _("%(who)s, of the group %(group)s: not sent, because %(reason)s.") % values
            )
        else:
            lines.append(_("%(who)s: not sent, because %(reason)s.") % values)
    out = [
        Spacer(1, 1 * mm),
        pages.sentence(
            doc.ngettext(
                "The SMS was not sent to one recipient:",
                "The SMS was not sent to %(count)s recipients:",
                len(skipped),
            )
            % {"count": doc.reader.number(len(skipped))}
        ),
        *pages.bullets(lines),
    ]
    if len(skipped) > CAP_LIST:
        out.append(
            pages.sentence(_("The others are listed in the attached evidence.json."), "note")
        )
    return out


def _annex_skipped(doc: pages.Document, message: dict[str, Any]) -> list[Flowable]:
    """Who was not sent to, each with the reason as the gateway recorded it."""
    _ = doc._
    skipped = [as_dict(s) for s in as_list(message.get("skipped"))]
    if not skipped:
        return []
    rows = [
        [
            para(_who_skipped(s), "cell"),
            para(s.get("group"), "cell", empty=""),
            para(_skip_reason(doc, s), "cell"),
            para(s.get("reason"), "cell", cap=CAP_LINE),
        ]
        for s in skipped[:CAP_ROWS]
    ]
    return [
        *pages.heading(_("Not sent to"), "h3"),
        grid_table(
            [_("Recipient"), _("Group"), _("Why"), _("As the service recorded it")],
            rows,
            [pages.WIDTH * 0.28, pages.WIDTH * 0.16, pages.WIDTH * 0.28, pages.WIDTH * 0.28],
        ),
    ]


# --- the annex ----------------------------------------------------------------------


def _alphabet(doc: pages.Document, value: object) -> str:
    if value == "gsm":
        return doc._("GSM 7-bit default alphabet (3GPP TS 23.038)")
    if value == "ucs2":
        return doc._("UCS-2 (16 bits a character)")
    return clean(value, 40) or "—"


def _int(doc: pages.Document, value: object, hexadecimal: bool = False) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return clean(value, 40) or "—"
    return f"{value} (0x{value:02X})" if hexadecimal else doc.reader.number(value)


def _units(doc: pages.Document, message: dict[str, Any]) -> str:
    units = message.get("units")
    if isinstance(units, bool) or not isinstance(units, int):
        return clean(units, 40) or "—"
    count = {"count": doc.reader.number(units)}
    if message.get("alphabet") == "gsm":
        return doc.ngettext("%(count)s septet", "%(count)s septets", units) % count
    return doc.ngettext("%(count)s UTF-16 code unit", "%(count)s UTF-16 code units", units) % count


def annex(doc: pages.Document) -> list[Flowable]:
    """The SMS in technical detail: the text's SHA-256 and encoding, each part's octets,
    every submission and the SMSC's answer, every receipt raw and parsed."""
    _ = doc._
    message = as_dict(doc.ev.get("sms"))
    sender = as_dict(doc.ev.get("sender"))
    rows = [
        (_("Sender name shown on the phone"), para(message.get("sender_id"), cap=40)),
        (
            _("Authenticated account"),
            para(sender.get("authenticated_user"), empty=_("none (not authenticated)")),
        ),
        (_("Marketing message"), para(_("yes") if message.get("marketing") else _("no"))),
        (_("SHA-256 of the text (UTF-8)"), pages.hash_block(message.get("text_sha256"))),
        (_("Alphabet"), para(_alphabet(doc, message.get("alphabet")))),
        (
            _("data_coding (SMPP 3.4, section 5.2.19)"),
            para(_int(doc, message.get("data_coding"), True)),
        ),
        (
            _("esm_class (SMPP 3.4, section 5.2.12)"),
            para(_int(doc, message.get("esm_class"), True)),
        ),
        (_("Segments"), para(_int(doc, message.get("segments")))),
        (_("Length"), para(_units(doc, message))),
    ]
    out = [
        *pages.annex_heading(doc, "sms", _("The SMS and the operator's receipts")),
        pages.sentence(
            _(
                "The SHA-256 is of the text exactly as sent, in UTF-8, as the attached "
                "evidence.json holds it (sms.text); anyone can compute it again, for example "
                "with sha256sum, from that text without a final line break."
            ),
            "note",
        ),
        Spacer(1, 1.5 * mm),
        kv_table(rows),
    ]
    out += whole_text(doc, message.get("text"))
    parts = as_list(message.get("parts"))
    if parts:
        out += pages.heading(_("Octets of each part (short_message, hexadecimal)"), "h3")
        out.append(
            kv_table(
                [
                    (
                        _("Part %(seq)s") % {"seq": doc.reader.number(i)},
                        para(_hex_pairs(p), "hash", cap=CAP_CELL),
                    )
                    for i, p in enumerate(parts[:CAP_ROWS], start=1)
                ]
            )
        )
    out += _annex_skipped(doc, message)
    out.append(
        pages.sentence(
            _(
                "The operator writes the times in its receipts as YYMMDDhhmm, on its own "
                "clock and without a time zone: they are shown as written, with the date "
                "they read as beside them. The other times are the service's, in "
                "%(zone)s."
            )
            % {"zone": doc.reader.timezone},
            "note",
        )
    )
    phones = [as_dict(r) for r in as_list(doc.ev.get("recipients")) if is_sms(r)]
    for r in phones[:CAP_RECIPIENTS]:
        out += _annex_recipient(doc, r, message)
    return out


def _annex_recipient(
    doc: pages.Document, r: dict[str, Any], message: dict[str, Any]
) -> list[Flowable]:
    _ = doc._
    sms = as_dict(r.get("sms"))
    block: list[Flowable] = [
        para(number(sms.get("number")), "h3"),
        pages.sentence(outcome_sentence(doc, sms, message), "note"),
    ]
    answer = as_dict(sms.get("failure")).get("sentence")
    if sms.get("outcome") in ("refused", "not_sent") and answer:
        block.append(
            pages.sentence(
                _("As the service recorded it, from the SMS centre's answer: “%(answer)s”.")
                % {"answer": clean(answer, CAP_LINE)},
                "note",
            )
        )
    submissions = []
    for raw in as_list(sms.get("parts"))[:CAP_ROWS]:
        p = as_dict(raw)
        state = p.get("state")
        known = _PART_STATES.get(state) if isinstance(state, str) else None
        said = _(known) if known else clean(state, 40)
        if p.get("sentence") and state != "accepted":
            said += f": {clean(p.get('sentence'), CAP_LINE)}"
        if p.get("maybe_duplicate"):
            said += ". " + _("Possible duplicate: an earlier submission's answer was lost.")
        submissions.append(
            [
                para(_int(doc, p.get("seq")), "cell"),
                para(_int(doc, p.get("attempt")), "cell"),
                para(doc.short_moment(p.get("submitted_at")), "cell", empty=""),
                para(doc.short_moment(p.get("answered_at")), "cell", empty=""),
                para(said, "cell", cap=CAP_LINE + 200),
                para(p.get("message_id"), "cell", empty=""),
            ]
        )
    if submissions:
        block.append(
            grid_table(
                [
                    _("Part"),
                    _("Attempt"),
                    _("Submitted"),
                    _("Answered"),
                    _("The SMS centre's answer"),
                    _("The SMS centre's message id"),
                ],
                submissions,
                [
                    pages.WIDTH * 0.07,
                    pages.WIDTH * 0.09,
                    pages.WIDTH * 0.17,
                    pages.WIDTH * 0.17,
                    pages.WIDTH * 0.3,
                    pages.WIDTH * 0.2,
                ],
            )
        )
    out: list[Flowable] = [KeepTogether(block)]
    receipts = [as_dict(x) for x in as_list(sms.get("receipts"))]
    if not receipts:
        out.append(pages.sentence(_("No delivery receipt came from the operator."), "note"))
    for x in receipts[:CAP_ROWS]:
        state = clean(x.get("state"), 20)
        rows = [
            (_("Part"), para(_int(doc, x.get("seq")))),
            (_("Message id"), para(x.get("message_id"))),
            (
                _("State"),
                para(f"{state} ({_state_words(doc, x.get('state'))})" if state else "—"),
            ),
            (_("Error"), para(x.get("error"))),
            (_("Submitted, by the operator's clock"), para(operator_time(x.get("submit_date")))),
            (_("Done, by the operator's clock"), para(operator_time(x.get("done_date")))),
            (_("Received by the service"), para(doc.moment(x.get("received_at")))),
            (
                _("The receipt as received (hexadecimal)"),
                para(_hex_pairs(x.get("raw")), "hash", cap=CAP_CELL),
            ),
        ]
        final = x.get("final") is not False  # absent in records made before it was kept
        out += [
            Spacer(1, 1.5 * mm),
            para(
                _("Operator's delivery receipt")
                if final
                else _("Operator's intermediate notification (not the final receipt)"),
                "cellbold",
            ),
            kv_table(rows),
        ]
    if len(receipts) > CAP_ROWS:
        out.append(
            pages.sentence(_("The other receipts are in the attached evidence.json."), "note")
        )
    return out
