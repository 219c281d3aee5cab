"""Whether a form's POST comes from the gateway's own pages: the check every page with
a form makes before it changes anything (the web console, the SMS opt-out page).

The browser's ``Sec-Fetch-Site`` (W3C Fetch Metadata) when it sends one; else ``Origin``
(RFC 6454), else the ``Referer``'s origin; each must name ``[web] public_url``'s origin
or the one the request was sent to. A request naming none of them is refused: a form of
ours is always posted by a browser that sends one.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web


def same_origin(request: web.Request, public_origin: str) -> bool:
    """Whether ``request`` comes from a page of ``public_origin`` (``https://host``, lower
    case) or of the origin it was sent to (module docstring)."""
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
    own = f"{request.scheme}://{request.host}".lower()
    return origin.lower() in (public_origin, own)
