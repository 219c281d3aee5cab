"""The SMS delivery agent: the ``sms`` process's stage (docs/sms.md "Delivery",
ARCHITECTURE.md §1), what :mod:`relay.delivery.agent` is for mail.

It holds the gateway's one SMPP session (:class:`relay.sms.smpp.EsmeClient`), started
with the process, so receipts and messages from phones come in whether or not a job
runs. A :class:`~relay.queue.jobs.DeliveryJob` for the SMS domain submits, for each
leased recipient, the parts of its message the SMSC has not accepted yet: their
``submitting`` rows are committed first (a crash leaves a trace, and the next submit
is marked *maybe duplicate*), then each part's ``submit_sm`` leaves with the sender ID,
``data_coding`` and ``esm_class`` of the message's ``sms_messages`` row and the exact
octets stored there, then the results and the recipient's new state are one
transaction (:meth:`relay.queue.sms.SmsQueue.record_sms_attempt`).

The receipt and MO callbacks commit before they return, so the SMSC gets its
``deliver_sm_resp`` only for what is on disk; a callback that fails is answered
ESME_RX_T_APPN and the SMSC sends it again. Every ``[sms] receipt_timeout`` / 4
(a minute at most) the recipients submitted too long ago without a final receipt are
ended (:meth:`relay.queue.sms.SmsQueue.sms_receipt_timeouts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.config import Config
from relay.delivery.agent import backoff
from relay.logs import log_failure, printable
from relay.queue.jobs import DeliveryDone, DeliveryJob, Row
from relay.queue.sms import BROKEN_ATTEMPT, SmsAttempt, no_receipt_note
from relay.queue.store import Store
from relay.sms.inbound import DeliveryReceipt, MobileOriginated
from relay.sms.optout import handle_mo
from relay.sms.smpp import EsmeClient, Outcome, SmscSettings, sender_address

log = logging.getLogger("certifica/sms")

TIMEOUT_PASS_MAX = 60.0
"""Seconds between two looks for submitted SMS past ``[sms] receipt_timeout``, at most."""

Wake = Callable[[str], None]
"""Tells the queue manager a message may be finished (a datagram to ``run/qmgr.wake``)."""


class SmsAgent:
    """The SMS delivery stage: one SMPP session, the attempts of the SMS jobs, the
    receipts and messages from phones (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        store: Store,
        settings: SmscSettings | None = None,
        wake: Wake | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.settings = settings or SmscSettings.from_config(cfg)
        self.wake = wake or (lambda qid: None)
        self.client = EsmeClient(self.settings, self.on_receipt, self.on_mo)
        self.in_flight = 0
        self.submitted = 0  # parts accepted by the SMSC
        self.receipts = 0
        self.mos = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Bind to the SMSC (and keep bound), and start the receipt-timeout pass."""
        self._tasks = [
            asyncio.create_task(self.client.run()),
            asyncio.create_task(self._timeouts()),
        ]

    async def stop(self) -> None:
        """Unbind; what is still awaited is deferred by its attempt."""
        await self.client.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def describe(self) -> str:
        """What ``certifica status`` shows of this process."""
        s = self.settings
        if self.client.bound.is_set():
            session = f"bound to {s.host}:{s.port}"
        else:
            session = f"not bound to {s.host}:{s.port} ({self.client.last_error or 'connecting'})"
        return (
            f"{session}, {self.in_flight} SMS in flight, {self.submitted} parts submitted, "
            f"{self.receipts} receipts, {self.mos} messages from phones"
        )

    # -- delivery ------------------------------------------------------------------

    async def deliver(self, job: DeliveryJob) -> DeliveryDone:
        """Submit the missing parts of every recipient of ``job``; never raises (an
        attempt that cannot be made is a deferral, as for mail)."""
        qid = job.qid
        try:
            sms = await self.store.sms_message(qid)
        except Exception:
            log_failure(log, "%s: the SMS text could not be read; will retry", qid)
            await asyncio.gather(*(self._broken(row) for row in job.rows))
        else:
            await asyncio.gather(*(self._guarded(row, sms) for row in job.rows))
        return DeliveryDone(qid, job.domain, self.client.bound.is_set())

    def _attempt(self, row: Row, now: float) -> SmsAttempt:
        return SmsAttempt(
            qid=row["qid"],
            recipient_id=row["id"],
            attempts=row["attempts"],
            expires=row["expires"],
            next_attempt=now + backoff(self.cfg, row["attempts"] + 1),
            smsc_host=self.settings.host,
            smsc_port=self.settings.port,
        )

    async def _guarded(self, row: Row, sms: dict[str, Any] | None) -> None:
        try:
            await self._recipient(row, sms)
        except Exception:
            log_failure(log, "%s: SMS attempt failed unexpectedly; will retry", row["qid"])
            await self._broken(row)

    async def _broken(self, row: Row) -> None:
        """An attempt that failed on our side: counted and deferred with the backoff,
        failed at the message's expiry (:meth:`relay.queue.sms.SmsQueue.record_sms_broken`),
        as mail's are; never sent again at once, whatever keeps failing."""
        qid, now = row["qid"], time.time()
        attempt = self._attempt(row, now)
        try:
            state = await self.store.record_sms_broken(attempt, now, row.get("lease_owner"))
        except Exception:
            log_failure(log, "%s: could not record the failed SMS attempt", qid)
            with contextlib.suppress(Exception):
                await self.store.postpone([row["id"]], attempt.next_attempt)
            return
        log.info(
            "%s: to=<%s>, relay=%s:%d, status=%s (%s)", qid, row["address"],
            self.settings.host, self.settings.port, state, BROKEN_ATTEMPT,
        )  # fmt: skip
        if state in ("delivered", "failed"):
            self.wake(qid)

    async def _recipient(self, row: Row, sms: dict[str, Any] | None) -> None:
        qid, address = row["qid"], row["address"]
        now = time.time()
        attempt = self._attempt(row, now)
        parts = await self.store.sms_start_attempt(qid, row["id"], row["attempts"] + 1, now)
        if sms is None:  # no text stored: the recipient fails (relay.queue.sms.record_attempt)
            await self.store.record_sms_attempt(attempt, [], now)
            return
        destination = address.partition("@")[0].lstrip("+")
        sender = sender_address(sms["sender_id"])
        self.in_flight += 1
        try:
            results = await asyncio.gather(
                *(
                    self.client.submit(
                        destination,
                        sender,
                        bytes.fromhex(sms["parts"][p.seq - 1]),
                        int(sms["data_coding"]),
                        int(sms["esm_class"]),
                    )
                    for p in parts
                )
            )
        finally:
            self.in_flight -= 1
        self.submitted += sum(1 for r in results if r.outcome == Outcome.ACCEPTED)
        done = time.time()
        state = await self.store.record_sms_attempt(
            attempt, list(zip(parts, results, strict=True)), done, row.get("lease_owner")
        )
        total = len(sms["parts"])
        shown = "; ".join(
            f"{p.seq}/{total} {r.outcome}"
            + (f" id={printable(r.message_id, 64)}" if r.message_id else "")
            + (f" ({printable(r.sentence, 200)})" if r.sentence else "")
            + (" maybe duplicate" if p.maybe_duplicate or r.maybe_duplicate else "")
            for p, r in zip(parts, results, strict=True)
        )
        log.info(
            "%s: to=<%s>, relay=%s:%d, delay=%.2f, status=%s (%s)",
            qid, address, self.settings.host, self.settings.port, done - row["created"], state,
            shown or "every part was accepted before",
        )  # fmt: skip
        if state in ("delivered", "failed"):
            self.wake(qid)

    # -- what the SMSC sends -------------------------------------------------------

    async def on_receipt(self, receipt: DeliveryReceipt) -> None:
        """Record a receipt durably (then the client acknowledges it)."""
        qid = await self.store.record_sms_receipt(receipt, time.time())
        self.receipts += 1
        log.info(
            "receipt for %s: %s%s",
            printable(receipt.message_id, 64),
            receipt.state or "unreadable",
            f" ({qid}: final)" if qid else "",
        )
        if qid:
            self.wake(qid)

    async def on_mo(self, mo: MobileOriginated) -> None:
        """Record a message from a phone durably, and the opt-out it may ask for
        (:func:`relay.sms.optout.handle_mo`, which logs it); then the client
        acknowledges it."""
        await handle_mo(self.cfg, self.store, mo, mo.raw)
        self.mos += 1

    async def _timeouts(self) -> None:
        timeout = self.cfg.sms.receipt_timeout
        every = min(TIMEOUT_PASS_MAX, max(0.2, timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                for qid in await self.store.sms_receipt_timeouts(time.time(), timeout):
                    log.info("%s: %s", qid, printable(no_receipt_note(timeout)))
                    self.wake(qid)
            except Exception:
                log_failure(log, "the receipt-timeout pass failed; will retry")
