"""Signing certificates as PAdES baseline B-T (ETSI EN 319 142-1).

A certificate PDF gets one approval signature: a CMS SignedData (RFC 5652), detached,
in the PDF's ``/Contents`` with SubFilter ``ETSI.CAdES.detached`` (ISO 32000-2 section
12.8, ETSI EN 319 142-1 section 5.1), with the CAdES signed attributes
(signing-certificate-v2, message-digest, content-type) and an RFC 3161 signature
timestamp (id-aa-signatureTimeStampToken, RFC 5652 unsigned attribute) over the
signature value. That is level B-T: it proves who signed and that the signature existed
at the timestamp's time.

:class:`DocumentSigner` is built once per process: the key is parsed once, the
certificate chain is loaded once, and the space for the CMS blob is fixed, so pyHanko
does not sign twice to estimate its size.

Errors: :class:`~pyhanko.sign.general.SigningError` for a PDF pyHanko cannot sign,
:class:`~pyhanko.sign.timestamps.TimestampRequestError` when the remote TSA fails
(temporary: the caller retries), :class:`ValueError` for unusable key material.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from asn1crypto import keys
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.sign.fields import SigSeedSubFilter
from pyhanko.sign.general import SigningError
from pyhanko.sign.signers import PdfSignatureMetadata, PdfSigner, SimpleSigner
from pyhanko.sign.timestamps import DummyTimeStamper, TimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore

__all__ = ["SIGNATURE_FIELD", "DocumentSigner", "KeySigner"]

SIGNATURE_FIELD = "CertificaSignature"
"""Name of the (invisible) signature field every certificate carries."""

# Room for the CMS blob beyond our own certificates: signed attributes and the
# signature value, and the timestamp token. An in-process TSA's token is measured once;
# a remote TSA's is not known in advance: a commercial TSA's token with a
# three-certificate chain is around 6 KiB, 16 KiB leaves room for a long one.
_REMOTE_TOKEN_ALLOWANCE = 16 * 1024
_CMS_OVERHEAD = 2 * 1024

_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


class KeySigner(SimpleSigner):
    """A :class:`SimpleSigner` that keeps the parsed private key.

    pyHanko's ``SimpleSigner.sign_raw`` re-parses the DER key for every signature; the
    parse includes cryptography's RSA key consistency check, which costs more than
    everything else in a signature (tens to hundreds of milliseconds) and buys nothing
    once the key has been checked on load. Other mechanisms use pyHanko's own code.
    """

    def __init__(
        self,
        signing_cert: asn1_x509.Certificate,
        private_key: rsa.RSAPrivateKey,
        cert_registry: SimpleCertificateStore,
    ) -> None:
        key_info = keys.PrivateKeyInfo.load(
            private_key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        super().__init__(
            signing_cert=signing_cert, signing_key=key_info, cert_registry=cert_registry
        )
        self._private_key = private_key

    def sign_raw(self, data: bytes, digest_algorithm: str) -> bytes:
        mechanism = self.get_signature_mechanism_for_digest(digest_algorithm)
        algo = _HASHES.get(digest_algorithm.lower())
        if mechanism.signature_algo != "rsassa_pkcs1v15" or algo is None:
            return super().sign_raw(data, digest_algorithm)
        return self._private_key.sign(data, padding.PKCS1v15(), algo)


class DocumentSigner:
    """Signs certificate PDFs, PAdES B-T. Build once per process, reuse for every PDF."""

    def __init__(
        self,
        signing_cert: Path,
        signing_key: Path,
        extra_certs: Iterable[Path],
        timestamper: TimeStamper,
        key_passphrase: bytes | None = None,
    ) -> None:
        key = serialization.load_pem_private_key(
            Path(signing_key).read_bytes(), password=key_passphrase
        )
        if not isinstance(key, rsa.RSAPrivateKey):
            # The development PKI makes RSA keys; an EC key works with pyHanko too but
            # would need its own size budget and tests before we claim support.
            raise ValueError(f"{signing_key}: the document signing key must be RSA")
        cert = load_cert_from_pemder(str(signing_cert))
        chain = [load_cert_from_pemder(str(p)) for p in extra_certs]
        if cert.public_key.native != _public_key_info(key).native:
            raise ValueError(f"{signing_key} is not the key of {signing_cert}")
        store = SimpleCertificateStore()
        store.register_multiple(chain)
        self.signer = KeySigner(signing_cert=cert, private_key=key, cert_registry=store)
        self.timestamper = timestamper
        own_chain = len(cert.dump()) + sum(len(c.dump()) for c in chain)
        # A fixed reservation spares pyHanko a trial signature (and a trial timestamp)
        # per document to estimate the size. The CMS blob is written hex-encoded, hence
        # twice its DER size.
        self.bytes_reserved = 2 * (own_chain + _CMS_OVERHEAD + _token_allowance(timestamper))

    def sign(
        self,
        pdf: bytes,
        reason: str = "Certified e-mail evidence",
        location: str | None = None,
    ) -> bytes:
        """Return *pdf* with a PAdES B-T signature added as an incremental update."""
        meta = PdfSignatureMetadata(
            field_name=SIGNATURE_FIELD,
            md_algorithm="sha256",
            subfilter=SigSeedSubFilter.PADES,
            reason=reason,
            location=location,
        )
        pdf_signer = PdfSigner(meta, signer=self.signer, timestamper=self.timestamper)
        try:
            return self._sign_once(pdf_signer, pdf, self.bytes_reserved)
        except SigningError as exc:
            # Only a TSA answering with an unexpectedly long token gets here; let
            # pyHanko measure the real size (two signatures) rather than fail.
            if "larger than expected" not in str(exc):
                raise
            return self._sign_once(pdf_signer, pdf, None)

    @staticmethod
    def _sign_once(pdf_signer: PdfSigner, pdf: bytes, bytes_reserved: int | None) -> bytes:
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        out = io.BytesIO()
        pdf_signer.sign_pdf(writer, bytes_reserved=bytes_reserved, output=out)
        return out.getvalue()


def _token_allowance(timestamper: TimeStamper) -> int:
    if not isinstance(timestamper, DummyTimeStamper):
        # A remote TSA is not asked at start-up: it may be down, and that must not stop
        # the gateway from accepting mail (certificates wait and retry instead).
        return _REMOTE_TOKEN_ALLOWANCE
    _, request = timestamper.request_cms(hashlib.sha256(b"size probe").digest(), "sha256")
    token = timestamper.request_tsa_response(request)["time_stamp_token"]
    # Tokens of one authority differ only in serial number, nonce and time.
    return len(token.dump()) + 256


def _public_key_info(key: rsa.RSAPrivateKey) -> keys.PublicKeyInfo:
    return keys.PublicKeyInfo.load(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
