"""The RFC 3161 timestamp authority, remote or in-process, behind one interface.

A PAdES B-T signature (ETSI EN 319 142-1) carries an RFC 3161 TimeStampToken over the
signature value, so a certificate proves *when* it was signed. pyHanko's
:class:`~pyhanko.sign.timestamps.TimeStamper` is the interface; there are two
implementations:

- :class:`~pyhanko.sign.timestamps.HTTPTimeStamper` — an RFC 3161 section 3.4
  "Time-Stamp Protocol via HTTP" client, used when the configuration names a TSA URL
  (production);
- :class:`LocalTimeStamper` — a real timestamp authority running in this process,
  signing TSTInfo structures (RFC 3161 section 2.4.2) as CMS SignedData (RFC 5652) with
  the development PKI's TSA key. It is what the gateway uses with no configuration.

Errors: the HTTP client raises
:class:`~pyhanko.sign.timestamps.TimestampRequestError` (network failure, timeout,
malformed reply); the caller treats it as temporary and retries the certificate later.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from asn1crypto import cms, keys, tsp
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pyhanko.keys import load_cert_from_pemder, load_certs_from_pemder
from pyhanko.sign import general
from pyhanko.sign.general import simple_cms_attribute
from pyhanko.sign.timestamps import DummyTimeStamper, HTTPTimeStamper, TimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

from certifier.pki import Pki

__all__ = ["DEVELOPMENT_TSA_POLICY", "LocalTimeStamper", "make_timestamper"]

DEVELOPMENT_TSA_POLICY = "1.3.6.1.4.1.99999.1.1"
"""TSA policy OID (RFC 3161 section 2.4.2, ``policy``) of the in-process authority.

"Development policy": the arc 1.3.6.1.4.1.99999 is not a registered enterprise number;
the OID says "made by a Certifica development authority, no assurance about the
clock" and must never appear on a production timestamp.
"""

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class LocalTimeStamper(DummyTimeStamper):
    """An RFC 3161 timestamp authority that runs in this process.

    pyHanko's ``DummyTimeStamper`` is a complete in-process TSA; this subclass gives it
    a development policy OID, unpredictable serial numbers, the CA certificate in every
    token (so a verifier can build the TSA's chain from the token alone, as
    ``openssl ts -verify -CAfile ca.pem`` does), and parses the TSA key once instead of
    on every request.
    """

    def __init__(
        self,
        tsa_cert: asn1_x509.Certificate,
        tsa_key: rsa.RSAPrivateKey,
        ca_certs: list[asn1_x509.Certificate],
        policy: str = DEVELOPMENT_TSA_POLICY,
    ) -> None:
        store = SimpleCertificateStore()
        store.register_multiple(ca_certs)
        key_info = keys.PrivateKeyInfo.load(
            tsa_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        super().__init__(tsa_cert=tsa_cert, tsa_key=key_info, certs_to_embed=store)
        self._key = tsa_key
        self.policy = policy
        # The signing-certificate attribute is the same in every token; built and
        # serialised once, it is reused as parsed DER (asn1crypto re-serialises a
        # freshly built one, which was most of the cost of a timestamp).
        self._signing_cert_attr = cms.CMSAttribute.load(
            simple_cms_attribute(
                "signing_certificate", general.as_signing_certificate(tsa_cert)
            ).dump()
        )

    @classmethod
    def from_files(
        cls, tsa_cert: Path, tsa_key: Path, ca_certs: Iterable[Path] = ()
    ) -> LocalTimeStamper:
        """The authority whose certificate and RSA key are in these PEM/DER files."""
        key = serialization.load_pem_private_key(Path(tsa_key).read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{tsa_key}: the timestamp authority key must be RSA")
        return cls(
            tsa_cert=load_cert_from_pemder(str(tsa_cert)),
            tsa_key=key,
            ca_certs=list(load_certs_from_pemder([str(p) for p in ca_certs])),
        )

    @classmethod
    def from_pki(cls, pki: Pki) -> LocalTimeStamper:
        """The in-process authority of the development PKI."""
        return cls.from_files(pki.tsa_cert, pki.tsa_key, [pki.ca_cert])

    def _build_tst_info(
        self,
        message_imprint: tsp.MessageImprint,
        dt: datetime,
        req: tsp.TimeStampReq,
    ) -> tsp.TSTInfo:
        tst_info = super()._build_tst_info(message_imprint, dt, req)
        tst_info["policy"] = tsp.ObjectIdentifier(self.policy)
        # RFC 3161 section 2.4.2: serialNumber must be unique per TSA; 64 random bits
        # make collisions between restarts and worker processes negligible.
        tst_info["serial_number"] = secrets.randbits(63) | (1 << 63)
        return tst_info

    def _sign_tst_info(
        self, tst_info_data: bytes, md_algorithm: str, dt: datetime
    ) -> tuple[bytes, cms.CMSAttributes]:
        # Same signed attributes as the parent (RFC 5652 section 11 content-type,
        # message-digest, signing-time, plus the RFC 2634/5035 signing-certificate the
        # TSP profile requires) but signed with the key parsed once in __init__.
        algo = _HASHES.get(md_algorithm.lower())
        if algo is None:
            raise ValueError(f"unsupported timestamp digest algorithm {md_algorithm!r}")
        digest = hashes.Hash(algo)
        digest.update(tst_info_data)
        signed_attrs = cms.CMSAttributes(
            [
                simple_cms_attribute("content_type", "tst_info"),
                simple_cms_attribute("signing_time", cms.Time({"utc_time": dt})),
                self._signing_cert_attr,
                simple_cms_attribute("message_digest", digest.finalize()),
            ]
        )
        signature = self._key.sign(signed_attrs.dump(), padding.PKCS1v15(), algo)
        return signature, signed_attrs


def make_timestamper(pki: Pki | None, url: str | None, timeout: float = 10.0) -> TimeStamper:
    """The timestamp authority to use: the remote one at *url*, else the local one."""
    if url:
        return HTTPTimeStamper(url, timeout=timeout)
    if pki is None:
        raise ValueError("no timestamp authority: give a TSA URL or a development PKI")
    return LocalTimeStamper.from_pki(pki)
