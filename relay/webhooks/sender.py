"""Sending one webhook delivery: a signed POST, its answer or error, nothing more.

One :class:`Sender` per webhook process holds one aiohttp client session: its connector
resolves each host through :class:`relay.webhooks.guard.CheckedResolver` on every
connection (no DNS cache, so an answer that changed is checked again), follows no
redirect (a 3xx is an answer like any other non-2xx: the receiver moved, the sender
is not to be steered elsewhere), uses no proxy from the environment, and gives each
attempt ``[webhooks] timeout`` seconds, connection included. The webhook process
(:mod:`relay.process.webhooks`) keeps at most :data:`IN_FLIGHT` POSTs in flight, at most
:data:`PER_URL` of them to one URL, so one organisation's slow receiver holds only that
many and the others' events go on.

The request (docs/webhooks.md)::

    POST <url>
    Content-Type: application/json
    User-Agent: Certifica-Webhooks/1
    Certifica-Event: delivered
    Certifica-Delivery: 42
    Certifica-Signature: t=1796290925,v1=5f0c...

What comes back is an :class:`relay.queue.webhooks.Attempt`: the HTTP status, or no
status and an error in words (``connection refused``, ``timed out after 10 s``, a
forbidden address); the response's body is read up to :data:`MAX_BODY` bytes and
dropped, so the connection can be reused.
"""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import aiohttp

from relay.logs import printable
from relay.queue.webhooks import Attempt, Due
from relay.webhooks import signing
from relay.webhooks.guard import CheckedResolver, ForbiddenAddress, url_problem

IN_FLIGHT = 64
"""POSTs in flight at once in the webhook process."""

PER_URL = 4
"""POSTs in flight at once to one URL."""

MAX_BODY = 64 * 1024
"""Bytes of a response read (then dropped)."""

USER_AGENT = "Certifica-Webhooks/1"


class Sender:
    """POSTs deliveries (see the module docstring)."""

    def __init__(self, *, timeout: float, production: bool) -> None:
        self.timeout = timeout
        self.production = production
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(allow_loopback=not self.production),
                use_dns_cache=False,
                limit=IN_FLIGHT,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                trust_env=False,
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, due: Due) -> Attempt:
        """One attempt at ``due``; never raises but for cancellation."""
        start = time.time()
        status, error = await self._post(due)
        return Attempt(start, status, error, round(time.time() - start, 3))

    async def _post(self, due: Due) -> tuple[int | None, str | None]:
        problem = url_problem(due.url, production=self.production)
        if problem:  # a literal address never reaches the resolver: checked here
            return None, problem
        body = due.payload.encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Certifica-Event": due.event,
            "Certifica-Delivery": str(due.id),
            "Certifica-Signature": signing.header(due.secret, int(time.time()), body),
        }
        try:
            async with self._client().post(
                due.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.content.read(MAX_BODY)
                return response.status, None
        except ForbiddenAddress as err:
            return None, str(err)
        except TimeoutError:
            return None, f"timed out after {self.timeout:g} s"
        except aiohttp.ClientConnectorError as err:
            forbidden = forbidden_reason(err)
            if forbidden:
                return None, forbidden
            code = err.os_error.errno
            why = os.strerror(code) if code else str(err.os_error)
            return None, f"cannot connect to {urlsplit(due.url).netloc}: {printable(why, 200)}"
        except aiohttp.ClientError as err:
            return None, printable(f"{err.__class__.__name__}: {err}", 200)
        except OSError as err:
            return None, printable(err.strerror or str(err), 200)


def forbidden_reason(err: BaseException) -> str | None:
    """The sentence of a :class:`ForbiddenAddress` aiohttp wrapped, if that is what it is."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ForbiddenAddress):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return None
