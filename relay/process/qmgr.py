"""The queue manager process: it schedules, and the delivery agents and certificate
workers run what it schedules.

Postfix's qmgr(8): one process, woken by the acceptors' datagrams on ``run/qmgr.wake``
(a queue id each; the master binds the socket, so datagrams sent while this process
restarts wait in its buffer) and scanning the queue every ``[queue] scan_interval``
anyway. Its :class:`~relay.queue.manager.QueueManager` hands every job to the
:class:`~relay.process.dispatch.ChildDispatcher`, which sends it to a child on
``run/qmgr.sock``.

On start it waits (up to two seconds) for the children's hellos, then releases every
recipient lease no child reports busy: such a lease belonged to an attempt of a queue
manager that was killed, which nobody is making any more (at-least-once delivery,
ARCHITECTURE.md §1, "Hand-offs").
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from relay.config import Config
from relay.logs import loop_exception_handler
from relay.process.child import StatusFile, report_status
from relay.process.dispatch import ChildDispatcher
from relay.process.reload import listen_for_log_reload
from relay.queue.credits import CreditTerms
from relay.queue.manager import QueueManager
from relay.queue.store import Store
from relay.sms.numbers import sms_domain

log = logging.getLogger("certifica/qmgr")


@dataclass
class QmgrSetup:
    """What the master hands the queue manager."""

    cfg: Config
    paths: dict[str, Path]
    wake_socket: socket.socket
    job_socket: socket.socket
    workers: int  # delivery agents, certificate workers, the sms process: hellos to wait for
    grace: float = 10.0


class QueueProcess:
    """The queue manager with the handles it opens after the fork."""

    def __init__(self, setup: QmgrSetup) -> None:
        self.setup = setup
        self.wakes = 0

    async def start(self) -> None:
        setup, cfg = self.setup, self.setup.cfg
        self.store = Store(setup.paths["db"], cfg.queue.lifetime, CreditTerms.of(cfg))
        sms = sms_domain(cfg.gateway.domain) if cfg.sms.enabled else None
        self.dispatcher = ChildDispatcher(setup.job_socket, self.store.release, sms)
        await self.dispatcher.start()
        busy = await self.dispatcher.wait_for_children(setup.workers)
        # The attempts of a killed queue manager are over, but for those a delivery
        # agent still runs.
        await self.store.release_leases(except_ids=busy)
        self.qmgr = QueueManager(cfg, self.store, self.dispatcher)
        loop = asyncio.get_running_loop()
        wake = setup.wake_socket
        wake.setblocking(False)
        loop.add_reader(wake.fileno(), self._woken)
        self._task = asyncio.create_task(self.qmgr.run())

    def _woken(self) -> None:
        while True:
            try:
                data = self.setup.wake_socket.recv(256)
            except OSError:  # BlockingIOError: all read
                return
            self.wakes += 1
            qid = data.decode("ascii", "replace").strip()
            self.qmgr.wake(qid or None)

    def describe(self) -> tuple[str, dict[str, int]]:
        counts = self.dispatcher.describe()
        doing = (
            f"delivering {counts['deliveries']}, SMS {counts['sms']}, "
            f"documents {counts['documents']}, "
            f"{counts['jobs_done']} jobs done, {self.wakes} wake-ups"
        )
        return doing, {**counts, "wakes": self.wakes}

    async def stop(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.setup.wake_socket.fileno())
        await self.qmgr.stop(grace)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.dispatcher.close()
        self.store.close()


async def serve(setup: QmgrSetup) -> None:
    """The queue manager's life: start, report its status, stop on SIGTERM."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    process = QueueProcess(setup)
    await process.start()
    listen_for_log_reload(setup.cfg, log)
    status = StatusFile(setup.cfg.state_dir, "qmgr", 0)
    reporter = asyncio.create_task(report_status(status, process.describe))
    await stop.wait()
    reporter.cancel()
    await process.stop(setup.grace)
    log.info("stopped")
