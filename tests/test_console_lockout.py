"""The console's login shares SMTP AUTH's lockout (``[limits] auth_block``): failures
on either count together per client address, across the acceptor processes. Each test
comes from an address of its own on loopback (127.0.0.0/8 all reaches the gateway), so
one test's failures do not block another's.
"""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator

import pytest

from tests.conftest import PASSWORD, Gateway, Sink, client_tls_context, start_gateway, write_config
from tests.console_site import SENDER, ConsoleClient, add_organisation

BLOCK = 3


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("lockout")
    cfg = write_config(tmp, {"example.org": mx.port})
    text = cfg.read_text()  # write_config has a [limits] table: the key goes in it
    cfg.write_text(text.replace("[limits]\n", f"[limits]\nauth_block = {BLOCK}\n", 1))
    gateway = start_gateway(cfg)
    add_organisation(gateway, members={SENDER: "sender"})
    yield gateway
    gateway.stop()


def smtp_login(gw: Gateway, source: str, password: str) -> None:
    """AUTH from ``source``; raises what smtplib raises on a refusal."""
    client = smtplib.SMTP("127.0.0.1", gw.port(), timeout=30, source_address=(source, 0))
    try:
        client.ehlo("client.test")
        client.starttls(context=client_tls_context(gw.state))
        client.ehlo("client.test")
        client.login(SENDER, password)
    finally:
        try:
            client.quit()
        except smtplib.SMTPException:
            pass


def test_failures_on_smtp_lock_the_console(gw: Gateway) -> None:
    source = "127.0.0.2"
    for _ in range(BLOCK):
        with pytest.raises(smtplib.SMTPException):
            smtp_login(gw, source, "wrong password")
    refused = ConsoleClient(gw, source=source).login(SENDER)  # the right password
    assert refused.status == 429
    assert "Too many failed attempts from your network address." in refused.text
    # another address is not locked
    assert ConsoleClient(gw, source="127.0.0.4").login(SENDER).status == 303


def test_failures_on_the_console_lock_smtp(gw: Gateway) -> None:
    source = "127.0.0.3"
    client = ConsoleClient(gw, source=source)
    for _ in range(BLOCK):
        assert client.login(SENDER, "wrong password").status == 401
    assert client.login(SENDER).status == 429  # the console itself refuses
    assert smtp_auth_reply(gw, source, PASSWORD)[0] == 421


def smtp_auth_reply(gw: Gateway, source: str, password: str) -> tuple[int, bytes]:
    """The reply to AUTH PLAIN from ``source`` (the right password, here)."""
    client = smtplib.SMTP("127.0.0.1", gw.port(), timeout=30, source_address=(source, 0))
    try:
        client.ehlo("client.test")
        client.starttls(context=client_tls_context(gw.state))
        client.ehlo("client.test")
        token = base64.b64encode(f"\0{SENDER}\0{password}".encode()).decode()
        return client.docmd("AUTH", "PLAIN " + token)
    finally:
        client.close()
