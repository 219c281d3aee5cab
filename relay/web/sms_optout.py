"""The SMS opt-out page (docs/sms.md, "Contacts, consent and opt-out"):
``<public_url>/sms/optout``, the address every marketing SMS ends with (``[sms]
optout_text``), since nobody can reply to an alphanumeric sender ID.

- ``GET /sms/optout``: a form asking for the reader's number and the sender's name as
  the phone shows it.
- ``POST /sms/optout``: the number is opted out (``SmsOptOut``, how ``web``, with the
  client's address and user agent) of every organisation that sends as that name (its
  own sender ID or one of its users'), and, for the gateway's shared ``[sms] source``,
  of the organisations that sent an SMS to that number under it
  (:func:`relay.queue.contacts.sender_organisations`).

The answer is the same whether the number was a contact, had received anything, or
was opted out already, so the page tells nobody whom an organisation writes to. A
sender name no organisation uses is said so (sender IDs are public: every SMS shows
one). No SMS is sent from here (:mod:`relay.sms.optout`).

A POST must come from the page itself: the browser's ``Sec-Fetch-Site`` (else its
``Origin``, else its ``Referer``) names this site, and the form carries a token (an
HMAC of the time it was made under the gateway's key, valid :data:`FORM_SECONDS`).
Requests are counted per client (:mod:`relay.web.ratelimit`, ``[web] rate_limit``);
every text is rendered by the autoescaping templates in the reader's language.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web

from addendum.http import client_ip, reader_language, trusted_networks
from certifier.i18n import translations
from relay.config import Config
from relay.logs import printable
from relay.web.pages import LANGUAGE_NAMES, render
from relay.web.ratelimit import RateLimiter, client_key

__all__ = ["PATH", "OptOutPage", "install"]

log = logging.getLogger("certifica/sms")

PATH = "/sms/optout"
FORM_SECONDS = 3600.0
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
        self.trusted = trusted_networks(cfg.web.trusted_proxies)
        public = urlsplit(cfg.web.public_url)
        self.public_origin = f"{public.scheme}://{public.netloc}".lower()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(PATH, self.limited(self.form))
        app.router.add_post(PATH, self.limited(self.submit))

    def limited(self, handler: Any) -> Any:
        async def counted(request: web.Request) -> web.StreamResponse:
            wait = self.limiter.hit(client_key(self.ip(request)), time.monotonic())
            if wait is None:
                try:
                    return await handler(request)  # type: ignore[no-any-return]
                except (TimeoutError, OSError) as exc:
                    log.error("SMS opt-out page: not recorded (%s)", type(exc).__name__)
                    return self.page(
                        request,
                        503,
                        error=N_("Temporarily unavailable, please try again in a minute."),
                    )
            response = self.page(
                request,
                429,
                error=N_(
                    "Too many requests from your network address. Please try again in a minute."
                ),
            )
            response.headers["Retry-After"] = str(wait)
            return response

        return counted

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self.trusted)

    def form_key(self, issued: int | None = None) -> str:
        issued = int(time.time()) if issued is None else issued
        mac = hmac.new(self.key, f"sms-optout|{issued}".encode(), hashlib.sha256).hexdigest()
        return f"{issued}.{mac[:32]}"

    def form_ok(self, value: str) -> bool:
        issued = value.split(".")[0]
        if not issued.isdigit() or time.time() - int(issued) > FORM_SECONDS:
            return False
        return hmac.compare_digest(self.form_key(int(issued)), value)

    def same_origin(self, request: web.Request) -> bool:
        """Whether a POST comes from this site's pages (as the web console decides)."""
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None:
            return fetch_site == "same-origin"
        origin = request.headers.get("Origin")
        if origin is None or origin == "null":
            referer = request.headers.get("Referer")
            if not referer:
                return False
            parts = urlsplit(referer)
            origin = f"{parts.scheme}://{parts.netloc}"
        return origin.lower() in (self.public_origin, f"{request.scheme}://{request.host}".lower())

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
            every_sms=self.cfg.sms.optout_scope == "all",
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
        if not self.same_origin(request) or not self.form_ok(str(form.get("form", ""))):
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
