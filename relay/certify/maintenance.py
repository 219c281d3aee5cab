"""The gateway's daily jobs: renewing the archived certificates' timestamps and applying
the retention periods (README, "Renewal" and "Retention").

They run in certificate worker 0, beside the evidence checkpoints (ARCHITECTURE.md §1):
that process has the signer and the timestamp authority a renewal needs. Each job is a
:class:`Task`; :class:`Maintenance` runs every task whose interval has passed since its
last run, remembered in the database (``maintenance_runs``), so a restart does not run
a job again at once and a job never run (a new gateway, a day missed while it was
stopped) runs at the start.

A task's ``run(now)`` does its work without blocking the event loop (its heavy parts in
a thread) and returns one line saying what it did, which is logged as
``maintenance: <task>: <line>``. A task that fails is logged as one warning line and
tried again after ``retry`` seconds; it never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from relay.config import Config
from relay.queue.spool import Spool
from relay.queue.store import Store

__all__ = ["DAY", "Maintenance", "Task", "TimeStampingCertifier", "maintenance_tasks"]

log = logging.getLogger("certifica/maintenance")

DAY = 86400.0
T = TypeVar("T")


@dataclass(frozen=True)
class Task:
    """One job: its name in the log and in ``maintenance_runs``, how often it runs, and
    the coroutine that runs it (given the time it starts; returns its log line)."""

    name: str
    interval: float
    run: Callable[[float], Awaitable[str]]


class TimeStampingCertifier(Protocol):
    """What a job may use of the worker's certifier: its signing thread is where a
    timestamp or a signature is made (:class:`relay.process.worker.InProcessCertifier`)."""

    async def run_in_signing_thread(self, fn: Callable[[], T]) -> T: ...


def maintenance_tasks(
    cfg: Config,
    store: Store,
    spool: Spool,
    certifier: TimeStampingCertifier,
    paths: dict[str, Path],
) -> list[Task]:
    """Every daily job of this gateway."""
    from relay.certify.hosted_expiry import expiry_task
    from relay.certify.renewal import renewal_tasks
    from relay.certify.retention import retention_task  # it imports Task from here

    # Retention first: a renewal of a file retention is about to remove is wasted work.
    tasks: list[Task] = [retention_task(cfg, store, spool, paths["certificates"])]
    tasks += renewal_tasks(cfg, store, certifier, paths["certificates"])
    tasks.append(expiry_task(store))  # hosted links not opened in time (docs/hosted.md)
    return tasks


class Maintenance:
    """Runs each :class:`Task` when it is due, checking every ``poll`` seconds."""

    def __init__(
        self,
        store: Store,
        tasks: list[Task],
        poll: float = 60.0,
        retry: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.tasks = tasks
        self.poll = poll
        self.retry = retry
        self.clock = clock
        self._failed: dict[str, float] = {}  # task -> when it may be tried again
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="maintenance")

    async def stop(self) -> None:
        """Stop; a job in its middle is cancelled (each of its steps is atomic)."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.run_due()
            try:
                await asyncio.wait_for(self._stop.wait(), self.poll)
            except TimeoutError:
                pass

    async def run_due(self) -> list[str]:
        """Run every task that is due now; returns the names of those run."""
        ran = []
        for task in self.tasks:
            now = self.clock()
            if now < self._failed.get(task.name, 0.0):
                continue
            last = await self.store.last_maintenance(task.name)
            if last is not None and now - last < task.interval:
                continue
            ran.append(task.name)
            await self._run_one(task, now)
        return ran

    async def _run_one(self, task: Task, now: float) -> None:
        try:
            summary = await task.run(now)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._failed[task.name] = now + min(self.retry, task.interval)
            log.warning(
                "maintenance: %s: failed (%s: %s); will retry in %.0f s",
                task.name,
                err.__class__.__name__,
                str(err).splitlines()[0][:200] if str(err) else "no detail",
                min(self.retry, task.interval),
            )
            log.debug("traceback", exc_info=err)
            return
        self._failed.pop(task.name, None)
        await self.store.record_maintenance(task.name, now, summary)
        log.info("maintenance: %s: %s", task.name, summary)
