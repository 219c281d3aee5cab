"""Metrics and health on the admin listener (README, "Metrics and health").

The real gateway on port 0 (tests/conftest.py), scraped with urllib over HTTP before and
after real mail; the exposition is read by prometheus-client's own parser. A second
gateway with an impossible ``[limits] min_free`` shows the 452 4.3.1 at MAIL and the
``spool`` check failing in ``/readyz``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import smtplib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import load_config
from relay.health import TSA_PROBE_EVERY, Check, Readiness
from relay.metrics import reason_class
from relay.queue.space import FreeSpace
from relay.queue.store import Store
from relay.smtpd import replies
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

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
CHECKS = {"listeners", "database", "spool", "signing", "tsa", "checkpoint"}


def get(gw: Gateway, path: str, listener: str = "admin") -> tuple[int, str, str]:
    """GET ``path`` on one of the gateway's listeners: status, content type, body."""
    url = f"http://127.0.0.1:{gw.port(listener)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"] or "", err.read().decode()


def scrape(gw: Gateway) -> Samples:
    status, kind, body = get(gw, "/metrics")
    assert status == 200, body
    assert kind.startswith("text/plain; version=0.0.4"), kind
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(check: Callable[[], Any], timeout: float = 90.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        time.sleep(0.1)


def readyz(gw: Gateway) -> tuple[int, dict[str, Any]]:
    status, kind, body = get(gw, "/readyz")
    assert kind.startswith("application/json"), kind
    return status, json.loads(body)


def submit(gw: Gateway, raw: bytes, rcpts: list[str]) -> None:
    with gw.smtp() as c:
        c.mail("alice@example.com")
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, text
        code, text = c.data(raw)
        assert code == 250, text


def test_counters_move_with_certified_mail(gateway: Gateway, mx: Sink) -> None:
    before = scrape(gateway)
    # The queue is read from the database at scrape time: every state is there, at 0 too.
    for state in ("queued", "deferred"):
        assert ("certifica_queue_recipients", (("state", state),)) in before
    assert ("certifica_queue_oldest_deferred_seconds", ()) in before

    submit(gateway, make_message(subject="Scraped"), ["bob@example.org", CERT_ADDRESS])
    with gateway.smtp() as c:  # a refusal: an address of the gateway's domain that is none
        c.mail("alice@example.com")
        code, _ = c.rcpt("nobody@certifica.localhost")
        assert code == 550
    with socket.create_connection(("127.0.0.1", gateway.port("submission_tls")), 10) as s:
        s.sendall(b"EHLO plaintext.example\r\n")  # no TLS where implicit TLS is expected
        s.settimeout(10)
        assert s.recv(100) == b""

    def moved() -> Samples | None:
        after = scrape(gateway)
        done = (
            value(after, "certifica_certificate_seconds_count", result="issued")
            > value(before, "certifica_certificate_seconds_count", result="issued")
            and value(after, "certifica_recipients_final_total", outcome="delivered")
            >= value(before, "certifica_recipients_final_total", outcome="delivered") + 3
        )  # bob, the notice and the certificate mail to alice
        return after if done else None

    after = wait_until(moved, what="the certificate and its mail in /metrics")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("certifica_messages_accepted_total", listener="submission") == 1
    assert (
        delta("certifica_smtp_refusals_total", listener="submission", command="RCPT", reason="5.1")
        == 1
    )
    assert delta("certifica_tls_handshake_failures_total", listener="submission_tls") == 1
    assert delta("certifica_delivery_attempt_seconds_count", result="delivered") >= 3
    assert delta("certifica_delivery_attempt_seconds_sum", result="delivered") > 0
    assert delta("certifica_certificate_seconds_count", result="issued") >= 1
    assert delta("certifica_certificate_seconds_sum", result="issued") > 0
    # One bucket at least holds it, and +Inf holds every observation.
    assert value(
        after, "certifica_certificate_seconds_bucket", result="issued", le="+Inf"
    ) == value(after, "certifica_certificate_seconds_count", result="issued")
    # Series known in advance are there at 0 before anything happened to them.
    for name, labels in (
        ("certifica_tsa_errors_total", {"use": "certificate"}),
        ("certifica_tsa_errors_total", {"use": "checkpoint"}),
        ("certifica_signing_errors_total", {"use": "certificate"}),
        ("certifica_process_restarts_total", {"role": "acceptor"}),
        ("certifica_recipients_final_total", {"outcome": "failed"}),
        ("certifica_tracking_hits_total", {"kind": "open", "classification": "person"}),
    ):
        assert after[(name, tuple(sorted(labels.items())))] == 0, name
    # Every recipient of the message is final now: nothing queued or deferred is its.
    assert value(after, "certifica_queue_recipients", state="deferred") == 0
    assert value(after, "certifica_queue_oldest_deferred_seconds") == 0
    # The message's evidence entries are either covered by a checkpoint already or
    # waiting for the next one.
    assert ("certifica_evidence_checkpoint_age_seconds", ()) in after or (
        value(after, "certifica_evidence_unstamped_seconds") > 0
    )


def test_healthz_and_readyz(gateway: Gateway) -> None:
    status, kind, body = get(gateway, "/healthz")
    assert (status, json.loads(body)) == (200, {"status": "up"})
    # listen.json is written before the children start: wait for the acceptors.
    report = wait_until(lambda: (r := readyz(gateway))[0] == 200 and r[1], what="/readyz 200")
    assert report["status"] == "ready" and report["failed"] == []
    assert set(report["checks"]) == CHECKS
    assert all(c["ok"] for c in report["checks"].values()), report
    assert "MB free" in report["checks"]["spool"]["detail"]


def test_admin_pages_are_not_on_the_public_listener(gateway: Gateway) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        status, _, _ = get(gateway, path, listener="http")
        assert status == 404, path
    status, _, _ = get(gateway, "/nothing-here")
    assert status == 404


@pytest.fixture(scope="module")
def short_gateway(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    """A gateway whose spool must keep 100 TB free: short of space from the start."""
    tmp = tmp_path_factory.mktemp("short")
    cfg = write_config(tmp, {"example.org": mx.port, "example.com": mx.port})
    text = cfg.read_text().replace("recipients = 5\n", "recipients = 5\nmin_free = 100000000\n")
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def test_below_min_free_mail_gets_452_and_readyz_names_the_spool(short_gateway: Gateway) -> None:
    gw = short_gateway
    with gw.smtp() as c:
        code, text = c.mail("alice@example.com")
    assert (code, text.decode()) == (452, replies.LOW_ON_SPACE[4:])
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        assert c.mail("bob@example.org")[0] == 452

    def only_spool_fails() -> dict[str, Any] | None:
        status, report = readyz(gw)
        return report if status == 503 and report["failed"] == ["spool"] else None

    report = wait_until(only_spool_fails, what="/readyz failing on the spool alone")
    assert report["status"] == "not ready"
    assert not report["checks"]["spool"]["ok"]
    assert "limits.min_free = 100000000 MB" in report["checks"]["spool"]["detail"]
    samples = scrape(gw)
    refused = value(
        samples,
        "certifica_smtp_refusals_total",
        listener="submission",
        command="MAIL",
        reason="4.3",
    )
    assert refused == 1
    assert (
        value(samples, "certifica_smtp_refusals_total", listener="mx", command="MAIL", reason="4.3")
        == 1
    )


def test_a_child_killed_is_counted_as_a_restart(short_gateway: Gateway) -> None:
    gw = short_gateway
    status_file = gw.state / "run" / "status" / "delivery-0.json"
    pid = wait_until(lambda: status_file.exists() and json.loads(status_file.read_text())["pid"])
    before = value(scrape(gw), "certifica_process_restarts_total", role="delivery")
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (
            value(scrape(gw), "certifica_process_restarts_total", role="delivery") == before + 1
        ),
        what="the restart in /metrics",
    )


def test_a_dead_tsa_fails_readyz_and_counts_its_errors(tmp_path: Path, mx: Sink) -> None:
    """A remote TSA nobody answers at: the certificate and the checkpoint that needed it
    count an error each, and /readyz names the TSA (from those real uses: no probe
    asked it for a timestamp)."""
    dead = free_port()
    cfg = write_config(
        tmp_path,
        {"example.org": mx.port, "example.com": mx.port},
        "[evidence]\ncheckpoint_interval = 1.0\n",
    )
    text = cfg.read_text().replace(
        "[signing]\nworkers = 1\n",
        f'[signing]\nworkers = 1\ntsa_url = "http://127.0.0.1:{dead}/tsa"\ntsa_timeout = 1.0\n',
    )
    cfg.write_text(text)
    gw = start_gateway(cfg)
    try:
        # Nothing used the TSA yet (the evidence log is empty): a TCP probe, no request.
        _, report = wait_until(
            lambda: (r := readyz(gw))[0] == 503 and "tsa" in r[1]["failed"] and r,
            what="/readyz failing on the TSA",
        )
        assert report["checks"]["tsa"]["detail"].startswith(
            f"no recent request; 127.0.0.1:{dead} unreachable"
        )
        submit(gw, make_message(subject="No timestamp"), ["bob@example.org", CERT_ADDRESS])

        def errors() -> Samples | None:
            samples = scrape(gw)
            certificate = value(samples, "certifica_tsa_errors_total", use="certificate")
            checkpoint = value(samples, "certifica_tsa_errors_total", use="checkpoint")
            return samples if certificate >= 1 and checkpoint >= 1 else None

        samples = wait_until(errors, what="TSA errors in /metrics")
        assert value(samples, "certifica_signing_errors_total", use="certificate") == 0
        assert value(samples, "certifica_certificate_seconds_count", result="failed") >= 1
        status, report = readyz(gw)
        assert status == 503 and "tsa" in report["failed"], report
        assert "the last request failed" in report["checks"]["tsa"]["detail"]
        assert report["checks"]["spool"]["ok"] and report["checks"]["database"]["ok"]
    finally:
        gw.stop()
    assert "Traceback" not in gw.log()


def test_reason_class_is_the_enhanced_code_class_and_subject() -> None:
    assert reason_class(replies.LOW_ON_SPACE) == "4.3"
    assert reason_class(replies.RELAY_DENIED) == "5.7"
    assert reason_class("554 no enhanced code") == "5.x"


def test_free_space_is_asked_once_per_interval(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    cached, fresh = FreeSpace(spool, 1, every=3600.0), FreeSpace(spool, 1, every=0.0)
    first = cached.free()
    assert 0 < first < float("inf") and not cached.low()
    assert 0 < fresh.free() < float("inf")
    spool.rmdir()  # now statvfs fails: only a new look sees it
    assert cached.free() == first
    assert fresh.free() == float("inf")
    assert FreeSpace(tmp_path, min_free=0).low() is False


def test_the_tsa_probe_connects_at_most_every_few_minutes_and_asks_nothing(
    tmp_path: Path,
) -> None:
    """With no real use on record, /readyz reaches a remote TSA's host by TCP, once per
    TSA_PROBE_EVERY, and sends it nothing: no timestamp is ever bought by a probe."""
    received: list[bytes] = []
    connections = []

    async def run() -> tuple[Check, Check, int]:
        heard = asyncio.Event()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(writer)
            received.append(await reader.read())  # until the probe closes
            writer.close()
            heard.set()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg_path = tmp_path / "config.toml"
        cfg_path.write_text(
            f'[gateway]\nstate_dir = "state"\n[signing]\ntsa_url = "http://127.0.0.1:{port}/tsa"\n'
        )
        cfg = load_config(cfg_path)
        with Store(tmp_path / "queue.db", 60.0) as store:
            readiness = Readiness(cfg, store, FreeSpace(tmp_path, 0), {})
            first = await readiness.timestamps(time.time())
            second = await readiness.timestamps(time.time())
        await asyncio.wait_for(heard.wait(), 10)
        server.close()
        await server.wait_closed()
        return first, second, port

    first, second, port = asyncio.run(run())
    assert (first.ok, first.detail) == (True, f"no recent request; 127.0.0.1:{port} is reachable")
    assert second is first  # the second look within TSA_PROBE_EVERY reuses the probe
    assert len(connections) == 1 and TSA_PROBE_EVERY >= 60
    assert received == [b""]  # connected, then closed: not one byte of a request


ADAPTER_PROBE = """
import sys
from pathlib import Path
from prometheus_client import CollectorRegistry, generate_latest
from relay.metrics import MESSAGES_ACCEPTED, ValueFiles, enable_multiprocess

directory = Path(sys.argv[1])
enable_multiprocess(directory)
MESSAGES_ACCEPTED.labels("mx").inc(3)
(directory / "counter_999999.db").touch()  # another process's file, still being made
registry = CollectorRegistry()
registry.register(ValueFiles(directory))
print(sorted(p.name for p in directory.iterdir()))
print(generate_latest(registry).decode())
"""


def test_the_prometheus_client_adapter_works_with_the_installed_version(tmp_path: Path) -> None:
    """relay/metrics.py reaches past prometheus-client's public API in one place (the
    value class, the merge of the value files): checked against the installed library,
    in a fresh interpreter (it changes where that process keeps its values). Another
    version than the one the code was written for fails here first, by name."""
    import subprocess
    import sys

    from relay.metrics import PINNED_VERSION, installed_version

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"prometheus-client=={PINNED_VERSION}"' in pyproject
    assert installed_version() == PINNED_VERSION, (
        f"prometheus-client {installed_version()} is installed; relay/metrics.py's adapter "
        f"was written for {PINNED_VERSION}: check it against the new version, then "
        "PINNED_VERSION and pyproject.toml"
    )
    directory = tmp_path / "metrics"
    probe = subprocess.run(
        [sys.executable, "-c", ADAPTER_PROBE, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert probe.returncode == 0, probe.stderr
    files, exposition = probe.stdout.split("\n", 1)
    assert f"'counter_{os.getpid()}.db'" not in files  # the probe's own pid, not ours
    assert files.count(".db") == 2, files  # the value went to a file of the directory
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    assert samples[("certifica_messages_accepted_total", (("listener", "mx"),))] == 3.0
