"""The queue manager: what is due, and when (Postfix's qmgr).

The SMTP side only accepts; everything after the 250 is found here by scanning the
store, so a restart resumes whatever was in flight: recipients still queued or deferred
are tried again, notices and certificates still pending are made. The queue manager
decides only what runs and how much at once; a :class:`~relay.queue.jobs.Dispatcher`
runs it: delivery attempts in the delivery agents (:mod:`relay.delivery.agent`), notices,
certificates, reports and addenda in the document makers (:mod:`relay.certify.documents`),
in this process (:mod:`relay.queue.local`) or in others (ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from relay.config import Config
from relay.delivery.agent import gets_tracked_copy
from relay.logs import log_failure
from relay.queue.jobs import (
    DeliveryJob,
    Dispatcher,
    DocumentDone,
    DocumentJob,
    DocumentKind,
    JobLost,
    Row,
)
from relay.queue.store import Store
from relay.sms.numbers import sms_domain

log = logging.getLogger("certifica/qmgr")

FULL_SCAN = 5.0
"""Seconds between looks at every active message for one that became finished."""
MAX_DOCUMENT_TASKS = 256
"""Notices, certificates and addenda started and not yet done, at most."""


class QueueManager:
    """The scheduler: scans the store and hands each job to the dispatcher.

    - Deliveries: due recipients are leased (:meth:`relay.queue.store.Store.take_due`)
      and grouped into one :class:`~relay.queue.jobs.DeliveryJob` per message and
      domain (per recipient when each gets its own tracked copy). At most
      ``[delivery] concurrency`` × 4 jobs are out, and at most ``per_destination`` per
      domain; a domain whose servers did not answer the last attempt
      (``DeliveryDone.reachable`` False) gets one at a time until one does (Postfix's
      destination concurrency feedback).
    - Documents: the notice, report, tracking addendum or closing
      (:class:`~relay.queue.jobs.DocumentKind`) a message is due, each at most once in
      flight (keyed by :attr:`~relay.queue.jobs.DocumentJob.key`), at most
      :data:`MAX_DOCUMENT_TASKS` at once; the backlog stays in the database.
    - Finished messages: the qids a job says it changed are looked at on the next scan;
      every :data:`FULL_SCAN` seconds (and at start) all active ones are, for what
      changed elsewhere (an operator's withdrawal, a late DSN).

    It shares no state with what runs the jobs: the results come back as values, and a
    job whose process ended (:class:`~relay.queue.jobs.JobLost`) has its leases given
    back and its message looked at again.
    """

    def __init__(self, cfg: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.cfg = cfg
        self.store = store
        self.dispatcher = dispatcher
        self._wake = asyncio.Event()
        self._delivering = 0
        self._by_domain: dict[str, int] = {}  # attempts spawned and not yet ended, per domain
        self._unreachable: set[str] = set()  # no server of the domain answered, last time
        self._maybe_finished: set[str] = set()  # messages whose last attempt just ended
        self._next_full_scan = 0.0
        self._certifying: set[str] = set()  # DocumentJob.key of every document in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def wake(self, qid: str | None = None) -> None:
        """Scan now; ``qid``: a message that may be finished already (it has no
        recipients to wait for, or one of them just reached a final state)."""
        if qid is not None:
            self._maybe_finished.add(qid)
        self._wake.set()

    async def run(self) -> None:
        """Scan for work until stopped; woken early whenever a message is accepted."""
        while not self._stopping:
            try:
                await self.scan()
            except Exception:  # keep the queue running; the error is for the operator's log
                log_failure(log, "queue scan failed; will retry")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.queue.scan_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, grace: float = 10.0) -> None:
        """Hand out nothing more; the jobs out have ``grace`` seconds to end."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def scan(self) -> None:
        """Hand out what is due: deliveries, then tracking addenda, notices, reports
        and the closing of finished messages."""
        now = time.time()
        # Take only as much as the workers can start soon: a queue of 100k messages
        # stays in the database, not in memory.
        room = self.cfg.delivery.concurrency * 4 - self._delivering
        if room > 0:
            d = self.cfg.delivery
            # Longer than the longest attempt can take (every hop connecting, then stalling
            # on each command), so a lease never ends while its attempt still runs.
            per_hop = d.connect_timeout + d.greeting_timeout + 4 * d.command_timeout
            lease = now + 5 * (per_hop + d.data_init_timeout + d.data_timeout)
            # A domain never has more attempts under way than its limit, so none waits on
            # a busy or dead destination while holding the room the others need; a domain
            # whose servers do not answer at all gets one attempt at a time until one does
            # (Postfix's destination concurrency feedback).
            slots = {
                d: self._allowance(d) - self._by_domain.get(d, 0)
                for d in {*self._by_domain, *self._unreachable}
            }
            if not self.cfg.sms.enabled:
                # No sms process to send them: SMS recipients wait in the queue, not
                # leased (`certifica queue` shows them) until [sms] is enabled.
                slots[sms_domain(self.cfg.gateway.domain)] = 0
            due = await self.store.take_due(
                now, room * 4, lease, slots, self.cfg.delivery.per_destination
            )
            groups: dict[tuple[str, str, int], list[Row]] = {}
            for row in due:
                # A tracked copy or a hosted notification (docs/hosted.md) is made for
                # each recipient: one transaction each.
                alone = (gets_tracked_copy(self.cfg, row) or row.get("hosted")) and row["id"] or 0
                groups.setdefault((row["qid"], row["domain"], alone), []).append(row)
            later: list[int] = []
            for rows in groups.values():
                domain = rows[0]["domain"]
                if self._by_domain.get(domain, 0) >= self._allowance(domain):
                    later.extend(r["id"] for r in rows)  # for a later scan
                    continue
                self._delivering += 1
                self._by_domain[domain] = self._by_domain.get(domain, 0) + 1
                self._spawn(self._deliver(DeliveryJob(rows)))
            if later:
                await self.store.release(later)
        if self.cfg.tracking.enabled:
            price = self.store.credit_terms.addendum  # short of it, an addendum waits
            for qid in await self.store.addenda_due(
                now, self.cfg.tracking.addendum_interval, price
            ):
                self._hand_out(DocumentJob(DocumentKind.ADDENDUM, qid))
        for qid in await self.store.decisions_due():  # accepted or rejected (docs/hosted.md)
            self._hand_out(DocumentJob(DocumentKind.ACCEPTANCE, qid))
        # Messages become finished when an attempt ends (their qids are noted then); every
        # FULL_SCAN seconds, and at start, all active ones are looked at too, for what
        # changed elsewhere (a withdrawal by the operator's command, a late DSN).
        candidates: set[str] | None = self._maybe_finished
        if now >= self._next_full_scan:
            candidates = None
            self._next_full_scan = now + FULL_SCAN
        self._maybe_finished = set()
        work = await self.store.pending_work(candidates)
        # A backlog of 100k notices or certificates stays in the database: only so many
        # tasks wait for the document slots at once; the rest is found again later.
        for qid in work["notices"]:
            if len(self._certifying) >= MAX_DOCUMENT_TASKS:
                break
            self._hand_out(DocumentJob(DocumentKind.NOTICE, qid))
        reports = list(work["reports"])
        warn = self.cfg.queue.delay_warning
        if warn > 0 and candidates is None:  # delay reports: looked for on the full scans
            reports += await self.store.delays_due(now - warn)
        for qid in reports:
            if len(self._certifying) < MAX_DOCUMENT_TASKS:
                self._hand_out(DocumentJob(DocumentKind.REPORT, qid))
        for qid in work["finished"]:
            if len(self._certifying) >= MAX_DOCUMENT_TASKS:
                self._maybe_finished.add(qid)
            else:
                self._hand_out(DocumentJob(DocumentKind.FINISH, qid))
        if candidates is None and self.store.credit_terms.in_use:
            # The organisations whose admins are owed a notice about their credits
            # (docs/credits.md): looked for on the full scans.
            for org in await self.store.credit_notices_due():
                self._hand_out(DocumentJob(DocumentKind.CREDITS, org))

    def _allowance(self, domain: str) -> int:
        """Attempts to ``domain`` allowed at once: one while it looks dead."""
        return 1 if domain in self._unreachable else self.cfg.delivery.per_destination

    async def _deliver(self, job: DeliveryJob) -> None:
        domain = job.domain
        try:
            done = await self.dispatcher.deliver(job)
            if done.reachable is True:
                self._unreachable.discard(domain)
            elif done.reachable is False:
                self._unreachable.add(domain)  # no reply at all: connection-level trouble
            # reachable None: the attempt was never made; it says nothing of the domain
        except JobLost:
            # At-least-once: the agent may have delivered and not recorded it yet.
            log.warning("%s: delivery agent ended during the attempt; will retry", job.qid)
            await self._give_back(job)
        except Exception:
            log_failure(log, "%s: delivery job failed unexpectedly; will retry", job.qid)
            await self._give_back(job)
        finally:
            self._delivering -= 1
            self._by_domain[domain] -= 1
            if not self._by_domain[domain]:
                del self._by_domain[domain]
            self.wake(job.qid)

    async def _give_back(self, job: DeliveryJob) -> None:
        try:
            await self.store.release([r["id"] for r in job.rows])
        except Exception:
            log_failure(log, "%s: could not give the recipients back", job.qid)

    def _hand_out(self, job: DocumentJob) -> None:
        """Start ``job`` unless the same one is in flight already."""
        if job.key not in self._certifying:
            self._certifying.add(job.key)
            self._spawn(self._document(job))

    async def _document(self, job: DocumentJob) -> None:
        done = DocumentDone()
        try:
            done = await self.dispatcher.document(job)
        except JobLost:
            log.warning("%s: %s ended before it was made; will retry", job.qid, job.kind)
            done = DocumentDone((job.qid,))
        except Exception:
            log_failure(log, "%s: %s job failed unexpectedly; will retry", job.qid, job.kind)
        finally:
            self._certifying.discard(job.key)
        for qid in done.changed:
            self.wake(qid)
