"""The SMS opt-out page (docs/sms.md, "Contacts, consent and opt-out"):
``<public_url>/sms/optout``, the address every marketing SMS ends with (``[sms]
optout_text``), since nobody can reply to an alphanumeric sender ID.

- ``GET /sms/optout``: a form asking for the reader's number and the sender's name as
  the phone shows it.
- ``POST /sms/optout``: the number is opted out (``SmsOptOut``, how ``web``, with the
  client's address and user agent) of the organisations that sent it an SMS under that
  name (:func:`relay.queue.contacts.sender_organisations`), and of no other: anyone can
  type anyone's number, so the page records an opt-out only where a message went. For
  the same reason a web opt-out stops marketing only, even with ``[sms] optout_scope =
  "all"`` (:func:`relay.queue.contacts.optout_stops`): a page cannot prove who owns a
  number, a reply STOP from the phone can.

The answer is the same whether the number was a contact, had received anything, or
was opted out already, so the page tells nobody whom an organisation writes to. A
sender name that is no sender ID of this gateway (not the shared ``[sms] source``, no
organisation's or user's, none any SMS was sent under) is said so, decided without
looking at the number. No SMS is sent from here (:mod:`relay.sms.optout`).

A POST must come from the page itself: the browser's ``Sec-Fetch-Site`` (else its
``Origin``, else its ``Referer``) names this site, and the form carries a token (an
HMAC under the gateway's key of the time it was made and a random nonce, valid
:data:`FORM_SECONDS`) that is taken once: its nonce is recorded as used in the
queue's database (``sms_optout_forms``, forgotten once the token has expired), which
every acceptor process shares. Requests are counted per client
(:mod:`relay.web.ratelimit`, ``[web] rate_limit``), and opt-outs also per sender name
(:data:`PER_SENDER`) and per number (:data:`PER_NUMBER`) a minute from all clients
together (each acceptor process counting its own, as for ``rate_limit``), so many
clients together cannot sweep numbers under one name either. Every text is rendered by
the autoescaping templates in the reader's language.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from addendum.http import client_ip, reader_language, trusted_networks
from certifier.i18n import translations
from relay.config import Config
from relay.logs import printable
from relay.web.origin import same_origin
from relay.web.pages import LANGUAGE_NAMES, render
from relay.web.ratelimit import RateLimiter
from relay.web.ratelimit import limited as rate_limited

__all__ = ["PATH", "OptOutPage", "install"]

log = logging.getLogger("certifica/sms")

PATH = "/sms/optout"
FORM_SECONDS = 3600.0
PER_SENDER = 120
"""Opt-outs a minute under one sender name, from all clients together."""
PER_NUMBER = 6
"""Opt-outs a minute of one number, from all clients together."""
LOOKUP_TIMEOUT = 5.0
MAX_FIELD = 40

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: Chromium then sends the form's real Origin
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Vary": "Accept-Language",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
}


def N_(message: str) -> str:
    """Marks ``message`` for the ``web`` catalog; translated where it is shown."""
    return message


class OptOutRecords(Protocol):
    """What the page writes (the queue's store, :mod:`relay.queue.contacts`)."""

    async def web_optout(
        self,
        sender: str,
        number: str,
        domain: str,
        shared: str,
        now: float,
        detail: dict[str, Any],
    ) -> list[str] | None: ...

    async def take_optout_form(self, nonce: str, expires: float, now: float) -> bool: ...


def install(app: web.Application, cfg: Config, records: OptOutRecords, key: bytes) -> None:
    """Add ``/sms/optout`` to ``app`` (the public HTTP listener's)."""
    OptOutPage(cfg, records, key).add_routes(app)


class OptOutPage:
    """The handlers of ``/sms/optout``, sharing one rate limiter."""

    def __init__(self, cfg: Config, records: OptOutRecords, key: bytes) -> None:
        self.cfg = cfg
        self.records = records
        self.key = key
        self.limiter = RateLimiter(cfg.web.rate_limit)
        self.per_sender = RateLimiter(PER_SENDER)
        self.per_number = RateLimiter(PER_NUMBER)
        self.trusted = trusted_networks(cfg.web.trusted_proxies)
        public = urlsplit(cfg.web.public_url)
        self.public_origin = f"{public.scheme}://{public.netloc}".lower()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.limited(self.form))
        app.router.add_post(PATH, self.limited(self.submit))

    def limited(self, handler: Any) -> Any:
        return rate_limited(
            self.limiter, self.ip, handler, self.refusal, log, "SMS opt-out page: not recorded"
        )

    def refusal(self, request: web.Request, status: int) -> web.Response:
        """The page of a request refused: too many (429), or the records out of reach (503)."""
        if status == 429:
            error = N_("Too many requests from your network address. Please try again in a minute.")
        else:
            error = N_("Temporarily unavailable, please try again in a minute.")
        return self.page(request, status, error=error)

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self.trusted)

    def form_key(self, issued: int | None = None, nonce: str | None = None) -> str:
        """A form token: ``issued.nonce.mac``."""
        issued = int(time.time()) if issued is None else issued
        nonce = secrets.token_hex(12) if nonce is None else nonce
        mac = hmac.new(
            self.key, f"sms-optout|{issued}|{nonce}".encode(), hashlib.sha256
        ).hexdigest()
        return f"{issued}.{nonce}.{mac[:32]}"

    async def form_ok(self, value: str) -> bool:
        """Whether ``value`` is a token this page made, not expired and not used yet;
        a good one is used up by this call (recorded in the queue's database, so every
        acceptor process knows)."""
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[1]) != 24:
            return False
        issued, nonce = int(parts[0]), parts[1]
        now = time.time()
        if now - issued > FORM_SECONDS or issued - now > 60:
            return False
        if not hmac.compare_digest(self.form_key(issued, nonce), value):
            return False
        return await asyncio.wait_for(
            self.records.take_optout_form(nonce, issued + FORM_SECONDS, now), LOOKUP_TIMEOUT
        )

    def same_origin(self, request: web.Request) -> bool:
        """Whether a POST comes from this site's own pages (:mod:`relay.web.origin`)."""
        return same_origin(request, self.public_origin)

    def page(
        self,
        request: web.Request,
        status: int = 200,
        *,
        error: str = "",
        number: str = "",
        sender: str = "",
        done: bool = False,
        error_args: dict[str, str] | None = None,
    ) -> web.Response:
        language = reader_language(request, self.cfg.gateway.language)
        gettext = translations(language, "web").gettext
        body = render(
            "sms/optout.html",
            language,
            title=gettext("Stop SMS from a sender"),
            error=gettext(error) % (error_args or {}) if error else "",
            number=number,
            sender=sender,
            done=done,
            form=self.form_key(),
            lang=language,
            static="/v/static",
            languages=[
                {"code": code, "name": name, "current": code == language}
                for code, name in LANGUAGE_NAMES.items()
            ],
        )
        return web.Response(
            status=status,
            body=body.encode("utf-8"),
            content_type="text/html",
            charset="utf-8",
            headers=PAGE_HEADERS,
        )

    async def form(self, request: web.Request) -> web.Response:
        return self.page(request)

    async def submit(self, request: web.Request) -> web.Response:
        from relay.sms.numbers import NumberRefused, parse_number, sms_domain

        form = await request.post()
        typed_number = " ".join(str(form.get("number", "")).split())[:MAX_FIELD]
        sender = " ".join(str(form.get("sender", "")).split())[:MAX_FIELD]
        if not self.same_origin(request) or not await self.form_ok(str(form.get("form", ""))):
            return self.page(
                request,
                403,
                error=N_("This form has expired or was not sent from this page. Please try again."),
                number=typed_number,
                sender=sender,
            )
        found = parse_number(typed_number, self.cfg.sms.default_region)
        if isinstance(found, NumberRefused):
            return self.page(
                request,
                400,
                error=N_(
                    "That is not a mobile number. Please write it as your phone shows it, "
                    "with the country code if it is not a %(country)s number."
                ),
                error_args={"country": self.cfg.sms.default_region},
                number=typed_number,
                sender=sender,
            )
        if not sender:
            return self.page(
                request,
                400,
                error=N_("Please write the sender's name as your phone shows it."),
                number=typed_number,
            )
        moment = time.monotonic()
        wait = self.per_number.hit(found.e164, moment) or self.per_sender.hit(
            sender.casefold(), moment
        )
        if wait is not None:
            response = self.page(
                request,
                429,
                error=N_(
                    "Too many requests for this number or sender. Please try again in a minute."
                ),
                number=typed_number,
                sender=sender,
            )
            response.headers["Retry-After"] = str(wait)
            return response
        detail = {"ip": self.ip(request), "user_agent": request.headers.get("User-Agent", "")[:300]}
        orgs = await asyncio.wait_for(
            self.records.web_optout(
                sender,
                found.e164,
                sms_domain(self.cfg.gateway.domain),
                self.cfg.sms.source,
                time.time(),
                detail,
            ),
            LOOKUP_TIMEOUT,
        )
        if orgs is None:
            return self.page(
                request,
                404,
                error=N_(
                    "No sender of this service is called %(sender)s. Please check the name as "
                    "your phone shows it (capitals do not matter)."
                ),
                error_args={"sender": sender},
                number=typed_number,
                sender=sender,
            )
        log.info(
            "SMS opt-out page: a number opted out of %d organisation(s) sending as %s",
            len(orgs),
            printable(sender, 40),
        )
        return self.page(request, number=found.e164, sender=sender, done=True)
