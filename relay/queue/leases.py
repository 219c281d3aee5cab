"""Scheduling's side of the database: leasing due recipients, giving leases back, and
recording what each delivery attempt ended in.

A lease says "an attempt on this recipient is under way": it has an owner (the process
that took it) and an expiry, so a recipient whose owner died is due again once the lease
expires, even when nobody calls :meth:`Leases.release_leases`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from certifier import evidence
from relay.certify import dsn
from relay.queue.db import Database
from relay.queue.records import Outcome
from relay.queue.states import RecipientState

WITHDRAWN_TOO_LATE = (
    "delivered by an attempt already under way when the operator withdrew the message"
)


class Leases(Database):
    """Leases on due recipients and the outcomes of delivery attempts."""

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

    async def release_leases(self) -> None:
        await self._run(
            lambda: self._conn.execute(
                "UPDATE recipients SET lease_until = NULL WHERE lease_until IS NOT NULL"
            )
        )

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
