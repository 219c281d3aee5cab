"""Credits: an organisation's balance and every movement of it (docs/credits.md).

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

What a certified message reserved is held per recipient (``credit_holds``) until the
recipient ends (:func:`settle`): a recipient withdrawn before any delivery attempt is
refunded, an attempted one (delivered, failed, expired) is spent, because its evidence
was produced. A hold's state is the guard: a hold is settled once, whoever asks twice.
Documents made later (a reception certificate, an addendum) are charged in the
transaction that queues them (:func:`charge`); short of credits, they wait
(``DocumentState.WAITING``) until credits are added (:meth:`Credits.add_credits`).

Exceptions::

    UsageError
      NoSuchOrganisation  -- an organisation code that does not exist
    PermanentError
      InsufficientCredits -- a certified message or document costs more than the
                             balance: 550 5.7.1 (452 4.7.1 with when_short = "defer")
"""

from __future__ import annotations

import sqlite3
import time as _time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import sqlite_utils

from certifier.errors import PermanentError, UsageError
from relay.queue import evidence_log
from relay.queue.db import Database
from relay.queue.states import CreditKind, DocumentState, HoldState, Product

if TYPE_CHECKING:
    from relay.config import Config

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


class InsufficientCredits(PermanentError):
    """``org``'s balance is below what a certified message or document costs. The
    intake answers 550 5.7.1 (``defer``: 452 4.7.1) with the figures; nothing is written."""

    def __init__(self, org: str, balance: int, needed: int, *, defer: bool, contact: str) -> None:
        super().__init__(f"organisation {org} has {balance} credits; {needed} are needed")
        self.org = org
        self.balance = balance
        self.needed = needed
        self.defer = defer
        self.contact = contact


@dataclass(frozen=True)
class CreditTerms:
    """The ``[credits]`` prices and rules as the store applies them; given to the
    :class:`relay.queue.store.Store` when it is made, as the queue's lifetime is. The
    default, every price 0, reserves and charges nothing and writes nothing."""

    email_recipient: int = 0
    addendum: int = 0
    reception: int = 0
    sms_segment: int = 0
    # [credits.sms_prefix]: per segment to numbers starting so; the longest prefix wins
    sms_prefix: tuple[tuple[str, int], ...] = ()
    sms_domain: str = ""  # the recipients priced per segment: sms.<gateway domain>
    warn_below: int = 0
    defer_when_short: bool = False  # [credits] when_short = "defer"
    contact: str = ""  # [provider] contact: how to top up

    @classmethod
    def of(cls, cfg: Config) -> CreditTerms:
        c = cfg.credits
        return cls(
            email_recipient=c.email_recipient,
            addendum=c.addendum,
            reception=c.reception,
            sms_segment=c.sms_segment,
            sms_prefix=tuple(sorted(c.sms_prefix.items())),
            # relay.sms.numbers.sms_domain, without importing phonenumbers into the queue
            sms_domain="sms." + cfg.gateway.domain.lower().rstrip("."),
            warn_below=c.warn_below,
            defer_when_short=c.when_short == "defer",
            contact=cfg.provider.contact,
        )

    @property
    def in_use(self) -> bool:
        """Whether anything costs credits or is watched (else nothing is looked for)."""
        prices = (
            self.email_recipient,
            self.addendum,
            self.reception,
            self.sms_segment,
            *(p for _, p in self.sms_prefix),
        )
        return any(p > 0 for p in prices) or self.warn_below > 0

    def price(self, product: Product) -> int:
        """What one unit of ``product`` costs (0: free)."""
        return int(getattr(self, str(product)))

    def sms_segment_price(self, number: str) -> int:
        """What one segment to ``number`` (E.164) costs: the price of the longest
        ``[credits.sms_prefix]`` it starts with, else ``[credits] sms_segment``."""
        best, price = -1, self.sms_segment
        for prefix, amount in self.sms_prefix:
            if number.startswith(prefix) and len(prefix) > best:
                best, price = len(prefix), amount
        return price

    def is_sms(self, address: str) -> bool:
        """Whether ``address`` is an SMS recipient (priced per segment)."""
        return bool(self.sms_domain) and address.rpartition("@")[2].lower() == self.sms_domain

    def short(self, org: str, balance: int, needed: int) -> InsufficientCredits:
        return InsufficientCredits(
            org, balance, needed, defer=self.defer_when_short, contact=self.contact
        )


FREE = CreditTerms()
"""Every price 0: what a store made without terms applies (the shipped config)."""


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
    cert_id: str | None = None  # the certificate of the message it is about (statements)


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
    warn_below: int = 0,
) -> Movement:
    """Add ``amount`` (signed) to ``org``'s balance, inside the caller's transaction,
    with its ``credit_movements`` row and its evidence entry. The caller decides
    whether the balance may go below zero (a reservation checks first). With
    ``warn_below`` (``[credits] warn_below``), a movement that takes the balance below it
    makes the admins' low-balance notice owed, once until the balance is back above."""
    after = balance(conn, org) + amount
    conn.execute("UPDATE organisations SET balance = ? WHERE code = ?", (after, org))
    if warn_below > 0:
        _watch_low(conn, org, after, warn_below)
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


def _watch_low(conn: sqlite3.Connection, org: str, after: int, warn_below: int) -> None:
    """``low_notice`` is when the admins were told the balance fell below ``warn_below``;
    ``low_owed`` says a notice is owed. Told once until the balance is back above."""
    if after >= warn_below:
        conn.execute(
            "UPDATE organisations SET low_notice = NULL, low_owed = 0 WHERE code = ?", (org,)
        )
    else:
        conn.execute(
            "UPDATE organisations SET low_owed = 1 WHERE code = ? AND low_notice IS NULL",
            (org,),
        )


@dataclass(frozen=True)
class Hold:
    """What one recipient of a message reserves: ``amount`` credits of ``product``,
    ``units`` of it (an SMS: its segments)."""

    recipient_id: int
    product: Product
    amount: int
    units: int = 1


def reserve(
    conn: sqlite3.Connection,
    org: str,
    qid: str,
    holds: list[Hold],
    terms: CreditTerms,
    now: float,
    *,
    actor: str,
) -> int:
    """Reserve ``holds`` for the message ``qid``, in the transaction that queues it: one
    ``RESERVE`` movement per product and one hold per recipient. Raises
    :class:`InsufficientCredits` (the caller's transaction is then rolled back whole)
    when the balance is short. Returns the credits reserved."""
    holds = [h for h in holds if h.amount > 0]
    needed = sum(h.amount for h in holds)
    if needed <= 0:
        return 0
    have = balance(conn, org)
    if have < needed:
        raise terms.short(org, have, needed)
    for product in sorted({h.product for h in holds}):
        these = [h for h in holds if h.product == product]
        move(
            conn,
            org,
            CreditKind.RESERVE,
            -sum(h.amount for h in these),
            now,
            actor=actor,
            product=str(product),
            qid=qid,
            units=sum(h.units for h in these),
            warn_below=terms.warn_below,
        )
    conn.executemany(
        "INSERT INTO credit_holds (qid, recipient_id, org, product, amount, state)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (qid, h.recipient_id, org, str(h.product), h.amount, str(HoldState.RESERVED))
            for h in holds
        ],
    )
    return needed


def settle(
    conn: sqlite3.Connection,
    recipient_ids: Iterable[int],
    now: float,
    *,
    refund: bool,
    actor: str,
    warn_below: int = 0,
    note: str = "withdrawn before any delivery attempt",
) -> int:
    """Settle the holds still reserved for ``recipient_ids``, in the transaction that
    makes those recipients final: ``refund`` (withdrawn before any attempt) gives the
    credits back with one ``REFUND`` movement per message; otherwise they are spent
    (the evidence of an attempt was produced) and the balance does not move. A hold
    settled already is left alone, so a repeat settles nothing. Returns the credits
    refunded."""
    ids = sorted(set(recipient_ids))
    if not ids:
        return 0
    marks = ", ".join("?" for _ in ids)
    rows = conn.execute(
        f"SELECT id, qid, org, amount, product FROM credit_holds"  # noqa: S608 - placeholders only
        f" WHERE recipient_id IN ({marks}) AND state = ? ORDER BY id",
        (*ids, str(HoldState.RESERVED)),
    ).fetchall()
    if not rows:
        return 0
    state = HoldState.REFUNDED if refund else HoldState.SPENT
    conn.executemany(
        "UPDATE credit_holds SET state = ?, settled = ? WHERE id = ? AND state = ?",
        [(str(state), now, row[0], str(HoldState.RESERVED)) for row in rows],
    )
    if not refund:
        return 0
    per_message: dict[tuple[str, str, str], list[int]] = {}
    for _, qid, org, amount, product in rows:
        per_message.setdefault((str(org), str(qid), str(product)), []).append(int(amount))
    refunded = 0
    for (org, qid, product), amounts in per_message.items():
        move(
            conn,
            org,
            CreditKind.REFUND,
            sum(amounts),
            now,
            actor=actor,
            product=product,
            qid=qid,
            units=len(amounts),
            note=note,
            warn_below=warn_below,
        )
        refunded += sum(amounts)
    return refunded


def affordable(conn: sqlite3.Connection, org: str | None, price: int) -> bool:
    """Whether ``org`` can pay ``price`` now (no organisation, or free: always)."""
    return org is None or price <= 0 or balance(conn, org) >= price


@dataclass(frozen=True)
class Charge:
    """A document to charge in the transaction that queues it: ``product`` for ``org``."""

    org: str
    product: Product
    qid: str  # the message the document is about


def charge(conn: sqlite3.Connection, ch: Charge, terms: CreditTerms, now: float) -> int:
    """Charge ``ch`` (one unit at its ``[credits]`` price) inside the document's
    transaction, with a spent hold naming the document's message. Raises
    :class:`InsufficientCredits` when the balance is short (the document then waits).
    Returns the credits charged."""
    price = terms.price(ch.product)
    if price <= 0:
        return 0
    have = balance(conn, ch.org)
    if have < price:
        raise terms.short(ch.org, have, price)
    move(
        conn,
        ch.org,
        CreditKind.CHARGE,
        -price,
        now,
        actor="gateway",
        product=str(ch.product),
        qid=ch.qid,
        units=1,
        warn_below=terms.warn_below,
    )
    conn.execute(
        "INSERT INTO credit_holds (qid, recipient_id, org, product, amount, state, settled)"
        " VALUES (?, NULL, ?, ?, ?, ?, ?)",
        (ch.qid, ch.org, str(ch.product), price, str(HoldState.SPENT), now),
    )
    return price


def release_waiting(conn: sqlite3.Connection, org: str) -> int:
    """Make ``org``'s documents waiting for credits pending again (credits were added);
    the admins may be told again should they wait once more. Returns how many."""
    released = conn.execute(
        "UPDATE messages SET cert_state = ? WHERE org = ? AND cert_state = ?",
        (str(DocumentState.PENDING), org, str(DocumentState.WAITING)),
    ).rowcount
    conn.execute("UPDATE organisations SET waiting_notice = NULL WHERE code = ?", (org,))
    return int(released)


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
    columns = (
        "id, org, time, kind, amount, balance, product, qid, units, note, actor, evidence_seq,"
        " (SELECT cert_id FROM messages m WHERE m.qid = credit_movements.qid)"
    )
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
        None if len(row) < 13 or row[12] is None else str(row[12]),
    )


class Credits(Database):
    """Balances, statements and the ``[credits]`` terms: ``certifica credits``, the
    console and the API read here; :class:`relay.queue.messages.Messages` reserves with
    :attr:`credit_terms` as it queues a certified message."""

    def __init__(self, path: Path, lifetime: float, credit_terms: CreditTerms = FREE) -> None:
        self.credit_terms = credit_terms
        super().__init__(path, lifetime)

    async def balance_of(self, org: str) -> int:
        return await self._read(lambda: balance(self._conn, org))

    async def statement_of(self, org: str, month: str | None = None) -> Statement:
        return await self._read(lambda: statement(self._conn, org, month))

    def statement_now(self, org: str, month: str | None = None) -> Statement:
        return self.run_sync(lambda db: statement(db.conn, org, month), read=True)

    def balance_now(self, org: str) -> int:
        return self.run_sync(lambda db: balance(db.conn, org), read=True)

    def add_credits(
        self,
        org: str,
        amount: int,
        *,
        note: str | None,
        actor: str,
        now: float | None = None,
        kind: CreditKind | None = None,
    ) -> Movement:
        """A bundle bought (``amount`` > 0, ``PURCHASE``) or an operator's correction
        (``ADJUST``, signed; the default for ``amount`` < 0). Documents of ``org`` that
        waited for credits are pending again in the same transaction (they are charged
        when made; those still short wait again)."""
        kind = kind or (CreditKind.PURCHASE if amount > 0 else CreditKind.ADJUST)
        when = _time.time() if now is None else now
        warn = self.credit_terms.warn_below

        def write(db: sqlite_utils.Database) -> Movement:
            movement = move(
                db.conn, org, kind, amount, when, actor=actor, note=note, warn_below=warn
            )
            if amount > 0:
                release_waiting(db.conn, org)
            return movement

        return self.run_sync(write)

    async def can_pay(self, org: str | None, product: Product) -> bool:
        """Whether ``org`` has the price of one ``product`` now (a document about to be
        made checks before rendering; the charge itself is in its transaction)."""
        price = self.credit_terms.price(product)
        return await self._read(lambda: affordable(self._conn, org, price))

    async def mark_waiting(self, qid: str, org: str) -> bool:
        """The document owed for ``qid`` waits for ``org``'s credits (on condition that
        it is still pending); the message is attributed to ``org`` if it was to none
        (a late bounce's addendum: its certified mail's organisation)."""

        def write() -> bool:
            return (
                self._conn.execute(
                    "UPDATE messages SET cert_state = ?, org = COALESCE(org, ?)"
                    " WHERE qid = ? AND cert_state = ?",
                    (str(DocumentState.WAITING), org, qid, str(DocumentState.PENDING)),
                ).rowcount
                == 1
            )

        return await self._run(write)
