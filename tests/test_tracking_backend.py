"""relay.web.tracking: how a hit is classified and stored (StoreBackend on a real
relay.queue.store.Store in a temporary directory), and which domains never get tracking.

Times are given, not waited for: each TrackingEvent carries its own time, and the
recipient's delivery time is what Store.record was told, so "3 seconds after delivery"
is exact and no test sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from addendum.http import TrackingEvent
from relay.config import Config, TrackingConfig
from relay.queue.store import NewMessage, Outcome, Store
from relay.web.tracking import SWEEP_SECONDS, StoreBackend, tracked_for

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
OFFICE_PROBE = "Microsoft Office Existence Discovery"
READER = "reader@example.org"
DELIVERED = 1_800_000_000.0  # when the reader's server said 250
LINKS = ("https://contract.example/sign", "https://terms.example/v2")
IP = "198.51.100.4"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Store(tmp_path / "queue.db", 3600.0)
    yield db
    db.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def backend(store: Store, fast_seconds: float = 10.0) -> tuple[StoreBackend, list[int]]:
    wakes: list[int] = []
    cfg = Config(tracking=TrackingConfig(enabled=True, fast_seconds=fast_seconds))
    return StoreBackend(cfg, store, lambda: wakes.append(1)), wakes


async def message(
    store: Store,
    qid: str,
    links: tuple[str, ...] = LINKS,
    tracking: bool = True,
    delivered: float | None = DELIVERED,
) -> int:
    """A certified message to READER, delivered at ``delivered`` with ``links`` tracked;
    returns the recipient id."""
    raw = b"Subject: x\r\n\r\nbody\r\n"
    await store.enqueue(
        NewMessage(
            qid=qid,
            kind="mail",
            sender="alice@example.com",
            size=len(raw),
            sha256=hashlib.sha256(raw).hexdigest(),
            recipients=(READER,),
            certified=True,
            method="submission",
            tracking=tracking,
        ),
        now=DELIVERED - 60,
    )
    (rcpt,) = await store.recipients(qid)
    if delivered is not None:
        await store.record(
            qid,
            [Outcome(rcpt["id"], "delivered", 250, "2.0.0", "Ok", delivered_sha256="00" * 32)],
            delivered,
        )
    await store.tracking_copy(qid, [rcpt["id"]], links, True, ())
    return int(rcpt["id"])


def hit(
    qid: str,
    rid: int,
    at: float,
    link: int = 0,
    ua: str = CHROME,
    method: str = "GET",
    links: tuple[str, ...] = LINKS,
) -> TrackingEvent:
    return TrackingEvent(
        kind="click" if link else "open",
        qid=qid,
        recipient_id=rid,
        link=link,
        url=links[link - 1] if link else None,
        time=DELIVERED + at,
        ip=IP,
        user_agent=ua,
        method=method,
    )


async def verdicts(store: Store, qid: str) -> list[tuple[str, int, bool, str]]:
    return [
        (e["kind"], e["link"], bool(e["automatic"]), e["reason"])
        for e in await store.tracking_events(qid)
    ]


# ---------------------------------------------------------------------------
# Time since delivery


def test_open_seconds_after_delivery_is_automatic_later_a_person(store: Store) -> None:
    async def test() -> None:
        tb, wakes = backend(store, fast_seconds=10.0)
        rid = await message(store, "Q-FAST")
        await tb.record(hit("Q-FAST", rid, 3.0))
        await tb.record(hit("Q-FAST", rid, 600.0))
        await tb.record(hit("Q-FAST", rid, 2 * 86400.0, link=1))
        (fast, later, days) = await verdicts(store, "Q-FAST")
        assert fast[2] and "3.0 seconds after delivery" in fast[3], fast
        assert "threshold 10 s" in fast[3]
        assert not later[2] and "10 minutes after delivery" in later[3], later
        assert not days[2] and "2 days after delivery" in days[3], days
        assert len(wakes) == 3  # the queue manager is told each time (addenda)

    run(test)


def test_fast_seconds_comes_from_the_config(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store, fast_seconds=60.0)
        rid = await message(store, "Q-CFG")
        await tb.record(hit("Q-CFG", rid, 30.0))
        ((_, _, automatic, reason),) = await verdicts(store, "Q-CFG")
        assert automatic and "30.0 seconds after delivery" in reason and "60 s" in reason

    run(test)


def test_not_yet_delivered_has_no_delivery_time_in_the_reason(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-NODLV", delivered=None)
        await tb.record(hit("Q-NODLV", rid, 1.0))
        ((_, _, automatic, reason),) = await verdicts(store, "Q-NODLV")
        assert not automatic and "after delivery" not in reason, reason

    run(test)


def test_untracked_message_records_nothing(store: Store) -> None:
    async def test() -> None:
        tb, wakes = backend(store)
        rid = await message(store, "Q-OFF", tracking=False)
        await tb.record(hit("Q-OFF", rid, 600.0))
        await tb.record(hit("Q-OFF", rid + 99, 600.0))  # no such recipient
        assert await store.tracking_events("Q-OFF") == [] and wakes == []

    run(test)


def test_each_hit_is_an_evidence_entry(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-EVID")
        await tb.record(hit("Q-EVID", rid, 600.0))
        await tb.record(hit("Q-EVID", rid, 601.0))
        await tb.record(hit("Q-EVID", rid, 602.0, link=2))
        events = [
            (e.event, e.recipient, e.detail.get("link"))
            for e in await store.evidence_for("Q-EVID")
            if e.event in ("ContentOpened", "LinkClicked")
        ]
        assert events == [
            ("ContentOpened", READER, 0),
            ("ContentOpened", READER, 0),
            ("LinkClicked", READER, 2),
        ]

    run(test)


# ---------------------------------------------------------------------------
# "Every link clicked at once" counts distinct links


def test_one_link_clicked_twice_is_not_every_link(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-TWICE")
        await tb.record(hit("Q-TWICE", rid, 600.0, link=1))
        await tb.record(hit("Q-TWICE", rid, 601.0, link=1))  # a double click, a second later
        await tb.record(hit("Q-TWICE", rid, 601.5, link=1))
        got = await verdicts(store, "Q-TWICE")
        assert [a for _, _, a, _ in got] == [False, False, False], got
        assert all("all 2 links" not in r for *_, r in got)

    run(test)


def test_office_probe_then_browser_get_of_the_same_link(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-OFFICE")
        await tb.record(hit("Q-OFFICE", rid, 600.0, link=1, ua=OFFICE_PROBE, method="HEAD"))
        await tb.record(hit("Q-OFFICE", rid, 600.4, link=1))
        (probe, browser) = await verdicts(store, "Q-OFFICE")
        assert probe[2] and "existence" in probe[3].lower(), probe
        assert not browser[2] and "likely by a person" in browser[3], browser

    run(test)


def test_every_distinct_link_within_seconds_is_a_sweep(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        three = (*LINKS, "https://third.example/")
        rid = await message(store, "Q-SWEEP", links=three)
        await tb.record(hit("Q-SWEEP", rid, 600.0, link=1, links=three))
        await tb.record(hit("Q-SWEEP", rid, 600.2, link=2, links=three))
        await tb.record(hit("Q-SWEEP", rid, 600.3, link=1, links=three))  # 2 distinct of 3
        await tb.record(hit("Q-SWEEP", rid, 600.5, link=3, links=three))  # now all 3
        got = await verdicts(store, "Q-SWEEP")
        assert [a for _, _, a, _ in got] == [False, False, False, True], got
        assert "all 3 links of the message clicked within seconds" in got[-1][3]

    run(test)


def test_clicks_further_apart_than_the_window_are_not_a_sweep(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-APART")
        await tb.record(hit("Q-APART", rid, 600.0, link=1))
        await tb.record(hit("Q-APART", rid, 600.0 + SWEEP_SECONDS + 1, link=2))
        got = await verdicts(store, "Q-APART")
        assert [a for _, _, a, _ in got] == [False, False], got

    run(test)


def test_sweep_counts_only_this_recipients_clicks(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-MINE")
        other = await message(store, "Q-OTHER")
        await tb.record(hit("Q-OTHER", other, 600.0, link=1))
        await tb.record(hit("Q-MINE", rid, 600.1, link=2))
        await tb.record(hit("Q-MINE", rid, 600.2, link=2))
        assert [a for _, _, a, _ in await verdicts(store, "Q-MINE")] == [False, False]

    run(test)


def test_opens_do_not_count_as_clicked_links(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        rid = await message(store, "Q-OPENS")
        await tb.record(hit("Q-OPENS", rid, 600.0))
        await tb.record(hit("Q-OPENS", rid, 600.1))
        await tb.record(hit("Q-OPENS", rid, 600.2, link=1))
        assert [a for _, _, a, _ in await verdicts(store, "Q-OPENS")] == [False, False, False]

    run(test)


def test_single_link_message_is_never_a_sweep(store: Store) -> None:
    async def test() -> None:
        tb, _ = backend(store)
        one = LINKS[:1]
        rid = await message(store, "Q-ONE", links=one)
        await tb.record(hit("Q-ONE", rid, 600.0, link=1, links=one))
        await tb.record(hit("Q-ONE", rid, 600.1, link=1, links=one))
        assert [a for _, _, a, _ in await verdicts(store, "Q-ONE")] == [False, False]

    run(test)


# ---------------------------------------------------------------------------
# relay.web.tracking.tracked_for: never_domains


def never(*domains: str) -> Config:
    return Config(tracking=TrackingConfig(enabled=True, never_domains=domains))


@pytest.mark.parametrize(
    ("domain", "tracked"),
    [
        ("court.example", False),
        ("COURT.example", False),
        ("court.example.", False),
        ("mail.court.example", False),
        ("a.b.mail.court.example", False),
        ("notcourt.example", True),
        ("court.example.org", True),
        ("courtexample", True),
        ("example", True),
        ("other.example", True),
    ],
)
def test_tracked_for_covers_subdomains_of_never_domains(domain: str, tracked: bool) -> None:
    assert tracked_for(never("court.example", "Judiciary.Example."), domain) is tracked


def test_tracked_for_listed_domains_case_and_dots() -> None:
    cfg = never("Judiciary.Example.", ".gov.example")
    assert not tracked_for(cfg, "judiciary.example")
    assert not tracked_for(cfg, "mx1.JUDICIARY.example")
    assert not tracked_for(cfg, "tax.gov.example")
    assert tracked_for(cfg, "gov.example.org")
    assert tracked_for(never(), "court.example")
    assert tracked_for(never(""), "court.example")  # an empty entry never covers everything
