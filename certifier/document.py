"""The certificate document: an A4 PDF that a person reads and a machine re-checks.

The visible pages say what the gateway saw and did (the content list of a certificate
is in README, "What a certificate holds"; event names follow ETSI EN 319 522). Two files travel
inside the PDF as embedded files (ISO 32000-2 section 7.11.4, the ``EmbeddedFiles``
name tree, and section 14.13 associated files ``/AF``, as PDF/A-3 and ETSI EN 319 142
PAdES evidence containers use them):

- ``message.eml`` — the message exactly as received (RFC 5322 bytes), whose SHA-256 the
  certificate prints;
- ``evidence.json`` — the evidence record, machine-readable.

The document is returned unsigned; :mod:`certifier.signing` adds the PAdES signature.

Everything in the evidence is untrusted: subject, names, addresses, body text, file
names and remote servers' replies are chosen by whoever sent the mail or runs the
remote server. Untrusted text never reaches reportlab's paragraph markup parser: it is
set as plain text by :class:`_Line` and :class:`_TextBlock` (a subject ``<img src=...>``
prints as those characters, it does not fetch a file), control and format characters
are dropped for display, and every value is capped in length so that no table cell can
outgrow a page (reportlab's ``LayoutError``).

Rendering is most of a certificate's CPU time, so the hot paths avoid what platypus
does generically: plain text is measured once and its text operators written directly
(ISO 32000-2 section 9.4), the attachments are written in reportlab's own pass, and
the embedded font subsets are made once per process (:class:`_CachedSubsetsFont`).
``bench/certs.py`` measures it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import re
import unicodedata
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.rl_accel import fp_str
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfdoc, pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import SUBSETN, TTFont, makeToUnicodeCMap
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    CondPageBreak,
    Flowable,
    KeepTogether,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.doctemplate import LayoutError

from certifier.i18n import Reader

__all__ = [
    "EMBEDDED_EVIDENCE",
    "EMBEDDED_MESSAGE",
    "TITLES",
    "evidence_json",
    "render_certificate",
]

EMBEDDED_MESSAGE = "message.eml"
EMBEDDED_EVIDENCE = "evidence.json"

TITLES = {
    "sending": "Certificate of certified e-mail delivery",
    "reception": "Certificate of certified e-mail reception",
    "addendum": "Addendum to a certificate of certified e-mail delivery",
}
_INTRO = {
    "sending": (
        "The gateway named below received the message described in this certificate "
        "for certified delivery, relayed it to each recipient's mail server and "
        "recorded what each server answered. The original message and the "
        "machine-readable evidence are attached to this PDF."
    ),
    "reception": (
        "The gateway named below received the message described in this certificate "
        "on behalf of the recipient's mailbox and recorded its content and origin. "
        "The original message and the machine-readable evidence are attached to "
        "this PDF."
    ),
    "addendum": (
        "This addendum records events that happened after the certificate for the "
        "message below was issued. The original message and the machine-readable "
        "evidence are attached to this PDF."
    ),
}
_ATTACHED = "The original message and the machine-readable evidence are attached to this PDF."
_ATTACHED_WITHOUT_MESSAGE = (
    "Only the machine-readable evidence is attached to this PDF: the message could not "
    "be read (see below)."
)
_STATUS = {
    "delivered": "Delivered (accepted by the recipient's mail server)",
    "failed": "Failed (not delivered)",
    "bounced": "Bounced (accepted, then returned by the recipient's side)",
    "withdrawn": "Withdrawn (delivery cancelled by the gateway's operator)",
}

# Display caps, in characters. A capped value ends with "[…]" and the full value stays
# in the embedded evidence.json; the caps keep any single table row shorter than a
# page, which reportlab cannot split.
_CAP_SHORT = 300  # addresses, hosts, ids
_CAP_LINE = 1000  # subject, reply texts, timeline details
_CAP_LIST = 60  # entries of To/Cc shown before "and N more"
_CAP_CELL = 2000  # any one table cell: 45 lines at worst, well under a page
_CAP_BODY = 20_000  # message text
_CAP_ROWS = 400  # attachments, timeline and log entries shown
# Recipients are the heart of the evidence: all of them are listed, up to a bound that
# only keeps a hostile evidence record from rendering for minutes.
_CAP_RECIPIENTS = 1000

_PAGE_W, _PAGE_H = A4
_MARGIN = 18 * mm
_LABEL_W = 42 * mm
_VALUE_W = _PAGE_W - 2 * _MARGIN - _LABEL_W

_FONT_DIRS = (
    Path(__file__).with_name("fonts"),
    Path("/usr/share/fonts/truetype/dejavu"),
)


# --- fonts and styles -----------------------------------------------------------------


@lru_cache(maxsize=1)
def _fonts() -> tuple[str, str, str, bool]:
    """Register the fonts once per process: (regular, bold, mono, unicode_capable)."""
    files = {
        "CertificaSans": "DejaVuSans.ttf",
        "CertificaSans-Bold": "DejaVuSans-Bold.ttf",
        "CertificaMono": "DejaVuSansMono.ttf",
    }
    for directory in _FONT_DIRS:
        paths = {name: directory / file for name, file in files.items()}
        if all(p.is_file() for p in paths.values()):
            for name, path in paths.items():
                pdfmetrics.registerFont(_CachedSubsetsFont(name, str(path)))
            pdfmetrics.registerFontFamily(
                "CertificaSans", normal="CertificaSans", bold="CertificaSans-Bold"
            )
            return "CertificaSans", "CertificaSans-Bold", "CertificaMono", True
    # The standard 14 fonts need no files but only cover Latin-1 (see _clean).
    return "Helvetica", "Helvetica-Bold", "Courier", False


class _CachedSubsetsFont(TTFont):
    """A TrueType font whose embedded subsets are made and compressed once per process.

    reportlab embeds a TrueType font as subsets of up to 256 glyphs, and builds,
    compresses and describes (a /Widths array of 256 numbers) each again for every
    document: a quarter of a certificate's rendering time. Here subset 0 of every
    document is the same: ASCII at its own codes (as reportlab's ``ttfAsciiReadable``
    places it) and the few characters of the gateway's own wording (:data:`_SEEDED`);
    every other character goes to subset 1 or later, which hold only the handful a
    message brings (accented letters, say). Subsets are kept, made, compressed and
    described, keyed by their exact character list.
    """

    _KEEP = 32  # subsets kept per font: subset 0 and the most recent others

    def __init__(self, name: str, filename: str) -> None:
        super().__init__(name, filename)
        self._made: OrderedDict[tuple[int, ...], _Subset] = OrderedDict()
        make_subset = self.face.makeSubset

        def cached_make_subset(subset: list[int]) -> bytes:
            return self._subset(subset, make_subset).font_file

        # reportlab's TTFontFace.addSubsetObjects calls face.makeSubset(subset).
        self.face.makeSubset = cached_make_subset
        face = self.face
        self._ascii_widths = [face.charWidths.get(c, face.defaultWidth) for c in range(128)]

    def stringWidth(self, text: str | bytes, size: float, encoding: str = "utf8") -> float:  # noqa: N802 - reportlab's name
        """The width of *text* in points, as reportlab's ``TTFont.stringWidth``.

        A fast path for ASCII, most of what a certificate measures (~450 strings
        each): reportlab's own, without its optional C accelerator, is a Python
        generator with a dict lookup per character, ~6% of the rendering time; here
        the same widths are looked up in C (``map`` over a list) and summed in the same
        order, so the result is the same float.
        ``test_ascii_string_width_equals_reportlab`` holds the two equal.
        """
        if isinstance(text, str) and text.isascii():
            widths = map(self._ascii_widths.__getitem__, text.encode("ascii"))
            return 0.001 * size * sum(widths)
        return float(super().stringWidth(text, size, encoding))

    def _subset(self, subset: list[int], make: Any) -> _Subset:
        key = tuple(subset)
        made = self._made.get(key)
        if made is None:
            raw = make(subset)
            widths = pdfdoc.PDFArray([self.face.getCharWidth(c) for c in subset])
            made = self._made[key] = _Subset(
                raw, zlib.compress(raw, 9), _Formatted(widths.format(_FORMAT_DOC))
            )
            if len(self._made) > self._KEEP:
                self._made.popitem(last=False)
        else:
            self._made.move_to_end(key)
        return made

    def seed(self, doc: pdfdoc.PDFDocument) -> None:
        """Fix subset 0 of this font in *doc* (call before any text is drawn)."""
        state = self._assignState(doc)
        self.splitString(_SEEDED, doc)
        # The next character gets code 256, the first of subset 1.
        state.nextCode = 256
        if self.splitString(_PRINTABLE_ASCII, doc) == [(0, _PRINTABLE_ASCII.encode("ascii"))]:
            _ASCII_AS_IS.add(self)

    def addObjects(self, doc: pdfdoc.PDFDocument) -> None:  # noqa: N802 - reportlab's name
        """The font and subset objects of *doc*, as reportlab's ``TTFont.addObjects``
        writes them, with the parts made once per process: the subset program and its
        /Widths (see the class docstring) and the ToUnicode CMap stream, compressed.

        reportlab's own made the CMap text, the 256 widths and their PDF array again
        for every subset of every document, then compressed the CMap (~5% of the
        rendering time). Objects are registered in reportlab's order, so they get the
        same numbers; the 15 sample messages render byte-identical either way
        (``test_font_objects_are_reportlabs``).
        """
        state = self.state.get(doc)
        if state is None or not doc.compression:
            super().addObjects(doc)
            return
        state.frozen = 1
        face = self.face
        fonts = doc.idToObject["BasicFonts"].dict
        for n, subset in enumerate(state.subsets):
            internal_name = self.getSubsetInternalName(n, doc)[1:]
            base = b"".join((SUBSETN(n), b"+", face.name, face.subfontNameX)).decode("pdfdoc")
            font = pdfdoc.PDFTrueTypeFont()
            font.__Comment__ = f"Font {self.fontName} subset {n}"
            font.Name = internal_name
            font.BaseFont = base
            font.FirstChar = 0
            font.LastChar = len(subset) - 1
            cmap = pdfdoc.PDFStream()
            font.ToUnicode = doc.Reference(cmap, "toUnicodeCMap:" + base)
            # Makes the subset program (face.makeSubset, cached) and registers it.
            font.FontDescriptor = face.addSubsetObjects(doc, base, subset)
            made = self._made[tuple(subset)]
            font.Widths = made.widths
            cmap.content = made.to_unicode.get(n)
            if cmap.content is None:
                text = makeToUnicodeCMap(base, subset).encode("utf-8")
                cmap.content = made.to_unicode[n] = zlib.compress(text)
            cmap.dictionary["Filter"] = pdfdoc.PDFArray([pdfdoc.PDFName("FlateDecode")])
            stream = doc.idToObject.get(f"fontFile:{face.filename}({base})")
            if isinstance(stream, pdfdoc.PDFStream) and stream.content is made.font_file:
                stream.content = made.compressed
                stream.filters = None
                stream.dictionary["Filter"] = pdfdoc.PDFArray([pdfdoc.PDFName("FlateDecode")])
            doc.Reference(font, internal_name)
            fonts[internal_name] = font
        del self.state[doc]


@dataclass(frozen=True)
class _Subset:
    font_file: bytes  # the subset TrueType program
    compressed: bytes  # the same, Flate-compressed
    widths: _Formatted  # its /Widths array
    # Its ToUnicode CMap, Flate-compressed, by subset number (the CMap names it).
    to_unicode: dict[int, bytes] = field(default_factory=dict)


class _Formatted(pdfdoc.PDFObject):
    """A PDF object already written out."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def format(self, document: pdfdoc.PDFDocument) -> bytes:
        return self.data


# Numbers and arrays format the same in every reportlab document.
_FORMAT_DOC = pdfdoc.DummyDoc()


_PRINTABLE_ASCII = "".join(map(chr, range(0x20, 0x7F)))
# Fonts that keep printable ASCII in subset 0 at its own codes, as reportlab's
# ttfAsciiReadable (on by default) does when the font has every ASCII glyph.
_ASCII_AS_IS: set[TTFont] = set()

# Characters of the gateway's own wording outside ASCII, in subset 0 of every font:
# the dash of an empty value, the footer's separator, the mark of a shortened value.
_SEEDED = "—·…"


def _seed_fonts(doc: pdfdoc.PDFDocument) -> None:
    for name in _fonts()[:3]:
        font = pdfmetrics.getFont(name)
        if isinstance(font, _CachedSubsetsFont):
            font.seed(doc)


# DejaVu has no Chinese, Japanese or Korean glyphs. Runs of those characters are set in
# the standard Adobe CJK fonts (ISO 32000 section 9.7.5.2 predefined CMaps): not
# embedded, every reader has or substitutes them, and text extraction maps them back to
# Unicode through the registry's CID-to-Unicode tables.
_CJK_FONTS = {"korean": "HYGothic-Medium", "cjk": "HeiseiKakuGo-W5"}


def _cjk_class(code: int) -> str | None:
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "korean"
    if (
        0x3000 <= code <= 0x30FF  # CJK punctuation, hiragana, katakana
        or 0x3400 <= code <= 0x4DBF  # extension A
        or 0x4E00 <= code <= 0x9FFF  # unified ideographs
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= code <= 0xFFEF  # half- and full-width forms
        or 0x20000 <= code <= 0x2FFFF  # supplementary ideographs
    ):
        return "cjk"
    return None


@lru_cache(maxsize=4)
def _cjk_font(cls: str) -> str:
    name = _CJK_FONTS[cls]
    pdfmetrics.registerFont(UnicodeCIDFont(name))
    return name


@lru_cache(maxsize=8)
def _coverage(font_name: str) -> frozenset[int] | None:
    """Code points *font_name* has glyphs for; None for the WinAnsi standard fonts."""
    face = getattr(pdfmetrics.getFont(font_name), "face", None)
    return frozenset(face.charToGlyph) if face is not None else None


@lru_cache(maxsize=8)
def _covers_ascii(font_name: str) -> bool:
    """Whether *font_name* has a glyph for every printable ASCII character."""
    covered = _coverage(font_name)
    return covered is not None and covered.issuperset(range(0x20, 0x7F))


def _font_runs(text: str, font_name: str) -> list[tuple[str | None, str]]:
    """Split display text into (font or None for the style's font, text) runs.

    A character no font can draw becomes U+FFFD: a visible mark that something is
    there (the exact text is in evidence.json), where the font would draw nothing.
    """
    covered = _coverage(font_name)
    if covered is not None:
        flat = text.replace("\n", "")
        # Printable ASCII (most text) is answered by two C passes, a tenth of the time
        # of looking each character up (~2% of the rendering time): the same answer
        # where the font covers printable ASCII (_covers_ascii, test_font_runs_fast_path).
        if flat.isascii() and flat.isprintable() and _covers_ascii(font_name):
            return [(None, text)]
        if covered.issuperset(map(ord, flat)):
            return [(None, text)]
    runs: list[tuple[str | None, str]] = []
    for ch in text:
        code = ord(ch)
        font: str | None = None
        if covered is None:
            if not _winansi(ch):
                cls = _cjk_class(code)
                font, ch = (_cjk_font(cls), ch) if cls else (None, "?")
        elif code not in covered and ch not in "\n":
            cls = _cjk_class(code)
            font, ch = (_cjk_font(cls), ch) if cls else (None, "\ufffd")
        if runs and runs[-1][0] == font:
            runs[-1] = (font, runs[-1][1] + ch)
        else:
            runs.append((font, ch))
    return runs


def _winansi(ch: str) -> bool:
    try:
        ch.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


@lru_cache(maxsize=1)
def _styles() -> dict[str, ParagraphStyle]:
    regular, bold, mono, _ = _fonts()
    base = ParagraphStyle("base", fontName=regular, fontSize=8.5, leading=11, alignment=TA_LEFT)
    return {
        "title": ParagraphStyle("title", base, fontName=bold, fontSize=16, leading=20),
        "intro": ParagraphStyle("intro", base, fontSize=9, leading=12, spaceBefore=4),
        "h2": ParagraphStyle(
            "h2", base, fontName=bold, fontSize=11, leading=14, spaceBefore=10, spaceAfter=4
        ),
        "h3": ParagraphStyle("h3", base, fontName=bold, fontSize=9, leading=12, spaceBefore=6),
        "label": ParagraphStyle("label", base, fontName=bold, textColor=colors.HexColor("#444444")),
        "value": ParagraphStyle("value", base),
        "cell": ParagraphStyle("cell", base, fontSize=7.5, leading=9.5),
        "cellbold": ParagraphStyle("cellbold", base, fontName=bold, fontSize=7.5, leading=9.5),
        # 7.5 pt DejaVu Sans Mono is 4.5 pt per character: a 64-digit hash takes
        # 289 pt and fits on one line in every column it is printed in, so text
        # extraction (pdftotext) yields it as one token.
        "hash": ParagraphStyle("hash", base, fontName=mono, fontSize=7.5, leading=9.5),
        "body": ParagraphStyle("body", base, fontSize=8.5, leading=11, splitLongWords=1),
        "note": ParagraphStyle(
            "note", base, fontSize=8, leading=10, textColor=colors.HexColor("#555555")
        ),
    }


# --- untrusted values -----------------------------------------------------------------


def _clean(value: object, cap: int, *, multiline: bool = False) -> str:
    """Untrusted value -> plain display text: no control/format characters, capped."""
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool | int | float):
        text = str(value)
    else:
        # A list or dict where a string was expected: show it, don't fail.
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (ValueError, RecursionError):
            text = f"({type(value).__name__})"
    # Cap before the per-character work so a 10 MB field costs nothing extra.
    truncated = len(text) > cap
    text = text[:cap]
    lines = text.splitlines() if multiline else [text]
    # str.isprintable() is False exactly for the categories removed below and for
    # separators other than the space, so most lines skip the per-character pass.
    text = "\n".join(
        line if line.isprintable() else _clean_chars(line, multiline) for line in lines
    )
    if multiline:
        text = re.sub(r"\n{3,}", "\n\n", text)
    if truncated:
        text += " […]"
    return text


def _clean_chars(text: str, multiline: bool) -> str:
    out = []
    for ch in text:
        if ch == "\t":
            out.append("    " if multiline else " ")
        elif ch in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
            # Line breaks str.splitlines() knows; only reached on a single line.
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Cn", "Co"):
            # Cc/Cf: C0/C1 controls and bidi overrides (which could re-order what a
            # reader sees); Cs: lone surrogates; Cn/Co: nothing a font can draw.
            continue
        else:
            out.append(ch)
    return "".join(out)


def _para(
    value: object,
    style: str = "value",
    cap: int = _CAP_SHORT,
    empty: str = "—",
    *,
    multiline: bool = False,
) -> Flowable:
    """An untrusted value as plain text in *style*: never markup, wrapped to its cell."""
    st = _styles()[style]
    text = _clean(value, cap, multiline=multiline)
    if not multiline:
        # As a Paragraph would show it: single spaces between words.
        text = _SPACES.sub(" ", text).strip(" ")
    if not text.strip():
        text = empty
    if not multiline and _SIMPLE_LINE.fullmatch(text):
        runs = _font_runs(text, st.fontName)
        if len(runs) == 1 and runs[0][0] is None:
            return _Line(text, st)
    return _TextBlock(text, st) if text else _Line(text, st)


_SPACES = re.compile(" {2,}")


def _trusted(markup: str, style: str) -> Flowable:
    """A paragraph of the gateway's own wording (never evidence values)."""
    st = _styles()[style]
    if "<" not in markup and "&" not in markup and _SIMPLE_LINE.fullmatch(markup):
        return _Line(markup, st)
    return _OwnParagraph(markup, st)


class _OwnParagraph(Paragraph):
    """A Paragraph of the gateway's own wording whose line breaks are worked out once
    per process.

    The "How to verify" text is the same markup in every certificate; breaking it into
    lines (``Paragraph.breakLines``, a Python loop over every word) was ~6% of the
    rendering time. The result depends only on the markup, the style and the widths,
    so it is kept under those. Drawing reads it without changing it; the halves of a
    page split are plain Paragraphs made from fragments (no markup), never cached.
    ``test_own_paragraph_lays_out_as_a_paragraph`` holds the output equal to a
    Paragraph's.
    """

    _broken: OrderedDict[tuple[str, int, tuple[float, ...]], Any] = OrderedDict()

    def breakLines(self, width: Any) -> Any:  # noqa: N802 - reportlab's name
        if not isinstance(self.text, str):
            return super().breakLines(width)
        # Styles are made once per process (_styles()); a ParagraphStyle hashes by
        # identity, which its id() stands for while _styles() keeps it alive.
        key = (self.text, id(self.style), tuple(width))
        broken = self._broken.get(key)
        if broken is None:
            broken = self._broken[key] = super().breakLines(width)
            if len(self._broken) > 16:
                self._broken.popitem(last=False)
        return broken

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:  # noqa: N803
        # The halves are made with self.__class__ and the fragments of the cached line
        # breaks; make them from a fresh layout as a plain Paragraph would.
        if hasattr(self, "blPara"):
            self.blPara = Paragraph.breakLines(self, self._wrapWidths)
        parts: list[Flowable] = super().split(availWidth, availHeight)
        return parts


# Text that a Paragraph would show as it is: words with single spaces between them.
# Paragraph collapses other whitespace, and _Line must print what a Paragraph would.
_SIMPLE_LINE = re.compile(r"\S+(?: \S+)*")


@lru_cache(maxsize=64)
def _first_baseline(font_name: str, font_size: float) -> float:
    """How far below its top a Paragraph puts its first baseline."""
    if rl_config.paraFontSizeHeightOffset:
        return font_size
    return float(pdfmetrics.getAscentDescent(font_name, font_size)[0])


def _draw_lines(
    canvas: rl_canvas.Canvas,
    x: float,
    top: float,
    style: ParagraphStyle,
    lines: list[list[tuple[str | None, str]]],
) -> None:
    """Draw *lines* of (font or None for the style's, text) segments from *top* down.

    The first baseline is where a Paragraph of *style* puts it, the others one leading
    apart. With TrueType fonts the text operators are written directly (ISO 32000-2
    section 9.4): reportlab's text object re-encodes every string through per-character
    Python loops, which for a page of message text took longer than laying it out.
    The characters still go through the font's own subset assignment
    (``TTFont.splitString``), so the embedded subsets and ToUnicode maps are what
    reportlab would write. Other fonts (the CJK ones, the standard 14) use reportlab's
    text object.
    """
    size, leading = style.fontSize, style.leading
    x += style.leftIndent
    y = top - _first_baseline(style.fontName, size)
    fonts = {font or style.fontName for line in lines for font, _ in line}
    if not all(isinstance(pdfmetrics.getFont(f), TTFont) for f in fonts):
        canvas.saveState()
        canvas.setFillColor(style.textColor)
        text = canvas.beginText(x, y)
        text.setFont(style.fontName, size, leading)
        for line in lines:
            for font, segment in line:
                if font is not None:
                    text.setFont(font, size, leading)
                # _textOut, as Paragraph draws: textOut would also measure the text.
                text._textOut(segment)
                if font is not None:
                    text.setFont(style.fontName, size, leading)
            text._textOut("", 1)  # T*: the next line, one leading down
        canvas.drawText(text)
        canvas.restoreState()
        return
    doc = canvas._doc
    ops = [_text_state(style), "BT", _fp(x), _fp(y), "Td"]
    size_text = _fp(size)
    current = None
    for i, line in enumerate(lines):
        if i:
            ops.append("T*")
        for font_name, segment in line:
            font = pdfmetrics.getFont(font_name or style.fontName)
            if segment.isascii() and segment.isprintable() and font in _ASCII_AS_IS:
                # Printable ASCII is in subset 0 at its own codes (see seed()); the
                # per-character subset assignment would find exactly that.
                chunks = [(0, segment.encode("ascii"))]
            else:
                chunks = font.splitString(segment, doc)
            for subset, codes in chunks:
                name = font.getSubsetInternalName(subset, doc)
                if name != current:
                    ops += [name, size_text, "Tf"]
                    current = name
                ops.append(f"({_pdf_string_bytes(codes)}) Tj")
    ops.append("ET Q")
    canvas.addLiteral(" ".join(ops))


@lru_cache(maxsize=64)
def _text_state(style: ParagraphStyle) -> str:
    # ParagraphStyle hashes by identity; the styles are made once (_styles()).
    return f"q {fp_str(style.textColor.rgb())} rg {_fp(style.leading)} TL"


@lru_cache(maxsize=4096)
def _fp(value: float) -> str:
    """*value* exactly as reportlab writes a number (``fp_str``), for one number.

    reportlab's own is a pure-Python loop over its arguments unless its optional C
    accelerator is installed; this is the same rule, a little faster. Kept per value:
    the positions of a certificate's lines (the same layout, so the same baselines in
    every certificate) and its few sizes repeat, and a cache hit costs a tenth of the
    formatting (which was ~4% of the rendering time).
    """
    magnitude = abs(value)
    if magnitude <= 1e-7:
        return "0"
    places = 6 if magnitude <= 1 else min(max(0, 6 - int(math.log(magnitude) / _LOG_10)), 6)
    text = f"{value:.{places}f}"
    if places:
        text = text.rstrip("0").rstrip(".")
    return text[1:] if text[0] == "0" and len(text) > 1 else text


_LOG_10 = math.log(10.0)


_STRING_ESCAPES = re.compile(rb"[^\x20-\x7e]|[\\()]")


def _pdf_string_bytes(data: bytes) -> str:
    """The inside of a PDF literal string for *data* (7.3.4.2): ASCII as is, the rest
    as octal escapes, and backslash and parentheses escaped.

    Most strings need no escape at all: ``bytes.translate`` finds that in one C pass,
    a third of the time of the regular expression substitution it would otherwise go
    through (about 2% of the rendering time). ``test_pdf_string_fast_path`` holds the
    two equal.
    """
    if not data.translate(None, _NEEDS_NO_ESCAPE):
        return data.decode("ascii")
    return _pdf_string_escaped(data)


def _pdf_string_escaped(data: bytes) -> str:
    return _STRING_ESCAPES.sub(lambda m: b"\\%03o" % m.group()[0], data).decode("ascii")


# What _STRING_ESCAPES leaves alone: printable ASCII but backslash and parentheses.
_NEEDS_NO_ESCAPE = bytes(c for c in range(0x20, 0x7F) if c not in b"\\()")


class _Line(Flowable):
    """One line of plain text in its style's font: most values of a certificate.

    A Paragraph parses its markup, breaks lines and sets up a text object for every
    value, which was most of the time a certificate took to render. A _Line measures
    its text once and, when it fits the width it is given, draws it directly, exactly
    where a one-line Paragraph of the same style would. When it does not fit it hands
    over to a _TextBlock of the same text, which wraps it.
    """

    def __init__(self, text: str, style: ParagraphStyle) -> None:
        super().__init__()
        self.text = text
        self.style = style
        self._text_width = pdfmetrics.stringWidth(text, style.fontName, style.fontSize)
        self._block: _TextBlock | None = None
        self._fits = True

    def _fits_in(self, avail_width: float) -> bool:
        st = self.style
        room = avail_width - st.leftIndent - st.firstLineIndent - st.rightIndent
        return avail_width >= 1e-8 and self._text_width <= room

    def _as_block(self) -> _TextBlock:
        if self._block is None:
            self._block = _TextBlock(self.text, self.style)
        return self._block

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:  # noqa: N803
        self._fits = self._fits_in(availWidth)
        if not self._fits:
            return self._as_block().wrap(availWidth, availHeight)
        self.width = availWidth
        self.height = self.style.leading if self.text else 0
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:  # noqa: N803
        if self._fits_in(availWidth):
            return []  # one line that does not fit the height: move it on whole
        return self._as_block().split(availWidth, availHeight)

    def minWidth(self) -> float:  # noqa: N802 - reportlab's name
        return self._as_block().minWidth()

    def drawOn(self, canvas: rl_canvas.Canvas, x: float, y: float, _sW: float = 0) -> None:  # noqa: N802, N803
        if not self._fits:
            self._as_block().drawOn(canvas, x, y, _sW)
            return
        if self.text:
            _draw_lines(canvas, x, y + self.height, self.style, [[(None, self.text)]])


class _TextBlock(Flowable):
    """Lines of plain text (a message body, a long value), wrapped, split between pages.

    A Paragraph of a message body measured every word again at every wrap and at
    every page split, most of the time of a certificate for an ordinary message. Here
    each source line is cut into words and runs of spaces once, measured once per
    distinct word, and wrapped greedily: at a space, or inside a word longer than a
    whole line. Spaces are kept as they are (indentation stays visible), characters
    DejaVu lacks are set in the CJK fonts or shown as U+FFFD (see _font_runs), and a
    page split only slices the wrapped lines.
    """

    def __init__(
        self,
        text: str,
        style: ParagraphStyle,
        lines: list[list[tuple[str | None, str]]] | None = None,
        width: float | None = None,
    ) -> None:
        super().__init__()
        self.text = text
        self.style = style
        self._lines = lines or []
        self._wrapped_for = width if lines is not None else None

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:  # noqa: N803
        if availWidth != self._wrapped_for:
            self._lines = self._wrap(availWidth)
            self._wrapped_for = availWidth
        self.width = availWidth
        self.height = len(self._lines) * self.style.leading
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:  # noqa: N803
        self.wrap(availWidth, availHeight)
        fit = int((availHeight + 1e-8) // self.style.leading)
        if fit <= 0:
            return []
        if fit >= len(self._lines):
            return [self]
        head, tail = self._lines[:fit], self._lines[fit:]
        return [
            _TextBlock(_lines_text(head), self.style, head, availWidth),
            _TextBlock(_lines_text(tail), self.style, tail, availWidth),
        ]

    def minWidth(self) -> float:  # noqa: N802 - reportlab's name
        st = self.style
        words = self.text.split()
        return max((_width(w, st.fontName, st.fontSize) for w in words), default=0.0)

    def _wrap(self, width: float) -> list[list[tuple[str | None, str]]]:
        st = self.style
        room = width - st.leftIndent - st.rightIndent
        out: list[list[tuple[str | None, str]]] = []
        for line in self.text.split("\n"):
            out.extend(_wrap_line(line, st.fontName, st.fontSize, room))
        return out

    def drawOn(self, canvas: rl_canvas.Canvas, x: float, y: float, _sW: float = 0) -> None:  # noqa: N802, N803
        _draw_lines(canvas, x, y + self.height, self.style, self._lines)


class _RunsBlock(_TextBlock):
    """A paragraph of the gateway's own wording given as runs of (font or None for the
    style's, text): the "How to verify" text, whose commands and file names are set in
    the mono font. Wrapped once per process and width, drawn by :func:`_draw_lines`.

    It replaces a Paragraph with ``<font>`` markup, whose markup parsing, line
    breaking and per-fragment drawing were ~9% of every certificate's rendering time.
    The words are the same and break at spaces by the same greedy rule and the same
    widths (``test_how_to_verify_breaks_lines_as_a_paragraph``); unlike a Paragraph,
    and like every other _TextBlock, a line does not shrink its spaces (by up to 5%,
    reportlab's ``spaceShrinkage``) to take one more word.
    """

    def __init__(self, runs: tuple[tuple[str | None, str], ...], style: ParagraphStyle) -> None:
        super().__init__("".join(text for _, text in runs), style)
        self.runs = runs

    def _wrap(self, width: float) -> list[list[tuple[str | None, str]]]:
        st = self.style
        room = width - st.leftIndent - st.rightIndent
        return _wrapped_runs(self.runs, st.fontName, st.fontSize, room)


@lru_cache(maxsize=16)
def _wrapped_runs(
    runs: tuple[tuple[str | None, str], ...], font_name: str, size: float, room: float
) -> list[list[tuple[str | None, str]]]:
    # Shared by every certificate: the lines are only read (sliced at a page split).
    return _wrap_runs(runs, font_name, size, room, whole_words=True)


def _lines_text(lines: list[list[tuple[str | None, str]]]) -> str:
    return "\n".join("".join(segment for _, segment in line) for line in lines)


_TOKENS = re.compile(r" +|[^ ]+")


def _wrap_line(
    line: str, font_name: str, size: float, room: float
) -> list[list[tuple[str | None, str]]]:
    """One source line as display lines of (font or None, text) segments."""
    runs = _font_runs(line, font_name)
    if len(runs) == 1 and runs[0][0] is None and _width(line, font_name, size) <= room:
        return [[(None, line)]] if line else [[]]  # most lines: they fit as they are
    return _wrap_runs(runs, font_name, size, room)


def _wrap_runs(
    runs: Iterable[tuple[str | None, str]],
    font_name: str,
    size: float,
    room: float,
    *,
    whole_words: bool = False,
) -> list[list[tuple[str | None, str]]]:
    """Runs of (font or None, text) of one source line as display lines of segments:
    broken greedily at spaces, inside a word only when it is longer than a line.

    With *whole_words*, a word whose parts are in different runs (``(`` then a
    command in the mono font) is never broken between them, as a Paragraph keeps
    adjacent fragments together; without, the runs of one message line (text, then
    CJK characters DejaVu lacks) may break where the font changes.
    """
    lines: list[list[tuple[str | None, str]]] = []
    current: list[tuple[str | None, str]] = []
    used = 0.0
    for font, run in runs:
        face = font or font_name
        for token in _TOKENS.findall(run):
            width = _width(token, face, size)
            if token[0] == " ":
                # Spaces where a line was broken are dropped; indentation is kept.
                if current or not lines:
                    current.append((font, token))
                    used += width
                continue
            if used + width > room and current:
                carry: list[tuple[str | None, str]] = []
                if whole_words and current[-1][1][0] != " ":
                    # This word began in an earlier run: it moves on whole, unless it
                    # is all the line holds.
                    start = len(current)
                    while start and current[start - 1][1][0] != " ":
                        start -= 1
                    if any(seg.strip() for _, seg in current[:start]):
                        current, carry = current[:start], current[start:]
                while current and current[-1][1][0] == " ":
                    current.pop()
                if any(seg.strip() for _, seg in current):
                    lines.append(current)
                current = carry
                used = sum(_width(seg, f or font_name, size) for f, seg in carry)
            while width > room and len(token) > 1:
                # A word longer than a whole line: as much of it as fits, then the rest.
                cut = _fitting_prefix(token, face, size, room - used)
                if cut == 0 and current:
                    lines.append(current)
                    current, used = [], 0.0
                    continue
                cut = max(cut, 1)
                current.append((font, token[:cut]))
                lines.append(current)
                current, used = [], 0.0
                token = token[cut:]
                width = _width(token, face, size)
            current.append((font, token))
            used += width
    lines.append(current)
    return [_merge(segments) for segments in lines]


def _fitting_prefix(token: str, font: str, size: float, room: float) -> int:
    """How many leading characters of *token* fit in *room* points."""
    used = 0.0
    for i, ch in enumerate(token):
        used += _width(ch, font, size)
        if used > room:
            return i
    return len(token)


def _merge(segments: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    merged: list[tuple[str | None, str]] = []
    for font, text in segments:
        if merged and merged[-1][0] == font:
            merged[-1] = (font, merged[-1][1] + text)
        else:
            merged.append((font, text))
    return merged


@lru_cache(maxsize=8192)
def _width(text: str, font: str, size: float) -> float:
    return float(pdfmetrics.stringWidth(text, font, size))


def _d(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _l(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _time(value: object, suffix: str = " UTC") -> str:
    """An ISO 8601 time from the evidence, shown in UTC; anything else shown as is."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is not None:
                parsed = parsed.astimezone(dt.UTC)
                return parsed.strftime("%Y-%m-%d %H:%M:%S") + suffix
    return _clean(value, 64)


def _size(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return _clean(value, 64)
    text = f"{value:,} bytes"
    for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
        if value >= scale:
            return f"{text} ({value / scale:.1f} {unit})"
    return text


def _tls(value: object) -> str:
    tls = _d(value)
    if not tls:
        return "none (plain text)" if value is None else _clean(value, _CAP_SHORT)
    parts = [_clean(tls.get("version"), 40), _clean(tls.get("cipher"), 120)]
    return ", ".join(p for p in parts if p) or "yes"


def _addresses(value: object) -> str:
    items = value if isinstance(value, list) else ([value] if value else [])
    shown: list[str] = []
    length = 0
    for item in items[:_CAP_LIST]:
        text = _clean(item, _CAP_SHORT)
        if length + len(text) > _CAP_CELL - 100:
            break
        shown.append(text)
        length += len(text) + 2
    text = ", ".join(shown)
    if len(items) > len(shown):
        text += f", and {len(items) - len(shown)} more (see evidence.json)"
    return text


# --- building blocks ------------------------------------------------------------------


_GRID = colors.HexColor("#bbbbbb")
_SHADE = colors.HexColor("#eeeeee")


def _kv_table(rows: Iterable[tuple[str, Flowable]]) -> Table:
    """Two columns: the gateway's label, the (escaped) value."""
    data = [[_trusted(escape(label), "label"), value] for label, value in rows]
    table = Table(data, colWidths=[_LABEL_W, _VALUE_W], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return table


def _grid_table(
    header: list[str],
    rows: list[list[Flowable]],
    widths: list[float],
    extra: list[tuple] | None = None,
) -> Table:
    data: list[list[Flowable | str]] = [[_trusted(escape(h), "cellbold") for h in header]]
    data.extend(rows)
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
                ("LINEBELOW", (0, 0), (-1, -1), 0.3, _GRID),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
                *(extra or []),
            ]
        )
    )
    return table


def _heading(text: str) -> list[Flowable]:
    # Keep a heading with at least a few lines of what follows it.
    return [CondPageBreak(30 * mm), _trusted(escape(text), "h2")]


def _more_note(total: int, what: str, cap: int = _CAP_ROWS) -> list[Flowable]:
    if total <= cap:
        return []
    return [_trusted(escape(f"{total - cap} more {what} are in evidence.json."), "note")]


# --- sections -------------------------------------------------------------------------


def _header(ev: dict[str, Any], kind: str) -> list[Flowable]:
    gateway = _d(ev.get("gateway"))
    title = TITLES.get(kind, TITLES["sending"])
    intro = _INTRO.get(kind, _INTRO["sending"])
    if content_unavailable(ev):
        intro = intro.replace(_ATTACHED, _ATTACHED_WITHOUT_MESSAGE)
    return [
        _trusted(escape(title), "title"),
        _trusted(escape(intro), "intro"),
        Spacer(1, 4 * mm),
        _kv_table(
            [
                ("Certificate id", _para(ev.get("certificate_id"), cap=100)),
                *(
                    [("Addendum to certificate", _para(ev.get("addendum_of"), cap=100))]
                    if ev.get("addendum_of")
                    else []
                ),
                ("Issued at (UTC)", _para(_time(ev.get("issued_at")))),
                ("Gateway", _para(gateway.get("hostname"))),
                ("Gateway domain", _para(gateway.get("domain"))),
                ("Software", _para(gateway.get("software"))),
                ("Queue id", _para(ev.get("queue_id"), cap=100)),
            ]
        ),
    ]


def _sender(ev: dict[str, Any]) -> list[Flowable]:
    s = _d(ev.get("sender"))
    client = _clean(s.get("client_ip"), 100)
    helo = _clean(s.get("client_helo"), _CAP_SHORT)
    if helo:
        client = f"{client} (HELO {helo})" if client else f"HELO {helo}"
    return [
        *_heading("Sender"),
        _kv_table(
            [
                ("Envelope sender", _para(s.get("envelope_from"))),
                ("From header", _para(s.get("header_from"))),
                (
                    "Authenticated user",
                    _para(s.get("authenticated_user"), empty="— (not authenticated)"),
                ),
                ("Client", _para(client)),
                ("Connection TLS", _para(_tls(s.get("tls")))),
                ("Received via", _para(s.get("method"))),
                *_authentication(s.get("authentication")),
            ]
        ),
    ]


def _authentication(auth: object) -> list[tuple[str, Flowable]]:
    """MX mode: the DKIM, SPF and DMARC results, as an Authentication-Results value."""
    header = _d(auth).get("header")
    return [("Sender authentication", _para(header, cap=_CAP_CELL))] if header else []


def _hash_para(value: object) -> Paragraph:
    return _para(value, "hash", cap=_CAP_SHORT)


def _message(ev: dict[str, Any]) -> list[Flowable]:
    m = _d(ev.get("message"))
    if content_unavailable(ev):  # only what the gateway recorded at reception
        rows = [
            ("Content", _para("not available: the gateway could not read the message")),
            ("Size", _para(_size(m.get("size")))),
            ("SHA-256 of the message as received", _hash_para(m.get("sha256"))),
        ]
        return [*_heading("Message"), _kv_table(rows)]
    rows = [
        ("Subject", _para(m.get("subject"), cap=_CAP_LINE, empty="— (no subject)")),
        ("Date", _para(m.get("date"))),
        ("Message-ID", _para(m.get("message_id"))),
        ("From", _para(m.get("from"))),
        ("To", _para(_addresses(m.get("to")), cap=_CAP_CELL)),
        ("Cc", _para(_addresses(m.get("cc")), cap=_CAP_CELL)),
        ("Size", _para(_size(m.get("size")))),
        ("SHA-256 of the message as received", _hash_para(m.get("sha256"))),
    ]
    added = [str(name) for name in _l(m.get("added_fields"))]
    if added:
        rows.append(
            (
                "Header fields added by the gateway",
                _para(
                    f"{', '.join(added)}: the message as submitted had none (RFC 6409 §8). "
                    "The hash above is of the message as received, without them; each "
                    "recipient's delivered hash is of the message as sent, with them.",
                    cap=_CAP_LINE,
                ),
            )
        )
    defects = _l(m.get("defects"))
    if defects:
        shown = "; ".join(_clean(d, 200) for d in defects[:20])
        rows.append(("MIME defects found", _para(shown, cap=_CAP_LINE)))
    return [*_heading("Message"), _kv_table(rows)]


def _attachments(ev: dict[str, Any]) -> list[Flowable]:
    items = _l(_d(ev.get("message")).get("attachments"))
    out = _heading("Attachments")
    if not items:
        return [*out, _trusted("The message has no attachments.", "note")]
    width = _PAGE_W - 2 * _MARGIN
    rows: list[list[Flowable]] = []
    spans: list[tuple[Any, ...]] = []
    for index, raw in enumerate(items[:_CAP_ROWS]):
        a = _d(raw)
        top = 1 + 2 * index
        rows.append(
            [
                _para(a.get("filename"), "cell", empty="— (no name)"),
                _para(a.get("content_type"), "cell"),
                _para(_size(a.get("size")), "cell"),
            ]
        )
        # The hash gets a row of its own, the full table width, so it stays whole.
        rows.append(
            [
                Table(
                    [[_trusted("SHA-256", "cell"), _hash_para(a.get("sha256"))]],
                    colWidths=[16 * mm, width - 20 * mm],
                    hAlign="LEFT",
                    style=[
                        ("LEFTPADDING", (0, 0), (-1, -1), 0),
                        ("TOPPADDING", (0, 0), (-1, -1), 0),
                    ],
                ),
                "",
                "",
            ]
        )
        spans.append(("SPAN", (0, top + 1), (-1, top + 1)))
        spans.append(("LINEBELOW", (0, top), (-1, top), 0, colors.white))
    table = _grid_table(
        ["File name", "Type", "Size"], rows, [width * 0.5, width * 0.28, width * 0.22], spans
    )
    return [*out, table, *_more_note(len(items), "attachments")]


def _reply(value: object) -> str:
    r = _d(value)
    if not r:
        return _clean(value, _CAP_LINE)
    parts = [
        _clean(r.get("code"), 10),
        _clean(r.get("enhanced"), 20),
        _clean(r.get("text"), _CAP_LINE),
    ]
    return " ".join(p for p in parts if p)


def _recipients(ev: dict[str, Any]) -> list[Flowable]:
    items = _l(ev.get("recipients"))
    out = _heading("Recipients")
    if not items:
        return [*out, _trusted("The evidence lists no recipients.", "note")]
    for raw in items[:_CAP_RECIPIENTS]:
        r = _d(raw)
        status = r.get("status")
        status_text = (
            _STATUS.get(status, _clean(status, 100))
            if isinstance(status, str)
            else (_clean(status, 100))
        )
        host = _clean(r.get("mx_host"), _CAP_SHORT)
        ip = _clean(r.get("ip"), 100)
        port = _clean(r.get("port"), 10)
        where = host
        if ip:
            where += f" [{ip}]"
        if port:
            where += f":{port}"
        rows = [
            ("Status", _para(status_text)),
            ("Time (UTC)", _para(_time(r.get("time")))),
            ("Mail server", _para(where)),
            ("Final reply", _para(_reply(r.get("reply")), cap=_CAP_LINE + 40)),
            ("Remote queue id", _para(r.get("remote_qid"))),
            ("TLS", _para(_tls(r.get("tls")))),
            ("Attempts", _para(r.get("attempts"))),
            ("SHA-256 delivered", _hash_para(r.get("delivered_sha256"))),
        ]
        if r.get("note"):
            rows.append(("Note", _para(r.get("note"), cap=_CAP_LINE)))
        block = [_para(r.get("address"), "h3", empty="— (no address)"), _kv_table(rows)]
        out.append(KeepTogether(block))
    return [*out, *_more_note(len(items), "recipients", _CAP_RECIPIENTS)]


def _timeline(ev: dict[str, Any]) -> list[Flowable]:
    items = _l(ev.get("timeline"))
    if not items:
        return []
    width = _PAGE_W - 2 * _MARGIN
    rows = []
    for raw in items[:_CAP_ROWS]:
        e = _d(raw)
        rows.append(
            [
                _para(_time(e.get("time"), suffix=""), "cell"),
                _para(e.get("event"), "cell", cap=100),
                _para(e.get("recipient"), "cell", empty=""),
                _para(e.get("detail"), "cell", cap=_CAP_LINE, empty=""),
            ]
        )
    table = _grid_table(
        ["Time (UTC)", "Event", "Recipient", "Detail"],
        rows,
        [width * 0.2, width * 0.2, width * 0.22, width * 0.38],
    )
    return [*_heading("Timeline"), table, *_more_note(len(items), "events")]


def _tracking(ev: dict[str, Any]) -> list[Flowable]:
    """Opens and clicks (the addendum), each with its classification and why."""
    tracking = _d(ev.get("tracking"))
    if not tracking:
        return []
    out: list[Flowable] = [*_heading("Opens and clicks")]
    rows: list[tuple[str, Flowable]] = [
        ("Tracking", _para("on" if tracking.get("enabled") else "off")),
    ]
    for r in _l(ev.get("recipients"))[:_CAP_ROWS]:
        per = _d(_d(r).get("tracking"))
        if not per:
            continue
        if per.get("tracked"):
            said = (
                "tracked: its copy carried its own links and a 1x1 image, so its delivered "
                "SHA-256 differs from the received one"
            )
        else:
            said = "not tracked: delivered as received"
        notes = "; ".join(_clean(n, 300) for n in _l(per.get("notes"))[:10])
        rows.append((_clean(_d(r).get("address"), _CAP_SHORT), _para(
            f"{said}{' (' + notes + ')' if notes else ''}", cap=_CAP_CELL
        )))  # fmt: skip
    before = _d(tracking.get("reported_before"))
    if before:
        rows.append((
            "Reported before",
            _para(f"earlier opens and clicks are in certificate {before.get('certificate_id')} "
                  "and its earlier addenda; this document lists those recorded since"),
        ))  # fmt: skip
    out.append(_kv_table(rows))
    items = _l(tracking.get("events"))
    if items:
        width = _PAGE_W - 2 * _MARGIN
        grid: list[list[Flowable]] = []
        for raw in items[:_CAP_ROWS]:
            e = _d(raw)
            what = "open" if e.get("kind") == "open" else f"click on {e.get('url') or ''}"
            verdict = "automatic" if e.get("automatic") else "likely a person"
            grid.append(
                [
                    _para(_time(e.get("time"), suffix=""), "cell"),
                    _para(e.get("recipient"), "cell", empty=""),
                    _para(what, "cell", cap=_CAP_LINE),
                    _para(
                        f"{e.get('ip') or ''} {e.get('user_agent') or ''}", "cell", cap=_CAP_LINE
                    ),
                    _para(f"{verdict}: {e.get('reason') or ''}", "cell", cap=_CAP_LINE),
                ]
            )
        out.append(
            _grid_table(
                ["Time (UTC)", "Recipient", "What", "From (IP, user agent)", "Classification"],
                grid,
                [width * 0.16, width * 0.2, width * 0.22, width * 0.22, width * 0.2],
            )
        )
        out.extend(_more_note(len(items), "events"))
    return out


def _evidence_log(ev: dict[str, Any]) -> list[Flowable]:
    log = _d(ev.get("evidence_log"))
    if not log:
        return []
    items = _l(log.get("entries"))
    out = [
        *_heading("Evidence log"),
        _kv_table([("Log head (SHA-256)", _hash_para(log.get("head")))]),
    ]
    if items:
        width = _PAGE_W - 2 * _MARGIN
        rows = [
            [
                _para(_d(e).get("seq"), "cell"),
                _para(_d(e).get("event"), "cell", cap=100),
                _hash_para(_d(e).get("hash")),
            ]
            for e in items[:_CAP_ROWS]
        ]
        out += [
            Spacer(1, 2 * mm),
            _grid_table(
                ["#", "Event", "Entry hash (SHA-256)"],
                rows,
                [width * 0.08, width * 0.3, width * 0.62],
            ),
            *_more_note(len(items), "log entries"),
        ]
    return out


def _message_text(ev: dict[str, Any]) -> list[Flowable]:
    m = _d(ev.get("message"))
    text = m.get("text")
    out = _heading("Message text")
    if not isinstance(text, str) or not text.strip():
        return [*out, _trusted("The message has no text part.", "note")]
    notes = []
    if len(text) > _CAP_BODY:
        notes.append(f"Only the first {_CAP_BODY:,} of {len(text):,} characters are shown.")
    if m.get("text_truncated") is True:
        notes.append("The gateway recorded a shortened text.")
    if notes:
        out.append(
            _trusted(
                escape(" ".join(notes) + " The complete message is the attached message.eml."),
                "note",
            )
        )
    # One flowable per block between blank lines: a _TextBlock wraps its lines once and
    # splits at a page end by slicing them, whatever its length.
    body = _clean(text, _CAP_BODY, multiline=True)
    style = _styles()["body"]
    for block in body.split("\n\n"):
        if block.strip():
            out.append(_TextBlock(block, style))
        out.append(Spacer(1, 4))
    return out


def _how_to_verify(ev: dict[str, Any]) -> list[Flowable]:
    mono = _fonts()[2]
    style = _styles()["body"]
    if content_unavailable(ev):
        runs: tuple[tuple[str | None, str], ...] = (
            (
                None,
                "This PDF is signed (PAdES, ETSI EN 319 142) with the gateway's document "
                "signing certificate and carries an RFC 3161 timestamp of the signature. Run ",
            ),
            (mono, "certifica verify certificate.pdf"),
            (
                None,
                ": it checks the signature, the signing certificate and the timestamp. No "
                "message.eml is attached (see above); the attached ",
            ),
            (mono, "evidence.json"),
            (None, " holds the evidence in machine-readable form."),
        )
    else:
        runs = (
            (
                None,
                "This PDF is signed (PAdES, ETSI EN 319 142) with the gateway's document "
                "signing certificate and carries an RFC 3161 timestamp of the signature. Run ",
            ),
            (mono, "certifica verify certificate.pdf"),
            (
                None,
                ": it checks that the signature covers the whole file and is intact, that "
                "the signing certificate leads to a trusted authority, and that the "
                "timestamp is valid. The original message is attached to this PDF as ",
            ),
            (mono, "message.eml"),
            (None, ": its SHA-256 ("),
            (mono, "sha256sum message.eml"),
            (
                None,
                ') must equal the "SHA-256 of the message as received" printed above. The '
                "attached ",
            ),
            (mono, "evidence.json"),
            (None, " holds the same evidence in machine-readable form."),
        )
    return [*_heading("How to verify"), _RunsBlock(runs, style)]


# --- page furniture -------------------------------------------------------------------


class _NumberedCanvas(rl_canvas.Canvas):
    """Defers page output so the footer can say "page x of y"; attaches the files."""

    footer_text = ""
    attachments: tuple[_Attachment, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []
        _seed_fonts(self._doc)

    def showPage(self) -> None:  # noqa: N802 - reportlab's name
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self._footer(total)
            super().showPage()
        _attach(self._doc, self.attachments)
        super().save()

    def transform(self, a: float, b: float, c: float, d: float, e: float, f: float) -> None:
        """reportlab's ``Canvas.transform`` with the numbers written by :func:`_fp`.

        Every table cell is drawn after a ``translate`` (a transform), whose six
        numbers went through reportlab's pure-Python ``fp_str``: ~2% of the rendering
        time. The rare case that merges two consecutive ``cm`` operators is left to
        reportlab. ``test_canvas_transform_is_reportlabs`` holds the page operators
        equal.
        """
        code = self._code
        if code and code[-1][-3:] == " cm":
            super().transform(a, b, c, d, e, f)
            return
        if rl_canvas.ENABLE_TRACKING:
            matrix: tuple[float, ...] = self._currentMatrix  # type: ignore[has-type]
            a0, b0, c0, d0, e0, f0 = matrix
            self._currentMatrix = (
                a0 * a + c0 * b,
                b0 * a + d0 * b,
                a0 * c + c0 * d,
                b0 * c + d0 * d,
                a0 * e + c0 * f + e0,
                b0 * e + d0 * f + f0,
            )
        code.append(f"{_fp(a)} {_fp(b)} {_fp(c)} {_fp(d)} {_fp(e)} {_fp(f)} cm")

    def _footer(self, total: int) -> None:
        self.saveState()
        self.setFont(_fonts()[0], 7)
        self.setFillColor(colors.HexColor("#666666"))
        self.drawString(_MARGIN, 10 * mm, self.footer_text)
        self.drawRightString(_PAGE_W - _MARGIN, 10 * mm, f"Page {self._pageNumber} of {total}")
        self.restoreState()


def _canvas_class(footer: str, attachments: tuple[_Attachment, ...]) -> type[_NumberedCanvas]:
    return type(
        "_FooterCanvas", (_NumberedCanvas,), {"footer_text": footer, "attachments": attachments}
    )


# --- attached files -------------------------------------------------------------------


@dataclass(frozen=True)
class _Attachment:
    name: str
    data: bytes
    mime_type: str
    relationship: str  # ISO 32000-2 table 43, /AFRelationship
    description: str


def _attach(doc: pdfdoc.PDFDocument, files: Iterable[_Attachment]) -> None:
    """Embed *files* in the document reportlab is about to write.

    Each file is an embedded file stream (ISO 32000-2 section 7.11.4, with its size and
    MD5 checksum, table 45), a file specification listed in the catalog's
    EmbeddedFiles name tree and, as an associated file, in its /AF array (section
    14.13). Written in the same pass as the pages, where a second PDF writer would
    read and rewrite the whole file.
    """
    names: list[Any] = []
    specs = []
    # A name tree's keys must be sorted (section 7.9.6).
    for f in sorted(files, key=lambda f: f.name):
        stream = pdfdoc.PDFStream(
            pdfdoc.PDFDictionary(
                {
                    "Type": pdfdoc.PDFName("EmbeddedFile"),
                    "Subtype": _pdf_name(f.mime_type),
                    "Params": pdfdoc.PDFDictionary(
                        {
                            "Size": len(f.data),
                            "CheckSum": f"<{hashlib.md5(f.data, usedforsecurity=False).hexdigest()}>",
                        }
                    ),
                }
            ),
            content=f.data,
            filters=[pdfdoc.PDFZCompress],
        )
        stream_ref = doc.Reference(stream)
        spec = doc.Reference(
            pdfdoc.PDFDictionary(
                {
                    "Type": pdfdoc.PDFName("Filespec"),
                    "F": pdfdoc.PDFString(f.name),
                    "UF": pdfdoc.PDFString(f.name),
                    "EF": pdfdoc.PDFDictionary({"F": stream_ref, "UF": stream_ref}),
                    "Desc": pdfdoc.PDFString(f.description),
                    "AFRelationship": pdfdoc.PDFName(f.relationship),
                }
            )
        )
        names += [pdfdoc.PDFString(f.name), spec]
        specs.append(spec)
    catalog = doc.Catalog
    catalog.Names = pdfdoc.PDFDictionary(
        {"EmbeddedFiles": pdfdoc.PDFDictionary({"Names": pdfdoc.PDFArray(names)})}
    )
    catalog.AF = pdfdoc.PDFArray(specs)
    # reportlab's catalog writes the keys listed in these attributes ("to override, set
    # as attributes"); /AF, an associated-files array, and /Version are not among them.
    # Associated files are PDF 2.0 (section 14.13).
    catalog.__NoDefault__ = [*pdfdoc.PDFCatalog.__NoDefault__, "AF"]
    catalog.__Refs__ = [*pdfdoc.PDFCatalog.__Refs__, "AF"]
    catalog.__Defaults__ = {**pdfdoc.PDFCatalog.__Defaults__, "Version": pdfdoc.PDFName("2.0")}


def _pdf_name(text: str) -> str:
    """A PDF name object for *text*, "/" and the other delimiters as #xx (7.3.5)."""
    return "/" + "".join(
        ch if "!" <= ch <= "~" and ch not in "%()<>[]{}/#" else f"#{ord(ch):02X}" for ch in text
    )


# --- the document ---------------------------------------------------------------------


def evidence_json(evidence: dict[str, Any]) -> bytes:
    """The bytes of the embedded evidence.json."""
    try:
        return json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (a header decoded with surrogateescape) has no UTF-8 form;
        # \\u escapes keep the file valid JSON that loads back to the same dict.
        return json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=True).encode()


def _reception(ev: dict[str, Any]) -> list[Flowable]:
    """Certified reception: whose mailbox, when, and the way the message came."""
    r = _d(ev.get("reception"))
    if not r:
        return []
    env = _d(r.get("envelope"))
    arc = _d(r.get("arc"))
    receipt = _d(r.get("receipt"))
    hop = _clean(env.get("client_ip"), 100)
    if env.get("client_helo"):
        hop = f"{hop} (HELO {_clean(env.get('client_helo'), _CAP_SHORT)})"
    arc_text = _clean(arc.get("result"), 20) or "none"
    if arc.get("instances"):
        arc_text += f", {arc.get('instances')} hop(s)"
    if arc.get("result") not in (None, "none", "pass") and arc.get("reason"):
        arc_text += f": {_clean(arc.get('reason'), 200)}"
    rcpts = ", ".join(_clean(a, _CAP_SHORT) for a in _l(env.get("rcpt_to"))[:_CAP_LIST])
    rows = [
        ("Mailbox owner", _para(r.get("owner"))),
        ("Arrived at (UTC)", _para(_time(r.get("arrived_at")))),
        ("Forwarded by", _para(hop)),
        ("Last hop's TLS", _para(_clean(env.get("tls"), 100) or "— (none)")),
        ("Envelope", _para(f"MAIL FROM <{_clean(env.get('mail_from'), _CAP_SHORT)}> "
                           f"RCPT TO {rcpts}", cap=_CAP_CELL)),  # fmt: skip
        ("Original sender (From)", _para(r.get("original_from"),
                                         empty="— (the From header names no single sender)")),
        ("ARC chain (RFC 8617)", _para(arc_text)),
        ("Proof of receipt to the sender", _para(
            f"sent to {_clean(receipt.get('to'), _CAP_SHORT)}" if receipt.get("to")
            else f"not sent: {_clean(receipt.get('why'), 300)}")),
    ]  # fmt: skip
    trace = _d(r.get("trace"))
    received = _l(trace.get("received"))
    out = [*_heading("Reception"), _kv_table(rows)]
    if received:
        out += _heading("Forwarding chain (Received fields, newest first)")
        for line in received[:_CAP_LIST]:
            out.append(_para(line, cap=_CAP_LINE))
    return out


def _story(ev: dict[str, Any], kind: str) -> list[Flowable]:
    lost = content_unavailable(ev)
    return [
        *_header(ev, kind),
        *(_content_lost(lost) if lost else []),
        *(_reception(ev) if kind == "reception" else []),
        *_sender(ev),
        *_message(ev),
        *([] if lost else _attachments(ev)),
        *([] if kind == "reception" else _recipients(ev)),
        *_tracking(ev),
        *_timeline(ev),
        *_evidence_log(ev),
        *([] if lost else _message_text(ev)),
        *_how_to_verify(ev),
    ]


def _content_lost(reason: str) -> list[Flowable]:
    """What a certificate made without the message states, on page 1, in full sentences."""
    return [
        *_heading("The message could not be read"),
        _trusted(
            "The gateway could no longer read the message when it made this certificate ("
            + escape(_clean(reason, 300))
            + "). It is not attached, and its subject, headers, attachments and text are "
            "not stated. This certificate proves when the gateway received a message, from "
            "whom, with the SHA-256 below (recorded at reception, in the evidence log), and "
            "what happened to each recipient; it does not prove the message's content.",
            "body",
        ),
    ]


def _render_pages(
    ev: dict[str, Any], kind: str, story: list[Flowable], attachments: tuple[_Attachment, ...]
) -> bytes:
    cert_id = _clean(ev.get("certificate_id"), 64)
    title = TITLES.get(kind, TITLES["sending"])
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=_MARGIN,
        rightMargin=_MARGIN,
        topMargin=_MARGIN,
        bottomMargin=_MARGIN + 4 * mm,
        title=f"{title} {cert_id}".strip(),
        author="Certifica",
        subject=cert_id,
        creator="Certifica",
    )
    footer = f"{title} · {cert_id}" if cert_id else title
    # drawString cannot switch fonts: what the footer font lacks becomes "?".
    footer = "".join(
        run if font is None else "?" * len(run) for font, run in _font_runs(footer, _fonts()[0])
    )
    with _binary_streams():
        doc.build(story, canvasmaker=_canvas_class(footer, attachments))
    return buf.getvalue()


@contextmanager
def _binary_streams() -> Iterator[None]:
    """Page contents compressed only, not also ASCII85-encoded (reportlab's default).

    ASCII85 keeps a PDF 7-bit clean at a quarter more bytes and a pure-Python pass
    over every page; a certificate travels base64-encoded by mail and in binary
    everywhere else. A process-wide reportlab setting, so set only while rendering.
    """
    saved = rl_config.useA85
    rl_config.useA85 = 0
    try:
        yield
    finally:
        rl_config.useA85 = saved


def _embedded_files(eml: bytes | None, evidence_bytes: bytes) -> tuple[_Attachment, ...]:
    evidence = _Attachment(
        EMBEDDED_EVIDENCE,
        evidence_bytes,
        "application/json",
        "Data",
        "Evidence record (certifica-evidence/1), machine-readable",
    )
    if eml is None:
        return (evidence,)
    message = _Attachment(
        EMBEDDED_MESSAGE,
        eml,
        "message/rfc822",
        "Source",
        "The certified message exactly as received (RFC 5322)",
    )
    return (evidence, message)


def content_unavailable(evidence: dict[str, Any]) -> str | None:
    """Why the message is not in this certificate, when the gateway could not read it
    any more (``message.content_unavailable``); None for every normal certificate."""
    reason = _d(evidence.get("message")).get("content_unavailable")
    return reason if isinstance(reason, str) and reason else None


def render_certificate(evidence: dict, eml: bytes | None, reader: Reader | None = None) -> bytes:
    """Render the unsigned certificate PDF, with message.eml and evidence.json attached;
    ``eml`` None: the gateway lost the message, which the evidence states
    (:func:`content_unavailable`), and only evidence.json is attached."""
    ev = _d(evidence)
    raw_kind = ev.get("kind")
    kind = raw_kind if isinstance(raw_kind, str) and raw_kind in TITLES else "sending"
    attachments = _embedded_files(None if eml is None else bytes(eml), evidence_json(evidence))
    try:
        return _render_pages(ev, kind, _story(ev, kind), attachments)
    except LayoutError:
        # Unreachable with the caps above; if a reportlab change makes some value
        # too tall anyway, a plainer certificate is better than none.
        return _render_pages(ev, kind, _fallback_story(ev, kind), attachments)


def _fallback_story(ev: dict[str, Any], kind: str) -> list[Flowable]:
    m = _d(ev.get("message"))
    return [
        _trusted(escape(TITLES[kind]), "title"),
        _kv_table(
            [
                ("Certificate id", _para(ev.get("certificate_id"), cap=100)),
                ("Issued at (UTC)", _para(_time(ev.get("issued_at")))),
                ("Subject", _para(m.get("subject"), cap=200)),
                ("SHA-256 of the message as received", _hash_para(m.get("sha256"))),
            ]
        ),
        _trusted(
            "The full evidence could not be laid out on the page; it is in the "
            "attached evidence.json, and the message in message.eml.",
            "note",
        ),
        *_how_to_verify(ev),
    ]
