"""The master: owns the listening sockets, starts its children, restarts them, stops them.

Postfix's master(8) in Python (ARCHITECTURE.md §1). ``certifica serve``:

1. checks the configuration and the state directory, makes the development PKI if
   none is configured, opens the queue database once (migrations), removes spool files
   that were never acknowledged, releases leases, and checks that the signing key can
   be used: a mistake is a :class:`~relay.process.gateway.StartupError` naming the key
   and the file, before any child exists;
2. binds every listening socket (``[listen]``, ``[sink] listen``) and the local sockets
   of ``<state>/run/`` (``qmgr.wake``, ``qmgr.sock``, one ``acceptor-<n>.auth`` per
   acceptor), then writes ``<state>/listen.json`` with the bound addresses;
3. imports the heavy modules (the PDF and signing stack), freezes the garbage
   collector's view of them (``gc.freeze()``: a child touching an object's reference
   count would otherwise copy its page), and forks the children: the queue manager,
   then the acceptors (``[processes] acceptors``, one per core by default), and the
   admin process when ``[listen] admin`` is set (metrics and health,
   :mod:`relay.process.admin`), and the webhook process (organisations' events POSTed
   to their URLs, :mod:`relay.process.webhooks`), and with ``[sms] enabled`` the ``sms``
   process (the SMPP session to the SMSC, :mod:`relay.sms.agent`).

The metrics of every process live in ``<state>/run/metrics`` (:mod:`relay.metrics`):
the master empties it before the first fork, counts the restarts of its children
there, and removes the live gauges of a child that ended (prometheus-client's
``mark_process_dead``).

Then it supervises: a child that ends is logged and started again, at once if it had
lived 10 seconds, else after a backoff (1 s doubling up to 60 s). SIGTERM or SIGINT
stops the children in order (the acceptors, so no new mail comes in, then the queue
manager, which lets what is in flight finish) and the master exits 0. SIGHUP reloads
the configuration (:meth:`Master.reload`, :mod:`relay.process.reload`).

The master itself never runs a thread: a fork copies only the thread that calls it,
and a lock held by another thread at that moment would stay locked in the child for
ever. Its startup work is synchronous, or in an ``asyncio.run()`` whose executor is
shut down before the first fork; it waits for signals with ``sigtimedwait``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gc
import ipaddress
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.multiprocess import mark_process_dead

from certifier.errors import StartupError
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import check_settings
from relay.config import (
    Config,
    ConfigError,
    Endpoint,
    load_config,
    parse_endpoint,
    read_config_text,
)
from relay.delivery.dkim_keys import DkimKeyring
from relay.logs import log_failure
from relay.metrics import PROCESS_RESTARTS, enable_multiprocess, metrics_dir, show_zeros
from relay.private import secure_state_dir
from relay.process import child
from relay.process.gateway import (
    certificate_workers,
    remove_unacknowledged,
    secret,
    served_certificate,
    signing_settings,
    state_paths,
    subject_key,
    tls_contexts,
)
from relay.process.reload import (
    RELOAD_RESULT,
    apply_logging,
    check_logging,
    merge,
    reload_path,
)
from relay.production import check_production
from relay.queue.backup import UNFINISHED
from relay.queue.spool import Spool, write_durably
from relay.queue.store import Store
from relay.queue.subjects import database_holds_erasures

log = logging.getLogger("certifica/master")

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
QUICK_DEATH = 10.0  # a child that ends sooner than this is restarted after a backoff
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
KILL_AFTER = 5.0  # seconds past the stop's bound before a child is killed


@dataclass
class Slot:
    """One child the master keeps running: its role, index and current process."""

    role: str
    index: int
    main: Callable[[], None]
    pid: int = 0
    started: float = 0.0
    quick_deaths: int = 0
    start_at: float = 0.0  # when a child that died is to be started again (monotonic)

    @property
    def name(self) -> str:
        return child.process_name(self.role, self.index)


@dataclass
class Listeners:
    """The sockets the master binds, by ``[listen]`` key (and ``sink``)."""

    sockets: dict[str, socket.socket] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)


def acceptor_count(cfg: Config) -> int:
    """``[processes] acceptors``, or one per core."""
    return cfg.processes.acceptors or os.cpu_count() or 1


def delivery_agents(cfg: Config) -> int:
    """``[processes] delivery_agents``, or one (it runs many connections at once)."""
    return cfg.processes.delivery_agents or 1


def bind(key: str, ep: Endpoint) -> socket.socket:
    """A listening TCP socket on ``ep``, non-blocking (the acceptors share it: a
    connection another acceptor took must not leave this one blocked in accept)."""
    try:
        infos = socket.getaddrinfo(
            ep.host or None, ep.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
        except BaseException:
            sock.close()
            raise
    except OSError as err:
        raise StartupError(f"cannot listen on {ep} ({key}): {err.strerror or err}") from None
    sock.setblocking(False)
    return sock


def bound(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_unix(path: Path, kind: int) -> socket.socket:
    """A Unix socket at ``path`` in the run directory (a stale one is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)  # like every file of the state directory (connecting needs w)
    except OSError as err:
        sock.close()
        raise StartupError(f"cannot make the socket {path}: {err.strerror or err}") from None
    if kind == socket.SOCK_STREAM:
        sock.listen(socket.SOMAXCONN)
    return sock


class Master:
    """The supervisor of the gateway's processes (see the module docstring)."""

    GRACE = 10.0
    """Seconds the work in flight has to finish when the gateway stops."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.paths = state_paths(cfg)
        self.run_dir = child.run_dir(cfg.state_dir)
        self.slots: list[Slot] = []
        self.setups: list[Any] = []  # what the children are started with (a reload updates cfg)
        self.stopping = False
        self.restarts = 0
        self.reloads = 0

    # -- before the first fork ---------------------------------------------------------
    def _lock_state_dir(self) -> None:
        """One master per state directory: a second ``certifica serve`` would sweep the
        spool files the first one's acceptors are writing and drop its leases. The lock
        (flock on ``master.lock``) is the kernel's, so it ends with the process however
        the process ends."""
        root = self.paths["root"]
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(root / "master.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StartupError(
                f"{root} is in use by another certifica serve (state_dir in {self.cfg.source}); "
                "stop it first, or give this one a state directory of its own"
            ) from None
        self._lock_fd = fd

    def prepare(self) -> None:
        """Step 1 and 2 of the module docstring; raises :class:`StartupError`."""
        cfg = self.cfg
        check_production(cfg)  # before anything is made: a refused start leaves no state
        unfinished = self.paths["root"] / UNFINISHED
        if unfinished.exists():
            raise StartupError(
                f"{unfinished} is there: a restore into {self.paths['root']} did not finish; "
                'run certifica restore again with the same backup (README, "Backups and restore")'
            )
        for note in cfg.deprecations:
            log.warning("config: %s", note)
        for problem in secure_state_dir(self.paths["root"]):
            log.warning("state directory: %s", problem)
        self._lock_state_dir()
        self.pki: Pki = ensure_dev_pki(
            self.paths["keys"], cfg.gateway.hostname, public_url=cfg.web.public_url
        )
        tls_contexts(cfg, self.pki)  # a file an acceptor could not use stops the start here
        self.signing = signing_settings(cfg, self.pki)
        try:
            check_settings(self.signing)
        except (ValueError, TypeError, OSError) as err:
            # A wrong password, an unreadable file, a key that is not the certificate's.
            why = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
            if cfg.signing.pkcs11_module:
                hint = (
                    "check signing.pkcs11_module, pkcs11_token, pkcs11_key_label and "
                    "pkcs11_cert, and the PIN (signing.pkcs11_pin_file or CERTIFICA_PKCS11_PIN)"
                )
            else:
                hint = (
                    "check signing.pkcs12 or signing.cert/signing.key, and the password "
                    "(signing.password_file or CERTIFICA_SIGNING_PASSWORD)"
                )
            raise StartupError(
                f"{cfg.source}: the signing key cannot be used ({why}); {hint}"
            ) from None
        asyncio.run(self._prepare_queue())
        self.verp_key = secret(self.paths["keys"] / "verp.key")
        self.tracking_key = secret(self.paths["keys"] / "tracking.key")
        # Made here so that it exists from the first start; only `certifica erase` and
        # `certifica export` use it (docs/erasure.md). Not made again once lost.
        subject_key(self.paths["keys"], lambda: database_holds_erasures(self.paths["db"]))
        if cfg.dkim.sign:
            own = DkimKeyring(self.paths["keys"]).ensure_gateway_key(cfg.gateway.domain)
            log.info("DKIM: signing as %s; publish TXT %s", own.dns_name, own.dns_txt)
        self.listeners = self._bind()
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.run_dir, 0o700)
        # Before any metric has a value, and before the children inherit the setting.
        enable_multiprocess(metrics_dir(cfg.state_dir))
        status = self.run_dir / child.STATUS_SUBDIR
        status.mkdir(mode=0o700, exist_ok=True)
        for old in status.glob("*.json"):
            old.unlink(missing_ok=True)
        for old_reload in (reload_path(self.run_dir), self.run_dir / RELOAD_RESULT):
            old_reload.unlink(missing_ok=True)  # a reload of an earlier life
        self.wake_socket = bind_unix(self.run_dir / "qmgr.wake", socket.SOCK_DGRAM)
        self.job_socket = bind_unix(self.run_dir / "qmgr.sock", socket.SOCK_STREAM)
        self.auth_sockets = [
            bind_unix(self.run_dir / f"acceptor-{i}.auth", socket.SOCK_DGRAM)
            for i in range(acceptor_count(cfg))
        ]
        write_durably(self.paths["listen"], json.dumps(self.listeners.addresses).encode())
        write_durably(self.run_dir / "master.pid", f"{os.getpid()}\n".encode())

    async def _prepare_queue(self) -> None:
        store = Store(self.paths["db"], self.cfg.queue.lifetime)  # migrations
        try:
            await remove_unacknowledged(store, Spool(self.paths["spool"]))
            await store.release_leases()  # no process is trying anything yet
        finally:
            store.close()
        # asyncio.run() shuts the default executor down: no thread is left for the fork.

    def _bind(self) -> Listeners:
        cfg = self.cfg
        listeners = Listeners()
        wanted: list[tuple[str, str, Endpoint]] = []
        for name in ("submission", "submission_tls"):
            ep = cfg.endpoint(name)
            if ep:
                wanted.append((name, f"listen.{name}", ep))
        http = cfg.endpoint("http")
        if http:  # the public pages: verification always, tracking when it is on
            wanted.append(("http", "listen.http", http))
        mx = cfg.endpoint("mx")
        if mx:
            wanted.append(("mx", "listen.mx", mx))
        admin = cfg.endpoint("admin")
        if admin:  # metrics and health: the admin process's alone, not the acceptors'
            wanted.append(("admin", "listen.admin", admin))
            if not _loopback(admin.host):
                log.warning(
                    "listen.admin = %s is not a loopback address: /metrics and /readyz have "
                    "no authentication; let only your monitoring reach it (%s)",
                    admin,
                    cfg.source,
                )
        if cfg.sink.listen:
            wanted.append(
                (
                    "sink",
                    "sink.listen",
                    parse_endpoint(cfg.sink.listen, "sink.listen", str(cfg.source)),
                )
            )
        try:
            for name, key, ep in wanted:
                sock = bind(key, ep)
                listeners.sockets[name] = sock
                listeners.addresses[name] = bound(sock)
        except StartupError:
            for sock in listeners.sockets.values():
                sock.close()
            raise
        return listeners

    def _local_mx(self) -> Endpoint | None:
        address = self.listeners.addresses.get("mx")
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        return Endpoint(host.strip("[]"), int(port))

    def _children(self) -> None:
        from relay.process import acceptor, admin, qmgr, webhooks, worker

        cfg, grace = self.cfg, self.GRACE
        agents, certifiers = delivery_agents(cfg), certificate_workers(cfg)
        qsetup = qmgr.QmgrSetup(
            cfg=cfg,
            paths=self.paths,
            wake_socket=self.wake_socket,
            job_socket=self.job_socket,
            workers=agents + certifiers + (1 if cfg.sms.enabled else 0),
            grace=grace,
        )
        wsetup = worker.WorkerSetup(
            cfg=cfg,
            pki=self.pki,
            paths=self.paths,
            job_path=self.run_dir / "qmgr.sock",
            local_mx=self._local_mx(),
            verp_key=self.verp_key,
            tracking_key=self.tracking_key,
            signing=self.signing,
            grace=grace,
        )
        asetup = acceptor.AcceptorSetup(
            cfg=cfg,
            pki=self.pki,
            paths=self.paths,
            sockets={k: v for k, v in self.listeners.sockets.items() if k != "admin"},
            wake_path=self.run_dir / "qmgr.wake",
            auth_sockets=self.auth_sockets,
            verp_key=self.verp_key,
            tracking_key=self.tracking_key,
            grace=grace,
        )
        self.setups = [qsetup, wsetup, asetup]
        # Started in this order; stopped acceptors first (see stop).
        self.slots.append(Slot("qmgr", 0, _runner(qmgr.serve, qsetup)))
        for i in range(agents):
            self.slots.append(Slot("delivery", i, _runner(worker.serve, wsetup, "delivery", i)))
        for i in range(certifiers):
            self.slots.append(Slot("certify", i, _runner(worker.serve, wsetup, "certify", i)))
        if cfg.sms.enabled:  # the one SMPP session to the SMSC (docs/sms.md)
            self.slots.append(Slot("sms", 0, _runner(worker.serve, wsetup, "sms", 0)))
        for i in range(acceptor_count(cfg)):
            self.slots.append(Slot("acceptor", i, _runner(acceptor.serve, asetup, i)))
        if "admin" in self.listeners.sockets:
            adsetup = admin.AdminSetup(
                cfg=cfg,
                paths=self.paths,
                socket=self.listeners.sockets["admin"],
                listen=dict(self.listeners.addresses),
            )
            self.setups.append(adsetup)
            self.slots.append(Slot("admin", 0, _runner(admin.serve, adsetup)))
        # A webhook's receiver is a stranger's server: it gets a process of its own, which
        # nothing the mail needs waits for (relay/process/webhooks.py).
        whsetup = webhooks.WebhooksSetup(
            cfg=cfg, paths=self.paths, tracking_key=self.tracking_key, grace=grace
        )
        self.setups.append(whsetup)
        self.slots.append(Slot("webhooks", 0, _runner(webhooks.serve, whsetup)))

    @staticmethod
    def _load_heavy_modules() -> None:
        """Import what the children use before forking them, so that its pages are
        shared, then keep the collector from writing to them (``gc.freeze``)."""
        import certifier.document  # noqa: F401 - reportlab
        import certifier.pipeline  # noqa: F401
        import certifier.signing  # noqa: F401 - pyHanko
        import relay.process.acceptor  # noqa: F401
        import relay.process.admin  # noqa: F401
        import relay.process.qmgr  # noqa: F401
        import relay.process.webhooks  # noqa: F401
        import relay.process.worker  # noqa: F401
        import relay.sms.agent  # noqa: F401

        gc.collect()
        gc.freeze()

    # -- the children ------------------------------------------------------------------
    def _fork(self, slot: Slot) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                child.become_child(slot.role, slot.index)
                slot.main()
            except SystemExit as end:
                code = end.code if isinstance(end.code, int) else 1
            except BaseException:  # one line in the log, the master restarts it
                log_failure(logging.getLogger(f"certifica/{slot.role}"), "%s failed", slot.name)
                code = 1
            finally:
                child.child_exit(code)
        slot.pid, slot.started = pid, time.monotonic()
        log.info("%s started, pid %d", slot.name, pid)

    def _reap(self) -> list[Slot]:
        """Collect every child that ended; returns their slots."""
        ended = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            mark_process_dead(pid, str(metrics_dir(self.cfg.state_dir)))
            for slot in self.slots:
                if slot.pid == pid:
                    self._ended(slot, status)
                    slot.pid = 0
                    ended.append(slot)
        return ended

    def _ended(self, slot: Slot, status: int) -> None:
        if os.WIFSIGNALED(status):
            how = f"signal {os.WTERMSIG(status)}"
        else:
            how = f"exit {os.waitstatus_to_exitcode(status)}"
        if self.stopping:
            log.info("%s pid %d ended (%s)", slot.name, slot.pid, how)
            return
        now = time.monotonic()
        lived = now - slot.started
        if lived < QUICK_DEATH:
            slot.quick_deaths += 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (slot.quick_deaths - 1))
        else:
            slot.quick_deaths, delay = 0, 0.0
        slot.start_at = now + delay
        self.restarts += 1
        PROCESS_RESTARTS.labels(slot.role).inc()
        when = "restarting" if delay == 0 else f"restarting in {delay:.0f} s"
        log.warning("%s pid %d ended (%s) after %.1f s; %s", slot.name, slot.pid, how, lived, when)

    def _write_status(self) -> None:
        running = sum(1 for s in self.slots if s.pid)
        self.status.write(
            {
                "doing": f"supervising {running} children, {self.restarts} restarts",
                "children": running,
                "restarts": self.restarts,
            }
        )

    # -- the life of the master --------------------------------------------------------
    def run(self) -> int:
        """Prepare, fork, supervise until SIGTERM or SIGINT, stop in order; exit 0."""
        # From here on a SIGTERM waits for sigtimedwait: one that comes while the master
        # starts stops the gateway once it has started, in order.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self.prepare()
        self._load_heavy_modules()
        self._children()
        if threading.active_count() != 1:
            log.warning(
                "%d threads before forking; a child may inherit a held lock",
                threading.active_count(),
            )
        self.status = child.StatusFile(self.cfg.state_dir, "master", 0)
        show_zeros(self.listeners.addresses, {slot.role for slot in self.slots})
        for slot in self.slots:
            self._fork(slot)
        log.info(
            "started: %s; state in %s",
            ", ".join(f"{k} on {v}" for k, v in self.listeners.addresses.items()),
            self.paths["root"],
        )
        self._write_status()
        while True:
            due = [s.start_at for s in self.slots if not s.pid]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 60.0
            info = signal.sigtimedwait(SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                break
            if info is not None and info.si_signo == signal.SIGHUP:
                self.reload()
            self._reap()
            now = time.monotonic()
            for slot in self.slots:
                if not slot.pid and slot.start_at <= now:
                    self._fork(slot)
            self._write_status()
        self.stop()
        return 0

    def reload(self) -> None:
        """SIGHUP: read the config file again, check it, and have every child apply it.

        Refused as a whole, with one line naming the key and the file, when the file
        does not load, the TLS certificate and key cannot be used or ``[log] file``
        cannot be opened: nothing changes anywhere. Else the keys a reload cannot change
        are named in one line and left as they were, the master takes the log settings,
        the children's setups take the new configuration (a child started from now on
        has it) and every child is sent SIGHUP to apply it (:mod:`relay.process.reload`).

        Why signals and a file rather than a message on the control paths: the master
        has no connection to its children (``run/qmgr.sock`` joins the queue manager to
        the workers; the acceptors and the admin process have none) and no event loop
        to speak over one; a signal reaches every child whatever it is doing, and the
        checked text in ``run/reload.toml`` makes every child apply the same bytes."""
        self.reloads += 1
        cfg = self.cfg
        if cfg.source is None:
            self._reloaded("refused", "the gateway runs on the embedded defaults: no file to read")
            return
        try:
            text = read_config_text(cfg.source)
            change = merge(cfg, load_config(cfg.source, text))
            new = change.config
            tls_contexts(new, self.pki)  # every process reads the files again
            shown = served_certificate(new, self.pki)
            if new.dkim.sign:  # made here at the first start too; the agents read the files
                DkimKeyring(self.paths["keys"]).ensure_gateway_key(new.gateway.domain)
            check_logging(new)  # the last check
            # Only a text that passed every check is written: a child sent SIGHUP from
            # outside (`systemctl kill -s HUP` signals every process) applies this file.
            self._install_reload(text, new)
        except ConfigError as err:
            self._reloaded("refused", str(err))
            return
        except (OSError, ValueError) as err:  # the state directory: full, or not writable
            self._reloaded("refused", getattr(err, "strerror", None) or str(err))
            return
        if change.needs_restart:
            log.warning(
                "reload: %s: needs a restart: %s (left as they were)",
                cfg.source,
                ", ".join(change.needs_restart),
            )
        self.cfg = new
        for setup in self.setups:
            setup.cfg = new
        applying = ", ".join(change.applied) or "no changed key (files read again)"
        message = f"{cfg.source}: applying {applying}; TLS certificate {shown}"
        self._reloaded("applied", message, change.needs_restart)
        for slot in self.slots:
            if slot.pid:
                _signal(slot.pid, signal.SIGHUP)

    def _install_reload(self, text: str, new: Config) -> None:
        """Write ``run/reload.toml`` and take ``new``'s log settings; when the log file
        went away since it was checked, the text the children had stays and the
        :class:`ConfigError` is raised."""
        path = reload_path(self.run_dir)
        try:
            before: bytes | None = path.read_bytes()
        except FileNotFoundError:
            before = None
        write_durably(path, text.encode("utf-8"))
        try:
            apply_logging(new)  # changes nothing when it fails
        except ConfigError:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                write_durably(path, before)
            raise

    def _reloaded(self, outcome: str, message: str, needs_restart: tuple[str, ...] = ()) -> None:
        """Log a reload's outcome and leave it in ``run/reload.json`` for ``certifica
        reload``, which waits for it (its ``serial`` counts the master's reloads)."""
        if outcome == "refused":
            log.warning("reload refused: %s; the configuration in force stays", message)
        else:
            log.info("reload: %s", message)
        state = {
            "serial": self.reloads,
            "pid": os.getpid(),
            "outcome": outcome,
            "message": message,
            "needs_restart": list(needs_restart),
        }
        path = self.run_dir / RELOAD_RESULT
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(state))
            os.replace(tmp, path)
        except OSError as err:  # for the command only: the reload itself is done
            log.warning("cannot write %s: %s", path, err.strerror or err)

    def stop(self, grace: float = GRACE) -> None:
        """Stop the children in order: the acceptors (no new mail; the messages in DATA
        are stored and answered), then the queue manager (what is in flight finishes
        within ``grace`` seconds, the rest stays queued for the next start). A child
        still running ``grace`` + the TSA timeout + 5 s after the stop began is killed."""
        self.stopping = True
        log.info("stopping: no new mail accepted; in-flight work has %.0f s to finish", grace)
        deadline = time.monotonic() + grace + self.cfg.signing.tsa_timeout + KILL_AFTER
        # The admin process with the acceptors: /readyz stops answering when mail does;
        # the webhook process too: what it has not sent is sent at the next start.
        stages = ("delivery", "certify", "sms")
        for roles in (("acceptor", "admin", "webhooks"), ("qmgr",), stages):
            group = [s for s in self.slots if s.role in roles and s.pid]
            if not group:
                continue
            log.info("stopping %s", ", ".join(s.name for s in group))
            for slot in group:
                _signal(slot.pid, signal.SIGTERM)
            self._wait_for(group, deadline)
        for path in (self.run_dir / "master.pid", *self.status.path.parent.glob("*.json")):
            path.unlink(missing_ok=True)
        log.info("stopped")

    def _wait_for(self, group: list[Slot], deadline: float) -> None:
        while any(s.pid for s in group):
            left = deadline - time.monotonic()
            if left <= 0:
                for slot in group:
                    if slot.pid:
                        log.warning("%s did not stop in time; killed", slot.name)
                        _signal(slot.pid, signal.SIGKILL)
                deadline = time.monotonic() + KILL_AFTER
            signal.sigtimedwait({signal.SIGCHLD}, max(0.05, min(left, 1.0)))
            self._reap()


def _loopback(host: str) -> bool:
    """Whether ``host`` (a ``[listen]`` host) only listens on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, say so


def _runner(main: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> Callable[[], None]:
    """A child's body: its own event loop running ``main(*args)``."""
    return lambda: asyncio.run(main(*args))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as err:
        if err.errno != errno.ESRCH:
            raise
