"""Scheduling's side of the database: leasing due recipients, giving leases back, and
recording what each delivery attempt ended in.

A lease says "an attempt on this recipient is under way": it has an owner (the process
that took it) and an expiry, so a recipient whose owner died is due again once the lease
expires, even when nobody calls :meth:`Leases.release_leases`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from relay.certify import dsn
from relay.queue import credits, evidence_log
from relay.queue.db import Database
from relay.queue.records import Outcome
from relay.queue.states import FINAL, RecipientState

WITHDRAWN_TOO_LATE = (
    "delivered by an attempt already under way when the operator withdrew the message"
)


def default_owner() -> str:
    """The lease owner a process is when it names none: its host and process id, so
    leases taken before a fork, or by another process or node, are never taken for its own."""
    return f"{socket.gethostname()}:{os.getpid()}"


CLAIMABLE = "status IN ('queued', 'deferred') AND (lease_until IS NULL OR lease_until < ?)"
"""A recipient that may be leased at time ``?``: still to be tried, and no lease on it
(a lease whose owner died is claimable once it has expired)."""

_CHUNK = 500  # ids per statement, well under SQLite's limit on parameters


class Leases(Database):
    """Leases on due recipients and the outcomes of delivery attempts.

    A recipient is *claimed* by :meth:`take_due` with a conditional ``UPDATE``: among the
    candidates it read, only those still claimable when the ``UPDATE`` runs are leased,
    and only those are returned. Two claimers (processes, later nodes) can never both get
    one recipient, whatever the database's locking; nothing relies on ``rowid`` order.
    """

    async def take_due(
        self,
        now: float,
        limit: int,
        lease: float,
        slots: Mapping[str, int] | None = None,
        default_slots: int | None = None,
        owner: str | None = None,
    ) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due recipients (of messages not on hold), oldest first,
        until ``lease`` (a time), for ``owner`` (default: :func:`default_owner`).

        ``slots`` caps the messages taken per domain (``default_slots`` for a domain not
        in it; None: no cap). A domain with no slot left is not even read; the
        recipients of further messages to a domain that reaches its cap stay unleased in
        the database, instead of being leased, handed over and given back (a backlog to
        one busy domain made every scan do that with hundreds of rows).

        A lease marks a recipient as being tried, so the next scan does not pick it
        again; it ends with the attempt's outcome (:meth:`record`) or is given back
        (:meth:`release`, :meth:`postpone`); a new process starts by dropping the leases
        of the attempts that died with the old one (:meth:`release_leases`), and any lease
        left behind ends when it expires, so a crash delays nothing for long.
        """
        return await self._run(
            self._take_due,
            now,
            limit,
            lease,
            dict(slots or {}),
            default_slots,
            owner or default_owner(),
        )

    def _take_due(
        self,
        now: float,
        limit: int,
        lease: float,
        slots: dict[str, int],
        default_slots: int | None,
        owner: str,
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
            " AND (r.lease_until IS NULL OR r.lease_until < ?) AND m.state = 'active'"
            f"{skip} ORDER BY r.next_attempt, r.id LIMIT ?"
        )
        cursor = self._conn.execute(sql, (now, now, *full, limit))
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
        # The claim itself: the condition is checked again by the UPDATE, so a recipient
        # another claimer leased since the SELECT is skipped (PostgreSQL: FOR UPDATE SKIP
        # LOCKED in the SELECT gives the same), and only what this UPDATE leased is returned.
        claimed: set[int] = set()
        ids = [r["id"] for r in rows]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" for _ in chunk)
            claimed.update(
                row[0]
                for row in self._conn.execute(
                    f"UPDATE recipients SET lease_until = ?, lease_owner = ?,"  # noqa: S608
                    f" handed_out = COALESCE(handed_out, ?)"
                    f" WHERE id IN ({marks}) AND {CLAIMABLE} RETURNING id",
                    (lease, owner, now, *chunk, now),
                )
            )
        taken_rows = [r for r in rows if r["id"] in claimed]
        for r in taken_rows:
            r["lease_until"], r["lease_owner"] = lease, owner
        return taken_rows

    async def release_leases(self, except_ids: Iterable[int] = (), owner: str | None = None) -> int:
        """Drop the leases of attempts no longer under way: every lease but those on the
        recipients ``except_ids`` (attempts a live process still runs), and with ``owner``
        only that owner's (a node restarting leaves the other nodes' leases alone).
        Returns how many were dropped."""
        keep = sorted(set(except_ids))
        return await self._run(self._release_leases, keep, owner)

    def _release_leases(self, keep: list[int], owner: str | None) -> int:
        leased = self._conn.execute(
            "SELECT id FROM recipients WHERE lease_until IS NOT NULL"
            " AND (? IS NULL OR lease_owner = ?)",
            (owner, owner),
        )
        kept = set(keep)
        ids = [row[0] for row in leased if row[0] not in kept]
        self._drop_leases(ids, owner)
        return len(ids)

    def _drop_leases(self, ids: list[int], owner: str | None) -> None:
        _drop_leases(self._conn, ids, owner)

    async def release(self, ids: Iterable[int], owner: str | None = None) -> None:
        """Give up leases taken but not used; the recipients are due as they were. With
        ``owner``, only leases that owner still holds (not one another claimer took over)."""
        await self._run(self._drop_leases, list(ids), owner)

    async def postpone(self, ids: Iterable[int], until: float) -> None:
        """Give up a lease and try again at ``until`` (after an attempt that failed oddly)."""
        ids = list(ids)
        await self._run(self._postpone, ids, until)

    def _postpone(self, ids: list[int], until: float) -> None:
        self._conn.executemany(
            "UPDATE recipients SET next_attempt = ?, lease_until = NULL, lease_owner = NULL"
            " WHERE id = ?",
            [(until, i) for i in ids],
        )

    async def record(
        self, qid: str, outcomes: list[Outcome], now: float, owner: str | None = None
    ) -> None:
        """Store the outcome of one attempt for each recipient, log the evidence, and end
        the attempt's lease.

        Idempotent: an outcome for a recipient whose state is final already (this outcome
        reported twice, a child that recorded it and died before saying so) changes
        nothing and logs nothing. With ``owner`` (who took the lease, :meth:`take_due`),
        an outcome whose lease is no longer that owner's (given back, or expired and
        claimed by another attempt) is dropped, as the other attempt will record its own,
        except a delivery: what reached the recipient is recorded as it happened.
        """
        await self._run(self._record, qid, outcomes, now, owner)

    def _record(self, qid: str, outcomes: list[Outcome], now: float, owner: str | None) -> None:
        record_outcomes(self._conn, qid, outcomes, now, owner)


def _drop_leases(conn: sqlite3.Connection, ids: list[int], owner: str | None) -> None:
    if owner is None:
        conn.executemany(
            "UPDATE recipients SET lease_until = NULL, lease_owner = NULL WHERE id = ?",
            [(i,) for i in ids],
        )
    else:
        conn.executemany(
            "UPDATE recipients SET lease_until = NULL, lease_owner = NULL"
            " WHERE id = ? AND lease_owner = ?",
            [(i, owner) for i in ids],
        )


def record_outcomes(
    conn: sqlite3.Connection,
    qid: str,
    outcomes: list[Outcome],
    now: float,
    owner: str | None,
    *,
    attempt: bool = True,
) -> None:
    """:meth:`Leases.record` inside the caller's transaction (the SMS queue's receipts
    and submissions end recipients through it too, :mod:`relay.queue.sms`).

    ``attempt`` False: the outcome is not an attempt of ours (an operator's receipt, a
    receipt timeout), so ``attempts`` stays as it is. An SMS outcome is recorded like a
    delivery when the lease is no longer this attempt's: ``submitted`` means the SMSC
    took it, which happened whoever holds the lease now. ``submitted`` writes no
    evidence entry here (each part has its ``SmsSubmitted``); a refunded outcome
    (:attr:`Outcome.refund`, an SMS the SMSC refused) gives its credits back.
    """
    report = False  # an outcome the sender asked to hear of (relay/certify/dsn.py)
    for out in outcomes:
        row = conn.execute(
            "SELECT address, status, notify, lease_owner FROM recipients WHERE id = ?",
            (out.recipient_id,),
        ).fetchone()
        if row is not None and row[1] == RecipientState.WITHDRAWN:
            # The operator withdrew the message while this attempt was under way.
            if out.status != RecipientState.DELIVERED:
                _drop_leases(conn, [out.recipient_id], owner)
                continue  # it stays withdrawn; nothing reached the recipient
            # It was delivered all the same: the evidence says so, as it happened.
            out = dataclasses.replace(
                out, note=((out.note + "; ") if out.note else "") + WITHDRAWN_TOO_LATE
            )
        elif row is not None and row[1] in FINAL:
            _drop_leases(conn, [out.recipient_id], owner)
            continue  # recorded already: once is what happened
        elif (
            row is not None
            and owner is not None
            and row[3] != owner
            and out.status not in (RecipientState.DELIVERED, RecipientState.SUBMITTED)
        ):
            continue  # the lease is not this attempt's any more; the new one records
        conn.execute(
            "UPDATE recipients SET status = ?, attempts = attempts + ?, last_attempt = ?,"
            " next_attempt = ?, reply_code = ?, reply_enhanced = ?, reply_text = ?,"
            " remote_qid = ?, mx_host = ?, ip = ?, port = ?, tls_version = ?,"
            " tls_cipher = ?, delivered_sha256 = ?, delivered_copy = ?,"
            " note = COALESCE(?, note), lease_until = NULL, lease_owner = NULL"
            " WHERE id = ?",
            (
                out.status,
                1 if attempt else 0,
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
                out.delivered_copy,
                out.note,
                out.recipient_id,
            ),
        )
        if out.status in (RecipientState.DELIVERED, RecipientState.FAILED):
            # Attempted: its credits are spent, the evidence was produced (a failure
            # and an expiry too; docs/credits.md), unless the outcome gives them back
            # (an SMS the SMSC refused: docs/sms.md). A settled hold stays as it is.
            credits.settle(conn, [out.recipient_id], now, refund=out.refund, actor="gateway")
        event = {
            RecipientState.DELIVERED: "RelayToNonERDS",
            RecipientState.FAILED: "RelayToNonERDSFailure",
            RecipientState.DEFERRED: "RelayAttemptDeferred",
            RecipientState.SUBMITTED: None,  # each part has its SmsSubmitted entry
        }[RecipientState(out.status)]
        if event is None:
            continue
        evidence_log.append(
            conn,
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
                **({"refunded": True} if out.refund else {}),
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
        conn.execute(
            "UPDATE messages SET reports_pending = 1 WHERE qid = ? AND kind = 'mail'"
            " AND certified = 0 AND sender != ''",
            (qid,),
        )
