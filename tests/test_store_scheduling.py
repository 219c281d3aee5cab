"""The queue's scheduling query: per-domain slots keep work in the database."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.store import NewMessage, Store

NOW = 1_800_000_000.0
LEASE = NOW + 3600


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "queue.db", 3600.0)
    yield db
    db.close()


async def enqueue(store: Store, qid: str, *recipients: str) -> None:
    await store.enqueue(
        NewMessage(
            qid=qid,
            kind="mail",
            sender="alice@example.com",
            size=1,
            sha256=hashlib.sha256(qid.encode()).hexdigest(),
            recipients=recipients,
        ),
        now=NOW - 100 + int(qid[1:]),  # oldest first: m1, m2, ...
    )


def test_slots_cap_messages_per_domain_and_leave_the_rest_unleased(store: Store) -> None:
    async def scenario() -> None:
        for i in range(1, 6):  # five messages to a.example, each with two recipients there
            await enqueue(store, f"m{i}", f"x{i}@a.example", f"y{i}@a.example")
        await enqueue(store, "m6", "z@b.example")
        await enqueue(store, "m7", "w@c.example")
        await enqueue(store, "m8", "v@c.example")

        due = await store.take_due(NOW, 100, LEASE, {"a.example": 2}, 1)
        taken = sorted({(r["qid"], r["domain"]) for r in due})
        # a.example: its two oldest messages, with both recipients; the others one each
        assert taken == [
            ("m1", "a.example"),
            ("m2", "a.example"),
            ("m6", "b.example"),
            ("m7", "c.example"),
        ]
        assert len([r for r in due if r["domain"] == "a.example"]) == 4

        # What was not taken is not leased: the next scan finds it, oldest first.
        again = await store.take_due(NOW, 100, LEASE, {"a.example": 1}, 5)
        assert sorted({r["qid"] for r in again}) == ["m3", "m8"]
        # Without slots, everything due and unleased comes back.
        rest = await store.take_due(NOW, 100, LEASE)
        assert sorted({r["qid"] for r in rest}) == ["m4", "m5"]
        assert await store.take_due(NOW, 100, LEASE) == []

    asyncio.run(scenario())


def test_a_domain_at_its_limit_gets_nothing(store: Store) -> None:
    async def scenario() -> None:
        await enqueue(store, "m1", "x@a.example")
        await enqueue(store, "m2", "y@b.example")
        due = await store.take_due(NOW, 100, LEASE, {"a.example": 0}, 3)
        assert [r["qid"] for r in due] == ["m2"]
        assert [r["qid"] for r in await store.take_due(NOW, 100, LEASE)] == ["m1"]

    asyncio.run(scenario())
