"""Outbound DKIM: the signing keys per domain and the signing itself (RFC 6376, RFC 8463).

Keys live in ``<keys_dir>/dkim/<domain>/<selector>.<rsa|ed25519>.pem``, mode 0600 in
0700 directories, written atomically (exclusive temporary file, fsync, hard link to the
final name so that an existing key is never overwritten, fsync of the directory). RSA
keys are 2048-bit PKCS#1 PEM (what dkimpy and OpenDKIM read), Ed25519 keys PKCS#8 PEM.
The keyring lists the key files again only when the directory or one of its domain
directories changed (their modification times), so a key added by ``certifica`` in
another process is used at once, at the cost of a few ``stat`` calls per message; a
key file is parsed again only when its size or modification time changed.

Each :class:`DkimKey` carries the TXT record to publish (``dns_name``, ``dns_txt``).
:func:`sign` prepends one DKIM-Signature per key, relaxed/relaxed, signing the headers
recipients see (:data:`SIGNED_HEADERS`, each as often as it occurs) and From once more
than it occurs, so that no From can be added without breaking the signature; it never
sets ``l=``, which would let anyone append text (RFC 6376 §8.2).

Exceptions: :meth:`DkimKeyring.add` raises ``ValueError`` with a plain sentence for a
bad domain, selector or algorithm, or a selector already in use; :func:`sign` raises
:class:`UnsignableMessage` for a message whose header section is not RFC 5322 (a line
that is neither a field nor a continuation: no verifier could parse it either), and
``dkim.DKIMException`` when a key cannot be used (a corrupt key file).
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import dkim.canonicalization as dkim_canon
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from certifier.errors import PermanentError
from relay.queue.spool import fsync_dir

log = logging.getLogger("certifica/dkim")

ALGORITHMS = ("rsa", "ed25519")
RSA_BITS = 2048

SIGNED_HEADERS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"mime-version",
    b"content-type",
    b"reply-to",
    b"in-reply-to",
    b"references",
)
"""Header fields signed when present (RFC 6376 §5.4.1), From once more (oversigned)."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_SELECTOR = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class DkimKey:
    """One signing key and the DNS record that publishes its public half."""

    domain: str
    selector: str
    algorithm: str  # "rsa" or "ed25519"
    private_pem: bytes
    dns_name: str  # <selector>._domainkey.<domain>
    dns_txt: str  # v=DKIM1; k=...; p=...

    def __repr__(self) -> str:  # never print the private key by accident
        return f"DkimKey(domain={self.domain!r}, selector={self.selector!r}, algorithm={self.algorithm!r})"


def _domain(domain: str) -> str:
    name = domain.strip().lower().rstrip(".")
    if len(name) > 253 or not _DOMAIN.fullmatch(name):
        raise ValueError(
            f"{domain!r} is not a valid domain name for DKIM: use letters, digits and "
            f"hyphens in at least two dot-separated labels (xn-- form for accents)."
        )
    return name


def _selector(selector: str, domain: str) -> str:
    name = selector.strip().lower()
    if not _SELECTOR.fullmatch(name) or len(f"{name}._domainkey.{domain}") > 253:
        raise ValueError(
            f"{selector!r} is not a valid DKIM selector: use letters, digits and hyphens, "
            f"optionally in dot-separated labels."
        )
    return name


def _make_key(domain: str, selector: str, algorithm: str, pem: bytes) -> DkimKey:
    """A :class:`DkimKey` from its private PEM; raises ``ValueError`` if it is not one."""
    private = serialization.load_pem_private_key(pem, password=None)
    if algorithm == "rsa" and isinstance(private, rsa.RSAPrivateKey):
        public = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    elif algorithm == "ed25519" and isinstance(private, ed25519.Ed25519PrivateKey):
        # RFC 8463 §4.2: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo.
        public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    else:
        raise ValueError(f"the key file does not hold an {algorithm} private key")
    txt = f"v=DKIM1; k={algorithm}; p={base64.b64encode(public).decode('ascii')}"
    return DkimKey(domain, selector, algorithm, pem, f"{selector}._domainkey.{domain}", txt)


def _write_new(path: Path, data: bytes) -> None:
    """Write a new 0600 file atomically; ``FileExistsError`` if ``path`` exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path)  # unlike rename, never replaces an existing key
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.unlink()
    fsync_dir(path.parent)


class DkimKeyring:
    """The DKIM keys under ``keys_dir/dkim``; see the module docstring."""

    def __init__(self, keys_dir: Path) -> None:
        self.root = Path(keys_dir) / "dkim"
        self._parsed: dict[Path, tuple[tuple[int, int], DkimKey]] = {}
        self._listed: tuple[tuple[Any, ...], builtins.list[DkimKey]] | None = None

    def add(self, domain: str, selector: str | None = None, algorithm: str = "rsa") -> DkimKey:
        """Make and store a new key; the caller publishes ``dns_txt`` at ``dns_name``."""
        domain = _domain(domain)
        if selector is None:
            selector = "certifica" + datetime.now(UTC).strftime("%Y%m")
        selector = _selector(selector, domain)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{algorithm!r} is not a DKIM key type: use rsa or ed25519.")
        if any(key.selector == selector for key in self.for_domain(domain)):
            raise ValueError(
                f"{domain} already has a DKIM key with selector {selector}: choose another "
                f"selector, so the key published in DNS stays valid for mail in transit."
            )
        private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        if algorithm == "rsa":
            private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
            pem_format = serialization.PrivateFormat.TraditionalOpenSSL  # PKCS#1, for dkimpy
        else:
            private = ed25519.Ed25519PrivateKey.generate()
            pem_format = serialization.PrivateFormat.PKCS8
        pem = private.private_bytes(
            serialization.Encoding.PEM, pem_format, serialization.NoEncryption()
        )
        key = _make_key(domain, selector, algorithm, pem)
        folder = self.root / domain
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            _write_new(folder / f"{selector}.{algorithm}.pem", pem)
        except FileExistsError:
            raise ValueError(f"{domain} already has a DKIM key with selector {selector}.") from None
        log.info("DKIM key made: %s %s; publish TXT %s", algorithm, key.dns_name, key.dns_txt)
        return key

    def ensure_gateway_key(self, domain: str) -> DkimKey:
        """The gateway's own key for ``domain`` (RSA preferred), made on first start."""
        keys = self.for_domain(domain)
        if keys:
            return next((k for k in keys if k.algorithm == "rsa"), keys[0])
        return self.add(domain)

    def list(self) -> list[DkimKey]:
        """Every readable key, by domain then selector; unreadable files are logged."""
        version = self._version()
        if self._listed is not None and self._listed[0] == version:
            return self._listed[1]
        keys = self._read()
        self._listed = (version, keys)
        return keys

    def _version(self) -> tuple[Any, ...]:
        """Modification times of the directory and its domain directories."""
        try:
            root = self.root.stat().st_mtime_ns
            with os.scandir(self.root) as entries:
                domains = sorted((e.name, e.stat().st_mtime_ns) for e in entries if e.is_dir())
        except OSError:
            return ()
        return (root, *domains)

    def _read(self) -> builtins.list[DkimKey]:
        keys: builtins.list[DkimKey] = []
        if not self.root.is_dir():
            return keys
        for path in sorted(self.root.glob("*/*.pem")):
            selector, _, algorithm = path.name[: -len(".pem")].rpartition(".")
            domain = path.parent.name
            try:
                if algorithm not in ALGORITHMS or _domain(domain) != domain:
                    raise ValueError("not named <selector>.<rsa|ed25519>.pem under its domain")
                if _selector(selector, domain) != selector:
                    raise ValueError("selector not in lower case")
                stat = path.stat()
                version = (stat.st_mtime_ns, stat.st_size)
                cached = self._parsed.get(path)
                if cached is None or cached[0] != version:
                    cached = (version, _make_key(domain, selector, algorithm, path.read_bytes()))
                    self._parsed[path] = cached
                keys.append(cached[1])
            except (OSError, ValueError, TypeError) as err:
                log.warning("DKIM key %s skipped: %s", path, err)
        return keys

    def for_domain(self, domain: str) -> builtins.list[DkimKey]:  # list: the method above
        """The keys that sign mail From ``domain`` (its own keys only)."""
        try:
            name = _domain(domain)
        except ValueError:
            return []
        return [key for key in self.list() if key.domain == name]


_CANON = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


# A run of whitespace that relaxed canonicalisation changes: two or more, or a tab.
_WSP_FOLD = re.compile(rb"[\t ]{2,}|\t")


def _relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.4 relaxed body canonicalisation, byte for byte as dkimpy's (a test
    compares them), in C-speed passes: runs of whitespace become one space (only the
    runs that change are matched, so plain text and base64 cost a scan), then a space
    before a line end goes, then the empty lines at the end."""
    if b"\t" in body or b"  " in body:
        body = _WSP_FOLD.sub(b" ", body)
    body = body.replace(b" \r\n", b"\r\n")
    return dkim_canon.correct_empty_body(dkim_canon.strip_trailing_lines(body))  # type: ignore[no-any-return]


class UnsignableMessage(ValueError, PermanentError):
    """The message's header section is not RFC 5322 §2.2 fields, so it cannot be signed."""


class _Parsed:
    """The header fields and body of a message, as dkimpy's parser gives them."""

    def __init__(self, message: bytes) -> None:
        end = message.find(b"\r\n\r\n")
        crlf = message.count(b"\r\n")
        try:
            if end < 0 or message.count(b"\n") != crlf or message.count(b"\r") != crlf:
                self.headers, self.body = dkim.rfc822_parse(message)  # the general case
            else:
                # CRLF throughout (what this gateway sends): parse only the header section.
                self.headers, _ = dkim.rfc822_parse(message[: end + 4])
                self.body = message[end + 4 :]
        except dkim.MessageFormatError:
            # Its text names the offending line: client bytes, not for a log.
            raise UnsignableMessage("a header line is neither a field nor a continuation") from None


_SIG_NAME = b"DKIM-Signature"


def _private_key(key: DkimKey) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    """The parsed private key, once per key file version (parsing RSA costs ~1 ms)."""
    cached = _PARSED.get(key.private_pem)
    if cached is None:
        loaded = serialization.load_pem_private_key(key.private_pem, password=None)
        if not isinstance(loaded, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise dkim.KeyFormatError(f"the {key.dns_name} key is not RSA or Ed25519")
        if len(_PARSED) > 64:
            _PARSED.clear()
        cached = _PARSED[key.private_pem] = loaded
    return cached


_PARSED: dict[bytes, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey] = {}


def _signature(parsed: _Parsed, key: DkimKey, include: list[bytes], linesep: bytes) -> bytes:
    """One DKIM-Signature field (RFC 6376 §3.5, §5) for the message ``parsed`` holds.

    dkimpy canonicalises, hashes and folds exactly as its own ``DKIM.sign`` does (its
    helpers are used for all of it); only the signature itself is made with
    ``cryptography`` (OpenSSL) instead of dkimpy's pure-Python RSA, which costs ~7 ms
    a message. The result verifies with dkimpy's ``verify`` (tests check that).
    """
    algorithm = b"rsa-sha256" if key.algorithm == "rsa" else b"ed25519-sha256"
    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(parsed.body)).digest())
    domain = key.domain.encode("ascii")
    fields = [
        (b"v", b"1"),
        (b"a", algorithm),
        (b"c", _CANON.to_c_value()),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode("ascii")),
        (b"t", str(int(time.time())).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b"0" * 60),  # folded onto its own line, as dkimpy does, then emptied
    ]
    value = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_SIG_NAME))
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    headers = _CANON.canonicalize_headers(parsed.headers)
    dkim.hash_headers(hasher, _CANON, headers, include, (_SIG_NAME, b" " + value), dict(fields))
    private = _private_key(key)
    if isinstance(private, rsa.RSAPrivateKey):
        raw = private.sign(hasher.digest(), padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    else:  # RFC 8463 §3: Ed25519 signs the SHA-256 hash of the signed data
        raw = private.sign(hasher.digest())
    fields[-1] = (b"b", base64.b64encode(raw))
    value = b"; ".join(b"=".join(f) for f in fields) + linesep
    return _SIG_NAME + b": " + dkim.fold(value, namelen=len(_SIG_NAME), linesep=linesep)


def sign(message: bytes, keys: Sequence[DkimKey]) -> bytes:
    """``message`` with one DKIM-Signature per key prepended (none if ``keys`` is empty)."""
    if not keys:
        return message
    linesep = b"\r\n" if b"\r\n" in message else b"\n"
    parsed = _Parsed(message)
    present = [name.lower() for name, _ in parsed.headers]
    include = [name for name in SIGNED_HEADERS for _ in range(present.count(name))]
    include.append(b"from")  # one more From than present: none can be added later
    return b"".join(_signature(parsed, key, include, linesep) for key in keys) + message
