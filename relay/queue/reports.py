"""Delivery status notifications to the sender of plain mail (RFC 3461, RFC 3464).

A message has ``reports_pending`` while a recipient's outcome is still to be told; a
recipient's ``report_qid`` names the report that told it ('' when none was due), a
message's ``delay_report_qid`` its one "still trying" report. The reports themselves are
written by :mod:`relay.certify.dsn`.
"""

from __future__ import annotations

from relay.queue.db import update_message
from relay.queue.messages import Messages
from relay.queue.records import NewMessage


class Reports(Messages):
    """Which reports are due, and recording one as sent, at most once per outcome."""

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
            update_message(self._conn, qid, {"delay_report_qid": report_qid})
        # Still pending if an outcome was recorded since the caller looked (dsn.wants).
        self._conn.execute(
            "UPDATE messages SET reports_pending = EXISTS (SELECT 1 FROM recipients r"
            " WHERE r.qid = messages.qid AND r.report_qid IS NULL AND ("
            "  (r.status = 'failed' AND (r.notify IS NULL OR r.notify LIKE '%FAILURE%'))"
            "  OR (r.status = 'delivered' AND r.notify LIKE '%SUCCESS%'))) WHERE qid = ?",
            (qid,),
        )
        return True
