"""The verification page over real HTTP (README, "Verifying a certificate"): the public
listener as the acceptor assembles it, a real store, a real signed certificate, aiohttp's
client; ``POST /v/<code>/check`` runs the real ``certifica verify --json``.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from relay.web.pages import grouped, mask_address
from relay.web.ratelimit import RateLimiter, client_key
from tests.verification_site import (
    CODE,
    ERASED_CODE,
    HOSTILE,
    HOSTILE_CODE,
    OTHER_CODE,
    SUBJECT,
    Site,
    serving,
    signed_certificate,
)


@dataclass
class Answer:
    status: int
    text: str
    headers: dict[str, str]

    def json(self) -> dict:
        return json.loads(self.text)


def fetch(
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | AsyncIterator[bytes] | None = None,
) -> Answer:
    async def go() -> Answer:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, URL(url, encoded=True), headers=headers, data=data, allow_redirects=False
            ) as response,
        ):
            return Answer(response.status, await response.text(), dict(response.headers))

    return asyncio.run(go())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    return signed_certificate(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[bytes, Path]
) -> Iterator[Site]:
    pdf, ca = certificate
    with serving(tmp_path_factory.mktemp("site"), pdf, ca) as running:
        yield running


def visible_text(html: str) -> str:
    """The page's text as a reader sees it (tags out, entities kept)."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_the_page_says_who_issued_what_when_in_the_visitors_language(site: Site) -> None:
    page = fetch(site.page_url(), headers={"Accept-Language": "es-ES,es;q=0.9,en;q=0.5"})
    assert page.status == 200
    assert page.headers["Content-Type"].startswith("text/html")
    text = visible_text(page.text)
    assert '<html lang="es">' in page.text
    assert "Certificado de entrega parcial de un correo electrónico certificado" in text
    assert (
        "Este documento fue emitido por Certifica Test Provider S.L. (B12345678) el "
        "3 de diciembre de 2026, 11:42:07 CET (10:42:07 UTC)." in text
    )
    # The SHA-256 as issued, whole, in groups of eight.
    sha = __import__("hashlib").sha256(site.pdf).hexdigest()
    assert " ".join(grouped(sha)) in text
    # Outcome per recipient, addresses masked, in words.
    assert "b**@example.org Aceptado por el servidor de correo del destinatario" in text
    assert "c****@example.net No entregado" in text
    # Never the message, never a whole address, never the queue id.
    for secret in ("bob@", "carol@", SUBJECT, "Contract", "4F2A1B3C9D", "CF-6F1C2A9E0B7D4E11"):
        assert secret not in page.text
    # The address of the page, as text (the QR code is checked in the browser test).
    assert site.page_url() in text


@pytest.mark.parametrize(
    ("accept", "query", "title"),
    [
        ("ca", "", "Certificat de lliurament parcial d'un correu electrònic certificat"),
        (
            "it-IT,it;q=0.9",
            "",
            "Certificato di consegna parziale di un messaggio di posta elettronica",
        ),
        (
            "de-DE, it;q=0.3, ca;q=0.8",
            "",
            "Certificat de lliurament parcial d'un correu electrònic certificat",
        ),
        (
            "de-DE,fr;q=0.9",
            "",
            "Certificate of partial delivery of a certified e-mail",
        ),  # the gateway's language
        ("", "", "Certificate of partial delivery of a certified e-mail"),
        (
            "es",
            "?lang=it",
            "Certificato di consegna parziale di un messaggio di posta elettronica",
        ),  # the switch wins
        ("es", "?lang=xx", "Certificado de entrega parcial de un correo electrónico certificado"),
    ],
)
def test_the_language_is_negotiated_and_switchable(
    site: Site, accept: str, query: str, title: str
) -> None:
    headers = {"Accept-Language": accept} if accept else {}
    page = fetch(site.page_url() + query, headers=headers)
    assert f"<h1>{title}</h1>" in html.unescape(page.text)
    for code in ("es", "ca", "it", "en"):
        assert f'href="?lang={code}"' in page.text


def test_security_headers_and_no_inline_script(site: Site) -> None:
    page = fetch(site.page_url())
    csp = page.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["Cache-Control"] == "no-store"
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", page.text, re.S)
    assert scripts and all(body.strip() == "" for body in scripts)  # src= only
    assert re.findall(r'<script src="([^"]+)"', page.text) == ["static/verify.js"]
    assert not re.search(r"\son[a-z]+\s*=", page.text)  # no onclick= and the like
    script = fetch(f"{site.url}/v/static/verify.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    assert "crypto.subtle.digest" in script.text
    style = fetch(f"{site.url}/v/static/verify.css")
    assert style.status == 200 and style.headers["Content-Type"].startswith("text/css")


def comparable(answer: Answer) -> tuple[int, str, dict[str, str]]:
    headers = {k: v for k, v in answer.headers.items() if k not in ("Date",)}
    return answer.status, answer.text, headers


def test_a_wrong_code_gets_the_same_404_as_a_random_one(site: Site) -> None:
    """Same status, body and header fields: the answer tells nothing about which codes
    exist, whether a code is one character off a real one, or well formed at all."""
    wrong = fetch(site.page_url(OTHER_CODE))
    assert wrong.status == 404
    assert "There is no document with this verification code" in wrong.text
    for code in (
        secrets.token_urlsafe(24),
        CODE.upper(),
        CODE[:-1],
        "abc",
        "x" * 300,
        "%3Cscript%3E",
        "static",
    ):
        assert comparable(fetch(site.page_url(code))) == comparable(wrong), code
    # The check of an unknown code: the same 404, whatever the body.
    check_wrong = fetch(site.page_url(OTHER_CODE) + "/check", "POST", data=site.pdf)
    check_random = fetch(site.page_url(secrets.token_urlsafe(24)) + "/check", "POST", data=b"x")
    assert check_wrong.status == 404
    assert comparable(check_wrong) == comparable(check_random)
    # In the visitor's language, the same for both again.
    es_wrong = fetch(site.page_url(OTHER_CODE), headers={"Accept-Language": "es"})
    es_random = fetch(site.page_url("q" * 32), headers={"Accept-Language": "es"})
    assert "No existe ningún documento con este código de verificación" in es_wrong.text
    assert comparable(es_wrong) == comparable(es_random)


def test_an_erased_record_still_confirms_issue_time_and_hash(site: Site) -> None:
    page = fetch(site.page_url(ERASED_CODE), headers={"Accept-Language": "it"})
    assert page.status == 200
    text = visible_text(page.text)
    assert "Certificato di consegna di un messaggio di posta elettronica" in text
    assert "3 dicembre 2026, 11:42:07 CET (10:42:07 UTC)" in text
    assert " ".join(grouped("ab" * 32)) in text
    assert "I dati personali dei destinatari sono stati cancellati" in text
    assert "example.org" not in page.text and "d**" not in page.text
    assert 'id="recipients"' not in page.text


def test_hostile_record_data_shows_as_text(site: Site) -> None:
    page = fetch(site.page_url(HOSTILE_CODE))
    assert page.status == 200
    assert HOSTILE not in page.text
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.example" in page.text  # the domain, kept
    assert "As stated in the certificate" in page.text  # an unknown status, not echoed


def test_hostile_provider_name_shows_as_text(
    tmp_path: Path, certificate: tuple[bytes, Path]
) -> None:
    pdf, ca = certificate
    name = 'Evil "Provider" <img src=x onerror=alert(1)>'
    with serving(tmp_path, pdf, ca, provider=name) as hostile:
        page = fetch(hostile.page_url())
    assert "<img" not in page.text
    assert "Evil &#34;Provider&#34; &lt;img src=x onerror=alert(1)&gt;" in page.text


def uploads_on_disk() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("certifica-check-*"))


def test_the_check_verifies_seal_and_timestamp_in_another_process(site: Site) -> None:
    before = uploads_on_disk()
    answer = fetch(site.page_url() + "/check?lang=es", "POST", data=site.pdf)
    assert answer.status == 200, answer.text
    body = answer.json()
    assert body["verdict"] == "valid" and body["same_file"] is True
    assert body["message"].startswith("El sello electrónico y el sello de tiempo de este archivo")
    assert "Es exactamente el documento emitido con este código." in body["message"]
    assert len(body["details"]) == 4
    assert any(d.startswith("Una autoridad de sellado de tiempo acredita") for d in body["details"])
    assert answer.headers["Content-Type"].startswith("application/json")

    tampered = bytearray(site.pdf)
    tampered[len(tampered) // 3] ^= 0x01
    bad = fetch(site.page_url() + "/check", "POST", data=bytes(tampered)).json()
    assert bad["verdict"] == "not_valid" and bad["same_file"] is False
    assert "does NOT pass the check" in bad["message"]
    assert "It is not the document issued under this code." in bad["message"]

    garbage = fetch(site.page_url() + "/check", "POST", data=b"%PDF-1.7 not really").json()
    assert garbage["verdict"] == "not_valid"
    empty = fetch(site.page_url() + "/check", "POST", data=b"")
    assert empty.status == 400 and empty.json()["message"] == "No file was sent."
    assert uploads_on_disk() <= before  # every file received was removed


@pytest.fixture(scope="module")
def strict(
    tmp_path_factory: pytest.TempPathFactory, certificate: tuple[bytes, Path]
) -> Iterator[Site]:
    """A site with a small upload limit and a small rate limit, behind a trusted proxy
    (loopback), so that each test can be a client of its own through X-Forwarded-For."""
    pdf, ca = certificate
    extra = 'rate_limit = 3\nmax_upload = 2000\ntrusted_proxies = ["127.0.0.0/8"]'
    with serving(tmp_path_factory.mktemp("strict"), pdf, ca, web_extra=extra) as running:
        yield running


def test_an_upload_over_max_upload_gets_413_with_a_sentence(strict: Site) -> None:
    client = {"X-Forwarded-For": "198.51.100.1", "Accept-Language": "ca"}
    too_big = fetch(strict.page_url() + "/check", "POST", headers=client, data=b"%" * 2001)
    assert too_big.status == 413
    assert too_big.json()["message"] == (
        "El fitxer supera els 2.000 bytes, la mida màxima que aquesta pàgina comprova."
    )

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(5):
            yield b"%" * 500

    client["X-Forwarded-For"] = "198.51.100.2"
    streamed = fetch(strict.page_url() + "/check", "POST", headers=client, data=chunks())
    assert streamed.status == 413
    assert "2.000 bytes" in streamed.json()["message"]


def test_the_rate_limit_answers_429_with_retry_after(strict: Site) -> None:
    client = {"X-Forwarded-For": "203.0.113.9", "Accept-Language": "es"}
    for _ in range(3):
        assert fetch(strict.page_url(), headers=client).status == 200
    refused = fetch(strict.page_url(), headers=client)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "Se han recibido demasiadas solicitudes desde su dirección de red." in refused.text
    assert refused.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # Unknown codes count too: the limit is what stops a sweep of codes.
    assert fetch(strict.page_url(OTHER_CODE), headers=client).status == 429
    posted = fetch(strict.page_url() + "/check", "POST", headers=client, data=b"x")
    assert posted.status == 429 and "demasiadas solicitudes" in posted.json()["message"]
    # Another client is not affected; the page's script and style are not counted.
    assert fetch(strict.page_url(), headers={"X-Forwarded-For": "203.0.113.10"}).status == 200
    assert fetch(f"{strict.url}/v/static/verify.js", headers=client).status == 200


def test_ipv6_clients_are_limited_by_their_56(strict: Site) -> None:
    """A subscriber's delegation is usually a /56 (RFC 6177): walking its /64s does not
    escape the limit; the next /56 is another client."""
    for n in range(1, 4):
        one = {"X-Forwarded-For": f"2001:db8:1:{n}::{n}"}
        assert fetch(strict.page_url(), headers=one).status == 200
    same_56 = {"X-Forwarded-For": "2001:db8:1:ff::1"}
    assert fetch(strict.page_url(), headers=same_56).status == 429
    next_56 = {"X-Forwarded-For": "2001:db8:1:100::1"}
    assert fetch(strict.page_url(), headers=next_56).status == 200


def test_tracking_answers_are_in_the_visitors_language(site: Site) -> None:
    default = fetch(f"{site.url}/o/AAAA")
    assert default.status == 404 and default.text == "Not found\n"
    catalan = fetch(f"{site.url}/o/AAAA", headers={"Accept-Language": "ca-ES,ca;q=0.9"})
    assert catalan.status == 404 and catalan.text == "No trobat\n"


def test_certifica_verify_json(tmp_path: Path, certificate: tuple[bytes, Path]) -> None:
    pdf, ca = certificate
    good, bad = tmp_path / "good.pdf", tmp_path / "bad.pdf"
    good.write_bytes(pdf)
    flipped = bytearray(pdf)
    flipped[len(flipped) // 2] ^= 0x01
    bad.write_bytes(bytes(flipped))

    def verify(path: Path) -> tuple[int, dict]:
        done = subprocess.run(
            [sys.executable, "-m", "relay.cli", "verify", "--json", "--trust", str(ca), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, json.loads(done.stdout)

    status, report = verify(good)
    assert status == 0 and report["ok"] is True and report["content_certified"] is True
    assert report["timestamp"] and report["timestamp"].endswith("+00:00")
    assert {c["name"] for c in report["checks"]} >= {"integrity", "trust", "timestamp"}
    status, report = verify(bad)
    assert status == 1 and report["ok"] is False
    assert not all(c["ok"] for c in report["checks"])


# --- the parts, on their own ---------------------------------------------------------------


def test_addresses_are_masked_keeping_first_character_and_domain() -> None:
    assert mask_address("bob@example.org") == "b**@example.org"
    assert mask_address("carol@example.net") == "c****@example.net"
    assert mask_address("a@example.org") == "a**@example.org"  # the length is not given away
    assert mask_address("josé.pérez@ejemplo.es") == "j*********@ejemplo.es"
    assert mask_address('"a@b"@example.org') == '"****@example.org'  # the last @ splits
    assert mask_address("no-at-sign") == "n*********"


def test_the_limiter_allows_the_rate_and_then_says_when() -> None:
    limiter = RateLimiter(6)  # one every 10 s, six at once
    assert all(limiter.hit("a", 100.0) is None for _ in range(6))
    assert limiter.hit("a", 100.0) == 10
    assert limiter.hit("b", 100.0) is None  # another client
    assert limiter.hit("a", 109.0) == 1
    assert limiter.hit("a", 110.0) is None  # one more after 10 s
    assert limiter.hit("a", 110.0) == 10
    assert limiter.hit("a", 200.0) is None  # a minute later, a full burst again
    assert len(limiter) == 1  # "b" is as new by then: forgotten


def test_the_limiter_forgets_clients_within_its_bound() -> None:
    limiter = RateLimiter(60, max_clients=100)
    for n in range(1000):
        limiter.hit(f"10.0.{n // 256}.{n % 256}", 0.0)
    assert len(limiter) <= 100
    limiter.hit("other", 120.0)
    assert len(limiter) == 1


def test_client_keys() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2::7") == client_key("2001:db8:1:ff:abcd::1") == "2001:db8:1::/56"
    assert client_key("2001:db8:1:100::7") != client_key("2001:db8:1:2::7")
    assert client_key("") == ""


def test_a_database_that_does_not_answer_gets_503_not_a_traceback(
    tmp_path: Path, certificate: tuple[bytes, Path], caplog: pytest.LogCaptureFixture
) -> None:
    pdf, ca = certificate
    with serving(tmp_path, pdf, ca) as broken:
        broken.store.close()  # its thread gone: a lookup fails or never answers
        page = fetch(broken.page_url(), headers={"Accept-Language": "es"})
        posted = fetch(broken.page_url() + "/check", "POST", data=pdf)
    assert page.status == 503 and page.headers["Retry-After"] == "60"
    assert "Servicio no disponible temporalmente" in page.text
    assert posted.status == 503 and "Temporarily unavailable" in posted.json()["message"]
    assert "Traceback" not in caplog.text
    assert "verification page: record not read" in caplog.text
