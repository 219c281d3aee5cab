"""The certificate's pages as their readers see them: page 1 of every kind of document
compared with stored images, the QR code decoded from the rendered page, the words in
every language, and only the shipped fonts, embedded.

Page 1 of each document (delivered, failed, partial, withdrawn, addendum, reception,
and a Spanish delivered one) is rendered from fixed evidence to PNG with poppler's
``pdftoppm`` and compared with ``tests/fixtures/pages/<name>.png``: the test fails when
more than 0.3% of the pixels differ noticeably (one line of text is about 0.2%), so a
layout change shows. After a change meant to alter the layout, look at the new images
and store them with::

    CERTIFICA_UPDATE_PAGES=1 .venv/bin/pytest tests/test_certificate_pages.py

The QR code is decoded with zbar's ``zbarimg`` (Debian zbar-tools; ``make test``
installs it), text is extracted with ``pdftotext`` and fonts listed with ``pdffonts``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageChops

from certifier.document import render_certificate
from certifier.document.words import EVENTS
from certifier.i18n import LANGUAGES, Reader

FIXTURES = Path(__file__).parent / "fixtures"
PAGES = FIXTURES / "pages"
UPDATE = os.environ.get("CERTIFICA_UPDATE_PAGES") == "1"
RESOLUTION = 60  # dots per inch of the stored images
TOLERANCE = 0.003  # fraction of pixels allowed to differ: a line of text is ~0.2%
URL = "https://certifica.example.es/v/k3j5h7g9f2d4s6a8q1w3e5r7t9y2u4i6"

PROVIDER = {
    "name": "Certifica Servicios de Confianza S.L.",
    "legal_id": "NIF B12345678",
    "address": "Calle Mayor 1, 28013 Madrid, España",
    "website": "https://certifica.example.es",
    "contact": "soporte@certifica.example.es",
    "policy_id": "urn:oid:2.999.1",
    "policy_url": "https://certifica.example.es/politica",
}
SEAL = {
    "signer": "Certifica Servicios de Confianza – sello electrónico",
    "organization": "Certifica Servicios de Confianza S.L.",
    "issuer": "Certifica Development CA",
    "serial": "4f2a1b3c9d7e",
    "not_after": "2028-12-03T00:00:00Z",
}
COPY = {
    "prefix": "Received: by certifica.localhost\r\n",
    "edits": [],
    "changes": [
        {"change": "header_added", "field": "Received"},
        {"change": "header_added", "field": "DKIM-Signature"},
        {"change": "link_tracked", "link": 2, "url": "https://example.org/offer"},
        {"change": "open_pixel_added"},
        {"change": "something_new"},
    ],
}


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / "evidence" / f"{name}.json").read_text())
    return loaded


def with_issuer(evidence: dict[str, Any]) -> dict[str, Any]:
    evidence = copy.deepcopy(evidence)
    evidence["provider"] = dict(PROVIDER)
    evidence["verification"] = {"url": URL}
    evidence["seal"] = dict(SEAL)
    return evidence


def evidence_for(kind: str) -> dict[str, Any]:
    """Fixed evidence of each kind of document (from the gateway's own records)."""
    if kind == "reception":
        return with_issuer(load("reception"))
    if kind == "addendum":
        return with_issuer(load("addendum_late_bounce"))
    evidence = with_issuer(load("sending"))
    bob, carol = evidence["recipients"]
    bob["copy"] = copy.deepcopy(COPY)
    refused = {"code": 550, "enhanced": "5.1.1", "text": "<carol@example.net>: Recipient unknown"}
    if kind == "failed":
        for r in (bob, carol):
            r.update(status="failed", reply=dict(refused), delivered_sha256=None, copy=None)
            r["remote_qid"] = None
    elif kind == "partial":
        carol.update(status="failed", reply=refused, delivered_sha256=None, remote_qid=None)
    elif kind == "withdrawn":
        for r in (bob, carol):
            r.update(status="withdrawn", delivered_sha256=None, remote_qid=None, copy=None)
            r.update(reply={"code": None, "enhanced": None, "text": "withdrawn by the operator"})
    return evidence


KINDS = ["delivered", "failed", "partial", "withdrawn", "addendum", "reception"]
# name of the stored image -> (kind, language, time zone)
GOLDEN = {
    **{kind: (kind, "en", "Europe/Madrid") for kind in KINDS},
    "delivered-es": ("delivered", "es", "Europe/Madrid"),
    "failed-en": ("failed", "en", "UTC"),
}


def render(kind: str, language: str = "en", timezone: str = "Europe/Madrid") -> bytes:
    return render_certificate(evidence_for(kind), b"x", Reader(language, timezone))


def page_png(pdf: bytes, tmp_path: Path, resolution: int = RESOLUTION) -> Path:
    source = tmp_path / "page.pdf"
    source.write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(resolution), "-f", "1", "-l", "1", "-png", "-singlefile",
         str(source), str(tmp_path / "page")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    png = tmp_path / "page.png"
    with Image.open(png) as page:
        gray = page.convert("L")  # a quarter of the bytes to store; the layout is the same
    gray.save(png, optimize=True)
    return png


def words(pdf: bytes) -> str:
    out = subprocess.run(
        ["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    return " ".join(out.split())


def differing_fraction(a: Image.Image, b: Image.Image) -> float:
    if a.size != b.size:
        return 1.0
    diff = ImageChops.difference(a.convert("L"), b.convert("L"))
    changed = sum(diff.point(lambda v: 255 if v > 40 else 0).histogram()[255:])
    return changed / (a.size[0] * a.size[1])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_page_one_looks_as_stored(name: str, tmp_path: Path) -> None:
    kind, language, timezone = GOLDEN[name]
    png = page_png(render(kind, language, timezone), tmp_path)
    stored = PAGES / f"{name}.png"
    if UPDATE:
        PAGES.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(png.read_bytes())
    with Image.open(png) as got, Image.open(stored) as want:
        fraction = differing_fraction(got, want)
    assert fraction < TOLERANCE, f"{name}: {fraction:.2%} of page 1 differs from {stored}"


def test_a_layout_change_is_noticed(tmp_path: Path) -> None:
    """The comparison can fail: a Spanish page is not the English one."""
    png = page_png(render("delivered", "es"), tmp_path)
    with Image.open(png) as got, Image.open(PAGES / "delivered.png") as want:
        assert differing_fraction(got, want) >= TOLERANCE


def test_qr_code_on_page_one_decodes_to_the_verification_url(tmp_path: Path) -> None:
    pdf = render("delivered")
    assert URL in words(pdf)  # as text, too
    png = page_png(pdf, tmp_path, resolution=150)
    out = subprocess.run(
        ["zbarimg", "--quiet", "--raw", str(png)], capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == [URL], out.stdout + out.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_shipped_fonts_embedded(kind: str) -> None:
    listing = subprocess.run(
        ["pdffonts", "-"], input=render(kind), capture_output=True, check=True, timeout=60
    ).stdout.decode()
    rows = listing.splitlines()[2:]
    assert rows
    for row in rows:
        name, *_, emb, sub, uni, _obj, _gen = row.split()
        assert re.fullmatch(r"[A-Z]{6}\+DejaVuSans(-Bold|Mono)?", name), row
        assert (emb, sub, uni) == ("yes", "yes", "yes"), row


EXPECTED = {
    "en": [
        "Certificate of delivery of a certified e-mail",
        "Trust service provider",
        "The mail server of example.org accepted the message for bob@example.org on "
        "3 December 2026, 10:02:39 CET (09:02:39 UTC).",
        "It does not prove that the recipient opened or read it.",
        "This document bears the electronic seal of:",
        "Annex C — Delivery to each recipient",
        "Link 2 (https://example.org/offer) was replaced by a tracking link.",
        "The header field DKIM-Signature was added.",
        "A tracking image (one pixel) was added.",
        "Another change was made",
        "Page 1 of",
    ],
    "es": [
        "Certificado de entrega de un correo electrónico certificado",
        "Prestador de servicios de confianza",
        "El servidor de correo de example.org aceptó el mensaje dirigido a bob@example.org el "
        "3 de diciembre de 2026, 10:02:39 CET (09:02:39 UTC).",
        "servidor de correo del destinatario",
        "sello electrónico",
        "Anexo C — Entrega a cada destinatario",
        "El enlace 2 (https://example.org/offer) se sustituyó por un enlace de seguimiento.",
        "Página 1 de",
    ],
    "ca": [
        "Certificat de lliurament d'un correu electrònic certificat",
        "Prestador de serveis de confiança",
        "El servidor de correu de example.org va acceptar el missatge adreçat a bob@example.org "
        "el 3 de desembre del 2026, 10:02:39 CET (09:02:39 UTC).",
        "segell electrònic",
        "Annex C — Lliurament a cada destinatari",
        "Pàgina 1 de",
    ],
    "it": [
        "Certificato di consegna di un messaggio di posta elettronica",
        "Prestatore di servizi fiduciari",
        "Il server di posta di example.org ha accettato il messaggio destinato a bob@example.org il "
        "3 dicembre 2026, 10:02:39 CET (09:02:39 UTC).",
        "sigillo elettronico",
        "Allegato C — Consegna a ciascun destinatario",
        "Pagina 1 di",
    ],
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_words_are_the_readers(language: str) -> None:
    text = words(render("delivered", language))
    for expected in EXPECTED[language]:
        assert expected in text, expected


# Raw evidence codes a reader must never see; "a=b" dumps neither.
RAW = re.compile("|".join(sorted(EVENTS, key=len, reverse=True)) + r"|\b[a-z_]+=\S")


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(
    "name", ["sending", "sending_tracked", "reception", "addendum_tracking",
             "addendum_late_bounce", "sending_content_lost"],
)  # fmt: skip
def test_no_raw_event_names_or_key_value_text(name: str, language: str) -> None:
    evidence = with_issuer(load(name))
    # The message's own text (Annex "Text of the message") is the sender's, quoted as is.
    evidence["message"]["text"] = ""
    text = words(render_certificate(evidence, b"x", Reader(language, "Europe/Rome")))
    found = RAW.findall(text)
    assert not found, found[:10]


@pytest.mark.parametrize(
    ("kind", "title"),
    [
        ("delivered", "Certificate of delivery of a certified e-mail"),
        ("failed", "Certificate of non-delivery of a certified e-mail"),
        ("partial", "Certificate of partial delivery of a certified e-mail"),
        ("withdrawn", "Certificate of withdrawal of a certified e-mail"),
        ("reception", "Certificate of reception of a certified e-mail"),
        ("addendum", "Addendum to a certificate of certified e-mail"),
    ],
)
def test_the_title_says_what_happened(kind: str, title: str) -> None:
    text = words(render(kind))
    assert text.count(title) >= 2  # the title, and the footer of every page
    if kind in ("failed", "withdrawn"):
        assert "Certificate of delivery" not in text
    if kind == "withdrawn":
        assert "The provider's operator withdrew the message for bob@example.org" in text
    if kind == "failed":
        assert "The message could not be delivered to carol@example.net" in text
        assert "“550 5.1.1 <carol@example.net>: Recipient unknown”" in text


def test_an_old_record_leaves_the_new_blocks_out() -> None:
    """Records from before the provider, seal and verification fields still render."""
    text = words(render_certificate(load("sending"), b"x"))
    assert "Certificate of delivery of a certified e-mail" in text
    assert "The certified e-mail gateway certifica.localhost certifies" in text
    for absent in ("Trust service provider", "Electronic seal", "Check this certificate at"):
        assert absent not in text


def test_every_page_has_the_header_and_page_n_of_m() -> None:
    pdf = render("delivered")
    pages = (
        subprocess.run(
            ["pdftotext", "-", "-"], input=pdf, capture_output=True, check=True, timeout=60
        )
        .stdout.decode()
        .split("\f")
    )
    pages = [p for p in pages if p.strip()]
    assert len(pages) >= 2
    for number, page in enumerate(pages, 1):
        assert PROVIDER["name"] in page
        assert f"Page {number} of {len(pages)}" in page


def test_long_addresses_break_after_the_at_sign_or_a_dot() -> None:
    evidence = evidence_for("delivered")
    long_address = "a.very.long.local.part." + "x" * 60 + "@" + "sub." * 12 + "example.org"
    evidence["recipients"][0]["address"] = long_address
    out = subprocess.run(
        ["pdftotext", "-", "-"],
        input=render_certificate(evidence, b"x"),
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    pieces = [line.strip() for line in out.splitlines() if "sub.sub" in line or "xxxx" in line]
    assert pieces
    assert all(p.endswith(("@", ".")) or p.endswith("example.org") or " " in p for p in pieces)


def test_an_unknown_event_and_hostile_new_fields_print_as_plain_words() -> None:
    evidence = evidence_for("delivered")
    evidence["timeline"].append(
        {"time": "2026-12-03T09:05:00Z", "event": "BrandNewEvent", "recipient": None,
         "detail": "secret=1"}
    )  # fmt: skip
    evidence["evidence_log"]["entries"].append(
        dict(evidence["evidence_log"]["entries"][-1], seq=5, event="BrandNewEvent",
             detail='{"secret":1}')
    )  # fmt: skip
    hostile = "<b>Evil</b> &amp; <font color=red>Sealer</font>"
    evidence["seal"]["signer"] = hostile
    evidence["recipients"][0]["copy"]["changes"].append(
        {"change": "link_tracked", "link": 7, "url": "https://x.example/<img src=a>"}
    )
    text = words(render_certificate(evidence, b"x"))
    assert "BrandNewEvent" not in text and "secret" not in text
    assert text.count("Other recorded event") == 2  # the timeline and the evidence log
    assert hostile in text
    assert "Link 7 (https://x.example/<img src=a>) was replaced by a tracking link." in text


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.integers(0, 255), min_size=1, max_size=80),
    length=st.sampled_from([7, 10, 13, 15, 16, 17, 18, 20, 22, 24, 26, 28, 30]),
)
def test_reed_solomon_remainder_is_reportlabs(data: list[int], length: int) -> None:
    # certifier.document.qr replaces reportlab's recursive QRPolynomial.mod with a loop;
    # for every data block and error correction length QR codes use, the same numbers.
    from reportlab.graphics.barcode import qrencoder

    from certifier.document.qr import reportlabs_remainder

    generator = qrencoder.QRUtil.getErrorCorrectPolynomial(length)
    raw = qrencoder.QRPolynomial(data, generator.getLength() - 1)
    assert raw.mod(generator).num == reportlabs_remainder(raw, generator).num
