"""The public pages' HTML: Jinja2 templates in ``relay/templates/web/``, one environment per
language, autoescaped, with their texts from the ``web`` gettext catalog.

Also the small pieces the pages show: a masked address (:func:`mask_address`), a hash in
groups (:func:`grouped`) and a QR code as SVG (:func:`qr_svg`). The QR code is drawn as
one SVG path of presentation attributes (no ``style``), so the page's Content-Security-
Policy needs no ``'unsafe-inline'`` for it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from reportlab.graphics.barcode.qrencoder import QRCode, QRErrorCorrectLevel

from certifier.i18n import LANGUAGES, translations

__all__ = ["LANGUAGE_NAMES", "TEMPLATES", "grouped", "mask_address", "qr_svg", "render"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"

LANGUAGE_NAMES = {"es": "Español", "ca": "Català", "it": "Italiano", "en": "English"}
"""Each language in its own words, for the language switch."""

QR_QUIET_ZONE = 4  # modules of white around the symbol (ISO/IEC 18004 section 6.3.8)


@lru_cache(maxsize=len(LANGUAGES))
def _environment(language: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_translations(translations(language, "web"), newstyle=True)  # type: ignore[attr-defined]
    return env


def render(template: str, language: str, **context: Any) -> str:
    """``template`` rendered in ``language``; every value in ``context`` is escaped."""
    return _environment(language).get_template(template).render(language=language, **context)


def mask_address(address: str) -> str:
    """``bob@example.org`` as ``b**@example.org``: the first character of the local part,
    an asterisk for each other one (at least two, so a one-letter name is not given away),
    the domain kept. The page shows a recipient this way: enough for whoever sent or
    received the message to recognise it, not enough to harvest."""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not local:
        return "**" + at + domain
    return local[0] + "*" * max(2, len(local) - 1) + at + domain


def grouped(hex_digest: str, size: int = 8) -> list[str]:
    """A hash in groups of ``size`` characters, for reading aloud or comparing by eye."""
    text = hex_digest.lower()
    return [text[i : i + size] for i in range(0, len(text), size)]


@lru_cache(maxsize=256)
def qr_svg(data: str, module: int = 4) -> str:
    """``data`` as a QR code (error correction M), an SVG of ``module`` pixels per
    module with the quiet zone, black on white. Encoding takes about 5 ms of pure
    Python, on the event loop: kept for the pages viewed again (about 8 kB each)."""
    qr = QRCode(None, QRErrorCorrectLevel.M)
    qr.addData(data)
    qr.make()
    count = qr.getModuleCount()
    side = count + 2 * QR_QUIET_ZONE
    path = "".join(
        f"M{c + QR_QUIET_ZONE} {r + QR_QUIET_ZONE}h1v1h-1z"
        for r in range(count)
        for c in range(count)
        if qr.isDark(r, c)
    )
    pixels = side * module
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="qr" width="{pixels}" '
        f'height="{pixels}" viewBox="0 0 {side} {side}" shape-rendering="crispEdges" '
        f'role="img"><rect width="{side}" height="{side}" fill="#fff"/>'
        f'<path fill="#000" d="{path}"/></svg>'
    )
