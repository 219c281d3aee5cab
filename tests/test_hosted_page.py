"""The hosted page's routes on their own (relay/web/hosted.py), on a real HTTP server with
a real store: the rate limit, and one identical 404 for every path that is not a live
link. The flows through the whole gateway are in tests/test_hosted.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import load_config
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.web import hosted


async def _serve(tmp: Path, rate: int) -> tuple[web.AppRunner, str, Store]:
    cfg_file = tmp / "config.toml"
    cfg_file.write_text(f'[gateway]\nstate_dir = "state"\n[web]\nrate_limit = {rate}\n')
    cfg = load_config(cfg_file)
    store = Store(tmp / "queue.db", 30.0)
    app = web.Application()
    hosted.install(app, cfg, store, Spool(tmp / "spool"), b"k" * 32)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}", store


def test_unknown_links_are_rate_limited_and_answered_alike(tmp_path: Path) -> None:
    async def run() -> None:
        runner, base, store = await _serve(tmp_path, rate=5)
        try:
            async with aiohttp.ClientSession() as client:
                answers = []
                for path in ("/h/" + "B" * 43, "/h/x", "/h/" + "C" * 43 + "/open", "/h/a/b/c"):
                    method = client.post if path.endswith("/open") else client.get
                    async with method(base + path) as response:
                        answers.append((response.status, await response.read()))
                assert {a[0] for a in answers} == {404}
                assert len({a[1] for a in answers}) == 1
                statuses = []
                for _ in range(5):
                    async with client.get(base + "/h/" + "D" * 43) as response:
                        statuses.append(response.status)
                        retry = response.headers.get("Retry-After")
                assert statuses[-1] == 429 and retry is not None and int(retry) >= 1
                assert 404 in statuses
        finally:
            await runner.cleanup()
            store.close()

    asyncio.run(run())


def test_retention_keeps_hosted_content_until_the_links_expire(tmp_path: Path) -> None:
    """``[retention] content_days`` counts from a hosted message's last expiry."""
    from relay.queue.hosted import kept_for_hosting

    store = Store(tmp_path / "queue.db", 30.0)
    day = 86400.0
    try:

        def check(db: object) -> None:
            conn = db.conn  # type: ignore[attr-defined]
            conn.execute(
                "INSERT INTO hosted_links (recipient_id, qid, token_sha256, mode, created,"
                " expires, state) VALUES (1, 'Q1', 'h1', 'hosted', 0, ?, 'waiting')",
                (10 * day,),
            )
            assert kept_for_hosting(conn, ["Q1", "Q2"], 5 * day, 30) == {"Q1"}  # open
            assert kept_for_hosting(conn, ["Q1"], 39 * day, 30) == {"Q1"}  # expired 29 days ago
            assert kept_for_hosting(conn, ["Q1"], 41 * day, 30) == set()  # then it may go

        store.run_sync(check)
    finally:
        store.close()


def test_a_typed_name_and_comment_keep_no_control_or_bidi_characters() -> None:
    """What a recipient typed is kept as they saw it: no NUL, BEL or U+202E (which would
    make "Ivan" read otherwise in the certificate), spaces made one, a name one line."""
    from relay.web.hosted import typed_text

    assert typed_text("Ivan\x00 \u202ePetrov\u202c\x07", 200, lines=False) == "Ivan Petrov"
    assert typed_text("Read\r\nand\tunderstood.\n\n", 2000, lines=True) == "Read\nand understood."
    assert typed_text("x" * 300, 200, lines=False) == "x" * 200


@settings(max_examples=300, deadline=None)
@given(st.text(), st.booleans())
def test_typed_text_never_keeps_an_invisible_character(text: str, lines: bool) -> None:
    import unicodedata

    from relay.web.hosted import typed_text

    kept = typed_text(text, 500, lines=lines)
    assert len(kept) <= 500
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Co", "Cs", "Cn") or c == "\n"
               for c in kept)  # fmt: skip
    assert lines or "\n" not in kept
