"""The credits ledger in a real store (relay/queue/credits.py, docs/credits.md): the
reservation is one decision with the queue record, settlement happens once whoever asks
again, free prices write nothing, a month's statement opens where the last one closed,
and CSV cells never start a formula."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.queue.credits import CreditTerms, InsufficientCredits
from relay.queue.records import NewMessage, Outcome
from relay.queue.states import CreditKind, HoldState, RecipientState
from relay.queue.store import Store
from relay.statements import spreadsheet_safe, statement_csv

PRICED = CreditTerms(email_recipient=2, warn_below=3)
NOW = datetime(2026, 11, 15, tzinfo=UTC).timestamp()


def open_store(path: Path, terms: CreditTerms = PRICED) -> Store:
    store = Store(path / "queue.db", 3600.0, terms)
    store.add_organisation("ACME", "Acme S.L.", "B12345678", NOW)
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path) as s:
        yield s


def certified(qid: str, *recipients: str, org: str = "ACME") -> NewMessage:
    return NewMessage(
        qid=qid,
        kind="mail",
        sender="alice@example.com",
        size=1,
        sha256=hashlib.sha256(qid.encode()).hexdigest(),
        recipients=recipients,
        certified=True,
        org=org,
        event="SubmissionAcceptance",
    )


def rows(store: Store, sql: str, *args: object) -> list[tuple[object, ...]]:
    return store.run_sync(lambda db: db.conn.execute(sql, args).fetchall(), read=True)


def test_short_of_credits_nothing_is_written(store: Store) -> None:
    store.add_credits("ACME", 3, note=None, actor="test", now=NOW)
    with pytest.raises(InsufficientCredits) as short:
        asyncio.run(store.enqueue(certified("Q1", "a@example.org", "b@example.org"), NOW))
    assert (short.value.balance, short.value.needed, short.value.org) == (3, 4, "ACME")
    assert rows(store, "SELECT qid FROM messages") == []
    assert rows(store, "SELECT qid FROM recipients") == []
    assert rows(store, "SELECT id FROM credit_holds") == []
    assert rows(store, "SELECT event FROM evidence WHERE qid = 'Q1'") == []
    assert store.balance_now("ACME") == 3


def test_settled_once_whoever_asks_again(store: Store) -> None:
    store.add_credits("ACME", 10, note=None, actor="test", now=NOW)
    asyncio.run(store.enqueue(certified("Q2", "a@example.org", "b@example.org"), NOW))
    assert store.balance_now("ACME") == 6
    ids = [int(r[0]) for r in rows(store, "SELECT id FROM recipients ORDER BY id")]  # type: ignore[call-overload]
    failed = Outcome(ids[0], RecipientState.FAILED, 550, "5.1.1", "no such user")
    asyncio.run(store.record("Q2", [failed], NOW + 1))
    asyncio.run(store.record("Q2", [failed], NOW + 2))  # reported twice: recorded once
    assert store.withdraw("Q2", "op", NOW + 3) == 1  # b@ never attempted: refunded
    assert store.withdraw("Q2", "op", NOW + 4) == 0  # again: nothing left to settle
    states = [r[0] for r in rows(store, "SELECT state FROM credit_holds ORDER BY id")]
    assert states == [HoldState.SPENT, HoldState.REFUNDED]
    assert store.balance_now("ACME") == 8
    kinds = [m.kind for m in store.statement_now("ACME").movements]
    assert kinds == [CreditKind.PURCHASE, CreditKind.RESERVE, CreditKind.REFUND]


def test_free_prices_write_nothing(tmp_path: Path) -> None:
    with open_store(tmp_path, CreditTerms()) as store:
        asyncio.run(store.enqueue(certified("Q3", "a@example.org"), NOW))
        assert rows(store, "SELECT id FROM credit_movements") == []
        assert rows(store, "SELECT id FROM credit_holds") == []
        assert store.balance_now("ACME") == 0


def test_low_balance_owed_once_until_back_above(store: Store) -> None:
    def low() -> tuple[object, ...]:
        return rows(store, "SELECT low_owed, low_notice FROM organisations WHERE code = 'ACME'")[0]

    store.add_credits("ACME", 6, note=None, actor="test", now=NOW)
    assert low() == (0, None)
    asyncio.run(store.enqueue(certified("Q4", "a@example.org", "b@example.org"), NOW))
    assert low() == (1, None)  # 6 - 4 = 2 < 3: owed
    store.run_sync(
        lambda db: db.conn.execute("UPDATE organisations SET low_owed = 0, low_notice = 1")
    )  # as the notice's transaction marks it
    store.add_credits("ACME", 1, note=None, actor="test", now=NOW)  # 3: back to the threshold
    assert low() == (0, None)


def test_a_months_statement_opens_where_the_last_closed(store: Store) -> None:
    october = datetime(2026, 10, 20, tzinfo=UTC).timestamp()
    store.add_credits("ACME", 100, note="invoice 1", actor="test", now=october)
    store.add_credits("ACME", 50, note="=cmd|' /C calc'!A0", actor="test", now=NOW)
    st = store.statement_now("ACME", "2026-11")
    assert (st.opening, st.closing, st.balances) == (100, 150, True)
    assert [m.amount for m in st.movements] == [50]
    text = statement_csv(st)
    assert text.splitlines()[2].endswith(",'=cmd|' /C calc'!A0,test")
    assert store.statement_now("ACME", "2026-12").movements == ()


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_csv_cells_never_start_a_formula(cell: str) -> None:
    assert spreadsheet_safe(cell) == "'" + cell
    assert spreadsheet_safe("invoice 2026-117") == "invoice 2026-117"
