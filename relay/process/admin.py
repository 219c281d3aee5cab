"""The admin process: metrics and health for the operator on ``[listen] admin``.

One child of the master (ARCHITECTURE.md §1), serving three pages over HTTP on the
socket the master bound for ``[listen] admin`` (loopback by default, never the public
pages' listener; README, "Metrics and health"):

``/metrics``  every process's counters, added up (prometheus-client's multiprocess mode,
              :mod:`relay.metrics`), and the queue as the database sees it now;
``/healthz``  200 while this process answers: the gateway's master and event loops run;
``/readyz``   200 when every check of :mod:`relay.health` passes, else 503; the JSON
              body names each check, whether it passed and what it found.

Why a process of its own rather than a page of the acceptors: the master runs no event
loop (it only supervises), and a scrape reads every process's value files and queries
the database, work that does not belong beside SMTP sessions; a process apart answers
``/readyz`` the same whichever acceptor is busy, and tells from outside whether the
acceptors are alive. Its database reads run on its store's thread and the value files
are read on a worker thread, so its event loop never waits for the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.config import Config
from relay.health import Readiness
from relay.logs import log_failure, loop_exception_handler
from relay.metrics import ValueFiles, metrics_dir
from relay.process.child import StatusFile, report_status
from relay.process.reload import listen_for_log_reload
from relay.queue.health import QueueFigures
from relay.queue.space import FreeSpace
from relay.queue.store import Store

log = logging.getLogger("certifica/admin")


@dataclass
class AdminSetup:
    """What the master hands the admin process: its socket and where things are."""

    cfg: Config
    paths: dict[str, Path]
    socket: socket.socket
    listen: dict[str, str]  # every listener's bound address (listen.json)


class QueueCollector(Collector):
    """The queue as one scrape read it from the database (:class:`QueueFigures`)."""

    def __init__(self, figures: QueueFigures, now: float) -> None:
        self.figures = figures
        self.now = now

    def collect(self):  # type: ignore[no-untyped-def]  # prometheus-client's signature
        f, now = self.figures, self.now
        recipients = GaugeMetricFamily(
            "certifica_queue_recipients",
            "Recipients still to be delivered, by state (queued: never tried)",
            labels=["state"],
        )
        for state, count in sorted(f.recipients.items()):
            recipients.add_metric([state], count)
        yield recipients
        messages = GaugeMetricFamily(
            "certifica_queue_messages",
            "Messages the queue still works on, by state (held: by the operator)",
            labels=["state"],
        )
        for state, count in sorted(f.messages.items()):
            messages.add_metric([state], count)
        yield messages
        yield GaugeMetricFamily(
            "certifica_queue_recipients_in_flight",
            "Recipients a delivery attempt is working on now (leased)",
            value=f.leased,
        )
        yield GaugeMetricFamily(
            "certifica_queue_oldest_deferred_seconds",
            "Age of the oldest message with a deferred recipient (0: none)",
            value=max(0.0, now - f.oldest_deferred) if f.oldest_deferred else 0.0,
        )
        if f.last_checkpoint is not None:
            yield GaugeMetricFamily(
                "certifica_evidence_checkpoint_age_seconds",
                "Age of the last timestamped evidence checkpoint (absent: none yet)",
                value=max(0.0, now - f.last_checkpoint),
            )
        yield GaugeMetricFamily(
            "certifica_evidence_unstamped_seconds",
            "Age of the oldest evidence entry no checkpoint covers yet (0: all covered)",
            value=max(0.0, now - f.oldest_unstamped) if f.oldest_unstamped else 0.0,
        )


def exposition(directory: Path, figures: QueueFigures | None, now: float) -> bytes:
    """The text of ``/metrics``: every process's value files, and ``figures``."""
    registry = CollectorRegistry()
    registry.register(ValueFiles(directory))
    if figures is not None:
        registry.register(QueueCollector(figures, now))
    return generate_latest(registry)


class Admin:
    """The admin HTTP application (see the module docstring)."""

    def __init__(self, setup: AdminSetup) -> None:
        cfg = setup.cfg
        self.setup = setup
        self.store = Store(setup.paths["db"], cfg.queue.lifetime)
        self.readiness = Readiness(
            cfg, self.store, FreeSpace(setup.paths["spool"], cfg.limits.min_free), setup.listen
        )
        self.directory = metrics_dir(cfg.state_dir)
        self.scrapes = 0
        self.runner: web.AppRunner | None = None

    async def figures(self, now: float) -> QueueFigures | None:
        try:
            return await asyncio.wait_for(self.store.queue_figures(now), 10.0)
        except Exception:
            log_failure(log, "the queue's figures could not be read")
            return None

    async def metrics(self, request: web.Request) -> web.Response:
        self.scrapes += 1
        now = time.time()
        figures = await self.figures(now)
        try:
            body = await asyncio.to_thread(exposition, self.directory, figures, now)
        except Exception:
            log_failure(log, "the metrics could not be read")
            return web.Response(status=503, text="The metrics could not be read now.\n")
        # The text format 0.0.4, which every Prometheus server reads (2.x and 3.x): the
        # names are plain [a-z_] ones, so nothing of the 1.0.0 format's escaping is needed.
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "up"})

    async def readyz(self, request: web.Request) -> web.Response:
        now = time.time()
        checks = await self.readiness.checks(await self.figures(now), now)
        failed = [c.name for c in checks if not c.ok]
        body = {
            "status": "ready" if not failed else "not ready",
            "failed": failed,
            "checks": {c.name: c.as_json() for c in checks},
        }
        return web.Response(
            text=json.dumps(body, indent=1) + "\n",
            content_type="application/json",
            status=503 if failed else 200,
        )

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.SockSite(self.runner, self.setup.socket).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        self.store.close()

    def describe(self) -> tuple[str, dict[str, int]]:
        return f"serving metrics and health, {self.scrapes} scrapes", {"scrapes": self.scrapes}


async def serve(setup: AdminSetup) -> None:
    """The admin process's life: serve until SIGTERM."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    admin = Admin(setup)
    await admin.start()
    listen_for_log_reload(setup.cfg, log)
    status = StatusFile(setup.cfg.state_dir, "admin", 0)
    reporter = asyncio.create_task(report_status(status, admin.describe))
    await stop.wait()
    reporter.cancel()
    await asyncio.gather(reporter, return_exceptions=True)
    await admin.stop()
    log.info("stopped")
