"""Factur-X and ZUGFeRD: a PDF/A-3 invoice with its CII XML embedded.

Factur-X 1.0 (FNFE-MPE) and ZUGFeRD 2.x (FeRD) are the same thing: a PDF/A-3 file
(ISO 19005-3) whose embedded file ``factur-x.xml`` (ZUGFeRD: ``zugferd-invoice.xml``,
or ``xrechnung.xml`` for the XRechnung profile) holds the invoice as UN/CEFACT CII
(:mod:`certifier.invoices.cii`), listed in the document's ``EmbeddedFiles`` name tree
(ISO 32000-2 section 7.11.4) and as an associated file (``/AF``, section 14.13).

The PDF is read with pyHanko's reader (already loaded in the certificate workers),
non-strict, walking at most :data:`MAX_NODES` name tree nodes; an embedded file is
decoded only when stored plainly or with ``FlateDecode`` (what every Factur-X producer
writes), and never beyond the caller's size cap, so a compressed bomb cannot grow in
memory. ZUGFeRD 1.0 (``ZUGFeRD-invoice.xml``, namespace
``urn:ferd:CrossIndustryDocument:invoice:1p0``) is recognised and said to be not read.
"""

from __future__ import annotations

import io
import zlib

from lxml import etree

from certifier.invoices import cii
from certifier.invoices.model import Invoice
from certifier.invoices.xml import parse

__all__ = ["looks_like_pdf", "read"]

MAX_NODES = 256
_NAMES = {
    "factur-x.xml": "Factur-X",
    "zugferd-invoice.xml": "ZUGFeRD",
    "xrechnung.xml": "ZUGFeRD",
}
_ZUGFERD_1 = "urn:ferd:CrossIndustryDocument:invoice:1p0"


def looks_like_pdf(data: bytes) -> bool:
    """Whether ``data`` has a PDF header in its first 1024 bytes (ISO 32000-2 §7.5.2)."""
    return b"%PDF-" in data[:1024]


def _get(node: object, key: str) -> object:
    """``node[key]`` resolved (pyHanko's ``get`` leaves indirect references), or None."""
    from pyhanko.pdf_utils import generic

    if not isinstance(node, generic.DictionaryObject) or key not in node:
        return None
    return node.raw_get(key).get_object()


def _item(array: object, index: int) -> object:
    from pyhanko.pdf_utils import generic

    if not isinstance(array, generic.ArrayObject):
        return None
    item = list.__getitem__(array, index)
    return item.get_object() if hasattr(item, "get_object") else item


def _embedded(data: bytes) -> dict[str, object]:
    """The file specifications of the PDF's embedded files, by lower-cased file name."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.reader import PdfFileReader

    reader = PdfFileReader(io.BytesIO(data), strict=False)
    root = reader.root
    found: dict[str, object] = {}
    budget = [MAX_NODES]

    def add(spec: object) -> None:
        if not isinstance(spec, generic.DictionaryObject):
            return
        name = _get(spec, "/UF") or _get(spec, "/F")
        if isinstance(name, str) and len(found) < MAX_NODES:
            found.setdefault(name.lower().rsplit("/", 1)[-1], spec)

    def walk(node: object) -> None:
        budget[0] -= 1
        if budget[0] < 0 or not isinstance(node, generic.DictionaryObject):
            return
        names = _get(node, "/Names")
        if isinstance(names, generic.ArrayObject):
            for i in range(1, min(len(names), 2 * MAX_NODES), 2):
                add(_item(names, i))
        kids = _get(node, "/Kids")
        if isinstance(kids, generic.ArrayObject):
            for i in range(min(len(kids), MAX_NODES)):
                walk(_item(kids, i))

    walk(_get(_get(root, "/Names"), "/EmbeddedFiles"))
    associated = _get(root, "/AF")
    if isinstance(associated, generic.ArrayObject):
        for i in range(min(len(associated), MAX_NODES)):
            add(_item(associated, i))
    return found


def _content(spec: object, cap: int) -> bytes:
    """The bytes of a file specification's embedded file, at most ``cap``."""
    from pyhanko.pdf_utils import generic

    stream = _get(_get(spec, "/EF"), "/F")
    if not isinstance(stream, generic.StreamObject):
        raise ValueError("the embedded invoice has no content")
    filters = _get(stream, "/Filter")
    if isinstance(filters, generic.ArrayObject) and len(filters) == 1:
        filters = _item(filters, 0)
    encoded = stream.encoded_data
    if filters is None:
        data = encoded
    elif filters == "/FlateDecode" and _get(stream, "/DecodeParms") is None:
        try:
            data = zlib.decompressobj().decompress(encoded, cap + 1)
        except zlib.error:
            raise ValueError("the embedded invoice's compression is damaged") from None
    else:
        raise ValueError("the embedded invoice is encoded in a way not read")
    if len(data) > cap:
        raise ValueError("the embedded invoice is larger than the size examined")
    return bytes(data)


def read(data: bytes, cap: int) -> Invoice | None:
    """The invoice a Factur-X or ZUGFeRD PDF carries; None for a PDF that carries
    none (most PDFs). A damaged invoice gives an :class:`Invoice` with its problem."""
    try:
        files = _embedded(data)
    except Exception:  # pyHanko raises many kinds on a damaged PDF: it is no invoice
        return None
    name = next((n for n in _NAMES if n in files), None)
    if name is None:
        return None
    format_name = _NAMES[name]
    try:
        root = parse(_content(files[name], cap))
    except ValueError as err:
        return Invoice(format=format_name, problem=f"the embedded {name}: {err}")
    namespace = etree.QName(root).namespace or ""
    if namespace == _ZUGFERD_1:
        return Invoice(format="ZUGFeRD", version="1.0", problem="ZUGFeRD 1.0 is not read")
    if namespace != cii.NAMESPACE:
        return Invoice(format=format_name, problem=f"the embedded {name} is not a CII invoice")
    return cii.read(root, format_name)
