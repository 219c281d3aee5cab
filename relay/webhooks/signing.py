"""The ``Certifica-Signature`` header of a webhook's POST (docs/webhooks.md, "Verifying").

``Certifica-Signature: t=<unix time>,v1=<hex>``, where ``<hex>`` is HMAC-SHA256 (RFC
2104) of ``"<t>.<body>"`` under the webhook's secret (the whole string ``certifica webhook add``
printed, as UTF-8), the scheme Stripe made familiar: the time inside the signed text
lets a receiver refuse an old request replayed (compare ``t`` with its clock, with a
tolerance of a few minutes), and a receiver compares in constant time. ``v1`` names the
scheme, so another can be added beside it later without breaking receivers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"


def new_secret() -> str:
    """A webhook's secret: ``whsec_`` and 256 random bits, base64url."""
    token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return PREFIX + token


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def header(secret: str, timestamp: int, body: bytes) -> str:
    """The value of ``Certifica-Signature``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"
