"""The JSON API's errors as problem details (RFC 9457): ``application/problem+json``
with ``type``, ``title``, ``status`` and ``detail``, where ``detail`` is one plain
sentence for the integrator and never an exception's text.

``type`` is ``about:blank`` (RFC 9457 §4.2.1): the HTTP status says what kind of
problem it is, and ``title`` is that status's phrase; the sentence in ``detail`` says
what to change. docs/openapi.yaml describes the object as the schema ``Problem``.

The sentences are English, as the ``certifica`` command's are: they are read by the
developer of a program, not shown to its users (the web console speaks their
language); ``Content-Language`` says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web

from certifier.errors import UsageError

PROBLEM_TYPE = "application/problem+json"


class Problem(UsageError):
    """A request the JSON API refuses: ``status`` and the plain ``detail`` are the
    answer (RFC 9457), with ``headers`` (``WWW-Authenticate``, ``Retry-After``)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


def problem_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The problem details object of ``status`` with ``detail``, as a response."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_TYPE,
        charset="utf-8",
        headers={"Content-Language": "en", **(headers or {})},
    )
