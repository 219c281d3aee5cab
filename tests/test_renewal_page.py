"""The verification page after a renewal (README, "Renewal"), in a real browser (Debian's
Chromium, headless, through playwright, as tests/test_verification_browser.py drives it).

The listener serves a certificate that was issued and then renewed: the archive holds
the renewed file and ``certificate_versions`` both versions. A visitor who drops the copy
they were mailed is told, in their language, that it is an earlier copy of a genuine
document, and the button then shown sends that copy and saves the renewed one the
archive gives in exchange.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from certifier.pki import ensure_dev_pki
from certifier.pool import SigningSettings, build_archiver, build_signer
from relay.queue.verifications import VersionKind
from tests.test_verification_browser import browser, drop, page  # noqa: F401 - fixtures
from tests.verification_site import Site, evidence, serving, signed_certificate

CERT_ID = evidence()["certificate_id"]
EARLIER_ES = "Este archivo es una copia anterior del documento emitido con este código"
SAME_ES = "Este archivo es exactamente el documento emitido con este código."


@pytest.fixture(scope="module")
def renewed_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, bytes]]:
    keys = tmp_path_factory.mktemp("keys")
    issued, ca = signed_certificate(keys)
    settings = SigningSettings.from_pki(ensure_dev_pki(keys, "certifica.localhost"))
    archiver = build_archiver(settings, build_signer(settings))
    assert archiver is not None
    renewed = archiver.renew(issued)
    with serving(tmp_path_factory.mktemp("site"), issued, ca) as site:
        archive = site.cfg.state_dir / "certificates"
        archive.mkdir(mode=0o700, exist_ok=True)
        (archive / f"{CERT_ID}.pdf").write_bytes(renewed)
        for data, kind, made in (
            (issued, VersionKind.ISSUED, time.time() - 60),
            (renewed, VersionKind.RENEWED, time.time()),
        ):
            site.run(
                site.store.record_certificate_version(
                    hashlib.sha256(data).hexdigest(), CERT_ID, made, kind
                )
            )
        yield site, renewed


def test_an_earlier_copy_is_told_apart_and_the_renewed_one_offered(
    renewed_site: tuple[Site, bytes],
    page: Any,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    site, renewed = renewed_site
    page.goto(site.page_url())
    assert "renovó el sello de tiempo de este documento" in page.inner_text("#renewed")
    link = page.locator("#renewed-copy")
    assert not link.is_visible()
    drop(page, site.pdf)  # the copy the sender was mailed
    result = page.locator("#result")
    sync_api.expect(result).to_contain_text(EARLIER_ES)
    assert result.get_attribute("class") == "good"
    sync_api.expect(link).to_be_visible()
    with page.expect_download() as info:
        page.click("#download")
    saved = tmp_path / "renewed.pdf"
    info.value.save_as(saved)
    assert saved.read_bytes() == renewed
    # The renewed copy itself is the document as it is now; the link is not offered.
    drop(page, renewed)
    sync_api.expect(result).to_have_text(SAME_ES)
    assert not link.is_visible()
