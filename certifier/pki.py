"""The gateway's development public-key infrastructure (RFC 5280 profiles).

With no signing configuration the gateway makes its own small PKI on first start,
in its state directory, so that every certificate it issues is verifiable from the
first message on. Nothing here is meant for production: an operator points the
configuration at a real signing certificate and a real RFC 3161 timestamp authority.

Four key pairs, all RSA-2048, all certificates X.509 v3 profiled after RFC 5280:

- a root CA (10 years; basicConstraints CA, keyUsage keyCertSign+cRLSign);
- a document signing certificate (2 years; keyUsage digitalSignature+nonRepudiation,
  the usage ETSI EN 319 142 (PAdES) validators and pyHanko expect of a signer);
- a timestamp authority certificate (as long as the CA, 10 years; extendedKeyUsage
  timeStamping, marked critical as RFC 3161 section 2.3 requires, so `openssl ts -verify`
  accepts it). Longer than the signing certificate on purpose: the document timestamp
  that makes a certificate PAdES B-LTA (:mod:`certifier.lta`) keeps proving that the
  signature existed while its certificate was valid for as long as the TSA's certificate
  is, so a validator still trusts it after the signing certificate has expired (ETSI EN
  319 102-1 section 5.6.2.4). Its key may instead stay in a PKCS#11 token
  (:func:`ensure_token_tsa_cert` certifies it, ``tsa-token.pem``);
- a TLS server certificate for SMTP STARTTLS (2 years; subjectAltName = the
  gateway's hostname, localhost and 127.0.0.1).

The CA publishes revocation data (RFC 5280 section 5): a CRL (``ca.crl``, DER), valid
:data:`CRL_VALIDITY` and re-signed by :func:`current_crl` once less than
:data:`CRL_RENEW_BEFORE` of it remains, served with the CA certificate on the public HTTP
listener (``/pki/ca.crl``, ``/pki/ca.crt``: :mod:`relay.web.pki`). Leaf certificates issued
with a ``public_url`` name them (cRLDistributionPoints, RFC 5280 section 4.2.1.13;
authorityInfoAccess caIssuers, section 4.2.2.1), so a validator such as pyHanko's
(ETSI EN 319 102-1) can find them; certificates issued before keep their old extensions
until they are re-issued. Both are put into every certificate's document security store
(:mod:`certifier.lta`), which is what makes it verifiable after the gateway is gone.

Files are PEM (keys unencrypted PKCS#8; the CRL is DER, as RFC 5280 publishes it),
mode 0600 in a 0700 directory; every file is
written atomically (temporary file, fsync, rename, fsync of the directory) so that a
crash never leaves a half-written key behind.

:func:`ensure_dev_pki` is idempotent: it reuses what is on disk, re-issues a leaf
certificate that is missing, unreadable, not issued by the CA on disk, within 30 days of
expiry or (for TLS) made for another host, and starts over only when the CA itself is
unusable.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CRL_PATH",
    "CA_CERT_PATH",
    "Pki",
    "current_crl",
    "ensure_dev_pki",
    "ensure_token_tsa_cert",
]

CA_VALIDITY = dt.timedelta(days=3652)
LEAF_VALIDITY = dt.timedelta(days=731)
TSA_VALIDITY = CA_VALIDITY  # bounded by the CA's own end of validity, like every leaf
# Leaf certificates are re-issued this long before they expire, so a certificate
# signed today is not signed by a key whose certificate dies tomorrow.
RENEW_BEFORE = dt.timedelta(days=30)
# Back-date notBefore a little: a verifier whose clock runs slightly behind ours must
# not see a certificate that is "not yet valid".
CLOCK_SKEW = dt.timedelta(minutes=10)
KEY_SIZE = 2048
# The CRL promises its next issue (nextUpdate) this far ahead, and is re-signed once less
# than CRL_RENEW_BEFORE of that remains.
CRL_VALIDITY = dt.timedelta(days=30)
CRL_RENEW_BEFORE = dt.timedelta(days=15)
# Where the public HTTP listener serves the CA's CRL and certificate (relay.web.pki), below
# [web] public_url.
CRL_PATH = "/pki/ca.crl"
CA_CERT_PATH = "/pki/ca.crt"

# A certificate profile adds the extensions of one kind of certificate to a builder.
Profile = Callable[[x509.CertificateBuilder], x509.CertificateBuilder]


@dataclass(frozen=True)
class Pki:
    """Paths of the development PKI files (all PEM)."""

    ca_cert: Path
    ca_key: Path
    signing_cert: Path
    signing_key: Path
    tsa_cert: Path
    tsa_key: Path
    tls_cert: Path
    tls_key: Path
    ca_crl: Path
    # The timestamp authority's certificate when its key stays in a PKCS#11 token
    # (ensure_token_tsa_cert); tsa_cert and tsa_key are then not used.
    tsa_token_cert: Path


def _paths(keys_dir: Path) -> Pki:
    return Pki(
        ca_cert=keys_dir / "ca.pem",
        ca_key=keys_dir / "ca.key",
        signing_cert=keys_dir / "signing.pem",
        signing_key=keys_dir / "signing.key",
        tsa_cert=keys_dir / "tsa.pem",
        tsa_key=keys_dir / "tsa.key",
        tls_cert=keys_dir / "tls.pem",
        tls_key=keys_dir / "tls.key",
        ca_crl=keys_dir / "ca.crl",
        tsa_token_cert=keys_dir / "tsa-token.pem",
    )


def ensure_dev_pki(
    keys_dir: Path,
    hostname: str,
    organisation: str = "Certifica development CA",
    public_url: str | None = None,
) -> Pki:
    """Create the development PKI in *keys_dir*, or reuse the one already there.

    With *public_url* (``[web] public_url``), leaf certificates issued now name the CRL
    and the CA certificate served below it."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is filtered by the umask and ignored for an existing directory.
    os.chmod(keys_dir, 0o700)
    pki = _paths(keys_dir)
    published = _published(public_url)
    # Several processes (the server and a CLI run, or pool workers) may start at once;
    # without the lock two of them could each make a CA and leave mismatched files.
    with _locked(keys_dir / ".pki.lock"):
        now = dt.datetime.now(dt.UTC)
        ca = _load_pair(pki.ca_cert, pki.ca_key, now)
        if ca is None:
            ca = _make_ca(pki, organisation, now)
            fresh_ca = True
        else:
            fresh_ca = False
        ca_cert, ca_key = ca

        def leaf(cert_path: Path, key_path: Path, wanted_host: str | None = None) -> bool:
            if fresh_ca:
                return True
            pair = _load_pair(cert_path, key_path, now)
            if pair is None:
                return True
            cert, _ = pair
            if not _current(cert, ca_cert, now):
                return True
            if wanted_host is not None:
                try:
                    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                except x509.ExtensionNotFound:
                    return True
                present = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
                present += [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)]
                if _san_form(wanted_host) not in present:
                    return True
            return False

        if leaf(pki.signing_cert, pki.signing_key):
            _issue(
                pki.signing_cert,
                pki.signing_key,
                ca_cert,
                ca_key,
                now,
                _name(f"{hostname} document signing", organisation),
                _signing_profile,
                published,
            )
        if leaf(pki.tsa_cert, pki.tsa_key):
            _issue(
                pki.tsa_cert,
                pki.tsa_key,
                ca_cert,
                ca_key,
                now,
                _name(f"{hostname} timestamp authority", organisation),
                _tsa_profile,
                published,
                TSA_VALIDITY,
            )
        if leaf(pki.tls_cert, pki.tls_key, hostname):
            _issue(
                pki.tls_cert,
                pki.tls_key,
                ca_cert,
                ca_key,
                now,
                _name(hostname, organisation),
                _tls_profile(hostname),
            )
        _ensure_crl(pki, ca_cert, ca_key, now)
    return pki


def ensure_token_tsa_cert(
    pki: Pki, public_key: rsa.RSAPublicKey, hostname: str, public_url: str | None = None
) -> Path:
    """The development CA's certificate for a timestamp authority key it never holds,
    one that stays in a PKCS#11 token (``[signing] pkcs11_tsa_key_label``,
    :class:`certifier.hsm.Pkcs11Key`): ``pki.tsa_token_cert``, issued for *public_key*
    with the TSA profile (timeStamping the only extended key usage, critical), and
    reused while it is for that key, issued by the CA on disk and not near its end.

    The development PKI must exist (:func:`ensure_dev_pki`); raises :class:`ValueError`
    when its CA is unusable."""
    with _locked(pki.ca_cert.parent / ".pki.lock"):
        now = dt.datetime.now(dt.UTC)
        ca = _load_pair(pki.ca_cert, pki.ca_key, now)
        if ca is None:
            raise ValueError(f"{pki.ca_cert}: no usable development CA")
        ca_cert, ca_key = ca
        try:
            cert = x509.load_pem_x509_certificate(pki.tsa_token_cert.read_bytes())
            if cert.public_key() == public_key and _current(cert, ca_cert, now):
                return pki.tsa_token_cert
        except (OSError, ValueError):
            pass
        (organisation,) = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        cert = _certificate(
            public_key,
            ca_cert,
            ca_key,
            now,
            _name(f"{hostname} timestamp authority (token)", str(organisation.value)),
            _tsa_profile,
            _published(public_url),
            TSA_VALIDITY,
        )
        _write_atomic(pki.tsa_token_cert, cert.public_bytes(serialization.Encoding.PEM), 0o600)
    return pki.tsa_token_cert


def current_crl(keys_dir: Path) -> bytes:
    """The CA's CRL (DER) in *keys_dir*, re-signed first when it is near its nextUpdate
    or missing. Raises :class:`OSError` or :class:`ValueError` when the CA is unusable."""
    pki = _paths(Path(keys_dir))
    now = dt.datetime.now(dt.UTC)
    try:
        # The usual case, without the lock or the CA's key (loading the key costs tens
        # of milliseconds, more than the rest of a certificate's long-term validation).
        data = pki.ca_crl.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        if _fresh_crl(data, ca_cert.public_key(), now):
            return data
    except (OSError, ValueError):
        pass
    with _locked(pki.ca_cert.parent / ".pki.lock"):
        now = dt.datetime.now(dt.UTC)
        ca = _load_pair(pki.ca_cert, pki.ca_key, now)
        if ca is None:
            raise ValueError(f"{pki.ca_cert}: no usable development CA")
        return _ensure_crl(pki, *ca, now)


def _ensure_crl(
    pki: Pki, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, now: dt.datetime
) -> bytes:
    try:
        data = pki.ca_crl.read_bytes()
        if _fresh_crl(data, ca_key.public_key(), now):
            return data
    except (OSError, ValueError):
        pass
    # Nothing is ever revoked by the development CA: an empty list, but a real one,
    # with the CRL number and authority key identifier RFC 5280 section 5.2 requires.
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    data = crl.public_bytes(serialization.Encoding.DER)
    _write_atomic(pki.ca_crl, data, 0o600)
    return data


def _fresh_crl(data: bytes, ca_public_key: object, now: dt.datetime) -> bool:
    """Whether *data* is a CRL signed by the CA's key that need not be re-signed yet."""
    if not isinstance(ca_public_key, rsa.RSAPublicKey):
        return False
    crl = x509.load_der_x509_crl(data)
    next_update = crl.next_update_utc
    return (
        crl.is_signature_valid(ca_public_key)
        and next_update is not None
        and next_update - now >= CRL_RENEW_BEFORE
    )


def _published(public_url: str | None) -> list[x509.ExtensionType]:
    """The extensions that name where the CRL and the CA certificate are served."""
    if not public_url:
        return []
    base = public_url.rstrip("/")
    return [
        x509.CRLDistributionPoints(
            [
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(base + CRL_PATH)],
                    relative_name=None,
                    reasons=None,
                    crl_issuer=None,
                )
            ]
        ),
        x509.AuthorityInformationAccess(
            [
                x509.AccessDescription(
                    x509.oid.AuthorityInformationAccessOID.CA_ISSUERS,
                    x509.UniformResourceIdentifier(base + CA_CERT_PATH),
                )
            ]
        ),
    ]


# --- building blocks -------------------------------------------------------------------


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _name(common_name: str, organisation: str) -> x509.Name:
    # A CN is limited to 64 characters (RFC 5280 ub-common-name); a long hostname
    # still works because TLS clients match the subjectAltName, not the CN.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _load_pair(
    cert_path: Path, key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, rsa.RSAPrivateKey] | None:
    """The certificate and key on disk, or None when missing, broken or expired."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, rsa.RSAPrivateKey):
        return None
    if cert.public_key() != key.public_key():
        return None
    if cert.not_valid_after_utc <= now:
        return None
    return cert, key


def _current(cert: x509.Certificate, ca_cert: x509.Certificate, now: dt.datetime) -> bool:
    """Whether a leaf certificate can still be used: issued by *this* CA's key (not by
    an earlier CA of the same name) and not within RENEW_BEFORE of its end."""
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey
) -> None:
    # Key first: a certificate on disk without its key would be reused by nobody, but
    # a key without certificate is simply re-made on the next start.
    _write_atomic(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o600)


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def _make_ca(
    pki: Pki, organisation: str, now: dt.datetime
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = _new_key()
    subject = _name(organisation, organisation)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(pki.ca_cert, pki.ca_key, cert, key)
    return cert, key


def _key_usage(
    *,
    digital_signature: bool = False,
    content_commitment: bool = False,
    key_encipherment: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=content_commitment,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _signing_profile(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    # No extendedKeyUsage: any EKU would restrict which validators accept the
    # signature (NSS, used by poppler, checks it against e-mail signing).
    return builder.add_extension(
        _key_usage(digital_signature=True, content_commitment=True), critical=True
    )


def _tsa_profile(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return builder.add_extension(
        _key_usage(digital_signature=True, content_commitment=True), critical=True
    ).add_extension(
        # RFC 3161 section 2.3: the TSA's certificate MUST contain only this EKU,
        # and it MUST be critical.
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
        critical=True,
    )


def _tls_profile(hostname: str) -> Profile:
    def profile(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
        names: list[x509.GeneralName] = []
        ips = {ipaddress.ip_address("127.0.0.1")}
        try:
            # A gateway reached by address: RFC 6125 matches IPs only as iPAddress.
            ips.add(ipaddress.ip_address(hostname))
        except ValueError:
            names.append(x509.DNSName(_a_label(hostname)))
        if "localhost" not in [n.value for n in names]:
            names.append(x509.DNSName("localhost"))
        names.extend(x509.IPAddress(ip) for ip in sorted(ips, key=str))
        return (
            builder.add_extension(
                _key_usage(digital_signature=True, key_encipherment=True), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )

    return profile


def _san_form(hostname: str) -> str:
    try:
        return str(ipaddress.ip_address(hostname))
    except ValueError:
        return _a_label(hostname).lower()


def _a_label(hostname: str) -> str:
    """The ASCII form of an internationalised hostname (RFC 5890), as SANs require."""
    try:
        return hostname.encode("idna").decode("ascii")
    except UnicodeError:
        return hostname.encode("ascii", "ignore").decode("ascii") or "localhost"


def _issue(
    cert_path: Path,
    key_path: Path,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    now: dt.datetime,
    subject: x509.Name,
    profile: Profile,
    published: Sequence[x509.ExtensionType] = (),
    validity: dt.timedelta = LEAF_VALIDITY,
) -> None:
    """A new key pair and its certificate, written to *key_path* and *cert_path*."""
    key = _new_key()
    cert = _certificate(
        key.public_key(), ca_cert, ca_key, now, subject, profile, published, validity
    )
    _write_pair(cert_path, key_path, cert, key)


def _certificate(
    public_key: rsa.RSAPublicKey,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    now: dt.datetime,
    subject: x509.Name,
    profile: Profile,
    published: Sequence[x509.ExtensionType] = (),
    validity: dt.timedelta = LEAF_VALIDITY,
) -> x509.Certificate:
    """The CA's certificate of *profile* for *public_key*."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for extension in published:
        builder = builder.add_extension(extension, critical=False)
    return profile(builder).sign(ca_key, hashes.SHA256())
