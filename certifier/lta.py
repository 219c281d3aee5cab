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

**Renewal** (:meth:`Archiver.renew`, ETSI EN 319 142-1 section 5.5, the "LTA" cycle of
ETSI EN 319 102-1 section 5.6.3) appends one more incremental update to a B-LT or B-LTA
file, never rewriting a byte before it: the validation data of its newest timestamp (the
authority's chain and current CRLs) in the DSS, then a new document timestamp over the
whole file, that DSS included. The DSS update comes *before* the timestamp, in the same
revision, so the newest timestamp always covers the whole file (what
:mod:`certifier.verify` requires). A B-LT file (issued with ``[evidence] lta_delay`` > 0)
gets its first document timestamp the same way. A file left B-T at issue first gets its
signer's chain and revocation data, as at issue; when those still cannot be had, it is
not renewed (:class:`NoValidationData`) and stays as it was, to be tried again.

With the development PKI (:mod:`certifier.pki`) the CRL comes straight from the CA's files
(no HTTP fetch); with an operator's certificates pyHanko fetches what their
cRLDistributionPoints and OCSP responders publish.

Errors: pyHanko raises when a certificate has no valid path to a trust root or its
revocation status cannot be established (``hard-fail``): the certificate is then not
issued, as with a failing TSA, and the caller retries later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
from collections.abc import Callable, Iterable

from asn1crypto import cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.general import extract_certificate_info
from pyhanko.sign.signers.pdf_signer import PdfTimeStamper, TimestampDSSContentSettings
from pyhanko.sign.timestamps import TimeStamper
from pyhanko.sign.validation import DocumentSecurityStore, add_validation_info
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathBuildingError, PathValidationError

from certifier.errors import PermanentError

log = logging.getLogger("certifica/lta")

__all__ = ["Archiver", "NewestTimestamp", "NoValidationData", "newest_timestamp"]


class NoValidationData(PermanentError, ValueError):
    """The signer's certificate has no path to a trust root: the validation data a
    renewal must add first (ETSI EN 319 142-1 section 5.4) cannot be had."""


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

    def archive(self, pdf: bytes, document_timestamp: bool | None = None) -> bytes:
        """*pdf* (signed) with its DSS and, if so configured (or *document_timestamp*
        says), a document timestamp."""
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
        if not (self.document_timestamp if document_timestamp is None else document_timestamp):
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

    def renew(self, pdf: bytes) -> bytes:
        """*pdf* (B-LT or B-LTA) with one more incremental update: the validation data of
        its newest timestamp in the DSS, then a new document timestamp over the whole file.

        Raises pyHanko's path errors when the newest timestamp's authority no longer has
        a valid path to a root (expired, revoked): the file cannot be renewed any more,
        which is why renewal runs well before that (``[evidence] renew_before``).
        Raises :class:`NoValidationData` for a file without its signer's validation data
        (left B-T at issue) whose signer's chain cannot be built now either."""
        reader = PdfFileReader(io.BytesIO(pdf))
        known = [] if self.crls is None else self.crls()
        if not _signer_in_dss(reader):
            # Left PAdES B-T at issue (no validation data could be had then): the
            # signature's own chain and revocation data first, as at issue. Without
            # them the file is not renewed: it would get only the timestamp's data, and
            # the later renewals, finding a DSS, would never add the signer's.
            signature = reader.embedded_regular_signatures[0]
            try:
                context = self._context(known, signature.other_embedded_certs)
                out = add_validation_info(signature, context, add_vri_entry=True)
            except (PathBuildingError, PathValidationError) as exc:
                raise NoValidationData(
                    f"no validation data for the signer's certificate ({_why(exc)})"
                ) from None
            pdf = bytes(out.getvalue())
            reader = PdfFileReader(io.BytesIO(pdf))
        newest = newest_timestamp(reader)
        context = self._context(known, newest.certificates)
        # The newest timestamp's authority, validated now (its certificates still valid)
        # with current revocation data: this is what the new timestamp preserves.
        validator = CertificateValidator(
            newest.tsa_cert, intermediate_certs=newest.certificates, validation_context=context
        )
        path = asyncio.run(validator.async_validate_usage(set(), {"time_stamping"}))
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        # No VRI entry: a VRI is keyed by a signature that exists, and this update must
        # come before the new timestamp, which then covers it (certifier.verify).
        DocumentSecurityStore.supply_dss_in_writer(
            writer, None, paths=[path], validation_context=context
        )
        out = PdfTimeStamper(self.timestamper).timestamp_pdf(
            writer,
            "sha256",
            validation_context=context,
            # The new timestamp's own authority (another one, after a change of TSA) goes
            # into the same DSS update, before the timestamp, never after it.
            dss_settings=TimestampDSSContentSettings(include_vri=False, update_before_ts=True),
        )
        return bytes(out.getvalue())

    def tsa_certificate(self) -> asn1_x509.Certificate:
        """The certificate of the authority this archiver's timestamps come from (read
        from a token it issued; pyHanko asks a remote authority once per process)."""
        token = asyncio.run(self.timestamper.async_dummy_response("sha256"))
        return extract_certificate_info(token["content"]).signer_cert


class NewestTimestamp:
    """The newest timestamp of a certificate PDF: its authority's certificate and the
    certificates its token carries, and how many document timestamps the file has."""

    def __init__(
        self,
        tsa_cert: asn1_x509.Certificate,
        certificates: list[asn1_x509.Certificate],
        document_timestamps: int,
    ) -> None:
        self.tsa_cert = tsa_cert
        self.certificates = certificates
        self.document_timestamps = document_timestamps

    @property
    def expires(self) -> dt.datetime:
        """When the newest timestamp's authority certificate expires (UTC)."""
        return self.tsa_cert.not_valid_after.astimezone(dt.UTC)


def newest_timestamp(source: bytes | PdfFileReader) -> NewestTimestamp:
    """The newest timestamp of a certificate PDF: its last document timestamp, else (a
    B-T or B-LT file) the signature timestamp of its signature. Raises
    :class:`ValueError` when the file has neither."""
    reader = PdfFileReader(io.BytesIO(source)) if isinstance(source, bytes) else source
    stamps = reader.embedded_timestamp_signatures
    if stamps:
        data = stamps[-1].signed_data
    else:
        signatures = reader.embedded_regular_signatures
        if not signatures:
            raise ValueError("the file has no signature")
        token = _signature_timestamp(signatures[0])
        if token is None:
            raise ValueError("the signature carries no timestamp")
        data = token["content"]
    found = extract_certificate_info(data)
    return NewestTimestamp(found.signer_cert, list(found.other_certs), len(stamps))


def _signer_in_dss(reader: PdfFileReader) -> bool:
    """Whether the file's DSS holds its signer's certificate (its validation data was
    added, at issue or by a renewal)."""
    if "/DSS" not in reader.root:
        return False
    signatures = reader.embedded_regular_signatures
    if not signatures:
        raise ValueError("the file has no signature")
    certs = DocumentSecurityStore.read_dss(reader).certs
    return signatures[0].signer_cert.issuer_serial in certs


def _signature_timestamp(sig: EmbeddedPdfSignature) -> cms.ContentInfo | None:
    """The RFC 3161 token of *sig* (id-aa-signatureTimeStampToken, RFC 3161 appendix A)."""
    for attr in sig.signer_info["unsigned_attrs"] or ():
        if attr["type"].native == "signature_time_stamp_token" and len(attr["values"]) == 1:
            return attr["values"][0]
    return None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
