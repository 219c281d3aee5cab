"""What the admin listener reads from the queue's database (README, "Metrics and health").

:meth:`QueueHealth.queue_figures` is one read transaction for a scrape of ``/metrics``:
the queue by state, the oldest deferred recipient, the last evidence checkpoint and
the oldest evidence entry no checkpoint covers yet. :meth:`QueueHealth.probe_write` is
``/readyz``'s "the database takes writes": the write lock, and a row written and rolled
back. Both run on the store's thread, like every other operation, so the admin
process's event loop never waits for the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.queue.db import Database
from relay.queue.states import MessageState, RecipientState


@dataclass(frozen=True)
class QueueFigures:
    """The queue as one scrape sees it (times are POSIX seconds, None: there is none)."""

    recipients: dict[str, int] = field(default_factory=dict)  # pending ones, by state
    messages: dict[str, int] = field(default_factory=dict)  # not done, by state
    leased: int = 0  # recipients an attempt is working on now
    oldest_deferred: float | None = None  # arrival of the oldest message still deferred
    last_checkpoint: float | None = None  # when the newest checkpoint was made
    oldest_unstamped: float | None = None  # the oldest evidence entry no checkpoint covers


class QueueHealth(Database):
    """Reads for ``/metrics`` and ``/readyz``."""

    async def queue_figures(self, now: float) -> QueueFigures:
        def read() -> QueueFigures:
            conn = self._conn
            pending = (RecipientState.QUEUED.value, RecipientState.DEFERRED.value)
            recipients = {state: 0 for state in pending}
            for status, count in conn.execute(
                "SELECT status, COUNT(*) FROM recipients WHERE status IN (?, ?) GROUP BY status",
                pending,
            ):
                recipients[str(status)] = int(count)
            live = (MessageState.ACTIVE.value, MessageState.HELD.value)
            messages = {state: 0 for state in live}
            for state, count in conn.execute(
                "SELECT state, COUNT(*) FROM messages WHERE state IN (?, ?) GROUP BY state", live
            ):
                messages[str(state)] = int(count)
            (leased,) = conn.execute(
                "SELECT COUNT(*) FROM recipients WHERE status IN (?, ?) AND lease_until > ?",
                (*pending, now),
            ).fetchone()
            (oldest,) = conn.execute(
                "SELECT MIN(m.created) FROM recipients r JOIN messages m ON m.qid = r.qid"
                " WHERE r.status = ?",
                (RecipientState.DEFERRED.value,),
            ).fetchone()
            last = conn.execute(
                "SELECT seq, time FROM evidence_checkpoints ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            (unstamped,) = conn.execute(
                "SELECT MIN(time) FROM evidence WHERE seq > ?", (last[0] if last else 0,)
            ).fetchone()
            return QueueFigures(
                recipients=recipients,
                messages=messages,
                leased=int(leased),
                oldest_deferred=float(oldest) if oldest is not None else None,
                last_checkpoint=float(last[1]) if last else None,
                oldest_unstamped=float(unstamped) if unstamped is not None else None,
            )

        return await self._read(read)

    async def probe_write(self) -> None:
        """Take the write lock and write a row, then roll it back; raises
        :class:`~relay.queue.errors.StoreError` when the database refuses."""

        def write() -> None:
            conn = self._conn
            conn.execute("SAVEPOINT probe")  # inside the operation's own savepoint
            try:
                conn.execute(
                    "INSERT INTO maintenance_runs (task, last_run, result) VALUES (?, 0, '')"
                    " ON CONFLICT(task) DO NOTHING",
                    ("readiness probe",),
                )
            finally:
                conn.execute("ROLLBACK TO probe")
                conn.execute("RELEASE probe")

        await self._run(write)
