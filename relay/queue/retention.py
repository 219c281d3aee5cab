"""Retention (GDPR art. 5(1)(e), storage limitation): removing what the gateway no longer
needs, by age, for messages that have left the queue (docs/retention.md, README
"Retention").

Three kinds of data, each with its own age (``[retention]``) and function here:

=================  ==================  ===================================================
kind               kept                removed by
=================  ==================  ===================================================
content            ``content_days``    :func:`remove_content`: the archived message file
                   after the message   (``spool/archive/<qid>.eml``), the header section
                   left the queue      kept for late reports, each recipient's delivered-
                                       copy recipe; an evidence entry ``ContentRemoved``
                                       says so (documents made later cite it)
tracking           ``tracking_days``   :func:`remove_tracking`: each open's or click's IP
                   after the hit       address and user agent (``tracking_events``, and the
                                       evidence entry's values, keeping the classification)
evidence           ``evidence_years``  :func:`remove_evidence`: the kept certificate PDFs
                   after the last      (their hashes stay, so a copy someone holds still
                   event               verifies), the values of the evidence entries (the
                                       chain still verifies), the verification page's list
                                       of recipients, the personal columns of the rows
=================  ==================  ===================================================

What is never touched: a message still in the queue (``state`` other than ``done``), and
anything of a message under legal hold (:mod:`relay.queue.holds`; a hold on a message
covers the delivery reports about it, its child rows). Each function returns what it
removed, or with ``dry_run`` what it would remove, and changes nothing then.

A pass may stop anywhere (a crash, a stop); the next one finishes it:

- content: the rows first (columns cleared and the ``ContentRemoved`` entry, one
  transaction per batch), then the files; a file left behind is found again by listing
  the archive, its entry is not written twice;
- evidence: the PDFs first, then the rows; a message whose PDFs went but whose rows
  were not yet cleared is still found by its rows.

The functions are blocking (the store's thread for the SQL, file removal and fsyncs on
the caller's): the daily task (:mod:`relay.certify.retention`) runs them on a thread of
their own; ``certifica retention run`` calls them directly.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from certifier.errors import CertificaError
from relay.queue import evidence_log
from relay.queue.archive import archive_lock
from relay.queue.db import Database
from relay.queue.holds import LEGAL_HOLD, LEGAL_HOLD_RELEASED, held_qids, is_held
from relay.queue.hosted import kept_for_hosting
from relay.queue.ids import CERTIFICATE_ID
from relay.queue.spool import Spool, fsync_dir
from relay.queue.states import MessageState
from relay.queue.subjects import ERASURE_EVENT

T = TypeVar("T")

DAY = 86400.0
BATCH = 200
"""Messages handled in one transaction: a first pass over years of history must not
hold the database's write lock (and the acceptors' 250s) for long."""

CONTENT_REMOVED = "ContentRemoved"
"""The evidence event recording that a message's content was removed by retention."""
TRACKING_EVENTS = ("ContentOpened", "LinkClicked")
"""The evidence events of opens and clicks (:mod:`relay.queue.tracking`)."""
TRACKING_KEPT = ("link", "method", "automatic", "reason")
"""What stays of an open's or click's evidence entry after ``tracking_days``: its
classification (which link, how it was fetched, whether a machine did it and why), not
who fetched it (IP address, user agent) nor the URL."""
OWN_EVENTS = (CONTENT_REMOVED, LEGAL_HOLD, LEGAL_HOLD_RELEASED, ERASURE_EVENT)
"""Entries that do not count as activity of a message: retention, a legal hold and an
erasure must not restart the clock that decides when its evidence goes."""

RETENTION_TEXT = (
    "removed by the gateway's retention policy: message content is kept "
    "{days} days after the message left the queue ([retention] content_days)"
)
"""Why a document made after ``content_days`` has no message content (its evidence's
``message.content_unavailable``); ``{days}`` is the number of days."""


def years_before(now: float, years: int) -> float:
    """The POSIX time ``years`` calendar years before ``now`` (29 February becomes 28)."""
    moment = datetime.fromtimestamp(now, UTC)
    try:
        earlier = moment.replace(year=moment.year - years)
    except ValueError:  # 29 February in a year that has none
        earlier = moment.replace(year=moment.year - years, day=28)
    return earlier.timestamp()


@dataclass(frozen=True)
class ContentRemoval:
    """What :func:`remove_content` removed (or would remove)."""

    messages: int = 0  # messages whose content went
    files: int = 0  # archived message files deleted

    def summary(self) -> str:
        return f"content of {count(self.messages, 'message')} ({count(self.files, 'file')})"


@dataclass(frozen=True)
class TrackingRemoval:
    """What :func:`remove_tracking` removed (or would remove)."""

    events: int = 0  # opens and clicks whose IP address and user agent were blanked
    entries: int = 0  # their evidence entries whose values were forgotten

    def summary(self) -> str:
        return (
            f"IP address and user agent of {count(self.events, 'open or click', 'opens and clicks')}"
            f" ({count(self.entries, 'evidence entry', 'evidence entries')})"
        )


@dataclass(frozen=True)
class EvidenceRemoval:
    """What :func:`remove_evidence` removed (or would remove)."""

    messages: int = 0  # messages whose personal data went
    pdfs: int = 0  # kept certificate PDFs deleted
    entries: int = 0  # evidence entries whose values were forgotten
    verifications: int = 0  # verification records whose recipients were emptied

    def summary(self) -> str:
        return (
            f"evidence of {count(self.messages, 'message')} ({count(self.pdfs, 'PDF')}, "
            f"{count(self.entries, 'evidence entry', 'evidence entries')}, "
            f"{count(self.verifications, 'verification record')})"
        )


@dataclass(frozen=True)
class Removed:
    """One retention pass: what each kind removed, and how many messages it kept whole
    because they are under legal hold."""

    content: ContentRemoval
    tracking: TrackingRemoval
    evidence: EvidenceRemoval
    holds: int

    def summary(self) -> str:
        """One line for the log (``maintenance: retention: ...``)."""
        return (
            f"{self.content.summary()}; {self.tracking.summary()}; {self.evidence.summary()}; "
            f"{count(self.holds, 'message')} under legal hold kept whole"
        )


def count(number: int, one: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``: a number and its noun, for the log and the command."""
    return f"{number} {one if number == 1 else many or one + 's'}"


def remove_content(
    db: Database,
    spool: Spool,
    now: float,
    content_days: int,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> ContentRemoval:
    """Remove the content of messages that left the queue more than ``content_days``
    ago: the archived file, ``header_section``, the recipients' ``delivered_copy``."""
    cutoff = now - content_days * DAY
    due: set[str] = set()
    after: str | None = ""
    while after is not None:  # rows that still hold content, in queue id order
        batch, after = _on(db, stop, _content_rows, after, cutoff, now, content_days, dry_run)
        due.update(batch)
    archived = sorted(p.stem for p in spool.archive_dir.glob("*.eml"))
    files: list[Path] = []
    for start in range(0, len(archived), BATCH):  # files in the archive
        chunk = archived[start : start + BATCH]
        batch = _on(db, stop, _content_files, chunk, cutoff, now, content_days, dry_run)
        due.update(batch)
        files.extend(spool.archived(qid) for qid in batch)
    removed = len(files) if dry_run else _unlink(files)
    return ContentRemoval(len(due), removed)


def _on(db: Database, stop: threading.Event | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(conn, *args)`` as one operation on the store's thread (one transaction);
    raises :class:`Stopped` instead once ``stop`` is set."""
    if stop is not None and stop.is_set():
        raise Stopped
    return db.run_sync(lambda d: fn(d.conn, *args))


class Stopped(CertificaError):  # noqa: N818 - a signal, not an error
    """The pass was asked to stop (the gateway is stopping) between two batches; what
    it did so far is committed and the next pass goes on from there."""


def _content_rows(
    conn: sqlite3.Connection, after: str, cutoff: float, now: float, days: int, dry_run: bool
) -> tuple[list[str], str | None]:
    """The next :data:`BATCH` done messages past queue id ``after`` whose rows still hold
    content, handled (unless ``dry_run``): their queue ids and the last one looked at
    (None when there are no more)."""
    rows = conn.execute(
        # "+m.state": in queue id order, by the primary key (see _EVIDENCE_DUE)
        "SELECT m.qid, m.parent_qid FROM messages m WHERE m.qid > ? AND +m.state = 'done'"
        " AND COALESCE(m.done_at, m.created) < ? AND (m.header_section IS NOT NULL"
        "  OR m.subject IS NOT NULL"
        "  OR EXISTS (SELECT 1 FROM sms_messages s WHERE s.qid = m.qid AND s.text IS NOT NULL)"
        "  OR EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid"
        "   AND r.delivered_copy IS NOT NULL))"
        " ORDER BY m.qid LIMIT ?",
        (after, cutoff, BATCH),
    ).fetchall()
    if not rows:
        return [], None
    return _content_gone(conn, rows, now, days, dry_run), str(rows[-1][0])


def _content_files(
    conn: sqlite3.Connection, qids: list[str], cutoff: float, now: float, days: int, dry_run: bool
) -> list[str]:
    """Of ``qids`` (files in the archive), the messages whose content is due, handled
    (unless ``dry_run``): their files are to be deleted."""
    rows = conn.execute(
        "SELECT qid, parent_qid FROM messages WHERE qid IN (SELECT value FROM json_each(?))"
        " AND +state = 'done' AND COALESCE(done_at, created) < ?",  # by queue id, not state
        (json.dumps(qids), cutoff),
    ).fetchall()
    return _content_gone(conn, rows, now, days, dry_run)


def _content_gone(
    conn: sqlite3.Connection,
    rows: Iterable[tuple[str, str | None]],
    now: float,
    days: int,
    dry_run: bool,
) -> list[str]:
    """Clear the content columns of the messages ``rows`` (queue id, parent's) not under
    legal hold and record ``ContentRemoved`` once for each; returns their queue ids."""
    held = held_qids(conn)
    due = [qid for qid, parent in rows if qid not in held and not (parent and parent in held)]
    hosted = kept_for_hosting(conn, due, now, days)  # until the links expire (docs/hosted.md)
    due = [qid for qid in due if qid not in hosted]
    if dry_run:
        return due
    for qid in due:
        conn.execute(
            "UPDATE messages SET header_section = NULL, subject = NULL WHERE qid = ?", (qid,)
        )
        conn.execute("UPDATE recipients SET delivered_copy = NULL WHERE qid = ?", (qid,))
        # An SMS's text and its parts' octets are its content (docs/sms.md): the text's
        # SHA-256 and the signed certificate keep what it proves.
        conn.execute("UPDATE sms_messages SET text = NULL, parts = '[]' WHERE qid = ?", (qid,))
        # A decision's name, comment, address and browser (docs/hosted.md): its certificate
        # and the evidence log keep what it proves.
        conn.execute(
            "UPDATE hosted_links SET decision_detail = NULL, decision_page = NULL WHERE qid = ?",
            (qid,),
        )
        # The content pages served (they show the content; the certificates keep theirs).
        conn.execute(
            "DELETE FROM hosted_pages WHERE recipient_id IN"
            " (SELECT recipient_id FROM hosted_links WHERE qid = ?)",
            (qid,),
        )
        if content_removed(conn, qid) is None:
            evidence_log.append(
                conn, now, qid, CONTENT_REMOVED, {"reason": "retention", "content_days": days}
            )
    return due


def content_removed(conn: sqlite3.Connection, qid: str) -> int | None:
    """The ``content_days`` under which retention removed the content of ``qid``, or None
    when it did not (the content is there, or it went some other way)."""
    row = conn.execute(
        "SELECT detail FROM evidence WHERE qid = ? AND event = ? ORDER BY seq LIMIT 1",
        (qid, CONTENT_REMOVED),
    ).fetchone()
    if row is None:
        return None
    days = json.loads(row[0]).get("content_days")
    return days if isinstance(days, int) else 0


def remove_tracking(
    db: Database,
    now: float,
    tracking_days: int,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> TrackingRemoval:
    """Blank the IP address and user agent of opens and clicks older than
    ``tracking_days``, and forget the values of their evidence entries keeping the
    classification (:data:`TRACKING_KEPT`)."""
    cutoff = now - tracking_days * DAY
    events = entries = 0
    after_id: int | None = 0
    after_seq: int | None = 0
    while after_id is not None or after_seq is not None:
        batch, after_id, after_seq = _on(
            db, stop, _tracking_batch, after_id, after_seq, cutoff, now, dry_run
        )
        events, entries = events + batch.events, entries + batch.entries
    return TrackingRemoval(events, entries)


# The opens and clicks whose IP address and user agent are due to go, and their
# evidence entries: older than the cutoff, of a message that left the queue and is
# not under legal hold (the JSON list of held queue ids); walked in id (seq) order, so
# that each batch starts where the last one ended.
_TRACKING_DUE = """
SELECT id FROM tracking_events t WHERE id > ? AND time < ? AND (ip != '' OR user_agent != '')
AND EXISTS (SELECT 1 FROM messages m WHERE m.qid = t.qid AND m.state = 'done')
AND qid NOT IN (SELECT value FROM json_each(?))
ORDER BY id LIMIT ?
"""
_TRACKING_ENTRIES_DUE = """
SELECT seq FROM evidence e WHERE seq > ? AND event IN (SELECT value FROM json_each(?))
AND time < ? AND erased IS NULL
AND EXISTS (SELECT 1 FROM messages m WHERE m.qid = e.qid AND m.state = 'done')
AND qid NOT IN (SELECT value FROM json_each(?))
ORDER BY seq LIMIT ?
"""


def _tracking_batch(
    conn: sqlite3.Connection,
    after_id: int | None,
    after_seq: int | None,
    cutoff: float,
    now: float,
    dry_run: bool,
) -> tuple[TrackingRemoval, int | None, int | None]:
    """Up to :data:`BATCH` opens and clicks after id ``after_id`` and as many evidence
    entries after ``after_seq`` (None: that walk has ended), handled in this transaction
    (unless ``dry_run``); returns what changed and where each walk goes on."""
    held = json.dumps(sorted(held_qids(conn)))
    ids: list[int] = []
    if after_id is not None:
        ids = [r[0] for r in conn.execute(_TRACKING_DUE, (after_id, cutoff, held, BATCH))]
    seqs: list[int] = []
    if after_seq is not None:
        seqs = [
            r[0]
            for r in conn.execute(
                _TRACKING_ENTRIES_DUE,
                (after_seq, json.dumps(TRACKING_EVENTS), cutoff, held, BATCH),
            )
        ]
    if dry_run:
        changed = TrackingRemoval(len(ids), len(seqs))
    else:
        events = conn.execute(
            "UPDATE tracking_events SET ip = '', user_agent = ''"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(ids),),
        ).rowcount
        changed = TrackingRemoval(
            events,
            evidence_log.forget(
                conn, seqs, now, keep=TRACKING_KEPT, reason="retention: tracking_days"
            ),
        )
    return (
        changed,
        ids[-1] if len(ids) == BATCH else None,
        seqs[-1] if len(seqs) == BATCH else None,
    )


def remove_evidence(
    db: Database,
    certificates: Path,
    now: float,
    evidence_years: int,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> EvidenceRemoval:
    """Remove what is kept as evidence of messages whose last event is more than
    ``evidence_years`` old: their certificate PDFs (the hashes stay), the values of
    their evidence entries, the recipients the verification page lists, and the
    personal columns of their rows."""
    cutoff = years_before(now, evidence_years)
    totals = EvidenceRemoval()
    after = ""
    while True:
        found = _on(db, stop, _evidence_due, after, cutoff)
        if found is None:
            break
        after, due = found
        if not due:
            continue
        pdfs = [certificates / f"{cert_id}.pdf" for _, ids in due for cert_id in ids]
        if dry_run:
            entries, records = _on(db, stop, _evidence_counts, due)
            deleted = sum(1 for p in pdfs if p.exists())
        else:
            # The files first: a pass that stops here finds these rows again next time.
            due, deleted = _delete_pdfs(db, stop, certificates, due)
            entries, records = _on(db, stop, _clear_evidence, due, now)
        totals = EvidenceRemoval(
            totals.messages + len(due),
            totals.pdfs + deleted,
            totals.entries + entries,
            totals.verifications + records,
        )
    return totals


# A message whose evidence is due: left the queue, its last event (other than
# OWN_EVENTS) before the cutoff, something personal still kept. Not held: checked in
# Python, as a hold covers the message's children too. "+m.state": walk the messages in
# queue id order (the primary key, so LIMIT ends the walk), not through the state index
# (every done message, then sorted, for every batch).
_EVIDENCE_DUE = """
SELECT m.qid, m.parent_qid, m.cert_id FROM messages m
WHERE m.qid > ? AND +m.state = 'done' AND COALESCE(m.done_at, m.created) < ?
AND NOT EXISTS (SELECT 1 FROM evidence e WHERE e.qid = m.qid AND e.time >= ?
    AND e.event NOT IN (SELECT value FROM json_each(?)))
AND (m.sender != '' OR m.client_ip IS NOT NULL OR m.auth_user IS NOT NULL
    OR EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid AND r.address != '')
    OR EXISTS (SELECT 1 FROM evidence e WHERE e.qid = m.qid AND e.erased IS NULL)
    OR EXISTS (SELECT 1 FROM verifications v WHERE v.cert_id = m.cert_id
        AND v.recipients IS NOT NULL))
ORDER BY m.qid LIMIT ?
"""

Due = list[tuple[str, list[str]]]
"""Messages whose evidence is due: each one's queue id and the ids of the documents
issued about it (its certificate, its addenda)."""


def _evidence_due(conn: sqlite3.Connection, after: str, cutoff: float) -> tuple[str, Due] | None:
    """The next batch of messages whose evidence is due, after queue id ``after``: the
    last queue id looked at and those of them not under legal hold. None when there
    are no more."""
    held = held_qids(conn)
    rows = conn.execute(
        _EVIDENCE_DUE, (after, cutoff, cutoff, json.dumps(OWN_EVENTS), BATCH)
    ).fetchall()
    if not rows:
        return None
    due: Due = []
    for qid, parent, cert_id in rows:
        if qid in held or (parent and parent in held):
            continue
        due.append((qid, sorted(_documents_of(conn, qid, cert_id))))
    return str(rows[-1][0]), due


def _delete_pdfs(
    db: Database, stop: threading.Event | None, certificates: Path, due: Due
) -> tuple[Due, int]:
    """Delete the PDFs of the messages ``due`` that are not under legal hold now; returns
    those messages and how many files were there. Under the archive lock
    (:mod:`relay.queue.archive`), with the holds read again: a hold placed since
    :func:`_evidence_due` found them (``certifica evidence legal-hold`` takes the same
    lock) keeps its files, and a renewal never puts a deleted file back."""
    with archive_lock(certificates):
        due = _on(db, stop, _not_held, due)
        return due, _unlink(certificates / f"{i}.pdf" for _, ids in due for i in ids)


def _not_held(conn: sqlite3.Connection, due: Due) -> Due:
    """Those of ``due`` not under legal hold now (a hold may have been placed since they
    were found)."""
    return [(qid, ids) for qid, ids in due if not is_held(conn, qid)]


def _documents_of(conn: sqlite3.Connection, qid: str, cert_id: str | None) -> set[str]:
    """The certificate ids of the documents issued about ``qid``: its own, and those
    its evidence entries name (``CertificateIssued``, ``AddendumIssued``, ...)."""
    ids = {cert_id} if cert_id else set()
    for (detail,) in conn.execute(
        "SELECT detail FROM evidence WHERE qid = ? AND erased IS NULL"
        " AND detail LIKE '%certificate_id%'",
        (qid,),
    ):
        named = json.loads(detail).get("certificate_id")
        if isinstance(named, str):
            ids.add(named)
    return {i for i in ids if CERTIFICATE_ID.fullmatch(i)}  # each names a file: nothing else


def _evidence_counts(conn: sqlite3.Connection, due: Due) -> tuple[int, int]:
    """(evidence entries, verification records) :func:`_clear_evidence` would change."""
    (entries,) = conn.execute(
        "SELECT COUNT(*) FROM evidence WHERE erased IS NULL"
        " AND qid IN (SELECT value FROM json_each(?))",
        (json.dumps([qid for qid, _ in due]),),
    ).fetchone()
    (records,) = conn.execute(
        "SELECT COUNT(*) FROM verifications WHERE recipients IS NOT NULL"
        " AND cert_id IN (SELECT value FROM json_each(?))",
        (json.dumps([i for _, ids in due for i in ids]),),
    ).fetchone()
    return int(entries), int(records)


_PERSONAL_MESSAGE_COLUMNS = (
    "UPDATE messages SET sender = '', auth_user = NULL, client_ip = NULL, client_helo = NULL,"
    " header_from = NULL, envelope_from = NULL, authentication = NULL, reception = NULL,"
    " original_to = NULL, dsn_envid = NULL, summary = NULL, header_section = NULL, subject = NULL"
    " WHERE qid = ?"
)
_PERSONAL_RECIPIENT_COLUMNS = (
    "UPDATE recipients SET address = '', domain = '', reply_text = NULL, mx_host = NULL,"
    " ip = NULL, note = NULL, orcpt = NULL, tracking_notes = NULL, delivered_copy = NULL"
    " WHERE qid = ?"
)


def _clear_evidence(conn: sqlite3.Connection, due: Due, now: float) -> tuple[int, int]:
    """Forget the evidence values and personal columns of the messages ``due``, in this
    transaction; returns (evidence entries forgotten, verification records emptied). A
    message held or active again since it was found (a hold placed meanwhile) is left
    alone."""
    held = held_qids(conn)
    entries = records = 0
    for qid, documents in due:
        row = conn.execute(
            "SELECT parent_qid, state FROM messages WHERE qid = ?", (qid,)
        ).fetchone()
        if row is None or row[1] != MessageState.DONE or qid in held or (row[0] and row[0] in held):
            continue
        seqs = [
            int(r[0])
            for r in conn.execute(
                "SELECT seq FROM evidence WHERE qid = ? AND erased IS NULL", (qid,)
            )
        ]
        entries += evidence_log.forget(conn, seqs, now, reason="retention: evidence_years")
        records += conn.execute(
            "UPDATE verifications SET recipients = NULL, erased_at = ?"
            " WHERE cert_id IN (SELECT value FROM json_each(?)) AND recipients IS NOT NULL",
            (now, json.dumps(documents)),
        ).rowcount
        conn.execute(_PERSONAL_MESSAGE_COLUMNS, (qid,))
        conn.execute(_PERSONAL_RECIPIENT_COLUMNS, (qid,))
        conn.execute(
            "UPDATE tracking_events SET url = NULL, ip = '', user_agent = '' WHERE qid = ?",
            (qid,),
        )
        conn.execute("DELETE FROM tracking_links WHERE qid = ?", (qid,))
    return entries, records


def _unlink(paths: Iterable[Path]) -> int:
    """Delete ``paths`` durably (unlink, then one fsync per directory); returns how many
    were there."""
    removed = 0
    folders: set[Path] = set()
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed += 1
        folders.add(path.parent)
    for folder in folders:
        fsync_dir(folder)
    return removed


def apply(
    db: Database,
    spool: Spool,
    certificates: Path,
    now: float,
    *,
    content_days: int,
    tracking_days: int,
    evidence_years: int,
    dry_run: bool = False,
    stop: threading.Event | None = None,
) -> Removed:
    """One retention pass: content, tracking, evidence, in that order. ``stop``: when
    set (from another thread), the pass raises :class:`Stopped` before its next batch."""
    return Removed(
        content=remove_content(db, spool, now, content_days, dry_run=dry_run, stop=stop),
        tracking=remove_tracking(db, now, tracking_days, dry_run=dry_run, stop=stop),
        evidence=remove_evidence(db, certificates, now, evidence_years, dry_run=dry_run, stop=stop),
        holds=_on(db, stop, lambda conn: len(held_qids(conn))),
    )
