"""Late bounces: a DSN (RFC 3464) that reaches a VERP return path after the remote said 250.

The MX handler (:mod:`relay.smtpd.mx`) parses it and calls :class:`LateBounces`; this stores
it like any accepted message (spool, fsync, one database transaction) before the MX
answers 250, so a DSN is never half-recorded; one the store does not record (a repeat,
or about no message it has) leaves no spool file behind. The queue manager then makes the signed
addendum for the sender when the certificate had already been sent. Nothing is ever
answered with mail.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from relay.cleanup.bounces import BounceReport
from relay.metrics import RECIPIENTS_FINAL
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.spool import Spool
from relay.queue.states import MessageKind, Method, RecipientState
from relay.queue.store import NewMessage, Store

log = logging.getLogger("certifica/bounce")


class LateBounces:
    def __init__(self, store: Store, spool: Spool, wake: Callable[..., Any]) -> None:
        self.store = store
        self.spool = spool
        self.wake = wake

    async def handle_report(self, qid: str, reports: list[BounceReport], raw: bytes) -> None:
        # The MX has logged each report; some servers lowercase the whole return path.
        qid = qid.upper()
        if not reports:
            return
        dsn_qid = new_queue_id()
        sha256 = hashlib.sha256(raw).hexdigest()
        await asyncio.to_thread(self.spool.store, dsn_qid, raw)
        try:
            bounced = await self.store.accept_dsn(
                NewMessage(
                    qid=dsn_qid,
                    kind=MessageKind.DSN,
                    sender="",
                    size=len(raw),
                    sha256=sha256,
                    recipients=(),
                    cert_id=new_certificate_id(),
                    method=Method.MX,
                ),
                qid,
                [dataclasses.asdict(r) for r in reports],
                time.time(),
            )
        except BaseException:
            await asyncio.to_thread(self.spool.remove, dsn_qid)
            raise
        if bounced is None:
            # Not recorded (the same DSN again, or no such message): no spool file may
            # stay without its row.
            await asyncio.to_thread(self.spool.remove, dsn_qid)
            log.info("%s: delivery report not kept: already recorded, or no such message", qid)
            return
        for report in reports:
            log.info(
                "%s: delivery report %s for <%s>: %s %s (dsn %s)",
                qid,
                report.action,
                report.recipient,
                report.status or "",
                report.diagnostic,
                dsn_qid,
            )
        if bounced:
            RECIPIENTS_FINAL.labels(RecipientState.BOUNCED).inc(len(bounced))
            log.info("%s: bounced after delivery: %s", qid, ", ".join(f"<{a}>" for a in bounced))
        self.wake(dsn_qid)  # a DSN has nothing to deliver: its addendum can be made
