"""Regressions for what the fuzz campaign (tests/fuzz_smtp.py) found, against the gateway.

Each test is the smallest input that showed the fault, sent with a real client.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from relay.authn import check_arc
from tests.conftest import Gateway, Received, Sink
from tests.dnsserver import DNSServer


def test_a_header_line_that_is_not_a_field_is_relayed_unsigned_with_a_warning(
    gateway: Gateway, mx: Sink
) -> None:
    """dkimpy cannot parse such a header section (nor could a verifier): the mail goes
    out as received, and the log says why in one warning line, not an error."""
    raw = (
        b"From: alice@example.com\r\nTo: frank@example.org\r\nSubject: no colon\r\n"
        b"this line is not a header field\r\n\r\nbody\r\n"
    )
    with gateway.smtp() as client:
        client.sendmail("alice@example.com", ["frank@example.org"], raw)

    def arrived(ms: list[Received]) -> bool:
        return any("frank@example.org" in m.rcpt_tos for m in ms)

    mx.wait_for(arrived)
    copy = mx.to("frank@example.org")[0].data
    assert copy.endswith(raw)
    assert b"DKIM-Signature" not in copy
    log = gateway.log()
    assert "not DKIM-signed: a header line is neither a field nor a continuation" in log
    assert "DKIM signing failed" not in log


def test_a_broken_arc_set_is_a_verdict_not_an_error_line(caplog: pytest.LogCaptureFixture) -> None:
    """dkimpy logged "Incomplete ARC set for instance <the sender's number>" at error
    level (client text, unescaped, as a fault of the gateway); the verdict is enough."""
    raw = (
        b"ARC-Seal: i=99999999999999999999; cv=pass; a=rsa-sha256; d=x.test; s=s; b=AA==\r\n"
        b"ARC-Seal: i=1; cv=none; b=\r\nFrom: a@x.test\r\nSubject: arc\r\n\r\nbody\r\n"
    )
    caplog.set_level(logging.DEBUG)
    with DNSServer() as dns:
        result = asyncio.run(check_arc(raw, [dns.address], 2.0))
    assert result.result == "fail"
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.name == "dkimpy"] == []
