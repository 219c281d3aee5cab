"""Judging the XAdES signature inside a Facturae invoice.

A Facturae file is signed with an enveloped XAdES signature (ETSI EN 319 132-1; the
Facturae signature policy v3.1 asks for XAdES-EPES): a ``ds:Signature`` child of the
root (W3C XML Signature 1.1), covering the whole document. It is checked with signxml,
in two steps (docs/invoices.md, "How signatures are judged"):

1. **Integrity**, with the certificate the signature carries (``ds:KeyInfo``): the
   references' digests, the signature value, and that one reference covers the whole
   document (``URI=""``), so no part of what Certifica reads is outside what was signed
   (a file with more than one signature is not judged: "could not be checked").
   A changed byte gives ``not-intact``. SHA-1, which older Facturae software still
   uses, is accepted for this check (it says whether the file changed, not whether to
   trust a new signature); the signer's certificate is checked as at the XAdES
   ``SigningTime`` when there is one.
2. **Trust**, only with ``[invoices] trust_roots``: the signer's certificate (with the
   others in ``ds:KeyInfo``) must chain to one of those roots (``trusted``, else
   ``untrusted``). Without a trust list the verdict is ``intact``: the signer's name is
   recorded, and nobody vouched for it. Revocation is not checked.

Whatever the signature holds, this module answers with a
:class:`~certifier.invoices.model.Signature`; it never raises on the document's content.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from certifier.invoices.model import Signature, SignatureStatus
from certifier.invoices.xml import parse

__all__ = ["judge"]

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
_XADES_NS = ["http://uri.etsi.org/01903/v1.3.2#", "http://uri.etsi.org/01903/v1.4.1#"]


def _signer_name(certificate: object) -> str:
    from cryptography import x509

    if not isinstance(certificate, x509.Certificate):
        return ""
    try:
        names = certificate.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        if names:
            return str(names[0].value)[:300]
        return certificate.subject.rfc4514_string()[:300]
    except ValueError:
        return ""


def _signing_time(signature: etree._Element) -> datetime | None:
    for ns in _XADES_NS:
        found = signature.find(f".//{{{ns}}}SigningTime")
        if found is not None and found.text:
            try:
                moment = datetime.fromisoformat(found.text.strip().replace("Z", "+00:00"))
            except ValueError:
                return None
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _config(at: datetime | None, references: bool | int = True) -> object:
    from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod

    return SignatureConfiguration(
        expect_references=references,
        signature_methods=frozenset(m for m in SignatureMethod if not m.name.startswith("HMAC")),
        digest_algorithms=frozenset(DigestAlgorithm),
        verification_time=at,
    )


def judge(root: etree._Element, trust_roots: Path | None) -> Signature | None:
    """The verdict on the enveloped signature of the Facturae document ``root``; None
    when it has no signature."""
    signature = root.find(f"{{{DS_NS}}}Signature")
    if signature is None:
        return None
    try:
        return _judge(root, signature, trust_roots)
    except Exception as err:  # signxml and cryptography raise many kinds
        return Signature(
            SignatureStatus.UNCHECKED,
            "XAdES",
            detail=f"could not be checked ({type(err).__name__})",
        )


def _judge(root: etree._Element, signature: etree._Element, trust_roots: Path | None) -> Signature:
    from cryptography import x509
    from signxml import XMLVerifier
    from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature
    from signxml.util import add_pem_header

    certificates = signature.findall(
        f"{{{DS_NS}}}KeyInfo/{{{DS_NS}}}X509Data/{{{DS_NS}}}X509Certificate"
    )
    if not certificates:
        return Signature(
            SignatureStatus.UNCHECKED, "XAdES", detail="no certificate in the signature (KeyInfo)"
        )
    if sum(1 for _ in root.iter(f"{{{DS_NS}}}Signature")) > 1:
        return Signature(SignatureStatus.UNCHECKED, "XAdES", detail="more than one signature")
    whole = signature.find(f"{{{DS_NS}}}SignedInfo/{{{DS_NS}}}Reference[@URI='']")
    if whole is None:
        return Signature(
            SignatureStatus.UNCHECKED,
            "XAdES",
            detail="the signature does not cover the whole invoice",
        )
    chain = [x509.load_pem_x509_certificate(add_pem_header(c.text or "")) for c in certificates]
    at = _signing_time(signature)
    # The signer is the certificate whose key verifies the signature: try each.
    signer = None
    failure = ""
    document = parse(etree.tostring(root))  # a copy: signxml may change what it is given
    for certificate in chain:
        try:
            results = XMLVerifier().verify(
                document,
                x509_cert=certificate,
                expect_config=_config(at),  # type: ignore[arg-type]
            )
        except (InvalidDigest, InvalidSignature) as err:
            failure = (
                "the signed content or the signature was changed"
                if isinstance(err, InvalidDigest)
                else str(err)[:200]
            )
            continue
        except InvalidCertificate as err:
            return Signature(
                SignatureStatus.UNCHECKED, "XAdES", _signer_name(certificate), str(err)[:200]
            )
        except InvalidInput as err:
            return Signature(SignatureStatus.UNCHECKED, "XAdES", detail=str(err)[:200])
        listed = results if isinstance(results, list) else [results]
        if not any(r.signed_xml is not None and r.signed_xml.tag == root.tag for r in listed):
            return Signature(
                SignatureStatus.UNCHECKED,
                "XAdES",
                _signer_name(certificate),
                "the signature does not cover the whole invoice",
            )
        signer = certificate
        break
    if signer is None:
        return Signature(
            SignatureStatus.NOT_INTACT,
            "XAdES",
            _signer_name(chain[0]),
            failure or "the signature does not match the invoice",
        )
    name = _signer_name(signer)
    if trust_roots is None:
        return Signature(SignatureStatus.INTACT, "XAdES", name)
    try:
        XMLVerifier().verify(
            parse(etree.tostring(root)),
            ca_pem_file=str(trust_roots),
            expect_config=_config(at),  # type: ignore[arg-type]
        )
    except (InvalidCertificate, InvalidSignature):
        return Signature(
            SignatureStatus.UNTRUSTED,
            "XAdES",
            name,
            "the signer's certificate does not chain to a root of the trust list",
        )
    return Signature(SignatureStatus.TRUSTED, "XAdES", name)
