"""The queue's state: SQLite (WAL, ``synchronous=FULL``) through sqlite-utils.

The spool holds the bytes; this database holds who owns them and what happened. It
is the one thing the SMTP side and the workers share (Postfix's queue manager plays
this role). Every call runs on one dedicated thread, so the event loop never blocks
on disk and SQLite sees a single writer; each public coroutine is one transaction.

Schema changes go through the numbered, transactional migrations in ``MIGRATIONS``.

Recipient states (``queued``, ``deferred``, and the final ``delivered``, ``failed``,
``withdrawn``, ``bounced``), message kinds and message states are the enumerations of
:mod:`relay.queue.states`, the only names a reader needs to search for.

Reports to the sender of plain mail (:mod:`relay.certify.dsn`): a message has
``reports_pending`` while a recipient's outcome is still to be told; a recipient's
``report_qid`` names the report that told it ('' when none was due), a message's
``delay_report_qid`` its one "still trying" report; a late DSN is passed on at most
once per recipient and action (``late_reports``).

Exceptions::

    StoreError             -- the database could not do what was asked
      StoreFullError       -- out of disk space (452 to an SMTP client)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import queue
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from certifier import checkpoints, evidence
from relay.certify import dsn
from relay.private import create_private_file
from relay.queue.states import (
    DocumentState,
    MessageKind,
    MessageState,
    RecipientState,
    TrackingKind,
)

T = TypeVar("T")

WITHDRAWN_TOO_LATE = (
    "delivered by an attempt already under way when the operator withdrew the message"
)

MIGRATIONS: list[str] = [
    # 1: the queue, the users and the evidence log
    """
    CREATE TABLE messages (
        qid TEXT PRIMARY KEY,
        kind TEXT NOT NULL,               -- mail | notice | certificate
        parent_qid TEXT,                  -- for notices and certificates: the mail they are about
        created REAL NOT NULL,
        expires REAL NOT NULL,
        sender TEXT NOT NULL,             -- envelope sender, '' for the null sender
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,             -- the received hash
        certified INTEGER NOT NULL,
        cert_id TEXT,
        auth_user TEXT,
        client_ip TEXT,
        client_helo TEXT,
        tls_version TEXT,
        tls_cipher TEXT,
        method TEXT NOT NULL,             -- submission | mx | generated
        summary TEXT,                     -- JSON: certifier.message summary
        state TEXT NOT NULL,              -- active | held | done
        notice_state TEXT NOT NULL,       -- none | pending | done
        cert_state TEXT NOT NULL,         -- none | pending | done
        done_at REAL
    );
    CREATE INDEX messages_state ON messages(state);
    CREATE TABLE recipients (
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL REFERENCES messages(qid),
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        status TEXT NOT NULL,             -- queued | deferred | delivered | failed
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        last_attempt REAL,
        reply_code INTEGER,
        reply_enhanced TEXT,
        reply_text TEXT,
        remote_qid TEXT,
        mx_host TEXT,
        ip TEXT,
        port INTEGER,
        tls_version TEXT,
        tls_cipher TEXT,
        delivered_sha256 TEXT,
        note TEXT
    );
    CREATE INDEX recipients_due ON recipients(status, next_attempt);
    CREATE INDEX recipients_qid ON recipients(qid);
    CREATE TABLE users (
        address TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL
    );
    """
    + evidence.SCHEMA,
    # 2: leases, so that one scan never picks a recipient another attempt is working on
    """
    ALTER TABLE recipients ADD COLUMN lease_until REAL;
    """,
    # 3: open and click tracking (the addendum)
    """
    ALTER TABLE messages ADD COLUMN tracking INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE recipients ADD COLUMN addendum_at REAL;
    ALTER TABLE users ADD COLUMN tracking INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE tracking_links (
        qid TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        link INTEGER NOT NULL,
        url TEXT NOT NULL,
        PRIMARY KEY (qid, recipient_id, link)
    );
    CREATE TABLE tracking_events (
        id INTEGER PRIMARY KEY,
        qid TEXT NOT NULL,
        recipient_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        link INTEGER NOT NULL,
        url TEXT,
        time REAL NOT NULL,
        ip TEXT NOT NULL,
        user_agent TEXT NOT NULL,
        method TEXT NOT NULL,
        automatic INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX tracking_events_rcpt ON tracking_events(qid, recipient_id);
    """,
    # 4: MX mode (a Cc copy from the sender's provider): who the message is from and how
    # that was authenticated. For MX mail, ``sender`` is the registered From address
    # (notices and certificates go there) and ``envelope_from`` the MAIL FROM as received.
    """
    ALTER TABLE messages ADD COLUMN header_from TEXT;
    ALTER TABLE messages ADD COLUMN envelope_from TEXT;
    ALTER TABLE messages ADD COLUMN authentication TEXT;  -- JSON: DKIM, SPF, DMARC results
    """,
    # 5: RFC 3161 timestamped checkpoints of the evidence log's head
    checkpoints.SCHEMA,
    # 6: per recipient, whether its copy carried tracking (and why not); per message, the
    # last open or click already reported in a certificate or addendum
    """
    ALTER TABLE recipients ADD COLUMN tracked INTEGER;  -- 1 tracked, 0 sent as received, NULL not yet
    ALTER TABLE recipients ADD COLUMN tracking_notes TEXT;  -- JSON list of sentences
    ALTER TABLE messages ADD COLUMN tracking_reported INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: certified reception: mailbox owners, their forwarding tokens, the proofs of
    # receipt sent (RFC 3834: at most one per sender per interval)
    """
    CREATE TABLE reception_owners (
        owner TEXT PRIMARY KEY,
        token TEXT NOT NULL UNIQUE,
        ack_sender INTEGER NOT NULL,
        enabled INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE reception_acks (
        owner TEXT NOT NULL,
        sender TEXT NOT NULL,
        sent REAL NOT NULL,
        PRIMARY KEY (owner, sender)
    );
    ALTER TABLE messages ADD COLUMN reception TEXT;  -- JSON: owner, forwarding chain, ARC, receipt
    ALTER TABLE messages ADD COLUMN content_key TEXT;  -- SHA-256 without the forwarders' trace
    CREATE INDEX messages_reception ON messages(kind, sender, content_key);
    """,
    # 8: what the queue manager looks for on every scan, indexed, so a scan costs what
    # is pending, not the whole history: pending notices, messages with opens or clicks
    # not yet in an addendum
    """
    CREATE INDEX messages_notice_pending ON messages(qid) WHERE notice_state = 'pending';
    ALTER TABLE messages ADD COLUMN addendum_pending INTEGER NOT NULL DEFAULT 0;
    UPDATE messages SET addendum_pending = 1 WHERE tracking = 1 AND EXISTS
        (SELECT 1 FROM tracking_events e WHERE e.qid = messages.qid
         AND e.id > messages.tracking_reported);
    CREATE INDEX messages_addendum_pending ON messages(qid) WHERE addendum_pending = 1;
    """,
    # 9: delivery status notifications for uncertified mail (RFC 3461, relay/certify/dsn.py): the
    # DSN parameters as received, and which reports went to the sender, so a restart
    # sends each once
    """
    ALTER TABLE messages ADD COLUMN dsn_ret TEXT;           -- RET=: FULL | HDRS; NULL: not given
    ALTER TABLE messages ADD COLUMN dsn_envid TEXT;         -- ENVID=, xtext-decoded
    ALTER TABLE messages ADD COLUMN reports_pending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN delay_report_qid TEXT;  -- the "still trying" report sent
    ALTER TABLE recipients ADD COLUMN notify TEXT;          -- NOTIFY=: NEVER | SUCCESS,FAILURE,DELAY
    ALTER TABLE recipients ADD COLUMN orcpt TEXT;           -- ORCPT=, decoded: rfc822;bob@example.org
    ALTER TABLE recipients ADD COLUMN report_qid TEXT;      -- the report of its final outcome; '' none
    CREATE INDEX messages_reports_pending ON messages(qid) WHERE reports_pending = 1;
    """,
    # 10: mail for postmaster@ and abuse@ (kind 'postmaster', relay/cleanup/postmaster.py): the
    # addresses it was sent to (X-Original-To). For plain mail that left the queue: its
    # own header section, which a late DSN passed on to its sender quotes, and the late
    # reports already passed on, one per recipient and action, so a forged or repeated
    # DSN makes no second report.
    """
    ALTER TABLE messages ADD COLUMN original_to TEXT;       -- JSON list, postmaster mail only
    ALTER TABLE messages ADD COLUMN header_section BLOB;    -- plain mail, kept when it is done
    CREATE TABLE late_reports (
        recipient_id INTEGER NOT NULL,
        action TEXT NOT NULL,                               -- RFC 3464 action passed on
        dsn_qid TEXT NOT NULL,
        PRIMARY KEY (recipient_id, action)
    );
    -- Until now postmaster mail was queued as plain mail; the only plain mail the MX takes.
    UPDATE messages SET kind = 'postmaster'
        WHERE kind = 'mail' AND method = 'mx' AND certified = 0 AND state != 'done';
    """,
    # 11: who holds a recipient's lease (a process, later a node): a lease is given back
    # by its owner, and one left by an owner that died is taken over once it expires
    """
    ALTER TABLE recipients ADD COLUMN lease_owner TEXT;
    """,
]


class StoreError(Exception):
    """The database could not record what was asked."""


class StoreFullError(StoreError):
    """The disk holding the database is full."""


@dataclass(frozen=True)
class NewMessage:
    """A message to put in the queue: its row and its recipients."""

    qid: str
    kind: str
    sender: str
    size: int
    sha256: str
    recipients: tuple[str, ...]
    certified: bool = False
    method: str = "generated"
    parent_qid: str | None = None
    cert_id: str | None = None
    auth_user: str | None = None
    client_ip: str | None = None
    client_helo: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    summary: dict[str, Any] | None = None
    tracking: bool = False
    header_from: str | None = None
    envelope_from: str | None = None
    authentication: dict[str, Any] | None = None
    reception: dict[str, Any] | None = None
    content_key: str | None = None
    event: str | None = None
    event_detail: dict[str, Any] = field(default_factory=dict)
    dsn_ret: str | None = None  # RFC 3461 RET=
    dsn_envid: str | None = None  # RFC 3461 ENVID=, decoded
    notify: Mapping[str, str] = field(default_factory=dict)  # NOTIFY= per recipient given one
    orcpt: Mapping[str, str] = field(default_factory=dict)  # ORCPT= per recipient given one
    original_to: tuple[str, ...] = ()  # postmaster mail: the addresses it was sent to


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt ended in for one recipient: delivered, deferred or failed."""

    recipient_id: int
    status: str
    reply_code: int | None
    reply_enhanced: str | None
    reply_text: str
    remote_qid: str | None = None
    mx_host: str | None = None
    ip: str | None = None
    port: int | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    delivered_sha256: str | None = None
    note: str | None = None
    next_attempt: float | None = None


LATE_ACTIONS = frozenset(a.value for a in dsn.Action)
"""The RFC 3464 actions a late DSN can pass on to a sender (once each per recipient)."""


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


GROUP_MAX = 256
"""Operations committed together at most (see :class:`Store`)."""


@dataclass(frozen=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    reply: Callable[[bool, Any], None]
    read: bool = False  # only reads: needs no write lock (WAL readers never wait)


def _store_error(err: Exception) -> Exception:
    """The exception a caller sees: SQLite's mapped to :class:`StoreError` (full disk:
    :class:`StoreFullError`), anything else (a bug) as it is."""
    if isinstance(err, sqlite3.OperationalError):
        if "full" in str(err).lower():
            return _chained(StoreFullError(str(err)), err)
        return _chained(StoreError(str(err)), err)
    if isinstance(err, sqlite3.DatabaseError):
        return _chained(StoreError(str(err)), err)
    return err


def _chained(new: Exception, cause: Exception) -> Exception:
    new.__cause__ = cause
    return new


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Store:
    """The database, reached only through its own thread, with group commit.

    Every call is one operation: the store's thread runs the operations waiting at that
    moment (at most :data:`GROUP_MAX`) in one transaction, each inside its own savepoint,
    and commits once; only then are their callers answered. Under load twenty SMTP
    sessions' acceptances share one fsync of the WAL instead of paying one each, and a
    caller is still never told "stored" before its commit is on disk. An operation that
    fails is rolled back to its savepoint alone; a failed commit fails every operation
    of the group (each caller then answers 451, nothing half-stored).
    """

    def __init__(self, path: Path, lifetime: float) -> None:
        self.path = path
        self.lifetime = lifetime
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()
        self._opened.result()

    # -- plumbing ----------------------------------------------------------------
    def _open(self) -> None:
        if not self.path.exists():
            # SQLite gives -wal and -shm the database file's mode: 0600 for all three.
            create_private_file(self.path)
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._database = sqlite_utils.Database(conn)
        migrate(conn)

    @property
    def _db(self) -> sqlite_utils.Database:
        return self._database

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._database.conn

    def _serve(self) -> None:
        try:
            self._open()
        except BaseException as err:  # noqa: BLE001 - handed to the constructor's caller
            self._opened.set_exception(err)
            return
        self._opened.set_result(None)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < GROUP_MAX:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                group.append(op)
            self._run_group(group)
        self._conn.close()

    def _run_group(self, group: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        conn = self._conn
        try:
            # A group that writes takes the write lock at once, so it cannot fail half-way
            # on a lock; a group of reads takes none and never waits for a writer.
            conn.execute("BEGIN" if all(op.read for op in group) else "BEGIN IMMEDIATE")
            for op in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(*op.args)
                except Exception as err:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, _store_error(err)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except Exception as err:  # BEGIN, a savepoint or the COMMIT itself failed
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            failure = _store_error(err)
            outcomes = [(False, failure)] * len(group)
        for op, (ok, value) in zip(group, outcomes, strict=True):
            op.reply(ok, value)

    async def _run(self, fn: Callable[..., T], *args: Any, read: bool = False) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def reply(ok: bool, value: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, ok, value)

        self._queue.put(_Op(fn, args, reply, read))
        return await future

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_run` for an operation that only reads."""
        return await self._run(fn, *args, read=True)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    # -- queue -------------------------------------------------------------------
    async def enqueue(self, msg: NewMessage, now: float | None = None) -> None:
        """Record a spooled message and its recipients; the message is owned from now on."""
        await self._run(self._enqueue, msg, now or time.time())

    def _enqueue(self, msg: NewMessage, now: float) -> None:
        _insert(
            self._conn,
            "messages",
            {
                "qid": msg.qid,
                "kind": msg.kind,
                "parent_qid": msg.parent_qid,
                "created": now,
                "expires": now + self.lifetime,
                "sender": msg.sender,
                "size": msg.size,
                "sha256": msg.sha256,
                "certified": int(msg.certified),
                "cert_id": msg.cert_id,
                "auth_user": msg.auth_user,
                "client_ip": msg.client_ip,
                "client_helo": msg.client_helo,
                "tls_version": msg.tls_version,
                "tls_cipher": msg.tls_cipher,
                "method": msg.method,
                "tracking": int(msg.tracking),
                "header_from": msg.header_from,
                "envelope_from": msg.envelope_from,
                "authentication": json.dumps(msg.authentication)
                if msg.authentication is not None
                else None,
                "reception": json.dumps(msg.reception) if msg.reception is not None else None,
                "content_key": msg.content_key,
                "summary": json.dumps(msg.summary) if msg.summary is not None else None,
                "dsn_ret": msg.dsn_ret,
                "dsn_envid": msg.dsn_envid,
                "original_to": json.dumps(list(msg.original_to)) if msg.original_to else None,
                "state": MessageState.ACTIVE,
                "notice_state": DocumentState.PENDING
                if msg.certified and msg.kind == MessageKind.MAIL
                else DocumentState.NONE,
                "cert_state": DocumentState.PENDING if msg.certified else DocumentState.NONE,
            },
        )
        for rcpt in msg.recipients:
            _insert(
                self._conn,
                "recipients",
                {
                    "qid": msg.qid,
                    "address": rcpt,
                    "domain": _domain(rcpt),
                    "status": RecipientState.QUEUED,
                    "next_attempt": now,
                    "notify": msg.notify.get(rcpt),
                    "orcpt": msg.orcpt.get(rcpt),
                },
            )
        if msg.event:
            evidence.append(self._conn, now, msg.qid, msg.event, msg.event_detail)

    async def take_due(
        self,
        now: float,
        limit: int,
        lease: float,
        slots: Mapping[str, int] | None = None,
        default_slots: int | None = None,
    ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due recipients (of messages not on hold), oldest first.

        ``slots`` caps the messages taken per domain (``default_slots`` for a domain not
        in it; None: no cap). A domain with no slot left is not even read; the
        recipients of further messages to a domain that reaches its cap stay unleased in
        the database, instead of being leased, handed over and given back (a backlog to
        one busy domain made every scan do that with hundreds of rows).

        A lease marks a recipient as being tried by this process, so the next scan does not
        pick it again; it ends with the attempt's outcome, and a new process starts with
        none (:meth:`release_leases`), so a crash delays nothing.
        """
        return await self._run(self._take_due, now, limit, lease, dict(slots or {}), default_slots)

    def _take_due(
        self,
        now: float,
        limit: int,
        lease: float,
        slots: dict[str, int],
        default_slots: int | None,
    ) -> list[dict[str, Any]]:
        full = sorted(d for d, n in slots.items() if n <= 0)
        skip = f" AND r.domain NOT IN ({', '.join('?' for _ in full)})" if full else ""
        # Only placeholders are joined in: the domains themselves are parameters.
        sql = (
            "SELECT r.*, m.sender, m.kind, m.created, m.expires, m.client_ip,"  # noqa: S608
            " m.client_helo, m.auth_user, m.tls_version AS in_tls_version, m.method,"
            " m.tracking, m.header_from, m.cert_id, m.original_to"
            " FROM recipients r JOIN messages m ON m.qid = r.qid"
            " WHERE r.status IN ('queued', 'deferred') AND r.next_attempt <= ?"
            " AND r.lease_until IS NULL AND m.state = 'active'"
            f"{skip} ORDER BY r.next_attempt LIMIT ?"
        )
        cursor = self._conn.execute(sql, (now, *full, limit))
        columns = [d[0] for d in cursor.description]
        qid_at, domain_at = columns.index("qid"), columns.index("domain")
        messages: dict[str, set[str]] = {}  # per domain, the messages taken
        rows: list[dict[str, Any]] = []
        for values in cursor:
            domain, qid = values[domain_at], values[qid_at]
            taken = messages.setdefault(domain, set())
            if qid not in taken:
                cap = slots.get(domain, default_slots)
                if cap is not None and len(taken) >= cap:
                    continue  # the domain is at its limit: this message waits in the database
                taken.add(qid)
            rows.append(dict(zip(columns, values, strict=True)))
        self._conn.executemany(
            "UPDATE recipients SET lease_until = ? WHERE id = ?", [(lease, r["id"]) for r in rows]
        )
        return rows

    async def release_leases(self, keep: Iterable[int] = ()) -> None:
        """Release every lease but those of the recipients ``keep`` (attempts still
        under way in a delivery agent that outlived the queue manager)."""
        kept = sorted(set(keep))

        def _release() -> None:
            self._conn.execute("CREATE TEMP TABLE IF NOT EXISTS kept_leases (id INTEGER)")
            self._conn.execute("DELETE FROM kept_leases")
            self._conn.executemany("INSERT INTO kept_leases VALUES (?)", [(i,) for i in kept])
            self._conn.execute(
                "UPDATE recipients SET lease_until = NULL WHERE lease_until IS NOT NULL"
                " AND id NOT IN (SELECT id FROM kept_leases)"
            )

        await self._run(_release)

    async def release(self, ids: Iterable[int]) -> None:
        """Give up leases taken but not used; the recipients are due as they were."""
        ids = list(ids)
        await self._run(
            lambda: self._conn.executemany(
                "UPDATE recipients SET lease_until = NULL WHERE id = ?", [(i,) for i in ids]
            )
        )

    async def postpone(self, ids: Iterable[int], until: float) -> None:
        """Give up a lease and try again at ``until`` (after an attempt that failed oddly)."""
        ids = list(ids)
        await self._run(self._postpone, ids, until)

    def _postpone(self, ids: list[int], until: float) -> None:
        self._conn.executemany(
            "UPDATE recipients SET next_attempt = ?, lease_until = NULL WHERE id = ?",
            [(until, i) for i in ids],
        )

    async def record(self, qid: str, outcomes: list[Outcome], now: float) -> None:
        """Store the outcome of one attempt for each recipient and log the evidence."""
        await self._run(self._record, qid, outcomes, now)

    def _record(self, qid: str, outcomes: list[Outcome], now: float) -> None:
        report = False  # an outcome the sender asked to hear of (relay/certify/dsn.py)
        for out in outcomes:
            row = self._conn.execute(
                "SELECT address, status, notify FROM recipients WHERE id = ?", (out.recipient_id,)
            ).fetchone()
            if row is not None and row[1] == RecipientState.WITHDRAWN:
                # The operator withdrew the message while this attempt was under way.
                if out.status != RecipientState.DELIVERED:
                    self._conn.execute(
                        "UPDATE recipients SET lease_until = NULL WHERE id = ?",
                        (out.recipient_id,),
                    )
                    continue  # it stays withdrawn; nothing reached the recipient
                # It was delivered all the same: the evidence says so, as it happened.
                out = dataclasses.replace(
                    out, note=((out.note + "; ") if out.note else "") + WITHDRAWN_TOO_LATE
                )
            self._conn.execute(
                "UPDATE recipients SET status = ?, attempts = attempts + 1, last_attempt = ?,"
                " next_attempt = ?, reply_code = ?, reply_enhanced = ?, reply_text = ?,"
                " remote_qid = ?, mx_host = ?, ip = ?, port = ?, tls_version = ?,"
                " tls_cipher = ?, delivered_sha256 = ?, note = COALESCE(?, note), lease_until = NULL"
                " WHERE id = ?",
                (
                    out.status,
                    now,
                    out.next_attempt if out.next_attempt is not None else now,
                    out.reply_code,
                    out.reply_enhanced,
                    out.reply_text,
                    out.remote_qid,
                    out.mx_host,
                    out.ip,
                    out.port,
                    out.tls_version,
                    out.tls_cipher,
                    out.delivered_sha256,
                    out.note,
                    out.recipient_id,
                ),
            )
            event = {
                RecipientState.DELIVERED: "RelayToNonERDS",
                RecipientState.FAILED: "RelayToNonERDSFailure",
                RecipientState.DEFERRED: "RelayAttemptDeferred",
            }[RecipientState(out.status)]
            evidence.append(
                self._conn,
                now,
                qid,
                event,
                {
                    "reply": f"{out.reply_code or ''} {out.reply_enhanced or ''} "
                    f"{out.reply_text}".strip(),
                    "mx_host": out.mx_host,
                    "ip": out.ip,
                    "port": out.port,
                    "tls": out.tls_version,
                    "delivered_sha256": out.delivered_sha256,
                    "note": out.note,
                },
                recipient=row[0] if row else None,
            )
            action = {
                RecipientState.FAILED: dsn.Action.FAILED,
                RecipientState.DELIVERED: dsn.Action.RELAYED,
            }.get(RecipientState(out.status))
            if action is not None and row is not None and dsn.wants(row[2], action):
                report = True
        if report:
            # Only mail a person sent plainly gets reports: certified mail has its
            # certificate, and the null sender and the gateway's own mail get nothing.
            self._conn.execute(
                "UPDATE messages SET reports_pending = 1 WHERE qid = ? AND kind = 'mail'"
                " AND certified = 0 AND sender != ''",
                (qid,),
            )

    async def message(self, qid: str) -> dict[str, Any] | None:
        return await self._read(self._message, qid)

    def _message(self, qid: str) -> dict[str, Any] | None:
        rows = list(self._db.query("SELECT * FROM messages WHERE qid = ?", (qid,)))
        return rows[0] if rows else None

    async def recipients(self, qid: str) -> list[dict[str, Any]]:
        return await self._read(self._recipients, qid)

    def _recipients(self, qid: str) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM recipients WHERE qid = ? ORDER BY id", (qid,)))

    async def evidence_for(self, qid: str) -> list[evidence.Entry]:
        return await self._read(lambda: evidence.entries_for(self._conn, qid))

    # -- evidence log checkpoints (certifier.checkpoints) -------------------------
    async def evidence_head(self) -> tuple[int, str] | None:
        return await self._read(lambda: evidence.head(self._conn))

    async def evidence_excerpt(self, seqs: list[int]) -> list[dict[str, Any]]:
        """Entries as a certificate embeds them (every hashed field, as hashed)."""
        return await self._read(lambda: evidence.excerpt(self._conn, seqs))

    async def add_checkpoint(self, checkpoint: checkpoints.Checkpoint) -> None:
        await self._run(lambda: checkpoints.record(self._conn, checkpoint))

    async def latest_checkpoint(self) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: checkpoints.latest(self._conn))

    async def checkpoint_covering(self, seq: int) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: checkpoints.covering(self._conn, seq))

    async def pending_work(
        self, candidates: Iterable[str] | None = None, limit: int = 256
    ) -> dict[str, list[str]]:
        """Active messages needing a notice, and (among ``candidates``, or all active
        ones when None) those whose recipients are all final: to certify or close. At
        most ``limit`` of each, oldest first; the next scan takes the rest."""
        wanted = None if candidates is None else list(candidates)
        return await self._read(self._pending_work, wanted, limit)

    def _pending_work(self, candidates: list[str] | None, limit: int) -> dict[str, list[str]]:
        notices = [
            r["qid"]
            for r in self._db.query(
                "SELECT qid FROM messages WHERE notice_state = 'pending' AND state != 'done'"
                " LIMIT ?",
                (limit,),
            )
        ]
        finished = (
            " SELECT 1 FROM recipients r WHERE r.qid = m.qid"
            "  AND (r.status NOT IN ('delivered', 'failed', 'withdrawn', 'bounced')"
            "       OR r.lease_until IS NOT NULL)"  # an attempt still under way
        )
        no_report = " AND m.reports_pending = 0"  # the sender's report goes first
        if candidates is None:
            ready = [
                r["qid"]
                for r in self._db.query(
                    f"SELECT m.qid FROM messages m WHERE m.state = 'active' AND NOT EXISTS ({finished})"  # noqa: S608
                    f"{no_report} ORDER BY m.created LIMIT ?",
                    (limit,),
                )
            ]
        else:
            ready = []
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                ready += [
                    r["qid"]
                    for r in self._db.query(
                        f"SELECT m.qid FROM messages m WHERE m.qid IN ({marks})"  # noqa: S608
                        f" AND m.state = 'active' AND NOT EXISTS ({finished}){no_report}",
                        chunk,
                    )
                ]
        reports = [
            r["qid"]
            for r in self._db.query(
                "SELECT m.qid FROM messages m WHERE m.reports_pending = 1 AND m.state = 'active'"
                " AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid"
                "  AND r.lease_until IS NOT NULL) LIMIT ?",  # one report per delivery round
                (limit,),
            )
        ]
        return {"notices": notices, "finished": ready, "reports": reports}

    async def delays_due(self, arrived_before: float, limit: int = 256) -> list[str]:
        """Plain mail that arrived before ``arrived_before``, still deferred for someone
        who did not decline delay reports (RFC 3461 NOTIFY), and had no delay report."""
        return await self._read(
            lambda: [
                r[0]
                for r in self._conn.execute(
                    "SELECT m.qid FROM messages m WHERE m.state = 'active' AND m.kind = 'mail'"
                    " AND m.certified = 0 AND m.sender != '' AND m.delay_report_qid IS NULL"
                    " AND m.created <= ? AND EXISTS (SELECT 1 FROM recipients r"
                    "  WHERE r.qid = m.qid AND r.status = 'deferred'"
                    "  AND (r.notify IS NULL OR r.notify LIKE '%DELAY%'))"
                    " ORDER BY m.created LIMIT ?",
                    (arrived_before, limit),
                )
            ]
        )

    async def record_report(
        self,
        qid: str,
        report: NewMessage | None,
        final_ids: list[int],
        delay: bool,
        now: float,
    ) -> bool:
        """Queue ``report`` (a DSN to the sender of ``qid``) and note, in the same
        transaction, that it told the final outcome of recipients ``final_ids`` (and,
        with ``delay``, that the message had its delay report). Without ``report``,
        those recipients need none (NOTIFY=NEVER, or the message is a report itself).
        False, with nothing written, when one of them was reported already."""
        return await self._run(self._record_report, qid, report, final_ids, delay, now)

    def _record_report(
        self, qid: str, report: NewMessage | None, final_ids: list[int], delay: bool, now: float
    ) -> bool:
        marks = ", ".join("?" for _ in final_ids)
        if final_ids:
            open_ids = self._conn.execute(
                f"SELECT COUNT(*) FROM recipients WHERE qid = ? AND id IN ({marks})"  # noqa: S608
                " AND report_qid IS NULL",
                (qid, *final_ids),
            ).fetchone()[0]
            if open_ids != len(final_ids):
                return False
        if delay:
            row = self._conn.execute(
                "SELECT delay_report_qid FROM messages WHERE qid = ?", (qid,)
            ).fetchone()
            if row is None or row[0] is not None:
                return False
        report_qid = report.qid if report is not None else ""
        if report is not None:
            self._enqueue(report, now)
        if final_ids:
            self._conn.execute(
                f"UPDATE recipients SET report_qid = ? WHERE qid = ? AND id IN ({marks})",  # noqa: S608
                (report_qid, qid, *final_ids),
            )
        if delay:
            _update_message(self._conn, qid, {"delay_report_qid": report_qid})
        # Still pending if an outcome was recorded since the caller looked (dsn.wants).
        self._conn.execute(
            "UPDATE messages SET reports_pending = EXISTS (SELECT 1 FROM recipients r"
            " WHERE r.qid = messages.qid AND r.report_qid IS NULL AND ("
            "  (r.status = 'failed' AND (r.notify IS NULL OR r.notify LIKE '%FAILURE%'))"
            "  OR (r.status = 'delivered' AND r.notify LIKE '%SUCCESS%'))) WHERE qid = ?",
            (qid,),
        )
        return True

    async def mark(self, qid: str, **columns: Any) -> None:
        await self._run(self._mark, qid, columns)

    def _mark(self, qid: str, columns: dict[str, Any]) -> None:
        _update_message(self._conn, qid, columns)

    async def enqueue_generated(
        self, msg: NewMessage, parent_qid: str, parent_columns: dict[str, Any], now: float
    ) -> None:
        """Queue a notice or certificate and update its parent in one transaction."""
        await self._run(self._enqueue_generated, msg, parent_qid, parent_columns, now)

    def _enqueue_generated(
        self, msg: NewMessage, parent_qid: str, parent_columns: dict[str, Any], now: float
    ) -> None:
        self._enqueue(msg, now)
        _update_message(self._conn, parent_qid, parent_columns)

    async def append_evidence(
        self, qid: str, event: str, detail: dict[str, Any], now: float, recipient: str | None = None
    ) -> None:
        await self._run(lambda: evidence.append(self._conn, now, qid, event, detail, recipient))

    async def active_qids(self) -> set[str]:
        return await self._read(
            lambda: {
                r["qid"] for r in self._db.query("SELECT qid FROM messages WHERE state != 'done'")
            }
        )

    async def all_qids(self) -> set[str]:
        return await self._read(
            lambda: {r["qid"] for r in self._db.query("SELECT qid FROM messages")}
        )

    async def finished_in_spool(self, qids: Iterable[str]) -> dict[str, bool]:
        """Of ``qids`` (files still in the spool's queue), those whose message is done,
        with whether it must be archived (certified, a DSN, or postmaster mail the
        operator's mailbox refused) rather than removed."""
        wanted = list(qids)

        def _query() -> dict[str, bool]:
            found: dict[str, bool] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for r in self._db.query(
                    f"SELECT qid, certified, kind, EXISTS (SELECT 1 FROM recipients r"  # noqa: S608
                    f" WHERE r.qid = messages.qid AND r.status = 'failed') AS failed"
                    f" FROM messages WHERE state = 'done' AND qid IN ({marks})",
                    chunk,
                ):
                    found[r["qid"]] = (
                        bool(r["certified"])
                        or r["kind"] == MessageKind.DSN
                        or (r["kind"] == MessageKind.POSTMASTER and bool(r["failed"]))
                    )
            return found

        return await self._read(_query)

    async def queue_listing(self) -> list[dict[str, Any]]:
        return await self._read(self._queue_listing)

    def _queue_listing(self) -> list[dict[str, Any]]:
        rows = list(self._db.query("SELECT * FROM messages WHERE state != 'done' ORDER BY created"))
        for row in rows:
            row["recipients"] = self._recipients(row["qid"])
        return rows

    # -- tracking (opens and clicks) ----------------------------------------------
    async def tracking_copy(
        self,
        qid: str,
        recipient_ids: list[int],
        links: tuple[str, ...],
        tracked: bool,
        notes: tuple[str, ...],
    ) -> None:
        """Record, before the copy is sent, whether these recipients' copy is tracked
        (and the URLs its links stand for) or sent as received, and why."""

        def _write() -> None:
            if tracked:
                (recipient_id,) = recipient_ids  # a tracked copy is one recipient's own
                self._conn.executemany(
                    "INSERT OR REPLACE INTO tracking_links (qid, recipient_id, link, url)"
                    " VALUES (?, ?, ?, ?)",
                    [(qid, recipient_id, n, url) for n, url in enumerate(links, start=1)],
                )
            self._conn.executemany(
                "UPDATE recipients SET tracked = ?, tracking_notes = ? WHERE id = ?",
                [(int(tracked), json.dumps(list(notes)), i) for i in recipient_ids],
            )

        await self._run(_write)

    async def link_url(self, qid: str, recipient_id: int, link: int) -> str | None:
        def _get() -> str | None:
            row = self._conn.execute(
                "SELECT url FROM tracking_links WHERE qid = ? AND recipient_id = ? AND link = ?",
                (qid, recipient_id, link),
            ).fetchone()
            return row[0] if row else None

        return await self._read(_get)

    async def tracked_recipient(self, qid: str, recipient_id: int) -> dict[str, Any] | None:
        def _get() -> dict[str, Any] | None:
            rows = list(
                self._db.query(
                    "SELECT r.address, r.last_attempt, r.status, m.tracking FROM recipients r"
                    " JOIN messages m ON m.qid = r.qid WHERE r.qid = ? AND r.id = ?",
                    (qid, recipient_id),
                )
            )
            return rows[0] if rows else None

        return await self._read(_get)

    async def record_tracking(self, address: str, row: dict[str, Any], now: float) -> None:
        """One open or click: a row of its own and an evidence entry (extensions to ETSI)."""
        await self._run(self._record_tracking, address, row, now)

    def _record_tracking(self, address: str, row: dict[str, Any], now: float) -> None:
        _insert(self._conn, "tracking_events", row)
        self._conn.execute(
            "UPDATE messages SET addendum_pending = 1 WHERE qid = ? AND addendum_pending = 0",
            (row["qid"],),
        )
        detail = {
            k: row[k] for k in ("link", "url", "ip", "user_agent", "method", "automatic", "reason")
        }
        event = "ContentOpened" if row["kind"] == TrackingKind.OPEN else "LinkClicked"
        evidence.append(self._conn, now, row["qid"], event, detail, recipient=address)

    async def recent_clicks(self, qid: str, recipient_id: int, since: float) -> int:
        return await self._read(
            lambda: self._conn.execute(
                "SELECT COUNT(DISTINCT link) FROM tracking_events WHERE qid = ? AND recipient_id = ?"
                " AND kind = 'click' AND time >= ?",
                (qid, recipient_id, since),
            ).fetchone()[0]
        )

    async def link_count(self, qid: str, recipient_id: int) -> int:
        return await self._read(
            lambda: self._conn.execute(
                "SELECT COUNT(*) FROM tracking_links WHERE qid = ? AND recipient_id = ?",
                (qid, recipient_id),
            ).fetchone()[0]
        )

    async def addenda_due(self, now: float, interval: float) -> list[str]:
        """Certified messages with opens or clicks not yet reported to the sender, whose
        recipients have not had an addendum within ``interval``. Messages flagged
        ``addendum_pending`` whose events have all been reported lose the flag."""

        def _due() -> list[str]:
            self._conn.execute(
                "UPDATE messages SET addendum_pending = 0 WHERE addendum_pending = 1"
                " AND NOT EXISTS (SELECT 1 FROM tracking_events e WHERE e.qid = messages.qid"
                "  AND e.id > messages.tracking_reported)"
            )
            return [
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT r.qid FROM messages m JOIN recipients r ON r.qid = m.qid"
                    " WHERE m.addendum_pending = 1 AND m.tracking = 1 AND m.cert_state = 'done'"
                    " AND EXISTS (SELECT 1 FROM tracking_events e WHERE e.qid = r.qid"
                    "  AND e.recipient_id = r.id AND e.id > m.tracking_reported)"
                    " AND (r.addendum_at IS NULL OR r.addendum_at <= ?)",
                    (now - interval,),
                )
            ]

        return await self._run(_due)

    async def tracking_events(self, qid: str, after_id: int = 0) -> list[dict[str, Any]]:
        """The opens and clicks of ``qid`` recorded after event ``after_id``."""
        return await self._read(
            lambda: list(
                self._db.query(
                    "SELECT e.*, r.address FROM tracking_events e JOIN recipients r"
                    " ON r.id = e.recipient_id WHERE e.qid = ? AND e.id > ?"
                    " ORDER BY e.time, e.id",
                    (qid, after_id),
                )
            )
        )

    async def mark_reported(self, qid: str, last_id: int, addendum_at: float | None) -> None:
        """Opens and clicks up to event ``last_id`` are in a document the sender has; with
        ``addendum_at``, the recipients they are about had an addendum at that time."""

        def _mark() -> None:
            previous = self._conn.execute(
                "SELECT tracking_reported FROM messages WHERE qid = ?", (qid,)
            ).fetchone()
            if addendum_at is not None and previous is not None:
                self._conn.execute(
                    "UPDATE recipients SET addendum_at = ? WHERE qid = ? AND id IN"
                    " (SELECT recipient_id FROM tracking_events WHERE qid = ?"
                    "  AND id > ? AND id <= ?)",
                    (addendum_at, qid, qid, previous[0], last_id),
                )
            self._conn.execute(
                "UPDATE messages SET tracking_reported = MAX(tracking_reported, ?) WHERE qid = ?",
                (last_id, qid),
            )

        await self._run(_mark)

    async def user_tracking(self, address: str) -> bool:
        return await self._read(
            lambda: bool(
                (
                    self._conn.execute(
                        "SELECT tracking FROM users WHERE address = ?", (address.lower(),)
                    ).fetchone()
                    or (1,)
                )[0]
            )
        )

    # -- late bounces (RFC 3464 DSNs to our VERP return path) ---------------------
    async def accept_dsn(
        self, dsn: NewMessage, parent_qid: str, reports: list[dict[str, Any]], now: float
    ) -> list[str] | None:
        """Record a DSN about ``parent_qid`` and what it says of each recipient, in one
        transaction. Delivered recipients that it reports failed become ``bounced``; the DSN
        is queued (kind ``dsn``) so an addendum is made when the certificate is out already,
        or, for plain mail, the reports not yet passed on go on to its sender (summary key
        ``pass_on``: their indexes in ``reports``). Returns the addresses marked bounced;
        None, with nothing written, when the DSN is not recorded (no such message, or the
        same DSN again): its spool file is then the caller's to remove."""
        return await self._run(self._accept_dsn, dsn, parent_qid, reports, now)

    def _accept_dsn(
        self, dsn: NewMessage, parent_qid: str, reports: list[dict[str, Any]], now: float
    ) -> list[str] | None:
        parent = self._message(parent_qid)
        if parent is None:
            return None
        seen = self._conn.execute(
            "SELECT 1 FROM messages WHERE kind = 'dsn' AND parent_qid = ? AND sha256 = ?",
            (parent_qid, dsn.sha256),
        ).fetchone()
        if seen:  # the same DSN again (the reporting MTA retried after a 451): once is enough
            return None
        envelope_sender = (
            parent["sender"] if parent["envelope_from"] is None else parent["envelope_from"]
        )
        # Only what a user sent plainly is passed on; postmaster mail never goes back.
        plain = (
            parent["kind"] == MessageKind.MAIL and not parent["certified"] and bool(envelope_sender)
        )
        bounced: list[str] = []
        pass_on: list[int] = []
        for index, report in enumerate(reports):
            address = str(report.get("recipient") or "").lower()
            row = self._conn.execute(
                "SELECT id, status, address FROM recipients WHERE qid = ? AND lower(address) = ?",
                (parent_qid, address),
            ).fetchone()
            detail = {**report, "dsn_qid": dsn.qid, "dsn_sha256": dsn.sha256, "late": True}
            if row is None:
                evidence.append(self._conn, now, parent_qid, "DeliveryReportUnmatched", detail)
                continue
            # A report is passed on only about a recipient the gateway delivered to, once
            # per action: anyone who knows a return path cannot make it write again.
            if (
                plain
                and row[1] == RecipientState.DELIVERED
                and report.get("action") in LATE_ACTIONS
            ):
                claimed = self._conn.execute(
                    "INSERT OR IGNORE INTO late_reports (recipient_id, action, dsn_qid)"
                    " VALUES (?, ?, ?)",
                    (row[0], report.get("action"), dsn.qid),
                ).rowcount
                if claimed:
                    pass_on.append(index)
            if report.get("action") == "failed" and row[1] == RecipientState.DELIVERED:
                self._conn.execute(
                    "UPDATE recipients SET status = 'bounced', reply_enhanced = ?, reply_text = ?,"
                    " reply_code = NULL, last_attempt = ? WHERE id = ?",
                    (report.get("status"), str(report.get("diagnostic") or "")[:500], now, row[0]),
                )
                evidence.append(
                    self._conn, now, parent_qid, "RelayToNonERDSFailure", detail, row[2]
                )
                bounced.append(row[2])
            else:
                evidence.append(self._conn, now, parent_qid, "DeliveryReport", detail, row[2])
        addendum = (
            bool(bounced)
            and parent["cert_state"] == DocumentState.DONE
            and bool(parent["certified"])
        )
        self._enqueue(
            NewMessage(
                qid=dsn.qid,
                kind=MessageKind.DSN,
                sender=dsn.sender,
                size=dsn.size,
                sha256=dsn.sha256,
                recipients=(),
                certified=addendum,
                method="mx",
                parent_qid=parent_qid,
                cert_id=dsn.cert_id if addendum else None,
                client_ip=dsn.client_ip,
                client_helo=dsn.client_helo,
                summary={"reports": reports, "pass_on": pass_on},
            ),
            now,
        )
        return bounced

    # -- operator actions (certifica queue ...) -----------------------------------
    def find_qids(self, prefix: str) -> list[str]:
        """Queue ids starting with ``prefix`` (ids are long; operators type a few characters)."""
        if not re.fullmatch(r"[0-9A-Fa-f]{1,12}", prefix):
            return []
        return self.run_sync(
            lambda db: [
                r["qid"]
                for r in db.query(
                    "SELECT qid FROM messages WHERE qid LIKE ? ORDER BY created",
                    (prefix.upper() + "%",),
                )
            ]
        )

    def show(self, qid: str) -> dict[str, Any]:
        def _show(db: sqlite_utils.Database) -> dict[str, Any]:
            row = self._message(qid) or {}
            row["recipients"] = self._recipients(qid)
            row["evidence"] = [e.__dict__ for e in evidence.entries_for(self._conn, qid)]
            return row

        return self.run_sync(_show)

    def retry_now(self, qid: str | None, now: float) -> int:
        """Make deferred recipients due now (all messages, or one). Returns how many."""
        if qid is None:
            sql = (
                "UPDATE recipients SET next_attempt = ? WHERE status IN ('queued', 'deferred')"
                " AND qid IN (SELECT qid FROM messages WHERE state = 'active')"
            )
            return self.run_sync(lambda db: db.conn.execute(sql, (now,)).rowcount)
        sql_one = (
            "UPDATE recipients SET next_attempt = ? WHERE status IN ('queued', 'deferred')"
            " AND qid = ?"
        )
        return self.run_sync(lambda db: db.conn.execute(sql_one, (now, qid)).rowcount)

    def set_held(self, qid: str, held: bool, now: float) -> bool:
        """Put a message on hold (no delivery attempts) or release it."""

        def _set(db: sqlite_utils.Database) -> bool:
            old, new = (
                (MessageState.ACTIVE, MessageState.HELD)
                if held
                else (MessageState.HELD, MessageState.ACTIVE)
            )
            changed = db.conn.execute(
                "UPDATE messages SET state = ? WHERE qid = ? AND state = ?", (new, qid, old)
            ).rowcount
            if changed:
                event = "OperatorHold" if held else "OperatorRelease"
                evidence.append(self._conn, now, qid, event, {})
                if not held:
                    db.conn.execute(
                        "UPDATE recipients SET next_attempt = ? WHERE qid = ?"
                        " AND status IN ('queued', 'deferred')",
                        (now, qid),
                    )
            return bool(changed)

        return self.run_sync(_set)

    def withdraw(self, qid: str, operator: str, now: float) -> int:
        """Delete a message from the queue as the operator: undelivered recipients become
        ``withdrawn``; a certified message is then certified as withdrawn, never dropped."""

        def _withdraw(db: sqlite_utils.Database) -> int:
            rows = list(
                db.query(
                    "SELECT id, address FROM recipients WHERE qid = ?"
                    " AND status IN ('queued', 'deferred')",
                    (qid,),
                )
            )
            for r in rows:
                db.conn.execute(
                    "UPDATE recipients SET status = 'withdrawn', reply_text = ?, last_attempt = ?"
                    " WHERE id = ?",
                    (f"withdrawn by the operator ({operator})", now, r["id"]),
                )
                evidence.append(
                    self._conn,
                    now,
                    qid,
                    "WithdrawnByOperator",
                    {"operator": operator},
                    recipient=r["address"],
                )
            db.conn.execute(
                "UPDATE messages SET state = 'active' WHERE qid = ? AND state = 'held'", (qid,)
            )
            return len(rows)

        return self.run_sync(_withdraw)

    # -- certified reception -----------------------------------------------------------
    async def reception_owner(self, token: str) -> dict[str, Any] | None:
        """The enabled owner whose forwarding token is ``token`` (case-insensitive)."""
        rows = await self._read(
            lambda: list(
                self._db.query(
                    "SELECT * FROM reception_owners WHERE token = ? AND enabled = 1",
                    (token.lower(),),
                )
            )
        )
        return rows[0] if rows else None

    async def reception_duplicate(self, owner: str, key: str, since: float) -> str | None:
        """A reception of the same message (``content_key``) for ``owner`` accepted since
        ``since``, if any."""
        row = await self._read(
            lambda: self._conn.execute(
                "SELECT qid FROM messages WHERE kind = 'reception' AND sender = ?"
                " AND content_key = ? AND created >= ? ORDER BY created LIMIT 1",
                (owner, key, since),
            ).fetchone()
        )
        return row[0] if row else None

    async def claim_receipt(self, owner: str, sender: str, now: float, interval: float) -> bool:
        """Whether a proof of receipt may go from ``owner`` to ``sender`` now; if so it is
        recorded in the same transaction, so two at once cannot both be sent."""

        def _claim() -> bool:
            row = self._conn.execute(
                "SELECT sent FROM reception_acks WHERE owner = ? AND sender = ?",
                (owner, sender),
            ).fetchone()
            if row is not None and row[0] > now - interval:
                return False
            self._conn.execute(
                "INSERT OR REPLACE INTO reception_acks (owner, sender, sent) VALUES (?, ?, ?)",
                (owner, sender, now),
            )
            return True

        return await self._run(_claim)

    def reception_enable(
        self, owner: str, token: str, ack_sender: bool | None, now: float
    ) -> tuple[str, bool]:
        """Turn certified reception on for ``owner``; its token stays the same if it had
        one (forwarding rules already set up keep working). ``ack_sender`` None keeps the
        current choice (off for a new owner). Returns the token and the choice."""

        def _enable(db: sqlite_utils.Database) -> tuple[str, bool]:
            row = db.conn.execute(
                "SELECT token, ack_sender FROM reception_owners WHERE owner = ?", (owner,)
            ).fetchone()
            if row is not None:
                ack = bool(row[1]) if ack_sender is None else ack_sender
                db.conn.execute(
                    "UPDATE reception_owners SET enabled = 1, ack_sender = ? WHERE owner = ?",
                    (int(ack), owner),
                )
                return str(row[0]), ack
            ack = bool(ack_sender)
            db.conn.execute(
                "INSERT INTO reception_owners (owner, token, ack_sender, enabled, created)"
                " VALUES (?, ?, ?, 1, ?)",
                (owner, token, int(ack), now),
            )
            return token, ack

        return self.run_sync(_enable)

    def reception_disable(self, owner: str) -> bool:
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "UPDATE reception_owners SET enabled = 0 WHERE owner = ? AND enabled = 1",
                    (owner,),
                ).rowcount
                > 0
            )
        )

    def reception_list(self) -> list[dict[str, Any]]:
        return self.run_sync(
            lambda db: list(db.query("SELECT * FROM reception_owners ORDER BY owner"))
        )

    # -- users -------------------------------------------------------------------
    async def user_hash(self, address: str) -> str | None:
        return await self._read(self._user_hash, address)

    def _user_hash(self, address: str) -> str | None:
        row = self._conn.execute(
            "SELECT password_hash FROM users WHERE address = ?", (address.lower(),)
        ).fetchone()
        return row[0] if row else None

    def run_sync(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn(db)`` as one operation from synchronous code (the CLI)."""
        future: Future[T] = Future()

        def reply(ok: bool, value: Any) -> None:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        self._queue.put(_Op(lambda: fn(self._db), (), reply))
        return future.result()


_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")


def _insert(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    # Plain SQL rather than sqlite-utils' insert(), which commits on its own and would
    # split what must be one transaction (message, recipients, evidence).
    assert table in ("messages", "recipients", "tracking_events")
    assert all(_COLUMN.match(c) for c in row)
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))  # noqa: S608


def _update_message(conn: sqlite3.Connection, qid: str, columns: dict[str, Any]) -> None:
    if not columns:
        return
    assert all(_COLUMN.match(c) for c in columns)
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conn.execute(
        f"UPDATE messages SET {assignments} WHERE qid = ?",  # noqa: S608
        (*columns.values(), qid),
    )


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied, each in its own transaction. Returns the version."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)")
    conn.commit()
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for number, script in enumerate(MIGRATIONS, start=1):
        if number in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (number,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
