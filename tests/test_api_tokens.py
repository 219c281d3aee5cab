"""The JSON API's tokens (docs/api.md): ``certifica token add|list|remove`` and whom a
presented token acts for (relay.queue.tokens), on a real store and the real command."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from relay.queue.states import Role
from relay.queue.store import Store
from relay.queue.tokens import LAST_USED_EVERY, TOKEN, token_hash
from relay.smtpd.users import hash_password
from tests.conftest import PASSWORD, run_cli, write_config


def _config(tmp_path: Path) -> Path:
    cfg = write_config(tmp_path, {})
    result = run_cli(cfg, "users", "add", "erp@example.com", "--password-stdin", stdin=PASSWORD)
    assert result.returncode == 0, result.stderr
    return cfg


def test_token_add_list_remove(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    added = run_cli(cfg, "token", "add", "ERP@example.com", "--name", "erp")
    assert added.returncode == 0, added.stderr
    token = added.stdout.splitlines()[-1]
    assert TOKEN.fullmatch(token)
    # the database keeps its hash only
    db = tmp_path / "state" / "queue.db"
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT address, name, token_hash FROM api_tokens").fetchall()
    assert stored == [("erp@example.com", "erp", token_hash(token))]
    assert token not in db.read_bytes().decode("latin-1")

    again = run_cli(cfg, "token", "add", "erp@example.com", "--name", "erp")
    assert again.returncode == 2
    assert "user erp@example.com has a token named erp already" in again.stderr
    assert "Traceback" not in again.stderr

    listed = run_cli(cfg, "token", "list", "erp@example.com")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("erp\tcreated ")
    assert listed.stdout.rstrip().endswith("last used never")
    assert token not in listed.stdout

    removed = run_cli(cfg, "token", "remove", "erp@example.com", "--name", "erp")
    assert removed.returncode == 0, removed.stderr
    assert run_cli(cfg, "token", "list", "erp@example.com").stdout == ""
    gone = run_cli(cfg, "token", "remove", "erp@example.com", "--name", "erp")
    assert gone.returncode == 2
    assert "has no token named erp" in gone.stderr


def test_token_refusals_are_one_sentence(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    nobody = run_cli(cfg, "token", "add", "nobody@example.com", "--name", "erp")
    assert nobody.returncode == 2
    assert "there is no user nobody@example.com" in nobody.stderr
    bad = run_cli(cfg, "token", "add", "erp@example.com", "--name", "no spaces")
    assert bad.returncode == 2
    assert "'no spaces' is not a token name" in bad.stderr
    for result in (nobody, bad):
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_a_token_acts_for_its_active_user_until_its_credentials_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "queue.db", 3600.0)
    try:
        store.add_user("a@example.com", hash_password(PASSWORD), 1000.0, role="auditor")
        token = "cfk_" + "A" * 43
        assert store.add_token("a@example.com", "erp", token, 1001.0)
        assert not store.add_token("a@example.com", "erp", "cfk_" + "B" * 43, 1001.0)

        who = asyncio.run(store.token_user(token, 2000.0))
        assert who is not None and who.address == "a@example.com" and who.role == Role.AUDITOR
        assert asyncio.run(store.token_user("cfk_" + "B" * 43, 2000.0)) is None
        assert asyncio.run(store.token_user(token + "x", 2000.0)) is None
        assert asyncio.run(store.token_user("", 2000.0)) is None

        # last_used: written at the first use, then at most once a minute
        assert store.tokens_of("a@example.com")[0].last_used == 2000.0
        asyncio.run(store.token_user(token, 2000.0 + LAST_USED_EVERY - 1))
        assert store.tokens_of("a@example.com")[0].last_used == 2000.0
        asyncio.run(store.token_user(token, 2000.0 + LAST_USED_EVERY))
        assert store.tokens_of("a@example.com")[0].last_used == 2000.0 + LAST_USED_EVERY

        # a disabled organisation, then a disabled user: 401 like no token
        assert store.set_organisation("default", disabled=True)
        assert asyncio.run(store.token_user(token, 3000.0)) is None
        assert store.set_organisation("default", disabled=False)
        assert asyncio.run(store.token_user(token, 3000.0)) is not None
        assert store.set_membership("a@example.com", disabled=True, now=3001.0)
        assert asyncio.run(store.token_user(token, 3002.0)) is None
        # enabled again, the token made before the change stays void; a new one works
        assert store.set_membership("a@example.com", disabled=False)
        assert asyncio.run(store.token_user(token, 3003.0)) is None
        fresh = "cfk_" + "C" * 43
        assert store.add_token("a@example.com", "erp2", fresh, 3004.0)
        assert asyncio.run(store.token_user(fresh, 3005.0)) is not None

        # a user removed and added again does not inherit its old tokens
        assert store.remove_user("a@example.com")
        store.add_user("a@example.com", hash_password(PASSWORD), 4000.0)
        assert asyncio.run(store.token_user(fresh, 4001.0)) is None
    finally:
        store.close()
