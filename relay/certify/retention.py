"""The daily retention task (``[retention]``, README "Retention", docs/retention.md), and
what documents made after it say about a message whose content it removed.

:func:`retention_task` is the :class:`~relay.certify.maintenance.Task` named
``retention`` that certificate worker 0 runs once a day (and at start when it never
ran): one pass of :func:`relay.queue.retention.apply`, on a thread of its own (file
removal, fsyncs and batches of SQL must not hold up the worker's event loop), summed
up in one log line ``maintenance: retention: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from pathlib import Path

from certifier.evidence import Entry
from relay.certify.maintenance import DAY, Task
from relay.config import Config
from relay.queue import retention
from relay.queue.spool import Spool
from relay.queue.store import Store


def retention_task(cfg: Config, store: Store, spool: Spool, certificates: Path) -> Task:
    """The task applying ``cfg``'s retention policy to ``store``, ``spool`` and the kept
    certificates in ``certificates``."""
    kept = cfg.retention

    async def run(now: float) -> str:
        stop = threading.Event()
        work = asyncio.ensure_future(
            asyncio.to_thread(
                retention.apply,
                store,
                spool,
                certificates,
                now,
                content_days=kept.content_days,
                tracking_days=kept.tracking_days,
                evidence_years=kept.evidence_years,
                stop=stop,
            )
        )
        try:
            removed = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The worker is stopping: the thread ends after the batch it is in (each
            # batch is one transaction; the next run goes on). Wait for it before the
            # worker closes the store: a thread that had just passed the stop check
            # would otherwise queue its next call behind the close and wait for ever.
            stop.set()
            while not work.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({work})
            if not work.cancelled():
                work.exception()  # retrieved: an error of that last batch is retried next run
            raise
        return removed.summary()

    return Task("retention", DAY, run)


def content_removed_reason(entries: Iterable[Entry]) -> str | None:
    """Given a message's evidence entries: why its content is gone when the retention
    policy removed it (an entry ``ContentRemoved``), as a document states it
    (``message.content_unavailable``); None when it did not."""
    for entry in entries:
        if entry.event == retention.CONTENT_REMOVED:
            days = entry.detail.get("content_days")
            return retention.RETENTION_TEXT.format(days=days if isinstance(days, int) else "N")
    return None
