"""Logging in and out, the second factor, and the user's own page (docs/console.md).

The password is the gateway user's (:func:`relay.smtpd.users.check_password`: an unknown
user costs one scrypt like a wrong password, and both get the same sentence). Failures
count in the acceptor's :class:`relay.smtpd.protocol.AuthThrottle`, the one SMTP AUTH
counts in (``[limits] auth_block``, ``auth_block_window``, ``auth_delay``), per client
address: a client refused on SMTP is refused here, and the reverse. A wrong second-factor
code counts as a failure too, and also against its session and its user
(:func:`relay.queue.sessions.wrong_code`): after :data:`~relay.queue.sessions.SESSION_WRONG_CODES`
the session ends (back to the login, and its password), after
:data:`~relay.queue.sessions.ACCOUNT_WRONG_CODES` within ``[limits] auth_block_window`` the
user's codes are refused for that long, whatever address they come from.

Turning the second factor on or off, and making an app password, ask for the account
password again (a step-up): a session left open on a shared computer, or stolen, cannot
lock its user out nor mint a credential that outlives it. The account page lists the
user's app passwords (:mod:`relay.queue.app_passwords`) and revokes them.

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
from typing import Any

from aiohttp import web
from markupsafe import Markup

from relay.logs import printable
from relay.queue.sessions import ACCOUNT_WRONG_CODES, SessionStage
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
CODES_REFUSED = N_(
    "Too many wrong codes were typed for this account, so codes are refused for a while. "
    "Please try again later."
)
SESSION_CODES = N_("Too many wrong codes. Please log in again.")
WRONG_PASSWORD = N_("Your password is not right.")
DEVICE_NAME = N_("The name of the device must be 1 to 64 characters long.")
NAME_TAKEN = N_("You have an app password with this name already.")


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
        app.router.add_post("/app/account/app-passwords", c.guarded(self.add_app_password))
        app.router.add_post(
            "/app/account/app-passwords/revoke", c.guarded(self.revoke_app_password)
        )

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

    async def password_again(
        self, request: web.Request, visit: Visit, form: Any, what: str
    ) -> str | None:
        """The step-up: None when the form's ``password`` is the user's, else why not
        (a wrong one counts as a failed login from the client, as at the login)."""
        c = self.console
        if c.throttle.blocked(c.peer(request)):
            return BLOCKED
        address = visit.account.address
        stored = await c.store.user_hash(address)
        password = str(form.get("password", ""))[:1024]
        if await asyncio.to_thread(check_password, password, stored):
            return None
        await self.failed(request, f"password for {what} of <{address}>")
        return WRONG_PASSWORD

    async def refused_codes(self, visit: Visit, now: float) -> bool:
        return await self.console.store.codes_refused(visit.account.address, now)

    async def wrong_code(self, request: web.Request, visit: Visit, at_login: bool) -> bool:
        """Count a wrong code (the client, the session when ``at_login``, the user); True
        when the session ended with it."""
        c = self.console
        address = visit.account.address
        session = visit.session
        window = c.cfg.limits.auth_block_window
        counted = await c.store.wrong_code(
            session.id_hash if at_login and session else None, address, time.time(), window
        )
        if counted.codes_refused:
            log.warning(
                "console: second-factor codes of <%s> refused for %ds after %d wrong ones",
                address,
                window,
                ACCOUNT_WRONG_CODES,
            )
        await self.failed(request, f"second factor of <{address}>")
        return counted.session_ended

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
        now = time.time()
        if await self.refused_codes(visit, now):
            return c.page(visit, "code.html", 429, error=visit.gettext(CODES_REFUSED))
        address = session.account.address
        secret = await c.store.totp_of(address)
        step = totp.matching_step(secret[0], str(form.get("code", "")), now) if secret else None
        if step is None:
            if await self.wrong_code(request, visit, at_login=True):
                response = self.login_form(Visit(request, visit.reader, None), 401, SESSION_CODES)
                c.clear_cookie(response)
                return response
            if await self.refused_codes(visit, now):
                return c.page(visit, "code.html", 429, error=visit.gettext(CODES_REFUSED))
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
            "revoked": N_("The app password was revoked: that device can no longer send."),
        }.get(request.query.get("done", ""), "")
        return await self.account_page(visit, note=visit.gettext(note) if note else "")

    async def account_page(
        self, visit: Visit, status: int = 200, **context: Any
    ) -> web.StreamResponse:
        """The account page: the second factor, and the user's app passwords."""
        when = visit.reader.short_moment
        devices = [
            {
                "name": device.name,
                "created": when(device.created),
                "last_used": when(device.last_used) if device.last_used is not None else "",
            }
            for device in await self.console.store.app_passwords_of(visit.account.address)
        ]
        context.setdefault("error", "")
        return self.console.page(visit, "account.html", status, devices=devices, **context)

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
        """Turn the second factor on: the account password, the secret shown (sent back
        in the form) and a code it gives now; only then is it stored."""
        c = self.console
        form = await request.post()
        secret = str(form.get("secret", ""))
        if not totp.SECRET.fullmatch(secret):
            return c.refusal(visit, 400, N_("The form was incomplete. Please start again."))
        refused = await self.password_again(request, visit, form, "the second factor")
        if refused is not None:
            return self.enrol_form(visit, secret, 429 if refused == BLOCKED else 403, refused)
        now = time.time()
        step = totp.matching_step(secret, str(form.get("code", "")), now)
        if step is None:
            return self.enrol_form(visit, secret, 400, WRONG_CODE)
        address = visit.account.address
        await c.store.set_totp(address, secret, step, now)
        log.info("console: <%s> turned the second factor on", address)
        return await self.begin(request, visit, address, SessionStage.FULL, "account?done=on")

    async def turn_off(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Turn the second factor off: only with the account password and a code it gives
        now (counted, when wrong, as at the login, but for the user only)."""
        c = self.console
        form = await request.post()
        address = visit.account.address
        secret = await c.store.totp_of(address)
        if secret is None:
            return c.redirect(visit, "account")
        refused = await self.password_again(request, visit, form, "the second factor")
        if refused is not None:
            status = 429 if refused == BLOCKED else 403
            return await self.account_page(visit, status, error=visit.gettext(refused))
        now = time.time()
        if await self.refused_codes(visit, now):
            return await self.account_page(visit, 429, error=visit.gettext(CODES_REFUSED))
        step = totp.matching_step(secret[0], str(form.get("code", "")), now)
        if step is None or not await c.store.accept_totp_step(address, step):
            await self.wrong_code(request, visit, at_login=False)
            return await self.account_page(visit, 400, error=visit.gettext(WRONG_CODE))
        await c.store.set_totp(address, None, None, now)
        log.info("console: <%s> turned the second factor off", address)
        return await self.begin(request, visit, address, SessionStage.FULL, "account?done=off")

    # --- the user's own page: app passwords -----------------------------------------------

    async def add_app_password(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Make an app password for one device, with the account password: the secret is
        on this answer only (only its hash is kept)."""
        c = self.console
        form = await request.post()
        name = " ".join(str(form.get("name", "")).split())
        if not name or len(name) > 64 or not name.isprintable():
            return await self.account_page(visit, 400, error=visit.gettext(DEVICE_NAME))
        refused = await self.password_again(request, visit, form, "an app password")
        if refused is not None:
            status = 429 if refused == BLOCKED else 403
            return await self.account_page(visit, status, error=visit.gettext(refused))
        address = visit.account.address
        secret = await c.store.new_app_password(address, name, time.time())
        if secret is None:
            return await self.account_page(visit, 409, error=visit.gettext(NAME_TAKEN))
        log.info(
            "console: <%s> made the app password %s from %s",
            address,
            printable(repr(name)),
            c.client(request),
        )
        return await self.account_page(visit, new_device=name, new_secret=secret)

    async def revoke_app_password(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Revoke one of the user's own app passwords (by name)."""
        c = self.console
        form = await request.post()
        name = str(form.get("name", ""))[:64]
        address = visit.account.address
        if await c.store.revoke_app_password(address, name):
            log.info("console: <%s> revoked the app password %s", address, printable(repr(name)))
        return c.redirect(visit, "account?done=revoked")
