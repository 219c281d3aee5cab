"""Logging in and out, the second factor, and the user's own page (docs/console.md).

The password is the gateway user's (:func:`relay.smtpd.users.check_password`: an unknown
user costs one scrypt like a wrong password, and both get the same sentence). Failures
count in the acceptor's :class:`relay.smtpd.protocol.AuthThrottle`, the one SMTP AUTH
counts in (``[limits] auth_block``, ``auth_block_window``, ``auth_delay``), per client
address: a client refused on SMTP is refused here, and the reverse. A wrong second-factor
code counts as a failure too.

Every login begins a new session with a new id, whatever cookie the browser came with
(that one is deleted: a cookie planted before the login never becomes the session), and
so does the second factor: the ``password`` session that owed it is replaced by a
``full`` one. Turning the second factor on or off ends the user's other sessions.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from aiohttp import web
from markupsafe import Markup

from relay.queue.sessions import SessionStage
from relay.smtpd.protocol import AUTH_DELAY_CAP
from relay.smtpd.users import check_password, normalise_address
from relay.web.console import totp
from relay.web.console.base import N_, Console, Visit, session_hash
from relay.web.pages import qr_svg

log = logging.getLogger("certifica/console")

CODE_STAGE_SECONDS = 300.0
"""How long a session may wait for its second factor after the password."""

WRONG_LOGIN = N_("The address or the password is not right.")
BLOCKED = N_(
    "Too many failed attempts from your network address. Please try again in a few minutes."
)
DISABLED = N_("This account is disabled. Please ask your organisation's administrator.")
WRONG_CODE = N_("This code is not right. Type the six digits your app shows now.")
USED_CODE = N_("This code has been used already. Please wait for the next one.")


class Login:
    """The login, second factor and logout routes, and the user's own page."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def add_routes(self, app: web.Application) -> None:
        c = self.console
        app.router.add_get("/app/login", c.guarded(self.login_page, public=True))
        app.router.add_post("/app/login", c.guarded(self.login, public=True))
        app.router.add_get("/app/code", c.guarded(self.code_page, public=True))
        app.router.add_post("/app/code", c.guarded(self.code, public=True))
        app.router.add_post("/app/logout", c.guarded(self.logout))
        app.router.add_get("/app/account", c.guarded(self.account))
        app.router.add_get("/app/account/totp", c.guarded(self.enrol_page))
        app.router.add_post("/app/account/totp", c.guarded(self.enrol))
        app.router.add_post("/app/account/totp/off", c.guarded(self.turn_off))

    # --- helpers --------------------------------------------------------------------------

    async def failed(self, request: web.Request, what: str) -> None:
        """Count a failure against the client, as SMTP AUTH does, and make it wait."""
        c = self.console
        peer = c.peer(request)
        recent = c.throttle.failed(peer)
        log.warning("console: %s failed from %s (%d recently)", what, peer[0], recent)
        await asyncio.sleep(min(c.cfg.limits.auth_delay * recent, AUTH_DELAY_CAP))

    async def begin(
        self, request: web.Request, visit: Visit, address: str, stage: str, target: str
    ) -> web.Response:
        """A new session for ``address`` (a new id), replacing the browser's; 303 to
        ``target`` with its cookie."""
        c = self.console
        session_id = c.new_session_id()
        presented = request.cookies.get(c.cookie, "")
        await c.store.begin_session(
            session_hash(session_id),
            address,
            secrets.token_urlsafe(32),
            stage,
            time.time(),
            c.client(request),
            request.headers.get("User-Agent", ""),
            replaces=session_hash(presented) if presented else None,
            idle=c.cfg.console.session_idle,
            longest=c.cfg.console.session_max,
        )
        response = c.redirect(visit, target)
        c.set_cookie(response, session_id)
        return response

    def login_form(
        self, visit: Visit, status: int = 200, error: str = "", note: str = ""
    ) -> web.Response:
        return self.console.page(
            visit,
            "login.html",
            status,
            error=visit.gettext(error) if error else "",
            note=visit.gettext(note) if note else "",
        )

    # --- login ----------------------------------------------------------------------------

    async def login_page(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        if visit.session is not None and visit.session.stage == SessionStage.FULL:
            return self.console.redirect(visit, "certificates")
        note = N_("You have logged out.") if request.query.get("out") else ""
        return self.login_form(visit, note=note)

    async def login(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        if c.throttle.blocked(c.peer(request)):
            log.warning("console: login refused: too many failures from %s", c.client(request))
            return self.login_form(visit, 429, BLOCKED)
        form = await request.post()
        address = normalise_address(str(form.get("address", "")))[:320]
        password = str(form.get("password", ""))[:1024]
        stored = await c.store.user_hash(address) if address else None
        ok = await asyncio.to_thread(check_password, password, stored)
        account = await c.store.account(address) if ok else None
        if account is None:
            await self.failed(request, "login")
            return self.login_form(visit, 401, WRONG_LOGIN)
        if not account.active:
            return self.login_form(visit, 403, DISABLED)
        log.info("console: <%s> logged in from %s", address, c.client(request))
        if account.totp:
            return await self.begin(request, visit, address, SessionStage.PASSWORD, "code")
        return await self.begin(request, visit, address, SessionStage.FULL, "certificates")

    # --- the second factor at login -------------------------------------------------------

    def owes_code(self, visit: Visit) -> bool:
        session = visit.session
        return (
            session is not None
            and session.stage == SessionStage.PASSWORD
            and time.time() - session.created < CODE_STAGE_SECONDS
        )

    async def code_page(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        if not self.owes_code(visit):
            return self.console.redirect(visit, "login")
        return self.console.page(visit, "code.html")

    async def code(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        form = await request.post()
        session = visit.session
        if session is None or not self.owes_code(visit) or not c.token_ok(session, form):
            return c.refusal(visit, 403, N_("Your session has ended. Please log in again."))
        if c.throttle.blocked(c.peer(request)):
            return c.page(visit, "code.html", 429, error=visit.gettext(BLOCKED))
        address = session.account.address
        secret = await c.store.totp_of(address)
        step = (
            totp.matching_step(secret[0], str(form.get("code", "")), time.time())
            if secret
            else None
        )
        if step is None:
            await self.failed(request, f"second factor of <{address}>")
            return c.page(visit, "code.html", 401, error=visit.gettext(WRONG_CODE))
        if not await c.store.accept_totp_step(address, step):
            await self.failed(request, f"second factor (a code used already) of <{address}>")
            return c.page(visit, "code.html", 401, error=visit.gettext(USED_CODE))
        return await self.begin(request, visit, address, SessionStage.FULL, "certificates")

    async def logout(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        if visit.session is not None:
            await c.store.end_session(visit.session.id_hash)
        response = c.redirect(visit, "login?out=1")
        c.clear_cookie(response)
        return response

    # --- the user's own page: the second factor -------------------------------------------

    async def account(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        note = {
            "on": N_("The second factor is on."),
            "off": N_("The second factor is off."),
        }.get(request.query.get("done", ""), "")
        return self.console.page(visit, "account.html", note=visit.gettext(note) if note else "")

    def enrol_form(
        self, visit: Visit, secret: str, status: int = 200, error: str = ""
    ) -> web.Response:
        c = self.console
        uri = totp.provisioning_uri(secret, visit.account.address, c.cfg.console.totp_issuer)
        return c.page(
            visit,
            "enrol.html",
            status,
            secret=secret,
            secret_groups=[secret[i : i + 4] for i in range(0, len(secret), 4)],
            qr=Markup(qr_svg(uri)),  # noqa: S704 - our own SVG: numbers only
            error=visit.gettext(error) if error else "",
        )

    async def enrol_page(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        if visit.account.totp:
            return self.console.redirect(visit, "account")
        return self.enrol_form(visit, totp.new_secret())

    async def enrol(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Turn the second factor on: the secret shown (sent back in the form) and a code
        it gives now; only then is it stored."""
        c = self.console
        form = await request.post()
        secret = str(form.get("secret", ""))
        if not totp.SECRET.fullmatch(secret):
            return c.refusal(visit, 400, N_("The form was incomplete. Please start again."))
        now = time.time()
        step = totp.matching_step(secret, str(form.get("code", "")), now)
        if step is None:
            return self.enrol_form(visit, secret, 400, WRONG_CODE)
        address = visit.account.address
        await c.store.set_totp(address, secret, step, now)
        log.info("console: <%s> turned the second factor on", address)
        return await self.begin(request, visit, address, SessionStage.FULL, "account?done=on")

    async def turn_off(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Turn the second factor off: only with a code it gives now."""
        c = self.console
        form = await request.post()
        address = visit.account.address
        secret = await c.store.totp_of(address)
        if secret is None:
            return c.redirect(visit, "account")
        now = time.time()
        step = totp.matching_step(secret[0], str(form.get("code", "")), now)
        if step is None or not await c.store.accept_totp_step(address, step):
            await self.failed(request, f"second factor of <{address}>")
            return c.page(visit, "account.html", 400, error=visit.gettext(WRONG_CODE))
        await c.store.set_totp(address, None, None, now)
        log.info("console: <%s> turned the second factor off", address)
        return await self.begin(request, visit, address, SessionStage.FULL, "account?done=off")
