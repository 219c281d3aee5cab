"""The queue manager process: it schedules the queue, and (until delivery agents and
certificate workers are processes of their own) delivers and certifies.

Postfix's qmgr(8): one process, woken by the acceptors' datagrams on ``run/qmgr.wake``
(a queue id each; the master binds the socket, so datagrams sent while this process
restarts wait in its buffer) and scanning the queue every ``[queue] scan_interval``
anyway. On start it releases every recipient lease: a lease held by a queue manager
that was killed belongs to an attempt nobody is making any more (at-least-once
delivery, ARCHITECTURE.md "Durability points").

Certificates are rendered and signed in the :class:`~certifier.pool.CertificatePool`
it starts, and the evidence log is checkpointed by its :class:`Checkpointer`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from certifier.pki import Pki
from certifier.pool import CertificatePool, PoolTimeStamper
from relay.certify.checkpoints import Checkpointer
from relay.certify.documents import DocumentMaker
from relay.config import Config, Endpoint
from relay.delivery.agent import DeliveryAgent
from relay.delivery.client import Deliverer
from relay.delivery.dkim_keys import DkimKeyring
from relay.delivery.routing import Router
from relay.logs import loop_exception_handler
from relay.process.child import StatusFile, report_status
from relay.queue.local import LocalDispatcher
from relay.queue.manager import QueueManager
from relay.queue.spool import Spool
from relay.queue.store import Store

log = logging.getLogger("certifica/qmgr")


@dataclass
class QmgrSetup:
    """What the master hands the queue manager."""

    cfg: Config
    pki: Pki
    paths: dict[str, Path]
    wake_socket: socket.socket
    local_mx: Endpoint | None
    verp_key: bytes
    tracking_key: bytes
    workers: int
    grace: float = 10.0


def make_deliverer(cfg: Config) -> Deliverer:
    """The SMTP client of ``[delivery]``."""
    return Deliverer(
        Router(cfg),
        cfg.gateway.hostname,
        cfg.delivery.require_tls,
        cfg.delivery.connect_timeout,
        cfg.delivery.command_timeout,
        data_timeout=cfg.delivery.data_timeout,
        greeting_timeout=cfg.delivery.greeting_timeout,
        data_init_timeout=cfg.delivery.data_init_timeout,
        reuse_seconds=cfg.delivery.connection_reuse,
        max_idle=cfg.delivery.per_destination,
    )


class QueueProcess:
    """The queue manager with the handles it opens after the fork."""

    def __init__(self, setup: QmgrSetup) -> None:
        self.setup = setup
        self.wakes = 0

    async def start(self) -> None:
        from relay.process.gateway import PipelineCertifier, signing_settings

        setup, cfg = self.setup, self.setup.cfg
        self.store = Store(setup.paths["db"], cfg.queue.lifetime)
        self.spool = Spool(setup.paths["spool"])
        await self.store.release_leases()  # the attempts of a killed queue manager are over
        self.pool = CertificatePool(signing_settings(cfg, setup.pki), workers=setup.workers)
        self.deliverer = make_deliverer(cfg)
        if setup.local_mx is not None:
            # Mail to the gateway's own domains goes to its MX listener, never via the DNS.
            self.deliverer.router.route_local(setup.local_mx)
        keyring = DkimKeyring(setup.paths["keys"])
        agent = DeliveryAgent(
            cfg,
            self.store,
            self.spool,
            self.deliverer,
            verp_key=setup.verp_key,
            tracking_key=setup.tracking_key,
            offload=self.pool.run,
            dkim=keyring if cfg.dkim.sign else None,
        )
        maker = DocumentMaker(
            cfg, self.store, self.spool, PipelineCertifier(self.pool), setup.paths["certificates"]
        )
        self.qmgr = QueueManager(cfg, self.store, LocalDispatcher(agent, maker))
        loop = asyncio.get_running_loop()
        wake = setup.wake_socket
        wake.setblocking(False)
        loop.add_reader(wake.fileno(), self._woken)
        # Start the certificate workers now (importing the PDF stack takes seconds),
        # not on the first certificate.
        import os

        self._warm = asyncio.create_task(self.pool.run(os.getpid))
        self._task = asyncio.create_task(self.qmgr.run())
        self.checkpointer = Checkpointer(
            self.store, PoolTimeStamper(self.pool), interval=cfg.evidence.checkpoint_interval
        )
        self.checkpointer.start()

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
        # What is in flight, as the queue manager counts it.
        tasks = len(getattr(self.qmgr, "_tasks", ()))
        certifying = len(getattr(self.qmgr, "_certifying", ()))
        doing = f"{tasks} jobs in flight ({certifying} documents), {self.wakes} wake-ups"
        return doing, {"jobs": tasks, "documents": certifying, "wakes": self.wakes}

    async def stop(self, grace: float) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(self.setup.wake_socket.fileno())
        await self.qmgr.stop(grace)
        await self.deliverer.close()
        self._task.cancel()
        await asyncio.gather(self._task, self._warm, return_exceptions=True)
        await self.checkpointer.stop()  # and a last checkpoint of what is not stamped yet
        self.pool.close()
        self.store.close()


async def serve(setup: QmgrSetup) -> None:
    """The queue manager's life: start, report its status, stop on SIGTERM."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    process = QueueProcess(setup)
    await process.start()
    status = StatusFile(setup.cfg.state_dir, "qmgr", 0)
    reporter = asyncio.create_task(report_status(status, process.describe))
    await stop.wait()
    reporter.cancel()
    await process.stop(setup.grace)
    log.info("stopped")
