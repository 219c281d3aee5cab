"""A certified message through the real gateway, then its verification page as a reader
meets it (README, "Verifying a certificate"): the URL taken from the certificate's own
evidence, opened in headless Chromium on the gateway's public listener, the PDF the
sender received dropped on it and checked by the gateway, the QR code read back.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api  # noqa: E402

from tests.conftest import (
    CERT_ADDRESS,
    ROOT,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import submit
from tests.test_verification_browser import CHROMIUM, CHROMIUM_ARGS, drop
from tests.test_verification_record import certificate_of, embedded_evidence


@pytest.fixture(scope="module")
def site(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Sink]]:
    """The gateway with its public listener on a known port, and an MX that refuses
    carol (so the certificate is one of partial delivery)."""
    sink = sink_server.start(
        Sink(rcpt_reply=lambda a: "550 5.1.1 User unknown" if a.startswith("carol@") else None)
    )
    tmp = tmp_path_factory.mktemp("verify")
    port = free_port()
    cfg = write_config(
        tmp, {"example.org": sink.port, "example.net": sink.port, "example.com": sink.port}
    )
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    # Tracking stays off: the public listener serves the verification page regardless.
    text += f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n'
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw, sink
    gw.stop()
    assert_clean_log(gw.log())


def test_a_real_certificate_is_verified_on_its_page(
    site: tuple[Gateway, Sink], tmp_path: Path
) -> None:
    gw, sink = site
    raw = make_message(
        to="bob@example.org, carol@example.net", cc=CERT_ADDRESS, subject="Private subject 7"
    )
    qid = submit(gw, raw, ["bob@example.org", "carol@example.net", CERT_ADDRESS])
    pdf = certificate_of(sink, qid)
    url = embedded_evidence(pdf, tmp_path)["verification"]["url"]
    saved = tmp_path / "certificado.pdf"
    saved.write_bytes(pdf)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(locale="it-IT", viewport={"width": 900, "height": 1400})
        page: Any = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        assert (
            page.locator("h1").inner_text()
            == "Certificato di consegna parziale di un messaggio di posta elettronica"
        )
        issued = page.inner_text("#issued")
        assert issued.startswith("Questo documento è stato emesso da Certifica development")
        rows = page.locator("#recipients tbody tr").all_inner_texts()
        assert any(r.startswith("b**@example.org\tAccettato dal server di posta") for r in rows)
        assert any(r.startswith("c****@example.net\tNon consegnato") for r in rows)
        assert "Private subject" not in page.content()

        drop(page, pdf)
        sync_api.expect(page.locator("#result")).to_have_text(
            "Questo file è esattamente il documento emesso con questo codice."
        )
        page.click("#check")
        answer = page.locator("#answer")
        sync_api.expect(answer).to_contain_text("È esattamente il documento", timeout=60_000)
        assert answer.inner_text().startswith("Il sigillo elettronico e la marca temporale")
        assert answer.get_attribute("class") == "good"

        shot = tmp_path / "qr.png"
        page.locator("figure.qr-code").screenshot(path=str(shot))
        context.close()
        if os.environ.get("CERTIFICA_UPDATE_SCREENSHOTS"):
            _screenshots(browser, url, pdf)
        browser.close()
    assert not errors, errors
    read = subprocess.run(["zbarimg", "--raw", "-q", str(shot)], capture_output=True, text=True)
    assert read.stdout.strip() == url


def _screenshots(browser: Any, url: str, pdf: bytes) -> None:
    """The page as README's readers see it, in Spanish and English, after the PDF was
    dropped and checked: ``CERTIFICA_UPDATE_SCREENSHOTS=1`` writes docs/*.png."""
    for language, locale in (("es", "es-ES"), ("en", "en-GB")):
        context = browser.new_context(locale=locale, viewport={"width": 820, "height": 1400})
        page = context.new_page()
        page.goto(url)
        drop(page, pdf)
        page.click("#check")
        sync_api.expect(page.locator("#answer")).to_have_class("good", timeout=60_000)
        page.screenshot(
            path=str(ROOT / "docs" / f"verification-page-{language}.png"), full_page=True
        )
        context.close()
