"""Options that change what the submission side accepts: implicit TLS, timeouts, relay policy."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    client_tls_context,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import generated_for


def test_implicit_tls_submission(gateway: Gateway, mx: Sink) -> None:
    port = gateway.port("submission_tls")
    with smtplib.SMTP_SSL(
        "127.0.0.1", port, context=client_tls_context(gateway.state), timeout=30
    ) as c:
        c.ehlo("client.test")
        assert "PLAIN" in c.esmtp_features["auth"]
        assert not c.has_extn("starttls")
        c.login("alice@example.com", PASSWORD)
        c.mail("alice@example.com")
        c.rcpt("frank@example.org")
        c.rcpt(CERT_ADDRESS)
        code, text = c.data(make_message(to="frank@example.org"))
        assert code == 250
    qid = text.decode().rsplit(" ", 1)[1]
    cert = generated_for(mx, qid, "certificate")
    assert cert.rcpt_tos == ["alice@example.com"]


@pytest.fixture()
def strict(sink_server: SinkServer, tmp_path: Path) -> Iterator[Gateway]:
    sink = sink_server.start(Sink())
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace("[limits]\n", "[limits]\ntimeout = 1.0\n")
    text = text.replace("[gateway]\n", "[gateway]\nrelay_uncertified = false\n")
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def test_uncertified_mail_refused_when_relaying_is_off(strict: Gateway) -> None:
    with strict.smtp() as c:
        c.mail("alice@example.com")
        c.rcpt("bob@example.org")
        code, text = c.data(make_message(cc=""))
        assert code == 550 and text.startswith(b"5.7.1") and CERT_ADDRESS.encode() in text


def test_silent_client_gets_421_then_disconnect(strict: Gateway) -> None:
    sock = socket.create_connection(("127.0.0.1", strict.port()), timeout=10)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    started = time.monotonic()
    line = f.readline()
    assert line.startswith(b"421 4.4.2"), line
    assert f.readline() == b""  # closed
    assert time.monotonic() - started < 8
    sock.close()
