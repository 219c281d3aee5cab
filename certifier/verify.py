"""Verifying a certificate PDF offline, without the gateway's database.

What a certificate is (see :mod:`certifier.document` and :mod:`certifier.signing`): a
PDF with one PAdES signature (ETSI EN 319 142-1, CMS per RFC 5652, SubFilter
``ETSI.CAdES.detached``) carrying an RFC 3161 signature timestamp, and two embedded
files, ``message.eml`` and ``evidence.json``; since PAdES B-LTA (:mod:`certifier.lta`)
the signature is followed by a document security store and a document timestamp. :func:`verify_certificate` checks, each
as a named :class:`Check` with a sentence a person can act on:

1. ``pdf`` — the input is a PDF pyHanko can read;
2. ``signature-count`` — it holds exactly one signature, the gateway's, optionally
   followed by document timestamps (``/DocTimeStamp``, ETSI EN 319 142-1 section 5.5:
   what makes a certificate PAdES B-LTA, :mod:`certifier.lta`) and nothing else;
3. ``coverage`` — the signature covers the whole file: nothing was appended after it
   (no incremental update), and the one gap in the signed byte ranges holds exactly
   the CMS object, hex-encoded in one letter case, then zero padding. With document
   timestamps, the same holds of the newest one instead, each timestamp is intact, and
   pyHanko's difference analysis finds that what follows the signature is long-term
   validation data only (DSS and timestamps, ``ModificationLevel.LTA_UPDATES``);
4. ``container`` — the CMS object is strict DER (ISO 32000-2 section 12.8.3.3), its
   unsigned fields follow RFC 5652 sections 5.1 and 5.3, and every certificate in it
   (and in the timestamp token) verifies under its issuer. With 3, this makes a change
   to *any* byte of the file fail a check, even a byte no signature covers;
5. ``integrity`` — the CMS signature is cryptographically intact (document digest and
   signature value);
6. ``trust`` — the signer's certificate chains to one of the given trust anchors.
   With no anchors given this check *fails* ("not checked against a trust anchor"):
   a report that says ``ok`` must mean "signed by someone you trust", never merely
   "signed by someone";
7. ``timestamp`` — the RFC 3161 signature timestamp is present, intact, covers this
   signature value, and its TSA chains to a trust anchor; the detail gives its time;
8. ``attachments`` — ``message.eml`` and ``evidence.json`` are embedded, once each;
9. ``evidence`` — ``evidence.json`` is a JSON object;
10. ``message-hash`` — SHA-256 of ``message.eml`` equals ``message.sha256`` in the
    evidence. One exception: a certificate the gateway made after losing the message
    (spool file missing) embeds no ``message.eml`` and its evidence says why
    (``message.content_unavailable``); checks 8 to 10 then pass with a detail that
    says the content is not certified, only the recorded hash;
11. ``evidence-schema`` — ``evidence.json`` matches the JSON Schema of its format,
    ``certifica-evidence/1`` (:mod:`certifier.evidence_record`); when it does not, the
    detail names the first field that does not and what was expected;
12. ``evidence-log`` — every evidence log entry embedded in ``evidence.json`` hashes
    to its recorded hash, consecutive entries are chained, all are this message's, and
    the timeline lists the same events (:func:`certifier.evidence.verify_excerpt`);
13. ``checkpoint`` — only when the evidence carries one: the RFC 3161 token of the log
    checkpoint covering those entries timestamps it, and its TSA chains to a trust
    anchor (:func:`certifier.checkpoints.check_embedded`);
14. ``delivered-copies`` — every recipient whose evidence says how its copy was made
    (``copy``: header fields put in front, tracking links, From rewritten) gets that
    copy rebuilt from ``message.eml`` (:func:`certifier.copies.rebuild`), and its
    SHA-256 must be the ``delivered_sha256`` stated; the detail names the first
    recipient whose copy does not rebuild or match. A certificate made before copies
    were recorded passes it as "not recorded".

A parser giving up half-way on a hostile file adds a failed ``processing`` check.
:func:`verify_certificate` never raises on bad input: random bytes, a truncated file or
a hostile PDF all give a report with ``ok`` False. :func:`extract_timestamp_token` raises
:class:`ValueError` when there is no token to extract.
"""

from __future__ import annotations

import binascii
import hashlib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509 as crypto_x509
from cryptography.exceptions import InvalidSignature
from pyhanko.keys import load_certs_from_pemder
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.validation import validate_pdf_signature, validate_pdf_timestamp
from pyhanko.sign.validation.pdf_embedded import EmbeddedPdfSignature
from pyhanko.sign.validation.status import PdfSignatureStatus, SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext

from certifier import checkpoints, copies, evidence_record
from certifier import evidence as evidence_log
from certifier.document import EMBEDDED_EVIDENCE, EMBEDDED_MESSAGE, content_unavailable
from certifier.errors import VerificationError

__all__ = [
    "Check",
    "VerifyReport",
    "embedded_evidence",
    "extract_timestamp_token",
    "signature_value",
    "verify_certificate",
]

log = logging.getLogger(__name__)

# A certificate with its attachments is a few hundred kilobytes; the cap on the
# attachments is generous (a message can carry large files) but bounds the memory a
# hostile PDF can make the verifier use (pyHanko's own decode limits bound each stream).
_MAX_NAME_TREE_DEPTH = 8
_MAX_NAME_TREE_ENTRIES = 1000


@dataclass(frozen=True)
class Check:
    """One verification step: its name, whether it passed, and why."""

    name: str
    ok: bool
    detail: str
    content_not_certified: bool = False  # passed, but it proves no message content


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of :func:`verify_certificate`.

    ``evidence`` is the embedded evidence as found in the file (or None when there is
    none to parse); trust it only when ``ok`` is True.
    """

    ok: bool
    checks: tuple[Check, ...]
    evidence: dict | None
    content_certified: bool = True
    """False for a certificate the gateway made without the message (it could not read
    it): signature and evidence may be intact, but no content is proven."""


class _Failed(VerificationError):
    """A check failed in a way that makes the following checks meaningless."""


def verify_certificate(pdf: bytes, trust_roots: list[Path]) -> VerifyReport:
    """Verify a certificate PDF against *trust_roots* (PEM/DER files, bundles allowed)."""
    checks: list[Check] = []
    evidence: dict | None = None
    try:
        evidence = _verify(bytes(pdf), trust_roots, checks)
    except _Failed:
        pass
    except Exception as exc:
        # Whatever a hostile file makes the PDF or ASN.1 parsers throw is a failed
        # verification, not a crash; the log keeps the trace for a developer.
        log.debug("verification aborted", exc_info=True)
        checks.append(Check("processing", False, f"The file could not be processed ({_why(exc)})."))
    ok = bool(checks) and all(c.ok for c in checks)
    content = not any(c.content_not_certified for c in checks)
    return VerifyReport(ok=ok, checks=tuple(checks), evidence=evidence, content_certified=content)


def extract_timestamp_token(pdf: bytes) -> bytes:
    """The DER RFC 3161 TimeStampToken (a CMS ContentInfo) of the PDF's signature.

    The token is the signature's id-aa-signatureTimeStampToken unsigned attribute
    (RFC 3161 appendix A); its message imprint is the hash of the signature value, so
    ``openssl ts -verify -in token.der -token_in -data <signature value> -CAfile ca.pem``
    checks it independently of pyHanko.
    """
    try:
        reader = PdfFileReader(io.BytesIO(pdf))
        sigs = reader.embedded_regular_signatures
    except Exception as exc:
        raise ValueError(f"not a readable PDF ({_why(exc)})") from exc
    if len(sigs) != 1:
        raise ValueError(f"expected one signature, found {len(sigs)}")
    token = _timestamp_token(sigs[0])
    if token is None:
        raise ValueError("the signature carries no RFC 3161 signature timestamp")
    return token.dump()


def signature_value(pdf: bytes) -> bytes:
    """The raw signature value (SignerInfo.signature) of the PDF's one signature.

    What the RFC 3161 signature timestamp's message imprint is computed over.
    """
    try:
        reader = PdfFileReader(io.BytesIO(pdf))
        sigs = reader.embedded_regular_signatures
    except Exception as exc:
        raise ValueError(f"not a readable PDF ({_why(exc)})") from exc
    if len(sigs) != 1:
        raise ValueError(f"expected one signature, found {len(sigs)}")
    return sigs[0].signer_info["signature"].native


# --- the checks, in order -------------------------------------------------------------


def _verify(pdf: bytes, trust_roots: list[Path], checks: list[Check]) -> dict | None:
    def fail(name: str, detail: str) -> _Failed:
        checks.append(Check(name, False, detail))
        return _Failed()

    # A PDF starts with %PDF- within its first 1024 bytes (ISO 32000-2 section 7.5.2).
    if b"%PDF-" not in pdf[:1024]:
        raise fail("pdf", "This is not a PDF file (no %PDF- header).")
    try:
        reader = PdfFileReader(io.BytesIO(pdf))
        sigs = reader.embedded_signatures
    except Exception as exc:
        raise fail(
            "pdf", f"The PDF cannot be read: it is damaged or truncated ({_why(exc)})."
        ) from None
    checks.append(Check("pdf", True, f"A readable PDF of {len(pdf):,} bytes."))

    signatures = [s for s in sigs if s.sig_object_type != "/DocTimeStamp"]
    if len(signatures) != 1:
        raise fail(
            "signature-count",
            f"A certificate has exactly one signature; this PDF has {len(signatures)}.",
        )
    sig, stamps = sigs[0], sigs[1:]
    if sig.sig_object_type != "/Sig":
        raise fail(
            "signature-count",
            "The first signature is a document timestamp, not the gateway's signature.",
        )
    subfilter = sig.sig_object.get("/SubFilter")
    also = f", then {len(stamps)} document timestamp(s)" if stamps else ""
    checks.append(
        Check(
            "signature-count",
            True,
            f"One signature ({_name(subfilter)}) in field {str(sig.field_name)[:80]!r}{also}.",
        )
    )

    roots = _load_roots(trust_roots, checks)
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    if stamps:
        # Long-term validation data after the signature: the difference analysis must
        # find nothing else, and the newest timestamp seals the whole file.
        status = validate_pdf_signature(sig, signer_validation_context=context, skip_diff=False)
        checks.append(_lta_coverage_check(pdf, status, stamps, roots))
    else:
        status = validate_pdf_signature(sig, signer_validation_context=context, skip_diff=True)
        checks.append(_coverage_check(status, _placeholder_problem(pdf, sig)))
    checks.append(_container_check(sig, roots))
    checks.append(_integrity_check(status))
    checks.append(_trust_check(status, bool(roots)))
    checks.append(_timestamp_check(status, sig, bool(roots)))

    files = _embedded_files(reader)
    evidence = _attachment_checks(files, checks)
    if evidence is not None:
        checks.append(_schema_check(evidence))
        checks.extend(_evidence_log_checks(evidence, roots))
        eml = files[EMBEDDED_MESSAGE][0] if len(files.get(EMBEDDED_MESSAGE, [])) == 1 else None
        checks.append(copies_check(evidence, eml))
    return evidence


def copies_check(evidence: dict, eml: bytes | None) -> Check:
    """Check 14: each recipient's delivered copy, rebuilt from ``eml`` with the recipe
    in the evidence, has the SHA-256 stated as delivered."""
    recipients = evidence.get("recipients")
    rows = [r for r in recipients if isinstance(r, dict)] if isinstance(recipients, list) else []
    problems: list[str] = []
    rebuilt = unrecorded = 0
    for row in rows:
        copy, stated = row.get("copy"), row.get("delivered_sha256")
        who = _printable(row.get("address"))
        if copy is None:
            if isinstance(stated, str):
                unrecorded += 1
            continue
        if not isinstance(stated, str):
            problems.append(f"the copy for {who} is described but no delivered SHA-256 is stated")
            continue
        if eml is None:
            return Check(
                "delivered-copies",
                True,
                f"Not checked: {EMBEDDED_MESSAGE} is not embedded, so no copy can be rebuilt.",
                content_not_certified=True,
            )
        try:
            made = copies.rebuild(eml, copy)
        except VerificationError as why:
            problems.append(f"the copy delivered to {who} cannot be rebuilt: {why}")
            continue
        actual = hashlib.sha256(made).hexdigest()
        if actual != stated.lower():
            problems.append(
                f"the copy rebuilt for {who} has SHA-256 {actual}, not the {stated[:64]} "
                "stated as delivered"
            )
            continue
        rebuilt += 1
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check(
            "delivered-copies", False, f"{problems[0][:1].upper()}{problems[0][1:]}{more}."
        )
    if not rebuilt:
        return Check(
            "delivered-copies",
            True,
            "Not recorded: the evidence states no recipe for a delivered copy "
            "(a certificate made before copies were recorded, or nothing was delivered).",
        )
    detail = (
        f"{rebuilt} delivered cop{'y' if rebuilt == 1 else 'ies'} rebuilt from {EMBEDDED_MESSAGE}, "
        "each with the SHA-256 stated as delivered"
    )
    if unrecorded:
        detail += f"; {unrecorded} delivered copy(ies) not recorded"
    return Check("delivered-copies", True, detail + ".")


def _printable(value: object) -> str:
    text = str(value)[:200]
    return "<" + "".join(c if c.isprintable() else "?" for c in text) + ">"


def _schema_check(evidence: dict) -> Check:
    problem = evidence_record.schema_problem(evidence)
    if problem is not None:
        return Check(
            "evidence-schema",
            False,
            f"{EMBEDDED_EVIDENCE} does not follow the {evidence_record.FORMAT} schema: {problem}.",
        )
    return Check(
        "evidence-schema", True, f"{EMBEDDED_EVIDENCE} follows the {evidence_record.FORMAT} schema."
    )


def _placeholder_problem(pdf: bytes, sig: EmbeddedPdfSignature) -> str | None:
    """Why the bytes outside the signed ranges are not exactly the signer's, or None.

    The signed digest covers everything but the /Contents hex string; the CMS object in
    it protects itself, but hex digits' letter case, whitespace and the zero padding
    after the DER object do not change what a parser reads. Requiring the canonical
    form makes every single-byte change visible.
    """
    try:
        start1, len1, start2, len2 = (int(x) for x in sig.byte_range)
    except (TypeError, ValueError):
        return "the signature's /ByteRange is malformed"
    if start1 != 0 or start2 + len2 != len(pdf) or start1 + len1 > start2:
        return "the signature's /ByteRange does not span the file"
    raw = pdf[start1 + len1 : start2]
    contents = sig.pkcs7_content
    hex_digits = binascii.hexlify(contents)
    if raw not in (b"<" + hex_digits.upper() + b">", b"<" + hex_digits.lower() + b">"):
        return "the signature placeholder has been edited"
    try:
        der_len = len(cms.ContentInfo.load(contents, strict=False).dump())
    except ValueError:
        return "the signature container cannot be parsed"
    if contents[der_len:].strip(b"\x00"):
        return "there is data hidden after the signature container"
    return None


def _container_check(sig: EmbeddedPdfSignature, roots: list[asn1_x509.Certificate]) -> Check:
    problem = _container_problem(sig, roots)
    if problem:
        return Check("container", False, f"The signature container was altered: {problem}.")
    return Check(
        "container",
        True,
        "The signature container is strict DER and every "
        "certificate in it is signed by its issuer.",
    )


def _container_problem(sig: EmbeddedPdfSignature, roots: list[asn1_x509.Certificate]) -> str | None:
    """Why the parts of the CMS objects no signature covers are not as made, or None.

    RFC 5652 signs only the signed attributes; the SignedData version, its digest
    algorithm list and its certificate set are outside every signature, and a validator
    ignores what it does not use (a copy of the root, say). Requiring DER, the version
    rules of RFC 5652 sections 5.1 and 5.3, and every certificate to verify under its
    issuer turns a change to any of those bytes into a failure.
    """
    contents = sig.pkcs7_content
    der_len = len(cms.ContentInfo.load(contents, strict=False).dump())
    # ISO 32000-2 section 12.8.3.3: the signature is a *DER*-encoded CMS object. BER
    # leniency (a TRUE written as 0x8F instead of 0xFF, say) would let a byte change in
    # an unsigned part go unnoticed; re-encoding must give back the same bytes.
    try:
        canonical = cms.ContentInfo.load(contents[:der_len]).dump(force=True)
    except (ValueError, TypeError, KeyError):
        return "it is not valid DER"
    if canonical != contents[:der_len]:
        return "it is not in DER form"
    token = _timestamp_token(sig)
    containers = [("signature", sig.signed_data)]
    if token is not None:
        containers.append(("timestamp token", token["content"]))
    for what, signed_data in containers:
        problem = _signed_data_problem(signed_data, roots)
        if problem:
            return f"the {what}'s {problem}"
    return None


def _signed_data_problem(sd: cms.SignedData, roots: list[asn1_x509.Certificate]) -> str | None:
    signer_infos = list(sd["signer_infos"])
    certs = [c.chosen for c in sd["certificates"]] if sd["certificates"].native else []
    # RFC 5652 section 5.3: v1 with issuerAndSerialNumber, v3 with subjectKeyIdentifier.
    for si in signer_infos:
        expected = "v1" if si["sid"].name == "issuer_and_serial_number" else "v3"
        if si["version"].native != expected:
            return "SignerInfo version does not match its signer identifier"
    # RFC 5652 section 5.1, the version rule (no attribute certificates or "other"
    # certificate or CRL formats occur in certificates Certifica accepts).
    if any(not isinstance(c, asn1_x509.Certificate) for c in certs):
        return "certificate set holds something other than X.509 certificates"
    v3 = sd["encap_content_info"]["content_type"].native != "data" or any(
        si["version"].native == "v3" for si in signer_infos
    )
    if sd["version"].native != ("v3" if v3 else "v1"):
        return "SignedData version is not the one RFC 5652 prescribes"
    listed = sorted(a.dump() for a in sd["digest_algorithms"])
    used = sorted({si["digest_algorithm"].dump() for si in signer_infos})
    if listed != used:
        return "digest algorithm list does not match its signers"
    pool = [*certs, *roots]
    for cert in certs:
        if not _issued_by_any(cert, pool):
            return (
                f"embedded certificate {_who(cert.subject)} is damaged or not signed by its issuer"
            )
    return None


def _issued_by_any(cert: asn1_x509.Certificate, pool: list[asn1_x509.Certificate]) -> bool:
    with warnings.catch_warnings():
        # cryptography warns (rather than fails) on some RFC 5280 violations, such as
        # a negative serial number; in a certificate that must be exactly as issued,
        # any of them is a failure.
        warnings.simplefilter("error")
        try:
            child = crypto_x509.load_der_x509_certificate(cert.dump())
        except (ValueError, Warning):
            return False
        for candidate in pool:
            if candidate.subject.dump() != cert.issuer.dump():
                continue
            try:
                issuer = crypto_x509.load_der_x509_certificate(candidate.dump())
                child.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature, Warning):
                continue
            return True
    return False
    for candidate in pool:
        if candidate.subject.dump() != cert.issuer.dump():
            continue
        try:
            child.verify_directly_issued_by(crypto_x509.load_der_x509_certificate(candidate.dump()))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def _coverage_check(status: PdfSignatureStatus, placeholder_problem: str | None) -> Check:
    if status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
        return Check(
            "coverage",
            False,
            "The signature does not cover the whole file: the PDF was changed "
            "or extended after it was signed.",
        )
    if placeholder_problem:
        return Check(
            "coverage", False, f"The file was changed after signing: {placeholder_problem}."
        )
    return Check(
        "coverage", True, "The signature covers the whole file; nothing was added after signing."
    )


def _lta_coverage_check(
    pdf: bytes,
    status: PdfSignatureStatus,
    stamps: list[EmbeddedPdfSignature],
    roots: list[asn1_x509.Certificate],
) -> Check:
    """Check 3 for a certificate followed by document timestamps (PAdES B-LTA)."""
    level = status.modification_level
    if status.coverage != SignatureCoverageLevel.ENTIRE_REVISION:
        return Check(
            "coverage",
            False,
            "The signature does not cover the whole revision it was made in.",
        )
    if level is None or level > ModificationLevel.LTA_UPDATES:
        return Check(
            "coverage",
            False,
            "The file was changed after it was signed: what follows the signature is not "
            "only long-term validation data (certificates, revocation data, timestamps).",
        )
    newest = stamps[-1]
    placeholder_problem = _placeholder_problem(pdf, newest)
    context = ValidationContext(trust_roots=roots, allow_fetching=False)
    for stamp in stamps:
        stamp_status = validate_pdf_timestamp(stamp, validation_context=context, skip_diff=True)
        if not stamp_status.intact or not stamp_status.valid:
            return Check(
                "coverage",
                False,
                f"The document timestamp in field {str(stamp.field_name)[:80]!r} is not intact.",
            )
        if stamp is newest and stamp_status.coverage != SignatureCoverageLevel.ENTIRE_FILE:
            placeholder_problem = placeholder_problem or "the newest timestamp does not cover it"
    if placeholder_problem:
        return Check(
            "coverage",
            False,
            f"The file was changed after its newest document timestamp: {placeholder_problem}.",
        )
    return Check(
        "coverage",
        True,
        "The signature covers the document; what follows it is long-term validation data "
        f"only, and the newest of {len(stamps)} document timestamp(s) covers the whole file.",
    )


def _integrity_check(status: PdfSignatureStatus) -> Check:
    if not status.intact:
        return Check(
            "integrity",
            False,
            "The signed content does not match the signature: the file was altered after signing.",
        )
    if not status.valid:
        return Check(
            "integrity", False, "The signature value does not verify with the signer's public key."
        )
    return Check(
        "integrity",
        True,
        f"The signature is intact and cryptographically "
        f"valid ({status.md_algorithm}, "
        f"{status.pkcs7_signature_mechanism}).",
    )


def _trust_check(status: PdfSignatureStatus, have_roots: bool) -> Check:
    signer = _who(status.signing_cert.subject)
    if not (status.intact and status.valid):
        return Check(
            "trust",
            False,
            f"Signed in the name of {signer}, but the signature "
            "is broken, so who signed is not established.",
        )
    if not have_roots:
        return Check(
            "trust",
            False,
            f"Signed by {signer}; not checked against a trust anchor (no trust roots given).",
        )
    if not status.trusted:
        indic = status.trust_problem_indic
        reason = f" ({indic.standard_name})" if indic is not None else ""
        return Check(
            "trust", False, f"The signer, {signer}, does not chain to a trusted root{reason}."
        )
    path = status.validation_path
    root = _who(path.trust_anchor.authority.name) if path is not None else "a trusted root"
    return Check("trust", True, f"Signed by {signer}, certified by {root}.")


def _timestamp_check(
    status: PdfSignatureStatus, sig: EmbeddedPdfSignature, have_roots: bool
) -> Check:
    ts = status.timestamp_validity
    if ts is None or _timestamp_token(sig) is None:
        return Check("timestamp", False, "The signature has no RFC 3161 timestamp.")
    when = ts.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if not (ts.intact and ts.valid):
        return Check(
            "timestamp",
            False,
            f"The timestamp ({when}) is damaged or does not belong to this signature.",
        )
    tsa = _who(ts.signing_cert.subject)
    if not have_roots:
        return Check(
            "timestamp",
            False,
            f"Timestamp {when} by {tsa}; not checked against "
            "a trust anchor (no trust roots given).",
        )
    if not ts.trusted:
        return Check(
            "timestamp",
            False,
            f"The timestamp authority {tsa} does not chain to a trusted root (timestamp {when}).",
        )
    return Check("timestamp", True, f"Signed no later than {when}, timestamp by {tsa}.")


def _attachment_checks(files: dict[str, list[bytes]], checks: list[Check]) -> dict | None:
    lost = _content_lost(files)
    if lost is not None:
        return _content_lost_checks(lost, checks)
    missing = [n for n in (EMBEDDED_MESSAGE, EMBEDDED_EVIDENCE) if not files.get(n)]
    doubled = [n for n in (EMBEDDED_MESSAGE, EMBEDDED_EVIDENCE) if len(files.get(n, [])) > 1]
    if missing or doubled:
        problems = [f"{n} is missing" for n in missing]
        problems += [f"{n} is embedded more than once" for n in doubled]
        checks.append(Check("attachments", False, "; ".join(problems).capitalize() + "."))
        return None
    eml = files[EMBEDDED_MESSAGE][0]
    raw_evidence = files[EMBEDDED_EVIDENCE][0]
    checks.append(
        Check(
            "attachments",
            True,
            f"{EMBEDDED_MESSAGE} ({len(eml):,} bytes) and {EMBEDDED_EVIDENCE} are embedded.",
        )
    )
    try:
        evidence = json.loads(raw_evidence)
    except (ValueError, RecursionError):
        evidence = None
    if not isinstance(evidence, dict):
        checks.append(Check("evidence", False, f"{EMBEDDED_EVIDENCE} is not a JSON object."))
        return None
    checks.append(
        Check(
            "evidence",
            True,
            f"{EMBEDDED_EVIDENCE} is readable (format {str(evidence.get('format'))[:60]!r}).",
        )
    )
    message = evidence.get("message")
    recorded = message.get("sha256") if isinstance(message, dict) else None
    actual = hashlib.sha256(eml).hexdigest()
    if not isinstance(recorded, str):
        checks.append(
            Check("message-hash", False, "The evidence records no SHA-256 of the message.")
        )
    elif recorded.lower() != actual:
        checks.append(
            Check(
                "message-hash",
                False,
                f"The embedded {EMBEDDED_MESSAGE} is not the certified message: "
                f"its SHA-256 is {actual}, the evidence records "
                f"{recorded[:64]}.",
            )
        )
    else:
        checks.append(
            Check(
                "message-hash",
                True,
                f"SHA-256 of {EMBEDDED_MESSAGE} is {actual}, as recorded in the evidence.",
            )
        )
    return evidence


def _content_lost(files: dict[str, list[bytes]]) -> dict | None:
    """The evidence of a certificate made without the message (the gateway lost it):
    one evidence.json that states why (``message.content_unavailable``) and no
    message.eml at all. None for every other file, which the usual checks then judge."""
    if files.get(EMBEDDED_MESSAGE) or len(files.get(EMBEDDED_EVIDENCE, [])) != 1:
        return None
    try:
        evidence = json.loads(files[EMBEDDED_EVIDENCE][0])
    except (ValueError, RecursionError):
        return None
    if not isinstance(evidence, dict) or not content_unavailable(evidence):
        return None
    return evidence


def _content_lost_checks(evidence: dict, checks: list[Check]) -> dict:
    reason = str(content_unavailable(evidence))[:300]
    message = evidence.get("message")
    recorded = message.get("sha256") if isinstance(message, dict) else None
    checks.append(
        Check(
            "attachments",
            True,
            f"{EMBEDDED_EVIDENCE} is embedded; {EMBEDDED_MESSAGE} is not, as the evidence states.",
        )
    )
    checks.append(
        Check(
            "evidence",
            True,
            f"{EMBEDDED_EVIDENCE} is readable (format {str(evidence.get('format'))[:60]!r}).",
        )
    )
    checks.append(
        Check(
            "message-hash",
            True,
            "Content not certified: the gateway states it could not read the message ("
            f"{reason}); the SHA-256 it recorded at reception is {str(recorded)[:64]}.",
            content_not_certified=True,
        )
    )
    return evidence


def _evidence_log_checks(evidence: dict, roots: list[asn1_x509.Certificate]) -> list[Check]:
    log_part = evidence.get("evidence_log")
    if _legacy_log(log_part):
        return [
            Check(
                "evidence-log",
                True,
                "The log entries are listed by hash only (a certificate made before entries "
                "were embedded in full): certifica evidence verify on the gateway checks them.",
            )
        ]
    if isinstance(log_part, dict) and log_part.get("format") not in evidence_log.EXCERPT_FORMATS:
        return [Check("evidence-log", False, "The evidence log is in an unknown format.")]
    report = evidence_log.verify_excerpt(
        log_part, evidence.get("timeline"), evidence.get("queue_id")
    )
    if report.problems:
        more = f" (and {len(report.problems) - 3} more)" if len(report.problems) > 3 else ""
        text = "; ".join(report.problems[:3])
        return [Check("evidence-log", False, f"The evidence log does not hold: {text}{more}.")]
    assert isinstance(log_part, dict)
    checkpoint = log_part.get("checkpoint")
    if checkpoint is None:
        return [
            Check(
                "evidence-log",
                True,
                f"{report.summary}; no timestamped checkpoint covered them yet when this "
                "document was made.",
            )
        ]
    checked = checkpoints.check_embedded(checkpoint, list(report.entries), roots)
    return [
        Check("evidence-log", True, f"{report.summary}."),
        Check("checkpoint", checked.ok, checked.detail[:1].upper() + checked.detail[1:] + "."),
    ]


def _legacy_log(log_part: object) -> bool:
    """An evidence log in the first form: entries as (seq, event, hash) only, no format."""
    if not isinstance(log_part, dict) or "format" in log_part:
        return False
    entries = log_part.get("entries")
    return isinstance(entries, list) and all(
        isinstance(e, dict) and set(e) <= {"seq", "event", "hash"} for e in entries
    )


# --- helpers --------------------------------------------------------------------------


def _load_roots(paths: list[Path], checks: list[Check]) -> list[asn1_x509.Certificate]:
    roots: list[asn1_x509.Certificate] = []
    for path in paths:
        try:
            roots.extend(load_certs_from_pemder([str(path)]))
        except (OSError, ValueError) as exc:
            checks.append(
                Check("trust-roots", False, f"Cannot read trust root {path}: {_why(exc)}.")
            )
    return roots


def _timestamp_token(sig: EmbeddedPdfSignature) -> cms.ContentInfo | None:
    unsigned = sig.signer_info["unsigned_attrs"]
    if not unsigned:
        return None
    for attr in unsigned:
        if attr["type"].native == "signature_time_stamp_token":
            values = attr["values"]
            return values[0] if len(values) == 1 else None
    return None


def embedded_evidence(pdf: bytes) -> dict[str, Any] | None:
    """The ``evidence.json`` a certificate PDF embeds, as a dict; None when it has none
    or it cannot be read (nothing is checked here: :func:`verify_certificate` does)."""
    try:
        files = _embedded_files(PdfFileReader(io.BytesIO(pdf), strict=False))
        loaded = json.loads(files[EMBEDDED_EVIDENCE][0])
    except Exception:
        return None
    return loaded if isinstance(loaded, dict) else None


def embedded_message(pdf: bytes) -> bytes | None:
    """The ``message.eml`` a certificate PDF embeds; None when it has none (the
    gateway had lost the message), more than one, or the file cannot be read."""
    try:
        found = _embedded_files(PdfFileReader(io.BytesIO(pdf), strict=False))
    except Exception:
        return None
    messages = found.get(EMBEDDED_MESSAGE, [])
    return messages[0] if len(messages) == 1 else None


def _embedded_files(reader: PdfFileReader) -> dict[str, list[bytes]]:
    """The EmbeddedFiles name tree (ISO 32000-2 section 7.7.4): name -> contents."""
    files: dict[str, list[bytes]] = {}
    names = reader.root.get("/Names")
    if names is None:
        return files
    tree = names.get_object().get("/EmbeddedFiles")
    if tree is None:
        return files
    count = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal count
        node = node.get_object()
        if depth > _MAX_NAME_TREE_DEPTH or not isinstance(node, generic.DictionaryObject):
            return
        for kid in node.get("/Kids", ()):
            walk(kid, depth + 1)
        entries = node.get("/Names", generic.ArrayObject())
        entries = entries.get_object()
        for i in range(0, len(entries) - 1, 2):
            count += 1
            if count > _MAX_NAME_TREE_ENTRIES:
                return
            key = entries[i].get_object()
            spec = entries[i + 1].get_object()
            if not isinstance(key, generic.TextStringObject | generic.ByteStringObject):
                continue
            name = key if isinstance(key, str) else str(key.original_bytes, "latin-1")
            ef = spec.get("/EF") if isinstance(spec, generic.DictionaryObject) else None
            stream = ef.get_object().get("/F") if ef is not None else None
            if stream is None:
                continue
            stream = stream.get_object()
            if isinstance(stream, generic.StreamObject):
                files.setdefault(str(name), []).append(stream.data)

    walk(tree, 0)
    return files


def _who(name: asn1_x509.Name) -> str:
    """A certificate subject as a reader would say it: its common name, quoted."""
    common_name = name.native.get("common_name") if isinstance(name.native, dict) else None
    if isinstance(common_name, list):
        common_name = common_name[0] if common_name else None
    return repr(str(common_name)[:120]) if common_name else repr(name.human_friendly[:200])


def _name(value: object) -> str:
    if not isinstance(value, generic.NameObject):
        return "unknown type"
    return "".join(ch if ch.isprintable() else "?" for ch in str(value)[1:81])


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text[:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
