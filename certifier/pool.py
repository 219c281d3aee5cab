"""Rendering and signing certificates off the event loop, in worker processes.

Rendering (reportlab), signing (:mod:`certifier.signing`: RFC 5652 CMS, RFC 3161
timestamp, ETSI EN 319 142 PAdES B-T) and making the result B-LTA (:mod:`certifier.lta`:
the document security store and a document timestamp) are CPU-bound Python; in the gateway's process they
would stall every SMTP session for milliseconds per certificate. :class:`CertificatePool` runs
them in a :class:`~concurrent.futures.ProcessPoolExecutor` (one worker per CPU, "spawn"
start method so no worker inherits the parent's event loop, sockets or locks). Each
worker builds its :class:`~certifier.signing.DocumentSigner` and timestamper once, in
the pool initializer, from a small picklable :class:`SigningSettings`.

Errors: whatever :meth:`DocumentSigner.sign <certifier.signing.DocumentSigner.sign>`
raises in a worker is re-raised by :meth:`CertificatePool.certify` (notably
``TimestampRequestError`` when a remote TSA fails: temporary, retry later);
``concurrent.futures.process.BrokenProcessPool`` if a worker dies.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from asn1crypto import cms
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from certifier.hsm import Pkcs11Key
from certifier.i18n import Reader
from certifier.invoices.model import InvoiceSettings
from certifier.pki import Pki

if TYPE_CHECKING:  # imported in the workers only: pyHanko and reportlab weigh ~50 MB
    from certifier.lta import Archiver
    from certifier.signing import DocumentSigner

T = TypeVar("T")

__all__ = [
    "CertificatePool",
    "SigningSettings",
    "archiver",
    "build_archiver",
    "build_signer",
    "init_process",
    "invoice_settings",
    "render_and_sign",
]

SHOWN_PAGE = "shown-page.html"
"""The name, in an acceptance certificate, of the exact page the decision was made on
(docs/hosted.md); its SHA-256 is the decision's ``page_sha256``."""
SHOWN_PAGE_KEY = "_shown_page"
"""The evidence key that carries that page's bytes to :func:`render_and_sign` (it is
embedded as :data:`SHOWN_PAGE`, never written into ``evidence.json``)."""


@dataclass(frozen=True)
class SigningSettings:
    """What a process needs to sign certificates; paths only, so it pickles cheaply."""

    signing_cert: Path
    signing_key: Path
    extra_certs: tuple[Path, ...]
    tsa_url: str | None
    tsa_cert: Path | None
    tsa_key: Path | None
    tsa_timeout: float = 10.0
    # Certificates the local TSA puts in its tokens next to its own (its CA). Empty means
    # extra_certs, right for the development PKI where one CA issued everything.
    tsa_chain: tuple[Path, ...] = ()
    # A PKCS#12 file with the signing key and certificate (then signing_cert and
    # signing_key are not read), and the password of it or of an encrypted PEM key: kept
    # in memory, handed to the workers through the pool's pipe, never written.
    pkcs12: Path | None = None
    password: bytes | None = field(default=None, repr=False)
    # A key in a PKCS#11 token (an HSM), used when pkcs11_module is set: signing_cert is
    # then its certificate and signing_key is not read. Each process that signs opens its
    # own session (certifier.hsm.Pkcs11Key); the PIN travels like the password.
    pkcs11_module: Path | None = None
    pkcs11_token: str = ""
    pkcs11_key_label: str = ""
    pkcs11_pin: str | None = field(default=None, repr=False)
    # The local TSA's key in that token (without tsa_url): tsa_cert is then the
    # certificate the development CA issued for it, and tsa_key is not read.
    pkcs11_tsa_key_label: str = ""

    def pkcs11_key(self) -> Pkcs11Key:
        """The token's signing key (no session opened until it is used)."""
        return self._pkcs11(self.pkcs11_key_label)

    def pkcs11_tsa_key(self) -> Pkcs11Key:
        """The token's timestamp authority key (no session opened until it is used)."""
        return self._pkcs11(self.pkcs11_tsa_key_label)

    def _pkcs11(self, label: str) -> Pkcs11Key:
        if self.pkcs11_module is None or self.pkcs11_pin is None:
            raise ValueError("no PKCS#11 module or PIN")
        return Pkcs11Key(self.pkcs11_module, self.pkcs11_token, label, self.pkcs11_pin)

    # Long-term validation (certifier.lta): the development PKI's key directory, whose
    # CA's CRL goes into every certificate's DSS (None: no CRL known in advance); whether
    # revocation data of other CAs (an operator's, a remote TSA's) is fetched over the
    # network; and whether the document timestamp is added at issue ([evidence]
    # lta_delay = 0). ``archive=False`` leaves certificates PAdES B-T.
    archive: bool = True
    revocation_keys_dir: Path | None = None
    fetch_revocation: bool = False
    document_timestamp: bool = True
    # [invoices]: how the attachments of the certified messages are read as invoices
    # (certifier.invoices), in the process that parses the message.
    invoices: InvoiceSettings = InvoiceSettings()

    @classmethod
    def from_pki(
        cls, pki: Pki, tsa_url: str | None = None, tsa_timeout: float = 10.0
    ) -> SigningSettings:
        """Settings for the development PKI (and optionally a remote TSA)."""
        return cls(
            signing_cert=pki.signing_cert,
            signing_key=pki.signing_key,
            extra_certs=(pki.ca_cert,),
            tsa_url=tsa_url,
            tsa_cert=pki.tsa_cert,
            tsa_key=pki.tsa_key,
            tsa_timeout=tsa_timeout,
            tsa_chain=(pki.ca_cert,),
            revocation_keys_dir=pki.ca_cert.parent,
            fetch_revocation=bool(tsa_url),
        )


def build_signer(settings: SigningSettings) -> DocumentSigner:
    """A signer (with its timestamper) for *settings*."""
    from pyhanko.sign.timestamps import TimeStamper

    from certifier.signing import DocumentSigner
    from certifier.tsa import LocalTimeStamper, make_timestamper

    timestamper: TimeStamper
    if settings.tsa_url:
        timestamper = make_timestamper(None, settings.tsa_url, settings.tsa_timeout)
    elif settings.tsa_cert is not None and settings.pkcs11_tsa_key_label:
        timestamper = LocalTimeStamper.with_key(
            settings.tsa_cert,
            settings.pkcs11_tsa_key(),
            settings.tsa_chain or settings.extra_certs,
        )
    elif settings.tsa_cert is not None and settings.tsa_key is not None:
        timestamper = LocalTimeStamper.from_files(
            settings.tsa_cert, settings.tsa_key, settings.tsa_chain or settings.extra_certs
        )
    else:
        raise ValueError("no timestamp authority: set a TSA URL or a TSA certificate and key")
    if settings.pkcs11_module is not None:
        return DocumentSigner.from_pkcs11(
            settings.pkcs11_key(), settings.signing_cert, settings.extra_certs, timestamper
        )
    if settings.pkcs12 is not None:
        return DocumentSigner.from_pkcs12(
            settings.pkcs12, settings.password, settings.extra_certs, timestamper
        )
    return DocumentSigner(
        settings.signing_cert,
        settings.signing_key,
        settings.extra_certs,
        timestamper,
        key_passphrase=settings.password,
    )


def build_archiver(settings: SigningSettings, signer: DocumentSigner) -> Archiver | None:
    """The B-LT/B-LTA step for *signer*'s certificates (None with ``archive=False``)."""
    from pyhanko.keys import load_cert_from_pemder

    from certifier.lta import Archiver
    from certifier.pki import current_crl

    if not settings.archive:
        return None
    paths = dict.fromkeys((*settings.extra_certs, *(settings.tsa_chain or ())))
    certs = [load_cert_from_pemder(str(p)) for p in paths]
    keys_dir = settings.revocation_keys_dir
    crls = None if keys_dir is None else (lambda: [current_crl(keys_dir)])
    return Archiver(
        signer.timestamper,
        certs,
        crls,
        fetch=settings.fetch_revocation,
        document_timestamp=settings.document_timestamp,
    )


# The signer of this process and its archiver: set by init_process (the pool initializer
# in a worker, or the gateway itself when it signs in-process).
_signer: DocumentSigner | None = None
_archiver: Archiver | None = None
_invoices = InvoiceSettings()


def _die_with_parent() -> None:
    """End this worker when the gateway's process ends, however it ends (kill -9 too):
    a worker left behind would hold its memory and its keys for nothing."""
    parent = os.getppid()
    try:
        import ctypes
        import ctypes.util
        import signal

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent is gone already
        os._exit(0)

    def watch() -> None:  # where prctl is missing: notice the parent change
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _init_worker(settings: SigningSettings) -> None:
    """The pool's initializer: a worker that ends with the gateway, then its signer."""
    import signal

    # Ctrl-C in a terminal (`make run`) signals the whole process group: the gateway
    # stops its workers itself, so a worker hit by SIGINT would only print a
    # KeyboardInterrupt traceback per process on the operator's terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    init_process(settings)


def init_process(settings: SigningSettings) -> None:
    """Build this process's signer once, and load the fonts before the first request."""
    from certifier.document import render_certificate

    global _signer, _archiver, _invoices
    _signer = build_signer(settings)
    _archiver = build_archiver(settings, _signer)
    _invoices = settings.invoices
    # Registering the TrueType fonts parses them (tens of ms); pay that here, not in
    # the first certificate.
    render_certificate({}, b"")


def render_and_sign(
    evidence: dict,
    eml: bytes | None,
    signer: DocumentSigner | None = None,
    *,
    reader: Reader | None = None,
    archiver: Archiver | None = None,
) -> bytes:
    """Render one certificate for ``reader`` (default: English, UTC) and sign it in this
    process; returns the signed PDF, B-LTA (or B-LT) when this process has an archiver
    (:func:`init_process`) or one is given, else B-T. The evidence gains the ``seal``
    the page shows: the holder of the certificate that signs it."""
    from certifier.document import render_certificate

    signer = signer or _signer
    if signer is None:
        raise RuntimeError("no signer: call init_process(settings) or pass signer=")
    if "seal" not in evidence:
        evidence = {**evidence, "seal": signer.seal}
    page = evidence.get(SHOWN_PAGE_KEY)
    if page is not None:  # an acceptance's decided page: embedded, not in evidence.json
        evidence = {k: v for k, v in evidence.items() if k != SHOWN_PAGE_KEY}
    xml = signer.etsi_evidence(evidence, eml)
    if page is not None:
        xml = [*xml, (SHOWN_PAGE, bytes(page))]
    signed = signer.sign(render_certificate(evidence, eml, reader or Reader(), xml))
    archiver = archiver or (_archiver if signer is _signer else None)
    return signed if archiver is None else archiver.archive(signed)


def invoice_settings() -> InvoiceSettings:
    """How this process reads invoices (``[invoices]``, set by :func:`init_process`;
    the defaults before it)."""
    return _invoices


def archiver() -> Archiver:
    """This process's archiver (:func:`init_process`), for renewals
    (:meth:`certifier.lta.Archiver.renew`)."""
    if _archiver is None:
        raise RuntimeError("no archiver: call init_process(settings) with archive=True")
    return _archiver


def timestamp_token(imprint: bytes) -> bytes:
    """A DER RFC 3161 TimeStampToken over the SHA-256 *imprint*, from this worker's TSA."""
    if _signer is None:
        raise RuntimeError("no signer: call init_process(settings) first")
    token = asyncio.run(_signer.timestamper.async_timestamp(imprint, "sha256"))
    return bytes(token.dump())


def check_settings(settings: SigningSettings) -> None:
    """Fail early, in the caller, on an unreadable certificate or key: reads them with
    ``cryptography`` alone (the workers build the real signer)."""
    for path in settings.extra_certs:
        x509.load_pem_x509_certificate(path.read_bytes())
    if settings.pkcs11_module is not None:
        _check_pkcs11(settings.pkcs11_key(), settings.signing_cert)
    elif settings.pkcs12 is not None:
        key, cert, _ = pkcs12.load_key_and_certificates(
            settings.pkcs12.read_bytes(), settings.password
        )
        if key is None or cert is None:
            raise ValueError(f"{settings.pkcs12}: the PKCS#12 file holds no key and certificate")
    else:
        x509.load_pem_x509_certificate(settings.signing_cert.read_bytes())
        serialization.load_pem_private_key(
            settings.signing_key.read_bytes(), password=settings.password
        )
    if settings.tsa_url:
        return
    if settings.tsa_cert is not None and settings.pkcs11_tsa_key_label:
        _check_pkcs11(settings.pkcs11_tsa_key(), settings.tsa_cert)
    elif settings.tsa_cert is not None and settings.tsa_key is not None:
        x509.load_pem_x509_certificate(settings.tsa_cert.read_bytes())
        serialization.load_pem_private_key(settings.tsa_key.read_bytes(), password=None)
    else:
        raise ValueError("no timestamp authority: set a TSA URL or a TSA certificate and key")


def _check_pkcs11(key: Pkcs11Key, cert_path: Path) -> None:
    """Open the token with the PIN, find *key*, compare it with the certificate in
    *cert_path*, and close the session and the library again (C_Finalize): the workers
    open their own, nothing is kept to be inherited (a PKCS#11 v2.40 session is not
    usable in a forked child)."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        spki = PublicFormat.SubjectPublicKeyInfo
        public = key.public_key().public_bytes(Encoding.DER, spki)
        if public != cert.public_key().public_bytes(Encoding.DER, spki):
            raise ValueError(f"{key.name} is not the key of {cert_path}")
    finally:
        key.close()


class PoolTimeStamper:
    """The workers' timestamp authority for the gateway's own process (checkpoints of
    the evidence log): the ``async_timestamp`` of pyHanko's ``TimeStamper``, without
    loading pyHanko here."""

    def __init__(self, pool: CertificatePool) -> None:
        self.pool = pool

    async def async_timestamp(self, message_digest: bytes, md_algorithm: str) -> cms.ContentInfo:
        if md_algorithm != "sha256":
            raise ValueError(f"only sha256 imprints are timestamped, not {md_algorithm}")
        return cms.ContentInfo.load(await self.pool.run(timestamp_token, message_digest))


class CertificatePool:
    """Worker processes that render and sign certificates for an asyncio program."""

    def __init__(self, settings: SigningSettings, workers: int | None = None) -> None:
        # Fail here, in the caller, on an unreadable key or certificate, instead of as a
        # BrokenProcessPool on the first certificate.
        check_settings(settings)
        self._executor = ProcessPoolExecutor(
            max_workers=workers or os.cpu_count() or 1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(settings,),
        )

    async def certify(
        self, evidence: dict, eml: bytes | None, reader: Reader | None = None
    ) -> bytes:
        """Render and sign in a worker; the event loop keeps running meanwhile."""
        return await self.run(partial(render_and_sign, reader=reader), evidence, eml)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run *fn(*args)* in a worker, where :func:`render_and_sign` has its signer.

        For a step that wraps rendering and signing (parsing the message first, say);
        *fn* must be a module-level function and the arguments picklable.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Stop the workers; certificates still queued are cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> CertificatePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
