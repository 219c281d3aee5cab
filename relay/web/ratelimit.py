"""``[web] rate_limit``: how many requests per minute one client may make to the public
pages (README, "Verifying a certificate").

A client is its address as :func:`addendum.http.client_ip` determines it (the TCP peer,
or the ``X-Forwarded-For`` hop behind ``[web] trusted_proxies``); an IPv6 client is its
/56 network: RFC 6177 recommends giving a subscriber more than a /64, usually a /56
(a /48 for some), so counting by /64 would let one home multiply the limit by 256. A
/56 keeps a client from walking through the networks of its own delegation, at the cost
of counting together the few subscribers an operator packs into one /56.

The limit is the generic cell rate algorithm (GCRA, ITU-T I.371), the "leaky bucket as a
meter": one number per client, the time at which its bucket is empty again. A client may
send ``rate`` requests at once, then one more every ``60 / rate`` seconds; a refused
request does not count. Memory is one float per client seen in the last minute, and at
most :data:`MAX_CLIENTS` of them.

Each acceptor process keeps its own counters (ARCHITECTURE.md, the process model): with
``[processes] acceptors = N`` a client spread over the N processes by the kernel may get
up to N times the limit. That is enough to stop a client from sweeping codes or filling
the verification workers; an exact limit across processes would cost a database write
per request.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["MAX_CLIENTS", "RateLimiter", "client_key", "limited"]

MAX_CLIENTS = 100_000
"""Clients remembered at once; past it the least recently seen is forgotten."""

WINDOW = 60.0
IPV6_PREFIX = 56


def client_key(address: str) -> str:
    """What the limit counts: an IPv4 address, or the /56 of an IPv6 one."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "" for an unknown peer: all of those share one bucket
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


class RateLimiter:
    """At most ``rate`` requests per minute per client key (GCRA)."""

    def __init__(self, rate: int, max_clients: int = MAX_CLIENTS) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 request per minute")
        self.interval = WINDOW / rate
        self.burst = WINDOW - self.interval  # how far ahead of now a bucket may be
        self.max_clients = max_clients
        self._empty_at: OrderedDict[str, float] = OrderedDict()

    def hit(self, key: str, now: float) -> int | None:
        """Count a request of ``key`` at ``now`` (monotonic seconds): None when it is
        allowed, else the whole seconds to wait before the next one is (``Retry-After``,
        RFC 9110 section 10.2.3)."""
        empty_at = max(self._empty_at.get(key, now), now)
        if empty_at - now > self.burst:
            return max(1, math.ceil(empty_at - now - self.burst))
        self._empty_at[key] = empty_at + self.interval
        self._empty_at.move_to_end(key)
        self._forget(now)
        return None

    def _forget(self, now: float) -> None:
        """Drop clients whose bucket is empty (they are as new), oldest first, and the
        least recently seen beyond :attr:`max_clients`."""
        while self._empty_at:
            key, empty_at = next(iter(self._empty_at.items()))
            if empty_at > now and len(self._empty_at) <= self.max_clients:
                break
            del self._empty_at[key]

    def __len__(self) -> int:
        return len(self._empty_at)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Refusal = Callable[[web.Request, int], web.StreamResponse]


def limited(
    limiter: RateLimiter,
    client: Callable[[web.Request], str],
    handler: Handler,
    refusal: Refusal,
    log: logging.Logger,
    what: str,
) -> Handler:
    """``handler`` behind ``limiter`` for a public page's routes: beyond the rate the
    page ``refusal(request, 429)`` with ``Retry-After``; when the handler cannot reach
    the queue's records (a timeout, an OS error) one line ``what (the error)`` in the
    log and ``refusal(request, 503)``, never a traceback."""

    async def counted(request: web.Request) -> web.StreamResponse:
        wait = limiter.hit(client_key(client(request)), time.monotonic())
        if wait is not None:
            response = refusal(request, 429)
            response.headers["Retry-After"] = str(wait)
            return response
        try:
            return await handler(request)
        except (TimeoutError, OSError) as exc:
            log.error("%s (%s)", what, type(exc).__name__)
            return refusal(request, 503)

    return counted
