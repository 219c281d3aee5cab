"""The public HTTP listener of the gateway, as the acceptor assembles it
(:func:`relay.web.tracking.make_http_runner`), on a real store, served from a thread of
its own on 127.0.0.1 port 0 so that a browser or a client in the test's thread can use it.

Also a real certificate: a PDF rendered and signed by the development PKI
(:func:`certifier.pool.render_and_sign`), whose CA the site's config trusts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from certifier.pki import ensure_dev_pki
from certifier.pool import SigningSettings, build_signer, render_and_sign
from relay.config import Config, load_config
from relay.queue.store import Store
from relay.web.tracking import StoreBackend, make_http_runner

T = TypeVar("T")

CODE = "k7vq3x2m5n4p6r8s9t2w3y4z5a6b7c8d"  # 32 characters of base32, as the gateway makes them
OTHER_CODE = "k7vq3x2m5n4p6r8s9t2w3y4z5a6b7c8e"  # one character off
ERASED_CODE = "e7vq3x2m5n4p6r8s9t2w3y4z5a6b7c8d"
HOSTILE_CODE = "h7vq3x2m5n4p6r8s9t2w3y4z5a6b7c8d"
HOSTILE = "<script>alert(1)</script>"

EML = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org, carol@example.net\r\n"
    b"Subject: Contract 2026/17, confidential\r\n"
    b"Message-ID: <20261203104200.1@example.com>\r\n"
    b"Date: Thu, 03 Dec 2026 10:42:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob,\r\n\r\nthe signed contract is attached.\r\n"
)
SUBJECT = "Contract 2026/17, confidential"


def evidence(eml: bytes = EML) -> dict[str, Any]:
    """A certificate's evidence record: one recipient delivered, one failed."""
    return {
        "format": "certifica-evidence/1",
        "kind": "sending",
        "certificate_id": "CF-6F1C2A9E0B7D4E11",
        "queue_id": "4F2A1B3C9D",
        "issued_at": "2026-12-03T10:42:07Z",
        "gateway": {
            "hostname": "certifica.localhost",
            "domain": "certifica.localhost",
            "software": "Certifica 0.1.0",
        },
        "sender": {
            "envelope_from": "alice@example.com",
            "header_from": "Alice <alice@example.com>",
            "authenticated_user": "alice@example.com",
            "client_ip": "127.0.0.1",
            "client_helo": "laptop",
            "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
            "method": "submission",
        },
        "message": {
            "subject": SUBJECT,
            "date": "Thu, 03 Dec 2026 10:42:00 +0000",
            "message_id": "<20261203104200.1@example.com>",
            "from": "Alice <alice@example.com>",
            "to": ["bob@example.org", "carol@example.net"],
            "cc": [],
            "size": len(eml),
            "sha256": hashlib.sha256(eml).hexdigest(),
            "attachments": [],
            "text": "Hello Bob,\n\nthe signed contract is attached.\n",
            "text_truncated": False,
            "defects": [],
        },
        "recipients": [
            {
                "address": "bob@example.org",
                "status": "delivered",
                "time": "2026-12-03T10:42:05Z",
                "mx_host": "mx.example.org",
                "ip": "127.0.0.1",
                "port": 25,
                "reply": {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued as ABC"},
                "remote_qid": "ABC",
                "tls": None,
                "attempts": 1,
                "delivered_sha256": hashlib.sha256(eml).hexdigest(),
                "note": None,
            },
            {
                "address": "carol@example.net",
                "status": "failed",
                "time": "2026-12-03T10:42:06Z",
                "mx_host": "mx.example.net",
                "ip": "192.0.2.7",
                "port": 25,
                "reply": {"code": 550, "enhanced": "5.1.1", "text": "User unknown"},
                "remote_qid": None,
                "tls": None,
                "attempts": 1,
                "delivered_sha256": None,
                "note": None,
            },
        ],
        "timeline": [],
        "evidence_log": {"head": "c3" * 32, "entries": []},
    }


@dataclass
class Site:
    """A running listener: its base URL, config, store, and a certificate it knows."""

    url: str
    cfg: Config
    store: Store
    pdf: bytes
    loop: asyncio.AbstractEventLoop

    def page_url(self, code: str = CODE) -> str:
        return f"{self.url}/v/{code}"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the site's loop (the store is used from there)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)


def signed_certificate(keys: Path) -> tuple[bytes, Path]:
    """A signed certificate PDF and the CA that verifies it."""
    pki = ensure_dev_pki(keys, "certifica.localhost")
    pdf = render_and_sign(evidence(), EML, build_signer(SigningSettings.from_pki(pki)))
    return pdf, pki.ca_cert


@contextmanager
def serving(
    tmp: Path,
    pdf: bytes,
    ca: Path,
    web_extra: str = "rate_limit = 100000",
    provider: str = "Certifica Test Provider S.L.",
) -> Iterator[Site]:
    """The listener on a port of its own, with the records the tests read:
    :data:`CODE` (``pdf``), :data:`ERASED_CODE` (erased) and :data:`HOSTILE_CODE`.
    ``web_extra`` is more of ``[web]`` (a limit the tests do not reach, by default)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    state = tmp / "state"
    state.mkdir(mode=0o700)
    config = tmp / "config.toml"
    config.write_text(
        f'[gateway]\nstate_dir = "{state}"\nlanguage = "en"\ntimezone = "Europe/Madrid"\n'
        f'[provider]\nname = {json.dumps(provider)}\nlegal_id = "B12345678"\n'
        f'[web]\npublic_url = "{url}"\n{web_extra}\n'
        f'[signing]\ntrust_roots = ["{ca}"]\n'
    )
    cfg = load_config(config)
    store = Store(state / "queue.db", 3600.0)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        runner = await make_http_runner(cfg, b"k" * 32, StoreBackend(cfg, store, lambda: None))
        await web.SockSite(runner, sock).start()
        runner_box.append(runner)

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="verification-site", daemon=True)
    thread.start()
    ready.wait(30)
    site = Site(url, cfg, store, pdf, loop)
    site.run(record(store, pdf))
    store.erase_verification("CF-ERASED", 1_800_000_000.0)
    try:
        yield site
    finally:
        site.run(runner_box[0].cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
        store.close()
        sock.close()


async def record(store: Store, pdf: bytes) -> None:
    issued = 1_796_294_527.0  # 2026-12-03T10:42:07Z
    sha = hashlib.sha256(pdf).hexdigest()
    recipients = [
        {"address": "bob@example.org", "status": "delivered", "time": "2026-12-03T10:42:05Z"},
        {"address": "carol@example.net", "status": "failed", "time": "2026-12-03T10:42:06Z"},
    ]
    await store.record_verification(
        CODE,
        cert_id="CF-6F1C2A9E0B7D4E11",
        qid="4F2A1B3C9D",
        kind="sending",
        outcome="partial",
        issued_at=issued,
        pdf_sha256=sha,
        recipients=recipients,
    )
    await store.record_verification(
        ERASED_CODE,
        cert_id="CF-ERASED",
        qid="5F2A1B3C9D",
        kind="sending",
        outcome="delivery",
        issued_at=issued,
        pdf_sha256="ab" * 32,
        recipients=[{"address": "dave@example.org", "status": "delivered", "time": issued}],
    )
    await store.record_verification(
        HOSTILE_CODE,
        cert_id="CF-HOSTILE",
        qid="6F2A1B3C9D",
        kind="sending",
        outcome="delivery",
        issued_at=issued,
        pdf_sha256="cd" * 32,
        recipients=[
            {"address": f"{HOSTILE}@{HOSTILE}.example", "status": HOSTILE, "time": HOSTILE}
        ],
    )
