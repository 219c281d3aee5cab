"""The delivery agents, the certificate workers and the ``sms`` process: children that
run the queue manager's jobs, received on ``run/qmgr.sock`` (the protocol is in
:mod:`relay.process.dispatch`; ARCHITECTURE.md §1).

The ``sms`` process (one, with ``[sms] enabled``) runs a
:class:`~relay.sms.agent.SmsAgent`: the SMPP session to the SMSC, bound from the
process's start so receipts and messages from phones come in with no job, and the
deliveries to the SMS domain (docs/sms.md). A reload changes only its logging.

A delivery agent (Postfix's smtp(8), ``[processes] delivery_agents`` of them) runs a
:class:`~relay.delivery.agent.DeliveryAgent`: many attempts at once, each recording its
own outcome in the queue database. A certificate worker (``[signing] workers`` of them)
runs a :class:`~relay.certify.documents.DocumentMaker` whose PDFs are rendered and
signed in this process, with the signer it built after the fork (a signing key handle,
later an HSM session, does not survive a fork); worker 0 also checkpoints the evidence
log (:class:`~relay.certify.checkpoints.Checkpointer`) and runs the daily jobs
(:class:`~relay.certify.maintenance.Maintenance`: renewal, retention).

A worker keeps running its jobs when the queue manager goes away: each job records its
result in the database itself. It connects again every 0.2 s, and its hello names the
jobs still running, so the new queue manager neither releases their leases nor runs
them twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asn1crypto import cms

from certifier import pipeline
from certifier.i18n import Reader
from certifier.pki import Pki
from certifier.pool import SigningSettings, init_process, timestamp_token
from relay.certify.checkpoints import Checkpointer
from relay.certify.documents import DocumentMaker
from relay.certify.maintenance import Maintenance, maintenance_tasks
from relay.config import Config, Endpoint
from relay.delivery.agent import DeliveryAgent
from relay.delivery.client import Deliverer
from relay.delivery.dkim_keys import DkimKeyring
from relay.delivery.routing import Router
from relay.logs import log_failure, loop_exception_handler
from relay.process.child import StatusFile, report_status, run_dir
from relay.process.dispatch import LINE_LIMIT, encode
from relay.process.reload import Reload, listen_for_reload
from relay.queue.credits import CreditTerms
from relay.queue.jobs import DeliveryJob, DocumentJob, DocumentKind
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.sms.agent import SmsAgent

log = logging.getLogger("certifica/worker")

RECONNECT = 0.2  # seconds between two tries to reach the queue manager


@dataclass
class WorkerSetup:
    """What the master hands a delivery agent or a certificate worker."""

    cfg: Config
    pki: Pki
    paths: dict[str, Path]
    job_path: Path
    local_mx: Endpoint | None
    verp_key: bytes
    tracking_key: bytes
    signing: SigningSettings
    grace: float = 10.0


Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class JobClient:
    """This child's connection to the queue manager: hello, jobs in, answers out."""

    def __init__(self, path: Path, role: str, index: int, handle: Handler) -> None:
        self.path = str(path)
        self.role = role
        self.index = index
        self.handle = handle
        self.running: dict[str, dict[str, Any]] = {}  # job id -> the job
        self.done = 0
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def run(self) -> None:
        """Connect, serve, and connect again whenever the connection ends."""
        while not self._stopping:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
            except OSError:
                await asyncio.sleep(RECONNECT)
                continue
            busy = [{"job": i, **_summary(job)} for i, job in self.running.items()]
            hello = {"role": self.role, "index": self.index, "pid": os.getpid(), "busy": busy}
            try:
                writer.write(encode({"hello": hello}))
                await writer.drain()
                self._writer = writer
                while line := await reader.readline():
                    job = json.loads(line)
                    if isinstance(job, dict) and "job" in job:
                        self._start(job)
                    else:  # the queue manager is ours: a line that is no job is a bug there
                        log.warning("a line from the queue manager that is no job; ignored")
            except (OSError, ValueError, asyncio.LimitOverrunError):
                pass
            finally:
                self._writer = None
                writer.close()
            if not self._stopping:
                await asyncio.sleep(RECONNECT)

    def _start(self, job: dict[str, Any]) -> None:
        job_id = str(job["job"])
        self.running[job_id] = job
        task = asyncio.create_task(self._run(job_id, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, job: dict[str, Any]) -> None:
        try:
            answer: dict[str, Any] = {"job": job_id, "done": await self.handle(job)}
        except Exception as err:
            log_failure(log, "job %s failed", job_id)
            answer = {"job": job_id, "error": err.__class__.__name__}
        finally:
            self.running.pop(job_id, None)
            self.done += 1
        writer = self._writer
        if writer is None:
            return  # the queue manager is gone; the result is in the database
        try:
            writer.write(encode(answer))
            await writer.drain()
        except OSError:
            pass

    async def stop(self, grace: float) -> None:
        """Take no more jobs; let those running finish within ``grace`` seconds."""
        self._stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _summary(job: dict[str, Any]) -> dict[str, Any]:
    """What a hello says of a job still running."""
    if job.get("kind") == "deliver":
        rows = job.get("rows") or [{}]
        return {"kind": "deliver", "qid": rows[0].get("qid"), "rows": [r["id"] for r in rows]}
    return {"kind": "document", "document": job.get("document"), "qid": job.get("qid")}


T = TypeVar("T")


class InProcessCertifier:
    """Renders and signs in this process (:func:`certifier.pipeline.certify`), on one
    thread of its own: the event loop goes on with the other documents' database work
    meanwhile, and the signer is never used by two threads at once."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sign")

    async def certify(self, evidence: dict[str, Any], eml: bytes | None, reader: Reader) -> bytes:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, pipeline.certify, evidence, eml, reader)

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        """The signer's timestamp authority, for the evidence checkpoints."""
        if md_algorithm != "sha256":
            raise ValueError(f"only sha256 imprints are timestamped, not {md_algorithm}")
        loop = asyncio.get_running_loop()
        token = await loop.run_in_executor(self.thread, timestamp_token, message_digest)
        return cms.ContentInfo.load(token)

    async def run_in_signing_thread(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the signing thread (a daily job's timestamps and signatures)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread, fn)

    def close(self) -> None:
        self.thread.shutdown(wait=True)


async def _offload(fn: Callable[..., Any], *args: Any) -> Any:
    """MIME rewriting for a tracked copy: CPU work, kept off this agent's event loop."""
    return await asyncio.to_thread(fn, *args)


def _waker(cfg: Config) -> Callable[[str], None]:
    """A datagram to the queue manager's ``run/qmgr.wake`` naming a message that may be
    finished (best effort: its scan finds it anyway), as the acceptors send."""
    path = str(run_dir(cfg.state_dir) / "qmgr.wake")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)

    def wake(qid: str) -> None:
        with contextlib.suppress(OSError):
            sock.sendto(qid.encode("ascii", "replace"), path)

    return wake


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


async def serve(setup: WorkerSetup, role: str, index: int) -> None:
    """A delivery agent's or a certificate worker's life: open its handles, serve jobs,
    stop on SIGTERM (the jobs in flight finish first)."""
    cfg = setup.cfg
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    store = Store(setup.paths["db"], cfg.queue.lifetime, CreditTerms.of(cfg))
    spool = Spool(setup.paths["spool"])
    checkpointer: Checkpointer | None = None
    maintenance: Maintenance | None = None
    certifier: InProcessCertifier | None = None
    deliverer = None
    handle: Handler
    sms_agent: SmsAgent | None = None
    if role == "sms":
        sms = sms_agent = SmsAgent(cfg, store, wake=_waker(cfg))
        sms.start()  # bound from the start: receipts and MOs come with no job

        async def handle(job: dict[str, Any]) -> dict[str, Any]:
            return (await sms.deliver(DeliveryJob.from_json(job))).to_json()

    elif role == "delivery":
        deliverer = make_deliverer(cfg)
        if setup.local_mx is not None:
            deliverer.router.route_local(setup.local_mx)
        agent = DeliveryAgent(
            cfg,
            store,
            spool,
            deliverer,
            verp_key=setup.verp_key,
            tracking_key=setup.tracking_key,
            offload=_offload,
            dkim=DkimKeyring(setup.paths["keys"]) if cfg.dkim.sign else None,
        )

        async def handle(job: dict[str, Any]) -> dict[str, Any]:
            return (await agent.deliver(DeliveryJob.from_json(job))).to_json()

    else:
        init_process(setup.signing)  # this process's signer, and the fonts loaded
        certifier = InProcessCertifier()
        maker = DocumentMaker(
            cfg, store, spool, certifier, setup.paths["certificates"], setup.tracking_key
        )

        async def handle(job: dict[str, Any]) -> dict[str, Any]:
            kind = DocumentKind(job["document"])
            return (await maker.make(DocumentJob(kind, str(job["qid"])))).to_json()

        if index == 0:
            checkpointer = Checkpointer(
                store,
                certifier,
                interval=cfg.evidence.checkpoint_interval,
                tsa_use=maker.tsa_use,
            )
            checkpointer.start()
            tasks = maintenance_tasks(cfg, store, spool, certifier, setup.paths)
            # As often as the most frequent task needs ([evidence] lta_delay: "lta").
            maintenance = Maintenance(store, tasks, poll=min([60.0, *(t.interval for t in tasks)]))
            maintenance.start()
    in_force = [cfg]  # the configuration a reload changes

    def reload(change: Reload) -> Callable[[], None]:
        """A reload's part here: a delivery agent takes the routes and the DKIM
        settings, and reads the DKIM keys again; a certificate worker only its log."""
        new = change.config
        router = keyring = None
        if deliverer is not None:
            router = Router(new)
            if setup.local_mx is not None:
                router.route_local(setup.local_mx)
            keyring = DkimKeyring(setup.paths["keys"]) if new.dkim.sign else None

        def commit() -> None:
            in_force[0] = new
            if deliverer is not None and router is not None:
                deliverer.router = router  # attempts in flight keep the hops they have
                agent.cfg = new
                agent.dkim = keyring

        return commit

    listen_for_reload(run_dir(cfg.state_dir), lambda: in_force[0], reload, log)
    client = JobClient(setup.job_path, role, index, handle)
    connection = asyncio.create_task(client.run())
    status = StatusFile(cfg.state_dir, role, index)

    def describe() -> tuple[str, dict[str, int]]:
        running = list(client.running.values())
        if sms_agent is not None:
            counters = {"in_flight": len(running), "done": client.done}
            return f"{sms_agent.describe()}, {client.done} jobs done", counters
        qids = sorted({str(_summary(j).get("qid"))[:12] for j in running})
        shown = ", ".join(qids[:3]) + (", ..." if len(qids) > 3 else "")
        what = "attempts" if role == "delivery" else "documents"
        doing = f"{len(running)} {what} in flight" + (f" ({shown})" if shown else "")
        return f"{doing}, {client.done} done", {"in_flight": len(running), "done": client.done}

    reporter = asyncio.create_task(report_status(status, describe))
    await stop.wait()
    reporter.cancel()
    await client.stop(setup.grace)
    connection.cancel()
    await asyncio.gather(connection, reporter, return_exceptions=True)
    if deliverer is not None:
        await deliverer.close()
    if sms_agent is not None:
        await sms_agent.stop()
    if maintenance is not None:
        await maintenance.stop()
    if checkpointer is not None:
        await checkpointer.stop()  # and a last checkpoint of what is not stamped yet
    if certifier is not None:
        certifier.close()
    store.close()
    logging.getLogger(f"certifica/{role}").info("stopped")
