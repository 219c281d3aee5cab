"""The web console (``<public_url>/app/``): where an organisation's users log in to find
their certificates again, see the balance and the statement, and where its admins
manage users and domains (README, "The web console"; docs/console.md).

Server-rendered HTML (Jinja2, autoescaped, :mod:`relay.web.pages`) in the user's
language, without any script: the pages' Content-Security-Policy allows none. Routes,
on the public HTTP listener (``[console] enabled``):

============================  ==================================================  =========
route                         what                                                who
============================  ==================================================  =========
``GET|POST /app/login``       the password (:mod:`.login`)                        anyone
``GET|POST /app/code``        the second factor, when the user has one            anyone
``POST /app/logout``          ends the session                                    logged in
``GET /app/account``          the user's own page: the second factor (TOTP), its  logged in
                              app passwords (list, make, revoke)
``GET /app/certificates``     search by date, recipient, subject, status          logged in
``GET /app/certificates/ID``  one document; ``.../pdf`` downloads it again        its viewers
``GET /app/balance``          the organisation's credits                          ``see-balance``
``GET /app/statement[.csv]``  a month's movements                                 ``see-statement``
``GET|POST /app/users``       add, disable, enable, reset users                   ``manage-users``
``GET|POST /app/domains``     bind and unbind domains                             ``bind-domains``
============================  ==================================================  =========

Security, in one place (:mod:`.base`, :mod:`.login`): sessions of a random 256-bit id
whose SHA-256 alone is stored (:mod:`relay.queue.sessions`), a new id at login and after
the second factor, idle and absolute expiry, an ``HttpOnly`` ``SameSite=Strict`` cookie
(``__Host-``/``Secure`` under an https or loopback ``public_url``); every POST from this
site's own pages (``Sec-Fetch-Site``, else ``Origin``) with the session's CSRF token; login failures counted with SMTP
AUTH's, per client address (the acceptor's :class:`relay.smtpd.protocol.AuthThrottle`).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.config import Config
from relay.queue.store import Store
from relay.smtpd.protocol import AuthThrottle
from relay.web.console.admin import Admin
from relay.web.console.base import N_, PAGE_HEADERS, STATIC_FILES, Console, Visit
from relay.web.console.login import Login
from relay.web.console.views import Views

__all__ = ["install"]


def install(
    app: web.Application, cfg: Config, store: Store, throttle: AuthThrottle, archive: Path
) -> None:
    """Add the console's routes to ``app`` (the public HTTP listener's) when
    ``[console] enabled``; ``throttle`` counts failed logins with SMTP AUTH's,
    ``archive`` is where the issued PDFs are kept."""
    if not cfg.console.enabled:
        return
    console = Console(cfg, store, throttle, archive)
    Login(console).add_routes(app)
    Views(console).add_routes(app)
    Admin(console).add_routes(app)

    async def static_file(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound
        return web.Response(
            body=console.static[name],
            content_type=STATIC_FILES[name],
            charset="utf-8",
            headers={**PAGE_HEADERS, "Cache-Control": "max-age=3600"},
        )

    async def not_found(request: web.Request, visit: Visit) -> web.StreamResponse:
        return console.refusal(
            visit, 404, N_("There is no such page in the console."), N_("Not found")
        )

    async def own_referrer_policy(request: web.Request, response: web.StreamResponse) -> None:
        # The listener's middleware gives every answer "Referrer-Policy: no-referrer"
        # (addendum.http: a tracking token must not leak); under it a browser's form
        # sends "Origin: null", so the console's pages say same-origin instead.
        if request.path.startswith("/app/"):
            response.headers["Referrer-Policy"] = PAGE_HEADERS["Referrer-Policy"]

    app.on_response_prepare.append(own_referrer_policy)
    app.router.add_get("/app/static/{name}", static_file)
    app.router.add_route("*", "/app/{rest:.*}", console.guarded(not_found, public=True))
