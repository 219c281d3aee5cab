"""The RFC 3161 timestamp authority, remote or in-process, behind one interface.

A PAdES B-T signature (ETSI EN 319 142-1) carries an RFC 3161 TimeStampToken over the
signature value, so a certificate proves *when* it was signed. pyHanko's
:class:`~pyhanko.sign.timestamps.TimeStamper` is the interface; there are two
implementations:

- :class:`~pyhanko.sign.timestamps.HTTPTimeStamper` — an RFC 3161 section 3.4
  "Time-Stamp Protocol via HTTP" client, used when the configuration names a TSA URL
  (production); every request has a timeout;
- :class:`LocalTimeStamper` — a real timestamp authority running in this process,
  signing TSTInfo structures (RFC 3161 section 2.4.2) as CMS SignedData (RFC 5652) with
  the development PKI's TSA key: a key file, or a key that stays in a PKCS#11 token
  (:class:`certifier.hsm.Pkcs11Key`). It is what the gateway uses with no configuration.
  It answers RFC 3161 requests (:meth:`~LocalTimeStamper.request_tsa_response`, what
  a TSA behind HTTP does) and, for the signer in the same process,
  :meth:`~LocalTimeStamper.timestamp_token` skips the request and response
  envelopes. Tokens are built by :class:`certifier.cms.CmsSigner`: the constant parts
  are encoded once, so a token costs about one RSA signature.

Errors: the HTTP client raises
:class:`~pyhanko.sign.timestamps.TimestampRequestError` (network failure, timeout,
malformed reply); the caller treats it as temporary and retries the certificate later.
The local authority raises :class:`ValueError` for a hash algorithm it does not
support (asn1crypto cannot encode the RFC 3161 rejection, a response without a token).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder
from pyhanko.sign import general
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper

from certifier.cms import (
    CONTENT_TYPE_TST_INFO,
    CmsSigner,
    attribute,
    der,
    digest_algorithm,
    generalized_time,
    hash_algorithm,
    integer,
    octet_string,
    sequence,
    utc_time,
)
from certifier.pki import Pki

__all__ = ["DEVELOPMENT_TSA_POLICY", "LocalTimeStamper", "make_timestamper"]

DEVELOPMENT_TSA_POLICY = "1.3.6.1.4.1.99999.1.1"
"""TSA policy OID (RFC 3161 section 2.4.2, ``policy``) of the in-process authority.

"Development policy": the arc 1.3.6.1.4.1.99999 is not a registered enterprise number;
the OID says "made by a Certifica development authority, no assurance about the
clock" and must never appear on a production timestamp.
"""


class LocalTimeStamper(TimeStamper):
    """An RFC 3161 timestamp authority that runs in this process.

    Its tokens carry a development policy OID, an unpredictable serial number, the
    TSA's name, the signing-certificate attribute the TSP profile requires (RFC 3161
    section 2.4.1, RFC 2634 section 5.4) and the CA certificates next to the TSA's own,
    so a verifier can build the TSA's chain from the token alone, as
    ``openssl ts -verify -CAfile ca.pem`` does.
    """

    def __init__(
        self,
        tsa_cert: asn1_x509.Certificate,
        tsa_key: rsa.RSAPrivateKey,
        ca_certs: list[asn1_x509.Certificate],
        policy: str = DEVELOPMENT_TSA_POLICY,
    ) -> None:
        super().__init__()
        self.tsa_cert = tsa_cert
        self.policy = policy
        self._signer = CmsSigner(tsa_cert, tsa_key, ca_certs)
        self._policy = tsp.ObjectIdentifier(policy).dump()
        # tsa [0] EXPLICIT GeneralName, the directoryName choice ([4] EXPLICIT Name).
        self._tsa_name = der(0xA0, der(0xA4, tsa_cert.subject.dump()))
        self._signing_cert_attr = cms.CMSAttribute(
            {
                "type": "signing_certificate",
                "values": [general.as_signing_certificate(tsa_cert)],
            }
        ).dump()

    @classmethod
    def from_files(
        cls, tsa_cert: Path, tsa_key: Path, ca_certs: Iterable[Path] = ()
    ) -> LocalTimeStamper:
        """The authority whose certificate and RSA key are in these PEM/DER files."""
        key = serialization.load_pem_private_key(Path(tsa_key).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{tsa_key}: the timestamp authority key must be RSA")
        return cls.with_key(tsa_cert, key, ca_certs)

    @classmethod
    def with_key(
        cls, tsa_cert: Path, tsa_key: rsa.RSAPrivateKey, ca_certs: Iterable[Path] = ()
    ) -> LocalTimeStamper:
        """The authority whose certificate is in this PEM/DER file and whose RSA key is
        *tsa_key*: a key file's, or a :class:`certifier.hsm.Pkcs11Key` that signs inside
        a token (``[signing] pkcs11_tsa_key_label``)."""
        return cls(
            tsa_cert=load_cert_from_pemder(str(tsa_cert)),
            tsa_key=tsa_key,
            ca_certs=list(load_certs_from_pemder([str(p) for p in ca_certs])),
        )

    @classmethod
    def from_pki(cls, pki: Pki) -> LocalTimeStamper:
        """The in-process authority of the development PKI."""
        return cls.from_files(pki.tsa_cert, pki.tsa_key, [pki.ca_cert])

    def timestamp_token(self, message_digest: bytes, md_algorithm: str = "sha256") -> bytes:
        """A DER TimeStampToken over *message_digest*, without request and response.

        What the signer in this process uses: there is no network, so no nonce.
        """
        if len(message_digest) != hash_algorithm(md_algorithm).digest_size:
            raise ValueError(f"a {md_algorithm} digest has not {len(message_digest)} bytes")
        imprint = sequence(digest_algorithm(md_algorithm), octet_string(message_digest))
        return self._token(imprint, nonce=None)

    def request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        """Answer an RFC 3161 TimeStampReq (section 2.4.1) with a TimeStampResp (2.4.2)."""
        imprint = req["message_imprint"]
        algorithm = str(imprint["hash_algorithm"]["algorithm"].native)
        if len(imprint["hashed_message"].native) != hash_algorithm(algorithm).digest_size:
            raise ValueError(f"the message imprint is not a {algorithm} digest")
        # The token's messageImprint is the request's, byte for byte (section 2.4.2).
        token = self._token(imprint.dump(), nonce=req["nonce"].native)
        return tsp.TimeStampResp(
            {"status": {"status": "granted"}, "time_stamp_token": cms.ContentInfo.load(token)}
        )

    async def async_request_tsa_response(self, req: tsp.TimeStampReq) -> tsp.TimeStampResp:
        return self.request_tsa_response(req)

    def _token(self, imprint: bytes, nonce: int | None) -> bytes:
        now = datetime.now(UTC)
        tst_info = sequence(
            integer(1),
            self._policy,
            imprint,
            # serialNumber must be unique per TSA (section 2.4.2); 64 random bits make
            # collisions between restarts and worker processes negligible.
            integer(secrets.randbits(63) | (1 << 63)),
            generalized_time(now),
            integer(nonce) if nonce is not None else b"",
            self._tsa_name,
        )
        signer = self._signer
        signed = signer.signed_attributes(
            CONTENT_TYPE_TST_INFO,
            signer.digest(tst_info),
            attribute("signing_time", utc_time(now)),
            self._signing_cert_attr,
        )
        return signer.content_info(
            CONTENT_TYPE_TST_INFO, signed, signer.sign(signed), content=tst_info
        )


def make_timestamper(pki: Pki | None, url: str | None, timeout: float = 10.0) -> TimeStamper:
    """The timestamp authority to use: the remote one at *url*, else the local one."""
    if url:
        return HTTPTimeStamper(url, timeout=timeout)
    if pki is None:
        raise ValueError("no timestamp authority: give a TSA URL or a development PKI")
    return LocalTimeStamper.from_pki(pki)
