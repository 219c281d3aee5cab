"""Credentials that end with the account's (docs/accounts.md, docs/console.md): an app
password made before a password reset, or before the user was disabled and enabled
again, no longer authenticates SMTP; the user lists, makes and revokes its own app
passwords on its console account page; wrong second-factor codes end their session
after 5 and lock the account's codes after 10, from whatever addresses; turning the
second factor on or off asks for the password again.

One gateway for the module; each test has users of its own, and comes from loopback
addresses of its own (127.0.0.0/8 all reaches the gateway) so that one test's failures
in the per-address lockout do not block another's.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from urllib.parse import urljoin

import pyotp
import pytest

from relay.queue.sessions import ACCOUNT_WRONG_CODES, SESSION_WRONG_CODES
from tests.conftest import PASSWORD, Gateway, Sink, start_gateway, write_config
from tests.console_site import ADMIN, ConsoleClient, add_organisation
from tests.test_permissions import auth

SECRET = (
    "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # a TOTP secret (base32), written as the console enrols it
)
RESET = "reset@example.com"
CYCLED = "cycled@example.com"
OWNER = "owner@example.com"
GUESSED = "guessed@example.com"
FORGETFUL = "forgetful@example.com"
HIJACKED = "hijacked@example.com"
OPERATED = "operated@example.com"
MEMBERS = {
    ADMIN: "admin",
    RESET: "sender",
    CYCLED: "sender",
    OWNER: "sender",
    GUESSED: "sender",
    FORGETFUL: "sender",
    HIJACKED: "sender",
    OPERATED: "sender",
}
WINDOW = 900  # [limits] auth_block_window's default


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    cfg = write_config(tmp_path_factory.mktemp("credentials"), {"example.org": mx.port})
    cfg.write_text(cfg.read_text().replace("auth_delay = 0.2", "auth_delay = 0.01"))
    gateway = start_gateway(cfg)
    add_organisation(gateway, members=MEMBERS)
    with sqlite3.connect(gateway.state / "queue.db", timeout=10) as db:
        for address in (GUESSED, FORGETFUL):
            db.execute("UPDATE users SET totp_secret = ? WHERE address = ?", (SECRET, address))
    yield gateway
    gateway.stop()


def app_password(gw: Gateway, address: str, name: str) -> str:
    out = gw.cli("users", "app-password", "add", address, "--name", name)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def admin(gw: Gateway, source: str) -> ConsoleClient:
    client = ConsoleClient(gw, source=source)
    assert client.login(ADMIN).status == 303
    return client


# --- finding 3: app passwords end with the credentials ------------------------------------


def test_an_app_password_made_before_a_reset_is_refused(gw: Gateway) -> None:
    secret = app_password(gw, RESET, "phone")
    assert auth(gw, RESET, secret)[0] == 235
    client = admin(gw, "127.0.1.1")
    reset = client.post("/app/users/reset", {"csrf": client.token("/app/users"), "address": RESET})
    assert reset.status == 200, reset.text
    new_password = re.search(r'id="password">([^<]+)<', reset.text)
    assert new_password is not None
    refused = auth(gw, RESET, secret)
    assert refused[0] == 535
    assert auth(gw, RESET, "not the password") == refused  # the same reply as a wrong one
    assert auth(gw, RESET, new_password.group(1))[0] == 235
    listed = gw.cli("users", "app-password", "list", RESET)
    assert listed.returncode == 0 and "phone" not in listed.stdout
    # the name is free again, and a new one works
    assert auth(gw, RESET, app_password(gw, RESET, "phone"))[0] == 235


def test_an_app_password_made_before_a_disable_and_enable_is_refused(gw: Gateway) -> None:
    secret = app_password(gw, CYCLED, "phone")
    assert auth(gw, CYCLED, secret)[0] == 235
    client = admin(gw, "127.0.1.2")
    for action in ("disable", "enable"):
        done = client.post(
            f"/app/users/{action}", {"csrf": client.token("/app/users"), "address": CYCLED}
        )
        assert done.status == 303, done.text
    assert auth(gw, CYCLED, secret)[0] == 535
    assert auth(gw, CYCLED)[0] == 235  # the account password (no second factor) still works


def test_an_app_password_made_before_the_operators_reset_is_refused(gw: Gateway) -> None:
    """``certifica users set --password-stdin`` (the store's ``set_user``, which the API's
    reset calls too), then ``--no-totp`` for a user with a second factor."""
    secret = app_password(gw, OPERATED, "phone")
    out = gw.cli("users", "set", OPERATED, "--password-stdin", stdin="a new long password\n")
    assert out.returncode == 0, out.stderr
    assert auth(gw, OPERATED, secret)[0] == 535
    assert auth(gw, OPERATED, "a new long password")[0] == 235
    with sqlite3.connect(gw.state / "queue.db", timeout=10) as db:
        db.execute("UPDATE users SET totp_secret = ? WHERE address = ?", (SECRET, OPERATED))
    second = app_password(gw, OPERATED, "tablet")
    assert auth(gw, OPERATED, second)[0] == 235
    assert gw.cli("users", "set", OPERATED, "--no-totp").returncode == 0
    assert auth(gw, OPERATED, second)[0] == 535


def test_a_user_lists_makes_and_revokes_its_own_app_passwords(gw: Gateway) -> None:
    made = app_password(gw, OWNER, "laptop")
    client = ConsoleClient(gw, source="127.0.1.3")
    assert client.login(OWNER).status == 303
    page = client.get("/app/account")
    assert page.status == 200 and 'data-name="laptop"' in page.text and made not in page.text

    token = page.csrf()
    refused = client.post(
        "/app/account/app-passwords", {"csrf": token, "name": "phone", "password": "wrong"}
    )
    assert refused.status == 403 and "Your password is not right." in refused.text
    shown = client.post(
        "/app/account/app-passwords", {"csrf": token, "name": "phone", "password": PASSWORD}
    )
    assert shown.status == 200, shown.text
    secret = re.search(r'id="app-password">([a-z2-7]{32})<', shown.text)
    assert secret is not None
    assert auth(gw, OWNER, secret.group(1))[0] == 235
    again = client.get("/app/account")
    assert 'data-name="phone"' in again.text and secret.group(1) not in again.text  # once
    taken = client.post(
        "/app/account/app-passwords", {"csrf": token, "name": "phone", "password": PASSWORD}
    )
    assert taken.status == 409

    revoked = client.post("/app/account/app-passwords/revoke", {"csrf": token, "name": "laptop"})
    assert revoked.status == 303
    after = client.get(urljoin("/app/account/app-passwords/revoke", revoked.headers["Location"]))
    assert after.status == 200
    assert "The app password was revoked" in after.text
    assert 'data-name="laptop"' not in after.text and 'data-name="phone"' in after.text
    assert auth(gw, OWNER, made)[0] == 535
    assert auth(gw, OWNER, secret.group(1))[0] == 235
    # without the session's token, nothing is revoked
    forged = client.post("/app/account/app-passwords/revoke", {"csrf": "x", "name": "phone"})
    assert forged.status == 403
    assert auth(gw, OWNER, secret.group(1))[0] == 235


# --- finding 4: wrong second-factor codes -------------------------------------------------


def wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


def password_stage(gw: Gateway, address: str, source: str) -> ConsoleClient:
    client = ConsoleClient(gw, source=source)
    login = client.login(address)
    assert login.status == 303 and login.headers["Location"].endswith("code")
    return client


def test_wrong_codes_end_the_session_then_lock_the_account_from_any_address(
    gw: Gateway,
) -> None:
    totp = pyotp.TOTP(SECRET)
    first = password_stage(gw, GUESSED, "127.0.2.1")
    token = first.token("/app/code")
    for _ in range(SESSION_WRONG_CODES - 1):
        assert first.post("/app/code", {"csrf": token, "code": wrong(totp.now())}).status == 401
    ended = first.post("/app/code", {"csrf": token, "code": wrong(totp.now())})
    assert ended.status == 401 and "Too many wrong codes. Please log in again." in ended.text
    assert ended.cookie() == ""  # the cookie is cleared
    # the same (ended) session, even from another address with the right code: refused
    first.source = "127.0.2.9"
    assert first.post("/app/code", {"csrf": token, "code": totp.now()}).status == 403

    # another session, from other addresses: the account's count goes on
    second = password_stage(gw, GUESSED, "127.0.2.2")
    token = second.token("/app/code")
    for n in range(ACCOUNT_WRONG_CODES - SESSION_WRONG_CODES):
        second.source = f"127.0.2.{10 + n}"
        assert second.post("/app/code", {"csrf": token, "code": wrong(totp.now())}).status == 401
    third = password_stage(gw, GUESSED, "127.0.2.3")
    refused = third.post("/app/code", {"csrf": third.token("/app/code"), "code": totp.now()})
    assert refused.status == 429
    assert "codes are refused for a while" in refused.text
    assert third.get("/app/certificates").status == 303  # still not logged in
    with sqlite3.connect(gw.state / "queue.db", timeout=10) as db:
        until = db.execute(
            "SELECT codes_refused_until FROM users WHERE address = ?", (GUESSED,)
        ).fetchone()[0]
    assert time.time() < until <= time.time() + WINDOW
    locked = [line for line in gw.log().splitlines() if f"codes of <{GUESSED}> refused" in line]
    assert len(locked) == 1, locked


def test_a_right_code_sets_the_counts_back(gw: Gateway) -> None:
    totp = pyotp.TOTP(SECRET)
    for round_, source in enumerate(("127.0.3.1", "127.0.3.2")):
        client = password_stage(gw, FORGETFUL, source)
        token = client.token("/app/code")
        for _ in range(SESSION_WRONG_CODES - 1):
            assert (
                client.post("/app/code", {"csrf": token, "code": wrong(totp.now())}).status == 401
            )
        # after 4 wrong ones the right one is accepted (a later step the second time:
        # a code is accepted once), and 8 wrong ones in all lock nothing
        code = totp.now() if round_ == 0 else totp.at(time.time() + 30)
        accepted = client.post("/app/code", {"csrf": token, "code": code})
        assert accepted.status == 303 and accepted.headers["Location"].endswith("certificates")
    with sqlite3.connect(gw.state / "queue.db", timeout=10) as db:
        row = db.execute(
            "SELECT wrong_codes, codes_refused_until FROM users WHERE address = ?", (FORGETFUL,)
        ).fetchone()
    assert row == (0, None)


# --- finding 5: the second factor changes only with the password --------------------------


def test_turning_the_second_factor_on_or_off_needs_the_password(gw: Gateway) -> None:
    client = ConsoleClient(gw, source="127.0.4.1")
    assert client.login(HIJACKED).status == 303
    page = client.get("/app/account/totp")
    secret = re.search(r'name="secret" value="([A-Z2-7]+)"', page.text)
    assert secret is not None
    totp = pyotp.TOTP(secret.group(1))
    form = {"csrf": page.csrf(), "secret": secret.group(1), "code": totp.now()}
    for password in ("", "not the password"):
        refused = client.post("/app/account/totp", {**form, "password": password})
        assert refused.status == 403 and "Your password is not right." in refused.text
    with sqlite3.connect(gw.state / "queue.db", timeout=10) as db:
        stored = db.execute(
            "SELECT totp_secret FROM users WHERE address = ?", (HIJACKED,)
        ).fetchone()
    assert stored == (None,)

    assert client.post("/app/account/totp", {**form, "password": PASSWORD}).status == 303
    token = client.token()
    off = {"csrf": token, "code": totp.at(time.time() + 30)}
    refused = client.post("/app/account/totp/off", {**off, "password": "not the password"})
    assert refused.status == 403 and "Your password is not right." in refused.text
    assert 'id="totp-off"' in client.get("/app/account").text  # still on
    done = client.post("/app/account/totp/off", {**off, "password": PASSWORD})
    assert done.status == 303 and done.headers["Location"].endswith("account?done=off")
