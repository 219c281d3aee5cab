"""The QR code of page 1: the verification URL, for a phone (ISO/IEC 18004).

reportlab's encoder (``reportlab.graphics.barcode.qrencoder``, the one behind its
``QrCodeWidget``) makes the symbol; two things are done differently, for speed:

- the mask pattern is fixed (pattern 2, vertical stripes) where ``QRCode.make`` builds
  the symbol eight times to score every mask: ISO/IEC 18004 section 7.8 lets an encoder
  use any of the eight, the score only trims runs of equal modules, and a URL at error
  correction level M scans with any of them (``test_qr_code_on_page_one_decodes_to_the_verification_url``). That was 13 of
  the 15 ms a widget took;
- the Reed-Solomon generator polynomial of each error correction length is made once
  per process (``QRUtil.getErrorCorrectPolynomial``, a pure function of that length,
  whose result the encoder only reads): making it again for every symbol was 40% of
  the rest;
- the remainder of the Reed-Solomon division (``QRPolynomial.mod``) is a loop, where
  reportlab's recurses once per data codeword building a polynomial object each time:
  the same numbers (``test_reed_solomon_remainder_is_reportlabs``), a third of the time;
- the dark modules are drawn as one path of rectangles, one fill, rather than a
  Drawing of one shape object per run.
"""

from __future__ import annotations

import functools

from reportlab.graphics.barcode import qrencoder
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import Flowable

from certifier.document.typeset import fp

__all__ = ["QrMark", "reportlabs_remainder"]

if not hasattr(qrencoder.QRUtil.getErrorCorrectPolynomial, "cache_info"):
    qrencoder.QRUtil.getErrorCorrectPolynomial = staticmethod(  # type: ignore[method-assign]
        functools.lru_cache(maxsize=32)(qrencoder.QRUtil.getErrorCorrectPolynomial)
    )


def _remainder(self: qrencoder.QRPolynomial, e: qrencoder.QRPolynomial) -> qrencoder.QRPolynomial:
    """``QRPolynomial.mod`` as a loop: *self* modulo *e* in GF(256)."""
    num: list[int] = self.num
    n = len(e.num)
    if len(num) < n:
        return self
    logs = [_LOG[c] for c in e.num]  # a generator polynomial has no zero coefficient
    while len(num) >= n:
        ratio = _LOG[num[0]] - logs[0]
        num = [a ^ _EXP[(b + ratio) % 255] for a, b in zip(num[:n], logs, strict=True)] + num[n:]
        start = 0
        while start < len(num) and num[start] == 0:
            start += 1
        num = num[start:]
    return qrencoder.QRPolynomial(num or [0], 0)


_EXP: list[int] = qrencoder.EXP_TABLE
_LOG: list[int] = qrencoder.LOG_TABLE
# reportlab's own, kept for the test that holds the two equal (also if this module is
# imported again).
reportlabs_remainder = getattr(qrencoder.QRPolynomial, "reportlabs_mod", qrencoder.QRPolynomial.mod)
qrencoder.QRPolynomial.reportlabs_mod = reportlabs_remainder  # type: ignore[attr-defined]
qrencoder.QRPolynomial.mod = _remainder  # type: ignore[method-assign]

_MASK = 2
_QUIET = 4  # modules of white border the standard asks for (section 6.3.8)


class QrMark(Flowable):
    """A square QR code of *text*, *size* points wide with its quiet zone."""

    def __init__(self, text: str, size: float) -> None:
        super().__init__()
        qr = qrencoder.QRCode(None, qrencoder.QRErrorCorrectLevel.M)
        qr.addData(text)
        qr.version = qr.calculate_version()
        qr.makeImpl(False, _MASK)
        self.modules: list[list[bool]] = qr.modules
        self.size = size
        self.width = self.height = size

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:  # noqa: N803
        return self.size, self.size

    def draw(self) -> None:
        # The rectangles as path operators written directly (ISO 32000-2 section
        # 8.5.2.1, "re", then one "f"): reportlab's path object formats every number
        # through its pure-Python fp_str, a few hundred rectangles a symbol.
        canvas: rl_canvas.Canvas = self.canv
        count = len(self.modules)
        box = self.size / (count + 2 * _QUIET)
        ops = ["q 0 0 0 rg"]
        height = fp(box)
        for r, row in enumerate(self.modules):
            y = fp(self.size - (r + _QUIET + 1) * box)
            c = 0
            while c < count:
                if row[c]:
                    start = c
                    while c < count and row[c]:
                        c += 1
                    ops.append(
                        f"{fp((start + _QUIET) * box)} {y} {fp((c - start) * box)} {height} re"
                    )
                else:
                    c += 1
        ops.append("f Q")
        canvas.addLiteral("\n".join(ops))
