"""The certificate document: an A4 PDF that a person reads and a machine re-checks.

The visible pages (:mod:`certifier.document.pages`) say, in the reader's language, what
the gateway saw and did: page 1 in plain words for anyone, then annexes with the
technical evidence (the content list of a certificate is in README, "What a certificate
holds"). Two files travel inside the PDF as embedded files (ISO 32000-2 section 7.11.4,
the ``EmbeddedFiles`` name tree, and section 14.13 associated files ``/AF``, as PDF/A-3
and ETSI EN 319 142 PAdES evidence containers use them):

- ``message.eml`` — the message exactly as received (RFC 5322 bytes), whose SHA-256 the
  certificate prints;
- ``evidence.json`` — the evidence record, machine-readable and language-neutral: the
  same record renders in any language.

The document is PDF/A-3b (ISO 19005-3, level B: :func:`certifier.document.typeset._pdfa`),
returned unsigned; :mod:`certifier.signing` adds the PAdES signature as an incremental
update, which PDF/A allows (a signature field).

Everything in the evidence is untrusted: subject, names, addresses, body text, file
names and remote servers' replies are chosen by whoever sent the mail or runs the
remote server. Untrusted text never reaches reportlab's paragraph markup parser: it is
set as plain text (:mod:`certifier.document.typeset`: a subject ``<img src=...>``
prints as those characters, it does not fetch a file), control and format characters
are dropped for display, and every value is capped in length so that no table cell can
outgrow a page (reportlab's ``LayoutError``; should a reportlab change make one too tall
anyway, a plainer document is made rather than none).

The modules:

- :mod:`~certifier.document.typeset`: fonts (shipped, embedded), fast plain text,
  tables, the page header and footer, the embedded files;
- :mod:`~certifier.document.pages`: page 1 and the annexes;
- :mod:`~certifier.document.words`: evidence codes (event names, copy changes) in words;
- :mod:`~certifier.document.qr`: the QR code of the verification URL.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

from reportlab.lib.pagesizes import A4
from reportlab.platypus import Flowable, SimpleDocTemplate
from reportlab.platypus.doctemplate import LayoutError

from certifier.document.pages import (
    TITLES,
    Document,
    content_unavailable,
    fallback_story,
    story,
    title,
)
from certifier.document.typeset import (
    EMBEDDED_EVIDENCE,
    EMBEDDED_MESSAGE,
    MARGIN,
    Attachment,
    as_dict,
    binary_streams,
    canvas_class,
    clean,
    embedded_files,
    evidence_json,
)
from certifier.i18n import Reader

__all__ = [
    "EMBEDDED_EVIDENCE",
    "EMBEDDED_MESSAGE",
    "TITLES",
    "content_unavailable",
    "evidence_json",
    "render_certificate",
    "title",
]


_ENGLISH = Reader()


def render_certificate(
    evidence: dict[str, Any],
    eml: bytes | None,
    reader: Reader = _ENGLISH,
    extra_files: Iterable[tuple[str, bytes]] = (),
) -> bytes:
    """Render the unsigned certificate PDF for ``reader`` (language, time zone), with
    message.eml and evidence.json attached; ``eml`` None: the gateway lost the message,
    which the evidence states (:func:`content_unavailable`), and only evidence.json is
    attached. ``extra_files``: the ETSI EN 319 522-3 evidence documents, attached too."""
    ev = as_dict(evidence)
    attachments = embedded_files(
        None if eml is None else bytes(eml), evidence_json(evidence), extra_files
    )
    try:
        doc = Document(ev, reader)
        return _render_pages(doc, story(doc), attachments)
    except LayoutError:
        # Unreachable with the caps; if a reportlab change makes some value too tall
        # anyway, a plainer certificate is better than none.
        doc = Document(ev, reader)
        return _render_pages(doc, fallback_story(doc), attachments)


def _render_pages(
    doc: Document, flowables: list[Flowable], attachments: tuple[Attachment, ...]
) -> bytes:
    _ = doc._
    ev = doc.ev
    cert_id = clean(ev.get("certificate_id"), 64)
    heading = title(ev, doc.reader)
    provider = clean(as_dict(ev.get("provider")).get("name"), 120)
    gateway = clean(as_dict(ev.get("gateway")).get("hostname"), 120)
    buf = io.BytesIO()
    template = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=MARGIN + 4,
        bottomMargin=MARGIN + 2,
        title=f"{heading} {cert_id}".strip(),
        author=provider or "Certifica",
        subject=cert_id,
        creator="Certifica",
        lang=doc.reader.language,
    )
    canvas = canvas_class(
        header=(provider or gateway, cert_id),
        footer=heading,
        page_label=_("Page %(page)s of %(pages)s"),
        attachments=attachments,
    )
    with binary_streams():
        template.build(flowables, canvasmaker=canvas)
    return buf.getvalue()
