"""The tracking endpoint: the open pixel and the click redirect, over HTTP.

Routes (RFC 9110 methods GET and HEAD only):

- ``/o/<token>``: a 1x1 transparent GIF (``Cache-Control: no-store``, so every open
  reaches us); records an ``open``. The token's link must be 0.
- ``/c/<token>``: ``302 Found`` to exactly the URL recorded for that link when the
  message was rewritten (:func:`addendum.inject.inject`); records a ``click``. The
  stored URL is checked again (:func:`addendum.inject.is_safe_redirect`) before it is
  sent: an absolute http(s) URL, no CR/LF or space, no user info. So the endpoint can
  only ever send a browser where the original message pointed (no open redirect).

Everything else answers the same ``404``, byte for byte: unknown paths, other methods,
malformed tokens, tokens with a bad MAC, a link token on ``/o``, the pixel token on
``/c``, a link the backend does not know, a stored URL that fails the check. So the
endpoint tells an attacker nothing about which tokens exist.

All answers carry ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``
(the token must not leak to the target site) and ``Cache-Control: no-store``.

The client address is the TCP peer. ``X-Forwarded-For`` is believed only when the peer
is one of ``trusted_proxies`` (CIDR networks); then the right-most address that is not a
trusted proxy is the client (the left part of the header is whatever the client wrote).
The user agent is cut at 500 characters and stripped of control characters.

The few sentences a person may read here (the 404, the 503) are in the visitor's
language: :func:`reader_language` picks one of :data:`certifier.i18n.LANGUAGES` from a
``?lang=`` parameter, else the ``Accept-Language`` field (RFC 9110 section 12.5.4), else
the gateway's language; the texts come from the ``web`` gettext catalog. Every 404 of one
request is still the same byte for byte: the language depends on the request's own fields,
never on whether a token exists.

Errors, as the recipient sees them:

- ``backend.record`` fails or is slow (over 5 s): the image or redirect is answered
  anyway (the recipient must not notice); one log line, no traceback.
- ``backend.link_url`` fails or is slow: ``503`` with ``Retry-After`` (we do not know
  where to send them), one log line. Only reachable with a genuine token.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from addendum.inject import is_safe_redirect
from addendum.tokens import MAX_TOKEN_CHARS, TokenCodec, TokenData
from certifier.i18n import LANGUAGES, translations

__all__ = [
    "PIXEL_GIF",
    "TrackingBackend",
    "TrackingEvent",
    "client_ip",
    "make_app",
    "reader_language",
    "trusted_networks",
]

log = logging.getLogger("certifica.addendum")

MAX_USER_AGENT = 500
MAX_FORWARDED_HOPS = 32
BACKEND_TIMEOUT = 5.0

# 1x1 transparent GIF89a: a one-entry colour table and a transparency extension.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_ACCEPT_LANGUAGE = 500
_UA_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SURROGATES = re.compile("[\ud800-\udfff]")
_TOKEN_ROUTE = f"{{token:[A-Za-z0-9_-]{{1,{MAX_TOKEN_CHARS}}}}}"


@dataclass(frozen=True)
class TrackingEvent:
    """One open or click, as received (classification is done by whoever stores it)."""

    kind: str  # "open" | "click"
    qid: str
    recipient_id: int
    link: int
    url: str | None
    time: float
    ip: str
    user_agent: str
    method: str  # "GET" | "HEAD"


class TrackingBackend(Protocol):
    """Where links come from and events go (the gateway's database)."""

    async def link_url(self, qid: str, recipient_id: int, link: int) -> str | None: ...

    async def record(self, event: TrackingEvent) -> None: ...


def _(message: str) -> str:
    """Marks a text of the ``web`` catalog; translated where it is answered."""
    return message


def reader_language(request: web.Request, default: str = "en") -> str:
    """The language to answer ``request`` in: ``?lang=`` when it names one of
    :data:`~certifier.i18n.LANGUAGES`, else the best of ``Accept-Language`` (RFC 9110
    section 12.5.4: the highest weight wins, ties in the order written; ``es-ES`` counts
    as ``es``), else ``default``."""
    asked = request.query.get("lang", "")
    if asked in LANGUAGES:
        return asked
    best, best_q = default, 0.0
    for item in request.headers.get("Accept-Language", "")[:MAX_ACCEPT_LANGUAGE].split(","):
        tag, _sep, params = item.strip().partition(";")
        primary = tag.strip().lower().split("-", 1)[0]
        q = 1.0
        for param in params.split(";"):
            name, _eq, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best


def _text(language: str, message: str) -> str:
    return translations(language, "web").gettext(message)


def _not_found(language: str) -> web.Response:
    return web.Response(
        status=404,
        text=_text(language, _("Not found")) + "\n",
        content_type="text/plain",
        charset="utf-8",
    )


def _clean_user_agent(value: str) -> str:
    """At most 500 characters, no controls, bidi overrides or surrogates (from bad UTF-8)."""
    value = value[: MAX_USER_AGENT * 4].replace("\t", " ")
    value = _SURROGATES.sub("\ufffd", _UA_UNSAFE.sub("", value))
    return value[:MAX_USER_AGENT].strip()


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]  # "[2001:db8::1]:443"
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # "192.0.2.1:443"
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted_networks(trusted_proxies: Sequence[str]) -> tuple[Network, ...]:
    """``[web] trusted_proxies`` as networks, for :func:`client_ip`."""
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)


def client_ip(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The client's address (see the module docstring); "" when the peer is unknown."""
    peer = _address(request.remote or "")
    if peer is None:
        return ""
    if not trusted or not any(peer in net for net in trusted):
        return str(peer)
    hops: list[str] = []
    for value in request.headers.getall("X-Forwarded-For", []):
        hops.extend(value.split(","))
    client = peer
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        address = _address(hop)
        if address is None:
            break  # garbage: the last trusted hop is the best we know
        client = address
        if not any(address in net for net in trusted):
            break
    return str(client)


def make_app(
    codec: TokenCodec,
    backend: TrackingBackend,
    trusted_proxies: Sequence[str] = (),
    language: str = "en",
) -> web.Application:
    """The tracking web application (mount it on the gateway's HTTP listener);
    ``language`` is the one to answer in when the visitor's is not one of ours."""
    trusted = trusted_networks(trusted_proxies)

    @web.middleware
    async def uniform_answers(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if not 400 <= exc.status < 500:
                raise
            # the router's 404 and 405: the same missing page
            response = _not_found(reader_language(request, language))
        response.headers.update(_SECURITY_HEADERS)
        return response

    def event(request: web.Request, kind: str, data: TokenData, url: str | None) -> TrackingEvent:
        return TrackingEvent(
            kind=kind,
            qid=data.qid,
            recipient_id=data.recipient_id,
            link=data.link,
            url=url,
            time=time.time(),
            ip=client_ip(request, trusted),
            user_agent=_clean_user_agent(request.headers.get("User-Agent", "")),
            method=request.method,
        )

    async def record(item: TrackingEvent) -> None:
        try:
            await asyncio.wait_for(backend.record(item), BACKEND_TIMEOUT)
        except Exception as exc:  # the recipient must not notice; the operator must
            log.error(
                "%s: tracking %s of recipient %d link %d not recorded (%s)",
                item.qid, item.kind, item.recipient_id, item.link, type(exc).__name__,
            )  # fmt: skip
            log.debug("traceback", exc_info=exc)

    async def open_pixel(request: web.Request) -> web.StreamResponse:
        data = codec.read(request.match_info["token"])
        if data is None or data.link != 0:
            return _not_found(reader_language(request, language))
        await record(event(request, "open", data, None))
        return web.Response(body=PIXEL_GIF, content_type="image/gif")

    async def click(request: web.Request) -> web.StreamResponse:
        data = codec.read(request.match_info["token"])
        if data is None or data.link == 0:
            return _not_found(reader_language(request, language))
        try:
            url = await asyncio.wait_for(
                backend.link_url(data.qid, data.recipient_id, data.link), BACKEND_TIMEOUT
            )
        except Exception as exc:
            log.error(
                "%s: tracking link %d of recipient %d not looked up (%s)",
                data.qid, data.link, data.recipient_id, type(exc).__name__,
            )  # fmt: skip
            log.debug("traceback", exc_info=exc)
            return web.Response(
                status=503,
                text=_text(
                    reader_language(request, language),
                    _("Temporarily unavailable, please try again in a minute."),
                )
                + "\n",
                headers={"Retry-After": "60"},
            )
        if url is None:
            return _not_found(reader_language(request, language))
        if not is_safe_redirect(url):
            log.warning(
                "%s: stored URL of link %d of recipient %d refused: not a safe redirect",
                data.qid, data.link, data.recipient_id,
            )  # fmt: skip
            return _not_found(reader_language(request, language))
        await record(event(request, "click", data, url))
        return web.Response(status=302, headers={"Location": url})

    app = web.Application(middlewares=[uniform_answers])
    app.router.add_get("/o/" + _TOKEN_ROUTE, open_pixel)
    app.router.add_get("/c/" + _TOKEN_ROUTE, click)
    return app
