"""What every console page shares: the session cookie, the CSRF checks, the language,
the answers (a page, a refusal in a sentence, a redirect) and the guard that puts them
in front of each handler (docs/console.md).

The cookie is ``__Host-certifica`` with ``Secure`` (RFC 6265bis section 4.1.3.2: the
browser binds it to this host and path ``/``, and never sends it over plain HTTP) when
``[web] public_url`` is https, and also when it is plain http on a loopback address
(``make run``, the tests): Chromium and Firefox treat loopback as a secure context
(W3C Secure Contexts section 3.1) and keep a ``Secure`` and ``__Host-`` cookie from it
(Chromium 156 checked). Only an http ``public_url`` on another host (a development
gateway on a LAN) gets the plain ``certifica`` without ``Secure``, the one form a browser
keeps from plain HTTP there. Both are ``HttpOnly`` and ``SameSite=Strict``.

A POST is accepted only from this site's own pages: its ``Sec-Fetch-Site`` must say
``same-origin`` (a browser's own word), else its ``Origin`` (else its ``Referer``) must be
``public_url``'s origin or the origin the request was addressed to; and, once logged in,
its form must carry the session's CSRF token. The login form has
no session yet: the origin check is what protects it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from addendum.http import client_ip, reader_language, trusted_networks
from certifier.i18n import LANGUAGES, Reader
from relay.config import Config
from relay.queue.errors import StoreError
from relay.queue.orgs import Account
from relay.queue.sessions import SessionStage, WebSession
from relay.queue.store import Store
from relay.roles import Action, allowed
from relay.smtpd.protocol import AuthThrottle
from relay.web.origin import same_origin
from relay.web.pages import LANGUAGE_NAMES, render

log = logging.getLogger("certifica/console")

SECURE_COOKIE = "__Host-certifica"
PLAIN_COOKIE = "certifica"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on a
    # form's POST, and the origin check needs the real one.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Accept-Language, Cookie",
}
STATIC = Path(__file__).resolve().parent.parent / "static"
STATIC_FILES = {"app.css": "text/css", "favicon.svg": "image/svg+xml"}
LOOKUP_TIMEOUT = 5.0  # seconds for the database to answer, as the other public pages wait

Handler = Callable[[web.Request, "Visit"], Awaitable[web.StreamResponse]]


def N_(message: str) -> str:
    """Marks a text of the ``web`` catalog; translated when the page is rendered."""
    return message


FORBIDDEN_FORM = N_(
    "This form was not accepted: it was not sent from this site's own page, or your "
    "session has ended. Go back, reload the page and try again."
)
NOT_ALLOWED = N_("Your role in your organisation does not allow this.")
UNAVAILABLE = N_("Temporarily unavailable, please try again in a minute.")


def session_hash(session_id: str) -> str:
    """What the database keeps of a session id: its SHA-256."""
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True)
class Visit:
    """One request as a handler sees it: its language and, once logged in, its session."""

    request: web.Request
    reader: Reader
    session: WebSession | None

    @property
    def account(self) -> Account:
        """The logged-in user (the guard lets a handler run only with one)."""
        if self.session is None:
            raise RuntimeError("a console handler ran without a session")
        return self.session.account

    @property
    def language(self) -> str:
        return self.reader.language

    def gettext(self, message: str) -> str:
        return self.reader.catalog("web").gettext(message)

    @property
    def root(self) -> str:
        """The relative path from this page to ``/app/`` (links work behind a proxy that
        serves the gateway under a path of its own)."""
        return "../" * max(0, self.request.path.count("/") - 2)


def _loopback(host: str) -> bool:
    """``localhost``, ``*.localhost`` (RFC 6761 section 6.3) or a loopback address."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Console:
    """The console's shared parts: configuration, store, the SMTP lockout, the archive."""

    def __init__(self, cfg: Config, store: Store, throttle: AuthThrottle, archive: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.throttle = throttle
        self.archive = archive
        self.trusted = trusted_networks(cfg.web.trusted_proxies)
        public = urlsplit(cfg.web.public_url)
        self.secure = public.scheme == "https" or _loopback(public.hostname or "")
        self.cookie = SECURE_COOKIE if self.secure else PLAIN_COOKIE
        self.public_origin = f"{public.scheme}://{public.netloc}".lower()
        self.static = {name: (STATIC / name).read_bytes() for name in STATIC_FILES}

    # --- who and in which language ------------------------------------------------------

    def client(self, request: web.Request) -> str:
        """The client's address (behind ``[web] trusted_proxies``, the real one)."""
        return client_ip(request, self.trusted)

    def peer(self, request: web.Request) -> tuple[str, int]:
        """The client as :class:`relay.smtpd.protocol.AuthThrottle` counts it (an SMTP
        session's peer is ``(host, port)``): failures here and on SMTP count together."""
        return (self.client(request), 0)

    def reader(self, request: web.Request, session: WebSession | None) -> Reader:
        """``?lang=``, else the user's language, else ``Accept-Language``."""
        language = request.query.get("lang", "")
        if language not in LANGUAGES:
            chosen = session.account.language if session else None
            language = chosen if chosen in LANGUAGES else ""
        if not language:
            language = reader_language(request, self.cfg.gateway.language)
        zone = (session.account.timezone if session else None) or self.cfg.gateway.timezone
        return Reader(language, zone)

    async def session_of(self, request: web.Request) -> WebSession | None:
        cookie = request.cookies.get(self.cookie, "")
        if not cookie or len(cookie) > 100:
            return None
        console = self.cfg.console
        return await asyncio.wait_for(
            self.store.web_session(
                session_hash(cookie),
                time.time(),
                console.session_idle,
                console.session_max,
            ),
            LOOKUP_TIMEOUT,
        )

    # --- cookies ------------------------------------------------------------------------

    @staticmethod
    def new_session_id() -> str:
        """A random 256-bit session id (RFC 4086), as the cookie's value."""
        return secrets.token_urlsafe(32)

    def set_cookie(self, response: web.StreamResponse, session_id: str) -> None:
        response.set_cookie(
            self.cookie,
            session_id,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="Strict",
            max_age=int(self.cfg.console.session_max),
        )

    def clear_cookie(self, response: web.StreamResponse) -> None:
        response.set_cookie(
            self.cookie,
            "",
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="Strict",
            max_age=0,
        )

    # --- CSRF ---------------------------------------------------------------------------

    def same_origin(self, request: web.Request) -> bool:
        """Whether a POST comes from this site's own pages (:mod:`relay.web.origin`)."""
        return same_origin(request, self.public_origin)

    @staticmethod
    def token_ok(session: WebSession, form: Any) -> bool:
        sent = form.get("csrf", "") if form is not None else ""
        return isinstance(sent, str) and hmac.compare_digest(
            sent.encode("utf-8", "replace"), session.csrf.encode()
        )

    # --- answers ------------------------------------------------------------------------

    def page(self, visit: Visit, template: str, status: int = 200, **context: Any) -> web.Response:
        session = visit.session
        account = session.account if session and session.stage == SessionStage.FULL else None
        body = render(
            f"app/{template}",
            visit.language,
            root=visit.root,
            static=visit.root + "static",
            account=account,
            csrf=session.csrf if session else "",
            can=(lambda action: account is not None and allowed(account.role, action)),
            Action=Action,
            languages=self.languages(visit.language),
            provider_name=self.cfg.provider.name,
            **context,
        )
        return web.Response(
            status=status, text=body, content_type="text/html", headers=PAGE_HEADERS
        )

    def refusal(self, visit: Visit, status: int, text: str, title: str = "") -> web.Response:
        """A page saying, in one sentence of the visitor's language, why not."""
        return self.page(
            visit,
            "message.html",
            status,
            title=visit.gettext(title or N_("Not possible")),
            text=visit.gettext(text),
        )

    def redirect(self, visit: Visit, target: str) -> web.Response:
        """303 to ``target``, a path relative to ``/app/``."""
        return web.Response(status=303, headers={**PAGE_HEADERS, "Location": visit.root + target})

    @staticmethod
    def languages(current: str) -> list[dict[str, Any]]:
        return [
            {"code": code, "name": LANGUAGE_NAMES[code], "current": code == current}
            for code in ("es", "ca", "it", "en")
            if code in LANGUAGES
        ]

    # --- the guard in front of every handler --------------------------------------------

    def guarded(
        self, handler: Handler, *, action: Action | None = None, public: bool = False
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """``handler`` behind the checks every console route makes: a POST from this
        site's pages with the session's token; a logged-in user (else, for a page, the
        login page; ``public``: none needed) who may do ``action``; the database's
        failures as a 503 page."""

        async def run(request: web.Request) -> web.StreamResponse:
            visit = Visit(request, self.reader(request, None), None)
            try:
                session = await self.session_of(request)
                visit = Visit(request, self.reader(request, session), session)
                if request.method == "POST":
                    form = await request.post()
                    if not self.same_origin(request) or (
                        not public and (session is None or not self.token_ok(session, form))
                    ):
                        log.warning(
                            "console: form refused from %s (origin or token)",
                            self.client(request),
                        )
                        return self.refusal(visit, 403, FORBIDDEN_FORM, N_("Form not accepted"))
                full = session is not None and session.stage == SessionStage.FULL
                if not public and not full:
                    if request.method == "POST":
                        return self.refusal(visit, 403, FORBIDDEN_FORM, N_("Form not accepted"))
                    owed = session is not None and session.stage == SessionStage.PASSWORD
                    return self.redirect(visit, "code" if owed else "login")
                if action is not None and (
                    session is None or not allowed(session.account.role, action)
                ):
                    return self.refusal(visit, 403, NOT_ALLOWED)
                return await handler(request, visit)
            except (StoreError, TimeoutError) as exc:
                log.error("console: the database did not answer (%s)", type(exc).__name__)
                response = self.refusal(visit, 503, UNAVAILABLE, N_("Temporarily unavailable"))
                response.headers["Retry-After"] = "60"
                return response

        return run
