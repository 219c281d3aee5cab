"""The daily jobs' scheduler (relay/certify/maintenance.py) against a real queue database:
a job never run runs at once, a job runs again only when its interval has passed (across
restarts: the last run is in the database), and a failing job is retried later without
stopping the others."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from relay.certify.maintenance import DAY, Maintenance, Task
from relay.queue.store import Store


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def counting(name: str, runs: list[tuple[str, float]], fail: bool = False) -> Task:
    async def run(now: float) -> str:
        runs.append((name, now))
        if fail:
            raise OSError("archive unreadable\nsecond line")
        return f"{name} did {len(runs)}"

    return Task(name, DAY, run)


def test_jobs_run_when_due_and_remember_it_across_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="certifica/maintenance")
    runs: list[tuple[str, float]] = []
    clock = Clock(1_800_000_000.0)
    tasks = [counting("renew", runs), counting("retention", runs)]

    async def scenario() -> list[list[str]]:
        with Store(tmp_path / "queue.db", DAY) as store:
            first = Maintenance(store, tasks, clock=clock)
            ran = [await first.run_due()]
            clock.now += DAY - 1
            ran.append(await first.run_due())
        with Store(tmp_path / "queue.db", DAY) as store:  # a restart: a new process, same database
            again = Maintenance(store, tasks, clock=clock)
            ran.append(await again.run_due())
            clock.now += 1
            ran.append(await again.run_due())
            assert await store.last_maintenance("renew") == clock.now
        return ran

    assert asyncio.run(scenario()) == [["renew", "retention"], [], [], ["renew", "retention"]]
    assert [name for name, _ in runs] == ["renew", "retention", "renew", "retention"]
    lines = [r.getMessage() for r in caplog.records]
    assert "maintenance: renew: renew did 1" in lines


def test_a_failing_job_is_logged_in_one_line_retried_later_and_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="certifica/maintenance")
    runs: list[tuple[str, float]] = []
    clock = Clock(1_800_000_000.0)
    tasks = [counting("renew", runs, fail=True), counting("retention", runs)]

    async def scenario() -> list[list[str]]:
        with Store(tmp_path / "queue.db", DAY) as store:
            jobs = Maintenance(store, tasks, retry=600.0, clock=clock)
            ran = [await jobs.run_due()]
            clock.now += 599
            ran.append(await jobs.run_due())
            clock.now += 1
            ran.append(await jobs.run_due())
            assert await store.last_maintenance("renew") is None
        return ran

    assert asyncio.run(scenario()) == [["renew", "retention"], [], ["renew"]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == (
        "maintenance: renew: failed (OSError: archive unreadable); will retry in 600 s"
    )
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.INFO)
