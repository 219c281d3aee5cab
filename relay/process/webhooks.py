"""The webhook process: organisations' events, read from the evidence log, POSTed to
their URLs (docs/webhooks.md).

One child of the master (ARCHITECTURE.md §1), like the admin process. Why a process of
its own: a webhook's receiver is a stranger's server, which may answer slowly, hang until
the timeout or not answer at all, for a day. Nothing the mail needs waits for it: the
acceptors, the queue manager, the delivery agents and the certificate workers never
call a webhook nor wait for this process; they write evidence entries, as they always
have, and this process reads them afterwards. If it dies, mail goes on; when it starts
again, it carries on from its cursor.

It does two things, over and over, every ``[queue] scan_interval``:

* **collects**: the evidence entries past its cursor become deliveries (one per webhook
  that wants the event), and the cursor advances, in one transaction
  (:meth:`relay.queue.webhooks.Webhooks.collect_webhook_events`): an event is owed once;
* **sends**: the deliveries that are due are POSTed (:mod:`relay.webhooks.sender`),
  many at once; each attempt, and the delivery's new state, is one transaction. A 2xx
  answer is ``delivered``; anything else is tried again after ``[webhooks]
  first_retry`` seconds, doubling up to ``max_retry``, with a random part of ±20 %
  (so that the receivers that failed together are not all tried again at the same
  second), until ``retry_for`` seconds after the event, when it is given up
  (``failed``, one warning line).

A delivery is at least once: killed in the middle of a POST, the process has not
recorded the attempt, and sends it again when it starts (same ``Certifica-Delivery``
id, which is what a receiver deduplicates on). On SIGTERM it starts nothing new and
gives the POSTs in flight the grace to finish; those still running are abandoned and
sent again at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from relay.config import Config
from relay.logs import log_failure, loop_exception_handler, printable
from relay.metrics import WEBHOOK_ATTEMPTS
from relay.process.child import StatusFile, report_status
from relay.process.reload import listen_for_log_reload
from relay.queue.store import Store
from relay.queue.webhooks import Attempt, DeliveryState, Due
from relay.webhooks.events import mapper
from relay.webhooks.sender import IN_FLIGHT, PER_URL, Sender

log = logging.getLogger("certifica/webhooks")

JITTER = 0.2
"""The random part of a wait: ± this fraction."""


@dataclass
class WebhooksSetup:
    """What the master hands the webhook process."""

    cfg: Config
    paths: dict[str, Path]
    tracking_key: bytes  # the verification URLs in the bodies (relay.certify.verification)
    grace: float


def backoff(cfg: Config, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 for the first)."""
    wait = min(cfg.webhooks.max_retry, cfg.webhooks.first_retry * 2 ** min(attempts - 1, 30))
    return wait * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311 - not a secret


def outcome(cfg: Config, due: Due, attempt: Attempt, now: float) -> tuple[DeliveryState, float]:
    """The delivery's state after ``attempt``, and when to try next."""
    if attempt.status is not None and 200 <= attempt.status < 300:
        return DeliveryState.DELIVERED, now
    deadline = due.created + cfg.webhooks.retry_for
    if now >= deadline:
        return DeliveryState.FAILED, now
    # The last attempt is made at the deadline, not skipped because a wait overshoots it.
    return DeliveryState.PENDING, min(now + backoff(cfg, due.attempts + 1), deadline)


def _answer(attempt: Attempt) -> str:
    return f"HTTP {attempt.status}" if attempt.status is not None else attempt.error or "no answer"


class WebhookProcess:
    """The webhook process (see the module docstring)."""

    def __init__(self, setup: WebhooksSetup) -> None:
        cfg = setup.cfg
        self.cfg = cfg
        self.store = Store(setup.paths["db"], cfg.queue.lifetime)
        self.sender = Sender(
            timeout=cfg.webhooks.timeout, production=cfg.gateway.mode == "production"
        )
        self.to_event = mapper(cfg.web.public_url, setup.tracking_key)
        self.in_flight: dict[int, asyncio.Task[None]] = {}
        self.urls: dict[int, str] = {}  # the URL of each delivery in flight
        self.wake = asyncio.Event()
        self.stopping = False
        self.delivered = self.failed = self.attempts = 0

    async def run(self) -> None:
        """Collect and send until :meth:`stop`."""
        while not self.stopping:
            try:
                await self._collect()
                await self._send_due()
            except Exception:  # the database, for a moment: the next round tries again
                log_failure(log, "webhooks: a round failed; trying again")
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), self.cfg.queue.scan_interval)
            except TimeoutError:
                pass

    async def _collect(self) -> None:
        more = await self.store.webhook_backlog()
        while more and not self.stopping:
            made, more = await self.store.collect_webhook_events(self.to_event, time.time())
            if made:
                log.debug("webhooks: %d deliveries owed", made)

    async def _send_due(self) -> None:
        room = IN_FLIGHT - len(self.in_flight)
        if room <= 0 or self.stopping:
            return
        per_url = Counter(self.urls.values())
        full = frozenset(url for url, n in per_url.items() if n >= PER_URL)
        due = await self.store.due_webhook_deliveries(
            time.time(), room, frozenset(self.in_flight), full
        )
        for item in due:
            if per_url[item.url] >= PER_URL:
                continue  # in a later round, when one of that URL's POSTs has ended
            per_url[item.url] += 1
            task = asyncio.create_task(self._attempt(item))
            self.in_flight[item.id] = task
            self.urls[item.id] = item.url
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        for delivery_id, running in list(self.in_flight.items()):
            if running is task:
                del self.in_flight[delivery_id]
                self.urls.pop(delivery_id, None)
        self.wake.set()  # a slot is free: the next due delivery can start

    async def _attempt(self, due: Due) -> None:
        try:
            attempt = await self.sender.post(due)
            now = time.time()
            state, next_attempt = outcome(self.cfg, due, attempt, now)
            recorded = await self.store.record_webhook_attempt(
                due.id, now, attempt, state, next_attempt
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log_failure(log, "webhook delivery %d: the attempt could not be recorded", due.id)
            return
        self.attempts += 1
        if not recorded:
            return  # its webhook was removed meanwhile
        WEBHOOK_ATTEMPTS.labels(
            {
                DeliveryState.DELIVERED: "delivered",
                DeliveryState.PENDING: "deferred",
                DeliveryState.FAILED: "failed",
            }[state]
        ).inc()
        self._log(due, attempt, state, next_attempt, now)

    def _log(
        self, due: Due, attempt: Attempt, state: DeliveryState, next_attempt: float, now: float
    ) -> None:
        try:
            qid = str(json.loads(due.payload).get("queue_id") or "webhook")
        except (ValueError, AttributeError):
            qid = "webhook"
        head = (
            f"{qid}: webhook={due.webhook_id}, delivery={due.id}, event={due.event}, "
            f"url=<{printable(due.url, 200)}>, attempt={due.attempts + 1}, "
            f"delay={attempt.seconds:.2f}"
        )
        answer = printable(_answer(attempt), 200)
        if state == DeliveryState.DELIVERED:
            self.delivered += 1
            log.info("%s, status=sent (%s)", head, answer)
        elif state == DeliveryState.PENDING:
            wait = next_attempt - now
            log.info(
                "%s, status=deferred (%s; next try in %s s)",
                head,
                answer,
                f"{wait:.1f}" if wait < 10 else f"{wait:.0f}",
            )
        else:
            self.failed += 1
            log.warning(
                "%s, status=failed (%s; given up %.0f s after the event)",
                head,
                answer,
                now - due.created,
            )

    async def stop(self, grace: float) -> None:
        """Start nothing new; give what is in flight ``grace`` seconds, then abandon it
        (it is sent again at the next start)."""
        self.stopping = True
        self.wake.set()
        tasks = list(self.in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.sender.close()
        self.store.close()

    def describe(self) -> tuple[str, dict[str, int]]:
        doing = (
            f"{len(self.in_flight)} webhook POSTs in flight, {self.delivered} delivered, "
            f"{self.failed} given up"
        )
        return doing, {
            "in_flight": len(self.in_flight),
            "delivered": self.delivered,
            "failed": self.failed,
            "attempts": self.attempts,
        }


async def serve(setup: WebhooksSetup) -> None:
    """The webhook process's life: collect and send until SIGTERM."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    process = WebhookProcess(setup)
    listen_for_log_reload(setup.cfg, log)
    status = StatusFile(setup.cfg.state_dir, "webhooks", 0)
    reporter = asyncio.create_task(report_status(status, process.describe))
    worker = asyncio.create_task(process.run())
    await stop.wait()
    process.stopping = True
    process.wake.set()
    await asyncio.gather(worker, return_exceptions=True)
    await process.stop(min(setup.grace, setup.cfg.webhooks.timeout))
    reporter.cancel()
    await asyncio.gather(reporter, return_exceptions=True)
    log.info("stopped")
