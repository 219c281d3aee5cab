"""The queue manager's end of ``run/qmgr.sock``: jobs to the delivery agents and the
certificate workers, one JSON object a line (ARCHITECTURE.md §1, "Hand-offs").

A child connects (the master bound the socket, so a child connecting while the queue
manager restarts waits in its backlog) and says hello::

    {"hello": {"role": "delivery", "index": 0, "pid": 104,
               "busy": [{"job": "103.7", "kind": "deliver", "qid": "...", "rows": [12, 13]}]}}

then gets jobs and answers each, many at once::

    qmgr -> child  {"job": "103.8", "kind": "deliver", "rows": [{...}, ...]}
    qmgr -> child  {"job": "103.9", "kind": "document", "document": "finish", "qid": "..."}
    child -> qmgr  {"job": "103.8", "done": {...DeliveryDone or DocumentDone...}}
    child -> qmgr  {"job": "103.9", "error": "RuntimeError"}

Job ids are ``<queue manager pid>.<n>``, so the ids of two lives of the queue manager
never meet. When a connection ends (the child died) every job in flight on it is lost
(:class:`~relay.queue.jobs.JobLost`): the queue manager gives a delivery's leases back
(at-least-once delivery) and looks at a document's message again (a document job is
idempotent: :class:`relay.certify.documents.DocumentMaker` checks before it commits).

A queue manager that starts waits up to :data:`HELLO_WAIT` seconds for the children's
hellos: the recipients they report busy keep their leases (their attempt goes on and
records its own outcome); every other lease belonged to a queue manager that is gone
and is released. A document a child reports busy is adopted: the same job asked for
again waits for that child's answer instead of running twice.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from certifier.errors import TemporaryError
from relay.logs import log_failure, printable
from relay.queue.jobs import (
    DeliveryDone,
    DeliveryJob,
    DocumentDone,
    DocumentJob,
    DocumentKind,
    JobLost,
)

log = logging.getLogger("certifica/qmgr")

HELLO_WAIT = 2.0
"""Seconds a starting queue manager waits for the children's hellos."""
LINE_LIMIT = 64 * 1024 * 1024
"""The longest line on the socket (a delivery job carries its rows, not the message)."""


class ChildFailed(TemporaryError):
    """A job ended in its child with an unexpected error (logged there)."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


@dataclass
class Connection:
    """One child's connection: its role and the jobs it is running for us."""

    role: str
    index: int
    pid: int
    writer: asyncio.StreamWriter
    jobs: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    adopted_rows: dict[str, list[int]] = field(default_factory=dict)  # job id -> recipients

    @property
    def name(self) -> str:
        return f"{self.role}[{self.index}]"


class ChildDispatcher:
    """:class:`~relay.queue.jobs.Dispatcher` over ``run/qmgr.sock`` (see the module
    docstring): deliveries to the least busy delivery agent (those to ``sms_domain``,
    phones, to the ``sms`` process: docs/sms.md), documents to the least busy
    certificate worker."""

    def __init__(
        self,
        listening: socket.socket,
        release: Callable[[list[int]], Awaitable[None]],
        sms_domain: str | None = None,
    ) -> None:
        self.listening = listening
        self.release = release  # gives leases back: the store's release
        self.sms_domain = sms_domain
        self.connections: dict[str, list[Connection]] = {
            "delivery": [],
            "certify": [],
            "sms": [],
        }
        self.busy_rows: set[int] = set()
        self.adopted: dict[str, asyncio.Future[dict[str, Any]]] = {}  # DocumentJob.key
        self.hellos = 0
        self.done = 0
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}."
        self._joined = asyncio.Condition()
        self._server: asyncio.base_events.Server | None = None
        self._serving: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._serve, sock=self.listening, limit=LINE_LIMIT
        )

    async def wait_for_children(self, expected: int, timeout: float = HELLO_WAIT) -> set[int]:
        """Wait until ``expected`` children said hello, or ``timeout``; the recipient
        ids they report busy."""
        try:
            async with self._joined:
                await asyncio.wait_for(
                    self._joined.wait_for(lambda: self.hellos >= expected), timeout
                )
        except TimeoutError:
            log.info("%d of %d workers connected; going on", self.hellos, expected)
        return set(self.busy_rows)

    async def close(self) -> None:
        """Close the connections and wait until each one's task has ended (a task the
        event loop had to cancel at exit would be reported as an error)."""
        if self._server is not None:
            self._server.close()
        for conns in self.connections.values():
            for conn in conns:
                conn.writer.close()
        if self._serving:
            await asyncio.wait(set(self._serving), timeout=5)

    # -- the Dispatcher protocol -----------------------------------------------------
    async def deliver(self, job: DeliveryJob) -> DeliveryDone:
        role = "sms" if self.sms_domain and job.domain == self.sms_domain else "delivery"
        answer = await self._run(role, {"kind": "deliver", **job.to_json()})
        return DeliveryDone.from_json(answer)

    async def document(self, job: DocumentJob) -> DocumentDone:
        adopted = self.adopted.get(job.key)
        if adopted is not None:
            answer = await asyncio.shield(adopted)
        else:
            message = {"kind": "document", "document": str(job.kind), "qid": job.qid}
            answer = await self._run("certify", message)
        return DocumentDone.from_json(answer)

    async def _run(self, role: str, message: dict[str, Any]) -> dict[str, Any]:
        conn = await self._least_busy(role)
        job_id = f"{self._prefix}{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        conn.jobs[job_id] = future
        try:
            conn.writer.write(encode({"job": job_id, **message}))
            await conn.writer.drain()
        except OSError:
            conn.jobs.pop(job_id, None)
            raise JobLost(f"{conn.name} went away") from None
        try:
            return await future
        finally:
            conn.jobs.pop(job_id, None)
            self.done += 1

    async def _least_busy(self, role: str) -> Connection:
        async with self._joined:
            await self._joined.wait_for(lambda: bool(self.connections[role]))
            return min(self.connections[role], key=lambda c: len(c.jobs))

    # -- one child's connection ------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn: Connection | None = None
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
        try:
            first = await reader.readline()
            hello = json.loads(first)["hello"] if first else None
            if not isinstance(hello, dict) or hello.get("role") not in self.connections:
                writer.close()
                return
            conn = Connection(str(hello["role"]), int(hello["index"]), int(hello["pid"]), writer)
            self._adopt(conn, hello.get("busy") or [])
            async with self._joined:
                self.connections[conn.role].append(conn)
                self.hellos += 1
                self._joined.notify_all()
            log.info("%s pid %d connected", conn.name, conn.pid)
            while line := await reader.readline():
                self._answer(conn, json.loads(line))
        except (OSError, ValueError, KeyError, TypeError, asyncio.LimitOverrunError) as err:
            who = conn.name if conn else "a worker"
            log.warning("%s: connection ended (%s)", who, printable(str(err), 200))
        finally:
            if conn is not None:
                await self._gone(conn)
            writer.close()

    def _adopt(self, conn: Connection, busy: list[dict[str, Any]]) -> None:
        """Jobs a child is still running for a queue manager that is gone."""
        loop = asyncio.get_running_loop()
        for item in busy:
            job_id = str(item["job"])
            if item.get("kind") == "deliver":
                rows = [int(i) for i in item.get("rows", ())]
                self.busy_rows.update(rows)
                conn.adopted_rows[job_id] = rows
                future: asyncio.Future[dict[str, Any]] = loop.create_future()
            else:
                key = DocumentJob(DocumentKind(item["document"]), str(item["qid"])).key
                future = self.adopted[key] = loop.create_future()
                future.add_done_callback(self._forget(key))
            future.add_done_callback(_consume)
            conn.jobs[job_id] = future

    def _forget(self, key: str) -> Callable[[asyncio.Future[dict[str, Any]]], None]:
        def forget(_: asyncio.Future[dict[str, Any]]) -> None:
            self.adopted.pop(key, None)

        return forget

    def _answer(self, conn: Connection, message: dict[str, Any]) -> None:
        future = conn.jobs.get(str(message.get("job")))
        if future is None or future.done():
            return
        if "done" in message:
            future.set_result(dict(message["done"]))
        else:
            future.set_exception(ChildFailed(f"{conn.name}: {message.get('error')}"))

    async def _gone(self, conn: Connection) -> None:
        async with self._joined:
            if conn in self.connections[conn.role]:
                self.connections[conn.role].remove(conn)
        lost = [(i, f) for i, f in conn.jobs.items() if not f.done()]
        for _, future in lost:
            future.set_exception(JobLost(f"{conn.name} pid {conn.pid} ended"))
        # An attempt a queue manager before us started: nobody here waits for it to give
        # its leases back.
        orphans = [r for i, _ in lost for r in conn.adopted_rows.get(i, ())]
        if orphans:
            try:
                await self.release(orphans)
            except Exception:
                log_failure(log, "could not give back %d recipients of %s", len(orphans), conn.name)
        log.info("%s pid %d disconnected; %d jobs in flight lost", conn.name, conn.pid, len(lost))

    def describe(self) -> dict[str, int]:
        return {
            "deliveries": sum(len(c.jobs) for c in self.connections["delivery"]),
            "documents": sum(len(c.jobs) for c in self.connections["certify"]),
            "delivery_agents": len(self.connections["delivery"]),
            "certify_workers": len(self.connections["certify"]),
            "sms": sum(len(c.jobs) for c in self.connections["sms"]),
            "sms_agents": len(self.connections["sms"]),
            "jobs_done": self.done,
        }


def _consume(future: asyncio.Future[Any]) -> None:
    """Retrieve an adopted job's outcome, so an unawaited JobLost is not reported."""
    if not future.cancelled():
        future.exception()
