"""Webhooks without a gateway: the events an evidence entry makes, the retry schedule, the
signature, and which addresses are refused (relay/webhooks/, relay/process/webhooks.py)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from pathlib import Path

import pytest

from relay.config import Config, WebhooksConfig, load_config
from relay.process.webhooks import backoff, outcome
from relay.queue.webhooks import Attempt, DeliveryState, Due, Entry, WebhookEvent
from relay.webhooks.events import mapper, payload
from relay.webhooks.guard import why_forbidden
from relay.webhooks.signing import header, new_secret

KEY = b"k" * 32


def entry(event: str, detail: dict | None = None, **kw: object) -> Entry:
    values: dict = {
        "seq": 7,
        "time": 1796290925.5,
        "qid": "4F2A1B3C9D01",
        "recipient": "bob@example.org",
        "event": event,
        "detail": detail or {},
        "org": "ACME",
        "cert_id": "CF-0001",
        "certified": True,
    }
    values.update(kw)
    return Entry(**values)


def test_each_evidence_event_maps_to_its_webhook_event() -> None:
    delivered = payload(
        entry("RelayToNonERDS", {"reply": "250 2.0.0 Ok"}), "https://v.example", KEY
    )
    assert delivered is not None
    event, body = delivered
    assert event == WebhookEvent.DELIVERED
    assert body["status"] == "delivered" and body["reply"] == "250 2.0.0 Ok"
    assert body["time"] == "2026-12-03T09:42:05.500Z"
    assert body["verification_url"].startswith("https://v.example/v/")
    failed = payload(entry("RelayToNonERDSFailure", {"reply": "550 5.1.1 No"}), "https://v", KEY)
    assert failed is not None and failed[1]["status"] == "failed"
    late = payload(
        entry("RelayToNonERDSFailure", {"late": True, "status": "5.1.1", "diagnostic": "gone"}),
        "https://v",
        KEY,
    )
    assert late is not None and late[0] == WebhookEvent.FAILED
    assert late[1]["status"] == "bounced" and late[1]["reply"] == "gone"
    opened = payload(
        entry("LinkClicked", {"url": "https://secret.example/x", "automatic": True}),
        "https://v",
        KEY,
    )
    assert opened is not None and opened[0] == WebhookEvent.OPENED
    assert opened[1]["status"] == "clicked" and opened[1]["automatic"] is True
    assert "secret.example" not in json.dumps(opened[1])  # no link, no content
    issued = payload(
        entry("AddendumIssued", {"certificate_id": "CF-0002"}, recipient=None), "https://v", KEY
    )
    assert issued is not None and issued[0] == WebhookEvent.CERTIFICATE
    assert issued[1]["certificate_id"] == "CF-0002" and issued[1]["document"] == "addendum"
    for other in ("SubmissionAcceptance", "RelayAttemptDeferred", "NoticeSent", "CreditsCharge"):
        assert payload(entry(other), "https://v", KEY) is None
    plain = payload(entry("RelayToNonERDS", certified=False, cert_id=None), "https://v", KEY)
    assert plain is not None
    assert plain[1]["certificate_id"] is None and plain[1]["verification_url"] is None
    mapped = mapper("https://v", KEY)(entry("ContentOpened"))
    assert mapped is not None and json.loads(mapped[1])["status"] == "opened"


def cfg(**webhooks: float) -> Config:
    return Config(webhooks=WebhooksConfig(**webhooks))


def due(created: float, attempts: int) -> Due:
    return Due(1, 1, "https://h.example/", "s", "delivered", "{}", created, attempts)


def test_backoff_doubles_with_jitter_up_to_max_retry() -> None:
    c = cfg(first_retry=30, max_retry=3600)
    for n, base in ((1, 30), (2, 60), (3, 120), (8, 3600), (40, 3600)):
        for _ in range(20):
            assert 0.8 * base <= backoff(c, n) <= 1.2 * base


def test_outcome_delivers_on_2xx_retries_then_gives_up_at_retry_for() -> None:
    c = cfg(first_retry=30, max_retry=3600, retry_for=86400)
    ok = Attempt(100.0, 204, None, 0.1)
    assert outcome(c, due(0, 0), ok, 100.0) == (DeliveryState.DELIVERED, 100.0)
    for status, error in ((500, None), (301, None), (None, "timed out after 10 s")):
        state, when = outcome(c, due(0, 0), Attempt(100.0, status, error, 1.0), 100.0)
        assert state == DeliveryState.PENDING and 124 <= when <= 136
    # The last wait is cut to the deadline, so the last attempt is made at it ...
    state, when = outcome(c, due(0, 30), Attempt(86000.0, 500, None, 1.0), 86000.0)
    assert state == DeliveryState.PENDING and when == 86400.0
    # ... and one that fails then is given up.
    assert outcome(c, due(0, 31), Attempt(86400.0, 500, None, 1.0), 86400.0)[0] == (
        DeliveryState.FAILED
    )


def test_the_signature_is_hmac_sha256_of_time_dot_body() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) > 40 and secret != new_secret()
    body = b'{"event":"delivered"}'
    value = header(secret, 1796290925, body)
    expected = hmac.new(secret.encode(), b"1796290925." + body, hashlib.sha256).hexdigest()
    assert value == f"t=1796290925,v1={expected}"


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("fd12::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - the address being refused
        ("::", "unspecified"),
        ("::ffff:169.254.169.254", "IPv6 form of 169.254.169.254, a link-local"),
        ("64:ff9b::7f00:1", "IPv6 form of 127.0.0.1, a loopback"),
        ("2002:0a00:0001::1", "IPv6 form of 10.0.0.1, a private"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "IPv6 form of 10.0.0.1, a private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, words: str) -> None:
    why = why_forbidden(ipaddress.ip_address(address), allow_loopback=False)
    assert why is not None and words in why


def test_public_addresses_pass_and_development_allows_loopback() -> None:
    for address in ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:8.8.8.8"):
        assert why_forbidden(ipaddress.ip_address(address), allow_loopback=False) is None
    assert why_forbidden(ipaddress.ip_address("127.0.0.1"), allow_loopback=True) is None
    assert why_forbidden(ipaddress.ip_address("::ffff:127.0.0.1"), allow_loopback=True) is None
    assert why_forbidden(ipaddress.ip_address("10.0.0.1"), allow_loopback=True) is not None


def test_the_retry_keys_are_checked(tmp_path: Path) -> None:
    from relay.config import ConfigError

    path = tmp_path / "config.toml"
    path.write_text("[webhooks]\nfirst_retry = 600\nmax_retry = 60\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: webhooks.first_retry")
