"""The verification code of a document: the capability in ``<public_url>/v/<code>``
printed on the document, in its QR code and in the mail that carries it (README,
"Verifying a certificate").

The code is HMAC-SHA-256 (RFC 2104) of the certificate id under a secret of the gateway
(``state_dir/keys/tracking.key``), cut to 160 bits and written base64url (RFC 4648 §5),
27 characters: unguessable without the key (well above the 128 bits the page's security
rests on) and the same each time a document is made again, so a job rerun after a
worker died prints the code the first PDF kept (:func:`relay.queue.spool.write_once`).
The database stores only the code's SHA-256 (:mod:`relay.queue.verifications`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

__all__ = ["CODE_BITS", "verification_code", "verification_url"]

CODE_BITS = 160
_LABEL = b"certifica verification code\x00"


def verification_code(key: bytes, cert_id: str) -> str:
    digest = hmac.new(key, _LABEL + cert_id.encode("utf-8"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[: CODE_BITS // 8]).decode("ascii").rstrip("=")


def verification_url(public_url: str, key: bytes, cert_id: str) -> str:
    return f"{public_url.rstrip('/')}/v/{verification_code(key, cert_id)}"
