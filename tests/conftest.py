"""Real parts for the tests: the gateway as a subprocess, SMTP sinks as remote MXs.

The gateway is started with ``certifica serve`` on ports the OS picks (port 0 in its
config); it writes the bound addresses to ``listen.json``, which the fixture waits for.
Remote mail servers are aiosmtpd servers on their own event loop thread, reached
through ``[delivery.routes]``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import settings

# CI runs the property tests on the same examples every time (a landing must not hang
# on a new random find); a developer's run explores new ones.
# CI: the same examples every run, and no per-example deadline: the suite runs on several
# workers sharing the cores with the gateways under test, so an example's time says
# nothing about the code (performance is measured by `make bench`, never asserted here).
settings.register_profile("ci", derandomize=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CERTIFICA = str(Path(sys.executable).with_name("certifica"))
PASSWORD = "correct horse battery"
CERT_ADDRESS = "certifica@certifica.localhost"


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Sink:
    """A remote mail server: records what it receives; ``reply`` decides the answer to DATA."""

    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Received] = field(default_factory=list)
    rcpt_reply: Callable[[str], str | None] = lambda addr: None
    data_reply: Callable[[Received], str] = lambda msg: "250 2.0.0 Ok: queued as SINK0001"
    _cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.rcpt_reply(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        reply = self.data_reply(msg)
        if reply.startswith("2"):
            with self._cond:
                self.messages.append(msg)
                self._cond.notify_all()
        return reply

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 60.0
    ) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"sink did not get the expected mail within {timeout}s; it has "
                        f"{[(m.mail_from, m.rcpt_tos) for m in self.messages]}"
                    )
                self._cond.wait(left)
            return list(self.messages)

    def to(self, address: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if address in m.rcpt_tos]


class SinkServer:
    """Runs sinks on one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.base_events.Server] = []

    def start(self, sink: Sink, port: int = 0) -> Sink:
        """Serve ``sink`` on ``port`` (0: one the OS picks; the sink's port is set)."""

        async def _start() -> asyncio.base_events.Server:
            return await self.loop.create_server(
                lambda: SMTP(sink, hostname="sink.test", enable_SMTPUTF8=True, loop=self.loop),
                "127.0.0.1",
                port,
            )

        server = asyncio.run_coroutine_threadsafe(_start(), self.loop).result(10)
        sink.port = server.sockets[0].getsockname()[1]
        self.servers.append(server)
        return sink

    def close(self) -> None:
        async def _close() -> None:
            for s in self.servers:
                s.close()
            for s in self.servers:
                await s.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def sink_server() -> Iterator[SinkServer]:
    server = SinkServer()
    yield server
    server.close()


def free_port() -> int:
    """A loopback port nothing listens on now (for a server that starts later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CERTIFICA, "-c", str(config), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Gateway:
    config: Path
    state: Path
    proc: subprocess.Popen[bytes]
    listen: dict[str, str]
    log_path: Path

    def port(self, name: str = "submission") -> int:
        return int(self.listen[name].rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def smtp(
        self, user: str | None = "alice@example.com", password: str = PASSWORD
    ) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port(), timeout=30)
        client.ehlo("client.test")
        client.starttls(context=client_tls_context(self.state))
        client.ehlo("client.test")
        if user:
            client.login(user, password)
        return client

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, *args, stdin=stdin)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def client_tls_context(state: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(state / "keys" / "ca.pem"))
    ctx.check_hostname = False  # the dev certificate names certifica.localhost, we dial 127.0.0.1
    return ctx


def write_config(tmp: Path, routes: dict[str, int], extra: str = "") -> Path:
    route_lines = "\n".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in routes.items())
    cfg = tmp / "config.toml"
    cfg.write_text(
        f"""
[gateway]
state_dir = "state"
[listen]
submission = "127.0.0.1:0"
submission_tls = "127.0.0.1:0"
mx = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[limits]
auth_delay = 0.2
message_size = 1048576
recipients = 5
[queue]
first_retry = 1.0
max_retry = 2.0
lifetime = 30.0
scan_interval = 0.2
[signing]
workers = 1
[delivery.routes]
{route_lines}
{extra}
"""
    )
    return cfg


def start_gateway(
    config: Path, users: dict[str, str] | None = None, timeout: float = 60.0
) -> Gateway:
    state = config.parent / "state"
    wanted = {"alice@example.com": PASSWORD} if users is None else users
    for user, password in wanted.items():
        result = run_cli(config, "users", "add", user, "--password-stdin", stdin=password + "\n")
        if result.returncode != 0 and "exists already" in result.stderr:  # a restart
            result = run_cli(
                config, "users", "set", user, "--password-stdin", stdin=password + "\n"
            )
        assert result.returncode == 0, result.stderr
    listen_file = state / "listen.json"
    listen_file.unlink(missing_ok=True)
    log_path = config.parent / f"gateway-{time.monotonic_ns()}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [CERTIFICA, "-c", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    deadline = time.monotonic() + timeout
    while not listen_file.exists():
        if proc.poll() is not None:
            raise AssertionError(f"gateway exited: {log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gateway not ready: {log_path.read_text()}")
        time.sleep(0.05)
    return Gateway(config, state, proc, json.loads(listen_file.read_text()), log_path)


@pytest.fixture(scope="module")
def mx(sink_server: SinkServer) -> Sink:
    """One remote MX for example.org, example.net and the sender's example.com."""
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw")
    cfg = write_config(
        tmp, {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port}
    )
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def assert_clean_log(log: str) -> None:
    """No traceback and no error line: the operator's terminal stays readable."""
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if ": error: " in line]
    assert not errors, "\n".join(errors)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def make_message(
    subject: str = "Hello",
    sender: str = "alice@example.com",
    to: str = "bob@example.org",
    cc: str = CERT_ADDRESS,
    body: str = "Hi Bob,\r\nthe contract is attached.\r\n",
) -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nCc: {cc}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@example.com>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


# One SoftHSM2 token for the whole session (tests/test_signing_hsm.py, and the unit's
# sandbox in tests/test_systemd_unit.py): SoftHSM2 reads SOFTHSM2_CONF when the library is
# first initialised in this process, so a second token made by another module would not
# be seen, and its login would collide with the first one's.
@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from certifier.pki import ensure_dev_pki
    from tests.test_signing_hsm import Hsm

    before = os.environ.get("SOFTHSM2_CONF")
    root = tmp_path_factory.mktemp("hsm")
    yield Hsm(root, ensure_dev_pki(root / "pki", "hsm.example", "HSM Test CA"))
    if before is None:
        os.environ.pop("SOFTHSM2_CONF", None)
    else:
        os.environ["SOFTHSM2_CONF"] = before
