"""App passwords (docs/accounts.md): made, listed and removed with ``certifica users
app-password``, and taken by SMTP AUTH: only them for a user with a second factor
(TOTP), either them or the account password for a user without one.

The second factor is set up by the web console; here it is written into the user's row
as the console would, so that these tests depend only on what SMTP reads of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.app_passwords import SECRET_BITS, new_secret, secret_hash
from relay.queue.store import Store
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_permissions import auth

WITH_TOTP = "tom@example.com"
WITHOUT = "nat@example.com"


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    cfg = write_config(tmp_path_factory.mktemp("apppw"), {"example.org": sink.port})
    cfg.write_text(cfg.read_text().replace("auth_delay = 0.2", "auth_delay = 0.01"))
    gw = start_gateway(cfg, {WITH_TOTP: PASSWORD, WITHOUT: PASSWORD})
    enrol_second_factor(gw, WITH_TOTP)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def enrol_second_factor(gw: Gateway, address: str) -> None:
    """Give ``address`` a TOTP secret as the console's enrolment writes it: one committed
    UPDATE of exactly its row, on a connection closed at once, so that no connection of
    this process stays open on the gateway's database (nor loses SQLite's locks when a
    test reads the database's files)."""
    with contextlib.closing(sqlite3.connect(gw.state / "queue.db", timeout=30)) as db, db:
        changed = db.execute(
            "UPDATE users SET totp_secret = 'JBSWY3DPEHPK3PXP' WHERE address = ?", (address,)
        ).rowcount
    assert changed == 1, f"no user {address} to enrol"


def add(gw: Gateway, address: str, name: str) -> str:
    out = gw.cli("users", "app-password", "add", address, "--name", name)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_secret_is_random_enough_and_only_its_sha256_is_kept(gateway: Gateway) -> None:
    assert SECRET_BITS >= 128
    secret = new_secret()
    assert re.fullmatch(r"[a-z2-7]{32}", secret) and secret != new_secret()
    assert secret_hash(secret) == hashlib.sha256(secret.encode()).hexdigest()
    assert secret_hash(secret.upper()[:16] + " " + secret[16:]) == secret_hash(secret)
    shown = add(gateway, WITHOUT, "laptop")
    for path in gateway.state.glob("queue.db*"):  # the database, its WAL
        assert shown.encode() not in path.read_bytes()
    listed = gateway.cli("users", "app-password", "list", WITHOUT)
    assert listed.returncode == 0 and shown not in listed.stdout
    assert re.search(r"^laptop\tadded \S+ \S+ UTC\tlast used never$", listed.stdout, re.M)


def test_with_a_second_factor_only_an_app_password_sends(gateway: Gateway, sink: Sink) -> None:
    assert auth(gateway, WITH_TOTP)[0] == 535  # the account password alone no longer sends
    secret = add(gateway, WITH_TOTP, "phone")
    assert auth(gateway, WITH_TOTP, secret)[0] == 235
    client = gateway.smtp(WITH_TOTP, secret)
    try:
        raw = make_message(subject="sent with an app password", sender=WITH_TOTP)
        client.sendmail(WITH_TOTP, ["bob@example.org", CERT_ADDRESS], raw)
    finally:
        client.quit()
    sink.wait_for(lambda got: any(b"sent with an app password" in m.data for m in got))
    listed = gateway.cli("users", "app-password", "list", WITH_TOTP).stdout
    assert re.search(r"^phone\tadded .* UTC\tlast used \d{4}-\d\d-\d\d \S+ UTC$", listed, re.M)
    assert auth(gateway, WITHOUT, secret)[0] == 535  # another user's app password: no
    # Removed, it stops working at once.
    out = gateway.cli("users", "app-password", "remove", WITH_TOTP, "--name", "phone")
    assert out.returncode == 0, out.stderr
    assert auth(gateway, WITH_TOTP, secret)[0] == 535
    again = gateway.cli("users", "app-password", "remove", WITH_TOTP, "--name", "phone")
    assert again.returncode == 2 and "no app password named 'phone'" in again.stderr


def test_without_a_second_factor_either_password_sends(gateway: Gateway) -> None:
    assert auth(gateway, WITHOUT)[0] == 235
    secret = add(gateway, WITHOUT, "tablet")
    assert auth(gateway, WITHOUT, secret)[0] == 235
    assert auth(gateway, WITHOUT, secret[:-1])[0] == 535


def test_the_operator_resets_a_lost_second_factor(gateway: Gateway) -> None:
    user = "lost@example.com"
    added = gateway.cli("users", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    enrol_second_factor(gateway, user)
    assert re.search(
        rf"^{re.escape(user)}\t.*\tTOTP yes\t", gateway.cli("users", "list").stdout, re.M
    )
    assert auth(gateway, user)[0] == 535
    out = gateway.cli("users", "set", user, "--no-totp")
    assert out.returncode == 0, out.stderr
    assert re.search(
        rf"^{re.escape(user)}\t.*\tTOTP no\t", gateway.cli("users", "list").stdout, re.M
    )
    assert auth(gateway, user)[0] == 235


def test_a_disabled_user_s_app_password_fails_like_a_wrong_one(gateway: Gateway) -> None:
    user = "gone@example.com"
    added = gateway.cli("users", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    secret = add(gateway, user, "phone")
    assert gateway.cli("users", "set", user, "--disable").returncode == 0
    assert auth(gateway, user, secret) == auth(gateway, user, "wrong password")
    assert auth(gateway, user, secret)[0] == 535


def test_app_password_refusals_are_one_sentence(gateway: Gateway) -> None:
    for args, fragment in (
        (("add", "nobody@example.com", "--name", "x"), "there is no user nobody@example.com"),
        (("add", WITHOUT, "--name", "   "), "--name must be"),
        (("list", "nobody@example.com"), "there is no user"),
    ):
        out = gateway.cli("users", "app-password", *args)
        assert out.returncode == 2 and fragment in out.stderr, out.stderr
        assert out.stderr.count("\n") <= 2 and "Traceback" not in out.stderr
    add(gateway, WITHOUT, "twice")
    dup = gateway.cli("users", "app-password", "add", WITHOUT, "--name", "twice")
    assert dup.returncode == 2 and "already" in dup.stderr


def test_what_auth_reads_is_the_database_as_it_is_now(tmp_path: Path) -> None:
    """The reads SMTP AUTH makes (the user's hash, its account) see another process's
    commit at the very next operation, also right after reading the same row: no account
    is cached and no read transaction outlives its operation, so a second factor turned
    on or a user disabled holds from the next AUTH on (docs/accounts.md)."""
    path = tmp_path / "queue.db"
    store = Store(path, 3600.0)
    try:
        assert store.add_user(WITH_TOTP, "hash", 1.0)

        def elsewhere(sql: str) -> None:  # another process: the console, `certifica users`
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as db, db:
                assert db.execute(sql, (WITH_TOTP,)).rowcount == 1

        async def scenario() -> None:
            before = await store.account(WITH_TOTP)
            assert before is not None and not before.totp and before.active
            elsewhere("UPDATE users SET totp_secret = 'JBSWY3DPEHPK3PXP' WHERE address = ?")
            after = await store.account(WITH_TOTP)
            assert after is not None and after.totp
            assert await store.user_hash(WITH_TOTP) == "hash"
            elsewhere("UPDATE users SET disabled = 1, password_hash = 'new' WHERE address = ?")
            assert await store.user_hash(WITH_TOTP) == "new"
            disabled = await store.account(WITH_TOTP)
            assert disabled is not None and not disabled.active

        asyncio.run(scenario())
    finally:
        store.close()
