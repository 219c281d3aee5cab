"""What the evidence's codes mean, in the reader's words: event names, recipient
statuses, how the gateway received a message, the differences of a delivered copy.

The evidence record keeps language-neutral codes (event names after ETSI EN 319 522,
statuses, ``copy.changes``); a page never shows them raw. Each code maps to an English
message id marked with :func:`N_` and translated at render time through the
``certificate`` catalog (:mod:`certifier.i18n`); a code this version does not know gets a
generic phrase, never its raw name.

The details of the evidence log's entries are JSON objects (:mod:`certifier.evidence`);
:func:`event_details` writes the fields a reader needs as one sentence.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from certifier.document.typeset import clean

__all__ = [
    "EVENTS",
    "N_",
    "change_sentence",
    "event_details",
    "event_phrase",
    "method_phrase",
]

Gettext = Callable[[str], str]


def N_(message: str) -> str:  # noqa: N802 - the gettext convention for "mark only"
    """Mark *message* for the catalog; it is translated where it is shown."""
    return message


EVENTS: dict[str, str] = {
    "SubmissionAcceptance": N_("Message accepted for certified sending"),
    "ReceivedFromNonERDS": N_("Message received for certified reception"),
    "RelayToNonERDS": N_("Accepted by the recipient's mail server"),
    "RelayToNonERDSFailure": N_("Not delivered"),
    "RelayAttemptDeferred": N_("Delivery attempt postponed"),
    "WithdrawnByOperator": N_("Withdrawn by the operator"),
    "OperatorHold": N_("Held by the operator"),
    "OperatorRelease": N_("Released by the operator"),
    "ContentOpened": N_("Tracking image loaded"),
    "LinkClicked": N_("Tracked link followed"),
    "DeliveryReport": N_("Delivery report received"),
    "DeliveryReportUnmatched": N_("Delivery report about an unknown recipient"),
    "SpoolFileMissing": N_("Stored copy of the message missing"),
    "NoticeSent": N_("Processing notice sent to the sender"),
    "NoticeWithheld": N_("Processing notice not sent"),
    "ReceiptSent": N_("Proof of receipt sent to the sender"),
    "CertificateIssued": N_("Certificate issued"),
    "AddendumIssued": N_("Addendum issued"),
    "AddendumNotIssued": N_("Addendum not issued"),
    "DuplicateReception": N_("The same message received again"),
    # Certified SMS (docs/sms.md).
    "SmsSubmitted": N_("SMS part taken by the operator's SMS centre"),
    "SmsSubmitFailed": N_("SMS part not taken by the operator's SMS centre"),
    "SmsDeliveryReceipt": N_("Operator's delivery receipt received"),
    "SmsOptOut": N_("Phone number opted out of SMS"),
}
"""Every event the gateway records (relay/queue and relay/certify write them)."""

_UNKNOWN_EVENT = N_("Other recorded event")

_METHODS = {
    "submission": N_("submitted by an authenticated user of the gateway"),
    "mx": N_("certified copy of a message received by the gateway's mail exchanger"),
    "reception": N_("received for a mailbox under certified reception"),
}


def event_phrase(_: Gettext, event: object) -> str:
    """The reader's name for an evidence event (``RelayToNonERDS`` never shows)."""
    known = EVENTS.get(event) if isinstance(event, str) else None
    return _(known or _UNKNOWN_EVENT)


def method_phrase(_: Gettext, method: object) -> str:
    known = _METHODS.get(method) if isinstance(method, str) else None
    return _(known) if known else _("other")


def parsed_detail(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The detail object of an evidence log entry (stored as its JSON text)."""
    detail = entry.get("detail")
    if isinstance(detail, dict):
        return detail
    if isinstance(detail, str) and detail.startswith("{") and len(detail) <= 100_000:
        try:
            loaded = json.loads(detail)
        except ValueError:
            return {}
        return loaded if isinstance(loaded, dict) else {}
    return {}


def _text(value: object) -> str:
    # Untrusted: printable and capped here; the sentence is set as plain text.
    return clean(value, _CAP)


_CAP = 500


def event_details(
    _: Gettext, event: object, detail: Mapping[str, Any], size: Callable[[int], str]
) -> str:
    """One sentence with what *detail* (an evidence log entry's object) says, or "".

    Only fields this version knows are written, each under a phrase; the whole object
    is in the embedded evidence.json.
    """
    d = detail
    if d.get("late"):
        return _late_report(_, d)
    where = _text(d.get("mx_host"))
    if d.get("ip") and d.get("ip") != d.get("mx_host"):
        where = f"{where} [{_text(d.get('ip'))}]" if where else _text(d.get("ip"))
    reply = _text(d.get("reply"))
    if event == "RelayToNonERDS":
        if where and reply:
            return _("The server %(server)s answered: “%(reply)s”.") % {
                "server": where,
                "reply": reply,
            }
        return ""
    if event in ("RelayToNonERDSFailure", "RelayAttemptDeferred"):
        if where and reply:
            return _("The server %(server)s answered: “%(reply)s”.") % {
                "server": where,
                "reply": reply,
            }
        if reply:
            return _("Reason: “%(reply)s”.") % {"reply": reply}
        return ""
    if event in ("SubmissionAcceptance", "ReceivedFromNonERDS"):
        octets = d.get("size")
        parts = {
            "size": size(octets) if isinstance(octets, int) and octets >= 0 else "?",
            "sender": _text(d.get("envelope_from")) or "—",
            "address": _text(d.get("client_ip")) or "—",
        }
        return _("%(size)s from %(sender)s, connected from the address %(address)s.") % parts
    if event == "WithdrawnByOperator" and d.get("operator"):
        return _("Operator: %(operator)s.") % {"operator": _text(d.get("operator"))}
    if event in ("ContentOpened", "LinkClicked"):
        said = (
            _("Classified as automatic (not by a person).")
            if d.get("automatic")
            else _("Classified as likely by a person.")
        )
        if event == "LinkClicked" and d.get("url"):
            return _("Link %(link)s (%(url)s). %(classification)s") % {
                "link": _text(d.get("link")),
                "url": _text(d.get("url")),
                "classification": said,
            }
        return said
    if event == "NoticeSent" and d.get("notice_qid"):
        return _("Gateway reference of the notice: %(reference)s.") % {
            "reference": _text(d.get("notice_qid"))
        }
    if event == "ReceiptSent" and d.get("to"):
        return _("Sent to %(address)s.") % {"address": _text(d.get("to"))}
    if event in ("CertificateIssued", "AddendumIssued") and d.get("certificate_id"):
        return _("Document %(id)s.") % {"id": _text(d.get("certificate_id"))}
    if event == "DuplicateReception":
        return _("It was not certified a second time.")
    if event in ("SmsSubmitted", "SmsSubmitFailed", "SmsDeliveryReceipt"):
        return _sms_details(_, event, d)
    if event == "DeliveryReportUnmatched" and d.get("recipient"):
        return _("The report names %(address)s.") % {"address": _text(d.get("recipient"))}
    return ""


def _sms_details(_: Gettext, event: object, d: Mapping[str, Any]) -> str:
    """An SMS part's submission or receipt (docs/sms.md), as one sentence."""
    values = {
        "seq": _text(d.get("seq")) or "?",
        "total": _text(d.get("total")) or "?",
        "id": _text(d.get("message_id")) or "—",
        "state": _text(d.get("state")) or "—",
        "error": _text(d.get("error")) or "—",
        "reason": _text(d.get("sentence")) or "—",
    }
    if event == "SmsSubmitted":
        text = _("Part %(seq)s of %(total)s, the SMS centre's message id %(id)s.") % values
        if d.get("maybe_duplicate"):
            text += " " + _("An earlier submission's answer was lost: it may have arrived twice.")
        return text
    if event == "SmsSubmitFailed":
        return _("Part %(seq)s: “%(reason)s”.") % values
    return _("Part %(seq)s, message id %(id)s: %(state)s, error %(error)s.") % values


_ACTIONS = {
    "failed": N_(
        "A delivery report received later states that the message was not delivered "
        "to %(address)s: “%(diagnostic)s”."
    ),
    "delayed": N_(
        "A delivery report received later states that delivery to %(address)s was "
        "delayed: “%(diagnostic)s”."
    ),
    "delivered": N_(
        "A delivery report received later states that the message was delivered to "
        "the mailbox of %(address)s."
    ),
    "relayed": N_(
        "A delivery report received later states that the message for %(address)s was "
        "passed on to a system that sends no delivery reports."
    ),
    "expanded": N_(
        "A delivery report received later states that the message for %(address)s was "
        "forwarded to further addresses."
    ),
}


def late_report_sentence(_: Gettext, report: Mapping[str, Any]) -> str:
    """A delivery report that came after the recipient's server had accepted the message."""
    template = _ACTIONS.get(_text(report.get("action")), _ACTIONS["failed"])
    diagnostic = _text(report.get("diagnostic")) or _text(report.get("status")) or "—"
    sentence = _(template) % {"address": _text(report.get("recipient")), "diagnostic": diagnostic}
    if report.get("reporting_mta"):
        sentence += " " + _("The report was sent by %(server)s.") % {
            "server": _text(report.get("reporting_mta"))
        }
    return sentence


def _late_report(_: Gettext, d: Mapping[str, Any]) -> str:
    return late_report_sentence(_, d)


_RESULTS = {
    "pass": N_("passed"),
    "fail": N_("failed"),
    "softfail": N_("failed softly (softfail)"),
    "neutral": N_("neutral"),
    "none": N_("none"),
    "temperror": N_("temporary error"),
    "permerror": N_("permanent error"),
    "policy": N_("refused by local policy"),
}


def _result(_: Gettext, value: object) -> str:
    known = _RESULTS.get(value) if isinstance(value, str) else None
    return _(known) if known else _text(value) or "—"


def authentication_sentences(_: Gettext, auth: Mapping[str, Any]) -> list[str]:
    """The sender authentication results the gateway recorded (DKIM RFC 6376, SPF
    RFC 7208, DMARC RFC 7489, reported as RFC 8601 says), one sentence each."""
    out = []
    for raw in auth.get("dkim") or []:
        if isinstance(raw, dict):
            out.append(
                _("DKIM signature of %(domain)s: %(result)s.")
                % {
                    "domain": _text(raw.get("domain")) or "—",
                    "result": _result(_, raw.get("result")),
                }
            )
    if auth.get("spf"):
        out.append(
            _("SPF check for %(domain)s: %(result)s.")
            % {
                "domain": _text(auth.get("spf_domain")) or "—",
                "result": _result(_, auth.get("spf")),
            }
        )
    if auth.get("dmarc"):
        out.append(
            _("DMARC check for %(domain)s: %(result)s (the domain's policy: %(policy)s).")
            % {
                "domain": _text(auth.get("from_domain")) or "—",
                "result": _result(_, auth.get("dmarc")),
                "policy": _text(auth.get("dmarc_policy")) or "—",
            }
        )
    return out


def change_sentence(_: Gettext, change: Mapping[str, Any]) -> str:
    """One difference between a recipient's delivered copy and the message as received
    (``recipients[].copy.changes``), as a sentence."""
    kind = change.get("change")
    if kind == "header_added":
        return _("The header field %(field)s was added.") % {"field": _text(change.get("field"))}
    if kind == "link_tracked":
        return _("Link %(link)s (%(url)s) was replaced by a tracking link.") % {
            "link": _text(change.get("link")),
            "url": _text(change.get("url")),
        }
    if kind == "open_pixel_added":
        return _("A tracking image (one pixel) was added.")
    if kind == "from_rewritten":
        return _("The From field was rewritten.")
    if kind == "part_reencoded":
        return _("The part %(part)s was re-encoded as %(encoding)s.") % {
            "part": _text(change.get("part")),
            "encoding": _text(change.get("encoding")),
        }
    return _("Another change was made; the evidence record describes its exact bytes.")


_RECEIPT_REASONS = {
    "not_requested": N_("the mailbox owner did not ask for proofs of receipt"),
    "null_sender": N_(
        "the message was itself a delivery report, which is never answered (RFC 3834)"
    ),
    "automatic": N_(
        "the message was automatic, bulk or mailing-list mail, which is never answered (RFC 3834)"
    ),
    "no_single_sender": N_("its From field does not name a single sender"),
    "own_address": N_("the sender is the mailbox owner or the service itself"),
    "not_authenticated": N_(
        "the sender's address could not be authenticated (no aligned DKIM signature or SPF)"
    ),
    "interval": N_(
        "a proof of receipt had already been sent to this sender within the configured "
        "interval (RFC 3834)"
    ),
}


def receipt_reason(_: Gettext, reason: object) -> str | None:
    """Why no proof of receipt went to the original sender (the evidence's
    ``reception.receipt.reason``), in words; None for a reason this version does not
    know (the page then says only that none was sent)."""
    text = _RECEIPT_REASONS.get(reason) if isinstance(reason, str) else None
    return _(text) if text else None
