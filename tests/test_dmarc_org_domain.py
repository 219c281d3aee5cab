"""The DMARC organisational domain (RFC 7489 §3.2) comes from the Public Suffix List.

The cases are those the former hand-made rule (the last two labels, three under a short
list of registries) answered wrongly: it put every ``github.io`` and ``blogspot.com``
site in one organisation, so one site's signature aligned with another's From, and it
looked for the DMARC record of ``example.co.at`` at ``_dmarc.co.at``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.smtpd.authn import AuthResults, authenticate, organizational_domain
from tests.dnsserver import DNSServer
from tests.test_authn import MESSAGE, STRONG, dkim_sign, dns_txt, with_from


@pytest.mark.parametrize(
    "domain, expected",
    [
        # Private registries (the PSL's private section): each site is its own organisation.
        ("foo.github.io", "foo.github.io"),
        ("www.foo.github.io", "foo.github.io"),
        ("x.blogspot.com", "x.blogspot.com"),
        # Multi-label public suffixes the old list did not have.
        ("mail.example.co.at", "example.co.at"),
        ("a.b.x.k12.ca.us", "x.k12.ca.us"),
        ("mail.city.kawasaki.jp", "city.kawasaki.jp"),  # !city.kawasaki.jp: an exception rule
        ("mail.example.com.ua", "example.com.ua"),
        # The old list's cases still hold.
        ("example.co.uk", "example.co.uk"),
        ("news.example.co.uk", "example.co.uk"),
        ("example.com.au", "example.com.au"),
        ("deep.sub.example.com.au", "example.com.au"),
        ("mail.example.com", "example.com"),
        ("MAIL.Example.COM.", "example.com"),
        # Names the list has no rule for: the last label is the public suffix.
        ("news.sender.test", "sender.test"),
        ("certifica.localhost", "certifica.localhost"),
        # A public suffix, a bare label, nothing: their own organisational domain.
        ("co.uk", "co.uk"),
        ("github.io", "github.io"),
        ("com", "com"),
        ("", ""),
        ("a..b", "a.b"),
    ],
)
def test_organisational_domain_follows_the_public_suffix_list(domain: str, expected: str) -> None:
    assert organizational_domain(domain) == expected


@given(st.text(max_size=300))
def test_organisational_domain_never_raises(domain: str) -> None:
    org = organizational_domain(domain)
    assert isinstance(org, str)
    assert len(org) <= len(domain) * 3  # lower-casing may grow a name, never invent one


@given(st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True), max_size=8))
def test_organisational_domain_is_a_suffix_of_the_name(labels: list[str]) -> None:
    name = ".".join(labels)
    org = organizational_domain(name)
    assert name == org or name.endswith("." + org)
    assert organizational_domain(org) == org


# -- through authenticate(), against a real DNS server ----------------------------------
@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("sel._domainkey.attacker.github.io", "TXT", dns_txt(STRONG))
        server.add("sel._domainkey.example.co.at", "TXT", dns_txt(STRONG))
        server.add("_dmarc.example.co.at", "TXT", "v=DMARC1; p=none; sp=reject")
        yield server


def _check(dns: DNSServer, raw: bytes, from_domain: str) -> AuthResults:
    return asyncio.run(
        authenticate(raw, "", "127.0.0.9", "client.test", from_domain, [dns.address], 2.0)
    )


def test_one_github_io_site_does_not_align_with_another(dns: DNSServer) -> None:
    raw = dkim_sign(with_from(MESSAGE, "alice@victim.github.io"), "attacker.github.io")
    results = _check(dns, raw, "victim.github.io")
    assert [(d.domain, d.result) for d in results.dkim] == [("attacker.github.io", "pass")]
    assert not results.aligned_dkim
    assert not results.passes("dkim")


def test_subdomain_under_a_multi_label_suffix_aligns_and_inherits_sp(dns: DNSServer) -> None:
    raw = dkim_sign(with_from(MESSAGE, "alice@news.example.co.at"), "example.co.at")
    results = _check(dns, raw, "news.example.co.at")
    assert results.aligned_dkim and results.passes("dkim")
    # No record at _dmarc.news.example.co.at: the organisational domain's sp= applies
    # (the old rule asked _dmarc.co.at and found none).
    assert results.dmarc_policy == "reject"
