"""What the gateway's processes share: the state paths, the signing settings, the
listeners' TLS contexts and the secrets kept in the state directory.

The processes themselves are :mod:`relay.process.master` (which ``certifica serve``
runs), :mod:`relay.process.acceptor`, :mod:`relay.process.qmgr` and
:mod:`relay.process.worker` (ARCHITECTURE.md §1). Once listening, the master writes
``<state_dir>/listen.json`` with the actual addresses (port 0 in the config means "any
free port"; tests read the ports back from there).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
import os
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from certifier import pipeline
from certifier.errors import StartupError
from certifier.hsm import Pkcs11Key
from certifier.i18n import Reader
from certifier.invoices.model import InvoiceSettings
from certifier.pki import Pki, ensure_token_tsa_cert
from certifier.pool import CertificatePool, SigningSettings
from relay.config import Config, ConfigError, pkcs11_pin, signing_password
from relay.queue.spool import SPOOL_SUBDIR, Spool, write_once
from relay.queue.store import Store

log = logging.getLogger("certifica/master")

# asyncio gives every TLS connection a 256 KiB read buffer (SSLProtocol.max_size); a
# TLS record is at most 16 KiB, so 32 KiB reads lose nothing and 100 idle sessions
# cost ~20 MB less (measured: 100 authenticated sessions, RSS).
TLS_READ_BUFFER = 32 * 1024
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def state_paths(cfg: Config) -> dict[str, Path]:
    root = cfg.state_dir
    return {
        "root": root,
        "keys": root / "keys",
        "spool": root / SPOOL_SUBDIR,
        "db": root / "queue.db",
        "certificates": cfg.evidence.archive_dir or root / "certificates",
        "listen": root / "listen.json",
    }


class PipelineCertifier:
    """The queue manager's certifier: the pool running :func:`certifier.pipeline.certify`."""

    def __init__(self, pool: CertificatePool) -> None:
        self.pool = pool

    async def certify(self, evidence: dict[str, Any], eml: bytes | None, reader: Reader) -> bytes:
        return await self.pool.run(pipeline.certify, evidence, eml, reader)


def signing_settings(cfg: Config, pki: Pki) -> SigningSettings:
    """The signing key and TSA the workers use: ``[signing]``, else the development PKI.

    With ``[signing] pkcs11_tsa_key_label`` the development TSA signs with that key in
    the token: this reads its public key once (and closes the session and the library
    again, so that no process inherits them) and has the development CA certify it
    (:func:`certifier.pki.ensure_token_tsa_cert`). Raises :class:`ConfigError` naming
    the key and the file when the token or the key cannot be used."""
    pkcs12 = None
    if cfg.signing.pkcs11_module and cfg.signing.pkcs11_cert:
        cert = key = cfg.signing.pkcs11_cert
        extra = tuple(cfg.signing.chain)
    elif cfg.signing.pkcs12:
        cert = key = pkcs12 = cfg.signing.pkcs12
        extra = tuple(cfg.signing.chain)
    elif cfg.signing.cert and cfg.signing.key:
        cert, key, extra = cfg.signing.cert, cfg.signing.key, tuple(cfg.signing.chain)
    else:
        cert, key, extra = pki.signing_cert, pki.signing_key, (pki.ca_cert,)
    module, label = cfg.signing.pkcs11_module, cfg.signing.pkcs11_tsa_key_label
    pin = pkcs11_pin(cfg) if module else None
    tsa_cert: Path = pki.tsa_cert
    tsa_key: Path | None = pki.tsa_key
    if module and pin is not None and label:
        tsa_key = None
        tsa_cert = _token_tsa_cert(
            cfg, pki, Pkcs11Key(module, cfg.signing.pkcs11_token, label, pin)
        )
    return SigningSettings(
        signing_cert=cert,
        signing_key=key,
        extra_certs=extra,
        tsa_url=cfg.signing.tsa_url or None,
        tsa_cert=tsa_cert,
        tsa_key=tsa_key,
        tsa_timeout=cfg.signing.tsa_timeout,
        # The built-in TSA's tokens carry the development CA, whoever signs the PDF.
        tsa_chain=(pki.ca_cert,),
        pkcs12=pkcs12,
        password=signing_password(cfg) if (pkcs12 or cfg.signing.key) else None,
        pkcs11_module=cfg.signing.pkcs11_module,
        pkcs11_token=cfg.signing.pkcs11_token,
        pkcs11_key_label=cfg.signing.pkcs11_key_label,
        pkcs11_pin=pin,
        pkcs11_tsa_key_label=label,
        # The development CA's CRL is read from its files; an operator's CA (of a key
        # file, a PKCS#12 file or a key in an HSM) or a remote TSA publish theirs, fetched
        # when a certificate is made B-LT (certifier.lta).
        revocation_keys_dir=pki.ca_cert.parent,
        fetch_revocation=bool(
            pkcs12 or cfg.signing.cert or cfg.signing.pkcs11_module or cfg.signing.tsa_url
        ),
        document_timestamp=cfg.evidence.lta_delay == 0,
        invoices=InvoiceSettings(
            enabled=cfg.invoices.enabled,
            max_size=cfg.invoices.max_size,
            trust_roots=cfg.invoices.trust_roots,
        ),
    )


def _token_tsa_cert(cfg: Config, pki: Pki, key: Pkcs11Key) -> Path:
    """The development CA's certificate for the TSA's *key* in the token."""
    try:
        return ensure_token_tsa_cert(
            pki, key.public_key(), cfg.gateway.hostname, cfg.web.public_url
        )
    except (ValueError, OSError) as err:
        why = getattr(err, "strerror", None) or str(err).splitlines()[0][:200]
        raise ConfigError(
            f"{cfg.source or '(embedded defaults)'}: signing.pkcs11_tsa_key_label: the "
            f"timestamp authority's key cannot be used ({why}); check signing.pkcs11_token, "
            "pkcs11_tsa_key_label and the PIN (signing.pkcs11_pin_file or CERTIFICA_PKCS11_PIN)"
        ) from None
    finally:
        key.close()


async def remove_unacknowledged(store: Store, spool: Spool) -> None:
    """Remove what a stop left behind: spool files never acknowledged (no database row:
    the client was never answered 250) and the spool files of finished messages."""
    spool.clean_temporaries()
    known = await store.all_qids()
    queued = spool.queued_ids()
    for qid in sorted(queued - known):
        log.warning("%s: spool file without a queue record (never acknowledged); removed", qid)
        spool.remove(qid)
    # Done in the database but still queued on disk: the process stopped in between.
    for qid, keep in sorted((await store.finished_in_spool(queued & known)).items()):
        if keep:
            await asyncio.to_thread(spool.archive, qid)
        else:
            await asyncio.to_thread(spool.remove, qid)
        log.info("%s: removed (finished before the last stop)", qid)


# Mozilla's "intermediate" TLS 1.2 suites (https://ssl-config.mozilla.org, v5.7):
# forward secret key exchange and AEAD ciphers only, no CBC. TLS 1.3 suites are all
# AEAD and stay OpenSSL's defaults.
SUBMISSION_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    )
)
# The MX port: STARTTLS there is opportunistic (RFC 7435 §1.3, RFC 3207): a sending
# server whose handshake fails delivers in plaintext, which is worse than any cipher
# below. So the strong suites come first and the server picks, and CBC and plain RSA key
# exchange stay for old MTAs; what is broken (RC4, 3DES, MD5, export, anonymous) is out.
MX_CIPHERS = (
    "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:ECDHE+AES:DHE+AES:RSA+AESGCM:RSA+AES"
    ":!aNULL:!eNULL:!MD5:!DSS:!RC4:!3DES:!EXPORT"
)


def tls_context(cert: str, key: str, policy: str) -> ssl.SSLContext:
    """The server TLS context of a listener: ``policy`` is "submission" (ports 587 and
    465: clients we configure, Mozilla intermediate) or "mx" (port 25: any MTA).

    Both keep TLS 1.2 as the minimum. On the MX it is a judgement (RFC 7435 would rather
    have TLS 1.0 than plaintext): RFC 8996 deprecates TLS 1.0 and 1.1, OpenSSL 3 only
    speaks them at security level 0 (which lets every weak suite back in) and Python
    deprecates them; an MTA that speaks nothing newer is rare and still delivers, in
    plaintext, as it would to a server without STARTTLS.
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED  # TLS 1.3 on
    if policy == "submission":
        ctx.set_ciphers(SUBMISSION_CIPHERS)
    elif policy == "mx":
        ctx.set_ciphers(MX_CIPHERS)
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        raise ValueError(f"unknown TLS policy {policy!r}")
    ctx.load_cert_chain(cert, key)
    return ctx


TLS_POLICIES = ("submission", "mx")


def tls_contexts(cfg: Config, pki: Pki) -> dict[str, ssl.SSLContext]:
    """The listeners' TLS contexts by policy (:func:`tls_context`), from ``[tls] cert``
    and ``key`` or else the development certificate. Raises :class:`ConfigError` naming
    the key and the file when a file cannot be read, holds no certificate or no
    unencrypted key, or the key is not the certificate's: the master checks a reload
    with it before any process takes the files (README "Reloading")."""
    where = cfg.source or "(embedded defaults)"
    cert, key = cfg.tls.cert or pki.tls_cert, cfg.tls.key or pki.tls_key
    data: dict[str, bytes] = {}
    for name, path in (("tls.cert", cert), ("tls.key", key)):
        try:
            data[name] = path.read_bytes()
        except OSError as err:
            why = err.strerror or err.__class__.__name__
            raise ConfigError(f"{where}: {name} = {path}: cannot be read ({why})") from None
    try:
        x509.load_pem_x509_certificates(data["tls.cert"])
    except ValueError:
        raise ConfigError(f"{where}: tls.cert = {cert}: holds no PEM certificate") from None
    try:
        serialization.load_pem_private_key(data["tls.key"], password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{where}: tls.key = {key}: holds no PEM private key without a password"
        ) from None
    try:
        return {policy: tls_context(str(cert), str(key), policy) for policy in TLS_POLICIES}
    except ssl.SSLError as err:
        raise ConfigError(
            f"{where}: tls.key = {key} is not the key of tls.cert = {cert} "
            f"({err.reason or 'refused by OpenSSL'})"
        ) from None
    except OSError as err:  # replaced or removed between the two readings
        why = err.strerror or err.__class__.__name__
        raise ConfigError(f"{where}: tls.cert = {cert}: cannot be read ({why})") from None


def served_certificate(cfg: Config, pki: Pki) -> str:
    """The TLS certificate's SHA-256 fingerprint and end of validity, for a log line."""
    cert = x509.load_pem_x509_certificates((cfg.tls.cert or pki.tls_cert).read_bytes())[0]
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return f"SHA256 {fingerprint}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"


def certificate_workers(cfg: Config) -> int:
    """``[signing] workers``, or by default one per core but the one the SMTP side and
    the queue need (at least one): on two cores one worker signs ~75 certificates a
    second, and a second one would only compete with the listeners for the CPU."""
    return cfg.signing.workers or max(1, (os.cpu_count() or 2) - 1)


SUBJECT_KEY = "subject.key"
"""The secret under ``keys/`` that erased addresses are committed with
(:func:`relay.queue.subjects.commitment`, docs/erasure.md)."""


def subject_key(keys: Path, holds_erasures: Callable[[], bool]) -> bytes:
    """``keys/subject.key`` (:data:`SUBJECT_KEY`), made on first use like :func:`secret`,
    but never while the database already holds erasures (``holds_erasures()``, see
    :func:`relay.queue.subjects.holds_erasures`): the key is missing then because the
    state directory was restored without it, and a new key would silently stop matching
    the earlier commitments (an access or erasure request would miss their rows).
    Raises :class:`StartupError` with the sentence to show."""
    path = keys / SUBJECT_KEY
    if not path.exists() and holds_erasures():
        raise StartupError(
            f"{path} is missing, but the database holds addresses erased with it: restore "
            'the key from its own backup (docs/erasure.md, "The commitment key"); a new '
            "key would no longer match them, so none is made"
        )
    return secret(path)


def secret(path: Path) -> bytes:
    """A 32-byte key kept in the state directory, made on first use. The first writer
    wins (:func:`write_once`): the gateway starting and a ``certifica`` command making
    the same key at once end up with one key."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return write_once(path, secrets.token_bytes(32))
