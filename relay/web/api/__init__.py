"""The JSON API for integrators, ``/api/v1/`` on the public HTTP listener (docs/api.md;
the contract is docs/openapi.yaml, OpenAPI 3.1).

What the web console does, for programs: find certificates and download their PDFs,
read the balance and the statement, and, for admins, manage the organisation's users and
domains. A program authenticates with a token its user made (``certifica token add``;
:mod:`relay.queue.tokens`) sent as ``Authorization: Bearer <token>`` (RFC 6750) and acts
with its user's role (:mod:`relay.roles`).

=====================================  ==================================================
:mod:`relay.web.api.endpoints`         the routes: rate limit, token, role, handler
:mod:`relay.web.api.params`            query parameters and bodies, checked (400)
:mod:`relay.web.api.problems`          errors as problem details (RFC 9457)
=====================================  ==================================================

JSON only: no cookies and no CORS headers (the Fetch standard's CORS protocol lets a
page of another site read answers; this API is not for browsers, so no page elsewhere
may read them), nothing rendered for people.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.config import Config
from relay.queue.store import Store
from relay.web.api.endpoints import JsonApi

__all__ = ["install"]


def install(app: web.Application, cfg: Config, store: Store, archive: Path) -> None:
    """Add the ``/api/v1/`` routes to ``app`` (the public HTTP listener's); ``archive``:
    where the issued PDFs are kept (``state_paths(cfg)["certificates"]``)."""
    JsonApi(cfg, store, archive).add_routes(app)
