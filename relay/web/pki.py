"""The development CA's published revocation data on the public HTTP listener.

``/pki/ca.crl`` is the CA's CRL (RFC 5280 section 5, DER, ``application/pkix-crl`` as
RFC 2585 section 4.2 names it) and ``/pki/ca.crt`` its certificate (DER,
``application/pkix-cert``, RFC 2585 section 4.1): what the cRLDistributionPoints and
authorityInfoAccess extensions of the development certificates point at
(:mod:`certifier.pki`). The CRL is re-signed here when it nears its nextUpdate, so a
gateway that runs for months still serves a current one. With no development CA (a
state directory not yet prepared) both answer 404.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certifier.pki import CA_CERT_PATH, CRL_PATH, current_crl

__all__ = ["install"]

log = logging.getLogger("certifica/web")

# Revocation data is public and changes at most once a day here: caches may keep it.
CACHE = "public, max-age=3600"


def install(app: web.Application, keys_dir: Path) -> None:
    """Add the CRL and CA certificate routes to ``app`` (the public HTTP listener's)."""

    async def crl(request: web.Request) -> web.Response:
        try:
            body = await asyncio.to_thread(current_crl, keys_dir)
        except (OSError, ValueError) as err:
            log.warning("pki: no CRL to serve (%s)", type(err).__name__)
            raise web.HTTPNotFound() from None
        return web.Response(
            body=body, content_type="application/pkix-crl", headers={"Cache-Control": CACHE}
        )

    async def ca_cert(request: web.Request) -> web.Response:
        try:
            pem = await asyncio.to_thread((keys_dir / "ca.pem").read_bytes)
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        except (OSError, ValueError):
            raise web.HTTPNotFound() from None
        return web.Response(
            body=der, content_type="application/pkix-cert", headers={"Cache-Control": CACHE}
        )

    app.router.add_get(CRL_PATH, crl)
    app.router.add_get(CA_CERT_PATH, ca_cert)
