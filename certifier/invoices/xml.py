"""Reading an invoice's XML safely: one hardened lxml parser and small helpers.

The bytes come from a stranger's attachment. The parser resolves no entities, reads no
DTD, touches no network and keeps libxml2's limits on (no ``huge_tree``); a document
that declares a DTD at all is not read (no invoice format uses one: Facturae, UBL 2.1,
CII and FatturaPA are all defined by XML Schema). The caller bounds the size
(``[invoices] max_size``). Values are cut to :data:`MAX_VALUE` characters, stripped of
control characters and line breaks, so a value is always one short line.
"""

from __future__ import annotations

import re

from lxml import etree

__all__ = ["MAX_VALUE", "first", "looks_like_xml", "parse", "value"]

MAX_VALUE = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]+")
_SPACES = re.compile(r"\s+")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
    )


def looks_like_xml(data: bytes) -> bool:
    """Whether ``data`` starts like an XML document (after a BOM and white space)."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        return True
    return head.startswith((b"\xff\xfe<\x00", b"\xfe\xff\x00<"))  # UTF-16 with BOM


def parse(data: bytes) -> etree._Element:
    """The root element of ``data``; ValueError in plain words when it is not
    well-formed XML or declares a DTD."""
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as err:
        raise ValueError(f"not well-formed XML (line {err.lineno})") from None
    except (ValueError, TypeError, MemoryError):
        raise ValueError("not well-formed XML") from None
    docinfo = root.getroottree().docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise ValueError("the XML declares a DTD, which no invoice format uses: not read")
    return root


def clean(text: object) -> str:
    """One short line: control characters and line breaks removed, spaces collapsed."""
    if text is None:
        return ""
    out = _SPACES.sub(" ", _CONTROL.sub(" ", str(text))).strip()
    return out[: MAX_VALUE - 1] + "…" if len(out) > MAX_VALUE else out


def first(root: etree._Element, paths: list[str], ns: dict[str, str]) -> etree._Element | None:
    """The first element any of ``paths`` (XPath, tried in order) finds, or None."""
    for path in paths:
        found = root.xpath(path, namespaces=ns)
        if isinstance(found, list):
            for item in found:
                if isinstance(item, etree._Element):
                    return item
    return None


def value(root: etree._Element | None, paths: list[str], ns: dict[str, str]) -> str:
    """The text of the first element ``paths`` find (see :func:`first`), cleaned."""
    if root is None:
        return ""
    element = first(root, paths, ns)
    if element is None:
        return ""
    return clean("".join(element.itertext()))


_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_AMOUNT = re.compile(r"[+-]?\d{1,15}(\.\d{1,10})?")


def iso_date(text: str, problems: list[str], what: str = "issue date") -> str:
    """``YYYY-MM-DD`` from ``YYYY-MM-DD`` or ``YYYYMMDD`` (CII format 102, optionally
    with a time or zone after it); anything else kept as written, with a problem noted."""
    match = _DATE.match(text)
    if match:
        year, month, day = (int(g) for g in match.groups())
        if 1 <= month <= 12 and 1 <= day <= 31:
            return f"{year:04d}-{month:02d}-{day:02d}"
    if text:
        problems.append(f"the {what} is not a date ({text[:40]})")
    return text


def decimal_text(text: str, problems: list[str], what: str = "total") -> str:
    """A decimal amount as written (``1234.56``); anything else kept, a problem noted."""
    if text and not _AMOUNT.fullmatch(text):
        problems.append(f"the {what} is not a number ({text[:40]})")
    return text
