"""Invoices among a message's attachments: which ones are, and what they say.

:func:`read_invoice` looks at one attachment's decoded bytes and, when they are an
invoice in a format it knows, returns its essentials (:class:`Invoice`: format and
version, number, issue date, seller and buyer with their tax ids, total with currency,
and for Facturae the verdict on its XAdES signature). The certificate states them on
the attachment's entry, and the evidence (``evidence.json``, the ETSI EN 319 522-3 XML)
records them (README, "Invoices"; docs/invoices.md).

One module per format, each citing its specification:

- :mod:`~certifier.invoices.facturae`: Facturae 3.2, 3.2.1, 3.2.2 (Spain), with
  :mod:`~certifier.invoices.signature` for its XAdES signature;
- :mod:`~certifier.invoices.facturx`: Factur-X and ZUGFeRD 2.x (PDF/A-3 with CII XML),
  over :mod:`~certifier.invoices.cii` (UN/CEFACT CII, also as a bare XML file);
- :mod:`~certifier.invoices.ubl`: UBL 2.1 Invoice and CreditNote;
- :mod:`~certifier.invoices.fatturapa`: FatturaPA 1.2.x (Italy), also signed (``.p7m``).

What is recognised is decided by content, never by file name alone: a PDF is opened to
look for an embedded invoice, XML by the namespace of its root element, a CMS envelope
by its structure. An attachment larger than ``[invoices] max_size`` is not examined.

Errors: :func:`read_invoice` never raises on the bytes it is given. An invoice that
cannot be read fully is still returned, with ``problem`` saying what went wrong in
plain words (a malformed invoice is certified, never refused); bytes that are no
invoice give None. XML is parsed by :mod:`certifier.invoices.xml` (no entities, no DTD,
no network).
"""

from __future__ import annotations

from lxml import etree

from certifier.invoices import cii, facturae, facturx, fatturapa, ubl
from certifier.invoices.model import Invoice, InvoiceSettings, Signature, SignatureStatus
from certifier.invoices.xml import looks_like_xml, parse

__all__ = ["Invoice", "InvoiceSettings", "Signature", "SignatureStatus", "read_invoice"]

_P7M_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime", "application/pkcs7"})
# Namespace URIs as they appear in the bytes: a file that names one but does not parse
# is an invoice of that format that could not be read.
_MARKERS = [
    *((ns.encode(), "Facturae") for ns in facturae.VERSIONS),
    (cii.NAMESPACE.encode(), "CII"),
    (ubl.INVOICE_NS.encode(), "UBL"),
    (ubl.CREDIT_NOTE_NS.encode(), "UBL"),
    (fatturapa.NAMESPACE.encode(), "FatturaPA"),
]
_MARKER_WINDOW = 65536


def read_invoice(
    data: bytes, filename: str = "", content_type: str = "", settings: InvoiceSettings | None = None
) -> Invoice | None:
    """The invoice ``data`` (an attachment's decoded bytes) holds, or None when it holds
    none, is larger than ``settings.max_size``, or ``settings.enabled`` is false."""
    settings = settings or InvoiceSettings()
    if not settings.enabled or len(data) > settings.max_size or not data:
        return None
    try:
        return _read(bytes(data), filename.lower(), content_type.lower(), settings)
    except Exception as err:  # last resort; the property tests hold it unreachable
        guessed = _guess(data)
        if guessed is None:
            return None
        return Invoice(format=guessed, problem=f"could not be read ({type(err).__name__})")


def _read(
    data: bytes, filename: str, content_type: str, settings: InvoiceSettings
) -> Invoice | None:
    if facturx.looks_like_pdf(data):
        return facturx.read(data, settings.max_size)
    if data[:1] == b"\x30" or filename.endswith(".p7m") or content_type in _P7M_TYPES:
        unwrapped = fatturapa.unwrap_p7m(data)
        if unwrapped is not None:
            inner, signer = unwrapped
            return _read_xml(inner, settings, signer) if looks_like_xml(inner) else None
        if not looks_like_xml(data):
            return None
    if looks_like_xml(data):
        return _read_xml(data, settings, None)
    return None


def _guess(data: bytes) -> str | None:
    window = data[:_MARKER_WINDOW]
    for marker, name in _MARKERS:
        if marker in window:
            return name
    return None


def _read_xml(data: bytes, settings: InvoiceSettings, signer: str | None) -> Invoice | None:
    """The invoice in XML ``data``; ``signer`` is not None when it came out of a CMS
    envelope (then the envelope's first certificate's name, maybe "")."""
    try:
        root = parse(data)
    except ValueError as err:
        guessed = _guess(data)
        return None if guessed is None else Invoice(format=guessed, problem=str(err))
    namespace = etree.QName(root).namespace or ""
    local = etree.QName(root).localname
    if namespace in facturae.VERSIONS and local == "Facturae":
        return facturae.read(root, settings.trust_roots)
    if namespace in ubl.NAMESPACES and local in ("Invoice", "CreditNote"):
        return ubl.read(root)
    if namespace == cii.NAMESPACE and local == "CrossIndustryInvoice":
        return cii.read(root, "CII")
    if namespace == fatturapa.NAMESPACE and local == "FatturaElettronica":
        return fatturapa.read(root, signed=signer is not None, signer=signer or "")
    return None
