"""The evidence record (``certifica-evidence/1``): everything a certificate states, as
JSON-ready data (``evidence.json`` inside the PDF).

It is built from the store alone: the message's row, each recipient's outcome, the
opens and clicks, and the evidence log with the RFC 3161 checkpoint covering it
(:mod:`relay.certify.checkpoints`), so ``certifica verify`` recomputes it offline
(:mod:`certifier.verify`). The documents (:mod:`relay.certify.documents`) add what is
particular to a reception certificate or an addendum.

A message with SMS recipients (docs/sms.md, "The certificate") also has a top-level
``sms`` object (the text exactly as sent, its SHA-256, alphabet, segments and their
octets, the sender ID, who was skipped and why), and each SMS recipient an ``sms``
object: its number, every ``submit_sm`` of every part with the SMSC's answer, every
operator receipt raw and parsed, and the outcome in one word (:func:`sms_outcome`).
"""

from __future__ import annotations

import functools
import json
import time
from datetime import UTC, datetime
from typing import Any

from certifier import evidence as evidence_log
from relay.certify.checkpoints import evidence_log_section
from relay.config import Config
from relay.queue.sms import NO_RECEIPT
from relay.queue.store import Store
from relay.sms.numbers import is_sms_address
from relay.sms.smpp import COMMAND_STATUS

DELIVERED_RECEIPT = "DELIVRD"


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def build_evidence(
    cfg: Config, store: Store, row: dict[str, Any], tracking_after: int = 0
) -> dict[str, Any]:
    """Everything the certificate states, as JSON-ready data (``evidence.json``);
    opens and clicks only after event ``tracking_after`` (those are in an earlier
    document)."""
    qid = row["qid"]
    recipients = await store.recipients(qid)
    hosted = {h["recipient_id"]: h for h in await store.hosted_links_of(qid)}  # docs/hosted.md
    entries = await store.evidence_for(qid)
    summary = row.get("summary")
    sms = await store.sms_message(qid)
    sms_recipients = (
        await _sms_recipients(store, qid, recipients, cfg.gateway.domain) if sms else {}
    )
    record: dict[str, Any] = {
        "format": "certifica-evidence/1",
        "kind": "sending",
        "certificate_id": row["cert_id"],
        "queue_id": qid,
        "issued_at": iso(time.time()),
        "gateway": {
            "hostname": cfg.gateway.hostname,
            "domain": cfg.gateway.domain,
            "software": f"Certifica {_version()}",
        },
        "provider": provider_evidence(cfg),
        "sender": {
            "envelope_from": row["sender"]
            if row.get("envelope_from") is None
            else row["envelope_from"],
            "header_from": None,
            "authentication": json.loads(row["authentication"])
            if row.get("authentication")
            else None,
            "authenticated_user": row["auth_user"],
            "client_ip": row["client_ip"],
            "client_helo": row["client_helo"],
            "tls": {"version": row["tls_version"], "cipher": row["tls_cipher"]}
            if row["tls_version"]
            else None,
            "method": row["method"],
        },
        "message": {
            "sha256": row["sha256"],
            "size": row["size"],
            "summary_pending": summary is None,
            # Header fields the gateway added on the way out (RFC 6409 §8): the
            # received hash is of the message without them, the delivered one with.
            "added_fields": next(
                (
                    list(e.detail.get("added_fields") or [])
                    for e in entries
                    if e.event == "SubmissionAcceptance"
                ),
                [],
            ),
        },
        "recipients": [
            {
                "address": r["address"],
                "status": r["status"],
                "time": iso(r["last_attempt"]),
                "mx_host": r["mx_host"],
                "ip": r["ip"],
                "port": r["port"],
                "reply": {
                    "code": r["reply_code"],
                    "enhanced": r["reply_enhanced"],
                    "text": r["reply_text"],
                },
                "remote_qid": r["remote_qid"],
                "tls": {"version": r["tls_version"], "cipher": r["tls_cipher"]}
                if r["tls_version"]
                else None,
                "attempts": r["attempts"],
                "delivered_sha256": r["delivered_sha256"],
                # How to rebuild the delivered copy from message.eml (certifier.copies).
                "copy": json.loads(r["delivered_copy"]) if r.get("delivered_copy") else None,
                "note": r["note"],
                # Pending in the backup a restore started from (relay/queue/backup.py).
                **(
                    {"restored_from": iso(r["restored_from"])}
                    if r.get("restored_from") is not None
                    else {}
                ),
                "tracking": None
                if r.get("tracked") is None
                else {
                    "tracked": bool(r["tracked"]),
                    "notes": json.loads(r["tracking_notes"] or "[]"),
                },
                **({"hosted": hosted_evidence(hosted[r["id"]])} if r["id"] in hosted else {}),
                **({"sms": sms_recipients[r["id"]]} if r["id"] in sms_recipients else {}),
            }
            for r in recipients
        ],
        "tracking": await _tracking_evidence(cfg, store, row, tracking_after),
        "timeline": [
            {
                "time": iso(e.time),
                "event": e.event,
                "recipient": e.recipient,
                "detail": _timeline_detail(e),
            }
            for e in entries
        ],
        # The timeline's entries in full (every hashed field) and the RFC 3161
        # checkpoint covering them, so a verifier recomputes them offline.
        "evidence_log": await evidence_log_section(store, entries),
    }
    if sms:
        record["sms"] = sms_evidence(sms, cfg.sms.receipt_timeout)
        record["sms"]["queue_lifetime"] = cfg.queue.lifetime
        if not record["sms"]["parts"]:  # retention cleared the octets (docs/retention.md)
            record["sms"]["segments"] = await _segments_sent(store, qid)
    return record


def sms_evidence(row: dict[str, Any], receipt_timeout: float) -> dict[str, Any]:
    """What a message's SMS recipients were sent (its ``sms_messages`` row): the text
    exactly as sent (None once erased; the SHA-256 stays), how it was encoded, each
    part's ``short_message`` octets in hexadecimal (UDH included), the sender ID, and
    who was not sent to and why."""
    parts = [str(p).lower() for p in row["parts"]]
    return {
        "text": row["text"],
        "text_sha256": row["text_sha256"],
        "alphabet": _alphabet(row["alphabet"]),
        "data_coding": row["data_coding"],
        "esm_class": row["esm_class"],
        "segments": len(parts),
        "units": row["units"],
        "parts": parts,
        "sender_id": row["sender_id"],
        "marketing": bool(row["marketing"]),
        "skipped": [
            {
                "address": str(s.get("address") or ""),
                "name": str(s.get("name") or ""),
                "group": str(s.get("group") or ""),
                "reason": str(s.get("reason") or ""),
                "why": str(s.get("why") or ""),
            }
            for s in row["skipped"]
            if isinstance(s, dict)
        ],
        "receipt_timeout": receipt_timeout,
    }


def _alphabet(value: object) -> str:
    """``gsm`` or ``ucs2`` however the row names it (``GSM 7-bit``, ``UCS-2``)."""
    text = str(value).lower()
    if text.startswith("gsm"):
        return "gsm"
    if text.startswith("ucs"):
        return "ucs2"
    return text


async def _segments_sent(store: Store, qid: str) -> int:
    """How many parts the text had, from the parts submitted (once its octets are gone)."""
    return max((p["seq"] for p in await store.sms_parts_of(qid)), default=0)


async def _sms_recipients(
    store: Store, qid: str, recipients: list[dict[str, Any]], domain: str
) -> dict[int, dict[str, Any]]:
    """Each SMS recipient's ``sms`` object, by recipient id."""
    parts = await store.sms_parts_of(qid)
    receipts = await store.sms_receipts_of(qid)
    out = {}
    for r in recipients:
        if not is_sms_address(r["address"], domain):
            continue
        mine = [p for p in parts if p["recipient_id"] == r["id"]]
        got = [x for x in receipts if x["recipient_id"] == r["id"]]
        out[r["id"]] = sms_recipient_evidence(r, mine, got)
    return out


def sms_recipient_evidence(
    r: dict[str, Any], parts: list[dict[str, Any]], receipts: list[dict[str, Any]]
) -> dict[str, Any]:
    """One SMS recipient: its number, every ``submit_sm`` of its parts and the SMSC's
    answer, every operator receipt (raw and parsed, the operator's times as written:
    ``YYMMDDhhmm``, its clock; ``final`` when it ended its part), and the outcome in
    one word (:func:`sms_outcome`)."""
    outcome, failure = sms_outcome(r, parts, receipts)
    accepted = [p["answered"] for p in parts if p["state"] == "accepted" and p["answered"]]
    finals = _final_receipt_ids(parts)
    decided = [x["received"] for x in receipts if x["id"] in finals]
    return {
        "number": r["address"].rpartition("@")[0],
        "outcome": outcome,
        "possible_duplicate": any(p["maybe_duplicate"] for p in parts),
        "submitted_at": iso(max(accepted)) if accepted else None,
        "receipt_at": iso(max(decided)) if decided else None,
        **({"failure": failure} if failure else {}),
        "parts": [
            {
                "seq": p["seq"],
                "attempt": p["attempt"],
                "message_id": p["message_id"],
                "submitted_at": iso(p["started"]),
                "answered_at": iso(p["answered"]),
                "state": p["state"],
                "command_status": p["command_status"],
                "sentence": p["sentence"],
                "maybe_duplicate": bool(p["maybe_duplicate"]),
            }
            for p in parts
        ],
        "receipts": [
            {
                "seq": x["seq"],
                "message_id": x["message_id"],
                "state": x["state"],
                "submit_date": x["submit_date"],
                "done_date": x["done_date"],
                "error": x["error"],
                "received_at": iso(x["received"]),
                "raw": bytes(x["raw"]).hex(),
                "final": x["id"] in finals,
            }
            for x in receipts
        ],
    }


def _final_receipt_ids(parts: list[dict[str, Any]]) -> set[int]:
    """The receipts that ended a part (``sms_parts.receipt_id``, set by
    :func:`relay.queue.sms.record_receipt` for a final state only): an intermediate
    notification (``esm_class`` 0x20, ACCEPTD) or an ENROUTE never ends one."""
    return {int(p["receipt_id"]) for p in parts if p.get("receipt_id") is not None}


def status_name(command_status: int | None) -> str | None:
    """A ``command_status``'s name in SMPP 3.4 section 5.1.3 (``ESME_RINVDSTADR``);
    None when there is none or the standard names none."""
    if command_status is None:
        return None
    return COMMAND_STATUS.get(command_status, ("", ""))[0] or None


def _answer(part: dict[str, Any] | None, sentence: str | None) -> dict[str, Any]:
    """The SMSC's answer to ``part`` as a ``failure``: its status, named, and in words."""
    status = part["command_status"] if part else None
    return {
        "seq": part["seq"] if part else None,
        "command_status": status,
        "status_name": status_name(status),
        "sentence": sentence,
    }


def sms_outcome(
    r: dict[str, Any], parts: list[dict[str, Any]], receipts: list[dict[str, Any]]
) -> tuple[str, dict[str, Any] | None]:
    """What became of an SMS recipient, in one word, and what decided a failure:

    ``delivered`` every part's final receipt is DELIVRD; ``no_receipt`` sent, no
    receipt within ``[sms] receipt_timeout``; ``undelivered`` a part's final receipt is
    another state (which one: ``failure``); ``refused`` the SMSC refused a part (its
    answer: ``failure``); ``not_sent`` no part was refused and no receipt was negative,
    but the message's queue lifetime ran out before the SMSC took every part (it could
    not be reached, or kept throttling: the last answer is ``failure``); ``withdrawn``
    by the operator; ``pending`` not ended.

    Only the final receipts decide (:func:`_final_receipt_ids`): an intermediate
    notification such as ACCEPTD is shown, never taken for the end."""
    status = r["status"]
    if status == "withdrawn":
        return "withdrawn", None
    if status == "delivered":
        if (r.get("note") or "").startswith(NO_RECEIPT):
            return "no_receipt", None
        return "delivered", None
    if status not in ("failed", "bounced"):
        return "pending", None
    finals = _final_receipt_ids(parts)
    ended = sorted((x for x in receipts if x["id"] in finals), key=lambda x: (x["seq"], x["id"]))
    for x in ended:
        if x["state"] != DELIVERED_RECEIPT:
            return "undelivered", {"seq": x["seq"], "state": x["state"], "error": x["error"]}
    refused = [p for p in parts if p["state"] == "failed"]
    if refused:
        last = refused[-1]
        return "refused", _answer(last, last["sentence"] or r.get("reply_text"))
    tried = sorted((p for p in parts if p["state"] != "accepted"), key=lambda p: p["id"])
    return "not_sent", _answer(tried[-1] if tried else None, r.get("reply_text"))


def hosted_evidence(link: dict[str, Any]) -> dict[str, Any]:
    """What became of a recipient's hosted link (docs/hosted.md): the mode, the link's
    expiry, when the content was handed over or the link expired, the decision."""
    return {
        "mode": link["mode"],
        "state": link["state"],
        "expires": iso(link["expires"]),
        "handed_over_at": iso(link["handed_over_at"]),
        "expired_at": iso(link["expired_at"]),
        "decision": link["decision"],
        "decided_at": iso(link["decided_at"]),
        **_first_handover(link.get("handover_detail")),
    }


def _first_handover(detail: str | None) -> dict[str, Any]:
    """The first opening's context page 1 shows: person or machine, and whether a
    one-time code bound it to the mailbox (its full detail is in the evidence log)."""
    try:
        d = json.loads(detail) if detail else None
    except ValueError:
        d = None
    if not isinstance(d, dict):
        return {}
    return {
        "handover": {
            "automatic": bool(d.get("automatic")),
            "reason": str(d.get("reason") or ""),
            "code_checked": bool(d.get("code_checked")),
        }
    }


def provider_evidence(cfg: Config) -> dict[str, str]:
    """``[provider]``: who issues the document and under which policy (page 1 says it)."""
    p = cfg.provider
    return {
        "name": p.name,
        "legal_id": p.legal_id,
        "address": p.address,
        "website": p.website,
        "contact": p.contact,
        "policy_id": p.policy_id,
        "policy_url": p.policy_url,
    }


async def _tracking_evidence(
    cfg: Config, store: Store, row: dict[str, Any], after: int
) -> dict[str, Any] | None:
    if not row.get("tracking"):
        return None
    events = await store.tracking_events(row["qid"], after)
    return {
        "enabled": True,
        "public_url": cfg.web.public_url,
        "last_event_id": max([e["id"] for e in events], default=after),
        "reported_before": {"until_event": after, "certificate_id": row["cert_id"]}
        if after
        else None,
        "events": [
            {
                "time": iso(e["time"]),
                "recipient": e["address"],
                "kind": e["kind"],
                "link": e["link"],
                "url": e["url"],
                "ip": e["ip"],
                "user_agent": e["user_agent"],
                "method": e["method"],
                "automatic": bool(e["automatic"]),
                "reason": e["reason"],
            }
            for e in events
        ],
    }


def late_bounce_addendum(parent: dict[str, Any], dsn: dict[str, Any]) -> dict[str, Any]:
    """The evidence fields that make a message's evidence the addendum about the late
    delivery report ``dsn`` (a row of kind dsn) that came back for it."""
    return {
        "kind": "addendum",
        "certificate_id": dsn["cert_id"],
        "addendum_of": parent["cert_id"],
        "late_bounce": {
            "dsn_queue_id": dsn["qid"],
            "dsn_sha256": dsn["sha256"],
            "reports": json.loads(dsn["summary"] or "{}").get("reports", []),
        },
    }


def reception_evidence(detail: dict[str, Any]) -> dict[str, Any]:
    """What a reception certificate states about the arrival, JSON-ready."""
    return {
        "owner": detail.get("owner"),
        "arrived_at": iso(detail.get("arrived_at")),
        "envelope": detail.get("envelope"),
        "original_from": detail.get("original_from"),
        "trace": detail.get("trace"),
        "arc": detail.get("arc"),
        "receipt": detail.get("receipt"),
    }


def _timeline_detail(entry: evidence_log.Entry) -> str:
    d = entry.detail
    if d.get("late"):
        by = f" (reported by {d['reporting_mta']})" if d.get("reporting_mta") else ""
        status = d.get("status") or ""
        return f"delivery report after acceptance: {d.get('action')} {status} {d.get('diagnostic', '')}{by}"
    if entry.event in ("RelayToNonERDS", "RelayToNonERDSFailure", "RelayAttemptDeferred"):
        where = f" via {d.get('mx_host')}[{d.get('ip')}]:{d.get('port')}" if d.get("ip") else ""
        note = f"; {d['note']}" if d.get("note") else ""
        return f"{d.get('reply', '')}{where}{note}"
    if entry.event == "SubmissionAcceptance":
        return f"accepted as {entry.qid}, {d.get('size')} bytes, sha256 {d.get('sha256')}"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))


@functools.cache
def _version() -> str:
    """The installed version, read once (importlib.metadata reads files every call)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("certifica")
    except PackageNotFoundError:
        return "development"
