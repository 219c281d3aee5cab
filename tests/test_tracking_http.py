"""addendum.http over real HTTP on loopback: the pixel, the redirect, and what is refused.

The endpoint runs on 127.0.0.1 port 0 in the test's own event loop (``asyncio.run``);
the client is aiohttp's, with redirects never followed. The backend is a complete
in-memory implementation of ``TrackingBackend`` over a dict.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import random
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from addendum.http import PIXEL_GIF, TrackingEvent, make_app
from addendum.tokens import TokenCodec, TokenData

QID = "CF-0123456789ABCDEF"
TARGET = "https://example.com/contract?id=7&v=2#terms"


@dataclass
class MemoryBackend:
    """TrackingBackend over a dict: links by (qid, recipient, link), events in a list."""

    links: dict[tuple[str, int, int], str] = field(default_factory=dict)
    events: list[TrackingEvent] = field(default_factory=list)
    fail_record: bool = False

    async def link_url(self, qid: str, recipient_id: int, link: int) -> str | None:
        return self.links.get((qid, recipient_id, link))

    async def record(self, event: TrackingEvent) -> None:
        if self.fail_record:
            raise RuntimeError("database is locked")
        self.events.append(event)


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]


@asynccontextmanager
async def serving(
    codec: TokenCodec, backend: MemoryBackend, trusted: tuple[str, ...] = ()
) -> AsyncIterator[Callable[..., Awaitable[Answer]]]:
    runner = web.AppRunner(make_app(codec, backend, trusted))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as session:

            async def fetch(
                path: str, method: str = "GET", headers: dict[str, str] | None = None
            ) -> Answer:
                url = URL(f"http://127.0.0.1:{port}{path}", encoded=True)
                async with session.request(
                    method, url, allow_redirects=False, headers=headers
                ) as response:
                    return Answer(
                        response.status,
                        await response.read(),
                        response.headers.get("Content-Type", ""),
                        dict(response.headers),
                    )

            yield fetch
    finally:
        await runner.cleanup()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(os.urandom(32))


@pytest.fixture
def backend() -> MemoryBackend:
    return MemoryBackend(links={(QID, 7, 1): TARGET, (QID, 7, 2): "http://example.org/"})


def assert_plain_404(answer: Answer, missing: Answer) -> None:
    assert (answer.status, answer.body, answer.content_type) == (
        missing.status,
        missing.body,
        missing.content_type,
    )
    assert missing.status == 404
    assert "Location" not in answer.headers


def assert_security_headers(answer: Answer) -> None:
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


def test_open_pixel_and_click(codec: TokenCodec, backend: MemoryBackend) -> None:
    async def test() -> None:
        async with serving(codec, backend) as fetch:
            ua = "Mozilla/5.0 (Windows NT 10.0) Firefox/133.0"
            pixel = await fetch(
                "/o/" + codec.make(TokenData(QID, 7, 0)), headers={"User-Agent": ua}
            )
            assert pixel.status == 200
            assert pixel.content_type == "image/gif"
            assert pixel.body == PIXEL_GIF
            assert pixel.headers["Cache-Control"] == "no-store"
            assert_security_headers(pixel)
            try:
                from PIL import Image
            except ImportError:  # pragma: no cover - pillow comes with reportlab
                assert pixel.body.startswith(b"GIF89a\x01\x00\x01\x00")
            else:
                with Image.open(io.BytesIO(pixel.body)) as image:
                    assert image.size == (1, 1) and image.format == "GIF"
                    assert "transparency" in image.info

            clicked = await fetch("/c/" + codec.make(TokenData(QID, 7, 1)))
            assert clicked.status == 302
            assert clicked.headers["Location"] == TARGET
            assert_security_headers(clicked)

        opened, followed = backend.events
        assert (opened.kind, opened.qid, opened.recipient_id, opened.link, opened.url) == (
            "open", QID, 7, 0, None,
        )  # fmt: skip
        assert (opened.ip, opened.user_agent, opened.method) == ("127.0.0.1", ua, "GET")
        assert (followed.kind, followed.link, followed.url, followed.method) == (
            "click", 1, TARGET, "GET",
        )  # fmt: skip
        assert followed.time >= opened.time > 0

    run(test)


def test_head_works_for_both(codec: TokenCodec, backend: MemoryBackend) -> None:
    async def test() -> None:
        async with serving(codec, backend) as fetch:
            pixel = await fetch("/o/" + codec.make(TokenData(QID, 7, 0)), method="HEAD")
            assert (pixel.status, pixel.content_type, pixel.body) == (200, "image/gif", b"")
            assert pixel.headers["Content-Length"] == str(len(PIXEL_GIF))
            clicked = await fetch("/c/" + codec.make(TokenData(QID, 7, 2)), method="HEAD")
            assert clicked.status == 302
            assert clicked.headers["Location"] == "http://example.org/"
        assert [(e.kind, e.method) for e in backend.events] == [("open", "HEAD"), ("click", "HEAD")]

    run(test)


def test_redirect_abuse_gets_the_plain_404(codec: TokenCodec, backend: MemoryBackend) -> None:
    bad_urls = {
        11: "//evil.example/",
        12: "https://ok@evil.example/",
        13: "javascript:alert(1)",
        14: "https://ok.example/\r\nSet-Cookie: session=stolen",
        15: "https://ok.example/a\nb",
        16: "https://ok.example/a b",
        17: "https:\\\\evil.example",
        18: "/relative",
        19: "data:text/html,<script>alert(1)</script>",
        20: "https://\u00e9vil.example/",
        21: "",
    }
    for link, url in bad_urls.items():
        backend.links[(QID, 7, link)] = url

    async def test() -> None:
        async with serving(codec, backend) as fetch:
            missing = await fetch("/nothing")
            assert_security_headers(missing)
            attempts = [
                "/c/" + codec.make(TokenData(QID, 7, 3)),  # a link the message does not have
                "/c/" + codec.make(TokenData(QID, 8, 1)),  # another recipient
                "/c/" + codec.make(TokenData("CF-FFFFFFFFFFFFFFFF", 7, 1)),  # another message
                "/c/" + codec.make(TokenData(QID, 7, 0)),  # the pixel token on /c
                "/o/" + codec.make(TokenData(QID, 7, 1)),  # a link token on /o
                "/c/" + TokenCodec(os.urandom(32)).make(TokenData(QID, 7, 1)),  # other key
                *("/c/" + codec.make(TokenData(QID, 7, link)) for link in bad_urls),
                "/c/../../etc/passwd",
                "/c/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                "/o/..%2F..%2Fetc%2Fpasswd",
                "/c/" + codec.make(TokenData(QID, 7, 1)) + "/../../x",
                "/c/" + codec.make(TokenData(QID, 7, 1)) + "%0d%0aLocation:%20https://evil.example",
                "//evil.example/",
                "/c/",
                "/o/",
                "/c",
                "/",
            ]
            for path in attempts:
                assert_plain_404(await fetch(path), missing)
            post = await fetch("/c/" + codec.make(TokenData(QID, 7, 1)), method="POST")
            assert_plain_404(post, missing)
        assert backend.events == []

    run(test)


def test_random_tokens_get_the_plain_404(codec: TokenCodec, backend: MemoryBackend) -> None:
    rng = random.Random(1123)
    alphabet = string.ascii_letters + string.digits + "-_"

    async def test() -> None:
        async with serving(codec, backend) as fetch:
            missing = await fetch("/nothing")
            for i in range(1000):
                token = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 180)))
                answer = await fetch(("/o/" if i % 2 else "/c/") + token)
                assert_plain_404(answer, missing)
        assert backend.events == []

    run(test)


def test_forwarded_for_only_from_trusted_proxies(codec: TokenCodec, backend: MemoryBackend) -> None:
    pixel = "/o/" + codec.make(TokenData(QID, 7, 0))
    forwarded = {"X-Forwarded-For": "203.0.113.66, 198.51.100.23, 127.0.0.2"}

    async def test() -> None:
        async with serving(codec, backend) as fetch:  # nobody trusted
            await fetch(pixel, headers=forwarded)
        async with serving(codec, backend, ("127.0.0.0/8", "::1/128")) as fetch:
            await fetch(pixel, headers=forwarded)
            await fetch(pixel, headers={"X-Forwarded-For": "not-an-ip, 127.0.0.9"})
            await fetch(pixel)
        async with serving(codec, backend, ("10.0.0.0/8",)) as fetch:  # peer not trusted
            await fetch(pixel, headers=forwarded)

    run(test)
    # Untrusted peer: header ignored. Trusted peer: the right-most untrusted address
    # (127.0.0.2 is one of our proxies, 198.51.100.23 is who connected to it).
    assert [e.ip for e in backend.events] == [
        "127.0.0.1",
        "198.51.100.23",
        "127.0.0.9",
        "127.0.0.1",
        "127.0.0.1",
    ]


def test_user_agent_is_cut_and_cleaned(codec: TokenCodec, backend: MemoryBackend) -> None:
    """Raw requests: aiohttp's client refuses to send such headers, browsers may not."""
    agents = [
        "Evil\u202eBot\u2028 ".encode() + b"x" * 2000,
        b"Tab\there",
        b"Bad \xff\xfe UTF-8",
    ]

    async def test() -> None:
        runner = web.AppRunner(make_app(codec, backend))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            for agent in agents:
                reader, writer = await asyncio.open_connection(*runner.addresses[0][:2])
                writer.write(
                    b"GET /o/" + codec.make(TokenData(QID, 7, 0)).encode() + b" HTTP/1.1\r\n"
                    b"Host: track.example\r\nUser-Agent: " + agent + b"\r\n"
                    b"Connection: close\r\n\r\n"
                )
                answer = await reader.read()
                writer.close()
                await writer.wait_closed()
                assert answer.startswith(b"HTTP/1.1 200 ")
        finally:
            await runner.cleanup()

    run(test)
    long, tab, bad = (event.user_agent for event in backend.events)
    assert long.startswith("EvilBot x") and len(long) == 500
    assert tab == "Tab here"
    assert bad == "Bad \ufffd\ufffd UTF-8"


def test_failing_backend_record_still_answers(
    codec: TokenCodec, backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.fail_record = True

    async def test() -> None:
        async with serving(codec, backend) as fetch:
            pixel = await fetch("/o/" + codec.make(TokenData(QID, 7, 0)))
            assert (pixel.status, pixel.body) == (200, PIXEL_GIF)
            clicked = await fetch("/c/" + codec.make(TokenData(QID, 7, 1)))
            assert (clicked.status, clicked.headers["Location"]) == (302, TARGET)

    with caplog.at_level(logging.INFO, logger="certifica.addendum"):
        run(test)
    lines = [r for r in caplog.records if r.name == "certifica.addendum"]
    assert len(lines) == 2
    for record in lines:
        text = record.getMessage()
        assert text.startswith(QID + ": ") and "RuntimeError" in text
        assert "\n" not in text and record.exc_info is None
