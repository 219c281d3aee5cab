"""The sample invoices the tests use, made here from the data files in
``tests/fixtures/invoices/`` with the formats' own tools (docs/invoices.md, "Samples"):

- Factur-X and ZUGFeRD: the CII file wrapped into a PDF/A-3 by the ``factur-x`` library
  (its ``generate_from_binary``, which also checks the XML against the Factur-X XSD),
  around a one-page PDF drawn with reportlab; ZUGFeRD: the same CII file embedded as
  ``zugferd-invoice.xml`` by pikepdf, with compressed object streams;
- Facturae: the 3.2.2 file signed with signxml's XAdES signer by a key and certificate
  made here (a root and a signer, as a qualified certificate's chain would be), and
  its 3.2 and 3.2.1 twins (the same invoice in those versions' namespaces);
- FatturaPA ``.p7m``: the FPR12 file enveloped in a CMS SignedData (CAdES-BES shape)
  by ``cryptography``'s PKCS#7 builder, DER and base64.
"""

from __future__ import annotations

import base64
import datetime
import io
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from lxml import etree

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "invoices"
FACTURAE_322 = "http://www.facturae.gob.es/formato/Versiones/Facturaev3_2_2.xml"
FACTURAE_NS = {
    "3.2": "http://www.facturae.es/Facturae/2009/v3.2/Facturae",
    "3.2.1": "http://www.facturae.es/Facturae/2014/v3.2.1/Facturae",
    "3.2.2": FACTURAE_322,
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "ES"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass(frozen=True)
class Signer:
    """A root certificate and a signer it issued (EC P-256), made for one test run."""

    root: x509.Certificate
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def root_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def make_signer(holder: str = "TALLERES EJEMPLO SL", root_name: str = "Test Root CA") -> Signer:
    now = datetime.datetime.now(datetime.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name(root_name))
        .issuer_name(_name(root_name))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(holder))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return Signer(root, certificate, key)


def facturae(version: str = "3.2.2") -> bytes:
    """The Facturae sample in ``version``'s namespace, unsigned."""
    data = sample("facturae-3.2.2.xml")
    return data.replace(FACTURAE_322.encode(), FACTURAE_NS[version].encode()).replace(
        b"<SchemaVersion>3.2.2</SchemaVersion>",
        f"<SchemaVersion>{version}</SchemaVersion>".encode(),
    )


def signed_facturae(signer: Signer, version: str = "3.2.2") -> bytes:
    """The Facturae sample with an enveloped XAdES-BES signature by ``signer``."""
    from signxml import DigestAlgorithm, SignatureMethod
    from signxml.xades import XAdESSigner

    document = etree.fromstring(facturae(version))
    xades = XAdESSigner(
        signature_algorithm=SignatureMethod.ECDSA_SHA256, digest_algorithm=DigestAlgorithm.SHA256
    )
    signed = xades.sign(document, key=signer.key, cert=signer.certificate_pem().decode())
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def facturx_pdf(xml: bytes | None = None, flavor: str = "factur-x") -> bytes:
    """A Factur-X PDF/A-3 carrying ``xml`` (default: the CII sample), made by the
    ``factur-x`` library around a one-page PDF."""
    import facturx
    from reportlab.pdfgen import canvas

    page = io.BytesIO()
    drawing = canvas.Canvas(page)
    drawing.drawString(72, 760, "Facture F20260023 - LE FOURNISSEUR")
    drawing.save()
    return bytes(
        facturx.generate_from_binary(
            page.getvalue(),
            xml if xml is not None else sample("factur-x.xml"),
            flavor=flavor,
            level="en16931",
            check_xsd=xml is None,
        )
    )


def p7m(content: bytes, signer: Signer, encoding: str = "der") -> bytes:
    """``content`` enveloped in a CMS SignedData (the content inside, not detached)."""
    der = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(signer.certificate, signer.key, hashes.SHA256())
        .sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    )
    return base64.encodebytes(der) if encoding == "base64" else der


def zugferd_pdf(xml: bytes | None = None) -> bytes:
    """A ZUGFeRD 2.x PDF: the CII sample embedded as ``zugferd-invoice.xml`` by pikepdf
    (another writer than the Factur-X one), saved with compressed object streams, so
    that the embedded file's specification is found inside an object stream."""
    import pikepdf
    from reportlab.pdfgen import canvas

    page = io.BytesIO()
    drawing = canvas.Canvas(page)
    drawing.drawString(72, 760, "Rechnung F20260023")
    drawing.save()
    pdf = pikepdf.open(io.BytesIO(page.getvalue()))
    spec = pikepdf.AttachedFileSpec(
        pdf, xml if xml is not None else sample("factur-x.xml"), mime_type="text/xml"
    )
    pdf.attachments["zugferd-invoice.xml"] = spec
    out = io.BytesIO()
    pdf.save(out, object_stream_mode=pikepdf.ObjectStreamMode.generate)
    return out.getvalue()
