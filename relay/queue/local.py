"""The dispatcher that runs every job in this process: the reference implementation of
:class:`relay.queue.jobs.Dispatcher`, and the one the single-process gateway uses.

Jobs and results still go through their JSON form, so anything that would not survive
the trip to another process (ARCHITECTURE.md) fails here first, in every test.
"""

from __future__ import annotations

import json
from typing import Any

from relay.certify.documents import DocumentMaker
from relay.delivery.agent import DeliveryAgent
from relay.queue.jobs import DeliveryDone, DeliveryJob, DocumentDone, DocumentJob


def _through_json(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` as another process would read it."""
    back: dict[str, Any] = json.loads(json.dumps(data))
    return back


class LocalDispatcher:
    """Runs deliveries in a :class:`DeliveryAgent` and documents in a
    :class:`DocumentMaker`, both in this process."""

    def __init__(self, agent: DeliveryAgent, maker: DocumentMaker) -> None:
        self.agent = agent
        self.maker = maker

    async def deliver(self, job: DeliveryJob) -> DeliveryDone:
        done = await self.agent.deliver(DeliveryJob.from_json(_through_json(job.to_json())))
        return DeliveryDone.from_json(_through_json(done.to_json()))

    async def document(self, job: DocumentJob) -> DocumentDone:
        done = await self.maker.make(DocumentJob.from_json(_through_json(job.to_json())))
        return DocumentDone.from_json(_through_json(done.to_json()))
