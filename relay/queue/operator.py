"""The operator's actions on the queue (``certifica queue ...``): finding a message by a
prefix of its id, showing it, retrying, holding, releasing and withdrawing it.

These run from the CLI while the gateway may be running: each is one transaction.
"""

from __future__ import annotations

import json
import re
from typing import Any

import sqlite_utils

from relay.queue import credits, evidence_log
from relay.queue.messages import Messages
from relay.queue.states import MessageKind, MessageState


class OperatorActions(Messages):
    """What ``certifica queue`` asks of the database."""

    async def queue_listing(self) -> list[dict[str, Any]]:
        return await self._read(self._queue_listing)

    def _queue_listing(self) -> list[dict[str, Any]]:
        rows = list(self._db.query("SELECT * FROM messages WHERE state != 'done' ORDER BY created"))
        for row in rows:
            row["recipients"] = self._recipients(row["qid"])
        return rows

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

    def linked_qids(self, qid: str) -> list[str]:
        """The messages the gateway made about ``qid`` (its notice, certificate mail,
        delivery reports, addenda: their ``parent_qid``), and those made about them,
        oldest first."""

        def _linked(db: sqlite_utils.Database) -> list[str]:
            found: list[str] = []
            about = [qid]
            while about and len(found) < 1000:  # a bound, should a loop ever be made
                sql = (
                    "SELECT qid FROM messages WHERE parent_qid IN"
                    " (SELECT value FROM json_each(?)) ORDER BY created"
                )
                rows = db.query(sql, (json.dumps(about),))
                about = [r["qid"] for r in rows if r["qid"] not in (qid, *found)]
                found += about
            return found

        return self.run_sync(_linked)

    def show(self, qid: str) -> dict[str, Any]:
        def _show(db: sqlite_utils.Database) -> dict[str, Any]:
            row = self._message(qid) or {}
            row["recipients"] = self._recipients(qid)
            row["evidence"] = [e.__dict__ for e in evidence_log.entries_for(self._conn, qid)]
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
                evidence_log.append(self._conn, now, qid, event, {})
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
        ``withdrawn``; a certified message is then certified as withdrawn, never dropped.
        The credits reserved for a recipient never handed to a delivery agent are
        refunded; those of a recipient handed out (an attempt began) are spent
        (docs/credits.md)."""

        def _withdraw(db: sqlite_utils.Database) -> int:
            rows = list(
                db.query(
                    "SELECT id, address, attempts, handed_out FROM recipients WHERE qid = ?"
                    " AND status IN ('queued', 'deferred')",
                    (qid,),
                )
            )
            # Never handed to a delivery agent: an agent that died after the remote's 250
            # left no attempt recorded, so a recipient handed out counts as attempted.
            untried = [r["id"] for r in rows if r["attempts"] == 0 and r["handed_out"] is None]
            tried = [r["id"] for r in rows if r["id"] not in untried]
            for r in rows:
                db.conn.execute(
                    "UPDATE recipients SET status = 'withdrawn', reply_text = ?, last_attempt = ?"
                    " WHERE id = ?",
                    (f"withdrawn by the operator ({operator})", now, r["id"]),
                )
                evidence_log.append(
                    self._conn,
                    now,
                    qid,
                    "WithdrawnByOperator",
                    {"operator": operator},
                    recipient=r["address"],
                )
            actor = f"operator:{operator}"
            warn = self.credit_terms.warn_below
            credits.settle(db.conn, untried, now, refund=True, actor=actor, warn_below=warn)
            credits.settle(db.conn, tried, now, refund=False, actor=actor)
            db.conn.execute(
                "UPDATE messages SET state = 'active' WHERE qid = ? AND state = 'held'", (qid,)
            )
            return len(rows)

        return self.run_sync(_withdraw)

    def certified_mail(self, cert_id: str) -> str | None:
        """The queue id of the certified mail whose certificate is ``cert_id``."""
        row = self.run_sync(
            lambda db: db.conn.execute(
                "SELECT qid FROM messages WHERE cert_id = ? AND kind = ?",
                (cert_id.upper(), MessageKind.MAIL),
            ).fetchone()
        )
        return None if row is None else str(row[0])
