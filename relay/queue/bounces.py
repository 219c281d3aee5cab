"""Late bounces: an RFC 3464 DSN that reaches the gateway's VERP return path after a
recipient was delivered to.

A late DSN is passed on to the sender of plain mail at most once per recipient and action
(``late_reports``), so anyone who knows a return path cannot make the gateway write again.
"""

from __future__ import annotations

from typing import Any

from relay.certify import dsn
from relay.queue import evidence_log
from relay.queue.messages import Messages
from relay.queue.records import NewMessage
from relay.queue.states import DocumentState, MessageKind, RecipientState

LATE_ACTIONS = frozenset(a.value for a in dsn.Action)
"""The RFC 3464 actions a late DSN can pass on to a sender (once each per recipient)."""


class LateBounces(Messages):
    """Recording a late DSN and what it says of each recipient."""

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
            # An empty address matches no recipient: retention empties the addresses of
            # a message whose evidence went (docs/retention.md).
            row = self._conn.execute(
                "SELECT id, status, address FROM recipients WHERE qid = ? AND lower(address) = ?"
                " AND address != ''",
                (parent_qid, address),
            ).fetchone()
            detail = {**report, "dsn_qid": dsn.qid, "dsn_sha256": dsn.sha256, "late": True}
            if row is None:
                evidence_log.append(self._conn, now, parent_qid, "DeliveryReportUnmatched", detail)
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
                evidence_log.append(
                    self._conn, now, parent_qid, "RelayToNonERDSFailure", detail, row[2]
                )
                bounced.append(row[2])
            else:
                evidence_log.append(self._conn, now, parent_qid, "DeliveryReport", detail, row[2])
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
