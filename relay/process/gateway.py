"""The process that runs everything: listeners, queue manager, certificate workers.

``certifica serve`` builds a :class:`Gateway` and runs it until SIGTERM or SIGINT. On
start it makes the development PKI if none is configured, opens the store, removes
spool files that were never acknowledged (no database row), and resumes the queue.
On SIGTERM it stops accepting, lets in-flight work finish within a bound, and leaves
the rest queued for the next start.

Once listening it writes ``<state_dir>/listen.json`` with the actual addresses (port 0
in the config means "any free port"; tests read the ports back from there).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import json
import logging
import os
import secrets
import signal
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from certifier import pipeline
from certifier.errors import StartupError
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import CertificatePool, PoolTimeStamper, SigningSettings
from relay.certify.checkpoints import Checkpointer
from relay.certify.documents import DocumentMaker
from relay.cleanup.certified_copy import CertifiedCopyIntake
from relay.cleanup.late_bounces import LateBounces
from relay.cleanup.postmaster import PostmasterIntake
from relay.cleanup.reception import ReceptionIntake
from relay.config import Config, Endpoint, parse_endpoint, signing_password
from relay.delivery.agent import DeliveryAgent
from relay.delivery.client import Deliverer
from relay.delivery.dkim_keys import DkimKeyring
from relay.delivery.routing import Router
from relay.logs import loop_exception_handler
from relay.private import secure_state_dir
from relay.production import check_production
from relay.queue.local import LocalDispatcher
from relay.queue.manager import QueueManager
from relay.queue.spool import SPOOL_SUBDIR, Spool, write_durably
from relay.queue.store import Store
from relay.smtpd.mx import MXSMTP, MXHandler
from relay.smtpd.protocol import AuthThrottle, CertificaSMTP
from relay.smtpd.sink import SinkHandler
from relay.smtpd.submission import SubmissionHandler, SubmissionSMTP
from relay.web.tracking import StoreBackend, start_http

log = logging.getLogger("certifica/master")

# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size); a
# TLS record is at most 16 KiB, so 32 KiB reads lose nothing and 100 idle sessions
# cost ~20 MB less (measured: 100 authenticated sessions, RSS).
TLS_READ_BUFFER = 32 * 1024
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


async def _listen(
    loop: asyncio.AbstractEventLoop,
    factory: Any,
    key: str,
    ep: Endpoint,
    tls: ssl.SSLContext | None = None,
) -> asyncio.base_events.Server:
    try:
        return await loop.create_server(factory, ep.host, ep.port, ssl=tls)
    except OSError as err:
        raise StartupError(f"cannot listen on {ep} ({key}): {err.strerror or err}") from None


def state_paths(cfg: Config) -> dict[str, Path]:
    root = cfg.state_dir
    return {
        "root": root,
        "keys": root / "keys",
        "spool": root / SPOOL_SUBDIR,
        "db": root / "queue.db",
        "certificates": root / "certificates",
        "listen": root / "listen.json",
    }


class PipelineCertifier:
    """The queue manager's certifier: the pool running :func:`certifier.pipeline.certify`."""

    def __init__(self, pool: CertificatePool) -> None:
        self.pool = pool

    async def certify(self, evidence: dict[str, Any], eml: bytes | None) -> bytes:
        return await self.pool.run(pipeline.certify, evidence, eml)


def signing_settings(cfg: Config, pki: Pki) -> SigningSettings:
    """The signing key and TSA the workers use: ``[signing]``, else the development PKI."""
    pkcs12 = None
    if cfg.signing.pkcs12:
        cert = key = pkcs12 = cfg.signing.pkcs12
        extra = tuple(cfg.signing.chain)
    elif cfg.signing.cert and cfg.signing.key:
        cert, key, extra = cfg.signing.cert, cfg.signing.key, tuple(cfg.signing.chain)
    else:
        cert, key, extra = pki.signing_cert, pki.signing_key, (pki.ca_cert,)
    return SigningSettings(
        signing_cert=cert,
        signing_key=key,
        extra_certs=extra,
        tsa_url=cfg.signing.tsa_url or None,
        tsa_cert=pki.tsa_cert,
        tsa_key=pki.tsa_key,
        tsa_timeout=cfg.signing.tsa_timeout,
        # The built-in TSA's tokens carry the development CA, whoever signs the PDF.
        tsa_chain=(pki.ca_cert,),
        pkcs12=pkcs12,
        password=signing_password(cfg) if (pkcs12 or cfg.signing.key) else None,
    )


class Gateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.paths = state_paths(cfg)
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self._stopped = asyncio.Event()
        self.mx_handler: MXHandler | None = None
        # One count of failed AUTH per client address for both submission ports.
        self.auth_throttle = AuthThrottle(cfg.limits.auth_block, cfg.limits.auth_block_window)

    async def start(self) -> None:
        cfg = self.cfg
        check_production(cfg)  # before anything is made: a refused start leaves no state
        for problem in secure_state_dir(self.paths["root"]):
            log.warning("state directory: %s", problem)
        self.pki = await asyncio.to_thread(ensure_dev_pki, self.paths["keys"], cfg.gateway.hostname)
        self.store = Store(self.paths["db"], cfg.queue.lifetime)
        self.spool = Spool(self.paths["spool"])
        await self._remove_unacknowledged()
        await self.store.release_leases()  # a new process is trying nothing yet
        try:
            self.pool = CertificatePool(
                signing_settings(cfg, self.pki), workers=certificate_workers(cfg)
            )
        except (ValueError, TypeError, OSError) as err:
            # A wrong password, an unreadable file, a key that is not the certificate's.
            why = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
            raise StartupError(
                f"{cfg.source}: the signing key cannot be used ({why}); check "
                "signing.pkcs12 or signing.cert/signing.key, and the password "
                "(signing.password_file or CERTIFICA_SIGNING_PASSWORD)"
            ) from None
        deliverer = Deliverer(
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
        self.deliverer = deliverer
        verp_key = await asyncio.to_thread(_secret, self.paths["keys"] / "verp.key")
        tracking_key = await asyncio.to_thread(_secret, self.paths["keys"] / "tracking.key")
        keyring = DkimKeyring(self.paths["keys"])
        if cfg.dkim.sign:
            own = await asyncio.to_thread(keyring.ensure_gateway_key, cfg.gateway.domain)
            log.info("DKIM: signing as %s; publish TXT %s", own.dns_name, own.dns_txt)
        agent = DeliveryAgent(
            cfg,
            self.store,
            self.spool,
            deliverer,
            verp_key=verp_key,
            tracking_key=tracking_key,
            offload=self.pool.run,
            dkim=keyring if cfg.dkim.sign else None,
        )
        maker = DocumentMaker(
            cfg, self.store, self.spool, PipelineCertifier(self.pool), self.paths["certificates"]
        )
        self.qmgr = QueueManager(cfg, self.store, LocalDispatcher(agent, maker))
        self.submission = SubmissionHandler(
            cfg, self.store, self.spool, self.qmgr.wake, verp_key=verp_key
        )
        tls = self._tls_context("submission")
        listen: dict[str, str] = {}
        sub = cfg.endpoint("submission")
        if sub:
            listen["submission"] = await self._serve_submission(
                "submission", sub, tls, implicit=False
            )
        sub_tls = cfg.endpoint("submission_tls")
        if sub_tls:
            listen["submission_tls"] = await self._serve_submission(
                "submission_tls", sub_tls, tls, implicit=True
            )
        http = cfg.endpoint("http")
        self._http: Any = None
        if http and cfg.tracking.enabled:
            backend = StoreBackend(cfg, self.store, self.qmgr.wake)
            try:
                self._http, listen["http"] = await start_http(cfg, http, tracking_key, backend)
            except OSError as err:
                raise StartupError(
                    f"cannot listen on {http} (listen.http): {err.strerror or err}"
                ) from None
        mx = cfg.endpoint("mx")
        if mx:
            listen["mx"] = await self._serve_mx(mx, verp_key)
            # Mail to the gateway's own domains goes to this listener, never via the DNS.
            host, _, port = listen["mx"].rpartition(":")
            deliverer.router.route_local(Endpoint(host.strip("[]"), int(port)))
        if cfg.sink.listen:
            listen["sink"] = await self._serve_sink(
                parse_endpoint(cfg.sink.listen, "sink.listen", str(cfg.source))
            )
        # Start the certificate workers now (importing the PDF stack takes seconds), not on
        # the first certificate.
        self._warm = asyncio.create_task(self.pool.run(os.getpid))
        self._qmgr_task = asyncio.create_task(self.qmgr.run())
        # The workers' TSA (the configured one, or the in-process development TSA):
        # this process never loads pyHanko.
        timestamper = PoolTimeStamper(self.pool)
        self.checkpointer = Checkpointer(
            self.store, timestamper, interval=cfg.evidence.checkpoint_interval
        )
        self.checkpointer.start()
        await asyncio.to_thread(write_durably, self.paths["listen"], json.dumps(listen).encode())
        log.info(
            "started: %s; state in %s",
            ", ".join(f"{k} on {v}" for k, v in listen.items()),
            self.paths["root"],
        )

    def _tls_context(self, policy: str = "submission") -> ssl.SSLContext:
        cert = self.cfg.tls.cert or self.pki.tls_cert
        key = self.cfg.tls.key or self.pki.tls_key
        return tls_context(str(cert), str(key), policy)

    async def _serve_submission(
        self, name: str, ep: Endpoint, tls: ssl.SSLContext, implicit: bool
    ) -> str:
        cfg = self.cfg
        loop = asyncio.get_running_loop()

        def factory() -> CertificaSMTP:
            return SubmissionSMTP(
                self.submission,
                verifier=self.submission.verify_password,
                throttle=self.auth_throttle,
                header_limit=cfg.limits.header_size,
                auth_failures=cfg.limits.auth_failures,
                auth_delay=cfg.limits.auth_delay,
                data_size_limit=cfg.limits.message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.gateway.hostname,
                ident="Certifica ESMTP",
                tls_context=tls,
                # Port 465: the session starts TLS itself before its greeting, so AUTH
                # is over TLS on both ports and aiosmtpd has no reason to warn.
                implicit_tls=implicit,
                require_starttls=not implicit,
                auth_required=True,
                auth_require_tls=True,
                timeout=cfg.limits.timeout,
                min_data_rate=cfg.limits.min_data_rate,
                loop=loop,
            )

        server = await _listen(loop, factory, f"listen.{name}", ep)
        self.servers[name] = server
        return _bound(server)

    async def _serve_mx(self, ep: Endpoint, verp_key: bytes) -> str:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        reception = ReceptionIntake(cfg, self.store, self.spool, self.qmgr.wake)
        mx_tls = self._tls_context("mx")
        handler = self.mx_handler = MXHandler(
            domain=cfg.gateway.domain,
            hostname=cfg.gateway.hostname,
            verp_key=verp_key,
            verp_prefix=cfg.gateway.bounce_prefix,
            on_bounce=LateBounces(self.store, self.spool, self.qmgr.wake),
            certification_address=cfg.gateway.certification_address,
            on_certify=CertifiedCopyIntake(cfg, self.store, self.spool, self.qmgr.wake),
            reception_owner=reception.owner_for,
            on_reception=reception,
            reception_prefix=cfg.reception.prefix,
            on_postmaster=PostmasterIntake(cfg, self.store, self.spool, self.qmgr.wake).handle_DATA,
            max_recipients=cfg.limits.recipients,
        )

        def factory() -> MXSMTP:
            return MXSMTP(
                handler,
                header_limit=cfg.limits.header_size,
                data_size_limit=cfg.limits.message_size,
                enable_SMTPUTF8=True,
                hostname=cfg.gateway.hostname,
                ident="Certifica ESMTP",
                tls_context=mx_tls,
                timeout=cfg.limits.timeout,
                min_data_rate=cfg.limits.min_data_rate,
                loop=loop,
            )

        server = await _listen(loop, factory, "listen.mx", ep)
        self.servers["mx"] = server
        return _bound(server)

    async def _serve_sink(self, ep: Endpoint) -> str:
        loop = asyncio.get_running_loop()
        handler = SinkHandler(self.cfg.sink.dir)

        def factory() -> SMTP:
            return CertificaSMTP(
                handler,
                header_limit=self.cfg.limits.header_size,
                auth_failures=3,
                auth_delay=0,
                data_size_limit=self.cfg.limits.message_size * 2,
                enable_SMTPUTF8=True,
                hostname="sink." + self.cfg.gateway.hostname,
                ident="Certifica local mailbox",
                loop=loop,
            )

        server = await _listen(loop, factory, "sink.listen", ep)
        self.servers["sink"] = server
        return _bound(server)

    async def _remove_unacknowledged(self) -> None:
        self.spool.clean_temporaries()
        known = await self.store.all_qids()
        queued = self.spool.queued_ids()
        for qid in sorted(queued - known):
            log.warning("%s: spool file without a queue record (never acknowledged); removed", qid)
            self.spool.remove(qid)
        # Done in the database but still queued on disk: the process stopped in between.
        for qid, keep in sorted((await self.store.finished_in_spool(queued & known)).items()):
            if keep:
                await asyncio.to_thread(self.spool.archive, qid)
            else:
                await asyncio.to_thread(self.spool.remove, qid)
            log.info("%s: removed (finished before the last stop)", qid)

    async def stop(self, grace: float = 10.0) -> None:
        log.info("stopping: no new mail accepted; in-flight work has %.0f s to finish", grace)
        self.submission.accepting = False
        if self.mx_handler is not None:
            self.mx_handler.accepting = False
        for server in self.servers.values():
            server.close()
        if self._http is not None:
            await self._http.cleanup()
        await self.qmgr.stop(grace)
        await self.deliverer.close()
        self._qmgr_task.cancel()
        await asyncio.gather(self._qmgr_task, return_exceptions=True)
        await self.checkpointer.stop()  # and a last checkpoint of what is not stamped yet
        self.pool.close()
        self.store.close()
        log.info("stopped")
        self._stopped.set()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(loop_exception_handler)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        await self.stop()


# Mozilla's "intermediate" TLS 1.2 suites (https://ssl-config.mozilla.org, v5.7):
# forward secret key exchange and AEAD ciphers only, no CBC. TLS 1.3 suites are all
# AEAD and stay OpenSSL's defaults.
SUBMISSION_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# The MX port: STARTTLS there is opportunistic (RFC 7435 §1.3, RFC 3207): a sending
# server whose handshake fails delivers in plaintext, which is worse than any cipher
# below. So the strong suites come first and the server picks, and CBC and plain RSA key
# exchange stay for old MTAs; what is broken (RC4, 3DES, MD5, export, anonymous) is out.
MX_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES:RSA+AESGCM:RSA+AES"
    ":!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES:!EXPORT"
)


def tls_context(cert: str, key: str, policy: str) -> ssl.SSLContext:
    """The server TLS context of a listener: ``policy`` is "submission" (ports 587 and
    465: clients we configure, Mozilla intermediate) or "mx" (port 25: any MTA).

    Both keep TLS 1.2 as the minimum. On the MX it is a judgement (RFC 7435 would rather
    have TLS 1.0 than plaintext): RFC 8996 deprecates TLS 1.0 and 1.1, OpenSSL 3 only
    speaks them at security level 0 (which lets every weak suite back in) and Python
    deprecates them; an MTA that speaks nothing newer is rare and still delivers, in
    plaintext, as it would to a server without STARTTLS.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED  # TLS 1.3 on
    if policy == "submission":
        ctx.set_ciphers(SUBMISSION_CIPHERS)
    elif policy == "mx":
        ctx.set_ciphers(MX_CIPHERS)
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        raise ValueError(f"unknown TLS policy {policy!r}")
    ctx.load_cert_chain(cert, key)
    return ctx


def certificate_workers(cfg: Config) -> int:
    """``[signing] workers``, or by default one per core but the one the SMTP side and
    the queue need (at least one): on two cores one worker signs ~75 certificates a
    second, and a second one would only compete with the listeners for the CPU."""
    return cfg.signing.workers or max(1, (os.cpu_count() or 2) - 1)


def _secret(path: Path) -> bytes:
    """A 32-byte key kept in the state directory, made on first use."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(path, secrets.token_bytes(32))
        return path.read_bytes()


def _bound(server: asyncio.base_events.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
