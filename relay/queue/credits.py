"""Credits: an organisation's balance and every movement of it (docs/accounts.md).

Credits are bought in bundles that never expire (``certifica credits add ACME 1000
--note "invoice 2026-117"``) and spent per certified product at the ``[credits]``
prices (:class:`relay.queue.states.Product`). The balance is a column of
``organisations``; each change of it is one row of ``credit_movements`` (the signed
amount and the balance after it) and one entry of the evidence log, written in the
same transaction, so a statement always adds up to the balance and every movement can
be shown to a court with the rest of the evidence.

:func:`move` is the one function that changes a balance; it runs inside the caller's
transaction (the reservation of a certified message is in the transaction that queues
it, so the 250 and the credits are one decision).

Exceptions::

    UsageError
      NoSuchOrganisation  -- an organisation code that does not exist
"""

from __future__ import annotations

import sqlite3
import time as _time
from dataclasses import dataclass
from datetime import UTC, datetime

from certifier.errors import UsageError
from relay.queue import evidence_log
from relay.queue.db import Database
from relay.queue.states import CreditKind

CREDITS_QID = "credits"
"""The evidence log's queue id for movements that are about no message (a purchase)."""

EVENTS: dict[CreditKind, str] = {
    CreditKind.PURCHASE: "CreditsPurchased",
    CreditKind.RESERVE: "CreditsReserved",
    CreditKind.REFUND: "CreditsRefunded",
    CreditKind.CHARGE: "CreditsCharged",
    CreditKind.ADJUST: "CreditsAdjusted",
}
"""The evidence event of each kind of movement (extensions: ETSI EN 319 522 has none)."""


class NoSuchOrganisation(UsageError, LookupError):
    """No organisation has that code."""


@dataclass(frozen=True)
class Movement:
    """One row of ``credit_movements``."""

    id: int
    org: str
    time: float
    kind: CreditKind
    amount: int
    balance: int
    product: str | None
    qid: str | None
    units: int | None
    note: str | None
    actor: str
    evidence_seq: int


@dataclass(frozen=True)
class Statement:
    """The movements of one organisation over a period, with the balance before and
    after: ``opening + sum(amounts) == closing``."""

    org: str
    period: str | None  # "2026-11", or None for every movement
    opening: int
    movements: tuple[Movement, ...]
    closing: int

    @property
    def balances(self) -> bool:
        """Whether the movements add up from the opening to the closing balance."""
        return self.opening + sum(m.amount for m in self.movements) == self.closing


def balance(conn: sqlite3.Connection, org: str) -> int:
    row = conn.execute("SELECT balance FROM organisations WHERE code = ?", (org,)).fetchone()
    if row is None:
        raise NoSuchOrganisation(f"there is no organisation {org!r}")
    return int(row[0])


def move(
    conn: sqlite3.Connection,
    org: str,
    kind: CreditKind,
    amount: int,
    now: float,
    *,
    actor: str,
    product: str | None = None,
    qid: str | None = None,
    units: int | None = None,
    note: str | None = None,
) -> Movement:
    """Add ``amount`` (signed) to ``org``'s balance, inside the caller's transaction,
    with its ``credit_movements`` row and its evidence entry. The caller decides
    whether the balance may go below zero (a reservation checks first)."""
    after = balance(conn, org) + amount
    conn.execute("UPDATE organisations SET balance = ? WHERE code = ?", (after, org))
    detail = {
        "organisation": org,
        "kind": str(kind),
        "amount": amount,
        "balance": after,
        "product": product,
        "units": units,
        "note": note,
        "actor": actor,
    }
    entry = evidence_log.append(conn, now, qid or CREDITS_QID, EVENTS[kind], detail)
    cursor = conn.execute(
        "INSERT INTO credit_movements (org, time, kind, amount, balance, product, qid, units,"
        " note, actor, evidence_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (org, now, str(kind), amount, after, product, qid, units, note, actor, entry.seq),
    )
    return Movement(
        int(cursor.lastrowid or 0),
        org,
        now,
        kind,
        amount,
        after,
        product,
        qid,
        units,
        note,
        actor,
        entry.seq,
    )


def _month_bounds(month: str) -> tuple[float, float]:
    """``2026-11`` as the UTC times [start, end) of that month."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise UsageError(f"{month!r} is not a month like 2026-11") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start.timestamp(), end.timestamp()


def statement(conn: sqlite3.Connection, org: str, month: str | None = None) -> Statement:
    """``org``'s movements in ``month`` (UTC; None: all of them), oldest first."""
    closing_now = balance(conn, org)
    columns = "id, org, time, kind, amount, balance, product, qid, units, note, actor, evidence_seq"
    if month is None:
        rows = conn.execute(
            f"SELECT {columns} FROM credit_movements WHERE org = ? ORDER BY id",  # noqa: S608
            (org,),
        ).fetchall()
        movements = tuple(_movement(r) for r in rows)
        return Statement(org, None, 0, movements, closing_now)
    start, end = _month_bounds(month)
    rows = conn.execute(
        f"SELECT {columns} FROM credit_movements"  # noqa: S608 - constant columns
        " WHERE org = ? AND time >= ? AND time < ? ORDER BY id",
        (org, start, end),
    ).fetchall()
    before = conn.execute(
        "SELECT balance FROM credit_movements WHERE org = ? AND time < ? ORDER BY id DESC LIMIT 1",
        (org, start),
    ).fetchone()
    opening = int(before[0]) if before else 0
    movements = tuple(_movement(r) for r in rows)
    closing = movements[-1].balance if movements else opening
    return Statement(org, month, opening, movements, closing)


def _movement(row: tuple[object, ...]) -> Movement:
    return Movement(
        int(row[0]),  # type: ignore[call-overload]
        str(row[1]),
        float(row[2]),  # type: ignore[arg-type]
        CreditKind(str(row[3])),
        int(row[4]),  # type: ignore[call-overload]
        int(row[5]),  # type: ignore[call-overload]
        None if row[6] is None else str(row[6]),
        None if row[7] is None else str(row[7]),
        None if row[8] is None else int(row[8]),  # type: ignore[call-overload]
        None if row[9] is None else str(row[9]),
        str(row[10]),
        int(row[11]),  # type: ignore[call-overload]
    )


class Credits(Database):
    """Balances and statements: ``certifica credits``, the console and the API."""

    async def balance_of(self, org: str) -> int:
        return await self._read(lambda: balance(self._conn, org))

    async def statement_of(self, org: str, month: str | None = None) -> Statement:
        return await self._read(lambda: statement(self._conn, org, month))

    def statement_now(self, org: str, month: str | None = None) -> Statement:
        return self.run_sync(lambda db: statement(db.conn, org, month), read=True)

    def add_credits(
        self, org: str, amount: int, *, note: str | None, actor: str, now: float | None = None
    ) -> Movement:
        """A bundle bought (``amount`` > 0) or an operator's correction (< 0, ``ADJUST``)."""
        kind = CreditKind.PURCHASE if amount > 0 else CreditKind.ADJUST
        when = _time.time() if now is None else now
        return self.run_sync(
            lambda db: move(db.conn, org, kind, amount, when, actor=actor, note=note)
        )
