"""Open and click tracking wired into the gateway: per-recipient copies, the HTTP listener,
and the storage behind :mod:`addendum.http`.

Each recipient of a tracked certified message gets its own copy: links rewritten to
``<public_url>/c/<token>`` and a 1x1 image ``<public_url>/o/<token>`` (tokens are MACs
binding message, recipient and link; see :mod:`addendum.tokens`). The URLs are stored
before the copy leaves, so a click can only ever be redirected to a URL that was in the
original message. Every hit is evidence (``ContentOpened`` / ``LinkClicked``,
extensions to ETSI EN 319 522), classified as automatic or likely by a person.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiohttp import web

from addendum.classify import classify
from addendum.http import TrackingEvent, make_app
from addendum.inject import Injection, inject
from addendum.tokens import TokenCodec, TokenData
from relay.config import Config, Endpoint
from relay.metrics import TRACKING_HITS
from relay.queue.states import TrackingKind
from relay.queue.store import Store
from relay.smtpd.protocol import AuthThrottle
from relay.web import api, console, hosted, pki, sms_optout, verification

log = logging.getLogger("certifica/tracking")

# Clicks on every link of a copy within this many seconds are a scanner's sweep.
SWEEP_SECONDS = 5.0


def inject_copy(
    raw: bytes, public_url: str, key: bytes, qid: str, recipient_id: int, rewrite_text: bool
) -> Injection:
    """One recipient's copy; a plain function so it can run in a worker process."""
    codec = TokenCodec(key)
    return inject(
        raw, public_url, lambda n: codec.make(TokenData(qid, recipient_id, n)), rewrite_text
    )


def tracked_for(cfg: Config, domain: str) -> bool:
    """False for a domain listed in ``tracking.never_domains`` or under one of them: a
    listed ``court.example`` also covers ``mail.court.example`` (a court's mail hosts and
    departments), but not ``notcourt.example``. Comparison ignores case and a trailing dot."""
    name = domain.strip().rstrip(".").lower()
    for listed in cfg.tracking.never_domains:
        never = listed.strip().strip(".").lower()
        if never and (name == never or name.endswith("." + never)):
            return False
    return True


class StoreBackend:
    """:class:`addendum.http.TrackingBackend` on the gateway's store."""

    def __init__(self, cfg: Config, store: Store, wake: Any) -> None:
        self.cfg = cfg
        self.store = store
        self.wake = wake

    async def link_url(self, qid: str, recipient_id: int, link: int) -> str | None:
        return await self.store.link_url(qid, recipient_id, link)

    async def _distinct_recent_links(self, event: TrackingEvent) -> int:
        """How many distinct links of this copy were clicked in the last
        :data:`SWEEP_SECONDS`, this click included.

        Distinct, so that a person clicking one link twice, or Office's HEAD probe followed
        by the browser's GET of the same link, is not "every link clicked at once".
        """
        since = event.time - SWEEP_SECONDS
        if not await self.store.recent_clicks(event.qid, event.recipient_id, since):
            return 1  # the usual case: no other click in the window, nothing more to read
        clicked = {
            e["link"]
            for e in await self.store.tracking_events(event.qid)
            if e["recipient_id"] == event.recipient_id
            and e["kind"] == TrackingKind.CLICK
            and e["time"] >= since
        }
        clicked.add(event.link)
        return len(clicked)

    async def record(self, event: TrackingEvent) -> None:
        rcpt = await self.store.tracked_recipient(event.qid, event.recipient_id)
        if rcpt is None or not rcpt["tracking"] or not rcpt["address"]:
            # No address: the message's evidence went after [retention] evidence_years
            # (docs/retention.md); there is nobody to report a hit to, nor to record.
            return
        since = (event.time - rcpt["last_attempt"]) if rcpt["last_attempt"] else None
        clicks = links = 0
        if event.kind == TrackingKind.CLICK:
            links = await self.store.link_count(event.qid, event.recipient_id)
            clicks = await self._distinct_recent_links(event)
        verdict = classify(
            event.kind,
            event.user_agent,
            event.ip,
            since,
            clicks,
            links,
            method=event.method,
            fast_seconds=self.cfg.tracking.fast_seconds,
        )
        row = {
            "qid": event.qid,
            "recipient_id": event.recipient_id,
            "kind": event.kind,
            "link": event.link,
            "url": event.url,
            "time": event.time,
            "ip": event.ip,
            "user_agent": event.user_agent,
            "method": event.method,
            "automatic": int(verdict.automatic),
            "reason": verdict.reason,
        }
        await self.store.record_tracking(rcpt["address"], row, time.time())
        TRACKING_HITS.labels(event.kind, "automatic" if verdict.automatic else "person").inc()
        log.info(
            "%s: %s by <%s>%s from %s, %s (%s)",
            event.qid,
            event.kind,
            rcpt["address"],
            f" of link {event.link}" if event.kind == TrackingKind.CLICK else "",
            event.ip,
            "automatic" if verdict.automatic else "likely a person",
            verdict.reason,
        )
        self.wake()


async def make_http_runner(
    cfg: Config, key: bytes, backend: StoreBackend, throttle: AuthThrottle | None = None
) -> web.AppRunner:
    """The public HTTP listener's aiohttp runner, set up: the tracking endpoint, the
    verification page (:mod:`relay.web.verification`), the web console
    (:mod:`relay.web.console`), the JSON API (:mod:`relay.web.api`), the SMS opt-out page
    (:mod:`relay.web.sms_optout`) and the development
    CA's CRL and certificate (:mod:`relay.web.pki`); a site (an address or a socket the
    master bound) is added by the caller. ``throttle``: the acceptor's count of failed
    SMTP AUTH, which console logins share (None: one of the listener's own)."""
    # aiohttp logs malformed requests with a traceback; our own lines say what matters.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    app = make_app(TokenCodec(key), backend, cfg.web.trusted_proxies, cfg.gateway.language)
    from relay.process.gateway import state_paths  # the archive's path, [evidence] archive_dir

    archive = state_paths(cfg)["certificates"]
    verification.install(app, cfg, backend.store, archive)
    if throttle is None:
        throttle = AuthThrottle(cfg.limits.auth_block, cfg.limits.auth_block_window)
    console.install(app, cfg, backend.store, throttle, archive)
    api.install(app, cfg, backend.store, archive)
    pki.install(app, cfg.state_dir / "keys")
    hosted.install_on_gateway(app, cfg, backend.store, key, backend.wake)  # docs/hosted.md
    sms_optout.install(app, cfg, backend.store, key)  # docs/sms.md
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    return runner


async def start_http(
    cfg: Config, ep: Endpoint, key: bytes, backend: StoreBackend
) -> tuple[web.AppRunner, str]:
    """Serve the tracking endpoint on ``ep``; returns the runner and the bound address."""
    runner = await make_http_runner(cfg, key, backend)
    site = web.TCPSite(runner, ep.host, ep.port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    host, port = sockets[0].getsockname()[:2] if sockets else (ep.host, ep.port)
    return runner, (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
