"""Regressions for what the fuzz campaign (tests/fuzz_smtp.py) found, against the gateway.

Each test is the smallest input that showed the fault, sent with a real client.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certifier.mime import header_fields
from relay.smtpd.authn import check_arc
from tests.conftest import Gateway, Received, Sink, assert_clean_log
from tests.dnsserver import DNSServer
from tests.fuzz_smtp import World


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


@given(
    st.lists(st.sampled_from([b"A: b\r\n", b" x\r\n", b"\tc\r\n", b"\r\n", b"From: a@b\r\n", b"y"]))
)
def test_header_fields_join_back_to_the_header(pieces: list[bytes]) -> None:
    """A header section starting with a continuation line, or empty, made
    ``header_fields`` raise (zip of unequal lengths): reception answered 451."""
    header = b"".join(pieces)
    fields = header_fields(header)
    assert b"".join(fields) == header
    assert all(fields)


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    world = World(tmp_path_factory.mktemp("fuzzworld"))
    yield world
    world.close()
    assert_clean_log(world.gw.log())


@pytest.mark.parametrize(
    "raw",
    [
        b"\r\nno header section at all\r\n",
        b" leading continuation\r\nFrom: carol@partner.test\r\nSubject: x\r\n\r\nbody\r\n",
    ],
)
def test_reception_of_a_message_without_a_proper_first_field(fuzz_world: World, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", fuzz_world.port("mx"), timeout=30) as client:
        client.ehlo("partner.test")
        client.mail("carol@partner.test")
        client.rcpt(fuzz_world.reception)
        code, reply = client.data(raw)
    assert code == 250, reply
    assert b"queued as" in reply
