"""Tracking through the running gateway, with the settings an operator changes: a
non-zero ``addendum_interval``, ``never_domains`` and ``trusted_proxies``.

The client is aiohttp's (redirects never followed). Events are read back from what the
sender can get: the addendum mails and ``certifica addendum CERT-ID``. Nothing sleeps:
every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import string
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from addendum.tokens import TokenCodec, TokenData
from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_tracking_e2e import (
    BROWSER_UA,
    SIGN_URL,
    TERMS_URL,
    addenda,
    copy_for,
    free_port,
    html_message,
)

INTERVAL = 3600.0  # far longer than the test: a second addendum would be a bug
HOLD = threading.Event()
TRUSTED_PROXY = "127.0.0.2"  # loopback too, so the test can connect from it
OFFICE_PROBE = "Microsoft Office Existence Discovery"


@dataclass
class Tracked:
    gw: Gateway
    sink: Sink
    base: str  # http://127.0.0.1:port

    def codec(self) -> TokenCodec:
        return TokenCodec((self.gw.state / "keys" / "tracking.key").read_bytes())


@pytest.fixture(scope="module")
def tracked(sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracked]:
    # held@example.org is refused with 451 until HOLD is set: a recipient still
    # deferred while the others' copies are out, for as long as a test needs.
    def rcpt(address: str) -> str | None:
        if address.startswith("held@") and not HOLD.is_set():
            return "451 4.3.0 Try again later"
        return None

    sink = sink_server.start(Sink(rcpt_reply=rcpt))
    tmp = tmp_path_factory.mktemp("trackgw")
    port = free_port()
    domains = ("example.org", "example.com", "court.example", "mail.court.example")
    cfg = write_config(tmp, {**dict.fromkeys(domains, sink.port), "notcourt.example": sink.port})
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += (
        f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n[tracking]\nenabled = true\n'
        f"addendum_interval = {INTERVAL}\nfast_seconds = 0.0\n"
        'never_domains = ["court.example"]\n'
        f'trusted_proxies = ["{TRUSTED_PROXY}/32"]\n'
    )
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield Tracked(gw, sink, f"http://127.0.0.1:{port}")
    gw.stop()
    assert_clean_log(gw.log())


# ---------------------------------------------------------------------------
# helpers


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]  # in order, Date left out
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Answer:
    async with session.request(
        method,
        URL(url, encoded=True),
        allow_redirects=False,
        headers={"User-Agent": BROWSER_UA, **(headers or {})},
    ) as response:
        return Answer(
            response.status,
            response.reason or "",
            tuple((k, v) for k, v in response.headers.items() if k.lower() != "date"),
            await response.read(),
        )


def client(local: str = "127.0.0.1") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(local, 0)))


def html_of(got: Received) -> str:
    part = got.message.get_body(("html",))
    assert part is not None, got.data[:2000]
    return str(part.get_content())


def tracking_urls(got: Received, base: str) -> tuple[list[str], list[str]]:
    """The click and pixel URLs of a recipient's HTML part, in order."""
    html = html_of(got)
    esc = re.escape(base)
    clicks = re.findall(rf'href="({esc}/c/[A-Za-z0-9_-]+)"', html)
    pixels = re.findall(rf'src="({esc}/o/[A-Za-z0-9_-]+)"', html)
    return clicks, pixels


def cert_id_of(mail: Received) -> str:
    found = re.search(r"CF-[0-9A-F]{16}", mail.message["Subject"] or "")
    assert found, mail.message["Subject"]
    return found.group(0)


def addendum_now(gw: Gateway, cert_id: str, dest: Path) -> dict[str, Any]:
    """``certifica addendum CERT-ID``: the evidence file of the addendum signed now."""
    dest.mkdir()
    pdf = dest / "addendum.pdf"
    with open(pdf, "wb") as out:
        result = subprocess.run(
            [CERTIFICA, "-c", str(gw.config), "addendum", cert_id],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    return pdf_evidence(pdf, dest)


def pdf_evidence(pdf: Path, dest: Path) -> dict[str, Any]:
    dest.mkdir(exist_ok=True)
    subprocess.run(["pdfdetach", "-saveall", "-o", str(dest), str(pdf)], check=True)
    return json.loads((dest / "evidence.json").read_text())  # type: ignore[no-any-return]


def events_of(evidence: dict[str, Any], rcpt: str) -> list[dict[str, Any]]:
    return [e for e in evidence["tracking"]["events"] if e["recipient"] == rcpt]


def certified_copy(t: Tracked, rcpt: str, raw: bytes | None = None) -> tuple[str, str, Received]:
    """Send a tracked message to ``rcpt``; (qid, certificate id, the copy it received)."""
    qid = submit(t.gw, raw or html_message(rcpt), [rcpt, CERT_ADDRESS])
    cert = generated_for(t.sink, qid, "certificate")
    return qid, cert_id_of(cert), copy_for(t.sink, rcpt, qid)


def wait_addenda(t: Tracked, qid: str, count: int = 1) -> list[Received]:
    t.sink.wait_for(lambda ms: len(addenda(t.sink, qid)) >= count, timeout=90)
    return addenda(t.sink, qid)


# ---------------------------------------------------------------------------
# never_domains


HEADER_FIELD = re.compile(rb"[!-9;-~]+:[^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def only_prepended_headers(delivered: bytes, raw: bytes) -> bool:
    """``delivered`` is ``raw`` after nothing but whole header fields (the gateway's
    Received, DKIM-Signature and the like)."""
    if not delivered.endswith(raw):
        return False
    prefix = delivered[: len(delivered) - len(raw)]
    pos = 0
    while pos < len(prefix):
        field = HEADER_FIELD.match(prefix, pos)
        if field is None:
            return False
        pos = field.end()
    return True


def test_never_domain_and_its_subdomains_get_untracked_copies(
    tracked: Tracked, tmp_path: Path
) -> None:
    t = tracked
    rcpts = ["clerk@court.example", "judge@mail.court.example", "reader@notcourt.example"]
    raw = html_message(", ".join(rcpts))
    qid = submit(t.gw, raw, [*rcpts, CERT_ADDRESS])
    cert = generated_for(t.sink, qid, "certificate")
    # The certificate says, per recipient, whether its copy was tracked, and why not.
    evidence = pdf_evidence(certificate_pdf(cert, tmp_path / "c.pdf"), tmp_path / "c")
    per = {r["address"]: r["tracking"] for r in evidence["recipients"]}
    for rcpt in rcpts[:2]:
        assert per[rcpt]["tracked"] is False
        assert any("tracking.never_domains" in n for n in per[rcpt]["notes"]), per[rcpt]
    assert per[rcpts[2]]["tracked"] is True
    text = subprocess.run(
        ["pdftotext", str(tmp_path / "c.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Its copy was not tracked." in " ".join(text.split())
    for rcpt in rcpts[:2]:
        got = copy_for(t.sink, rcpt, qid)
        assert got.rcpt_tos == [rcpt]
        assert only_prepended_headers(got.data, raw), got.data[:2000]
        assert b"/c/" not in got.data and b"/o/" not in got.data
        assert t.base.encode() not in got.data
    # Not a subdomain, only a name that ends the same way: tracked as usual.
    clicks, pixels = tracking_urls(copy_for(t.sink, rcpts[2], qid), t.base)
    assert len(clicks) == 2 and len(pixels) == 1


def test_opens_in_the_certificate_are_not_repeated_in_the_first_addendum(
    tracked: Tracked, tmp_path: Path
) -> None:
    t = tracked
    raw = html_message("early@example.org, held@example.org")
    qid = submit(t.gw, raw, ["early@example.org", "held@example.org", CERT_ADDRESS])
    t.sink.wait_for(
        lambda ms: bool(
            [m for m in t.sink.to("early@example.org") if qid.encode() in m.data[:3000]]
        )
    )
    got = copy_for(t.sink, "early@example.org", qid)
    clicks, (pixel,) = tracking_urls(got, t.base)

    async def hit(url: str) -> None:
        async with client() as session:
            assert (await fetch(session, url)).status in (200, 302)

    asyncio.run(hit(pixel))  # opened while held@ is still deferred: before the certificate
    HOLD.set()
    cert = generated_for(t.sink, qid, "certificate")
    cert_ev = pdf_evidence(certificate_pdf(cert, tmp_path / "c.pdf"), tmp_path / "c")
    assert [e["kind"] for e in events_of(cert_ev, "early@example.org")] == ["open"]
    asyncio.run(hit(clicks[0]))
    (addendum,) = wait_addenda(t, qid)
    add_ev = pdf_evidence(certificate_pdf(addendum, tmp_path / "a.pdf"), tmp_path / "a")
    assert [e["kind"] for e in add_ev["tracking"]["events"]] == ["click"]  # only what is new
    assert add_ev["tracking"]["reported_before"]["certificate_id"] == cert_ev["certificate_id"]


# ---------------------------------------------------------------------------
# Repeated hits: recorded every time, one addendum per interval


def test_repeated_hits_are_recorded_but_make_one_addendum_per_interval(
    tracked: Tracked, tmp_path: Path
) -> None:
    t = tracked
    rcpt = "repeat@example.org"
    qid, cert_id, got = certified_copy(t, rcpt)
    clicks, (pixel,) = tracking_urls(got, t.base)

    async def hits(plan: list[tuple[str, str, str]]) -> None:
        async with client() as session:
            for url, method, ua in plan:
                answer = await fetch(session, url, method, {"User-Agent": ua})
                assert answer.status in (200, 302), (url, answer)

    # Before the first addendum: three opens, one link clicked twice (a double click).
    first = [
        (pixel, "GET", BROWSER_UA),
        (pixel, "GET", BROWSER_UA),
        (pixel, "GET", BROWSER_UA),
        (clicks[0], "GET", BROWSER_UA),
        (clicks[0], "GET", BROWSER_UA),
    ]
    asyncio.run(hits(first))
    (addendum,) = wait_addenda(t, qid)
    first_ev = pdf_evidence(certificate_pdf(addendum, tmp_path / "a1.pdf"), tmp_path / "a1")
    assert first_ev["addendum_of"] == cert_id
    assert 1 <= len(events_of(first_ev, rcpt)) <= len(first)

    # After it, within the interval: more opens, and Office's HEAD probe before the
    # browser's GET of the same link.
    second = [
        (pixel, "GET", BROWSER_UA),
        (clicks[0], "HEAD", OFFICE_PROBE),
        (clicks[0], "GET", BROWSER_UA),
        (pixel, "GET", BROWSER_UA),
    ]
    asyncio.run(hits(second))

    # Barriers: two other recipients' first opens, each answered by its own addendum, the
    # second only started after the first arrived. Had the hits above been due for an
    # addendum, the scans that started these would have started it too, and earlier.
    for n in (1, 2):
        other_qid, _, other = certified_copy(t, f"barrier{n}@example.org")
        asyncio.run(hits([(tracking_urls(other, t.base)[1][0], "GET", BROWSER_UA)]))
        wait_addenda(t, other_qid)

    sent = addenda(t.sink, qid)
    assert len(sent) == 1, [m.message["Subject"] for m in sent]
    now = addendum_now(t.gw, cert_id, tmp_path / "now")
    events = events_of(now, rcpt)
    assert len(events) == len(first) + len(second)
    assert [(e["kind"], e["method"]) for e in events] == [
        ("open", "GET"),
        ("open", "GET"),
        ("open", "GET"),
        ("click", "GET"),
        ("click", "GET"),
        ("open", "GET"),
        ("click", "HEAD"),
        ("click", "GET"),
        ("open", "GET"),
    ]
    assert all(e["url"] == SIGN_URL for e in events if e["kind"] == "click")
    issued = [e for e in now["timeline"] if e["event"] == "AddendumIssued"]
    assert len(issued) == 1, issued
    # One link of two, clicked again and again, is not "every link clicked at once".
    for e in events:
        assert "all 2 links" not in e["reason"], e
        if e["method"] == "GET":
            assert not e["automatic"] and "likely by a person" in e["reason"], e
    probe = events[6]
    assert probe["automatic"] and "existence" in probe["reason"].lower()


# ---------------------------------------------------------------------------
# The HTTP endpoint as the world reaches it


def test_forwarded_for_is_believed_only_from_trusted_proxies(
    tracked: Tracked, tmp_path: Path
) -> None:
    t = tracked
    rcpt = "proxied@example.org"
    _, cert_id, got = certified_copy(t, rcpt)
    _, (pixel,) = tracking_urls(got, t.base)
    plan = [
        ("127.0.0.1", "203.0.113.9", "direct-forged"),
        (TRUSTED_PROXY, "198.51.100.77", "via-proxy"),
        (TRUSTED_PROXY, "203.0.113.1, 198.51.100.78", "via-proxy-chain"),
        (TRUSTED_PROXY, f"203.0.113.2, {TRUSTED_PROXY}", "via-proxy-twice"),
        (TRUSTED_PROXY, "", "proxy-without-header"),
    ]

    async def hits() -> None:
        for local, forwarded, marker in plan:
            async with client(local) as session:
                headers = {"User-Agent": f"{BROWSER_UA} {marker}"}
                if forwarded:
                    headers["X-Forwarded-For"] = forwarded
                assert (await fetch(session, pixel, headers=headers)).status == 200

    asyncio.run(hits())
    seen = {
        e["user_agent"].rsplit(" ", 1)[1]: e["ip"]
        for e in events_of(addendum_now(t.gw, cert_id, tmp_path / "now"), rcpt)
    }
    assert seen == {
        "direct-forged": "127.0.0.1",  # 127.0.0.1 is not a trusted proxy: header ignored
        "via-proxy": "198.51.100.77",
        "via-proxy-chain": "198.51.100.78",  # the right-most address the proxy saw
        "via-proxy-twice": "203.0.113.2",  # trusted hops are skipped
        "proxy-without-header": TRUSTED_PROXY,
    }


def test_random_tokens_get_byte_identical_404s(tracked: Tracked) -> None:
    t = tracked
    rng = random.Random(20261123)
    alphabet = string.ascii_letters + string.digits + "-_"

    async def test() -> None:
        async with client() as session:
            missing = await fetch(session, f"{t.base}/nothing")
            assert missing.status == 404 and missing.body == b"Not found\n"
            assert missing.header("Location") is None
            head_missing = await fetch(session, f"{t.base}/nothing", "HEAD")
            for i in range(1000):
                token = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 170)))
                method = "HEAD" if i % 10 == 0 else "GET"
                answer = await fetch(session, f"{t.base}/{'oc'[i % 2]}/{token}", method)
                assert answer == (head_missing if method == "HEAD" else missing), (token, answer)

    asyncio.run(test())


def test_head_and_redirect_abuse_through_the_gateway(tracked: Tracked, tmp_path: Path) -> None:
    t = tracked
    rcpt = "abuse@example.org"
    evil = ("//evil.example/x", "https://ok@evil.example/", "javascript:alert(1)")
    raw = (
        "From: Alice <alice@example.com>\r\n"
        f"To: {rcpt}\r\nCc: {CERT_ADDRESS}\r\nSubject: Links\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <abuse-1@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f'<html><body><a href="{SIGN_URL.replace("&", "&amp;")}">sign</a>'
        + "".join(f'<a href="{u}">x</a>' for u in evil)
        + f'<a href="{TERMS_URL}">terms</a></body></html>\r\n'
    ).encode()
    qid, cert_id, got = certified_copy(t, rcpt, raw)
    html = html_of(got)
    for url in evil:
        assert f'href="{url}"' in html  # never rewritten, so never a redirect target
    clicks, (pixel,) = tracking_urls(got, t.base)
    assert len(clicks) == 2
    codec = t.codec()
    data = codec.read(clicks[0].rsplit("/", 1)[1])
    assert data is not None and data.qid == qid and data.link == 1

    def tok(link: int, recipient: int | None = None, qid_: str = qid) -> str:
        return codec.make(
            TokenData(qid_, data.recipient_id if recipient is None else recipient, link)
        )

    async def test() -> None:
        async with client() as session:
            missing = await fetch(session, f"{t.base}/nothing")
            # HEAD works for both, and answers what GET answers, without a body.
            head_pixel = await fetch(session, pixel, "HEAD")
            assert (head_pixel.status, head_pixel.body) == (200, b"")
            assert head_pixel.header("Content-Type") == "image/gif"
            assert head_pixel.header("Content-Length") == "43"
            assert (await fetch(session, pixel)).body.startswith(b"GIF89a")
            for url, target in zip(clicks, (SIGN_URL, TERMS_URL), strict=True):
                for method in ("HEAD", "GET"):
                    answer = await fetch(session, url, method)
                    assert (answer.status, answer.header("Location")) == (302, target)
                    assert answer.header("Referrer-Policy") == "no-referrer"
            refused = [
                f"{t.base}/c/{tok(3)}",  # a link the copy does not have
                f"{t.base}/c/{tok(4)}",
                f"{t.base}/c/{tok(1, data.recipient_id + 10_000)}",  # another recipient
                f"{t.base}/c/{tok(1, qid_='CF-FFFFFFFFFFFFFFFF')}",  # another message
                f"{t.base}/c/{pixel.rsplit('/', 1)[1]}",  # the pixel token on /c
                f"{t.base}/o/{clicks[0].rsplit('/', 1)[1]}",  # a link token on /o
                clicks[0] + "%0d%0aLocation:%20https://evil.example",
                clicks[0] + "/../../x",
                clicks[0][:-2] + ("AA" if not clicks[0].endswith("AA") else "BB"),
                f"{t.base}//evil.example/",
                f"{t.base}/c/%2F%2Fevil.example",
                f"{t.base}/c/",
            ]
            for url in refused:
                assert await fetch(session, url) == missing, url
            assert await fetch(session, clicks[0], "POST") == missing

    asyncio.run(test())
    now = addendum_now(t.gw, cert_id, tmp_path / "now")
    assert now["message"]["sha256"] == hashlib.sha256(raw).hexdigest()
    events = events_of(now, rcpt)
    # Only the genuine hits were recorded: 1 HEAD + 1 GET of the pixel, 2 + 2 clicks.
    assert sorted((e["kind"], e["method"], e["url"]) for e in events) == sorted(
        [("open", "HEAD", None), ("open", "GET", None)]
        + [("click", m, u) for u in (SIGN_URL, TERMS_URL) for m in ("HEAD", "GET")]
    )
