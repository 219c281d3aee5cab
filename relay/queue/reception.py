"""Certified reception: the mailbox owners, their forwarding tokens, duplicate
receptions, and the proofs of receipt sent (RFC 3834: at most one per sender per interval).
"""

from __future__ import annotations

from typing import Any

import sqlite_utils

from relay.queue.db import Database


class Reception(Database):
    """Reception owners and the proofs of receipt sent to their senders."""

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
