"""The web console end to end in a real browser (Debian's Chromium, headless, driven by
playwright) against a real gateway: logging in, searching, downloading a certificate
again, what a sender may not see, an auditor, an admin managing users, the second factor
(TOTP) and a replayed code, CSRF and session fixation attempts.

The pages run no script at all; their Content-Security-Policy stays on, and a style
sheet or anything else it refused would show as a console error, which fails the test.

Screenshots (login, search results, certificate, statement, users) are written to the
test's tmp dir; with ``CERTIFICA_SCREENSHOTS=1`` they are also copied to
``docs/screenshots/console-*.png`` (README, "The web console").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyotp
import pytest
from playwright import sync_api

from tests.conftest import PASSWORD, ROOT, Gateway, Sink, start_gateway, write_config
from tests.console_site import (
    ADMIN,
    AUDITOR,
    COOKIE,
    OTHER_SENDER,
    OUTSIDER,
    RECIPIENTS,
    SENDER,
    ConsoleClient,
    add_credits,
    add_organisation,
    bind_domain,
    send_and_wait,
)
from tests.test_permissions import auth
from tests.test_verification_browser import CHROMIUM, CHROMIUM_ARGS

TOTP_USER = "totp@example.com"
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("console")
    cfg = write_config(
        tmp, {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port}
    )
    gw = start_gateway(cfg)
    try:
        add_organisation(gw)
        add_organisation(gw, members={TOTP_USER: "sender"})
        bind_domain(gw)  # its admin adds newcomer@example.com
        add_credits(gw, 500, "invoice 2026-117")
        send_and_wait(gw, [SENDER, OTHER_SENDER, OUTSIDER])
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Contexts:
    """Browser contexts (one each for the people of a test), closed at its end; any
    console error fails the test."""

    def __init__(self, browser: Any, gw: Gateway) -> None:
        self.browser = browser
        self.origin = f"http://127.0.0.1:{gw.port('http')}"
        self.opened: list[Any] = []
        self.errors: list[str] = []

    def page(self, locale: str = "es-ES") -> Any:
        context = self.browser.new_context(
            locale=locale, base_url=self.origin, viewport={"width": 1100, "height": 800}
        )
        self.opened.append(context)
        tab = context.new_page()

        def console(message: Any) -> None:
            # a 4xx answer of a page is logged as a failed resource: the tests want those
            if message.type == "error" and "Failed to load resource" not in message.text:
                self.errors.append(message.text)

        tab.on("console", console)
        tab.on("pageerror", lambda e: self.errors.append(str(e)))
        return tab

    def close(self) -> None:
        for context in self.opened:
            context.close()


@pytest.fixture()
def people(browser: Any, site: Gateway) -> Iterator[Contexts]:
    contexts = Contexts(browser, site)
    yield contexts
    contexts.close()
    assert not contexts.errors, contexts.errors


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"console-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("CERTIFICA_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, SCREENSHOTS / path.name)


def log_in(page: Any, address: str, password: str = PASSWORD) -> None:
    page.goto("/app/login")
    page.fill("#address", address)
    page.fill("#password", password)
    page.click("#login button")


def cookie_of(page: Any) -> str | None:
    found = [c["value"] for c in page.context.cookies() if c["name"] == COOKIE]
    return found[0] if found else None


def cert_of(gw: Gateway, recipient: str) -> str:
    admin = ConsoleClient(gw)
    assert admin.login(ADMIN).status == 303
    return admin.cert_ids()[recipient]


def test_log_in_search_and_download(site: Gateway, people: Contexts, tmp_path: Path) -> None:
    page = people.page()
    page.goto("/app/")
    assert page.url.endswith("/app/login")
    assert page.locator("html").get_attribute("lang") == "es"
    assert page.inner_text("h1") == "Entrar"
    shot(page, "login", tmp_path)
    # the style sheet applied (the CSP let it in)
    assert page.eval_on_selector("#login button", "e => getComputedStyle(e).cursor") == "pointer"

    log_in(page, SENDER, "not the password")
    assert page.inner_text("#error") == "La dirección o la contraseña no son correctas."
    log_in(page, "nobody@example.com", "not the password")
    assert page.inner_text("#error") == "La dirección o la contraseña no son correctas."

    log_in(page, SENDER)
    page.wait_for_url("**/app/certificates")
    results = page.inner_text("#results")
    assert RECIPIENTS[SENDER] in results
    assert RECIPIENTS[OTHER_SENDER] not in results and RECIPIENTS[OUTSIDER] not in results
    assert page.inner_text("#me") == SENDER
    shot(page, "search", tmp_path)

    page.fill("#recipient", "carol")
    page.click("#search button")
    assert page.inner_text("#empty") == "Ningún certificado coincide con la búsqueda."
    page.fill("#recipient", "BOB@")
    page.select_option("#status", "delivery")
    page.click("#search button")
    assert page.locator("#results tbody tr").count() == 1
    today = datetime.now(UTC).date()
    page.fill("#since", str(today + timedelta(days=2)))  # issued before that day
    page.click("#search button")
    assert page.inner_text("#empty") == "Ningún certificado coincide con la búsqueda."
    page.fill("#since", str(today - timedelta(days=1)))
    page.fill("#until", str(today + timedelta(days=1)))
    page.click("#search button")
    assert page.locator("#results tbody tr").count() == 1
    assert page.input_value("#recipient") == "BOB@"  # the form keeps what was searched
    page.fill("#subject", "no such subject")
    page.click("#search button")
    assert page.inner_text("#empty") == "Ningún certificado coincide con la búsqueda."
    page.fill("#subject", "CONTRACT FOR")  # any case, any part
    page.click("#search button")
    assert page.locator("#results tbody tr").count() == 1
    assert "Contract for Bob" in page.inner_text("#results")

    page.click("#results tbody a")
    cert_id = page.inner_text("#cert-id")
    assert page.inner_text("h1") == "Certificado de entrega de un correo electrónico certificado"
    shot(page, "certificate", tmp_path)
    with page.expect_download() as download:
        page.click("#download")
    saved = tmp_path / "downloaded.pdf"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{cert_id}.pdf"
    assert saved.read_bytes() == (site.state / "certificates" / f"{cert_id}.pdf").read_bytes()
    checked = subprocess.run(["pdfsig", str(saved)], capture_output=True, text=True, timeout=60)
    assert "Signature is Valid" in checked.stdout, checked.stdout + checked.stderr


def test_a_sender_cannot_see_another_senders_certificate(site: Gateway, people: Contexts) -> None:
    other = cert_of(site, RECIPIENTS[OTHER_SENDER])
    page = people.page()
    log_in(page, SENDER)
    page.wait_for_url("**/app/certificates")
    assert RECIPIENTS[OTHER_SENDER] not in page.inner_text("main")
    hidden = page.goto(f"/app/certificates/{other}")
    assert hidden.status == 404
    said = page.inner_text("main")
    assert "Este documento no existe o usted no tiene permiso para verlo." in said
    missing = page.goto("/app/certificates/CF-0000000000000000")
    assert missing.status == 404 and page.inner_text("main") == said
    assert page.goto(f"/app/certificates/{other}/pdf").status == 404
    assert page.inner_text("main") == said


def test_an_auditor_sees_the_organisations_certificates_and_the_statement(
    site: Gateway, people: Contexts, tmp_path: Path
) -> None:
    page = people.page()
    log_in(page, AUDITOR)
    page.wait_for_url("**/app/certificates")
    results = page.inner_text("#results")
    assert RECIPIENTS[SENDER] in results and RECIPIENTS[OTHER_SENDER] in results
    assert RECIPIENTS[OUTSIDER] not in results  # another organisation's
    menu = page.inner_text("nav.menu")
    assert "Extracto" in menu and "Usuarios" not in menu
    assert page.goto("/app/users").status == 403
    assert "Su rol en la organización no le permite hacerlo." in page.inner_text("main")

    page.goto("/app/balance")
    assert page.inner_text("#balance") == "500"
    page.click("text=Ver el extracto")
    assert page.inner_text("#closing") == "500"
    assert "invoice 2026-117" in page.inner_text("#movements")
    shot(page, "statement", tmp_path)
    with page.expect_download() as download:
        page.click("#csv")
    csv = Path(download.value.path()).read_text()
    # the same document as `certifica credits statement --csv` (relay/statements.py)
    assert csv.splitlines()[0].startswith("date_utc,kind,product,message,certificate,")
    assert "purchase,,,,,500,500,invoice 2026-117," in csv
    assert csv.splitlines()[-1] == ",closing,,,,,500,500,,"


def test_an_admin_adds_disables_and_resets_a_user(
    site: Gateway, people: Contexts, tmp_path: Path
) -> None:
    admin = people.page()
    log_in(admin, ADMIN)
    admin.goto("/app/users")
    shot(admin, "users", tmp_path)
    admin.fill("#new-address", "newcomer@example.com")
    admin.select_option("#new-role", "sender")
    admin.click("#add-user button")
    password = admin.inner_text("#password")
    assert len(password) == 20

    newcomer = people.page("ca-ES")
    log_in(newcomer, "newcomer@example.com", password)
    newcomer.wait_for_url("**/app/certificates")
    assert newcomer.inner_text("#empty") == "Encara no té certificats."

    def act(button: str) -> None:
        admin.goto("/app/users")
        admin.click(f'tr[data-address="newcomer@example.com"] button[value="{button}"]')

    act("disable")
    assert "desactivado" in admin.inner_text("#note")
    newcomer.goto("/app/certificates")
    assert newcomer.url.endswith("/app/login")  # its session ended
    log_in(newcomer, "newcomer@example.com", password)
    assert newcomer.inner_text("#error").startswith("Aquest compte està desactivat.")

    act("enable")
    log_in(newcomer, "newcomer@example.com", password)
    newcomer.wait_for_url("**/app/certificates")

    act("reset")
    fresh = admin.inner_text("#password")
    assert fresh != password
    newcomer.goto("/app/certificates")
    assert newcomer.url.endswith("/app/login")  # the reset ended its session
    log_in(newcomer, "newcomer@example.com", password)
    assert newcomer.inner_text("#error") == "L'adreça o la contrasenya no són correctes."
    log_in(newcomer, "newcomer@example.com", fresh)
    newcomer.wait_for_url("**/app/certificates")


def test_second_factor_enrolment_login_and_a_replayed_code(
    site: Gateway, people: Contexts, tmp_path: Path
) -> None:
    page = people.page("it-IT")
    log_in(page, TOTP_USER)
    page.goto("/app/account")
    page.click("#totp-on")
    secret = page.inner_text("#secret").replace(" ", "")
    page.locator("#qr").screenshot(path=str(tmp_path / "qr.png"))
    read = subprocess.run(
        ["zbarimg", "--raw", "-q", str(tmp_path / "qr.png")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert read.stdout.strip() == pyotp.TOTP(secret).provisioning_uri(
        name=TOTP_USER, issuer_name="Certifica"
    )
    totp = pyotp.TOTP(secret)
    page.fill("#enrol-password", PASSWORD)  # asked again (a step-up)
    page.fill("#code", "000000" if totp.now() != "000000" else "111111")
    page.click("#enrol button")
    assert page.inner_text("#error").startswith("Questo codice non è corretto.")
    before = cookie_of(page)
    page.fill("#enrol-password", PASSWORD)
    page.fill("#code", totp.now())
    page.click("#enrol button")
    assert page.inner_text("#note") == "Il secondo fattore è attivo."
    assert cookie_of(page) != before  # a new session id

    page.click(".logout button")
    log_in(page, TOTP_USER)
    page.wait_for_url("**/app/code")
    owed = cookie_of(page)
    code = totp.at(time.time() + 30)  # the next step: the enrolment used this one
    page.fill("#code", code)
    page.click("#code-form button")
    page.wait_for_url("**/app/certificates")
    assert cookie_of(page) not in (None, owed)  # the second factor gave a new id

    page.click(".logout button")
    log_in(page, TOTP_USER)
    page.wait_for_url("**/app/code")
    page.fill("#code", code)
    page.click("#code-form button")
    assert page.inner_text("#error") == "Questo codice è già stato usato. Attenda il successivo."
    assert page.url.endswith("/app/code")


def test_own_app_passwords_made_and_revoked(
    site: Gateway, people: Contexts, tmp_path: Path
) -> None:
    page = people.page("ca-ES")
    log_in(page, SENDER)
    page.wait_for_url("**/app/certificates")
    page.goto("/app/account")
    assert page.inner_text("#no-app-passwords") == "No té cap contrasenya d'aplicació."
    page.fill("#device", "mòbil")
    page.fill("#device-password", PASSWORD)
    page.click("#add-app-password button")
    secret = page.inner_text("#app-password")
    assert re.fullmatch(r"[a-z2-7]{32}", secret)
    shot(page, "app-password", tmp_path)
    assert auth(site, SENDER, secret)[0] == 235
    page.click('#app-passwords tr[data-name="mòbil"] button')
    page.wait_for_url("**/app/account?done=revoked")
    assert page.inner_text("#note").startswith("La contrasenya d'aplicació s'ha retirat")
    assert page.locator("#app-passwords").count() == 0
    assert auth(site, SENDER, secret)[0] == 535


def test_a_form_without_the_token_or_from_another_site_is_refused(
    site: Gateway, people: Contexts
) -> None:
    page = people.page()
    log_in(page, ADMIN)
    page.wait_for_url("**/app/certificates")
    token = page.get_attribute(".logout input[name=csrf]", "value")
    origin = people.origin
    target = {"address": OTHER_SENDER}
    for form in (target, {**target, "csrf": "wrong"}):
        answer = page.request.post(
            f"{origin}/app/users/disable",
            form=form,
            headers={"Origin": origin, "Accept-Language": "es"},
        )
        assert answer.status == 403
        assert "No se ha aceptado este formulario" in answer.text()

    # another site (another port: same site for SameSite, so the cookie goes along)
    # posts the admin's own form, even with the right token: the origin refuses it
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _attacker_page(origin, token or ""))
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        with page.expect_navigation():
            page.click("button")
        assert page.inner_text("h1") == "Formulario no aceptado"
    finally:
        attacker.shutdown()
        attacker.server_close()
    users = ConsoleClient(site)
    users.login(ADMIN)
    assert 'data-address="other@example.com">' in users.get("/app/users").text
    row = users.get("/app/users").text.split('data-address="other@example.com">')[1]
    assert "Active" in row.split("</tr>")[0]  # still enabled


def _attacker_page(origin: str, token: str) -> type[BaseHTTPRequestHandler]:
    body = (
        f'<!doctype html><form method="post" action="{origin}/app/users/disable">'
        f'<input type="hidden" name="csrf" value="{token}">'
        f'<input type="hidden" name="address" value="{OTHER_SENDER}">'
        "<button>Win a prize</button></form>"
    ).encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    return Page


def test_a_cookie_planted_before_login_is_never_the_session(
    site: Gateway, people: Contexts
) -> None:
    attacker = ConsoleClient(site)
    assert attacker.login(OTHER_SENDER).status == 303
    planted = attacker.cookies[COOKIE]
    page = people.page()
    page.context.add_cookies(
        [
            {
                "name": COOKIE,
                "value": planted,
                "domain": "127.0.0.1",
                "path": "/",
                "secure": True,
                "httpOnly": True,
                "sameSite": "Strict",
            }
        ]
    )
    # the victim's login, through its browser with the planted cookie
    answer = page.request.post(
        f"{people.origin}/app/login",
        form={"address": SENDER, "password": PASSWORD},
        headers={"Origin": people.origin},
        max_redirects=0,
    )
    assert answer.status == 303
    assert cookie_of(page) not in (None, planted)
    page.goto("/app/certificates")
    assert page.inner_text("#me") == SENDER
    # and the planted id is no one's session now, not even the attacker's
    assert attacker.get("/app/certificates").status == 303

    # a random id planted: the same
    page.context.clear_cookies()
    page.context.add_cookies(
        [
            {
                "name": COOKIE,
                "value": "chosen-by-the-attacker",
                "domain": "127.0.0.1",
                "path": "/",
                "secure": True,
            }
        ]
    )
    log_in(page, SENDER)
    page.wait_for_url("**/app/certificates")
    assert cookie_of(page) not in (None, "chosen-by-the-attacker")

    # logging out ends the session on the server, not just in the browser
    kept = cookie_of(page)
    page.click(".logout button")
    assert page.inner_text("#note") == "Ha cerrado la sesión."
    replay = ConsoleClient(site, cookies={COOKIE: kept or ""})
    assert replay.get("/app/certificates").status == 303
