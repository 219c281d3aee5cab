"""The console's sessions and second factor in the store (:mod:`relay.queue.sessions`),
on a real database, with the clock given: idle and absolute expiry, credentials changed
after a session began, only the id's hash stored, a TOTP step accepted once, wrong codes
counted per session and per user within a window, app passwords void once the
credentials change; and the TOTP codes themselves (:mod:`relay.web.console.totp`) against RFC 6238's test vector.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pyotp

from relay.queue import app_passwords
from relay.queue.sessions import ACCOUNT_WRONG_CODES, SESSION_WRONG_CODES, SessionStage
from relay.queue.store import Store
from relay.smtpd.users import hash_password
from relay.web.console import totp
from relay.web.console.base import session_hash

IDLE, LONGEST = 1800.0, 43200.0
T0 = 1_800_000_000.0


def store_with_user(tmp_path: Path) -> Store:
    store = Store(tmp_path / "queue.db", 3600.0)
    store.add_user("ana@example.com", hash_password("a long password"), T0)
    return store


def begin(
    store: Store,
    session_id: str,
    now: float,
    replaces: str | None = None,
    stage: SessionStage = SessionStage.FULL,
) -> None:
    asyncio.run(
        store.begin_session(
            session_hash(session_id),
            "ana@example.com",
            "csrf-token",
            stage,
            now,
            "192.0.2.1",
            "test",
            replaces=replaces,
            idle=IDLE,
            longest=LONGEST,
        )
    )


def alive(store: Store, session_id: str, now: float) -> bool:
    found = asyncio.run(store.web_session(session_hash(session_id), now, IDLE, LONGEST))
    return found is not None


def test_idle_and_absolute_expiry(tmp_path: Path) -> None:
    with store_with_user(tmp_path) as store:
        begin(store, "one", T0)
        assert alive(store, "one", T0 + IDLE - 1)
        assert not alive(store, "one", T0 + IDLE - 1 + IDLE + 1)  # idle since the last view
        begin(store, "two", T0)
        now = T0
        while now < T0 + LONGEST - 600:  # seen every 10 minutes: never idle
            now += 600
            assert alive(store, "two", now)
        assert not alive(store, "two", T0 + LONGEST + 1)  # the absolute end
        assert not alive(store, "two", T0 + 10)  # deleted, not just refused


def test_only_the_hash_is_stored_and_login_replaces_the_old_session(tmp_path: Path) -> None:
    with store_with_user(tmp_path) as store:
        begin(store, "planted", T0)
        begin(store, "fresh", T0 + 1, replaces=session_hash("planted"))
        assert not alive(store, "planted", T0 + 2)
        assert alive(store, "fresh", T0 + 2)
        raw = (tmp_path / "queue.db").read_bytes() + (tmp_path / "queue.db-wal").read_bytes()
        assert b"fresh" not in raw
        assert hashlib.sha256(b"fresh").hexdigest().encode() in raw


def test_a_password_reset_or_a_disabled_user_ends_its_sessions(tmp_path: Path) -> None:
    with store_with_user(tmp_path) as store:
        begin(store, "one", T0)
        asyncio.run(store.replace_password("ana@example.com", hash_password("another one"), T0 + 5))
        assert not alive(store, "one", T0 + 6)
        begin(store, "two", T0 + 10)
        assert alive(store, "two", T0 + 11)
        store.set_membership("ana@example.com", disabled=True, now=T0 + 12)
        assert not alive(store, "two", T0 + 13)


def test_a_totp_step_is_accepted_once(tmp_path: Path) -> None:
    with store_with_user(tmp_path) as store:
        secret = totp.new_secret()
        asyncio.run(store.set_totp("ana@example.com", secret, 100, T0))
        assert asyncio.run(store.totp_of("ana@example.com")) == (secret, 100)
        accept = store.accept_totp_step
        assert not asyncio.run(accept("ana@example.com", 100))  # the enrolment's code
        assert asyncio.run(accept("ana@example.com", 101))
        assert not asyncio.run(accept("ana@example.com", 101))  # replayed
        assert not asyncio.run(accept("ana@example.com", 99))  # older
        asyncio.run(store.set_totp("ana@example.com", None, None, T0 + 1))
        assert asyncio.run(store.totp_of("ana@example.com")) is None


def test_totp_codes_follow_rfc_6238() -> None:
    # RFC 6238 appendix B, SHA-1, T = 59 s: 94287082 (eight digits); six: 287082
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"  # base32 of "12345678901234567890"
    assert pyotp.TOTP(secret, digits=8).at(59) == "94287082"
    assert totp.matching_step(secret, "287082", 59) == 1
    assert totp.matching_step(secret, "287082", 59 + 30) == 1  # one step late: accepted
    assert totp.matching_step(secret, "287082", 59 + 60) is None  # two: refused
    assert totp.matching_step(secret, "28708", 59) is None
    assert totp.matching_step("not a secret", "287082", 59) is None


def serve_console(tmp_path: Path, console: str) -> tuple[int, dict[str, str], str]:
    """GET /app/login from the HTTP listener's application with ``[console]`` set so."""
    import aiohttp
    from aiohttp import web

    from relay.config import load_config
    from relay.web.tracking import StoreBackend, make_http_runner

    (tmp_path / "state").mkdir(mode=0o700, parents=True)
    (tmp_path / "config.toml").write_text(
        f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[console]\n{console}\n'
    )
    cfg = load_config(tmp_path / "config.toml")

    async def fetch() -> tuple[int, dict[str, str], str]:
        with Store(tmp_path / "state" / "queue.db", 3600.0) as store:
            runner = await make_http_runner(cfg, b"k" * 32, StoreBackend(cfg, store, None))
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            try:
                async with aiohttp.ClientSession() as session:
                    url = f"http://127.0.0.1:{port}/app/login"
                    async with session.get(url, headers={"Accept-Language": "ca"}) as answer:
                        return answer.status, dict(answer.headers), await answer.text()
            finally:
                await runner.cleanup()

    return asyncio.run(fetch())


def test_the_console_is_there_only_when_enabled(tmp_path: Path) -> None:
    status, headers, body = serve_console(tmp_path / "on", "enabled = true")
    assert status == 200 and "<h1>Entrar</h1>" in body
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy
    assert "form-action 'self'" in policy and "frame-ancestors 'none'" in policy
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["Cache-Control"] == "no-store"
    status, _, body = serve_console(tmp_path / "off", "enabled = false")
    assert status == 404 and "Entrar" not in body


WINDOW = 900.0


def test_wrong_codes_end_a_session_and_refuse_the_users_codes_for_a_window(
    tmp_path: Path,
) -> None:
    ana = "ana@example.com"
    with store_with_user(tmp_path) as store:
        begin(store, "owes", T0, stage=SessionStage.PASSWORD)
        for n in range(1, SESSION_WRONG_CODES + 1):
            counted = asyncio.run(store.wrong_code(session_hash("owes"), ana, T0 + n, WINDOW))
            assert counted.session_ended == (n == SESSION_WRONG_CODES)
            assert alive(store, "owes", T0 + n) == (n < SESSION_WRONG_CODES)
        # the window passes: the user's count begins again
        later = T0 + WINDOW + 10
        for n in range(1, ACCOUNT_WRONG_CODES + 1):
            counted = asyncio.run(store.wrong_code(None, ana, later + n, WINDOW))
            assert counted.codes_refused == (n == ACCOUNT_WRONG_CODES)
            assert asyncio.run(store.codes_refused(ana, later + n)) == (n == ACCOUNT_WRONG_CODES)
        locked_at = later + ACCOUNT_WRONG_CODES
        assert asyncio.run(store.codes_refused(ana, locked_at + WINDOW - 1))
        assert not asyncio.run(store.codes_refused(ana, locked_at + WINDOW + 1))


def test_a_right_code_sets_the_users_count_back(tmp_path: Path) -> None:
    ana = "ana@example.com"
    with store_with_user(tmp_path) as store:
        asyncio.run(store.set_totp(ana, totp.new_secret(), 100, T0))
        for n in range(ACCOUNT_WRONG_CODES - 1):
            asyncio.run(store.wrong_code(None, ana, T0 + n, WINDOW))
        assert asyncio.run(store.accept_totp_step(ana, 101))
        counted = asyncio.run(store.wrong_code(None, ana, T0 + 20, WINDOW))
        assert not counted.codes_refused  # 1 since the right code, not 10


def test_app_passwords_made_before_the_credentials_changed_are_void(tmp_path: Path) -> None:
    ana = "ana@example.com"
    with store_with_user(tmp_path) as store:
        secret = store.add_app_password(ana, "phone", T0 + 1)
        assert secret is not None
        found = store.run_sync(lambda db: app_passwords.matching(db.conn, ana, secret), read=True)
        assert found is not None
        asyncio.run(store.replace_password(ana, hash_password("another one"), T0 + 5))
        found = store.run_sync(lambda db: app_passwords.matching(db.conn, ana, secret), read=True)
        assert found is None
        assert store.app_passwords_now(ana) == []
        again = store.add_app_password(ana, "phone", T0 + 6)  # the void one's name is free
        assert again is not None and again != secret
        assert [p.name for p in store.app_passwords_now(ana)] == ["phone"]
        store.set_membership(ana, disabled=True, now=T0 + 7)
        store.set_membership(ana, disabled=False, now=T0 + 8)
        assert store.app_passwords_now(ana) == []
