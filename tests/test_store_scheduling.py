"""The queue's scheduling query: per-domain slots keep work in the database."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.store import NewMessage, Outcome, Store

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


# -- leases: an owner and an expiry; claiming never gives one recipient to two ----------


def leases(store: Store, qid: str) -> list[tuple[str, float | None, str | None]]:
    async def read() -> list[tuple[str, float | None, str | None]]:
        return [
            (r["address"], r["lease_until"], r["lease_owner"]) for r in await store.recipients(qid)
        ]

    return asyncio.run(read())


def test_a_lease_is_its_owners_until_it_expires(store: Store) -> None:
    async def scenario() -> None:
        await enqueue(store, "m1", "x@a.example", "y@a.example")
        due = await store.take_due(NOW, 100, LEASE, owner="qmgr-1")
        assert {(r["address"], r["lease_owner"], r["lease_until"]) for r in due} == {
            ("x@a.example", "qmgr-1", LEASE),
            ("y@a.example", "qmgr-1", LEASE),
        }
        # Another claimer gets nothing while the lease holds ...
        assert await store.take_due(NOW + 10, 100, NOW + 20, owner="qmgr-2") == []
        # ... and everything once it has expired (its owner died without giving it back).
        later = await store.take_due(LEASE + 1, 100, LEASE + 3600, owner="qmgr-2")
        assert sorted(r["address"] for r in later) == ["x@a.example", "y@a.example"]

    asyncio.run(scenario())
    assert leases(store, "m1") == [
        ("x@a.example", LEASE + 3600, "qmgr-2"),
        ("y@a.example", LEASE + 3600, "qmgr-2"),
    ]


def test_without_an_owner_the_process_is_the_owner(store: Store) -> None:
    import os

    async def scenario() -> list[dict[str, object]]:
        await enqueue(store, "m1", "x@a.example")
        return await store.take_due(NOW, 100, LEASE)

    (row,) = asyncio.run(scenario())
    assert str(row["lease_owner"]).endswith(f":{os.getpid()}")


def test_release_leases_keeps_the_attempts_still_running(store: Store) -> None:
    async def scenario() -> int:
        await enqueue(store, "m1", "a@a.example", "b@a.example", "c@a.example")
        rows = await store.take_due(NOW, 100, LEASE, owner="qmgr-1")
        busy = next(r["id"] for r in rows if r["address"] == "b@a.example")
        return await store.release_leases(except_ids=[busy])

    assert asyncio.run(scenario()) == 2
    assert leases(store, "m1") == [
        ("a@a.example", None, None),
        ("b@a.example", LEASE, "qmgr-1"),
        ("c@a.example", None, None),
    ]


def test_an_owner_releases_only_its_own_leases(store: Store) -> None:
    async def scenario() -> None:
        await enqueue(store, "m1", "a@a.example")
        await enqueue(store, "m2", "b@b.example")
        one = await store.take_due(NOW, 1, LEASE, owner="node-1")
        two = await store.take_due(NOW, 1, LEASE, owner="node-2")
        assert [r["qid"] for r in one + two] == ["m1", "m2"]
        await store.release([two[0]["id"]], owner="node-1")  # not node-1's: kept
        assert await store.release_leases(owner="node-1") == 1

    asyncio.run(scenario())
    assert leases(store, "m1") == [("a@a.example", None, None)]
    assert leases(store, "m2") == [("b@b.example", LEASE, "node-2")]


def test_two_claimers_never_get_the_same_recipient(tmp_path: Path) -> None:
    """Two stores on one database (two processes): each claims what the other did not."""
    first = Store(tmp_path / "queue.db", 3600.0)
    second = Store(tmp_path / "queue.db", 3600.0)
    try:

        async def scenario() -> tuple[list[int], list[int]]:
            for i in range(1, 41):
                await enqueue(first, f"m{i}", f"x{i}@a.example", f"y{i}@b.example")
            got: tuple[list[int], list[int]] = ([], [])
            for _ in range(8):  # both claim at once, in rounds of a few each
                a, b = await asyncio.gather(
                    first.take_due(NOW, 7, LEASE, owner="one"),
                    second.take_due(NOW, 7, LEASE, owner="two"),
                )
                got[0].extend(r["id"] for r in a)
                got[1].extend(r["id"] for r in b)
            return got

        ones, twos = asyncio.run(scenario())
    finally:
        first.close()
        second.close()
    assert not set(ones) & set(twos)
    assert len(ones) + len(twos) == 80 == len(set(ones) | set(twos))


def outcome(rid: int, status: str) -> Outcome:
    return Outcome(rid, status, 250 if status == "delivered" else 451, None, "reply")


def test_recording_an_outcome_twice_records_it_once(store: Store) -> None:
    async def scenario() -> tuple[list[dict[str, object]], list[str]]:
        await enqueue(store, "m1", "x@a.example")
        (row,) = await store.take_due(NOW, 100, LEASE, owner="agent-1")
        for _ in range(2):  # a child that recorded, died before answering, and is replayed
            await store.record("m1", [outcome(row["id"], "delivered")], NOW + 1, owner="agent-1")
        return await store.recipients("m1"), [e.event for e in await store.evidence_for("m1")]

    (rcpt,), events = asyncio.run(scenario())
    assert (rcpt["status"], rcpt["attempts"], rcpt["lease_until"]) == ("delivered", 1, None)
    assert events.count("RelayToNonERDS") == 1


def test_an_outcome_under_a_lost_lease_is_dropped_unless_it_delivered(store: Store) -> None:
    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        await enqueue(store, "m1", "x@a.example")
        await enqueue(store, "m2", "y@b.example")
        old = await store.take_due(NOW, 100, LEASE, owner="agent-1")
        # agent-1 hangs past its leases; agent-2 takes both recipients over.
        new = await store.take_due(LEASE + 1, 100, LEASE + 3600, owner="agent-2")
        assert sorted(r["id"] for r in new) == sorted(r["id"] for r in old)
        by_qid = {r["qid"]: r["id"] for r in old}
        await store.record("m1", [outcome(by_qid["m1"], "deferred")], LEASE + 2, owner="agent-1")
        await store.record("m2", [outcome(by_qid["m2"], "delivered")], LEASE + 2, owner="agent-1")
        ((m1,), (m2,)) = (await store.recipients("m1"), await store.recipients("m2"))
        return m1, m2

    m1, m2 = asyncio.run(scenario())
    # The deferral says nothing agent-2's attempt will not: dropped, agent-2 keeps its lease.
    assert (m1["status"], m1["attempts"], m1["lease_owner"]) == ("queued", 0, "agent-2")
    # What reached the recipient is recorded as it happened.
    assert (m2["status"], m2["attempts"]) == ("delivered", 1)


def test_an_expired_lease_is_no_attempt_under_way(store: Store) -> None:
    """A message withdrawn while an attempt holds a lease waits for that attempt's outcome,
    but not past the lease: an owner that died never records one."""

    async def scenario() -> tuple[list[str], list[str]]:
        await enqueue(store, "m1", "x@a.example")
        await store.take_due(NOW, 100, NOW + 10, owner="agent-1")
        assert store.withdraw("m1", "op", NOW + 1) == 1  # withdrawn while an attempt runs
        while_leased = await store.pending_work(now=NOW + 5)
        expired = await store.pending_work(now=NOW + 11)
        return while_leased["finished"], expired["finished"]

    assert asyncio.run(scenario()) == ([], ["m1"])
