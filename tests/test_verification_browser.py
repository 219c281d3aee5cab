"""The verification page in a real browser (Debian's Chromium, headless, driven by
playwright): the language and its switch, the PDF dropped on the page and hashed there
(the issued one and one with a byte flipped), the server's check, and the QR code read
back from a screenshot by zbar's ``zbarimg``. The page's Content-Security-Policy stays
on: a script it blocked would show as a console error, and none may.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Required, never skipped: make test installs chromium and zbar-tools, and playwright
# is a test dependency (pyproject.toml).
from playwright import sync_api  # noqa: E402

from relay.web.pages import grouped
from tests.verification_site import CODE, Site, serving, signed_certificate

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SAME_ES = "Este archivo es exactamente el documento emitido con este código."
DIFFERENT_ES = "Este archivo NO es el documento emitido con este código"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    pdf, ca = signed_certificate(tmp_path_factory.mktemp("keys"))
    with serving(tmp_path_factory.mktemp("site"), pdf, ca) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A page of a Spanish-speaking visitor; fails the test on any console error (a
    script or style the Content-Security-Policy refused, a script error)."""
    context = browser.new_context(locale="es-ES", viewport={"width": 900, "height": 1400})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    assert not errors, errors


def drop(page: Any, data: bytes, name: str = "certificate.pdf") -> None:
    """Drop ``data`` as a file on the page's drop zone, as a person dragging it does."""
    transfer = page.evaluate_handle(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "application/pdf" }));
            return transfer;
        }""",
        [base64.b64encode(data).decode("ascii"), name],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


def test_the_page_opens_in_the_visitors_language_and_switches(site: Site, page: Any) -> None:
    page.goto(site.page_url())
    assert page.locator("html").get_attribute("lang") == "es"
    assert (
        page.locator("h1").inner_text()
        == "Certificado de entrega parcial de un correo electrónico certificado"
    )
    assert "b**@example.org" in page.locator("#recipients").inner_text()
    page.get_by_role("link", name="Català").click()
    page.wait_for_url("**?lang=ca")
    assert (
        page.locator("h1").inner_text()
        == "Certificat de lliurament parcial d'un correu electrònic certificat"
    )
    assert "Aquest document el va emetre Certifica Test Provider S.L." in page.inner_text("#issued")
    page.get_by_role("link", name="English").click()
    assert (
        page.locator("h1").inner_text() == "Certificate of partial delivery of a certified e-mail"
    )
    # The style sheet applied (the CSP let it in): the drop zone has its dashed border.
    style = page.eval_on_selector("#drop", "e => getComputedStyle(e).borderTopStyle")
    assert style == "dashed"


def test_dropping_the_issued_pdf_and_a_tampered_one(site: Site, page: Any) -> None:
    page.goto(site.page_url())
    drop(page, site.pdf)
    result = page.locator("#result")
    sync_api.expect(result).to_have_text(SAME_ES)
    assert result.get_attribute("class") == "good"
    issued = " ".join(grouped(hashlib.sha256(site.pdf).hexdigest()))
    assert page.inner_text("#file-hash") == f"SHA-256: {issued}"

    tampered = bytearray(site.pdf)
    tampered[len(tampered) // 2] ^= 0x01
    drop(page, bytes(tampered))
    sync_api.expect(result).to_contain_text(DIFFERENT_ES)
    assert result.get_attribute("class") == "bad"
    other = " ".join(grouped(hashlib.sha256(tampered).hexdigest()))
    assert page.inner_text("#file-hash") == f"SHA-256: {other}"


def test_the_check_button_asks_the_server_and_says_the_answer(
    site: Site, page: Any, tmp_path: Path
) -> None:
    pdf = tmp_path / "certificado.pdf"
    pdf.write_bytes(site.pdf)
    page.goto(site.page_url())
    page.set_input_files("#file", str(pdf))  # chosen with the button, this time
    sync_api.expect(page.locator("#result")).to_have_text(SAME_ES)
    page.click("#check")
    answer = page.locator("#answer")
    sync_api.expect(answer).to_contain_text("Es exactamente el documento emitido", timeout=60_000)
    assert answer.inner_text().startswith(
        "El sello electrónico y el sello de tiempo de este archivo son válidos"
    )
    assert answer.get_attribute("class") == "good"
    details = page.locator("#details li").all_inner_texts()
    assert len(details) == 4
    assert details[0].startswith("El sello electrónico está intacto")

    tampered = bytearray(site.pdf)
    tampered[len(tampered) // 3] ^= 0x01
    other = tmp_path / "otro.pdf"
    other.write_bytes(bytes(tampered))
    page.set_input_files("#file", str(other))
    sync_api.expect(page.locator("#result")).to_contain_text(DIFFERENT_ES)
    page.click("#check")
    sync_api.expect(answer).to_contain_text("NO supera la comprobación", timeout=60_000)
    assert answer.get_attribute("class") == "bad"


def test_the_qr_code_on_the_page_is_its_address(site: Site, page: Any, tmp_path: Path) -> None:
    page.goto(site.page_url())
    shot = tmp_path / "qr.png"
    page.locator("figure.qr-code").screenshot(path=str(shot))
    done = subprocess.run(
        ["zbarimg", "--raw", "-q", str(shot)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == site.page_url(CODE)
    assert page.inner_text("#url") == site.page_url(CODE)


def test_a_file_over_max_upload_is_not_sent(browser: Any, tmp_path: Path) -> None:
    """The page knows ``[web] max_upload`` and says so before sending anything."""
    pdf, ca = signed_certificate(tmp_path / "keys")
    extra = "rate_limit = 100000\nmax_upload = 2000"
    (tmp_path / "site").mkdir()
    with serving(tmp_path / "site", pdf, ca, web_extra=extra) as small:
        context = browser.new_context(locale="ca-ES")
        page = context.new_page()
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page.goto(small.page_url())
        drop(page, pdf)
        sync_api.expect(page.locator("#result")).to_contain_text("és exactament el document")
        page.click("#check")
        sync_api.expect(page.locator("#answer")).to_have_text(
            "El fitxer supera els 2.000 bytes, la mida màxima que aquesta pàgina comprova."
        )
        context.close()
    assert posts == []
