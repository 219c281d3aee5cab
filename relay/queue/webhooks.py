"""Organisations' webhooks: the URLs, the deliveries owed to them, every attempt, and the
cursor over the evidence log that makes the deliveries (docs/webhooks.md).

Four tables of migration 15: ``webhooks`` (one URL of one organisation, the events it
wants, its HMAC secret), ``webhook_deliveries`` (one event owed to one webhook: the JSON
body as signed, its state and next attempt), ``webhook_attempts`` (every POST and what
came of it) and ``webhook_cursor`` (the evidence entries read so far).

Events are read from the evidence log, not told by the stages: every fact a webhook
reports (delivered, failed, opened, certificate issued) is an evidence entry already,
written in the transaction that made it true. :meth:`Webhooks.collect_webhook_events`
reads the entries past the cursor, turns those about an organisation's messages into
deliveries (one per webhook that wants the event) and advances the cursor, in one
transaction: after a crash either both happened or neither, so no event is lost or
owed twice. Which entry is which event, and what its body says, is
:mod:`relay.webhooks.events`'s business, handed in as a function.

Delivery states (:class:`DeliveryState`): ``pending`` (owed; ``next_attempt`` says
when), ``delivered`` (a 2xx answer), ``failed`` (given up after ``[webhooks]
retry_for``, or its webhook was removed). A delivery's body, which names a recipient,
is kept only while it is pending: once it has ended, the row keeps its event, its
evidence entry and its attempts (what ``webhook log`` shows), so the gateway holds no
second copy of recipients' addresses beside the queue's own (docs/retention.md,
docs/erasure.md).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from relay.queue.db import Database

CURSOR = "webhooks"
"""The ``webhook_cursor`` row of the webhook process."""

BATCH = 500
"""Evidence entries read per transaction."""


class WebhookEvent(StrEnum):
    """The events an organisation may subscribe to (``--events``)."""

    DELIVERED = "delivered"  # a recipient's mail server accepted the message
    FAILED = "failed"  # a recipient failed, or bounced later
    OPENED = "opened"  # a tracked copy was opened or a tracked link followed
    CERTIFICATE = "certificate"  # a certificate or an addendum was issued


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


REMOVED = "webhook removed"
"""``last_error`` of the deliveries given up because their webhook was removed."""


@dataclass(frozen=True)
class Webhook:
    """One row of ``webhooks`` (the secret is never read back)."""

    id: int
    org: str
    url: str
    events: tuple[WebhookEvent, ...]
    created: float


@dataclass(frozen=True)
class Entry:
    """An evidence entry about a message of an organisation with webhooks: what
    :mod:`relay.webhooks.events` turns into an event."""

    seq: int
    time: float
    qid: str
    recipient: str | None
    event: str
    detail: dict[str, Any]
    org: str
    cert_id: str | None
    certified: bool


@dataclass(frozen=True)
class Due:
    """A delivery to attempt now, with what the POST needs."""

    id: int
    webhook_id: int
    url: str
    secret: str
    event: str
    payload: str
    created: float
    attempts: int


@dataclass(frozen=True)
class Attempt:
    time: float
    status: int | None
    error: str | None
    seconds: float


@dataclass(frozen=True)
class Delivery:
    """A delivery as ``certifica webhook log`` shows it, with its attempts."""

    id: int
    webhook_id: int
    url: str
    event: str
    qid: str | None
    created: float
    state: DeliveryState
    next_attempt: float
    done_at: float | None
    removed: bool  # given up because its webhook was removed
    attempts: tuple[Attempt, ...]


Mapper = Callable[[Entry], tuple[WebhookEvent, str] | None]
"""An evidence entry to (event, JSON body), or None when it is no webhook event."""


def _webhook(row: tuple[Any, ...]) -> Webhook:
    return Webhook(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        tuple(WebhookEvent(e) for e in json.loads(row[3])),
        float(row[4]),
    )


_WEBHOOK = "SELECT id, org, url, events, created FROM webhooks WHERE disabled = 0"


def webhooks(conn: sqlite3.Connection, org: str | None = None) -> list[Webhook]:
    """The webhooks of ``org`` (None: of every organisation), by id."""
    if org is None:
        rows = conn.execute(_WEBHOOK + " ORDER BY id").fetchall()
    else:
        rows = conn.execute(_WEBHOOK + " AND org = ? ORDER BY id", (org,)).fetchall()
    return [_webhook(r) for r in rows]


def add(
    conn: sqlite3.Connection,
    org: str,
    url: str,
    events: tuple[WebhookEvent, ...],
    secret: str,
    now: float,
) -> int:
    """Add a webhook; returns its id. Events from now on are sent to it."""
    cursor = conn.execute(
        "INSERT INTO webhooks (org, url, events, secret, created) VALUES (?, ?, ?, ?, ?)",
        (org, url, json.dumps([str(e) for e in events]), secret, now),
    )
    return int(cursor.lastrowid or 0)


def remove(conn: sqlite3.Connection, org: str, webhook_id: int, now: float) -> bool:
    """Remove webhook ``webhook_id`` of ``org`` (False: no such webhook). Its row stays,
    disabled, for ``webhook log``; what it was still owed is given up."""
    changed = conn.execute(
        "UPDATE webhooks SET disabled = 1 WHERE id = ? AND org = ? AND disabled = 0",
        (webhook_id, org),
    ).rowcount
    if not changed:
        return False
    conn.execute(
        "UPDATE webhook_deliveries SET state = ?, last_error = ?, done_at = ?, payload = ''"
        " WHERE webhook_id = ? AND state = ?",
        (DeliveryState.FAILED, REMOVED, now, webhook_id, DeliveryState.PENDING),
    )
    return True


def collect(conn: sqlite3.Connection, mapper: Mapper, now: float, batch: int = BATCH) -> int:
    """Read up to ``batch`` evidence entries past the cursor, owe a delivery for each
    event to each webhook that wants it, and advance the cursor, inside the caller's
    transaction. Returns the number of deliveries made; the cursor's new position is
    :func:`cursor`. A webhook gets the events of entries recorded after it was added."""
    row = conn.execute("SELECT seq FROM webhook_cursor WHERE name = ?", (CURSOR,)).fetchone()
    start = int(row[0]) if row else 0
    (head,) = conn.execute("SELECT MAX(seq) FROM evidence").fetchone()
    if head is None or int(head) <= start:
        return 0
    hooks = webhooks(conn)
    # Without webhooks there is nothing to read: the cursor jumps to the head.
    upper = min(int(head), start + batch) if hooks else int(head)
    made = 0
    if hooks:
        by_org: dict[str, list[Webhook]] = {}
        for hook in hooks:
            by_org.setdefault(hook.org, []).append(hook)
        rows = conn.execute(
            "SELECT e.seq, e.time, e.qid, e.recipient, e.event, e.detail, m.org, m.cert_id,"
            " m.certified FROM evidence e JOIN messages m ON m.qid = e.qid"
            " WHERE e.seq > ? AND e.seq <= ? AND m.org IN (SELECT value FROM json_each(?))"
            " ORDER BY e.seq",
            (start, upper, json.dumps(sorted(by_org))),
        ).fetchall()
        for r in rows:
            try:
                detail = json.loads(r[5])
            except ValueError:
                detail = {}
            entry = Entry(
                seq=int(r[0]),
                time=float(r[1]),
                qid=str(r[2]),
                recipient=None if r[3] is None else str(r[3]),
                event=str(r[4]),
                detail=detail if isinstance(detail, dict) else {},
                org=str(r[6]),
                cert_id=None if r[7] is None else str(r[7]),
                certified=bool(r[8]),
            )
            mapped = mapper(entry)
            if mapped is None:
                continue
            event, payload = mapped
            for hook in by_org.get(entry.org, []):
                if event not in hook.events or hook.created > entry.time:
                    continue
                conn.execute(
                    "INSERT INTO webhook_deliveries (webhook_id, event, evidence_seq, payload,"
                    " created, next_attempt, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (hook.id, str(event), entry.seq, payload, now, now, DeliveryState.PENDING),
                )
                made += 1
    conn.execute(
        "INSERT INTO webhook_cursor (name, seq) VALUES (?, ?)"
        " ON CONFLICT(name) DO UPDATE SET seq = excluded.seq",
        (CURSOR, upper),
    )
    return made


def cursor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM webhook_cursor WHERE name = ?", (CURSOR,)).fetchone()
    return int(row[0]) if row else 0


def due(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    busy: frozenset[int] = frozenset(),
    full: frozenset[str] = frozenset(),
) -> list[Due]:
    """Pending deliveries whose next attempt has come, oldest first, except ``busy`` ones
    (in flight) and those to the URLs in ``full`` (as many in flight as allowed)."""
    rows = conn.execute(
        "SELECT d.id, d.webhook_id, w.url, w.secret, d.event, d.payload, d.created, d.attempts"
        " FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id"
        " WHERE d.state = ? AND d.next_attempt <= ?"
        " AND d.id NOT IN (SELECT value FROM json_each(?))"
        " AND w.url NOT IN (SELECT value FROM json_each(?))"
        " ORDER BY d.next_attempt, d.id LIMIT ?",
        (DeliveryState.PENDING, now, json.dumps(sorted(busy)), json.dumps(sorted(full)), limit),
    ).fetchall()
    return [
        Due(
            int(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), float(r[6]), int(r[7])
        )
        for r in rows
    ]


def next_due(conn: sqlite3.Connection) -> float | None:
    """When the earliest pending delivery is due, or None."""
    (when,) = conn.execute(
        "SELECT MIN(next_attempt) FROM webhook_deliveries WHERE state = ?",
        (DeliveryState.PENDING,),
    ).fetchone()
    return None if when is None else float(when)


def record_attempt(
    conn: sqlite3.Connection,
    delivery_id: int,
    now: float,
    attempt: Attempt,
    state: DeliveryState,
    next_attempt: float,
) -> bool:
    """Record one attempt and the delivery's new state, inside the caller's transaction.
    False, and nothing recorded, when the delivery is no longer pending (its webhook was
    removed meanwhile)."""
    done = None if state == DeliveryState.PENDING else now
    changed = conn.execute(
        "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?, next_attempt = ?,"
        " last_status = ?, last_error = ?, done_at = ?,"
        " payload = CASE WHEN ? THEN payload ELSE '' END WHERE id = ? AND state = ?",
        (
            state,
            next_attempt,
            attempt.status,
            attempt.error,
            done,
            state == DeliveryState.PENDING,
            delivery_id,
            DeliveryState.PENDING,
        ),
    ).rowcount
    conn.execute(
        "INSERT INTO webhook_attempts (delivery_id, time, status, error, seconds)"
        " VALUES (?, ?, ?, ?, ?)",
        (delivery_id, attempt.time, attempt.status, attempt.error, attempt.seconds),
    )
    return changed > 0


def log(conn: sqlite3.Connection, org: str, limit: int) -> list[Delivery]:
    """The newest ``limit`` deliveries to ``org``'s webhooks (removed ones too), newest
    first, each with its attempts in order."""
    rows = conn.execute(
        "SELECT d.id, d.webhook_id, w.url, d.event, e.qid, d.created, d.state,"
        " d.next_attempt, d.done_at, d.last_error FROM webhook_deliveries d"
        " JOIN webhooks w ON w.id = d.webhook_id"
        " LEFT JOIN evidence e ON e.seq = d.evidence_seq"
        " WHERE w.org = ? ORDER BY d.id DESC LIMIT ?",
        (org, limit),
    ).fetchall()
    ids = [int(r[0]) for r in rows]
    attempts: dict[int, list[Attempt]] = {i: [] for i in ids}
    for a in conn.execute(
        "SELECT delivery_id, time, status, error, seconds FROM webhook_attempts"
        " WHERE delivery_id IN (SELECT value FROM json_each(?)) ORDER BY id",
        (json.dumps(ids),),
    ):
        attempts[int(a[0])].append(
            Attempt(float(a[1]), None if a[2] is None else int(a[2]), a[3], float(a[4]))
        )
    return [
        Delivery(
            id=int(r[0]),
            webhook_id=int(r[1]),
            url=str(r[2]),
            event=str(r[3]),
            qid=None if r[4] is None else str(r[4]),
            created=float(r[5]),
            state=DeliveryState(str(r[6])),
            next_attempt=float(r[7]),
            done_at=None if r[8] is None else float(r[8]),
            removed=r[9] == REMOVED,
            attempts=tuple(attempts[int(r[0])]),
        )
        for r in rows
    ]


class Webhooks(Database):
    """Webhooks: the ``certifica webhook`` commands and the webhook process
    (:mod:`relay.process.webhooks`)."""

    # The webhook process, on the store's thread.
    async def webhook_backlog(self) -> bool:
        """Whether evidence entries past the cursor wait: a read, which takes no write
        lock, so that an idle gateway's webhook process never competes with the writers."""

        def run() -> bool:
            (head,) = self._conn.execute("SELECT MAX(seq) FROM evidence").fetchone()
            return head is not None and int(head) > cursor(self._conn)

        return await self._read(run)

    async def collect_webhook_events(self, mapper: Mapper, now: float) -> tuple[int, bool]:
        """One batch of :func:`collect`: (deliveries made, whether entries are left)."""

        def run() -> tuple[int, bool]:
            made = collect(self._conn, mapper, now)
            (head,) = self._conn.execute("SELECT MAX(seq) FROM evidence").fetchone()
            return made, head is not None and int(head) > cursor(self._conn)

        return await self._run(run)

    async def due_webhook_deliveries(
        self, now: float, limit: int, busy: frozenset[int], full: frozenset[str]
    ) -> list[Due]:
        return await self._read(lambda: due(self._conn, now, limit, busy, full))

    async def next_webhook_due(self) -> float | None:
        return await self._read(lambda: next_due(self._conn))

    async def record_webhook_attempt(
        self,
        delivery_id: int,
        now: float,
        attempt: Attempt,
        state: DeliveryState,
        next_attempt: float,
    ) -> bool:
        return await self._run(
            lambda: record_attempt(self._conn, delivery_id, now, attempt, state, next_attempt)
        )

    # The certifica command (and tests).
    def add_webhook(self, org: str, url: str, events: tuple[WebhookEvent, ...], secret: str) -> int:
        """Add a webhook; returns its id. Its time is read while the write lock is held
        (the store's transactions begin IMMEDIATE), so every evidence entry committed
        before it has an earlier time: a :func:`collect` that read such an entry without
        seeing the webhook owed it nothing, and no event of the webhook's time is lost."""
        return self.run_sync(lambda db: add(db.conn, org, url, events, secret, time.time()))

    def webhooks_now(self, org: str) -> list[Webhook]:
        return self.run_sync(lambda db: webhooks(db.conn, org), read=True)

    def remove_webhook(self, org: str, webhook_id: int, now: float) -> bool:
        return self.run_sync(lambda db: remove(db.conn, org, webhook_id, now))

    def webhook_log_now(self, org: str, limit: int) -> list[Delivery]:
        return self.run_sync(lambda db: log(db.conn, org, limit), read=True)

    def webhook_cursor_now(self) -> int:
        return self.run_sync(lambda db: cursor(db.conn), read=True)
