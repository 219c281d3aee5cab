"""The hosted links' expiry (docs/hosted.md): a link not opened within ``[hosted]
expiry_days`` is certified as not handed over (``ContentHandoverFailure``, a consignment
expiry), by a task of certificate worker 0's (:mod:`relay.certify.maintenance`) run every
hour, so the evidence's time is at most an hour after the expiry."""

from __future__ import annotations

from relay.certify.maintenance import Task
from relay.queue.store import Store

INTERVAL = 3600.0


def expiry_task(store: Store) -> Task:
    """The task expiring the hosted links past their expiry."""

    async def run(now: float) -> str:
        expired = await store.expire_hosted(now)
        return f"{expired} hosted link(s) expired"

    return Task("hosted-expiry", INTERVAL, run)
