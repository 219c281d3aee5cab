"""The acceptor: SMTP in (submission, MX, the local sink) and the tracking endpoint.

Postfix's smtpd(8) with cleanup(8) inside it: an acceptor speaks SMTP, decides, writes
the message to the spool (fsynced with its directory) and its row to the queue
database, answers 250, and only then sends a wake datagram to the queue manager
(``run/qmgr.wake``, best effort: the queue manager scans on its own every
``[queue] scan_interval``). It never delivers and never renders a PDF (ARCHITECTURE.md
§1).

The master binds every listening socket once; each of the ``[processes] acceptors``
children serves all of them, and the kernel gives each new connection to one of the
acceptors waiting on that socket. What must hold across the acceptors lives in the
database (users, reception owners, duplicates) or is told to the others: a failed
AUTH is sent to every other acceptor's ``run/acceptor-<n>.auth`` datagram socket, so
``[limits] auth_block`` counts a client's failures on all of them; failed logins to the
web console (:mod:`relay.web.console`) are counted and told the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiosmtpd.smtp import SMTP

from certifier.pki import Pki
from relay.cleanup.certified_copy import CertifiedCopyIntake
from relay.cleanup.late_bounces import LateBounces
from relay.cleanup.postmaster import PostmasterIntake
from relay.cleanup.reception import ReceptionIntake
from relay.config import Config
from relay.logs import loop_exception_handler
from relay.process.child import StatusFile, report_status, run_dir
from relay.process.reload import Reload, listen_for_reload
from relay.queue.credits import CreditTerms
from relay.queue.space import FreeSpace
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.smtpd.mx import MXSMTP, MXHandler
from relay.smtpd.protocol import AuthThrottle, CertificaSMTP
from relay.smtpd.sink import SinkHandler
from relay.smtpd.submission import SubmissionHandler, SubmissionSMTP
from relay.web.tracking import StoreBackend, make_http_runner

log = logging.getLogger("certifica/acceptor")
P = TypeVar("P", bound=SMTP)


@dataclass
class AcceptorSetup:
    """What the master hands an acceptor: the bound sockets and the secrets it read."""

    cfg: Config
    pki: Pki
    paths: dict[str, Path]
    sockets: dict[str, socket.socket]
    wake_path: Path
    auth_sockets: list[socket.socket]  # index i: acceptor i's datagram socket
    verp_key: bytes
    tracking_key: bytes
    grace: float = 10.0


class Waker:
    """Tells the queue manager that a message is queued: one datagram with its queue id
    to ``run/qmgr.wake``. Lost when the queue manager is restarting and its socket's
    buffer is full; the next scan finds the message anyway."""

    def __init__(self, path: Path, on_wake: Callable[[], None] | None = None) -> None:
        self.path = str(path)
        self.on_wake = on_wake or (lambda: None)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def __call__(self, qid: str | None = None) -> None:
        self.on_wake()
        try:
            self.sock.sendto((qid or "").encode("ascii", "replace"), self.path)
        except OSError:
            pass  # full, or the queue manager is between two lives: its scan will do


class SharedAuthThrottle(AuthThrottle):
    """:class:`AuthThrottle` whose failures are told to the other acceptors."""

    def __init__(self, limit: int, window: float, own: socket.socket, others: list[socket.socket]):
        super().__init__(limit, window)
        self.own = own
        self.others = [s.getsockname() for s in others]
        self.out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.out.setblocking(False)

    def failed(self, peer: Any) -> int:
        count = super().failed(peer)
        note = json.dumps({"key": self._key(peer), "at": time.monotonic()}).encode()
        for address in self.others:
            try:
                self.out.sendto(note, address)
            except OSError:
                pass  # that acceptor is being restarted: it starts with no count
        return count

    def listen(self, loop: asyncio.AbstractEventLoop) -> None:
        self.own.setblocking(False)
        loop.add_reader(self.own.fileno(), self._heard)

    def _heard(self) -> None:
        while True:
            try:
                data = self.own.recv(512)
            except OSError:  # BlockingIOError: all read
                return
            try:
                note = json.loads(data)
                self.record(str(note["key"]), float(note["at"]))
            except (ValueError, KeyError, TypeError):
                continue


class Sessions:
    """This acceptor's SMTP sessions: open now, in DATA now, and totals."""

    def __init__(self) -> None:
        self.open: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.total = 0
        self.in_data = 0
        self.accepted = 0

    def counted(self, cls: type[P]) -> type[P]:
        """A subclass of the protocol ``cls`` that keeps these counts."""
        sessions = self

        class Counted(cls):  # type: ignore[valid-type,misc]
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sessions.open.add(self)
                sessions.total += 1
                super().connection_made(transport)

            def connection_lost(self, error: Exception | None) -> None:
                sessions.open.discard(self)
                super().connection_lost(error)

            async def smtp_DATA(self, arg: str) -> None:
                sessions.in_data += 1
                try:
                    await super().smtp_DATA(arg)
                finally:
                    sessions.in_data -= 1

        Counted.__name__ = cls.__name__
        Counted.__qualname__ = cls.__qualname__
        return Counted


class Acceptor:
    """The SMTP side and the tracking endpoint of one acceptor process (a stage: it
    decides, stores and answers; the queue manager does the rest)."""

    def __init__(self, setup: AcceptorSetup, index: int) -> None:
        self.setup = setup
        self.index = index
        self.cfg = setup.cfg
        self.sessions = Sessions()
        self.servers: list[asyncio.base_events.Server] = []
        self.submission: SubmissionHandler | None = None
        self.mx_handler: MXHandler | None = None
        self._http: web.AppRunner | None = None
        self.tls: dict[str, ssl.SSLContext] = {}  # by policy; a reload replaces them

    def _load_tls(self, cfg: Config) -> dict[str, ssl.SSLContext]:
        from relay.process.gateway import tls_contexts

        return tls_contexts(cfg, self.setup.pki)

    def reload(self, change: Reload) -> Callable[[], None]:
        """A reload's part here: the TLS certificate and key, read again. A session
        takes the context in force when it connects, so sessions already open keep
        the certificate they started with (:mod:`relay.process.reload`)."""
        contexts = self._load_tls(change.config)

        def commit() -> None:
            self.cfg = change.config
            self.tls = contexts

        return commit

    def _accepted(self) -> None:
        self.sessions.accepted += 1

    async def start(self) -> None:
        cfg, setup = self.cfg, self.setup
        loop = asyncio.get_running_loop()
        self.store = Store(setup.paths["db"], cfg.queue.lifetime, CreditTerms.of(cfg))
        self.spool = Spool(setup.paths["spool"])
        self.space = FreeSpace(setup.paths["spool"], cfg.limits.min_free)
        wake = Waker(setup.wake_path, self._accepted)
        own = setup.auth_sockets[self.index]
        throttle = SharedAuthThrottle(
            cfg.limits.auth_block,
            cfg.limits.auth_block_window,
            own,
            [s for i, s in enumerate(setup.auth_sockets) if i != self.index],
        )
        throttle.listen(loop)
        socks = setup.sockets
        self.tls = self._load_tls(cfg)
        if "submission" in socks or "submission_tls" in socks:
            submission = self.submission = SubmissionHandler(
                cfg, self.store, self.spool, wake, verp_key=setup.verp_key
            )
            submission.space = self.space
            protocol = self.sessions.counted(SubmissionSMTP)
            for name, implicit in (("submission", False), ("submission_tls", True)):
                if name not in socks:
                    continue

                def factory(implicit: bool = implicit, name: str = name) -> SMTP:
                    return protocol(
                        submission,
                        listener=name,
                        verifier=submission.verify_password,
                        throttle=throttle,
                        header_limit=cfg.limits.header_size,
                        auth_failures=cfg.limits.auth_failures,
                        auth_delay=cfg.limits.auth_delay,
                        data_size_limit=cfg.limits.message_size,
                        enable_SMTPUTF8=True,
                        hostname=cfg.gateway.hostname,
                        ident="Certifica ESMTP",
                        tls_context=self.tls["submission"],
                        # Port 465: the session starts TLS itself before its greeting,
                        # so AUTH is over TLS on both ports and aiosmtpd has no reason
                        # to warn.
                        implicit_tls=implicit,
                        require_starttls=not implicit,
                        auth_required=True,
                        auth_require_tls=True,
                        timeout=cfg.limits.timeout,
                        min_data_rate=cfg.limits.min_data_rate,
                        loop=loop,
                    )

                self.servers.append(await loop.create_server(factory, sock=socks[name]))
        if "mx" in socks:
            self.servers.append(await loop.create_server(self._mx_factory(wake), sock=socks["mx"]))
        if "sink" in socks:
            self.servers.append(await loop.create_server(self._sink_factory(), sock=socks["sink"]))
        if "http" in socks:
            backend = StoreBackend(cfg, self.store, Waker(setup.wake_path))
            self._http = await make_http_runner(cfg, setup.tracking_key, backend, throttle)
            site = web.SockSite(self._http, socks["http"])
            await site.start()

    def _mx_factory(self, wake: Waker) -> Callable[[], SMTP]:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        reception = ReceptionIntake(cfg, self.store, self.spool, wake)
        handler = self.mx_handler = MXHandler(
            domain=cfg.gateway.domain,
            hostname=cfg.gateway.hostname,
            verp_key=self.setup.verp_key,
            verp_prefix=cfg.gateway.bounce_prefix,
            on_bounce=LateBounces(self.store, self.spool, wake).handle_report,
            certification_address=cfg.gateway.certification_address,
            on_certify=CertifiedCopyIntake(cfg, self.store, self.spool, wake).handle_DATA,
            reception_owner=reception.owner_for,
            on_reception=reception.handle_DATA,
            reception_prefix=cfg.reception.prefix,
            on_postmaster=PostmasterIntake(cfg, self.store, self.spool, wake).handle_DATA,
            max_recipients=cfg.limits.recipients,
        )
        handler.space = self.space
        protocol = self.sessions.counted(MXSMTP)

        def factory() -> SMTP:
            return protocol(
                handler,
                listener="mx",
                header_limit=cfg.limits.header_size,
                data_size_limit=cfg.limits.message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.gateway.hostname,
                ident="Certifica ESMTP",
                tls_context=self.tls["mx"],
                timeout=cfg.limits.timeout,
                min_data_rate=cfg.limits.min_data_rate,
                loop=loop,
            )

        return factory

    def _sink_factory(self) -> Callable[[], SMTP]:
        cfg, loop = self.cfg, asyncio.get_running_loop()
        handler = SinkHandler(cfg.sink.dir)
        protocol = self.sessions.counted(CertificaSMTP)

        def factory() -> SMTP:
            return protocol(
                handler,
                listener="sink",
                header_limit=cfg.limits.header_size,
                auth_failures=3,
                auth_delay=0,
                data_size_limit=cfg.limits.message_size * 2,
                enable_SMTPUTF8=True,
                hostname="sink." + cfg.gateway.hostname,
                ident="Certifica local mailbox",
                loop=loop,
            )

        return factory

    def describe(self) -> tuple[str, dict[str, int]]:
        s = self.sessions
        doing = f"{len(s.open)} sessions ({s.in_data} in DATA), {s.accepted} accepted"
        counters = {
            "sessions": len(s.open),
            "sessions_total": s.total,
            "in_data": s.in_data,
            "accepted": s.accepted,
        }
        return doing, counters

    async def stop(self, grace: float) -> None:
        """Stop accepting: close the listeners, answer 421 to new transactions, and give
        the messages in DATA up to ``grace`` seconds to be stored and answered."""
        if self.submission is not None:
            self.submission.accepting = False
        if self.mx_handler is not None:
            self.mx_handler.accepting = False
        for server in self.servers:
            server.close()
        if self._http is not None:
            await self._http.cleanup()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.sessions.in_data and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.store.close()


async def serve(setup: AcceptorSetup, index: int) -> None:
    """The acceptor's life: start, report its status, stop on SIGTERM."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(loop_exception_handler)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    acceptor = Acceptor(setup, index)
    await acceptor.start()
    listen_for_reload(run_dir(setup.cfg.state_dir), lambda: acceptor.cfg, acceptor.reload, log)
    status = StatusFile(setup.cfg.state_dir, "acceptor", index)
    reporter = asyncio.create_task(report_status(status, acceptor.describe))
    await stop.wait()
    reporter.cancel()
    await acceptor.stop(setup.grace)
    log.info("stopped")
