"""Erasing what the gateway holds about one address (GDPR art. 17; ``certifica erase
--subject``), keeping what proves the evidence. docs/erasure.md gives the reasons.

:func:`plan` says what an erasure would do (read only); :func:`erase` does it:

1. it refuses while a message about the address is still in the queue
   (:class:`StillActive`): erasing under a delivery would break it;
2. it deletes the files of the messages about the address: their spool copies
   (``spool/queue``, ``spool/archive``) and the archived PDFs of their documents
   (``certificates/<id>.pdf``), unless the message is under legal hold
   (:mod:`relay.queue.holds`); their hashes stay in the database
   (``messages.sha256``, ``verifications.pdf_sha256``, ``certificate_versions``);
3. in one transaction, with SQLite's ``secure_delete`` on (freed space is overwritten,
   not left in free pages): the address becomes its commitment
   (:func:`relay.queue.subjects.commitment`) wherever a column holds it; the content of
   those messages (``summary``, ``header_section``) and every text naming the address
   is removed; its tracking hits keep their classification but lose the IP address and
   user agent; the evidence entries naming it forget their values
   (:func:`relay.queue.evidence_log.forget`: the chain still verifies); the
   verification page forgets the recipients of those documents
   (:func:`relay.queue.verifications.erase_record`); its user account and reception
   settings are removed; of a phone number (certified SMS): its contacts (with their
   groups) are deleted, the texts of the SMS about it and of the messages it sent are
   cleared, the SMS it was left out of name it by its commitment, its receipts lose
   their raw octets and the number; its opt-outs are kept (:func:`_sms_plan`); an
   ``Erasure`` evidence entry records who, when and the scope (counts and the
   commitment, never the address);
4. the WAL is checkpointed (``TRUNCATE``), so the old pages leave the ``-wal`` file;
   when a reader keeps it from finishing, the result says so (``wal_cleared``) and the
   gateway's next checkpoint completes it.

Files go first: if the command dies before the transaction, or a message about the
address arrives between the two (:class:`StillActive` then says the files went and the
database did not change), running it again finds the rows still naming the address and
finishes. A second run finds nothing and changes
nothing. Messages under legal hold are left entirely as they are (art. 17(3)(e)); the
erasure names them, and a run after the hold is released erases them.

Exceptions::

    StillActive   -- messages about the address are still being delivered or documented
                     (``deleted``: how many files went before one arrived)
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from certifier.errors import UsageError
from relay.queue import evidence_log, holds, subjects, verifications
from relay.queue.archive import archive_lock
from relay.queue.db import Database
from relay.queue.retention import TRACKING_EVENTS, TRACKING_KEPT
from relay.queue.spool import SPOOL_QUEUE
from relay.queue.states import MessageState

ERASURE_EVENT = subjects.ERASURE_EVENT
ERASURE_QID = "erasure"
"""The ``qid`` of an ``Erasure`` entry: it is about an address, not about one message."""

# The message's content: removed from every message about the address.
_CONTENT_COLUMNS = ("summary", "header_section", "subject")
# Texts in which only the address itself is replaced (a remote server's reply stays).
_SCRUBBED = frozenset({"reply_text", "note"})


class StillActive(UsageError):
    """Messages about the address are still in the queue; ``str()`` is the sentence."""

    def __init__(self, address: str, qids: list[str], deleted: int = 0) -> None:
        self.qids = qids
        self.deleted = deleted
        listed = f"{', '.join(qids[:5])}{', ...' if len(qids) > 5 else ''}"
        if deleted:  # a message arrived between the files and the transaction
            super().__init__(
                f"{deleted} file(s) about {address} were deleted, but the database is "
                f"unchanged: {len(qids)} message(s) to or from it arrived meanwhile and are "
                f"still being delivered ({listed}); run again when they are delivered"
            )
            return
        super().__init__(
            f"{len(qids)} message(s) to or from {address} are still being delivered "
            f"({listed}); run again when they finish, or withdraw them with certifica "
            "queue delete QUEUE-ID"
        )


@dataclass
class Plan:
    """What an erasure of ``address`` would change (counts) and which files it deletes."""

    address: str
    committed: str
    messages: int = 0  # messages whose rows (or their documents' rows) change
    sent: int = 0  # of those, the ones the address sent
    evidence_entries: int = 0
    tracking_events: int = 0
    tracking_links: int = 0
    verifications: int = 0
    users: int = 0
    credentials: int = 0  # the user's app passwords, API tokens and console sessions
    reception_owners: int = 0
    reception_acks: int = 0
    files: list[Path] = field(default_factory=list)
    sms_contacts: int = 0  # contacts of the number in organisations' address books
    sms_texts: int = 0  # SMS texts about the number still held
    sms_sent: int = 0  # messages the phone sent (MO) still holding their text or source
    sms_skipped: int = 0  # SMS whose list of those left out names it
    sms_receipts: int = 0  # receipts of its SMS holding their raw octets or the number
    sms_optouts_kept: int = 0  # opt-outs of the number: kept (docs/erasure.md)
    held: list[str] = field(default_factory=list)  # qids under legal hold, left as they are
    active: list[str] = field(default_factory=list)  # qids still in the queue
    wal_cleared: bool = True  # after erase: the checkpoint emptied the write-ahead log

    @property
    def nothing(self) -> bool:
        return not (
            self.messages
            or self.evidence_entries
            or self.tracking_events
            or self.tracking_links
            or self.verifications
            or self.users
            or self.credentials
            or self.reception_owners
            or self.reception_acks
            or self.files
            or self.sms_contacts
            or self.sms_texts
            or self.sms_sent
            or self.sms_skipped
            or self.sms_receipts
        )

    def scope(self) -> dict[str, int]:
        """The counts an ``Erasure`` entry records."""
        return {
            "messages": self.messages,
            "sent": self.sent,
            "evidence_entries": self.evidence_entries,
            "tracking_events": self.tracking_events,
            "tracking_links": self.tracking_links,
            "verifications": self.verifications,
            "users": self.users,
            "credentials": self.credentials,
            "reception_owners": self.reception_owners,
            "reception_acks": self.reception_acks,
            "files": len(self.files),
            "held": len(self.held),
            **(
                {
                    "sms_contacts": self.sms_contacts,
                    "sms_texts": self.sms_texts,
                    "sms_sent": self.sms_sent,
                    "sms_skipped": self.sms_skipped,
                    "sms_receipts": self.sms_receipts,
                    "sms_optouts_kept": self.sms_optouts_kept,
                }
                if subjects.is_number(self.address)
                else {}
            ),
        }


@dataclass
class _Changes:
    """The writes one message needs."""

    message: dict[str, Any] = field(default_factory=dict)
    recipients: dict[int, dict[str, Any]] = field(default_factory=dict)
    own_recipients: list[int] = field(default_factory=list)  # the address's recipient rows

    def __bool__(self) -> bool:
        return bool(self.message or self.recipients)


def _message_changes(message: dict[str, Any], match: subjects.Matcher) -> _Changes:
    changes = _Changes()
    sender = False
    for column in subjects.MESSAGE_ADDRESS_COLUMNS:
        if match.is_subject(message.get(column)):
            changes.message[column] = match.committed
            sender = True
    if sender:  # where the address sent from is the sender's personal data too
        for column in ("client_ip", "client_helo"):
            if message.get(column) is not None:
                changes.message[column] = None
    for column in subjects.MESSAGE_TEXT_COLUMNS:
        value = message.get(column)
        if value is not None and (column in _CONTENT_COLUMNS or match.mentions(value)):
            changes.message[column] = None
    # No more opens or clicks recorded, no addendum: its content is gone.
    for column in ("tracking", "addendum_pending"):
        if message.get(column):
            changes.message[column] = 0
    for rcpt in message["recipients"]:
        cols: dict[str, Any] = {}
        if match.is_subject(rcpt["address"]):
            cols["address"] = match.committed
            changes.own_recipients.append(int(rcpt["id"]))
            for column in ("orcpt", "delivered_copy"):
                if rcpt.get(column) is not None:
                    cols[column] = None
        elif rcpt["address"] == match.committed:
            changes.own_recipients.append(int(rcpt["id"]))
        for column in subjects.RECIPIENT_TEXT_COLUMNS:
            value = rcpt.get(column)
            if column not in cols and match.mentions(value):
                cols[column] = match.scrub(value) if column in _SCRUBBED else None
        if cols:
            changes.recipients[int(rcpt["id"])] = cols
    return changes


def _held(conn: sqlite3.Connection, messages: list[dict[str, Any]]) -> set[str]:
    """The messages under legal hold, with the documents and reports made about them."""
    held = holds.held_qids(conn) & {m["qid"] for m in messages}
    grew = True
    while grew:
        more = {m["qid"] for m in messages if m.get("parent_qid") in held} - held
        held |= more
        grew = bool(more)
    return held


def _files(
    messages: list[dict[str, Any]],
    verification_rows: list[dict[str, Any]],
    held: set[str],
    spool_root: Path,
    certificates: Path,
) -> list[Path]:
    out: list[Path] = []
    cert_ids: set[str] = set()
    for message in messages:
        if message["qid"] in held:
            continue
        out += [
            spool_root / SPOOL_QUEUE / f"{message['qid']}.eml",
            spool_root / "archive" / f"{message['qid']}.eml",
        ]
        if message.get("cert_id"):
            cert_ids.add(str(message["cert_id"]))
    cert_ids |= {str(v["cert_id"]) for v in verification_rows if v["qid"] not in held}
    for cert_id in sorted(cert_ids):
        out += sorted(certificates.glob(f"{cert_id}.*"))
    return [p for p in out if p.exists()]


def _plan(
    conn: sqlite3.Connection,
    match: subjects.Matcher,
    spool_root: Path,
    certificates: Path,
) -> tuple[Plan, dict[str, Any]]:
    plan = Plan(match.address, match.committed)
    qids = subjects.concerned_qids(conn, match)
    messages = subjects.messages_of(conn, qids)
    held = _held(conn, messages)
    parents = {m["qid"]: m.get("parent_qid") for m in messages}

    def root(qid: str) -> str:  # the message a document or report is about
        while parents.get(qid) in parents:
            qid = str(parents[qid])
        return qid

    plan.held = sorted({root(q) for q in held})
    plan.active = sorted({root(m["qid"]) for m in messages if m["state"] != MessageState.DONE})
    changes: dict[str, _Changes] = {}
    own: list[int] = []
    for message in messages:
        if message["qid"] in held:
            continue
        found = _message_changes(message, match)
        own += found.own_recipients
        if found:
            changes[message["qid"]] = found
    # Counted as the operator knows them: messages, not the documents made about them.
    plan.messages = len({root(q) for q in changes})
    plan.sent = len(
        {
            root(q)
            for q, found in changes.items()
            if set(found.message) & set(subjects.MESSAGE_ADDRESS_COLUMNS)
        }
    )
    events = subjects.tracking_to_erase(conn, own)
    plan.tracking_events = len(events)
    plan.tracking_links = subjects.tracked_links(conn, own)
    entries = [
        e
        for e in subjects.evidence_about(conn, match)
        if e["qid"] not in held
        and e["event"] != ERASURE_EVENT
        and (match.mentions(e["recipient"]) or match.mentions(e["detail"]))
    ]
    plan.evidence_entries = len(entries)
    rows = subjects.verifications_of(conn, [q for q in qids if q not in held])
    pending = [v for v in rows if v["recipients"] is not None]
    plan.verifications = len(pending)
    accounts = subjects.accounts(conn, match)
    plan.users = len(accounts["users"])
    plan.credentials = sum(
        len(accounts[t]) for t in ("app_passwords", "api_tokens", "web_sessions")
    )
    plan.reception_owners = len(accounts["reception_owners"])
    plan.reception_acks = len(accounts["reception_acks"])
    plan.files = _files(messages, rows, held, spool_root, certificates)
    work = {
        "changes": changes,
        "own": own,
        "events": events,
        "entries": entries,
        "verifications": pending,
    }
    if match.number is not None:
        work["sms"] = _sms_plan(conn, match, plan, [q for q in qids if q not in held], own)
    return plan, work


def _sms_plan(
    conn: sqlite3.Connection,
    match: subjects.Matcher,
    plan: Plan,
    qids: list[str],
    own: list[int],
) -> dict[str, Any]:
    """What the SMS tables need for a phone number (docs/erasure.md, "Phone numbers"):
    ``qids`` are the messages about it not under legal hold, ``own`` its recipient rows
    among them. Its opt-outs are only counted: they stay."""
    match.register(conn)
    params = match.params()
    contacts = [
        int(r[0]) for r in conn.execute("SELECT id FROM contacts WHERE number = ?", (match.number,))
    ]
    texts: list[str] = []
    skipped: dict[str, str] = {}
    for chunk in subjects.chunks(qids):
        marks = ", ".join("?" for _ in chunk)
        texts += [
            str(r[0])
            for r in conn.execute(
                f"SELECT qid FROM sms_messages WHERE qid IN ({marks})"  # noqa: S608
                " AND (text IS NOT NULL OR parts != '[]')",
                chunk,
            )
        ]
    sql = f"SELECT qid, skipped FROM sms_messages WHERE {subjects.naming(('skipped',))}"  # noqa: S608
    held = set(holds.held_qids(conn))
    for qid, listed in conn.execute(sql, params):
        if qid in held:
            continue
        entries = json.loads(listed or "[]")
        changed = False
        for entry in entries:
            if match.is_subject(entry.get("address")):
                entry["address"] = entry["name"] = match.committed
                changed = True
        if changed:
            skipped[str(qid)] = json.dumps(entries, ensure_ascii=False)
    sql = f"SELECT id FROM sms_inbound WHERE {subjects.naming(('source',))}"  # noqa: S608
    inbound = [
        int(r[0])
        for r in conn.execute(
            sql + " AND (source != :committed OR text != '' OR raw != x'')", params
        )
    ]
    receipts: set[int] = set()
    for chunk in subjects.chunks(own):
        marks = ", ".join("?" for _ in chunk)
        receipts |= {
            int(r[0])
            for r in conn.execute(
                "SELECT r.id, r.raw, r.fields FROM sms_receipts r JOIN sms_parts p"  # noqa: S608
                f" ON p.id = r.part_id WHERE p.recipient_id IN ({marks})",
                chunk,
            )
            if r[1] != b"" or match.mentions(r[2])
        }
    # A receipt no part was matched to (its own parts' are above, legal holds respected).
    sql = (
        "SELECT id, raw, fields FROM sms_receipts WHERE part_id IS NULL"  # noqa: S608
        f" AND ({subjects.naming(('raw', 'fields'))})"
    )
    receipts |= {
        int(r[0]) for r in conn.execute(sql, params) if r[1] != b"" or match.mentions(r[2])
    }
    (kept,) = conn.execute(
        "SELECT COUNT(*) FROM sms_optouts WHERE number = ?", (match.number,)
    ).fetchone()
    plan.sms_contacts = len(contacts)
    plan.sms_texts = len(texts)
    plan.sms_sent = len(inbound)
    plan.sms_skipped = len(skipped)
    plan.sms_receipts = len(receipts)
    plan.sms_optouts_kept = int(kept)
    return {
        "contacts": contacts,
        "texts": texts,
        "skipped": skipped,
        "inbound": inbound,
        "receipts": sorted(receipts),
    }


def _apply_sms(conn: sqlite3.Connection, match: subjects.Matcher, work: dict[str, Any]) -> None:
    """Inside the erasure's transaction: the writes :func:`_sms_plan` found."""
    for chunk in subjects.chunks(work["contacts"]):
        marks = ", ".join("?" for _ in chunk)
        conn.execute(f"DELETE FROM contact_groups WHERE contact_id IN ({marks})", chunk)  # noqa: S608
        conn.execute(f"DELETE FROM contacts WHERE id IN ({marks})", chunk)  # noqa: S608
    for chunk in subjects.chunks(work["texts"]):
        marks = ", ".join("?" for _ in chunk)
        # The text and its parts' octets are the content, as after retention_days.
        conn.execute(
            f"UPDATE sms_messages SET text = NULL, parts = '[]' WHERE qid IN ({marks})",  # noqa: S608
            chunk,
        )
    for qid, listed in work["skipped"].items():
        conn.execute("UPDATE sms_messages SET skipped = ? WHERE qid = ?", (listed, qid))
    for chunk in subjects.chunks(work["inbound"]):
        marks = ", ".join("?" for _ in chunk)
        conn.execute(
            f"UPDATE sms_inbound SET source = ?, text = '', raw = x'' WHERE id IN ({marks})",  # noqa: S608
            (match.committed, *chunk),
        )
    for rid in work["receipts"]:
        (fields,) = conn.execute("SELECT fields FROM sms_receipts WHERE id = ?", (rid,)).fetchone()
        conn.execute(
            "UPDATE sms_receipts SET raw = x'', fields = ? WHERE id = ?",
            (match.scrub(fields, match.committed), rid),
        )


def plan(store: Database, address: str, key: bytes, spool_root: Path, certificates: Path) -> Plan:
    """What :func:`erase` would do now (reads only)."""
    match = subjects.Matcher(address, subjects.commitment(key, address))
    return store.run_sync(lambda db: _plan(db.conn, match, spool_root, certificates)[0], read=True)


def erase(
    store: Database,
    address: str,
    key: bytes,
    spool_root: Path,
    certificates: Path,
    operator: str,
    now: float,
) -> Plan:
    """Erase ``address`` (see the module docstring). Returns what was done; raises
    :class:`StillActive` (nothing changed) while messages about it are in the queue."""
    match = subjects.Matcher(address, subjects.commitment(key, address))
    # Planned and deleted under the archive lock: a legal hold placed until then
    # (certifica evidence legal-hold takes the same lock) keeps its files, and a renewal
    # never puts a deleted certificate back.
    with archive_lock(certificates):
        first = plan(store, address, key, spool_root, certificates)
        if first.active:
            raise StillActive(match.address, first.active)
        for path in first.files:
            path.unlink(missing_ok=True)
    removed = list(first.files)

    def transaction(db: sqlite_utils.Database) -> Plan:
        conn = db.conn
        conn.execute("PRAGMA secure_delete = ON")
        done, work = _plan(conn, match, spool_root, certificates)
        if done.active:  # a message arrived since: change nothing more
            raise StillActive(match.address, done.active, deleted=len(removed))
        done.files = removed
        _apply(conn, match, done, work, now)
        if not done.nothing:
            evidence_log.append(
                conn,
                now,
                ERASURE_QID,
                ERASURE_EVENT,
                {"operator": operator, "subject": match.committed, "scope": done.scope()},
            )
        return done

    result = store.run_sync(transaction)
    result.wal_cleared = checkpoint(store.path)
    return result


def _apply(
    conn: sqlite3.Connection,
    match: subjects.Matcher,
    plan: Plan,
    work: dict[str, Any],
    now: float,
) -> None:
    for qid, changes in work["changes"].items():
        subjects.update_message(conn, qid, changes.message)
        for rid, cols in changes.recipients.items():
            subjects.update_recipient(conn, rid, cols)
    subjects.forget_tracking(conn, work["own"])
    subjects.forget_hosted(conn, work["own"])
    by_keep: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for entry in work["entries"]:
        # A tracking hit keeps its classification, as after tracking_days (retention).
        keep: tuple[str, ...] = TRACKING_KEPT if entry["event"] in TRACKING_EVENTS else ()
        by_keep[keep].append(int(entry["seq"]))
    for keep, seqs in by_keep.items():
        evidence_log.forget(conn, seqs, now, keep=keep, reason="erasure")
    for row in work["verifications"]:
        verifications.erase_record(conn, str(row["cert_id"]), now)
    subjects.remove_accounts(conn, match)
    if "sms" in work:
        _apply_sms(conn, match, work["sms"])


def checkpoint(path: Path) -> bool:
    """Move the WAL into the database and empty it (``wal_checkpoint(TRUNCATE)``), so the
    pages written before the erasure leave the ``-wal`` file. False when a reader kept it
    from finishing: the old pages stay in the log until later writes overwrite them, or
    the last connection closes (SQLite then checkpoints and removes the log)."""
    # While it waits for readers, a TRUNCATE checkpoint holds the write lock: a short
    # wait keeps the gateway's writers (which wait 5 s for the lock) from failing.
    conn = sqlite3.connect(path, timeout=1.0, isolation_level=None)
    try:
        row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    return row is not None and int(row[0]) == 0


def describe(plan: Plan) -> list[str]:
    """The plan as sentences for the operator."""
    lines = []
    if plan.messages:
        lines.append(
            f"{plan.messages} message(s) ({plan.sent} sent by {plan.address}): the address "
            "becomes a commitment, their content and every text naming it are removed"
        )
    if plan.evidence_entries:
        lines.append(
            f"{plan.evidence_entries} evidence entr{'y' if plan.evidence_entries == 1 else 'ies'}"
            " forget their values (their hashes stay: the chain still verifies)"
        )
    if plan.tracking_events:
        lines.append(f"{plan.tracking_events} open(s)/click(s) lose IP address and user agent")
    if plan.tracking_links:
        lines.append(
            f"{plan.tracking_links} tracked link(s) of its copies are removed: they no "
            "longer lead anywhere, and no open or click is recorded any more"
        )
    if plan.verifications:
        lines.append(
            f"{plan.verifications} verification page(s) stop showing recipients "
            "(they still confirm their documents by hash)"
        )
    if plan.files:
        lines.append(
            f"{len(plan.files)} file(s) deleted (spool copies, archived certificates): "
            "their hashes stay"
        )
    if plan.users:
        lines.append(f"the user account {plan.address} is removed: it can no longer send")
    if plan.credentials:
        lines.append(
            f"{plan.credentials} app password(s), API token(s) and console session(s) of it "
            "are removed: none of them works any more"
        )
    if plan.reception_owners:
        lines.append("certified reception for it is removed: its forwarding address stops working")
    if plan.reception_acks:
        lines.append(f"{plan.reception_acks} record(s) of proofs of receipt are removed")
    lines += _describe_sms(plan)
    if plan.held:
        lines.append(
            f"{len(plan.held)} message(s) under legal hold are kept as they are "
            f"({', '.join(plan.held[:5])}): run again once the hold is released"
        )
    return lines


def _describe_sms(plan: Plan) -> list[str]:
    lines = []
    if plan.sms_contacts:
        lines.append(
            f"{plan.sms_contacts} contact(s) of the number in organisations' address books "
            "are deleted, with their groups and consents"
        )
    if plan.sms_texts:
        lines.append(f"{plan.sms_texts} SMS about it lose their text (its SHA-256 stays)")
    if plan.sms_sent:
        lines.append(
            f"{plan.sms_sent} message(s) the phone sent lose their text and octets "
            "(their time stays)"
        )
    if plan.sms_skipped:
        lines.append(
            f"{plan.sms_skipped} SMS it was left out of keep the reason; the number and "
            "its contact name become the commitment"
        )
    if plan.sms_receipts:
        lines.append(
            f"{plan.sms_receipts} delivery receipt(s) lose their raw octets and the number "
            "(the certificates issued hold them)"
        )
    return lines


def kept_optouts(plan: Plan) -> str | None:
    """The sentence saying the number's opt-outs stay, and why; None when it has none."""
    if not plan.sms_optouts_kept:
        return None
    return (
        f"{plan.sms_optouts_kept} SMS opt-out(s) of {plan.address} are kept: without the "
        "number the organisations could not stop sending to it (GDPR art. 17(3)(b) and "
        "21(3); docs/erasure.md)"
    )
