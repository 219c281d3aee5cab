"""Long-term validation: a signed certificate PDF made PAdES B-LT, then B-LTA.

A PAdES B-T signature (ETSI EN 319 142-1) proves what it proves only while its
certificates are valid and their revocation status can be fetched. Two incremental updates
(ISO 32000-2 section 7.5.6) after the signature make it verifiable offline, years later,
after every certificate in it has expired and after the gateway is gone:

1. **B-LT**: a document security store (DSS, ISO 32000-2 section 12.8.4.3; ETSI EN 319
   142-1 section 5.4) with the whole chains of the signing certificate and of its signature
   timestamp's authority, and their revocation data (the CRLs), with a VRI entry for the
   signature;
2. **B-LTA**: a document timestamp (``/DocTimeStamp``, ETSI EN 319 142-1 section 5.5) over
   the whole file, DSS included (the DSS already holds its authority's chain when that is
   the signature timestamp's; another authority's would follow in one more update).
   It proves that the revocation data existed while the certificates were valid; a later
   document timestamp (renewal) extends that proof past the expiry of this one's authority.

With the development PKI (:mod:`certifier.pki`) the CRL comes straight from the CA's files
(no HTTP fetch); with an operator's certificates pyHanko fetches what their
cRLDistributionPoints and OCSP responders publish.

Errors: pyHanko raises when a certificate has no valid path to a trust root or its
revocation status cannot be established (``hard-fail``): the certificate is then not
issued, as with a failing TSA, and the caller retries later.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable

from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.signers.pdf_signer import PdfTimeStamper, TimestampDSSContentSettings
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.sign.validation import add_validation_info
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError

log = logging.getLogger("certifica/lta")

__all__ = ["Archiver"]


class Archiver:
    """Adds the DSS and, with ``document_timestamp``, the document timestamp to signed
    PDFs. Build once per process, reuse for every PDF."""

    def __init__(
        self,
        timestamper: TimeStamper,
        certificates: Iterable[asn1_x509.Certificate],
        crls: Callable[[], list[bytes]] | None,
        *,
        fetch: bool = False,
        document_timestamp: bool = True,
    ) -> None:
        """*certificates*: every CA certificate of the signing and timestamping chains
        (the self-signed ones are the trust roots); *crls*: returns the current CRLs
        (DER) known without asking the network; *fetch*: let pyHanko fetch the rest (the
        CRLs and OCSP responses an operator's or a remote TSA's certificates name)."""
        certs = list(certificates)
        self.roots = [c for c in certs if c.self_signed == "maybe" or c.self_signed == "yes"]
        self.others = [c for c in certs if c not in self.roots]
        self.timestamper = timestamper
        self.crls = crls
        self.fetch = fetch or crls is None
        self.document_timestamp = document_timestamp

    def _context(
        self, known: list[bytes], more: Iterable[asn1_x509.Certificate] = ()
    ) -> ValidationContext:
        # A fresh context per step: a context caches what it validated.
        more = list(more)
        return ValidationContext(
            # The roots the signature's own chain ends in (a PKCS#12 file's) count too:
            # this collects validation data for our own signature, it judges nothing.
            trust_roots=[*self.roots, *(c for c in more if c.self_signed in ("maybe", "yes"))]
            or None,
            other_certs=[*self.others, *more],
            crls=[asn1_crl.CertificateList.load(c) for c in known],
            allow_fetching=self.fetch,
            # The development CA's CRL is always there; an operator's CA may publish
            # nothing reachable, and the certificate is still issued (B-T, logged).
            revocation_mode="soft-fail" if self.fetch else "hard-fail",
        )

    def archive(self, pdf: bytes) -> bytes:
        """*pdf* (signed) with its DSS and, if so configured, a document timestamp."""
        reader = PdfFileReader(io.BytesIO(pdf))
        signature = reader.embedded_signatures[-1]
        # Read once per document, so that both steps put the same CRLs in (one re-signed
        # in between would make the timestamp step write the DSS again, after itself).
        known = [] if self.crls is None else self.crls()
        try:
            context = self._context(known, signature.other_embedded_certs)
            out = add_validation_info(signature, context, add_vri_entry=True)
        except (PathBuildingError, PathValidationError) as exc:
            if not self.fetch:
                raise
            # An operator's chain that does not end in a root we were given: the
            # certificate stays B-T rather than not being issued.
            log.warning("certificate left PAdES B-T: no validation data (%s)", _why(exc))
            return pdf
        if not self.document_timestamp:
            return bytes(out.getvalue())
        return self._timestamp(out.getvalue(), known)

    def _timestamp(self, pdf: bytes, known: list[bytes]) -> bytes:
        """*pdf* with a document timestamp (an incremental update)."""
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        # The DSS already holds the chain and CRL of our TSA (the signature timestamp's):
        # without a VRI entry for the timestamp nothing is written after it, so the
        # newest timestamp covers the whole file and every byte stays protected
        # (certifier.verify). Another TSA's data is still added after it.
        out = PdfTimeStamper(self.timestamper).timestamp_pdf(
            writer,
            "sha256",
            validation_context=self._context(known),
            dss_settings=TimestampDSSContentSettings(include_vri=False),
        )
        return bytes(out.getvalue())


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
