"""Lean CMS SignedData (RFC 5652) for certificate signatures and timestamp tokens.

A certificate's signature (ETSI EN 319 142-1, PAdES) and the in-process authority's
RFC 3161 tokens are both CMS SignedData with one signer, an RSA key, SHA-256 and a
handful of signed attributes. Almost all of their bytes are the same in every
signature: the certificates, the signer identifier, the algorithm identifiers and the
signing-certificate attribute. :class:`CmsSigner` encodes those once, with asn1crypto,
when it is built; per signature it only concatenates DER (X.690): the few varying
attributes, the signature value and, for a token, the TSTInfo. That keeps a signature
at the cost of its RSA operation instead of the milliseconds that building the whole
structure as asn1crypto objects takes.

The output is DER, as ISO 32000-2 section 12.8.3.3 requires of a PDF signature: SET OF
elements sorted by their encoding (X.690 section 11.6, as asn1crypto sorts them), every
length in its shortest form. ``tests/test_signing_cms.py`` checks that asn1crypto
re-encodes every structure made here to the same bytes.

Errors: :class:`ValueError` for an unsupported digest algorithm.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from asn1crypto import algos, cms
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "CONTENT_TYPE_DATA",
    "CONTENT_TYPE_TST_INFO",
    "CmsSigner",
    "attribute",
    "der",
    "digest_algorithm",
    "generalized_time",
    "hash_algorithm",
    "integer",
    "octet_string",
    "sequence",
    "set_of",
    "utc_time",
]


# --- DER (X.690) ------------------------------------------------------------------------


def der(tag: int, content: bytes) -> bytes:
    """One DER element: identifier octet *tag*, the definite length, *content*."""
    n = len(content)
    if n < 0x80:
        return bytes((tag, n)) + content
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def sequence(*parts: bytes) -> bytes:
    """SEQUENCE of already encoded *parts*, in order."""
    return der(0x30, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    """SET OF already encoded *parts*, sorted by encoding as DER requires."""
    return der(0x31, b"".join(sorted(parts)))


def integer(value: int) -> bytes:
    """INTEGER in the fewest two's-complement octets."""
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return der(0x04, value)


def generalized_time(when: datetime) -> bytes:
    """GeneralizedTime in UTC, fraction without trailing zeros (RFC 3161 section 2.4.2)."""
    when = when.astimezone(UTC)
    text = when.strftime("%Y%m%d%H%M%S")
    fraction = f"{when.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    return der(0x18, (text + "Z").encode("ascii"))


def utc_time(when: datetime) -> bytes:
    """UTCTime (RFC 5652 section 11.3: signing-time for the years 1950 to 2049)."""
    return der(0x17, when.astimezone(UTC).strftime("%y%m%d%H%M%SZ").encode("ascii"))


def attribute(attr_type: str, *values: bytes) -> bytes:
    """A CMS Attribute (RFC 5652 section 5.3): its type by asn1crypto name, its values."""
    return sequence(_ATTRIBUTE_TYPES[attr_type], set_of(*values))


_ATTRIBUTE_TYPES = {
    name: cms.CMSAttributeType(name).dump()
    for name in (
        "content_type",
        "message_digest",
        "signing_time",
        "signing_certificate",
        "signing_certificate_v2",
        "signature_time_stamp_token",
    )
}

CONTENT_TYPE_DATA = cms.ContentType("data").dump()
"""id-data, the content type of a detached signature over a document (RFC 5652 4)."""
CONTENT_TYPE_TST_INFO = cms.ContentType("tst_info").dump()
"""id-ct-TSTInfo, the content type of an RFC 3161 TimeStampToken."""
_CONTENT_TYPE_SIGNED_DATA = cms.ContentType("signed_data").dump()

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_DIGEST_ALGORITHMS = {name: algos.DigestAlgorithm({"algorithm": name}).dump() for name in _HASHES}


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    """The cryptography hash for a digest algorithm name (sha256, sha384, sha512)."""
    try:
        return _HASHES[name.lower()]()
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {name!r}") from None


def digest_algorithm(name: str) -> bytes:
    """DER DigestAlgorithmIdentifier of *name*, as asn1crypto encodes it."""
    try:
        return _DIGEST_ALGORITHMS[name.lower()]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {name!r}") from None


class CmsSigner:
    """One RSA signer and the certificates it ships: builds CMS SignedData, SHA-256.

    The SignerInfo is version 1 with issuerAndSerialNumber (RFC 5652 section 5.3), the
    signature RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017; ``sha256WithRSAEncryption``,
    RFC 4055). *certs* are put in the certificate set next to the signer's own.
    """

    digest_name = "sha256"

    def __init__(
        self,
        cert: asn1_x509.Certificate,
        key: rsa.RSAPrivateKey,
        certs: Iterable[asn1_x509.Certificate] = (),
    ) -> None:
        self.cert = cert
        self._key = key
        self._hash = hash_algorithm(self.digest_name)
        self._digest_algorithm = digest_algorithm(self.digest_name)
        self._signature_algorithm = algos.SignedDigestAlgorithm({"algorithm": "sha256_rsa"}).dump()
        self._sid = cms.IssuerAndSerialNumber(
            {"issuer": cert.issuer, "serial_number": cert.serial_number}
        ).dump()
        # certificates [0] IMPLICIT CertificateSet: a SET OF, so sorted, each once.
        encoded = {c.dump() for c in (cert, *certs)}
        self._certificates = der(0xA0, b"".join(sorted(encoded)))

    def digest(self, *parts: bytes | memoryview) -> bytes:
        """The SHA-256 of *parts*, concatenated (what the message-digest attribute holds)."""
        h = hashes.Hash(self._hash)
        for part in parts:
            h.update(part)
        return h.finalize()

    def signed_attributes(
        self, content_type: bytes, message_digest: bytes, *others: bytes
    ) -> bytes:
        """DER SET OF the signed attributes: content-type, message-digest, *others*.

        This SET OF encoding is what the signature is computed over (RFC 5652 5.4).
        """
        return set_of(
            attribute("content_type", content_type),
            attribute("message_digest", octet_string(message_digest)),
            *others,
        )

    def sign(self, signed_attributes: bytes) -> bytes:
        """The signature value over *signed_attributes* (a DER SET OF)."""
        return self._key.sign(signed_attributes, padding.PKCS1v15(), self._hash)

    def content_info(
        self,
        content_type: bytes,
        signed_attributes: bytes,
        signature: bytes,
        *,
        content: bytes | None = None,
        unsigned_attributes: Iterable[bytes] = (),
    ) -> bytes:
        """DER ContentInfo holding the SignedData (RFC 5652 sections 3 and 5.1).

        *content* is encapsulated when given (a token's TSTInfo), else the signature is
        detached (a PDF signature: the content is the document's byte ranges).
        """
        unsigned = list(unsigned_attributes)
        signer_info = sequence(
            integer(1),
            self._sid,
            self._digest_algorithm,
            # signedAttrs [0] IMPLICIT: the same content as the signed SET OF.
            b"\xa0" + signed_attributes[1:],
            self._signature_algorithm,
            octet_string(signature),
            der(0xA1, b"".join(sorted(unsigned))) if unsigned else b"",
        )
        if content is None:
            encapsulated = sequence(content_type)
        else:
            encapsulated = sequence(content_type, der(0xA0, octet_string(content)))
        # RFC 5652 section 5.1: version 3 when the content is not id-data.
        version = 1 if content_type == CONTENT_TYPE_DATA else 3
        signed_data = sequence(
            integer(version),
            set_of(self._digest_algorithm),
            encapsulated,
            self._certificates,
            set_of(signer_info),
        )
        return sequence(_CONTENT_TYPE_SIGNED_DATA, der(0xA0, signed_data))
