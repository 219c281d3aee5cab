"""What the pages of a certificate say, in the reader's language.

Page 1 is for a reader who is not a mail engineer (README, "What a certificate holds"):
who issued the document and under which policy, who sent what to whom and when, the
result for each recipient in full sentences, what "accepted by the recipient's mail
server" proves and what it does not, the electronic seal, and where anyone can check
the document (the verification URL, as text and as a QR code). The technical evidence
follows in annexes with letters a lawyer can cite ("Annex C — Delivery to each
recipient"): envelope, EHLO, TLS, the servers' replies, the evidence log, the hashes.

Every word of the gateway's own goes through the ``certificate`` gettext domain
(:mod:`certifier.i18n`); dates are the reader's local time with UTC beside. Values from
the evidence are untrusted and only ever set as plain text (:func:`typeset.para`), also
when a sentence carries them: the translated sentence is filled in first, and the whole
is set as text, never as markup.

A block whose data an evidence record lacks (records made before the provider, seal or
verification fields existed) is left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.units import mm
from reportlab.platypus import CondPageBreak, Flowable, KeepTogether, Spacer, Table, TableStyle

from certifier.document import invoices, words
from certifier.document import sms as sms_pages
from certifier.document.qr import QrMark
from certifier.document.typeset import (
    CAP_BODY,
    CAP_CELL,
    CAP_LINE,
    CAP_LIST,
    CAP_RECIPIENTS,
    CAP_ROWS,
    CAP_SHORT,
    MARGIN,
    PAGE_W,
    RunsBlock,
    TextBlock,
    as_dict,
    as_list,
    base_font,
    clean,
    fonts,
    grid_table,
    kv_table,
    para,
    styles,
    trusted,
)
from certifier.document.words import N_
from certifier.i18n import Reader
from certifier.outcome import TITLES, Outcome, outcome, sms_only, title_id

__all__ = ["TITLES", "Document", "content_unavailable", "fallback_story", "story", "title"]


WIDTH = PAGE_W - 2 * MARGIN
_HEX = re.compile(r"[0-9a-fA-F]{64}")


def title(evidence: dict[str, Any], reader: Reader) -> str:
    """The document's title in the reader's language, by what happened (and to whom:
    a certified SMS when every recipient is a phone)."""
    return reader.catalog("certificate").gettext(title_id(evidence))


def content_unavailable(evidence: dict[str, Any]) -> str | None:
    """Why the message is not in this certificate, when the gateway could not read it
    any more (``message.content_unavailable``); None for every normal certificate."""
    reason = as_dict(evidence.get("message")).get("content_unavailable")
    return reason if isinstance(reason, str) and reason else None


@dataclass
class Document:
    """One document being written: its evidence, reader and annex letters."""

    ev: dict[str, Any]
    reader: Reader
    outcome: Outcome = Outcome.DELIVERY
    annexes: dict[str, str] = field(default_factory=dict)  # section -> its letter
    _: Callable[[str], str] = field(init=False, repr=False)  # gettext, "certificate"
    ngettext: Callable[[str, str, int], str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.outcome = outcome(self.ev)
        self._ = self.reader.catalog("certificate").gettext
        self.ngettext = self.reader.catalog("certificate").ngettext

    @property
    def kind(self) -> str:
        return "reception" if self.outcome == Outcome.RECEPTION else "sending"

    @property
    def lost(self) -> str | None:
        return content_unavailable(self.ev)

    def moment(self, value: object) -> str:
        """A time of the evidence as the reader writes it; anything that is not one
        (a year 10000, a number no clock reaches) as plain text."""
        text = ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                text = self.reader.moment(value)
            except (ValueError, OverflowError, OSError):
                text = ""
        return text or clean(value, 64) or "—"

    def short_moment(self, value: object) -> str:
        """The compact form for table cells (see :meth:`moment`)."""
        if isinstance(value, str) and value[:1].isdigit() and "-" not in value[:8]:
            # The evidence log writes its times as POSIX seconds, as text.
            try:
                value = float(value)
            except ValueError:
                pass
        text = ""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            try:
                text = self.reader.short_moment(value)
            except (ValueError, OverflowError, OSError):
                text = ""
        return text or clean(value, 64)

    def size(self, value: object) -> str:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return clean(value, 64)
        return self.reader.size(value)

    def annex(self, section: str) -> str:
        return self.annexes.get(section, "")


# --- small pieces ---------------------------------------------------------------------


def hash_groups(value: object) -> str:
    """A SHA-256 in 8 groups of 8 hex digits, as a reader compares it by eye; any
    other value as plain text."""
    text = clean(value, CAP_SHORT)
    if _HEX.fullmatch(text):
        text = text.lower()
        return " ".join(text[i : i + 8] for i in range(0, 64, 8))
    return text


def hash_block(value: object, style: str = "hash") -> Flowable:
    return para(hash_groups(value), style, cap=CAP_SHORT + 20)


def sentence(text: str, style: str = "sentence") -> Flowable:
    """A sentence of the gateway's, filled in with (already cleaned) evidence values:
    set as plain text, never markup."""
    return para(text, style, cap=CAP_CELL * 2)


def bullets(items: list[str], style: str = "sentence") -> list[Flowable]:
    rows = [[para("•", style), sentence(text, style)] for text in items]
    if not rows:
        return []
    table = Table(rows, colWidths=[5 * mm, WIDTH - 5 * mm], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                base_font(),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                ("TOPPADDING", (0, 0), (-1, -1), 1),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return [table]


def heading(text: str, style: str = "h2") -> list[Flowable]:
    # Keep a heading with at least a few lines of what follows it.
    return [CondPageBreak(30 * mm), trusted(escape(text), style)]


def annex_heading(doc: Document, section: str, text: str) -> list[Flowable]:
    _ = doc._
    return heading(
        _("Annex %(letter)s — %(title)s") % {"letter": doc.annex(section), "title": text}
    )


def _more_note(doc: Document, total: int, cap: int = CAP_ROWS) -> list[Flowable]:
    if total <= cap:
        return []
    text = doc.ngettext(
        "%(count)s more entry is in the attached evidence.json.",
        "%(count)s more entries are in the attached evidence.json.",
        total - cap,
    ) % {"count": doc.reader.number(total - cap)}
    return [trusted(escape(text), "note")]


def _tls(doc: Document, value: object) -> str:
    tls = as_dict(value)
    if not tls:
        if value is None:
            return doc._("none: the connection was not encrypted")
        return clean(value, CAP_SHORT)
    parts = [clean(tls.get("version"), 40), clean(tls.get("cipher"), 120)]
    return ", ".join(p for p in parts if p) or doc._("encrypted")


def _addresses(doc: Document, value: object) -> str:
    items = value if isinstance(value, list) else ([value] if value else [])
    shown: list[str] = []
    length = 0
    for item in items[:CAP_LIST]:
        text = clean(item, CAP_SHORT)
        if length + len(text) > CAP_CELL - 100:
            break
        shown.append(text)
        length += len(text) + 2
    text = ", ".join(shown)
    if len(items) > len(shown):
        text += " " + doc._("and %(count)s more (see evidence.json)") % {
            "count": doc.reader.number(len(items) - len(shown))
        }
    return text


def _reply(value: object) -> str:
    r = as_dict(value)
    if not r:
        return clean(value, CAP_LINE)
    parts = [clean(r.get("code"), 10), clean(r.get("enhanced"), 20), clean(r.get("text"), CAP_LINE)]
    return " ".join(p for p in parts if p)


def _domain(address: str) -> str:
    return address.rpartition("@")[2] or address


def _sender_name(ev: dict[str, Any]) -> str:
    s = as_dict(ev.get("sender"))
    return clean(s.get("header_from") or s.get("envelope_from"), CAP_SHORT) or "—"


def sent_at(ev: dict[str, Any]) -> object:
    for entry in as_list(ev.get("timeline")):
        e = as_dict(entry)
        if e.get("event") in ("SubmissionAcceptance", "ReceivedFromNonERDS"):
            return e.get("time")
    return ev.get("issued_at")


# --- page 1 -----------------------------------------------------------------------------


def _title_block(doc: Document) -> list[Flowable]:
    _ = doc._
    ev = doc.ev
    out: list[Flowable] = [trusted(escape(_(title_id(ev))), "title"), Spacer(1, 1 * mm)]
    line = _("Certificate number %(id)s, issued on %(time)s") % {
        "id": clean(ev.get("certificate_id"), 100) or "—",
        "time": doc.moment(ev.get("issued_at")),
    }
    if ev.get("addendum_of") and ev.get("kind") == "acceptance":
        # The message's own certificate comes once every recipient had the content or
        # its link expired (docs/hosted.md): often after this one.
        line += ". " + _(
            "It concerns the message whose certificate, number %(id)s, is issued once "
            "every recipient has had the content or its link has expired."
        ) % {"id": clean(ev.get("addendum_of"), 100)}
    elif ev.get("addendum_of"):
        line += ". " + _("It adds to certificate %(id)s.") % {
            "id": clean(ev.get("addendum_of"), 100)
        }
    out.append(sentence(line, "subtitle"))
    return out


def _statement(doc: Document) -> list[Flowable]:
    """What the document attests, by whom and under which policy."""
    _ = doc._
    ev = doc.ev
    provider = as_dict(ev.get("provider"))
    gateway = as_dict(ev.get("gateway"))
    issuer = clean(provider.get("name"), CAP_SHORT)
    # The service named as what the document is about (docs/sms.md): an e-mail-only
    # certificate keeps its words.
    phones = [sms_pages.is_sms(r) for r in as_list(ev.get("recipients"))]
    service = "sms" if phones and all(phones) else "both" if any(phones) else "mail"
    if issuer:
        values = {"provider": issuer, "gateway": clean(gateway.get("domain"), CAP_SHORT) or "—"}
        if service == "sms":
            said = _(
                "%(provider)s, as the trust service provider operating the certified SMS "
                "service of %(gateway)s, certifies the facts stated in this document, as its "
                "systems recorded them."
            )
        elif service == "both":
            said = _(
                "%(provider)s, as the trust service provider operating the certified e-mail "
                "and SMS service of %(gateway)s, certifies the facts stated in this document, "
                "as its systems recorded them."
            )
        else:
            said = _(
                "%(provider)s, as the trust service provider operating the certified e-mail "
                "service of %(gateway)s, certifies the facts stated in this document, as its "
                "systems recorded them."
            )
        sentences = [said % values]
    else:
        values = {"gateway": clean(gateway.get("hostname"), CAP_SHORT) or "—"}
        if service == "sms":
            said = _(
                "The certified SMS gateway %(gateway)s certifies the facts stated in this "
                "document, as it recorded them."
            )
        elif service == "both":
            said = _(
                "The certified e-mail and SMS gateway %(gateway)s certifies the facts stated "
                "in this document, as it recorded them."
            )
        else:
            said = _(
                "The certified e-mail gateway %(gateway)s certifies the facts stated in this "
                "document, as it recorded them."
            )
        sentences = [said % values]
    policy = clean(provider.get("policy_id"), CAP_SHORT)
    if policy:
        sentences.append(
            _("It issues this certificate under its certification policy %(policy)s.")
            % {"policy": policy}
        )
    if doc.lost:
        sentences.append(
            _(
                "Only the evidence in machine-readable form is attached to this PDF: the "
                "message could no longer be read (see below)."
            )
        )
    else:
        sentences.append(
            _(
                "The original message and the evidence in machine-readable form are "
                "attached to this PDF."
            )
        )
    return [Spacer(1, 3 * mm), sentence(" ".join(sentences), "intro")]


def _decision(doc: Document) -> list[Flowable]:
    """Page 1 of a certificate of acceptance or rejection (docs/hosted.md): who decided
    what and when, with what they saw, and what kind of signature that is."""
    d = as_dict(doc.ev.get("decision"))
    if not d:
        return []
    _ = doc._
    values = {
        "recipient": clean(d.get("recipient"), CAP_SHORT) or "—",
        "time": doc.moment(d.get("time")),
        "subject": clean(as_dict(doc.ev.get("message")).get("subject"), CAP_SHORT) or "—",
    }
    # Who clicked is not known: only that the link mailed to that address was used
    # (and, with a one-time code, that the mailbox was read).
    if d.get("decision") == "accepted":
        first = (
            _(
                "The message “%(subject)s” was accepted on %(time)s on the gateway's page, through "
                "the link sent to %(recipient)s."
            )
            % values
        )
    else:
        first = (
            _(
                "The message “%(subject)s” was rejected on %(time)s on the gateway's page, through "
                "the link sent to %(recipient)s."
            )
            % values
        )
    items = [_access(doc, d)]
    if clean(d.get("name"), CAP_SHORT):
        items.append(_("Name typed: %(name)s") % {"name": clean(d.get("name"), CAP_SHORT)})
    if clean(d.get("comment"), CAP_CELL):
        items.append(_("Comment: %(comment)s") % {"comment": clean(d.get("comment"), CAP_CELL)})
    items.append(
        _("From the network address %(ip)s, with the browser “%(agent)s”.")
        % {"ip": clean(d.get("ip"), 100) or "—", "agent": clean(d.get("user_agent"), 300) or "—"}
    )
    out: list[Flowable] = [
        *heading(_("The recipient's decision")),
        sentence(first),
        *bullets(items),
        sentence(
            _(
                "SHA-256 of the page the decision was made on (attached to this PDF as "
                "shown-page.html):"
            )
        ),
        hash_block(d.get("page_sha256")),
    ]
    for a in as_list(d.get("attachments")):
        item = as_dict(a)
        out += [
            sentence(
                _("SHA-256 of the attachment %(name)s:")
                % {"name": clean(item.get("name"), CAP_SHORT) or "—"}
            ),
            hash_block(item.get("sha256")),
        ]
    out.append(
        sentence(
            _(
                "Typing a name and pressing a button is a simple electronic signature "
                "(Regulation (EU) No 910/2014, eIDAS, article 3(10)): it records the "
                "recipient's will, but it is not an advanced or a qualified electronic "
                "signature."
            ),
            "intro",
        )
    )
    return out


def _identity(doc: Document) -> list[Flowable]:
    """The provider's identity beside the verification URL and its QR code."""
    _ = doc._
    provider = as_dict(doc.ev.get("provider"))
    url = clean(as_dict(doc.ev.get("verification")).get("url"), CAP_SHORT)
    left: list[Flowable] = []
    qr_w = 30 * mm
    right_w = 52 * mm if url else 0.0
    left_w = WIDTH - right_w - (4 * mm if url else 0)
    if provider:
        rows = [
            (_("Trust service provider"), provider.get("name")),
            (_("Tax or registration number"), provider.get("legal_id")),
            (_("Registered address"), provider.get("address")),
            (_("Website"), provider.get("website")),
            (_("Contact"), provider.get("contact")),
            (_("Certification policy"), provider.get("policy_id")),
            (_("Policy document"), provider.get("policy_url")),
        ]
        shown = [(label, para(value, cap=CAP_SHORT)) for label, value in rows if value]
        left = [kv_table(shown, (44 * mm, left_w - 44 * mm))] if shown else []
    if not url:
        return [Spacer(1, 3 * mm), *left] if left else []
    right = [
        QrMark(url, qr_w),
        trusted(escape(_("Check this certificate at:")), "note"),
        para(url, "url", cap=CAP_SHORT),
    ]
    box = Table([[left or "", right]], colWidths=[left_w + 4 * mm, right_w], hAlign="LEFT")
    box.setStyle(
        TableStyle(
            [
                base_font(),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                ("TOPPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0),
            ]
        )
    )
    return [Spacer(1, 3 * mm), box]


_PAGE1_INVOICES = 3


def _invoice_lines(doc: Document) -> list[Flowable]:
    """Page 1: the attached invoices, one sentence each (README, "Invoices")."""
    if doc.lost:
        return []
    found = invoices.invoices(doc.ev.get("message"))
    if not found:
        return []
    _ = doc._
    intro = doc.ngettext(
        "The message carried an invoice:",
        "The message carried %(count)s invoices:",
        len(found),
    ) % {"count": doc.reader.number(len(found))}
    lines = [
        _("%(file)s: %(invoice)s")
        % {
            "file": clean(a.get("filename"), CAP_SHORT) or _("(no name)"),
            "invoice": invoices.invoice_sentence(_, doc.reader, i),
        }
        for a, i in found[:_PAGE1_INVOICES]
    ]
    out: list[Flowable] = [Spacer(1, 2 * mm), sentence(intro), *bullets(lines)]
    if len(found) > _PAGE1_INVOICES:
        out.append(
            sentence(
                _("The other invoices are listed with the attached files in annex %(annex)s.")
                % {"annex": doc.annex("message")},
                "note",
            )
        )
    return out


def _recipient_sentence(doc: Document, r: dict[str, Any]) -> str:
    _ = doc._
    address = clean(r.get("address"), CAP_SHORT) or "—"
    values = {
        "address": address,
        "domain": _domain(address),
        "time": doc.moment(r.get("time")),
        "reply": _reply(r.get("reply")),
    }
    status = r.get("status")
    hosted = as_dict(r.get("hosted"))
    if status == "delivered" and hosted:
        return _hosted_sentence(doc, hosted, values)
    if status == "delivered":
        return (
            _("The mail server of %(domain)s accepted the message for %(address)s on %(time)s.")
            % values
        )
    if status == "bounced":
        return (
            _(
                "The mail server of %(domain)s accepted the message for %(address)s, but a "
                "delivery report received later states that it was not delivered "
                "(%(time)s)."
            )
            % values
        )
    if status == "withdrawn":
        return (
            _(
                "The provider's operator withdrew the message for %(address)s on %(time)s, "
                "before it was delivered: it was not delivered."
            )
            % values
        )
    if status == "failed":
        if values["reply"]:
            return (
                _(
                    "The message could not be delivered to %(address)s: on %(time)s the "
                    "mail server of %(domain)s refused it with the answer “%(reply)s”."
                )
                % values
            )
        return (
            _("The message could not be delivered to %(address)s (last attempt on %(time)s).")
            % values
        )
    if status in ("queued", "deferred"):
        return _("Delivery to %(address)s had not ended when this document was issued.") % values
    return _("The evidence states no result for %(address)s.") % values


def _access(doc: Document, context: dict[str, Any]) -> str:
    """Whether a one-time code bound the access to the mailbox, and how the request was
    classified (a person, or a machine such as a link scanner: addendum/classify.py)."""
    _ = doc._
    if context.get("code_checked"):
        bound = _(
            "A one-time code sent to that mailbox was typed first: the access was bound to "
            "the mailbox."
        )
    else:
        bound = _(
            "No code was asked for: whoever held the link could use it; the person who did "
            "is not identified."
        )
    if context.get("automatic"):
        kind = _("Classified as automatic (a machine): %(reason)s.")
    else:
        kind = _("Classified as likely a person: %(reason)s.")
    return f"{bound} {kind % {'reason': clean(context.get('reason'), 200) or '—'}}"


def _hosted_sentence(doc: Document, hosted: dict[str, Any], values: dict[str, str]) -> str:
    """A recipient of hosted content (docs/hosted.md): the notification, then whether and
    when the content itself was handed over, or the link expired."""
    _ = doc._
    out = [
        _(
            "The mail server of %(domain)s accepted for %(address)s on %(time)s the "
            "notification with the link to the message, which the gateway kept."
        )
        % values
    ]
    if hosted.get("state") == "handed_over":
        out.append(
            _(
                "The content was opened on the gateway's page on %(when)s, through the link "
                "sent to %(address)s."
            )
            % {"when": doc.moment(hosted.get("handed_over_at")), "address": values["address"]}
        )
        if as_dict(hosted.get("handover")):
            out.append(_access(doc, as_dict(hosted.get("handover"))))
    elif hosted.get("state") == "expired":
        out.append(
            _(
                "The link was not opened before it expired (%(when)s): the content was not "
                "handed over."
            )
            % {"when": doc.moment(hosted.get("expired_at") or hosted.get("expires"))}
        )
    else:
        out.append(_("The content had not been handed over when this document was issued."))
    if hosted.get("decision") == "accepted":
        out.append(
            _("It was accepted through that link on %(when)s.")
            % {"when": doc.moment(hosted.get("decided_at"))}
        )
    elif hosted.get("decision") == "rejected":
        out.append(
            _("It was rejected through that link on %(when)s.")
            % {"when": doc.moment(hosted.get("decided_at"))}
        )
    return " ".join(out)


def _what_happened(doc: Document) -> list[Flowable]:
    _ = doc._
    ev = doc.ev
    m = as_dict(ev.get("message"))
    # Phones have a section of their own (certifier.document.sms, docs/sms.md).
    recipients = [as_dict(r) for r in as_list(ev.get("recipients")) if not sms_pages.is_sms(r)]
    out = heading(_("What happened"))
    if doc.outcome == Outcome.RECEPTION:
        return out + _what_arrived(doc) + _invoice_lines(doc)
    if sms_only(ev):
        return out + sms_pages.page_one(doc, titled=False)
    subject = clean(m.get("subject"), 300)
    values = {
        "time": doc.moment(sent_at(ev)),
        "sender": _sender_name(ev),
        "subject": subject or _("(no subject)"),
        "count": doc.reader.number(len(recipients)),
    }
    ngettext = doc.reader.catalog("certificate").ngettext
    if doc.lost:
        text = ngettext(
            "On %(time)s, %(sender)s sent a message through the gateway to %(count)s "
            "recipient. Its content can no longer be read (see below).",
            "On %(time)s, %(sender)s sent a message through the gateway to %(count)s "
            "recipients. Its content can no longer be read (see below).",
            len(recipients),
        )
    else:
        text = ngettext(
            "On %(time)s, %(sender)s sent the message with the subject “%(subject)s” "
            "through the gateway to %(count)s recipient.",
            "On %(time)s, %(sender)s sent the message with the subject “%(subject)s” "
            "through the gateway to %(count)s recipients.",
            len(recipients),
        )
    out.append(sentence(text % values))
    out += _invoice_lines(doc)
    out.append(Spacer(1, 2 * mm))
    shown = recipients[:_PAGE1_RECIPIENTS]
    out += bullets([_recipient_sentence(doc, r) for r in shown])
    if len(recipients) > len(shown):
        out.append(
            sentence(
                doc.ngettext(
                    "The result for the other recipient is in annex %(annex)s.",
                    "The results for the other %(count)s recipients are in annex %(annex)s.",
                    len(recipients) - len(shown),
                )
                % {
                    "count": doc.reader.number(len(recipients) - len(shown)),
                    "annex": doc.annex("delivery"),
                }
            )
        )
    late = as_list(as_dict(ev.get("late_bounce")).get("reports"))
    out += bullets([words.late_report_sentence(_, as_dict(r)) for r in late[:CAP_LIST]])
    tracking = as_dict(ev.get("tracking"))
    events = [as_dict(e) for e in as_list(tracking.get("events"))]
    if doc.outcome == Outcome.ADDENDUM and events:
        opens = sum(e.get("kind") == "open" for e in events)
        clicks = len(events) - opens
        said = [
            doc.ngettext(
                "Since the certificate was issued, the tracking image was loaded once.",
                "Since the certificate was issued, the tracking image was loaded %(count)s times.",
                opens,
            )
            % {"count": doc.reader.number(opens)}
            if opens
            else "",
            doc.ngettext(
                "A tracking link was followed once.",
                "Tracking links were followed %(count)s times.",
                clicks,
            )
            % {"count": doc.reader.number(clicks)}
            if clicks
            else "",
            _("Each is listed in annex %(annex)s with its classification.")
            % {"annex": doc.annex("tracking")},
        ]
        out += bullets([" ".join(s for s in said if s)])
    if any(r.get("status") in ("delivered", "bounced") for r in recipients):
        out += [Spacer(1, 2 * mm), sentence(_accepted_means(doc), "note")]
    if as_dict(ev.get("sms")):
        out += sms_pages.page_one(doc, titled=True)
    if doc.lost:
        out += _content_lost(doc)
    return out


_PAGE1_RECIPIENTS = 20


def _accepted_means(doc: Document) -> str:
    return doc._(
        "What “accepted by the recipient's mail server” means: the server that receives "
        "e-mail for the recipient's domain confirmed that it took charge of the message "
        "(reply 250, RFC 5321). This proves that the message, with the content identified "
        "in annex %(annex)s, reached that server at that time. It does not "
        "prove that the recipient opened or read it."
    ) % {"annex": doc.annex("message")}


def _what_arrived(doc: Document) -> list[Flowable]:
    _ = doc._
    ev = doc.ev
    r = as_dict(ev.get("reception"))
    m = as_dict(ev.get("message"))
    receipt = as_dict(r.get("receipt"))
    values = {
        "time": doc.moment(r.get("arrived_at") or sent_at(ev)),
        "owner": clean(r.get("owner"), CAP_SHORT) or "—",
        "sender": clean(r.get("original_from"), CAP_SHORT)
        or clean(as_dict(ev.get("sender")).get("envelope_from"), CAP_SHORT)
        or "—",
        "subject": clean(m.get("subject"), 300) or _("(no subject)"),
    }
    items = [
        _(
            "On %(time)s the gateway received, for the mailbox of %(owner)s, the message "
            "from %(sender)s with the subject “%(subject)s”."
        )
        % values
    ]
    if receipt.get("to"):
        items.append(
            _("A proof of receipt was sent to %(address)s.")
            % {"address": clean(receipt.get("to"), CAP_SHORT)}
        )
    elif receipt:
        items.append(_("No proof of receipt was sent to the sender (see annex %(annex)s).")
                     % {"annex": doc.annex("reception")})  # fmt: skip
    out = bullets(items)
    out.append(Spacer(1, 2 * mm))
    out.append(
        sentence(
            _(
                "This certificate proves that the message, with the content identified in "
                "annex %(annex)s, reached the gateway for this mailbox at that time. It "
                "does not prove who wrote it beyond the sender authentication results the "
                "gateway recorded."
            )
            % {"annex": doc.annex("message")},
            "note",
        )
    )
    if doc.lost:
        out += _content_lost(doc)
    return out


def _content_lost(doc: Document) -> list[Flowable]:
    """What a certificate made without the message states, on page 1, in full sentences."""
    _ = doc._
    return [
        *heading(_("The message could not be read")),
        sentence(
            _(
                "The gateway could no longer read the message when it made this "
                "certificate (%(reason)s). It is not attached, and its subject, header "
                "fields, attachments and text are not stated. This certificate proves when "
                "the gateway received a message, from whom, with the SHA-256 stated in "
                "annex %(annex)s (recorded at reception, in the evidence log), and what "
                "happened to each recipient; it does not prove the message's content."
            )
            % {"reason": clean(doc.lost, 300), "annex": doc.annex("message")}
        ),
    ]


def _seal(doc: Document) -> list[Flowable]:
    """The visible seal: who sealed the document, drawn with the shipped fonts."""
    _ = doc._
    seal = as_dict(doc.ev.get("seal"))
    signer = clean(seal.get("signer"), CAP_SHORT)
    if not signer:
        return []
    rows: list[Flowable] = [
        trusted(escape(_("Electronic seal")), "h3"),
        sentence(_("This document bears the electronic seal of:"), "note"),
        para(signer, "seal"),
    ]
    organization = clean(seal.get("organization"), CAP_SHORT)
    if organization:
        rows.append(para(organization, "sentence"))
    details = []
    if seal.get("issuer"):
        details.append(
            _("Seal certificate issued by %(issuer)s.")
            % {"issuer": clean(seal.get("issuer"), CAP_SHORT)}
        )
    if seal.get("serial") or seal.get("not_after"):
        details.append(
            _("Serial number %(serial)s, valid until %(date)s.")
            % {
                "serial": clean(seal.get("serial"), 100) or "—",
                "date": doc.moment(seal.get("not_after")),
            }
        )
    details.append(
        _(
            "The seal and an RFC 3161 time-stamp are embedded in this PDF; any change to "
            "the file invalidates them. PDF readers show them in their signature panel."
        )
    )
    rows.append(sentence(" ".join(details), "note"))
    ink = colors.HexColor("#1f2a44")
    box = Table([[rows]], colWidths=[WIDTH], hAlign="LEFT")
    box.setStyle(
        TableStyle(
            [
                base_font(),
                ("BOX", (0, 0), (-1, -1), 1.2, ink),
                ("INNERGRID", (0, 0), (-1, -1), 0, colors.white),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f3f5fa")),
                ("LEFTPADDING", (0, 0), (-1, -1), 8),
                ("RIGHTPADDING", (0, 0), (-1, -1), 8),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    return [Spacer(1, 4 * mm), KeepTogether([box])]


# --- the annexes ------------------------------------------------------------------------


def _annex_submission(doc: Document) -> list[Flowable]:
    _ = doc._
    ev = doc.ev
    s = as_dict(ev.get("sender"))
    gateway = as_dict(ev.get("gateway"))
    client = clean(s.get("client_ip"), 100)
    helo = clean(s.get("client_helo"), CAP_SHORT)
    if helo:
        client = _("%(address)s, which introduced itself as %(name)s (EHLO)") % {
            "address": client or "—",
            "name": helo,
        }
    checks = words.authentication_sentences(_, as_dict(s.get("authentication")))
    rows = [
        (_("Sender address in the envelope (MAIL FROM)"), para(s.get("envelope_from"))),
        (_("Sender in the From field"), para(s.get("header_from"))),
        (
            _("Authenticated account"),
            para(s.get("authenticated_user"), empty=_("none (not authenticated)")),
        ),
        (_("Connected from"), para(client)),
        (_("Encryption of the connection (TLS)"), para(_tls(doc, s.get("tls")))),
        (_("How the gateway received it"), para(words.method_phrase(_, s.get("method")))),
        *(
            [(_("Sender authentication (DKIM, SPF, DMARC)"), sentence(" ".join(checks), "value"))]
            if checks
            else []
        ),
        (_("Gateway"), para(gateway.get("hostname"))),
        (_("Gateway domain"), para(gateway.get("domain"))),
        (_("Software"), para(gateway.get("software"))),
        (_("Gateway reference (queue id)"), para(ev.get("queue_id"), cap=100)),
        (_("Certificate number"), para(ev.get("certificate_id"), cap=100)),
        (_("Issued on"), para(doc.moment(ev.get("issued_at")))),
    ]
    return [*annex_heading(doc, "submission", _("Sender and submission")), kv_table(rows)]


def _annex_reception(doc: Document) -> list[Flowable]:
    _ = doc._
    r = as_dict(doc.ev.get("reception"))
    env = as_dict(r.get("envelope"))
    arc = as_dict(r.get("arc"))
    receipt = as_dict(r.get("receipt"))
    hop = clean(env.get("client_ip"), 100)
    if env.get("client_helo"):
        hop = _("%(address)s, which introduced itself as %(name)s (EHLO)") % {
            "address": hop or "—",
            "name": clean(env.get("client_helo"), CAP_SHORT),
        }
    arc_result = clean(arc.get("result"), 20) or "none"
    arc_text = _("result %(result)s, %(count)s signatures") % {
        "result": arc_result,
        "count": clean(arc.get("instances"), 10) or "0",
    }
    rcpts = ", ".join(clean(a, CAP_SHORT) for a in as_list(env.get("rcpt_to"))[:CAP_LIST])
    if receipt.get("to"):
        receipt_text = _("sent to %(address)s") % {"address": clean(receipt.get("to"), CAP_SHORT)}
    elif why := words.receipt_reason(_, receipt.get("reason")):
        receipt_text = _("not sent: %(reason)s") % {"reason": why}
    else:
        receipt_text = _("not sent")
    rows = [
        (_("Mailbox owner"), para(r.get("owner"))),
        (_("Arrived on"), para(doc.moment(r.get("arrived_at")))),
        (_("Handed over by"), para(hop)),
        (_("Encryption of the last hop (TLS)"), para(clean(env.get("tls"), 100) or "—")),
        (_("Sender address in the envelope (MAIL FROM)"), para(env.get("mail_from"))),
        (_("Recipient addresses in the envelope (RCPT TO)"), para(rcpts, cap=CAP_CELL)),
        (_("Original sender (From field)"), para(r.get("original_from"))),
        (_("ARC chain (RFC 8617)"), para(arc_text)),
        (_("Proof of receipt to the sender"), para(receipt_text)),
    ]
    out = [*annex_heading(doc, "reception", _("Reception")), kv_table(rows)]
    received = as_list(as_dict(r.get("trace")).get("received"))
    if received:
        out += heading(_("Forwarding chain (Received fields, newest first)"), "h3")
        for line in received[:CAP_LIST]:
            out.append(para(line, "cell", cap=CAP_LINE))
    return out


def _annex_message(doc: Document) -> list[Flowable]:
    _ = doc._
    m = as_dict(doc.ev.get("message"))
    head = annex_heading(doc, "message", _("The message"))
    if doc.lost:
        rows = [
            (_("Content"), para(_("not available: the gateway could not read the message"))),
            (_("Size"), para(doc.size(m.get("size")))),
            (_("SHA-256 of the message as received"), hash_block(m.get("sha256"))),
        ]
        return [*head, kv_table(rows)]
    rows = [
        (_("Subject"), para(m.get("subject"), cap=CAP_LINE, empty=_("(no subject)"))),
        (_("Date field"), para(m.get("date"))),
        (_("Message-ID"), para(m.get("message_id"))),
        (_("From"), para(m.get("from"))),
        (_("To"), para(_addresses(doc, m.get("to")), cap=CAP_CELL)),
        (_("Cc"), para(_addresses(doc, m.get("cc")), cap=CAP_CELL)),
        (_("Size"), para(doc.size(m.get("size")))),
        (_("SHA-256 of the message as received"), hash_block(m.get("sha256"))),
    ]
    added = [clean(name, 100) for name in as_list(m.get("added_fields"))]
    if added:
        rows.append(
            (
                _("Header fields added by the gateway"),
                sentence(
                    _(
                        "%(fields)s: the message as submitted had none (RFC 6409, section 8). "
                        "The SHA-256 above is of the message as received, without them; the "
                        "SHA-256 of each delivered copy includes them."
                    )
                    % {"fields": ", ".join(added)},
                    "value",
                ),
            )
        )
    defects = as_list(m.get("defects"))
    if defects:
        shown = "; ".join(clean(d, 200) for d in defects[:20])
        rows.append((_("Defects in the MIME structure"), para(shown, cap=CAP_LINE)))
    return [*head, kv_table(rows), *_attachments(doc)]


def _attachments(doc: Document) -> list[Flowable]:
    _ = doc._
    items = as_list(as_dict(doc.ev.get("message")).get("attachments"))
    out = heading(_("Attached files"), "h3")
    if not items:
        return [*out, trusted(escape(_("The message has no attached files.")), "note")]
    rows: list[list[Flowable | str]] = []
    spans: list[tuple[Any, ...]] = []
    sha_label = _("SHA-256")
    for raw in items[:CAP_ROWS]:
        a = as_dict(raw)
        top = 1 + len(rows)  # row 0 is the header; an invoice adds a row
        rows.append(
            [
                para(a.get("filename"), "cell", empty=_("(no name)")),
                para(a.get("content_type"), "cell"),
                para(doc.size(a.get("size")), "cell"),
            ]
        )
        # The hash gets a row of its own, the full table width, so it stays whole.
        rows.append(
            [
                Table(
                    [[trusted(escape(sha_label), "cell"), hash_block(a.get("sha256"))]],
                    colWidths=[20 * mm, WIDTH - 24 * mm],
                    hAlign="LEFT",
                    style=[
                        base_font(),
                        ("LEFTPADDING", (0, 0), (-1, -1), 0),
                        ("TOPPADDING", (0, 0), (-1, -1), 0),
                    ],
                ),
                "",
                "",
            ]
        )
        spans.append(("SPAN", (0, top + 1), (-1, top + 1)))
        spans.append(("LINEBELOW", (0, top), (-1, top), 0, colors.white))
        invoice = as_dict(a.get("invoice"))
        if invoice:  # the invoice in words, on the attachment's own entry
            rows.append(
                [sentence(invoices.invoice_sentence(_, doc.reader, invoice), "cell"), "", ""]
            )
            row = len(rows)  # the header is row 0
            spans.append(("SPAN", (0, row), (-1, row)))
            spans.append(("LINEBELOW", (0, row - 1), (-1, row - 1), 0, colors.white))
    table = grid_table(
        [_("File name"), _("Type"), _("Size")],
        rows,  # type: ignore[arg-type]
        [WIDTH * 0.5, WIDTH * 0.3, WIDTH * 0.2],
        spans,
    )
    return [*out, table, *_more_note(doc, len(items)), *_invoice_details(doc, items[:CAP_ROWS])]


def _invoice_details(doc: Document, items: list[Any]) -> list[Flowable]:
    """Every field read from each attached invoice, its signature and any problem."""
    _ = doc._
    out: list[Flowable] = []
    for raw in items:
        a = as_dict(raw)
        invoice = as_dict(a.get("invoice"))
        if not invoice:
            continue
        out += heading(
            _("Invoice in the attached file %(file)s")
            % {"file": clean(a.get("filename"), CAP_SHORT) or _("(no name)")},
            "h3",
        )
        rows = [
            (label, para(value, cap=CAP_LINE))
            for label, value in invoices.details(_, doc.reader, invoice)
        ]
        out.append(kv_table(rows))
    return out


_STATUS = {
    "delivered": N_("Accepted by the recipient's mail server"),
    "failed": N_("Not delivered"),
    "bounced": N_("Accepted, then reported as not delivered"),
    "withdrawn": N_("Withdrawn by the operator before delivery"),
    "queued": N_("Not yet delivered"),
    "deferred": N_("Not yet delivered"),
}


def _annex_delivery(doc: Document) -> list[Flowable]:
    _ = doc._
    items = [r for r in as_list(doc.ev.get("recipients")) if not sms_pages.is_sms(r)]
    out = annex_heading(doc, "delivery", _("Delivery to each recipient"))
    if not items:
        return [*out, trusted(escape(_("The evidence lists no recipients.")), "note")]
    for raw in items[:CAP_RECIPIENTS]:
        r = as_dict(raw)
        status = r.get("status")
        known = _STATUS.get(status) if isinstance(status, str) else None
        host = clean(r.get("mx_host"), CAP_SHORT)
        ip = clean(r.get("ip"), 100)
        port = clean(r.get("port"), 10)
        where = host
        if ip and ip != host:
            where += f" [{ip}]"
        elif ip and not host:
            where = ip
        if port:
            where = _("%(server)s, port %(port)s") % {"server": where or "—", "port": port}
        attempts = r.get("attempts")
        rows = [
            (_("Result"), para(_(known) if known else clean(status, 100))),
            (_("Date and time"), para(doc.moment(r.get("time")))),
            (_("Recipient's mail server"), para(where)),
            (_("The server's answer"), para(_reply(r.get("reply")), cap=CAP_LINE + 40)),
            (_("The server's reference"), para(r.get("remote_qid"))),
            (_("Encryption (TLS)"), para(_tls(doc, r.get("tls")) if host or ip else "")),
            (
                _("Delivery attempts"),
                para(
                    doc.reader.number(attempts)
                    if isinstance(attempts, int) and not isinstance(attempts, bool)
                    else clean(attempts, 20)
                ),
            ),
            (_("SHA-256 of the copy delivered"), hash_block(r.get("delivered_sha256"))),
        ]
        if r.get("note"):
            rows.append((_("Note"), para(r.get("note"), cap=CAP_LINE)))
        if r.get("restored_from"):
            rows.append((_("Possible duplicate"), para(_restored_note(doc, r))))
        tracking = as_dict(r.get("tracking"))
        if tracking:
            rows.append(
                (
                    _("Tracking"),
                    sentence(
                        _("Its copy carried tracking links and a tracking image.")
                        if tracking.get("tracked")
                        else _("Its copy was not tracked."),
                        "value",
                    ),
                )
            )
        block: list[Flowable] = [
            para(r.get("address"), "h3", empty=_("(no address)")),
            kv_table(rows),
        ]
        block += _copy_changes(doc, r.get("copy"))
        out.append(KeepTogether(block))
    if len(items) > CAP_RECIPIENTS:
        out += _more_note(doc, len(items), CAP_RECIPIENTS)
    return out


def _restored_note(doc: Document, r: dict[str, Any]) -> str:
    """Delivery is at least once: the gateway was restored from a backup made while this
    recipient was still to be tried (README, "Backups and restore")."""
    return doc._(
        "The service was restored from a copy of its data made on %(time)s, when this "
        "message was still on its way to this recipient. It may have been delivered before "
        "the restore as well, so the recipient may have received it twice."
    ) % {"time": doc.moment(r.get("restored_from"))}


def _copy_changes(doc: Document, copy: object) -> list[Flowable]:
    """How a recipient's delivered copy differs from the message as received."""
    _ = doc._
    recipe = as_dict(copy)
    if not recipe:
        return []
    changes = [as_dict(c) for c in as_list(recipe.get("changes"))[:CAP_ROWS]]
    if not changes:
        text = _(
            "The copy delivered to this recipient can be rebuilt exactly from the attached "
            "message and the evidence record (certifica verify does it)."
        )
        return [Spacer(1, 1 * mm), sentence(text, "note")]
    intro = _(
        "The copy delivered to this recipient differs from the message as received as "
        "follows; it can be rebuilt exactly from the attached message and the evidence "
        "record (certifica verify does it):"
    )
    return [
        Spacer(1, 1 * mm),
        sentence(intro, "note"),
        *bullets([words.change_sentence(_, c) for c in changes], "note"),
    ]


def _annex_tracking(doc: Document) -> list[Flowable]:
    """Opens and clicks (the addendum), each with its classification and why."""
    _ = doc._
    tracking = as_dict(doc.ev.get("tracking"))
    out = annex_heading(doc, "tracking", _("Opens and clicks"))
    before = as_dict(tracking.get("reported_before"))
    if before:
        out.append(
            sentence(
                _(
                    "Earlier opens and clicks are in certificate %(id)s and its earlier "
                    "addenda; this document lists those recorded since."
                )
                % {"id": clean(before.get("certificate_id"), 100) or "—"},
                "note",
            )
        )
    items = as_list(tracking.get("events"))
    if not items:
        return [*out, trusted(escape(_("No opens or clicks were recorded.")), "note")]
    grid: list[list[Flowable]] = []
    for raw in items[:CAP_ROWS]:
        e = as_dict(raw)
        if e.get("kind") == "open":
            what = _("Tracking image loaded")
        else:
            what = _("Link %(link)s followed: %(url)s") % {
                "link": clean(e.get("link"), 10),
                "url": clean(e.get("url"), CAP_SHORT),
            }
        verdict = (
            _("Automatic (not by a person)") if e.get("automatic") else _("Likely by a person")
        )
        grid.append(
            [
                para(doc.short_moment(e.get("time")), "cell"),
                para(e.get("recipient"), "cell", empty=""),
                para(what, "cell", cap=CAP_LINE),
                para(f"{clean(e.get('ip'), 100)} {clean(e.get('user_agent'), 300)}", "cell"),
                para(f"{verdict}. {clean(e.get('reason'), 500)}", "cell", cap=CAP_LINE),
            ]
        )
    table = grid_table(
        [
            _("Date and time (%(zone)s)") % {"zone": doc.reader.timezone},
            _("Recipient"),
            _("What"),
            _("From (address, program)"),
            _("Classification"),
        ],
        grid,
        [WIDTH * 0.15, WIDTH * 0.19, WIDTH * 0.2, WIDTH * 0.23, WIDTH * 0.23],
    )
    return [*out, table, *_more_note(doc, len(items))]


def _log_details(doc: Document) -> list[dict[str, Any]]:
    """The detail objects of the evidence log's entries, in timeline order (the two are
    made from the same entries, README "What a certificate holds")."""
    return [
        words.parsed_detail(as_dict(e))
        for e in as_list(as_dict(doc.ev.get("evidence_log")).get("entries"))
    ]


def _event_phrase(doc: Document, entry: dict[str, Any]) -> str:
    """An evidence entry's name; for a phone, in the words of SMS (docs/sms.md)."""
    return sms_pages.event_phrase(doc, entry) or words.event_phrase(doc._, entry.get("event"))


_KEY_VALUE = re.compile(r"\b[a-z_]+=")


def _timeline_detail(doc: Document, entry: dict[str, Any], structured: dict[str, Any]) -> str:
    if structured:
        return words.event_details(doc._, entry.get("event"), structured, doc.reader.size)
    # Records without the full log: their timeline text is shown unless it is a dump.
    text = clean(entry.get("detail"), CAP_LINE)
    return "" if _KEY_VALUE.search(text) else text


def _annex_timeline(doc: Document) -> list[Flowable]:
    _ = doc._
    items = as_list(doc.ev.get("timeline"))
    details = _log_details(doc)
    aligned = len(details) == len(items)
    rows = []
    for index, raw in enumerate(items[:CAP_ROWS]):
        e = as_dict(raw)
        structured = details[index] if aligned else {}
        rows.append(
            [
                para(doc.short_moment(e.get("time")), "cell"),
                para(_event_phrase(doc, e), "cell"),
                para(e.get("recipient"), "cell", empty=""),
                para(_timeline_detail(doc, e, structured), "cell", cap=CAP_LINE * 2, empty=""),
            ]
        )
    table = grid_table(
        [
            _("Date and time (%(zone)s)") % {"zone": doc.reader.timezone},
            _("Event"),
            _("Recipient"),
            _("Details"),
        ],
        rows,
        [WIDTH * 0.16, WIDTH * 0.22, WIDTH * 0.22, WIDTH * 0.4],
    )
    return [
        *annex_heading(doc, "timeline", _("Timeline")),
        table,
        *_more_note(doc, len(items)),
    ]


def _annex_log(doc: Document) -> list[Flowable]:
    _ = doc._
    log = as_dict(doc.ev.get("evidence_log"))
    items = as_list(log.get("entries"))
    out = [
        *annex_heading(doc, "log", _("Evidence log")),
        sentence(
            _(
                "The gateway keeps every event in a hash chain: the SHA-256 of each entry "
                "covers the one before it, so no entry can be removed or altered without "
                "breaking the chain. These are the entries about this message."
            ),
            "note",
        ),
        Spacer(1, 1.5 * mm),
    ]
    rows = [(_("Last entry of the chain (SHA-256)"), hash_block(log.get("head")))]
    checkpoint = as_dict(log.get("checkpoint"))
    if checkpoint:
        rows.append(
            (
                _("Time-stamped checkpoint"),
                sentence(
                    _(
                        "A time-stamp authority (RFC 3161) stamped the chain on %(time)s, "
                        "up to entry %(seq)s."
                    )
                    % {
                        "time": doc.moment(checkpoint.get("time")),
                        "seq": clean(checkpoint.get("seq"), 20),
                    },
                    "value",
                ),
            )
        )
    elif log.get("checkpoint_note"):
        rows.append(
            (
                _("Time-stamped checkpoint"),
                sentence(
                    _(
                        "None covered these entries yet when this document was made; the "
                        "gateway's next checkpoint does."
                    ),
                    "value",
                ),
            )
        )
    out.append(kv_table(rows))
    if items:
        grid = []
        for raw in items[:CAP_ROWS]:
            e = as_dict(raw)
            moment = doc.short_moment(e.get("time"))
            grid.append(
                [
                    para(e.get("seq"), "cell"),
                    para(moment, "cell"),
                    para(_event_phrase(doc, e), "cell"),
                    hash_block(e.get("hash"), "hash"),
                ]
            )
        out += [
            Spacer(1, 2 * mm),
            grid_table(
                [
                    _("No."),
                    _("Date and time (%(zone)s)") % {"zone": doc.reader.timezone},
                    _("Event"),
                    _("SHA-256 of the entry"),
                ],
                grid,
                # The hash column holds four groups of eight digits a line, two lines.
                [WIDTH * 0.06, WIDTH * 0.2, WIDTH * 0.36, WIDTH * 0.38],
            ),
            *_more_note(doc, len(items)),
        ]
    return out


def _annex_text(doc: Document) -> list[Flowable]:
    _ = doc._
    m = as_dict(doc.ev.get("message"))
    text = m.get("text")
    out = annex_heading(doc, "text", _("Text of the message"))
    if not isinstance(text, str) or not text.strip():
        return [*out, trusted(escape(_("The message has no text part.")), "note")]
    notes = []
    if len(text) > CAP_BODY:
        notes.append(
            _("Only the first %(shown)s of %(total)s characters are shown.")
            % {"shown": doc.reader.number(CAP_BODY), "total": doc.reader.number(len(text))}
        )
    if m.get("text_truncated") is True:
        notes.append(_("The gateway recorded a shortened text."))
    if notes:
        notes.append(_("The complete message is the attached message.eml."))
        out.append(trusted(escape(" ".join(notes)), "note"))
    # One flowable per block between blank lines: a TextBlock wraps its lines once and
    # splits at a page end by slicing them, whatever its length.
    body = clean(text, CAP_BODY, multiline=True)
    style = styles()["body"]
    for block in body.split("\n\n"):
        if block.strip():
            out.append(TextBlock(block, style))
        out.append(Spacer(1, 4))
    return out


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _runs(template: str, mono: dict[str, str]) -> tuple[tuple[str | None, str], ...]:
    """A translated sentence as runs: the placeholders' values (commands, file names)
    in the mono font, the rest in the text font. The sentence stays whole in the
    catalog, so its word order is the translator's."""
    font = fonts()[2]
    runs: list[tuple[str | None, str]] = []
    position = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > position:
            runs.append((None, template[position : match.start()]))
        runs.append((font, mono.get(match.group(1), match.group(0))))
        position = match.end()
    if position < len(template):
        runs.append((None, template[position:]))
    return tuple(runs)


def how_to_verify(doc: Document) -> list[Flowable]:
    """Annex: how anyone checks the document, with or without the gateway's software."""
    _ = doc._
    style = styles()["body"]
    out = annex_heading(doc, "verify", _("How to verify"))
    url = clean(as_dict(doc.ev.get("verification")).get("url"), CAP_SHORT)
    if url:
        out += [
            sentence(
                _(
                    "Anyone can check this certificate at %(url)s (the QR code on page 1 "
                    "leads there): the page shows when the provider issued it and its "
                    "SHA-256, and tells whether a PDF file is exactly this certificate."
                )
                % {"url": url},
                "body",
            ),
            Spacer(1, 3),
        ]
    mono = {
        "command": "certifica verify certificate.pdf",
        "hash_command": "sha256sum message.eml",
        "message": "message.eml",
        "evidence": "evidence.json",
        "annex": doc.annex("message"),
    }
    seal = _(
        "This PDF carries an electronic seal (PAdES, ETSI EN 319 142) and an RFC 3161 "
        "time-stamp of the seal. The command %(command)s checks that the seal covers the "
        "whole file and is intact, that the seal certificate leads to a trusted "
        "authority, and that the time-stamp is valid."
    )
    out.append(RunsBlock(_runs(seal, mono), style))
    out.append(Spacer(1, 3))
    if doc.lost:
        files = _(
            "No %(message)s is attached (see page 1); the attached %(evidence)s holds the "
            "evidence in machine-readable form."
        )
    else:
        files = _(
            "The original message is attached to this PDF as %(message)s: its SHA-256 "
            "(%(hash_command)s) must equal the SHA-256 of the message as received in "
            "annex %(annex)s, read without the spaces. The attached %(evidence)s holds "
            "the same evidence in machine-readable form."
        )
    out.append(RunsBlock(_runs(files, mono), style))
    return out


# --- the whole ------------------------------------------------------------------------


_Section = Callable[[Document], list[Flowable]]


def _annexes(doc: Document) -> list[tuple[str, _Section]]:
    reception = doc.outcome == Outcome.RECEPTION
    sections: list[tuple[str, _Section]] = []
    if reception:
        sections.append(("reception", _annex_reception))
    sections += [("submission", _annex_submission), ("message", _annex_message)]
    if not reception and not sms_only(doc.ev):
        sections.append(("delivery", _annex_delivery))
    if as_dict(doc.ev.get("sms")):
        sections.append(("sms", sms_pages.annex))
    if as_dict(doc.ev.get("tracking")):
        sections.append(("tracking", _annex_tracking))
    if as_list(doc.ev.get("timeline")):
        sections.append(("timeline", _annex_timeline))
    if as_dict(doc.ev.get("evidence_log")):
        sections.append(("log", _annex_log))
    if not doc.lost:
        sections.append(("text", _annex_text))
    sections.append(("verify", how_to_verify))
    return sections


def letter(index: int) -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[index] if index < 26 else str(index + 1)


def story(doc: Document) -> list[Flowable]:
    """Every flowable of the document: page 1, then the annexes."""
    sections = _annexes(doc)
    doc.annexes = {name: letter(i) for i, (name, _) in enumerate(sections)}
    out = [
        *_title_block(doc),
        *_statement(doc),
        *_decision(doc),
        *_identity(doc),
        *_what_happened(doc),
        *_seal(doc),
    ]
    for _name, section in sections:
        out += section(doc)
    return out


def fallback_story(doc: Document) -> list[Flowable]:
    """A plainer document, for evidence some reportlab change could not lay out."""
    _ = doc._
    m = as_dict(doc.ev.get("message"))
    doc.annexes = {"message": "", "verify": "A"}
    return [
        trusted(escape(_(title_id(doc.ev))), "title"),
        kv_table(
            [
                (_("Certificate number"), para(doc.ev.get("certificate_id"), cap=100)),
                (_("Issued on"), para(doc.moment(doc.ev.get("issued_at")))),
                (_("Subject"), para(m.get("subject"), cap=200)),
                (_("SHA-256 of the message as received"), hash_block(m.get("sha256"))),
            ]
        ),
        trusted(
            escape(
                _(
                    "The full evidence could not be laid out on the page; it is in the "
                    "attached evidence.json, and the message in message.eml."
                )
            ),
            "note",
        ),
        *how_to_verify(doc),
    ]
