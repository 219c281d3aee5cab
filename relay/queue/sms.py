"""Certified SMS in the queue (docs/sms.md): the text a message's SMS recipients are
sent, each ``submit_sm`` of each part, the operators' delivery receipts matched to them,
and the messages phones send back (MO).

An SMS recipient is a row of ``recipients`` like any other (its address
``+34600111222@sms.<gateway domain>``, its domain the SMS domain), leased and retried
by the same queue. What differs is how an attempt ends: when the SMSC took every part
the recipient is ``submitted`` (not final), and the operator's receipts, or
``[sms] receipt_timeout`` without one, make it final.

The writes, each one transaction:

- :meth:`SmsQueue.sms_start_attempt`: one ``submitting`` row per part still to be sent,
  committed before its ``submit_sm`` leaves, so a crash leaves a trace and the next
  submit of that part is marked ``maybe_duplicate`` (the SMSC may have taken it).
- :meth:`SmsQueue.record_sms_attempt`: each part's :class:`~relay.sms.smpp.SubmitResult`
  (evidence ``SmsSubmitted`` or ``SmsSubmitFailed``), then the recipient's new state:
  ``submitted`` when every part was accepted (over all attempts: a retry sends only
  the parts not yet accepted); ``failed`` when the SMSC refused a part for good (its
  credits refunded when no part was ever accepted); otherwise ``deferred`` with the
  mail's backoff, ``failed`` once the message expires.
- :meth:`SmsQueue.record_sms_receipt`: the receipt kept raw, matched to its part by
  :func:`relay.sms.inbound.match_key` (a receipt that comes before its part's acceptance
  is committed waits unmatched, and is matched when the acceptance is recorded),
  evidence ``SmsDeliveryReceipt``; when every part has a final receipt the recipient is
  ``delivered`` (all DELIVRD) or ``failed`` (credits spent: a wrong but valid number
  costs). Intermediate notifications (ENROUTE, esm_class 0x20) are kept, not final. A
  receipt that cannot be read or matched is kept unmatched, never refused: only a
  failure of the database itself makes the SMSC send it again.
- :meth:`SmsQueue.record_sms_broken`: an attempt that failed on the gateway's side
  (say, the SMSC's answer could not be recorded) counts as an attempt: deferred with
  the backoff, failed once the message expires, never submitted again at once.
- :meth:`SmsQueue.sms_receipt_timeouts`: ``submitted`` recipients whose last part was
  accepted more than ``[sms] receipt_timeout`` ago are ``delivered`` with the note
  :data:`NO_RECEIPT` (the certificate says so).
- Messages from phones (``sms_inbound``) are recorded by ``relay.sms.optout.handle_mo``
  with the opt-out each made (:mod:`relay.queue.contacts`); :meth:`SmsQueue.sms_inbound`
  reads them.

Final states go through :func:`relay.queue.leases.record_outcomes`, as mail's do:
the ``RelayToNonERDS``/``RelayToNonERDSFailure`` evidence, the credits' settlement and
the reports of plain mail happen in one place.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from relay.logs import log_failure
from relay.queue import evidence_log
from relay.queue.db import Database, query_rows
from relay.queue.leases import record_outcomes
from relay.queue.records import Outcome
from relay.queue.states import RecipientState
from relay.sms.inbound import (
    ESM_INTERMEDIATE,
    ESM_TYPE_MASK,
    DeliveryReceipt,
    ReceiptState,
    match_key,
    receipt_matches,
)
from relay.sms.smpp import Outcome as SubmitOutcome
from relay.sms.smpp import SubmitResult

log = logging.getLogger("certifica/sms")

NO_RECEIPT = "sent, no delivery receipt from the operator"
"""The start of the note of an SMS delivered for want of a receipt (:func:`no_receipt_note`):
what the certificate reads to say the operator never confirmed it."""

SUBMITTING = "submitting"  # sms_parts.state until the submit_sm_resp is recorded

# A final receipt's state in words, for the recipient's reply text.
_STATE_WORDS = {
    ReceiptState.DELIVERED: "delivered to the phone",
    ReceiptState.EXPIRED: "not delivered before it expired",
    ReceiptState.DELETED: "deleted by the operator",
    ReceiptState.UNDELIVERABLE: "undeliverable",
    ReceiptState.ACCEPTED: "accepted by the operator on the phone's behalf, not delivered",
    ReceiptState.UNKNOWN: "in an unknown state",
    ReceiptState.REJECTED: "rejected by the operator",
}


def duration_words(seconds: float) -> str:
    """``172800`` as ``48 hours``; ``90`` as ``90 seconds``."""
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} seconds"


def no_receipt_note(timeout: float) -> str:
    """The note of an SMS sent and never receipted within ``timeout`` seconds."""
    return f"{NO_RECEIPT} within {duration_words(timeout)}"


@dataclass(frozen=True)
class PartAttempt:
    """One part's ``submit_sm`` of an attempt: its ``sms_parts`` row and part number."""

    part_id: int
    seq: int
    maybe_duplicate: bool


@dataclass(frozen=True)
class SmsAttempt:
    """What an attempt on one SMS recipient needs recorded with its results."""

    qid: str
    recipient_id: int
    attempts: int  # the recipient's attempts before this one
    expires: float  # the message's
    next_attempt: float  # when to try again if deferred (the mail's backoff)
    smsc_host: str | None = None
    smsc_port: int | None = None


def _part_count(conn: sqlite3.Connection, qid: str) -> int:
    row = conn.execute("SELECT parts FROM sms_messages WHERE qid = ?", (qid,)).fetchone()
    return len(json.loads(row[0])) if row else 0


def _address(conn: sqlite3.Connection, recipient_id: int) -> str | None:
    row = conn.execute("SELECT address FROM recipients WHERE id = ?", (recipient_id,)).fetchone()
    return str(row[0]) if row else None


def _of_total(seq: int, total: int) -> str:
    return f"part {seq} of {total}: " if total > 1 else ""


def start_attempt(
    conn: sqlite3.Connection, qid: str, recipient_id: int, attempt: int, now: float
) -> list[PartAttempt]:
    """One ``submitting`` row for each part of the recipient not yet accepted."""
    total = _part_count(conn, qid)
    accepted = {
        row[0]
        for row in conn.execute(
            "SELECT seq FROM sms_parts WHERE recipient_id = ? AND state = 'accepted'",
            (recipient_id,),
        )
    }
    out = []
    for seq in range(1, total + 1):
        if seq in accepted:
            continue
        # A submit that never got its answer (the process died while it was out, or
        # the answer was lost): the SMSC may have taken it, so this one may be a copy.
        maybe = conn.execute(
            "SELECT 1 FROM sms_parts WHERE recipient_id = ? AND seq = ?"
            " AND (state = ? OR maybe_duplicate = 1) LIMIT 1",
            (recipient_id, seq, SUBMITTING),
        ).fetchone()
        cursor = conn.execute(
            "INSERT INTO sms_parts (recipient_id, qid, seq, attempt, state, started,"
            " maybe_duplicate) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (recipient_id, qid, seq, attempt, SUBMITTING, now, 1 if maybe else 0),
        )
        out.append(PartAttempt(int(cursor.lastrowid or 0), seq, bool(maybe)))
    return out


def _record_part(
    conn: sqlite3.Connection,
    attempt: SmsAttempt,
    part: PartAttempt,
    result: SubmitResult,
    total: int,
    address: str | None,
    now: float,
) -> None:
    maybe = part.maybe_duplicate or result.maybe_duplicate
    accepted = result.outcome == SubmitOutcome.ACCEPTED
    key = match_key(result.message_id) if accepted else None
    conn.execute(
        "UPDATE sms_parts SET state = ?, answered = ?, message_id = ?, match_key = ?,"
        " command_status = ?, sentence = ?, maybe_duplicate = ? WHERE id = ?",
        (
            str(result.outcome),
            now,
            result.message_id if accepted else None,
            key,
            result.command_status,
            result.sentence or None,
            1 if maybe else 0,
            part.part_id,
        ),
    )
    if accepted:
        detail: dict[str, Any] = {
            "seq": part.seq,
            "total": total,
            "message_id": result.message_id,
            "command_status": result.command_status,
            "maybe_duplicate": maybe,
            "attempt": attempt.attempts + 1,
        }
        evidence_log.append(conn, now, attempt.qid, "SmsSubmitted", detail, recipient=address)
        _match_waiting(conn, part.part_id, result.message_id, str(key), now)
    else:
        detail = {
            "seq": part.seq,
            "total": total,
            "outcome": str(result.outcome),
            "sentence": result.sentence,
            "command_status": result.command_status,
            "maybe_duplicate": maybe,
            "attempt": attempt.attempts + 1,
        }
        evidence_log.append(conn, now, attempt.qid, "SmsSubmitFailed", detail, recipient=address)


def record_attempt(
    conn: sqlite3.Connection,
    attempt: SmsAttempt,
    results: Sequence[tuple[PartAttempt, SubmitResult]],
    now: float,
    owner: str | None,
) -> str:
    """Each part's result, then the recipient's new state (module docstring); returns it."""
    qid, rid = attempt.qid, attempt.recipient_id
    total = _part_count(conn, qid)
    address = _address(conn, rid)
    for part, result in results:
        _record_part(conn, attempt, part, result, total, address, now)
    accepted = conn.execute(
        "SELECT seq, message_id FROM sms_parts WHERE recipient_id = ? AND state = 'accepted'"
        " ORDER BY seq, id",
        (rid,),
    ).fetchall()
    ever_sent = bool(accepted) or bool(
        conn.execute(
            "SELECT 1 FROM sms_parts WHERE recipient_id = ? AND maybe_duplicate = 1 LIMIT 1",
            (rid,),
        ).fetchone()
    )
    refused = [(p, r) for p, r in results if r.outcome == SubmitOutcome.FAILED]
    host, port = attempt.smsc_host, attempt.smsc_port
    if total == 0:  # no text stored: nothing can ever be sent
        status = RecipientState.FAILED
        text = "the message has no SMS text (internal error)"
        out = Outcome(rid, status, None, None, text, refund=not ever_sent)
    elif refused:
        part, result = refused[0]
        status = RecipientState.FAILED
        out = Outcome(
            rid, status, None, None, _of_total(part.seq, total) + result.sentence,
            refund=not ever_sent, mx_host=host, port=port,
        )  # fmt: skip
    elif len({seq for seq, _ in accepted}) >= total:
        status = RecipientState.SUBMITTED
        ids = " ".join(str(m) for _, m in accepted)
        text = "the SMSC took " + ("every part" if total > 1 else "the SMS")
        out = Outcome(rid, status, None, None, text, remote_qid=ids, mx_host=host, port=port)
    else:
        waiting = [
            _of_total(p.seq, total) + r.sentence
            for p, r in results
            if r.outcome != SubmitOutcome.ACCEPTED
        ]
        text = waiting[0] if waiting else "not every part was submitted"
        if now >= attempt.expires:
            status = RecipientState.FAILED
            text = f"retries exhausted after {attempt.attempts + 1} attempts; last: {text}"
            out = Outcome(
                rid, status, None, None, text, refund=not ever_sent, mx_host=host, port=port
            )
        else:
            status = RecipientState.DEFERRED
            out = Outcome(
                rid,
                status,
                None,
                None,
                text,
                next_attempt=attempt.next_attempt,
                mx_host=host,
                port=port,
            )
    record_outcomes(conn, qid, [out], now, owner)
    if status == RecipientState.SUBMITTED:
        _finish_if_receipted(conn, qid, rid, now)  # receipts that came before the commit
    row = conn.execute("SELECT status FROM recipients WHERE id = ?", (rid,)).fetchone()
    return str(row[0]) if row else str(status)


BROKEN_ATTEMPT = "the gateway could not complete the SMS attempt (internal error; see its log)"
"""The reply text of an SMS attempt that failed on the gateway's side (:func:`record_broken`)."""


def record_broken(
    conn: sqlite3.Connection, attempt: SmsAttempt, now: float, owner: str | None
) -> str:
    """An attempt that failed on the gateway's side, not the SMSC's (its answer could
    not be recorded, its text could not be read): counted like any attempt and deferred
    with the backoff, failed once the message expires, so a persistent fault never
    submits the SMS again and again (RFC 5321 section 4.5.4.1's retry strategy, as for
    mail). Its parts stay as they were: one still ``submitting`` makes the next submit
    *maybe duplicate*, and keeps the credits (the SMSC may have taken it)."""
    rid = attempt.recipient_id
    row = conn.execute("SELECT status FROM recipients WHERE id = ?", (rid,)).fetchone()
    if row is None or row[0] == RecipientState.SUBMITTED:
        return str(row[0]) if row else ""  # its attempt was recorded: it failed after
    sent = conn.execute(
        "SELECT 1 FROM sms_parts WHERE recipient_id = ? AND (state IN ('accepted', ?)"
        " OR maybe_duplicate = 1) LIMIT 1",
        (rid, SUBMITTING),
    ).fetchone()
    host, port = attempt.smsc_host, attempt.smsc_port
    if now >= attempt.expires:
        status = RecipientState.FAILED
        text = f"retries exhausted after {attempt.attempts + 1} attempts; last: {BROKEN_ATTEMPT}"
        out = Outcome(rid, status, None, None, text, refund=sent is None, mx_host=host, port=port)
    else:
        status = RecipientState.DEFERRED
        out = Outcome(
            rid, status, None, None, BROKEN_ATTEMPT, next_attempt=attempt.next_attempt,
            mx_host=host, port=port,
        )  # fmt: skip
    record_outcomes(conn, attempt.qid, [out], now, owner)
    row = conn.execute("SELECT status FROM recipients WHERE id = ?", (rid,)).fetchone()
    return str(row[0]) if row else str(status)


def _is_final(state: str | None, esm_class: int) -> bool:
    if state is None or (esm_class & ESM_TYPE_MASK) == ESM_INTERMEDIATE:
        return False
    try:
        return ReceiptState(state).final
    except ValueError:
        return False


def _link(conn: sqlite3.Connection, receipt_id: int, part_id: int, now: float) -> str | None:
    """Match receipt ``receipt_id`` to part ``part_id``; the qid of a recipient made
    final by it, else None."""
    receipt = conn.execute(
        "SELECT message_id, state, submit_date, done_date, error, raw, fields"
        " FROM sms_receipts WHERE id = ?",
        (receipt_id,),
    ).fetchone()
    part = conn.execute(
        "SELECT qid, recipient_id, seq, receipt_state FROM sms_parts WHERE id = ?", (part_id,)
    ).fetchone()
    if receipt is None or part is None:
        return None
    message_id, state, submit_date, done_date, error, raw, fields_json = receipt
    qid, rid, seq, had = part
    fields = json.loads(fields_json)
    final = _is_final(state, int(fields.get("esm_class", 0)))
    conn.execute("UPDATE sms_receipts SET part_id = ? WHERE id = ?", (part_id, receipt_id))
    if final and not _is_final(had, 0):
        conn.execute(
            "UPDATE sms_parts SET receipt_state = ?, receipt_id = ? WHERE id = ?",
            (state, receipt_id, part_id),
        )
    evidence_log.append(
        conn,
        now,
        qid,
        "SmsDeliveryReceipt",
        {
            "message_id": message_id,
            "state": state,
            "final": final,
            "submit_date": submit_date,
            "done_date": done_date,
            "error": error,
            "seq": seq,
            "raw": bytes(raw).hex(),
        },
        recipient=_address(conn, rid),
    )
    return qid if final and _finish_if_receipted(conn, qid, rid, now) else None


def _match_waiting(
    conn: sqlite3.Connection, part_id: int, message_id: str, key: str, now: float
) -> None:
    """Receipts that came before this part's acceptance was committed."""
    for receipt_id, receipt_message_id in conn.execute(
        "SELECT id, message_id FROM sms_receipts WHERE match_key = ? AND part_id IS NULL"
        " ORDER BY id",
        (key,),
    ).fetchall():
        if receipt_matches(message_id, receipt_message_id):
            _link(conn, receipt_id, part_id, now)


def _finish_if_receipted(conn: sqlite3.Connection, qid: str, rid: int, now: float) -> bool:
    """A submitted recipient whose every part has its final receipt becomes delivered
    (all DELIVRD) or failed (credits spent); True when it did."""
    row = conn.execute("SELECT status FROM recipients WHERE id = ?", (rid,)).fetchone()
    if row is None or row[0] != RecipientState.SUBMITTED:
        return False
    total = _part_count(conn, qid)
    finals: dict[int, tuple[str, int]] = {}
    for seq, state, receipt_id in conn.execute(
        "SELECT seq, receipt_state, receipt_id FROM sms_parts"
        " WHERE recipient_id = ? AND state = 'accepted' AND receipt_state IS NOT NULL",
        (rid,),
    ):
        finals[int(seq)] = (str(state), int(receipt_id))
    if len(finals) < total:
        return False
    bad = [(seq, s, r) for seq, (s, r) in sorted(finals.items()) if s != ReceiptState.DELIVERED]
    if not bad:
        done = max(_done_date(conn, r) for _, r in finals.values())
        text = "the operator's receipt says the SMS was delivered to the phone (DELIVRD" + (
            f", done {done})" if done else ")"
        )
        out = Outcome(rid, RecipientState.DELIVERED, None, None, text)
    else:
        seq, state, receipt_id = bad[0]
        error = conn.execute(
            "SELECT error, done_date FROM sms_receipts WHERE id = ?", (receipt_id,)
        ).fetchone()
        words = _STATE_WORDS.get(ReceiptState(state), state.lower())
        extra = f", error {error[0]}" if error and error[0] else ""
        text = (
            f"{_of_total(seq, total)}the operator's receipt says the SMS was {words} "
            f"({state}{extra})"
        )
        out = Outcome(rid, RecipientState.FAILED, None, None, text)
    record_outcomes(conn, qid, [out], now, None, attempt=False)
    return True


def _done_date(conn: sqlite3.Connection, receipt_id: int) -> str:
    row = conn.execute("SELECT done_date FROM sms_receipts WHERE id = ?", (receipt_id,)).fetchone()
    return str(row[0] or "") if row else ""


def record_receipt(conn: sqlite3.Connection, receipt: DeliveryReceipt, now: float) -> str | None:
    """Keep ``receipt`` and match it (module docstring); the qid of a recipient it made
    final, else None."""
    key = match_key(receipt.message_id)
    fields = {
        "message_id": receipt.message_id,
        "state": receipt.state and str(receipt.state),
        "tlv_state": receipt.tlv_state,
        "text": receipt.text_fields,
        "submitted": receipt.submitted,
        "delivered": receipt.delivered,
        "network_error_code": receipt.network_error_code.hex(),
        "source_addr": receipt.source_addr,
        "destination_addr": receipt.destination_addr,
        "esm_class": receipt.esm_class,
        "short_message": receipt.short_message.hex(),
    }
    cursor = conn.execute(
        "INSERT INTO sms_receipts (received, message_id, match_key, state, submit_date,"
        " done_date, error, raw, fields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            now,
            receipt.message_id,
            key,
            receipt.state and str(receipt.state),
            receipt.submit_date or None,
            receipt.done_date or None,
            receipt.error or None,
            receipt.raw or receipt.short_message,
            json.dumps(fields, sort_keys=True),
        ),
    )
    receipt_id = int(cursor.lastrowid or 0)
    # Matching is reading what an SMSC wrote: should it fail on something unforeseen,
    # the receipt stays kept as it came, unmatched, and is acknowledged all the same
    # (sent again, it would fail again, forever). Only the database's own failure is
    # left to the caller (the SMSC is answered a temporary error and sends it again).
    conn.execute("SAVEPOINT sms_receipt_match")
    try:
        qid = _match_receipt(conn, receipt, key, receipt_id, now)
    except sqlite3.Error:
        raise
    except Exception:
        conn.execute("ROLLBACK TO sms_receipt_match")
        conn.execute("RELEASE sms_receipt_match")
        log_failure(log, "sms: a receipt could not be matched; kept unmatched (row %d)", receipt_id)
        return None
    conn.execute("RELEASE sms_receipt_match")
    return qid


def _match_receipt(
    conn: sqlite3.Connection, receipt: DeliveryReceipt, key: str, receipt_id: int, now: float
) -> str | None:
    for part_id, message_id in conn.execute(
        "SELECT id, message_id FROM sms_parts WHERE match_key = ? AND state = 'accepted'"
        " ORDER BY id DESC",
        (key,),
    ).fetchall():
        if receipt_matches(str(message_id), receipt.message_id):
            return _link(conn, receipt_id, int(part_id), now)
    return None  # not (yet) known: matched when its part's acceptance is recorded


def receipt_timeouts(conn: sqlite3.Connection, now: float, timeout: float) -> list[str]:
    """Submitted recipients with no final receipt ``timeout`` seconds after their last
    part was accepted: delivered, with the note; the qids changed."""
    rows = conn.execute(
        "SELECT r.id, r.qid FROM recipients r WHERE r.status = ? AND (SELECT MAX(p.answered)"
        " FROM sms_parts p WHERE p.recipient_id = r.id AND p.state = 'accepted') < ?",
        (str(RecipientState.SUBMITTED), now - timeout),
    ).fetchall()
    note = no_receipt_note(timeout)
    for rid, qid in rows:
        out = Outcome(int(rid), RecipientState.DELIVERED, None, None, note, note=note)
        record_outcomes(conn, str(qid), [out], now, None, attempt=False)
    return sorted({str(qid) for _, qid in rows})


def sms_message_row(conn: sqlite3.Connection, qid: str) -> dict[str, Any] | None:
    """``sms_messages``' row of ``qid`` with ``parts`` and ``skipped`` read from their
    JSON; None when the message has no SMS recipients."""
    rows = query_rows(conn, "SELECT * FROM sms_messages WHERE qid = ?", (qid,))
    if not rows:
        return None
    row = rows[0]
    row["parts"] = json.loads(row["parts"])
    row["skipped"] = json.loads(row["skipped"])
    return row


class SmsQueue(Database):
    """SMS texts, parts, receipts and MO messages (module docstring)."""

    async def sms_start_attempt(
        self, qid: str, recipient_id: int, attempt: int, now: float
    ) -> list[PartAttempt]:
        """Commit a ``submitting`` row for each part of the recipient not yet accepted
        (before any of them is sent); the parts to send now."""
        return await self._run(start_attempt, self._conn, qid, recipient_id, attempt, now)

    async def record_sms_attempt(
        self,
        attempt: SmsAttempt,
        results: Sequence[tuple[PartAttempt, SubmitResult]],
        now: float,
        owner: str | None = None,
    ) -> str:
        """Each part's result and the recipient's new state, in one transaction; returns
        the state (``submitted``, ``deferred``, ``failed``, or ``delivered`` when the
        receipts were there first)."""
        return await self._run(record_attempt, self._conn, attempt, list(results), now, owner)

    async def record_sms_broken(
        self, attempt: SmsAttempt, now: float, owner: str | None = None
    ) -> str:
        """An attempt that failed on the gateway's side: counted, deferred with the
        backoff or failed past the message's expiry (:func:`record_broken`); the state."""
        return await self._run(record_broken, self._conn, attempt, now, owner)

    async def record_sms_receipt(self, receipt: DeliveryReceipt, now: float) -> str | None:
        """Keep a receipt (raw and parsed) and match it to its part; the qid of a
        message whose recipient it made final, else None."""
        return await self._run(record_receipt, self._conn, receipt, now)

    async def sms_receipt_timeouts(self, now: float, timeout: float) -> list[str]:
        """End the submitted recipients with no final receipt within ``timeout``
        seconds of their last accepted part: delivered with :func:`no_receipt_note`."""
        return await self._run(receipt_timeouts, self._conn, now, timeout)

    async def sms_group_numbers(self, org: str, group: str) -> int:
        """How many numbers ``org``'s contacts in ``group`` (lower case) have: what the
        group expands to at most (checked against ``[limits] recipients`` at RCPT)."""
        return await self._read(
            lambda: int(
                self._conn.execute(
                    "SELECT count(DISTINCT c.number) FROM contacts c JOIN contact_groups g"
                    " ON g.contact_id = c.id WHERE c.org = ? AND g.name = ?"
                    " AND c.number IS NOT NULL",
                    (org, group),
                ).fetchone()[0]
            )
        )

    async def sms_inbound(self) -> list[dict[str, Any]]:
        """Every message phones sent, oldest first."""
        return await self._read(
            lambda: query_rows(self._conn, "SELECT * FROM sms_inbound ORDER BY id")
        )

    async def sms_unmatched_receipts(self) -> list[dict[str, Any]]:
        """Receipts no part was found for (yet)."""
        return await self._read(
            lambda: query_rows(
                self._conn, "SELECT * FROM sms_receipts WHERE part_id IS NULL ORDER BY id"
            )
        )

    async def sms_message(self, qid: str) -> dict[str, Any] | None:
        """The SMS text of ``qid`` and its parts (:func:`sms_message_row`)."""
        return await self._read(lambda: sms_message_row(self._conn, qid))

    async def sms_parts_of(self, qid: str) -> list[dict[str, Any]]:
        """Every ``submit_sm`` of every part of ``qid``, by recipient, part, attempt."""
        return await self._read(
            lambda: query_rows(
                self._conn,
                "SELECT * FROM sms_parts WHERE qid = ? ORDER BY recipient_id, seq, id",
                (qid,),
            )
        )

    async def sms_receipts_of(self, qid: str) -> list[dict[str, Any]]:
        """The receipts matched to the parts of ``qid``, in the order they came."""
        return await self._read(
            lambda: query_rows(
                self._conn,
                "SELECT s.*, p.recipient_id, p.seq FROM sms_receipts s"
                " JOIN sms_parts p ON p.id = s.part_id WHERE p.qid = ? ORDER BY s.id",
                (qid,),
            )
        )
