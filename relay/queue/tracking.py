"""Open and click tracking (the addendum): the links of each tracked copy, the events
recorded, and which events the sender has already been told of.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from relay.queue import evidence_log
from relay.queue.db import Database, insert_row
from relay.queue.states import TrackingKind


def mark_addendum_at(
    conn: sqlite3.Connection, qid: str, after_id: int, last_id: int, at: float
) -> None:
    """Inside the current transaction: the recipients of events ``after_id`` < id <=
    ``last_id`` of message ``qid`` had an addendum at ``at``."""
    conn.execute(
        "UPDATE recipients SET addendum_at = ? WHERE qid = ? AND id IN"
        " (SELECT recipient_id FROM tracking_events WHERE qid = ?"
        "  AND id > ? AND id <= ?)",
        (at, qid, qid, after_id, last_id),
    )


class Tracking(Database):
    """Tracked copies, their opens and clicks, and the addenda due."""

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
        insert_row(self._conn, "tracking_events", row)
        self._conn.execute(
            "UPDATE messages SET addendum_pending = 1 WHERE qid = ? AND addendum_pending = 0",
            (row["qid"],),
        )
        detail = {
            k: row[k] for k in ("link", "url", "ip", "user_agent", "method", "automatic", "reason")
        }
        event = "ContentOpened" if row["kind"] == TrackingKind.OPEN else "LinkClicked"
        evidence_log.append(self._conn, now, row["qid"], event, detail, recipient=address)

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

    async def addenda_due(self, now: float, interval: float, price: int = 0) -> list[str]:
        """Certified messages with opens or clicks not yet reported to the sender, whose
        recipients have not had an addendum within ``interval``. Messages flagged
        ``addendum_pending`` whose events have all been reported lose the flag. With a
        ``price`` (``[credits] addendum``), those of an organisation short of it wait
        (docs/credits.md)."""

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
                    " AND (r.addendum_at IS NULL OR r.addendum_at <= ?)"
                    " AND (? <= 0 OR m.org IS NULL OR (SELECT o.balance FROM organisations o"
                    "  WHERE o.code = m.org) >= ?)",
                    (now - interval, price, price),
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
                mark_addendum_at(self._conn, qid, previous[0], last_id, addendum_at)
            self._conn.execute(
                "UPDATE messages SET tracking_reported = MAX(tracking_reported, ?) WHERE qid = ?",
                (last_id, qid),
            )

        await self._run(_mark)
