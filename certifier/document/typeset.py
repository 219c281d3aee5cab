"""Setting a certificate's text on A4 pages, fast and safely: fonts, plain text, tables,
the page header and footer, and the files embedded in the PDF.

Fonts: only the DejaVu fonts shipped in ``certifier/fonts`` (:data:`FONT_DIR`), embedded
as subsets, for every word including the header, the footer and the seal; there is no
fallback to system fonts or to a standard-14 font (a missing font file is an error).
DejaVu has no Chinese, Japanese or Korean glyphs: those characters show as U+FFFD (see
:func:`font_runs`), the exact text being in the embedded evidence.json.

Everything in the evidence is untrusted. Untrusted text never reaches reportlab's
paragraph markup parser: it is set as plain text by :class:`Line` and
:class:`TextBlock` (a subject ``<img src=...>`` prints as those characters, it does not
fetch a file), control and format characters are dropped for display (:func:`clean`),
and every value is capped in length (``CAP_*``) so that no table cell can outgrow a page
(reportlab's ``LayoutError``). :func:`trusted` is for the gateway's own words only.

Rendering is most of a certificate's CPU time, so the hot paths avoid what platypus
does generically: plain text is measured once and its text operators written directly
(ISO 32000-2 section 9.4), the attachments are written in reportlab's own pass, and
the embedded font subsets are made once per process (:class:`_CachedSubsetsFont`).
``bench/certs.py`` measures it.

Embedded files (ISO 32000-2 section 7.11.4 and 14.13): ``message.eml`` and
``evidence.json`` (:func:`embedded_files`, :func:`_attach`).
"""

from __future__ import annotations

import hashlib
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
from reportlab.pdfbase.ttfonts import SUBSETN, TTFont, makeToUnicodeCMap
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    Flowable,
    Paragraph,
    Table,
    TableStyle,
)

EMBEDDED_MESSAGE = "message.eml"
EMBEDDED_EVIDENCE = "evidence.json"

# Display caps, in characters. A capped value ends with "[…]" and the full value stays
# in the embedded evidence.json; the caps keep any single table row shorter than a
# page, which reportlab cannot split.
CAP_SHORT = 300  # addresses, hosts, ids
CAP_LINE = 1000  # subject, reply texts, timeline details
CAP_LIST = 60  # entries of To/Cc shown before "and N more"
CAP_CELL = 2000  # any one table cell: 45 lines at worst, well under a page
CAP_BODY = 20_000  # message text
CAP_ROWS = 400  # attachments, timeline and log entries shown
# Recipients are the heart of the evidence: all of them are listed, up to a bound that
# only keeps a hostile evidence record from rendering for minutes.
CAP_RECIPIENTS = 1000

PAGE_W, PAGE_H = A4
MARGIN = 18 * mm
LABEL_W = 48 * mm
VALUE_W = PAGE_W - 2 * MARGIN - LABEL_W

FONT_DIR = Path(__file__).resolve().parent.parent / "fonts"
"""The fonts a certificate is set in ship inside the package (DejaVu, free licence, see
``certifier/fonts/LICENSE``): every page, header and seal is drawn with them, embedded,
so a machine without them never substitutes a standard-14 font."""


# --- fonts and styles -----------------------------------------------------------------


@lru_cache(maxsize=1)
def fonts() -> tuple[str, str, str]:
    """Register the shipped fonts once per process: (regular, bold, mono)."""
    files = {
        "CertificaSans": "DejaVuSans.ttf",
        "CertificaSans-Bold": "DejaVuSans-Bold.ttf",
        "CertificaMono": "DejaVuSansMono.ttf",
    }
    for name, file in files.items():
        # A missing font is a broken installation: fail loudly, never fall back.
        pdfmetrics.registerFont(_CachedSubsetsFont(name, str(FONT_DIR / file)))
    pdfmetrics.registerFontFamily(
        "CertificaSans", normal="CertificaSans", bold="CertificaSans-Bold"
    )
    return "CertificaSans", "CertificaSans-Bold", "CertificaMono"


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
# the dash of an empty value, the footer's separator, the mark of a shortened value,
# quotation marks, and the accented letters of Spanish, Catalan and Italian.
_SEEDED = "—·…–“”‘’«»°§áéíóúüñÁÉÍÓÚÑàèìòùçÀÈÌÒÙÇïÏ"


def _seed_fonts(doc: pdfdoc.PDFDocument) -> None:
    for name in fonts():
        font = pdfmetrics.getFont(name)
        if isinstance(font, _CachedSubsetsFont):
            font.seed(doc)


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


MISSING = "\ufffd"
"""The "font" of a run of characters the shipped fonts cannot draw (see :func:`font_runs`)."""


def font_runs(text: str, font_name: str) -> list[tuple[str | None, str]]:
    """Split display text into (font or None for the style's font, text) runs.

    Characters the font cannot draw are a run of font :data:`MISSING`: each is drawn
    as U+FFFD, a visible mark that something is there where the font would draw
    nothing (the .notdef glyph, which PDF/A forbids using, ISO 19005-3 section
    6.2.11.8), with the exact characters as its replacement text (/ActualText, ISO
    32000-1 section 14.9.4): copied or extracted, the text is what was sent, and
    evidence.json holds it too. That includes Chinese, Japanese and Korean, which
    DejaVu lacks: PDF/A wants every font embedded (section 6.2.11.4), so the
    predefined Adobe CJK fonts, which are never embedded, are not an option, and no
    CJK font ships.
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
    if covered is None:
        return [(None, "".join(ch if _winansi(ch) else "?" for ch in text))]
    runs: list[tuple[str | None, str]] = []
    for ch in text:
        font = None if ch == "\n" or ord(ch) in covered else MISSING
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
def styles() -> dict[str, ParagraphStyle]:
    regular, bold, mono = fonts()
    base = ParagraphStyle("base", fontName=regular, fontSize=8.5, leading=11, alignment=TA_LEFT)
    ink = colors.HexColor("#1f2a44")
    grey = colors.HexColor("#555555")
    return {
        "title": ParagraphStyle(
            "title", base, fontName=bold, fontSize=15, leading=19, textColor=ink
        ),
        "subtitle": ParagraphStyle(
            "subtitle", base, fontSize=8.5, leading=11, textColor=colors.HexColor("#444444")
        ),
        "intro": ParagraphStyle("intro", base, fontSize=9, leading=12.5),
        "h2": ParagraphStyle(
            "h2",
            base,
            fontName=bold,
            fontSize=11,
            leading=14,
            spaceBefore=8,
            spaceAfter=3,
            textColor=ink,
        ),
        "h3": ParagraphStyle("h3", base, fontName=bold, fontSize=9, leading=12, spaceBefore=5),
        "label": ParagraphStyle("label", base, fontName=bold, textColor=colors.HexColor("#444444")),
        "value": ParagraphStyle("value", base),
        "sentence": ParagraphStyle("sentence", base, fontSize=9, leading=12.5),
        "seal": ParagraphStyle("seal", base, fontName=bold, fontSize=10, leading=13, textColor=ink),
        "cell": ParagraphStyle("cell", base, fontSize=7.5, leading=9.5),
        "cellbold": ParagraphStyle("cellbold", base, fontName=bold, fontSize=7.5, leading=9.5),
        # Hashes in 8 groups of 8 hex digits (see hash_groups): 8 pt DejaVu Sans Mono is
        # 4.8 pt a character, one hash 341 pt on a line, or two lines of four groups.
        "hash": ParagraphStyle("hash", base, fontName=mono, fontSize=8, leading=10.5),
        "body": ParagraphStyle("body", base, fontSize=8.5, leading=11, splitLongWords=1),
        "note": ParagraphStyle(
            "note", base, fontSize=8, leading=10.5, textColor=colors.HexColor("#444444")
        ),
        "url": ParagraphStyle("url", base, fontName=mono, fontSize=7.5, leading=9.5),
        # The header and footer of every page.
        "furniture": ParagraphStyle("furniture", base, fontSize=7, leading=9, textColor=grey),
        "furniture-bold": ParagraphStyle(
            "furniture-bold", base, fontName=bold, fontSize=7.5, leading=9, textColor=grey
        ),
    }


# --- untrusted values -----------------------------------------------------------------


def clean(value: object, cap: int, *, multiline: bool = False) -> str:
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


def para(
    value: object,
    style: str = "value",
    cap: int = CAP_SHORT,
    empty: str = "—",
    *,
    multiline: bool = False,
) -> Flowable:
    """An untrusted value as plain text in *style*: never markup, wrapped to its cell."""
    st = styles()[style]
    text = clean(value, cap, multiline=multiline)
    if not multiline:
        # As a Paragraph would show it: single spaces between words.
        text = _SPACES.sub(" ", text).strip(" ")
    if not text.strip():
        text = empty
    if not multiline and _SIMPLE_LINE.fullmatch(text):
        runs = font_runs(text, st.fontName)
        if len(runs) == 1 and runs[0][0] is None:
            return Line(text, st)  # (characters the font lacks: a TextBlock, MISSING runs)
    return TextBlock(text, st) if text else Line(text, st)


_SPACES = re.compile(" {2,}")


def trusted(markup: str, style: str) -> Flowable:
    """A paragraph of the gateway's own wording (never evidence values)."""
    st = styles()[style]
    if "<" not in markup and "&" not in markup and _SIMPLE_LINE.fullmatch(markup):
        return Line(markup, st)
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
        # Styles are made once per process (styles()); a ParagraphStyle hashes by
        # identity, which its id() stands for while styles() keeps it alive.
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
# Paragraph collapses other whitespace, and Line must print what a Paragraph would.
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
    reportlab would write. Other fonts (the standard 14, which certificates do not use)
    use reportlab's text object.
    """
    size, leading = style.fontSize, style.leading
    x += style.leftIndent
    y = top - _first_baseline(style.fontName, size)
    fonts = {font or style.fontName for line in lines for font, _ in line} - {MISSING}
    if not all(isinstance(pdfmetrics.getFont(f), TTFont) for f in fonts):
        canvas.saveState()
        canvas.setFillColor(style.textColor)
        text = canvas.beginText(x, y)
        text.setFont(style.fontName, size, leading)
        for line in lines:
            for font, segment in line:
                if font == MISSING:
                    font, segment = None, MISSING * len(segment)
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
    ops = [_text_state(style), "BT", fp(x), fp(y), "Td"]
    size_text = fp(size)
    current = None
    for i, line in enumerate(lines):
        if i:
            ops.append("T*")
        for font_name, segment in line:
            actual = None
            if font_name == MISSING:
                actual, segment, font_name = segment, MISSING * len(segment), None
                ops.append(f"/Span <</ActualText {_pdf_text_string(actual)}>> BDC")
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
            if actual is not None:
                ops.append("EMC")
    ops.append("ET Q")
    canvas.addLiteral(" ".join(ops))


def _pdf_text_string(text: str) -> str:
    """*text* as a PDF text string in UTF-16BE with its byte order mark (ISO 32000-1
    section 7.9.2.2), hexadecimal."""
    return "<FEFF" + text.encode("utf-16-be", "surrogatepass").hex().upper() + ">"


@lru_cache(maxsize=64)
def _text_state(style: ParagraphStyle) -> str:
    # ParagraphStyle hashes by identity; the styles are made once (styles()).
    return f"q {fp_str(style.textColor.rgb())} rg {fp(style.leading)} TL"


@lru_cache(maxsize=4096)
def fp(value: float) -> str:
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


class Line(Flowable):
    """One line of plain text in its style's font: most values of a certificate.

    A Paragraph parses its markup, breaks lines and sets up a text object for every
    value, which was most of the time a certificate took to render. A Line measures
    its text once and, when it fits the width it is given, draws it directly, exactly
    where a one-line Paragraph of the same style would. When it does not fit it hands
    over to a TextBlock of the same text, which wraps it.
    """

    def __init__(self, text: str, style: ParagraphStyle) -> None:
        super().__init__()
        self.text = text
        self.style = style
        self._text_width = pdfmetrics.stringWidth(text, style.fontName, style.fontSize)
        self._block: TextBlock | None = None
        self._fits = True

    def _fits_in(self, avail_width: float) -> bool:
        st = self.style
        room = avail_width - st.leftIndent - st.firstLineIndent - st.rightIndent
        return avail_width >= 1e-8 and self._text_width <= room

    def _as_block(self) -> TextBlock:
        if self._block is None:
            self._block = TextBlock(self.text, self.style)
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


class TextBlock(Flowable):
    """Lines of plain text (a message body, a long value), wrapped, split between pages.

    A Paragraph of a message body measured every word again at every wrap and at
    every page split, most of the time of a certificate for an ordinary message. Here
    each source line is cut into words and runs of spaces once, measured once per
    distinct word, and wrapped greedily: at a space, or inside a word longer than a
    whole line. Spaces are kept as they are (indentation stays visible), characters
    DejaVu lacks are shown as U+FFFD (see font_runs), and a
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
            TextBlock(_lines_text(head), self.style, head, availWidth),
            TextBlock(_lines_text(tail), self.style, tail, availWidth),
        ]

    def minWidth(self) -> float:  # noqa: N802 - reportlab's name
        st = self.style
        words = self.text.split()
        return max((text_width(w, st.fontName, st.fontSize) for w in words), default=0.0)

    def _wrap(self, width: float) -> list[list[tuple[str | None, str]]]:
        st = self.style
        room = width - st.leftIndent - st.rightIndent
        out: list[list[tuple[str | None, str]]] = []
        for line in self.text.split("\n"):
            out.extend(_wrap_line(line, st.fontName, st.fontSize, room))
        return out

    def drawOn(self, canvas: rl_canvas.Canvas, x: float, y: float, _sW: float = 0) -> None:  # noqa: N802, N803
        _draw_lines(canvas, x, y + self.height, self.style, self._lines)


class RunsBlock(TextBlock):
    """A paragraph of the gateway's own wording given as runs of (font or None for the
    style's, text): the "How to verify" text, whose commands and file names are set in
    the mono font. Wrapped once per process and width, drawn by :func:`_draw_lines`.

    It replaces a Paragraph with ``<font>`` markup, whose markup parsing, line
    breaking and per-fragment drawing were ~9% of every certificate's rendering time.
    The words are the same and break at spaces by the same greedy rule and the same
    widths (``test_how_to_verify_breaks_lines_as_a_paragraph``); unlike a Paragraph,
    and like every other TextBlock, a line does not shrink its spaces (by up to 5%,
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
    runs = font_runs(line, font_name)
    if len(runs) == 1 and runs[0][0] is None and text_width(line, font_name, size) <= room:
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
    adjacent fragments together; without, runs may break where the font changes.
    """
    lines: list[list[tuple[str | None, str]]] = []
    current: list[tuple[str | None, str]] = []
    used = 0.0
    for font, run in runs:
        face = font_name if font is None or font == MISSING else font
        for token in _TOKENS.findall(run):
            width = _run_width(token, font, font_name, size)
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
                used = sum(_run_width(seg, f, font_name, size) for f, seg in carry)
            while width > room and len(token) > 1:
                # A word longer than a whole line: as much of it as fits, then the rest.
                shown = MISSING * len(token) if font == MISSING else token
                cut = _fitting_prefix(shown, face, size, room - used)
                if cut == 0 and current:
                    lines.append(current)
                    current, used = [], 0.0
                    continue
                cut = _sensible_cut(token, max(cut, 1))
                current.append((font, token[:cut]))
                lines.append(current)
                current, used = [], 0.0
                token = token[cut:]
                width = _run_width(token, font, font_name, size)
            current.append((font, token))
            used += width
    lines.append(current)
    return [_merge(segments) for segments in lines]


def _run_width(text: str, font: str | None, font_name: str, size: float) -> float:
    """The width of a run's *text* as drawn (a MISSING run as that many U+FFFD)."""
    if font == MISSING:
        return text_width(MISSING * len(text), font_name, size)
    return text_width(text, font or font_name, size)


def _fitting_prefix(token: str, font: str, size: float, room: float) -> int:
    """How many leading characters of *token* fit in *room* points."""
    used = 0.0
    for i, ch in enumerate(token):
        used += text_width(ch, font, size)
        if used > room:
            return i
    return len(token)


_BREAK_AFTER = "@./-_?&=#"


def _sensible_cut(token: str, cut: int) -> int:
    """Where to break a word longer than a line, *cut* characters fitting: after the
    last "@", dot, slash or hyphen of the second half of what fits (an address reads
    ``someone@`` / ``example.org``, a link ``https://example.org/`` / ``offer``), else
    where the room ends."""
    if cut >= len(token):
        return cut
    for i in range(cut - 1, cut // 2, -1):
        if token[i] in _BREAK_AFTER:
            return i + 1
    return cut


def _merge(segments: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    merged: list[tuple[str | None, str]] = []
    for font, text in segments:
        if merged and merged[-1][0] == font:
            merged[-1] = (font, merged[-1][1] + text)
        else:
            merged.append((font, text))
    return merged


@lru_cache(maxsize=8192)
def text_width(text: str, font: str, size: float) -> float:
    return float(pdfmetrics.stringWidth(text, font, size))


def as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# --- building blocks ------------------------------------------------------------------


GRID = colors.HexColor("#bbbbbb")
SHADE = colors.HexColor("#eeeeee")


class _KeptTable(Table):
    """A table of label and value rows that a page end never splits so that fewer than
    :attr:`KEEP` rows stand alone on either page (widow and orphan rows); a table too
    short for that moves to the next page whole. A table that starts near the top of a
    page and still does not fit (a row of 60 addresses) splits as a Table does."""

    KEEP = 3

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:  # noqa: N803
        parts: list[Flowable] = super().split(availWidth, availHeight)
        if len(parts) != 2 or availHeight > 0.75 * (PAGE_H - 2 * MARGIN):
            # Near the top of a page the table is split where it must be: moving it on
            # would only meet the same split on the next page.
            return parts
        rows = len(self._cellvalues)
        head = len(parts[0]._cellvalues)  # type: ignore[attr-defined]
        if rows < 2 * self.KEEP or head < self.KEEP:
            return []
        if rows - head < self.KEEP:
            # Fewer rows on this page, so that KEEP go to the next one.
            height = sum(self._rowHeights[: rows - self.KEEP])
            parts = super().split(availWidth, height + 0.01)
        return parts


def base_font() -> tuple[str, tuple[int, int], tuple[int, int], str]:
    """The table style rule that sets a table's own text (empty cells included: a
    Table sets its font for them too, Helvetica unless told) in the shipped font."""
    return ("FONTNAME", (0, 0), (-1, -1), fonts()[0])


def kv_table(
    rows: Iterable[tuple[str, Flowable]], widths: tuple[float, float] = (LABEL_W, VALUE_W)
) -> Table:
    """Two columns: the gateway's label (its own words), the value (plain text)."""
    data = [[trusted(escape(label), "label"), value] for label, value in rows]
    table = _KeptTable(data, colWidths=list(widths), hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                base_font(),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ("TOPPADDING", (0, 0), (-1, -1), 1.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1.5),
            ]
        )
    )
    return table


def grid_table(
    header: list[str],
    rows: list[list[Flowable]],
    widths: list[float],
    extra: list[tuple] | None = None,
) -> Table:
    data: list[list[Flowable | str]] = [[trusted(escape(h), "cellbold") for h in header]]
    data.extend(rows)
    table = Table(data, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                base_font(),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("BACKGROUND", (0, 0), (-1, 0), SHADE),
                ("LINEBELOW", (0, 0), (-1, -1), 0.3, GRID),
                ("LEFTPADDING", (0, 0), (-1, -1), 2),
                ("RIGHTPADDING", (0, 0), (-1, -1), 2),
                *(extra or []),
            ]
        )
    )
    return table


# --- page furniture -------------------------------------------------------------------


class NumberedCanvas(rl_canvas.Canvas):
    """Defers page output so that every page gets its header (the provider's name and
    the certificate's id) and its footer (the title and "page N of M" in the reader's
    words) once the number of pages is known; attaches the files."""

    header_left = ""
    header_right = ""
    footer_text = ""
    page_label = "Page %(page)s of %(pages)s"
    attachments: tuple[Attachment, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # reportlab opens every page with its base font (Helvetica, a standard-14 font
        # that would then be listed among the document's fonts): the shipped one instead.
        # (platypus passes initialFontName=None explicitly.)
        kwargs["initialFontName"] = kwargs.get("initialFontName") or fonts()[0]
        kwargs["initialFontSize"] = kwargs.get("initialFontSize") or 8.5
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
        _pdfa(self._doc)
        super().save()

    def transform(self, a: float, b: float, c: float, d: float, e: float, f: float) -> None:
        """reportlab's ``Canvas.transform`` with the numbers written by :func:`fp`.

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
        code.append(f"{fp(a)} {fp(b)} {fp(c)} {fp(d)} {fp(e)} {fp(f)} cm")

    def _footer(self, total: int) -> None:
        # The texts are drawn by _draw_lines, as the pages' own text: drawString's text
        # object re-encoded them character by character, three times a page.
        st = styles()
        self.saveState()
        self.setStrokeColor(_RULE)
        self.setLineWidth(0.4)
        top = PAGE_H - 11 * mm
        self._put(self.header_left, st["furniture-bold"], MARGIN, top)
        self._put(self.header_right, st["furniture"], PAGE_W - MARGIN, top, right=True)
        self.line(MARGIN, top - 2.5 * mm, PAGE_W - MARGIN, top - 2.5 * mm)
        self.line(MARGIN, 13 * mm, PAGE_W - MARGIN, 13 * mm)
        self._put(self.footer_text, st["furniture"], MARGIN, 9.5 * mm)
        label = drawable(self.page_label % {"page": self._pageNumber, "pages": total})
        self._put(label, st["furniture"], PAGE_W - MARGIN, 9.5 * mm, right=True)
        self.restoreState()

    def _put(
        self, text: str, style: ParagraphStyle, x: float, baseline: float, *, right: bool = False
    ) -> None:
        if not text:
            return
        if right:
            x -= text_width(text, style.fontName, style.fontSize)
        top = baseline + _first_baseline(style.fontName, style.fontSize)
        _draw_lines(self, x, top, style, [[(None, text)]])


_RULE = colors.HexColor("#999999")


def drawable(text: str) -> str:
    """*text* as ``drawString`` can set it in the regular font, which cannot switch
    fonts: a character the font lacks becomes "?"."""
    return "".join(
        run if font is None else "?" * len(run) for font, run in font_runs(text, fonts()[0])
    )


def canvas_class(
    *,
    header: tuple[str, str],
    footer: str,
    page_label: str,
    attachments: tuple[Attachment, ...],
) -> type[NumberedCanvas]:
    """A canvas class for one document (reportlab makes the canvas itself)."""
    return type(
        "_DocumentCanvas",
        (NumberedCanvas,),
        {
            "header_left": drawable(header[0]),
            "header_right": drawable(header[1]),
            "footer_text": drawable(footer),
            "page_label": page_label,
            "attachments": attachments,
        },
    )


# --- attached files -------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    name: str
    data: bytes
    mime_type: str
    relationship: str  # ISO 32000-2 table 43, /AFRelationship
    description: str


def _attach(doc: pdfdoc.PDFDocument, files: Iterable[Attachment]) -> None:
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
                            "ModDate": pdfdoc.PDFDate(ts=doc._timeStamp),
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
    # as attributes"); /AF, an associated-files array (ISO 19005-3 section 6.8), is not
    # among them.
    catalog.__NoDefault__ = [*catalog.__NoDefault__, "AF"]
    catalog.__Refs__ = [*catalog.__Refs__, "AF"]


# --- PDF/A-3b (ISO 19005-3) -------------------------------------------------------------

_PDFA_VERSION = (1, 7)  # PDF/A-3 is based on ISO 32000-1, PDF 1.7 (ISO 19005-3 section 6.1.2)


def _pdfa(doc: pdfdoc.PDFDocument) -> None:
    """Make the document reportlab is about to write PDF/A-3b (ISO 19005-3, level B).

    What reportlab already writes as PDF/A wants it: every font embedded (the shipped
    fonts only, see :func:`font_runs`), a file identifier (/ID) in the trailer, no
    encryption, no JavaScript. Added here: the header version 1.7 (section 6.1.2), an
    XMP metadata stream that identifies the part and level and says what the document
    information dictionary says (section 6.6.2, 6.6.4), an sRGB output intent with its
    ICC profile for the DeviceRGB colours of the pages (section 6.2.3), and the
    embedded files as associated files (:func:`_attach`, section 6.8).
    """
    doc._pdfVersion = _PDFA_VERSION
    catalog = doc.Catalog
    # The metadata stream is not filtered (section 6.6.2.1): readable as it is.
    metadata = _RawStream(b"/Type /Metadata /Subtype /XML", _xmp(doc.info, doc._timeStamp))
    catalog.Metadata = metadata
    catalog.OutputIntents = pdfdoc.PDFArray(
        [
            pdfdoc.PDFDictionary(
                {
                    "Type": pdfdoc.PDFName("OutputIntent"),
                    "S": pdfdoc.PDFName("GTS_PDFA1"),
                    "OutputConditionIdentifier": pdfdoc.PDFString("sRGB IEC61966-2.1"),
                    "Info": pdfdoc.PDFString("sRGB IEC61966-2.1"),
                    "DestOutputProfile": doc.Reference(
                        _RawStream(b"/Filter /FlateDecode /N 3", _srgb_profile())
                    ),
                }
            )
        ]
    )
    catalog.__NoDefault__ = [*catalog.__NoDefault__, "OutputIntents"]


class _RawStream(pdfdoc.PDFObject):
    """A stream object written out once: *entries* of its dictionary and its *data*
    (ISO 32000-1 section 7.3.8), without reportlab's default filters."""

    def __init__(self, entries: bytes, data: bytes) -> None:
        self.data = b"<< %s /Length %d >>\nstream\n%s\nendstream" % (entries, len(data), data)

    def format(self, document: pdfdoc.PDFDocument) -> bytes:
        return self.data


@lru_cache(maxsize=1)
def _srgb_profile() -> bytes:
    """An sRGB ICC profile (ISO 32000-1 section 8.6.5.5), compressed, made once per
    process (littleCMS's, through Pillow)."""
    from PIL import ImageCms  # here only: the workers import it once, when rendering

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return zlib.compress(profile)


def _xmp(info: pdfdoc.PDFInfo, stamp: Any) -> bytes:
    """The XMP packet (ISO 16684-1) of a document: PDF/A identification and, property
    by property, what reportlab writes in the document information dictionary
    (:class:`reportlab.pdfbase.pdfdoc.PDFInfo`), which PDF/A requires to agree
    (ISO 19005-3 section 6.6.2.3.1, ISO 32000-1 table 317 and section 14.3.2)."""
    yyyy, mo, dd, hh, mi, ss = stamp.YMDhms
    sign = "-" if stamp.dhh < 0 else "+"
    # The same instant and offset as reportlab's PDFDate writes for /CreationDate and
    # /ModDate (reportlab's PDFDocument stamps both with one TimeStamp).
    date = (
        f"{yyyy:04d}-{mo:02d}-{dd:02d}T{hh:02d}:{mi:02d}:{ss:02d}"
        f"{sign}{abs(stamp.dhh):02d}:{stamp.dmm:02d}"
    )

    def text(value: object) -> str:
        return escape(str(value))

    packet = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:pdf="http://ns.adobe.com/pdf/1.3/">
   <pdfaid:part>3</pdfaid:part>
   <pdfaid:conformance>B</pdfaid:conformance>
   <dc:format>application/pdf</dc:format>
   <dc:title><rdf:Alt><rdf:li xml:lang="x-default">{text(info.title)}</rdf:li></rdf:Alt></dc:title>
   <dc:creator><rdf:Seq><rdf:li>{text(info.author)}</rdf:li></rdf:Seq></dc:creator>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{text(info.subject)}</rdf:li></rdf:Alt></dc:description>
   <pdf:Keywords>{text(info.keywords)}</pdf:Keywords>
   <pdf:Producer>{text(info.producer)}</pdf:Producer>
   <pdf:Trapped>{text(info.trapped)}</pdf:Trapped>
   <xmp:CreatorTool>{text(info.creator)}</xmp:CreatorTool>
   <xmp:CreateDate>{date}</xmp:CreateDate>
   <xmp:ModifyDate>{date}</xmp:ModifyDate>
   <xmp:MetadataDate>{date}</xmp:MetadataDate>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
    return packet.encode("utf-8", "surrogatepass")


def _pdf_name(text: str) -> str:
    """A PDF name object for *text*, "/" and the other delimiters as #xx (7.3.5)."""
    return "/" + "".join(
        ch if "!" <= ch <= "~" and ch not in "%()<>[]{}/#" else f"#{ord(ch):02X}" for ch in text
    )


def evidence_json(evidence: dict[str, Any]) -> bytes:
    """The bytes of the embedded evidence.json."""
    try:
        return json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (a header decoded with surrogateescape) has no UTF-8 form;
        # \\u escapes keep the file valid JSON that loads back to the same dict.
        return json.dumps(evidence, indent=2, sort_keys=True, ensure_ascii=True).encode()


@contextmanager
def binary_streams() -> Iterator[None]:
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


def embedded_files(
    eml: bytes | None, evidence_bytes: bytes, extra: Iterable[tuple[str, bytes]] = ()
) -> tuple[Attachment, ...]:
    """The files a certificate carries: evidence.json, message.eml (unless the message
    was lost) and ``extra``, the ETSI EN 319 522-3 evidence documents (``evidence-
    001-SubmissionAcceptance.xml``, ..., XAdES-signed, :mod:`certifier.etsi`), each an
    associated file with relationship ``Data`` (ISO 32000-2 §14.13)."""
    more = tuple(
        Attachment(
            name,
            data,
            "application/xml",
            "Data",
            "ETSI EN 319 522-3 evidence of one event, XAdES-signed",
        )
        for name, data in extra
    )
    return _main_files(eml, evidence_bytes) + more


def _main_files(eml: bytes | None, evidence_bytes: bytes) -> tuple[Attachment, ...]:
    evidence = Attachment(
        EMBEDDED_EVIDENCE,
        evidence_bytes,
        "application/json",
        "Data",
        "Evidence record (certifica-evidence/1), machine-readable",
    )
    if eml is None:
        return (evidence,)
    message = Attachment(
        EMBEDDED_MESSAGE,
        eml,
        "message/rfc822",
        "Source",
        "The certified message exactly as received (RFC 5322)",
    )
    return (evidence, message)
