"""Webhooks end to end (docs/webhooks.md): a real gateway, a real HTTP receiver on loopback.

The receiver (aiohttp, on its own event loop thread, port 0) records every request and
answers by path: ``/ok`` 200; ``/flaky`` 500 to the first two requests of a delivery, then
200; ``/hang`` holds the request until the test lets it go; ``/crash`` holds the first
request of a delivery for ever (the webhook process is killed meanwhile), then 200. A
"down" receiver is a loopback port nothing listens on. Retry timings are compressed
through ``[webhooks]`` in the test's config, not slept.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from relay.webhooks.guard import CheckedResolver, ForbiddenAddress
from relay.webhooks.sender import forbidden_reason
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import generated_for, submit
from tests.test_tracking_e2e import BROWSER_UA, copy_for, html_message

RETRY_FOR = 6.0
WEBHOOKS = f"""
[webhooks]
timeout = 30
first_retry = 0.2
max_retry = 0.5
retry_for = {RETRY_FOR}
"""


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def delivery(self) -> str:
        return self.headers["Certifica-Delivery"]


@dataclass
class Receiver:
    """A webhook receiver on loopback (see the module docstring)."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    released: asyncio.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    closing: asyncio.Event | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _seen: dict[tuple[str, str], int] = field(default_factory=dict)

    def release(self) -> None:
        """Let the requests held by ``/hang`` be answered."""
        assert self.loop is not None and self.released is not None
        self.loop.call_soon_threadsafe(self.released.set)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        got = Request(request.path, dict(request.headers), body, time.time())
        with self._cond:
            self.requests.append(got)
            self._cond.notify_all()
            key = (request.path, got.headers.get("Certifica-Delivery", ""))
            self._seen[key] = self._seen.get(key, 0) + 1
            nth = self._seen[key]
        assert self.released is not None
        if request.path == "/flaky" and nth <= 2:
            return web.Response(status=500, text="not now")
        if request.path == "/hang":
            await self.released.wait()
        if request.path == "/crash" and nth == 1:
            assert self.closing is not None
            await self.closing.wait()  # until the end: the sender is killed meanwhile
        return web.Response(status=200, text="ok")

    def wait_for(
        self, predicate: Callable[[list[Request]], list[Request]], timeout: float = 60.0
    ) -> list[Request]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (found := predicate(list(self.requests))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the receiver did not get the expected requests within {timeout}s; "
                        f"it has {[(r.path, r.body[:120]) for r in self.requests]}"
                    )
                self._cond.wait(left)
            return found

    def about(self, path: str, qid: str) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.path == path and r.json["queue_id"] == qid]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rec = Receiver(loop=loop)

    async def start() -> web.AppRunner:
        rec.released, rec.closing = asyncio.Event(), asyncio.Event()
        app = web.Application()
        app.router.add_post("/{name}", rec.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rec.port = runner.addresses[0][1]
        return runner

    runner = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield rec

    async def stop() -> None:
        assert rec.released is not None and rec.closing is not None
        rec.released.set()
        rec.closing.set()
        await runner.cleanup()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mx: Sink, receiver: Receiver) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("webhooks")
    port = free_port()
    cfg = write_config(
        tmp,
        {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port},
        WEBHOOKS
        + f'[web]\npublic_url = "http://127.0.0.1:{port}"\n'
        + "[tracking]\nenabled = true\nfast_seconds = 0.0\n",
    )
    cfg.write_text(cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"'))
    gateway = start_gateway(cfg)
    yield gateway
    gateway.stop()
    assert_clean_log(gateway.log())


def add_webhook(gw: Gateway, url: str, events: str) -> tuple[int, str]:
    """``certifica webhook add default URL``: (its id, its secret: the last line)."""
    out = gw.cli("webhook", "add", "default", url, "--events", events)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    webhook_id = int(re.match(r"webhook (\d+) of default", lines[0]).group(1))  # type: ignore[union-attr]
    return webhook_id, lines[-1]


def remove_webhook(gw: Gateway, webhook_id: int) -> None:
    out = gw.cli("webhook", "remove", "default", str(webhook_id))
    assert out.returncode == 0, out.stderr


def certified(gw: Gateway, subject: str) -> str:
    return submit(gw, make_message(subject=subject), ["bob@example.org", CERT_ADDRESS])


def verify_signature(secret: str, request: Request, tolerance: float = 300) -> None:
    """The receiver's side of docs/webhooks.md "Verifying", written independently of
    relay/webhooks/signing.py."""
    fields = dict(p.split("=", 1) for p in request.headers["Certifica-Signature"].split(","))
    t = int(fields["t"])
    assert abs(time.time() - t) < tolerance
    expected = hmac.new(
        secret.encode(), f"{t}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(expected, fields["v1"])
    # One byte changed, and the signature no longer verifies.
    tampered = request.body.replace(b'"queue_id"', b'"queue_iD"')
    assert (
        hmac.new(secret.encode(), f"{t}.".encode() + tampered, hashlib.sha256).hexdigest()
        != (fields["v1"])
    )


def webhook_log(gw: Gateway, limit: int = 50) -> str:
    out = gw.cli("webhook", "log", "default", "--limit", str(limit))
    assert out.returncode == 0, out.stderr
    return out.stdout


def log_entry(log: str, delivery: str) -> str:
    """The lines of ``webhook log`` about one delivery (its line and its attempts)."""
    blocks = re.split(r"\n(?=delivery )", log)
    (block,) = [b for b in blocks if b.startswith(f"delivery {delivery}:")]
    return block


def wait_log(gw: Gateway, delivery: str, word: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        entry = log_entry(webhook_log(gw), delivery)
        if word in entry.splitlines()[0]:
            return entry
        if time.monotonic() > deadline:
            raise AssertionError(f"delivery {delivery} is not {word}: {entry}")
        time.sleep(0.1)


# -- the events ------------------------------------------------------------------------------


def test_delivered_and_certificate_arrive_signed_once_each(
    gw: Gateway, mx: Sink, receiver: Receiver
) -> None:
    webhook_id, secret = add_webhook(gw, receiver.url("/ok"), "delivered,certificate")
    assert secret.startswith("whsec_")
    listed = gw.cli("webhook", "list", "default")
    assert f"{webhook_id}\t{receiver.url('/ok')}\tdelivered,certificate\t" in listed.stdout
    assert secret not in listed.stdout  # shown once, at add
    try:
        qid = certified(gw, "Webhooks: delivered and certificate")
        both = receiver.wait_for(
            lambda rs: (
                mine
                if len(mine := [r for r in rs if r.path == "/ok" and r.json["queue_id"] == qid])
                >= 2
                else []
            )
        )
        cert_mail = generated_for(mx, qid, "certificate")
        by_event = {r.json["event"]: r for r in both}
        assert set(by_event) == {"delivered", "certificate"}
        for event, request in by_event.items():
            verify_signature(secret, request)
            assert request.headers["Content-Type"] == "application/json"
            assert request.headers["Certifica-Event"] == event
            assert request.headers["Certifica-Delivery"].isdigit()
        cert_id = (
            cert_mail.message["X-Certifica-Certificate-Id"]
            or by_event["certificate"].json["certificate_id"]
        )
        delivered, certificate = by_event["delivered"].json, by_event["certificate"].json
        assert delivered["recipient"] == "bob@example.org"
        assert delivered["status"] == "delivered" and delivered["reply"].startswith("250")
        assert delivered["certificate_id"] == certificate["certificate_id"] == cert_id
        assert certificate["status"] == "issued" and certificate["document"] == "certificate"
        assert certificate["verification_url"].rsplit("/v/", 1)[1]
        assert certificate["recipient"] is None
        # No content of the message: neither its subject nor its text.
        for request in both:
            assert b"Webhooks: delivered" not in request.body
            assert b"contract" not in request.body
        # Once each: both are recorded delivered, and no third delivery is owed for them.
        for request in both:
            wait_log(gw, request.delivery, "delivered")
        log = webhook_log(gw)
        assert (
            len(
                re.findall(
                    rf"^delivery \d+: event=\w+ queue_id={qid} webhook={webhook_id} ", log, re.M
                )
            )
            == 2
        )
        assert len(receiver.about("/ok", qid)) == 2
        # A delivery that has ended keeps no body: no second copy of the recipient.
        with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True) as db:
            kept = db.execute(
                "SELECT payload FROM webhook_deliveries WHERE id IN (?, ?)",
                (both[0].delivery, both[1].delivery),
            ).fetchall()
        assert kept == [("",), ("",)]
        # /metrics counts them.
        with urllib.request.urlopen(f"http://{gw.listen['admin']}/metrics", timeout=30) as page:
            metrics = page.read().decode()
        counted = re.search(
            r'^certifica_webhook_attempts_total\{result="delivered"\} (\S+)', metrics, re.M
        )
        assert counted and float(counted.group(1)) >= 2, metrics
        assert 'certifica_webhook_attempts_total{result="failed"}' in metrics
        # The opened event was not asked for, and the message's notice is no event.
        assert {r.json["event"] for r in receiver.about("/ok", qid)} == {"delivered", "certificate"}
    finally:
        remove_webhook(gw, webhook_id)
    listed = gw.cli("webhook", "list", "default")
    assert listed.returncode == 0 and receiver.url("/ok") not in listed.stdout


def test_a_failing_receiver_is_retried_then_succeeds(gw: Gateway, receiver: Receiver) -> None:
    webhook_id, _ = add_webhook(gw, receiver.url("/flaky"), "delivered")
    try:
        qid = certified(gw, "Webhooks: retried")
        tries = receiver.wait_for(
            lambda rs: (
                mine
                if len(mine := [r for r in rs if r.path == "/flaky" and r.json["queue_id"] == qid])
                >= 3
                else []
            )
        )
        assert len({r.delivery for r in tries}) == 1  # one delivery, tried three times
        assert len({r.body for r in tries}) == 1  # the same body each time
        entry = wait_log(gw, tries[0].delivery, "delivered")
        attempts = entry.splitlines()[1:]
        assert [a.split()[3:5] for a in attempts] == [
            ["HTTP", "500"],
            ["HTTP", "500"],
            ["HTTP", "200"],
        ], entry
        assert f"delivery={tries[0].delivery}, event=delivered" in gw.log()
        assert "status=deferred (HTTP 500; next try in" in gw.log()
    finally:
        remove_webhook(gw, webhook_id)


def test_a_receiver_that_is_down_is_retried_then_given_up(gw: Gateway, receiver: Receiver) -> None:
    down = f"http://127.0.0.1:{free_port()}/down"
    webhook_id, _ = add_webhook(gw, down, "delivered")
    try:
        qid = certified(gw, "Webhooks: down")
        deadline = time.monotonic() + 60 + RETRY_FOR
        while True:
            log = webhook_log(gw)
            mine = [
                b for b in re.split(r"\n(?=delivery )", log) if f" queue_id={qid} webhook=" in b
            ]
            if mine and "given up" in mine[0].splitlines()[0]:
                break
            assert time.monotonic() < deadline, log
            time.sleep(0.2)
        attempts = mine[0].splitlines()[1:]
        assert len(attempts) >= 2 and all(
            "cannot connect to 127.0.0.1" in a and "refused" in a for a in attempts
        )
        assert "status=failed (cannot connect to" in gw.log()
    finally:
        remove_webhook(gw, webhook_id)


def test_a_failed_recipient_is_a_failed_event(gw: Gateway, mx: Sink, receiver: Receiver) -> None:
    webhook_id, secret = add_webhook(gw, receiver.url("/ok"), "failed")
    mx.rcpt_reply = lambda address: (
        "550 5.1.1 No such user" if address.startswith("nobody@") else None
    )
    try:
        qid = submit(
            gw,
            make_message(subject="Webhooks: failed", to="bob@example.org, nobody@example.org"),
            ["bob@example.org", "nobody@example.org", CERT_ADDRESS],
        )
        (failed,) = receiver.wait_for(
            lambda rs: [r for r in rs if r.path == "/ok" and r.json["queue_id"] == qid]
        )
        verify_signature(secret, failed)
        body = failed.json
        assert body["event"] == "failed" and body["status"] == "failed"
        assert body["recipient"] == "nobody@example.org"
        assert body["reply"].startswith("550 5.1.1")
        wait_log(gw, failed.delivery, "delivered")
        # Bob's delivery is no failed event, and the webhook asked for nothing else.
        assert [r.json["recipient"] for r in receiver.about("/ok", qid)] == ["nobody@example.org"]
    finally:
        mx.rcpt_reply = lambda address: None
        remove_webhook(gw, webhook_id)


def test_an_open_and_a_click_are_opened_events(gw: Gateway, mx: Sink, receiver: Receiver) -> None:
    webhook_id, secret = add_webhook(gw, receiver.url("/ok"), "opened")
    base = f"http://127.0.0.1:{gw.port('http')}"
    try:
        qid = submit(gw, html_message("carol@example.org"), ["carol@example.org", CERT_ADDRESS])
        mx.wait_for(
            lambda ms: any(
                qid.encode() in m.data[:3000] and "carol@example.org" in m.rcpt_tos for m in ms
            )
        )
        part = copy_for(mx, "carol@example.org", qid).message.get_body(("html",))
        assert part is not None
        html = str(part.get_content())
        pixel = re.search(rf'src="({re.escape(base)}/o/[A-Za-z0-9_-]+)"', html)
        click = re.search(rf'href="({re.escape(base)}/c/[A-Za-z0-9_-]+)"', html)
        assert pixel and click, html

        async def hit() -> list[int]:
            async with aiohttp.ClientSession(headers={"User-Agent": BROWSER_UA}) as session:
                statuses = []
                for url in (pixel.group(1), click.group(1)):
                    async with session.get(url, allow_redirects=False) as response:
                        statuses.append(response.status)
                return statuses

        assert asyncio.run(hit()) == [200, 302]
        both = receiver.wait_for(
            lambda rs: (
                mine
                if len(mine := [r for r in rs if r.path == "/ok" and r.json["queue_id"] == qid])
                >= 2
                else []
            )
        )
        assert sorted(r.json["status"] for r in both) == ["clicked", "opened"]
        for request in both:
            verify_signature(secret, request)
            body = request.json
            assert body["event"] == "opened" and body["recipient"] == "carol@example.org"
            assert isinstance(body["automatic"], bool)
            assert body["verification_url"].startswith(f"{base}/v/")
            assert b"contract.example" not in request.body  # the link is content: not sent
    finally:
        remove_webhook(gw, webhook_id)


def test_removing_a_webhook_gives_up_what_it_was_owed(gw: Gateway) -> None:
    webhook_id, _ = add_webhook(gw, f"http://127.0.0.1:{free_port()}/down", "delivered")
    qid = certified(gw, "Webhooks: removed")
    deadline = time.monotonic() + 60
    while not (
        mine := [
            b for b in re.split(r"\n(?=delivery )", webhook_log(gw)) if f" queue_id={qid} " in b
        ]
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    remove_webhook(gw, webhook_id)
    entry = log_entry(webhook_log(gw), mine[0].split(":", 1)[0].split()[1])
    assert entry.splitlines()[0].endswith("(webhook removed)"), entry
    assert str(webhook_id) not in [
        line.split("\t")[0] for line in gw.cli("webhook", "list", "default").stdout.splitlines()
    ]


# -- a slow or dead webhook never delays mail -------------------------------------------------


def test_a_hanging_receiver_does_not_delay_the_mail(
    gw: Gateway, mx: Sink, receiver: Receiver
) -> None:
    webhook_id, _ = add_webhook(gw, receiver.url("/hang"), "delivered")
    try:
        qid = certified(gw, "Webhooks: hanging receiver")
        (stuck,) = receiver.wait_for(lambda rs: [r for r in rs if r.path == "/hang"])
        assert stuck.json["queue_id"] == qid
        # The certificate reaches the sender while the webhook's POST is held.
        generated_for(mx, qid, "certificate")
        entry = log_entry(webhook_log(gw), stuck.delivery)
        assert "next try" in entry.splitlines()[0] and len(entry.splitlines()) == 1  # no answer yet
        # `certifica status` shows the webhook process and the POST it is stuck on.
        deadline = time.monotonic() + 30
        while not re.search(
            r"^webhooks\s+pid \d+ .*1 webhook POSTs in flight",
            status := gw.cli("status").stdout,
            re.M,
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        receiver.release()
        wait_log(gw, stuck.delivery, "delivered")
    finally:
        receiver.release()
        remove_webhook(gw, webhook_id)


def test_kill_9_of_the_webhook_process_mid_send_loses_nothing(
    gw: Gateway, receiver: Receiver
) -> None:
    webhook_id, secret = add_webhook(gw, receiver.url("/crash"), "certificate")
    try:
        qid = certified(gw, "Webhooks: crash")
        (first,) = receiver.wait_for(lambda rs: [r for r in rs if r.path == "/crash"])
        assert first.json["queue_id"] == qid
        status = gw.state / "run" / "status" / "webhooks-0.json"
        pid = json.loads(status.read_text())["pid"]
        os.kill(pid, signal.SIGKILL)
        again = receiver.wait_for(lambda rs: [r for r in rs if r.path == "/crash"][1:])
        assert [r.delivery for r in again] == [first.delivery]  # the same delivery id
        assert again[0].body == first.body
        verify_signature(secret, again[0])
        wait_log(gw, first.delivery, "delivered")
        assert json.loads(status.read_text())["pid"] != pid
        assert f"webhooks pid {pid} ended (signal 9)" in gw.log()
    finally:
        remove_webhook(gw, webhook_id)


# -- which URLs are refused -------------------------------------------------------------------


def test_development_refuses_private_addresses_and_malformed_urls(gw: Gateway) -> None:
    for url, words in [
        ("https://10.1.2.3/hook", "is a private address"),
        ("http://169.254.169.254/latest/meta-data", "is a link-local address"),
        ("ftp://hooks.example.net/", "must start with https:// or http://"),
        ("https://user:pw@hooks.example.net/", "must not hold a user name or password"),
        ("https://hooks.example.net/" + "a" * 2048, "longer than 2048 characters"),
    ]:
        out = gw.cli("webhook", "add", "default", url, "--events", "delivered")
        assert out.returncode == 2, (url, out)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in out.stderr, lines
    out = gw.cli("webhook", "add", "default", "https://hooks.example.net/", "--events", "sent")
    assert out.returncode == 2 and "sent is no event" in out.stderr
    out = gw.cli("webhook", "add", "NOSUCH", "http://127.0.0.1:9/", "--events", "delivered")
    assert out.returncode == 2 and "no organisation 'NOSUCH'" in out.stderr
    out = gw.cli("webhook", "remove", "default", "999999")
    assert out.returncode == 2 and "has no webhook 999999" in out.stderr


PRODUCTION = """
[gateway]
mode = "production"
hostname = "mail.certifica.es"
domain = "certifica.es"
certification_address = "certifica@certifica.es"
postmaster = "ops@operator.es"
state_dir = "state"
"""


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://hooks.example.net/", "must start with https:// (production mode)"),
        ("https://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("https://127.1:8443/hook", "is a loopback address"),
        ("https://0x7f000001/hook", "is a loopback address"),
        ("https://[::1]/hook", "is a loopback address"),
        ("https://[::ffff:127.0.0.1]/hook", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("https://[::ffff:10.0.0.1]/hook", "a private address"),
        ("https://[64:ff9b::a9fe:a9fe]/hook", "an IPv6 form of 169.254.169.254"),
        ("https://[fe80::1]/hook", "a link-local address"),
        ("https://[fd00::1]/hook", "a private address"),
        ("https://192.168.1.10/hook", "a private address"),
        ("https://100.64.0.1/hook", "a reserved address"),
        ("https://224.0.0.1/hook", "a multicast address"),
        ("https://0.0.0.0/hook", "the unspecified address"),
        ("https://localhost/hook", "is this machine"),
    ],
)
def test_production_refuses_loopback_and_private_urls_at_add(
    tmp_path: Path, url: str, words: str
) -> None:
    from tests.conftest import run_cli

    config = tmp_path / "config.toml"
    config.write_text(PRODUCTION)
    out = run_cli(config, "webhook", "add", "default", url, "--events", "delivered")
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert words in lines[0] and "production mode refuses it" in lines[0], lines[0]


def test_the_send_refuses_a_name_that_resolves_to_a_forbidden_address(receiver: Receiver) -> None:
    """The resolver the sender's connector uses checks the address it connects to: a name
    (here ``localhost``) that resolves to loopback is refused in production mode, and
    nothing reaches the receiver (DNS rebinding)."""

    async def post(allow_loopback: bool) -> str | int:
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(allow_loopback=allow_loopback), use_dns_cache=False
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                async with session.post(
                    f"http://localhost:{receiver.port}/ok", data=b'{"queue_id": "RESOLVER"}'
                ) as response:
                    return response.status
            except (aiohttp.ClientError, ForbiddenAddress) as err:
                return forbidden_reason(err) or repr(err)

    refused = asyncio.run(post(allow_loopback=False))
    assert isinstance(refused, str) and "localhost resolves to" in refused, refused
    assert "a loopback address" in refused
    assert receiver.about("/ok", "RESOLVER") == []
    assert asyncio.run(post(allow_loopback=True)) == 200  # development mode
    assert len(receiver.about("/ok", "RESOLVER")) == 1
