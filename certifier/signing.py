"""Signing certificates as PAdES baseline B-T (ETSI EN 319 142-1).

A certificate PDF gets one approval signature: a CMS SignedData (RFC 5652), detached,
in the PDF's ``/Contents`` with SubFilter ``ETSI.CAdES.detached`` (ISO 32000-2 section
12.8, ETSI EN 319 142-1 section 5.1), with the CAdES signed attributes content-type,
message-digest and signing-certificate-v2 (RFC 5035), and an RFC 3161 signature
timestamp (id-aa-signatureTimeStampToken, an unsigned attribute, RFC 3161 appendix A)
over the signature value. That is level B-T: it proves who signed and that the
signature existed at the timestamp's time. As EN 319 142-1 section 5.2.1 asks, the
claimed signing time is the signature dictionary's ``/M``, not a CMS signing-time
attribute.

The signature is added as one incremental update (ISO 32000-2 section 7.5.6) written
here: the signature dictionary with a fixed-size ``/Contents`` placeholder and its
``/ByteRange``, an invisible signature field on the first page, the page and the
catalog's ``/AcroForm`` rewritten to list it, a cross-reference section and the
trailer. pyHanko's reader finds the objects to extend; pyHanko's signing pipeline is not
used, because for one fixed kind of signature most of its cost (re-building ASN.1
structures, trial signatures to size the placeholder, an event loop) buys nothing.
:class:`~certifier.cms.CmsSigner` builds the CMS object from parts encoded once.

:class:`DocumentSigner` is built once per process: the key is parsed once, the
certificate chain is loaded once, and the size of the CMS blob is known in advance
(measured once with the in-process TSA; a generous allowance for a remote one).

Errors: :class:`~pyhanko.sign.general.SigningError` for a PDF this module cannot sign
(encrypted, cross-reference streams, already holding a field of that name),
:class:`~pyhanko.sign.timestamps.TimestampRequestError` when the remote TSA fails or
answers with a token for something else (temporary: the caller retries),
:class:`ValueError` for unusable key material.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import cms, keys
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from pyhanko.keys import load_cert_from_pemder
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import general
from pyhanko.sign.general import SigningError
from pyhanko.sign.timestamps import TimeStamper, TimestampRequestError

from certifier.cms import CONTENT_TYPE_DATA, CmsSigner, attribute
from certifier.hsm import Pkcs11Key
from certifier.tsa import LocalTimeStamper

__all__ = ["SIGNATURE_FIELD", "DocumentSigner", "Pkcs11Key"]

SIGNATURE_FIELD = "CertificaSignature"
"""Name of the (invisible) signature field every certificate carries."""

# Room for the CMS blob beyond our own certificates: signed attributes and the
# signature value, and the timestamp token. An in-process TSA's token is measured once;
# a remote TSA's is not known in advance: a commercial TSA's token with a
# three-certificate chain is around 6 KiB, 16 KiB leaves room for a long one.
_REMOTE_TOKEN_ALLOWANCE = 16 * 1024
_CMS_OVERHEAD = 2 * 1024

# The /ByteRange array is written once with its final numbers, padded to this width, so
# that the offsets it holds do not depend on their own digits: "[0 a b c]" for files up
# to 10^12 bytes.
_BYTE_RANGE_WIDTH = 42


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
        cert = load_cert_from_pemder(str(signing_cert))
        chain = [load_cert_from_pemder(str(p)) for p in extra_certs]
        self._setup(cert, key, chain, timestamper, f"{signing_key}", f"{signing_cert}")

    @classmethod
    def from_pkcs12(
        cls,
        path: Path,
        password: bytes | None,
        extra_certs: Iterable[Path],
        timestamper: TimeStamper,
    ) -> DocumentSigner:
        """A signer whose key and certificate (and chain) come from a PKCS#12 file
        (RFC 7292), decrypted in memory only."""
        key, cert, more = pkcs12.load_key_and_certificates(Path(path).read_bytes(), password)
        if key is None or cert is None:
            raise ValueError(f"{path}: the PKCS#12 file holds no key and certificate")
        der = serialization.Encoding.DER
        chain = [asn1_x509.Certificate.load(c.public_bytes(der)) for c in more]
        chain += [load_cert_from_pemder(str(p)) for p in extra_certs]
        signer = cls.__new__(cls)
        signer._setup(
            asn1_x509.Certificate.load(cert.public_bytes(der)), key, chain, timestamper,
            str(path), str(path),
        )  # fmt: skip
        return signer

    @classmethod
    def from_pkcs11(
        cls,
        key: Pkcs11Key,
        cert_path: Path,
        extra_certs: Iterable[Path],
        timestamper: TimeStamper,
    ) -> DocumentSigner:
        """A signer whose key stays in a PKCS#11 token (an HSM): *key* signs, the
        certificate of that key is the file *cert_path*."""
        signer = cls.__new__(cls)
        cert = load_cert_from_pemder(str(cert_path))
        chain = [load_cert_from_pemder(str(p)) for p in extra_certs]
        signer._setup(cert, key, chain, timestamper, key.name, str(cert_path))
        return signer

    def etsi_evidence(self, evidence: dict[str, Any], eml: bytes | None) -> list[tuple[str, bytes]]:
        """The ETSI EN 319 522-3 evidence documents of ``evidence``, each XAdES-signed by
        this signer's key (:mod:`certifier.etsi`), to be embedded in the certificate."""
        from certifier.etsi import etsi_evidence_files

        pem = self.signing_cert.dump()
        cert_pem = (
            b"-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(pem)
            + b"-----END CERTIFICATE-----\n"
        )
        # Flat names in the PDF ("evidence-001-SubmissionAcceptance.xml"): a "/" in an
        # embedded file's name makes `pdfdetach -saveall` and PDF readers' "save
        # attachment" fail; `certifica evidence export` writes them under evidence/.
        return [
            (name.replace("/", "-"), xml)
            for name, xml in etsi_evidence_files(evidence, eml, self._key, cert_pem)
        ]

    @property
    def seal(self) -> dict[str, str | None]:
        """Who seals the documents, as the page's visible seal block names it: the
        signing certificate's subject common name and organisation, issuer, serial
        number and end of validity (RFC 5280 §4.1.2)."""
        cert = self.signing_cert
        subject = cert.subject.native
        return {
            "signer": str(subject.get("common_name") or cert.subject.human_friendly),
            "organization": subject.get("organization_name"),
            "issuer": cert.issuer.human_friendly,
            "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def _setup(
        self,
        cert: asn1_x509.Certificate,
        key: object,
        chain: list[asn1_x509.Certificate],
        timestamper: TimeStamper,
        key_name: str,
        cert_name: str,
    ) -> None:
        if not isinstance(key, rsa.RSAPrivateKey):
            # The development PKI makes RSA keys; an EC key would need its own
            # signature algorithm, size budget and tests before we claim support.
            raise ValueError(f"{key_name}: the document signing key must be RSA")
        if cert.public_key.native != _public_key_info(key).native:
            raise ValueError(f"{key_name} is not the key of {cert_name}")
        self.signing_cert = cert
        self._key = key
        self.timestamper = timestamper
        self._cms = CmsSigner(cert, key, chain)
        # ESS signing-certificate-v2 (RFC 5035): binds the signature to this certificate,
        # which CAdES and so PAdES require; the same bytes in every signature.
        self._signing_cert_attr = cms.CMSAttribute(
            {
                "type": "signing_certificate_v2",
                "values": [general.as_signing_certificate_v2(cert)],
            }
        ).dump()
        # DER bytes reserved for the CMS object (written hex-encoded, twice as long).
        own = sum(len(c.dump()) for c in (cert, *chain))
        self.contents_size = own + _CMS_OVERHEAD + _token_allowance(timestamper)

    def sign(
        self,
        pdf: bytes,
        reason: str = "Certified e-mail evidence",
        location: str | None = None,
    ) -> bytes:
        """Return *pdf* with a PAdES B-T signature added as an incremental update."""
        update = _SignatureUpdate(pdf, reason=reason, location=location)
        size = self.contents_size
        for _ in range(2):
            out, start, end = update.write(size)
            with memoryview(out) as view:
                digest = self._cms.digest(view[:start], view[end:])
            content_info = self._signed_data(digest)
            if len(content_info) <= size:
                hexed = binascii.hexlify(content_info).upper()
                out[start + 1 : start + 1 + len(hexed)] = hexed
                return bytes(out)
            # Only a remote TSA answering with an unexpectedly long token gets here:
            # reserve what it needed (the signature and token are made again, since the
            # byte ranges they cover change with the size).
            size = len(content_info) + 1024
        raise SigningError("the signature does not fit the space reserved for it")

    def _signed_data(self, document_digest: bytes) -> bytes:
        signer = self._cms
        signed = signer.signed_attributes(
            CONTENT_TYPE_DATA, document_digest, self._signing_cert_attr
        )
        signature = signer.sign(signed)
        token = self._timestamp(signature)
        return signer.content_info(
            CONTENT_TYPE_DATA,
            signed,
            signature,
            unsigned_attributes=[attribute("signature_time_stamp_token", token)],
        )

    def _timestamp(self, signature: bytes) -> bytes:
        """A DER TimeStampToken over the signature value (RFC 3161 appendix A)."""
        digest = self._cms.digest(signature)
        tsa = self.timestamper
        if isinstance(tsa, LocalTimeStamper):
            return tsa.timestamp_token(digest, self._cms.digest_name)
        try:
            token = asyncio.run(tsa.async_timestamp(digest, self._cms.digest_name))
            tst_info = token["content"]["encap_content_info"]["content"].parsed
            stamped = tst_info["message_imprint"]["hashed_message"].native
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # asn1crypto parses lazily: a malformed reply (or an RFC 3161 rejection,
            # which asn1crypto cannot parse) fails only when it is read.
            raise TimestampRequestError("the timestamp authority's reply is malformed") from exc
        if stamped != digest:
            raise TimestampRequestError("the timestamp authority stamped something else")
        return token.dump()


class _SignatureUpdate:
    """The incremental update that adds a signature to one PDF (ISO 32000-2 7.5.6).

    Everything except the ``/Contents`` placeholder's size is worked out once, so a
    second try with a larger placeholder does not read the PDF again.
    """

    def __init__(self, pdf: bytes, reason: str | None, location: str | None) -> None:
        reader = PdfFileReader(io.BytesIO(pdf))
        if reader.security_handler is not None:
            raise SigningError("encrypted PDFs are not supported")
        if reader.has_xref_stream:
            # An update in the same form would need an xref stream too; our renderer
            # writes classic cross-reference tables.
            raise SigningError("PDFs with cross-reference streams are not supported")
        if reader.last_startxref is None:
            raise SigningError("the PDF has no startxref")
        self.pdf = pdf
        trailer = reader.trailer.flatten()
        size = int(trailer["/Size"])
        self.sig_id, widget_id = size, size + 1
        widget = generic.IndirectObject(widget_id, 0, reader)

        # Objects rewritten in this update, by (number, generation): the first page
        # (its /Annots lists the widget) and whatever holds the field list.
        changed: dict[tuple[int, int], generic.PdfObject] = {}
        page_ref, _ = reader.find_page_for_modification(0)
        page = page_ref.get_object()
        if _append(page, "/Annots", widget, changed):
            changed[(page_ref.idnum, page_ref.generation)] = page

        root_key = (reader.root_ref.idnum, reader.root_ref.generation)
        root = reader.root
        form_raw = root.raw_get("/AcroForm") if "/AcroForm" in root else None
        if isinstance(form_raw, generic.IndirectObject):
            form, form_key = form_raw.get_object(), (form_raw.idnum, form_raw.generation)
        else:
            if form_raw is None:
                form_raw = root[generic.pdf_name("/AcroForm")] = generic.DictionaryObject()
            form, form_key = form_raw, root_key
        for field in form.get("/Fields", ()):
            if field.get_object().get("/T") == SIGNATURE_FIELD:
                raise SigningError(f"the PDF already has a field {SIGNATURE_FIELD!r}")
        _append(form, "/Fields", widget, changed)
        # SignaturesExist | AppendOnly (ISO 32000-2 table 225).
        form[generic.pdf_name("/SigFlags")] = generic.NumberObject(3)
        changed[form_key] = root if form_key == root_key else form

        page_id = page_ref.idnum
        objects = [
            (
                widget_id,
                0,
                b"<< /Type /Annot /Subtype /Widget /FT /Sig /T (%s) /F 132 "
                b"/Rect [0 0 0 0] /P %d %d R /V %d 0 R >>"
                % (SIGNATURE_FIELD.encode("ascii"), page_id, page_ref.generation, self.sig_id),
            )
        ]
        objects += [(i, g, _serialise(obj)) for (i, g), obj in changed.items()]
        self._objects = objects

        self._sig_head = (
            b"<< /Type /Sig /Filter /Adobe.PPKLite /SubFilter /ETSI.CAdES.detached"
            + b" /M (D:"
            + datetime.now(UTC).strftime("%Y%m%d%H%M%S").encode("ascii")
            + b"Z)"
        )
        if reason:
            self._sig_head += b" /Reason " + _serialise(generic.pdf_string(reason))
        if location:
            self._sig_head += b" /Location " + _serialise(generic.pdf_string(location))

        ids = trailer.get("/ID")
        first_id = _id_bytes(ids[0]) if ids else os.urandom(16)
        info = trailer.raw_get("/Info") if "/Info" in trailer else None
        self._trailer = b"/Size %d /Root %d %d R%s /ID [<%s> <%s>] /Prev %d" % (
            max(size, widget_id + 1),
            *root_key,
            b" /Info %d %d R" % (info.idnum, info.generation)
            if isinstance(info, generic.IndirectObject)
            else b"",
            binascii.hexlify(first_id),
            # A changed document gets a new second identifier (ISO 32000-2 14.4).
            binascii.hexlify(os.urandom(16)),
            reader.last_startxref,
        )

    def write(self, contents_size: int) -> tuple[bytearray, int, int]:
        """The signed-to-be file with a zero placeholder of *contents_size* DER bytes.

        Returns the file and where the ``/Contents`` hex string starts and ends (the
        ``<`` and one past the ``>``): the gap in the ``/ByteRange``, already filled in.
        """
        out = bytearray(self.pdf)
        if not out.endswith(b"\n"):
            out += b"\n"
        offsets: list[tuple[int, int]] = []

        offsets.append((self.sig_id, len(out)))
        out += b"%d 0 obj\n" % self.sig_id + self._sig_head + b" /ByteRange "
        byte_range_at = len(out)
        out += b" " * _BYTE_RANGE_WIDTH + b" /Contents "
        start = len(out)
        out += b"<" + b"0" * (2 * contents_size) + b">"
        end = len(out)
        out += b" >>\nendobj\n"

        for obj_id, generation, body in self._objects:
            offsets.append((obj_id, len(out)))
            out += b"%d %d obj\n" % (obj_id, generation) + body + b"\nendobj\n"

        generations = {obj_id: gen for obj_id, gen, _ in self._objects}
        xref_at = len(out)
        out += b"xref\n0 1\n0000000000 65535 f \n"
        offsets.sort()
        i = 0
        while i < len(offsets):
            # One subsection per run of consecutive object numbers.
            j = i
            while j + 1 < len(offsets) and offsets[j + 1][0] == offsets[j][0] + 1:
                j += 1
            out += b"%d %d\n" % (offsets[i][0], j - i + 1)
            for obj_id, at in offsets[i : j + 1]:
                out += b"%010d %05d n \n" % (at, generations.get(obj_id, 0))
            i = j + 1
        out += b"trailer\n<< " + self._trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref_at

        byte_range = b"[0 %d %d %d]" % (start, end, len(out) - end)
        if len(byte_range) > _BYTE_RANGE_WIDTH:
            raise SigningError("the PDF is too large to sign")
        out[byte_range_at : byte_range_at + len(byte_range)] = byte_range
        return out, start, end


def _append(
    container: generic.DictionaryObject,
    key: str,
    item: generic.PdfObject,
    changed: dict[tuple[int, int], generic.PdfObject],
) -> bool:
    """Append *item* to the array *container[key]*; True if *container* changed.

    An array that is an object of its own is changed instead, and noted in *changed*.
    """
    name = generic.pdf_name(key)
    raw = container.raw_get(name) if name in container else None
    if isinstance(raw, generic.IndirectObject):
        array = raw.get_object()
        array.append(item)
        changed[(raw.idnum, raw.generation)] = array
        return False
    if raw is None:
        container[name] = generic.ArrayObject([item])
    else:
        raw.append(item)
    return True


def _serialise(obj: generic.PdfObject) -> bytes:
    buf = io.BytesIO()
    obj.write_to_stream(buf, None)
    return buf.getvalue()


def _id_bytes(value: generic.PdfObject) -> bytes:
    if isinstance(value, generic.TextStringObject):
        return bytes(value.original_bytes)
    return bytes(value)  # type: ignore[call-overload]


def _token_allowance(timestamper: TimeStamper) -> int:
    if not isinstance(timestamper, LocalTimeStamper):
        # A remote TSA is not asked at start-up: it may be down, and that must not stop
        # the gateway from accepting mail (certificates wait and retry instead).
        return _REMOTE_TOKEN_ALLOWANCE
    token = timestamper.timestamp_token(bytes(32), "sha256")
    # Tokens of one authority differ only in serial number and time.
    return len(token) + 256


def _public_key_info(key: rsa.RSAPrivateKey) -> keys.PublicKeyInfo:
    return keys.PublicKeyInfo.load(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
