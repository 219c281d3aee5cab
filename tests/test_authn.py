"""Sender authentication (DKIM, SPF, DMARC) and outbound DKIM keys, against real DNS.

Every record is served by :class:`tests.dnsserver.DNSServer`; every signature is made
here with dkimpy and keys generated here (RSA keys under 1024 bits, which the
``cryptography`` package refuses to generate, are built from primes found below).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.util import parse_tag_value
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.delivery.dkim_keys import DkimKey, DkimKeyring, sign
from relay.smtpd.authn import AuthResults, DkimResult, TemporaryAuthError, authenticate
from tests.dnsserver import DNSServer

ALLOWED_IP = "127.0.0.1"  # in sender.test's SPF record
OTHER_IP = "127.0.0.9"  # in nobody's

MESSAGE = (
    b"From: Alice Sender <alice@sender.test>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Cc: certifica@gateway.test\r\n"
    b"Subject: The signed contract\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <contract-1@sender.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Please find the terms below.\r\n"
)


# -- keys ------------------------------------------------------------------------------
def _is_prime(n: int) -> bool:
    """Miller-Rabin with random bases: good enough for throw-away test keys."""
    if n % 2 == 0:
        return n == 2
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(24):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def _prime(bits: int) -> int:
    while True:
        n = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if _is_prime(n):
            return n


def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """An RSA key of any size, including sizes too small to be generated normally."""
    if bits >= 1024:
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    e = 65537
    while True:
        p, q = _prime(bits // 2), _prime(bits // 2)
        if p != q and ((p - 1) * (q - 1)) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(
        p,
        q,
        d,
        rsa.rsa_crt_dmp1(d, p),
        rsa.rsa_crt_dmq1(d, q),
        rsa.rsa_crt_iqmp(p, q),
        rsa.RSAPublicNumbers(e, p * q),
    )
    return numbers.private_key()


def private_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def dns_txt(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


KEYS = {bits: rsa_key(bits) for bits in (512, 768, 2048)}
STRONG = KEYS[2048]


def dkim_sign(
    message: bytes,
    domain: str,
    selector: str = "sel",
    *,
    key: rsa.RSAPrivateKey = STRONG,
    algorithm: bytes = b"rsa-sha256",
    length: bool = False,
) -> bytes:
    header = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        private_pem(key),
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=[b"from", b"to", b"cc", b"subject", b"date", b"message-id"],
        length=length,
    )
    return header + message


# -- the DNS ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        server.add("sender.test", "TXT", f"v=spf1 ip4:{ALLOWED_IP} -all")
        server.add("sender.test", "TXT", "some-site-verification=abc")
        server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject; sp=quarantine")
        server.add("sel._domainkey.sender.test", "TXT", dns_txt(STRONG))
        server.add("weak512._domainkey.sender.test", "TXT", dns_txt(KEYS[512]))
        server.add("weak768._domainkey.sender.test", "TXT", dns_txt(KEYS[768]))
        server.servfail("broken._domainkey.sender.test")
        server.servfail("bounces.sender.test")
        server.add("news.sender.test", "A", "127.0.0.3")
        server.add("other.test", "TXT", "v=spf1 -all")
        server.add("sel._domainkey.other.test", "TXT", dns_txt(STRONG))
        server.add("soft.test", "TXT", "v=spf1 ~all")
        server.add("strict.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.strict.test", "TXT", "v=DMARC1; p=none; adkim=s; aspf=s")
        server.add("sel._domainkey.strict.test", "TXT", dns_txt(STRONG))
        server.add("mail.strict.test", "TXT", f"v=spf1 ip4:{ALLOWED_IP} -all")
        server.drop("slow.test")
        yield server


def check(
    dns: DNSServer,
    raw: bytes,
    *,
    mail_from: str = "alice@sender.test",
    ip: str = OTHER_IP,
    helo: str = "mail.sender.test",
    from_domain: str = "sender.test",
    timeout: float = 2.0,
) -> AuthResults:
    return asyncio.run(authenticate(raw, mail_from, ip, helo, from_domain, [dns.address], timeout))


def with_from(message: bytes, address: str) -> bytes:
    return message.replace(b"alice@sender.test", address.encode(), 1)


# -- DKIM ------------------------------------------------------------------------------
def test_signature_by_the_from_domain_passes_aligned(dns: DNSServer) -> None:
    results = check(dns, dkim_sign(MESSAGE, "sender.test"))
    assert results.dkim == (DkimResult("sender.test", "sel", "pass", ""),)
    assert results.aligned_dkim and not results.aligned_spf
    assert results.spf == "fail"  # OTHER_IP is not in the SPF record: DKIM alone carries it
    assert (results.dmarc, results.dmarc_policy) == ("pass", "reject")
    assert results.passes("dkim") and results.passes("dkim-or-spf")


def test_unsigned_mail_is_refused_with_a_plain_sentence(dns: DNSServer) -> None:
    results = check(dns, MESSAGE)
    assert results.dkim == ()
    assert not results.aligned_dkim and not results.aligned_spf
    assert results.dmarc == "fail"
    assert not results.passes("dkim-or-spf")
    sentence = results.refusal("dkim-or-spf")
    assert "DKIM" in sentence and "SPF" in sentence and "sender.test" in sentence
    assert sentence.endswith(".") and "\r" not in sentence and "\n" not in sentence
    assert "SPF" not in results.refusal("dkim") and "DKIM" in results.refusal("dkim")


def test_signature_by_another_domain_passes_but_does_not_align(dns: DNSServer) -> None:
    results = check(dns, dkim_sign(MESSAGE, "other.test"))
    assert results.dkim == (DkimResult("other.test", "sel", "pass", ""),)
    assert not results.aligned_dkim and not results.passes("dkim-or-spf")
    assert "other.test" in results.refusal("dkim")


def test_l_tag_signature_with_appended_text_does_not_count(dns: DNSServer) -> None:
    signed = dkim_sign(MESSAGE, "sender.test", length=True)
    assert b"l=" in signed.split(b"\r\nFrom:")[0]
    results = check(dns, signed + b"Appended later: pay to another account.\r\n")
    (sig,) = results.dkim
    assert sig.result == "neutral" and "l=" in sig.reason
    assert not results.aligned_dkim
    assert "l=" in results.refusal("dkim")


def test_rsa_sha1_signature_does_not_count(dns: DNSServer) -> None:
    results = check(dns, dkim_sign(MESSAGE, "sender.test", algorithm=b"rsa-sha1"))
    (sig,) = results.dkim
    assert (sig.result, sig.reason) == ("neutral", "rsa-sha1")
    assert not results.aligned_dkim


@pytest.mark.parametrize("bits", [512, 768])
def test_short_rsa_key_does_not_count(dns: DNSServer, bits: int) -> None:
    signed = dkim_sign(MESSAGE, "sender.test", f"weak{bits}", key=KEYS[bits])
    results = check(dns, signed)
    (sig,) = results.dkim
    assert (sig.result, sig.reason) == ("neutral", f"key of {bits} bits")
    assert not results.aligned_dkim


def test_tampered_body_fails(dns: DNSServer) -> None:
    signed = dkim_sign(MESSAGE, "sender.test").replace(b"terms below", b"terms BELOW")
    (sig,) = check(dns, signed).dkim
    assert (sig.result, sig.reason) == ("fail", "body hash mismatch")


def test_missing_key_fails(dns: DNSServer) -> None:
    (sig,) = check(dns, dkim_sign(MESSAGE, "sender.test", "nokey")).dkim
    assert (sig.result, sig.reason) == ("fail", "no key published")


def test_every_signature_is_reported_and_the_good_one_counts(dns: DNSServer) -> None:
    signed = dkim_sign(dkim_sign(MESSAGE, "other.test"), "sender.test", "weak768", key=KEYS[768])
    signed = dkim_sign(signed, "sender.test")
    results = check(dns, signed)
    assert sorted((s.domain, s.selector, s.result) for s in results.dkim) == [
        ("other.test", "sel", "pass"),
        ("sender.test", "sel", "pass"),
        ("sender.test", "weak768", "neutral"),
    ]
    assert results.aligned_dkim


# -- SPF -------------------------------------------------------------------------------
def test_spf_pass_alone_is_enough_only_for_dkim_or_spf(dns: DNSServer) -> None:
    results = check(dns, MESSAGE, ip=ALLOWED_IP)
    assert (results.spf, results.spf_domain) == ("pass", "sender.test")
    assert results.aligned_spf and not results.aligned_dkim
    assert results.dmarc == "pass"
    assert results.passes("dkim-or-spf") is True
    assert results.passes("dkim") is False


@pytest.mark.parametrize(
    ("mail_from", "expected"),
    [
        ("alice@sender.test", "fail"),
        ("alice@soft.test", "softfail"),
        ("alice@nospf.test", "none"),
    ],
)
def test_spf_results(dns: DNSServer, mail_from: str, expected: str) -> None:
    results = check(dns, MESSAGE, mail_from=mail_from)
    assert results.spf == expected and not results.aligned_spf


def test_spf_pass_for_an_unaligned_domain_does_not_count(dns: DNSServer) -> None:
    results = check(dns, with_from(MESSAGE, "boss@other.test"), from_domain="other.test")
    assert results.spf == "fail"
    results = check(dns, MESSAGE, ip=ALLOWED_IP, from_domain="other.test")
    assert results.spf == "pass" and not results.aligned_spf
    assert "does not align" in results.refusal("dkim-or-spf")


def test_null_sender_checks_the_helo_name(dns: DNSServer) -> None:
    results = check(dns, MESSAGE, mail_from="", helo="mail.strict.test", ip=ALLOWED_IP)
    assert (results.spf, results.spf_domain, results.spf_scope) == (
        "pass",
        "mail.strict.test",
        "helo",
    )
    assert "smtp.helo=mail.strict.test" in results.header("gw.test")


# -- DMARC -----------------------------------------------------------------------------
def test_dmarc_policy_of_the_domain_and_of_its_subdomains(dns: DNSServer) -> None:
    assert check(dns, MESSAGE).dmarc_policy == "reject"
    # No record at _dmarc.news.sender.test: the organisational domain's sp= applies.
    sub = check(dns, with_from(MESSAGE, "alice@news.sender.test"), from_domain="news.sender.test")
    assert (sub.dmarc, sub.dmarc_policy) == ("fail", "quarantine")
    # Relaxed alignment: d=sender.test and MAIL FROM sender.test align with the subdomain.
    signed = dkim_sign(with_from(MESSAGE, "alice@news.sender.test"), "sender.test")
    sub = check(dns, signed, from_domain="news.sender.test", ip=ALLOWED_IP)
    assert sub.aligned_dkim and sub.aligned_spf and sub.dmarc == "pass"


def test_no_dmarc_record_means_none(dns: DNSServer) -> None:
    results = check(dns, with_from(MESSAGE, "boss@other.test"), from_domain="other.test")
    assert (results.dmarc, results.dmarc_policy) == ("none", None)


def test_strict_alignment_from_the_dmarc_record(dns: DNSServer) -> None:
    message = with_from(MESSAGE, "alice@mail.strict.test")
    results = check(
        dns,
        dkim_sign(message, "strict.test"),
        from_domain="mail.strict.test",
        mail_from="bounce@strict.test",
        ip=ALLOWED_IP,
    )
    assert results.dkim[0].result == "pass" and not results.aligned_dkim  # adkim=s
    assert results.spf == "fail"
    results = check(
        dns, message, from_domain="mail.strict.test", mail_from="x@mail.strict.test", ip=ALLOWED_IP
    )
    assert results.aligned_spf and results.dmarc == "pass"


# -- DNS trouble -----------------------------------------------------------------------
def test_servfail_on_the_dkim_key_is_temporary(dns: DNSServer) -> None:
    with pytest.raises(TemporaryAuthError):
        check(dns, dkim_sign(MESSAGE, "sender.test", "broken"))


def test_servfail_on_the_spf_record_is_temporary(dns: DNSServer) -> None:
    with pytest.raises(TemporaryAuthError):
        check(dns, MESSAGE, mail_from="bounce@bounces.sender.test")


def test_dns_trouble_that_decides_nothing_is_only_reported(dns: DNSServer) -> None:
    # An aligned DKIM pass decides: the SPF SERVFAIL is reported, not raised.
    results = check(dns, dkim_sign(MESSAGE, "sender.test"), mail_from="b@bounces.sender.test")
    assert results.spf == "temperror" and results.passes("dkim")
    # An SPF pass decides: the unreachable key of the signature is only reported.
    results = check(dns, dkim_sign(MESSAGE, "sender.test", "broken"), ip=ALLOWED_IP)
    assert results.dkim[0].result == "temperror" and results.passes("dkim-or-spf")
    assert "dkim=temperror" in results.header("gw.test")


def test_silent_dns_is_temporary_within_the_timeout(dns: DNSServer) -> None:
    with pytest.raises(TemporaryAuthError):
        check(dns, with_from(MESSAGE, "a@slow.test"), from_domain="slow.test", timeout=0.5)


# -- the header ------------------------------------------------------------------------
def test_authentication_results_header(dns: DNSServer) -> None:
    signed = dkim_sign(dkim_sign(MESSAGE, "sender.test", "weak768", key=KEYS[768]), "sender.test")
    results = check(dns, signed, ip=ALLOWED_IP)
    assert results.header("gw.example") == (
        "gw.example; dkim=pass header.d=sender.test header.s=sel; "
        'dkim=neutral reason="key of 768 bits" header.d=sender.test header.s=weak768; '
        "spf=pass smtp.mailfrom=sender.test; dmarc=pass header.from=sender.test"
    )
    odd = AuthResults(
        from_domain="sender.test",
        dkim=(DkimResult("x.test", 'a"b', "fail", 'bad "quote"\r\n'),),
        spf="none",
        spf_domain="",
        dmarc="none",
        dmarc_policy=None,
        aligned_dkim=False,
        aligned_spf=False,
    )
    assert odd.header("gw") == (
        'gw; dkim=fail reason="bad \\"quote\\"" header.d=x.test header.s="a\\"b"; '
        "spf=none; dmarc=none header.from=sender.test"
    )
    unsigned = check(dns, MESSAGE)
    assert unsigned.header("gw").startswith("gw; dkim=none; spf=fail smtp.mailfrom=sender.test;")


# -- never a crash ---------------------------------------------------------------------
_signature_junk = st.binary(max_size=300).map(
    lambda b: b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test; s=sel; " + b + b"\r\n"
)


@settings(max_examples=30, deadline=None)
@given(
    raw=st.one_of(
        st.binary(max_size=2000),
        st.tuples(_signature_junk, st.binary(max_size=500)).map(
            lambda parts: parts[0] + MESSAGE + parts[1]
        ),
        st.binary(max_size=400).map(lambda b: b"DKIM-Signature:" + b + b"\r\n" + MESSAGE),
    )
)
def test_any_bytes_give_a_result_or_a_temporary_error(dns: DNSServer, raw: bytes) -> None:
    try:
        results = check(dns, raw)
    except TemporaryAuthError:
        return
    assert not results.aligned_dkim or any(s.result == "pass" for s in results.dkim)
    assert "\n" not in results.header("gw") and "\n" not in results.refusal("dkim")


# -- outbound keys ---------------------------------------------------------------------
def test_keyring_add_list_for_domain(tmp_path: Path) -> None:
    ring = DkimKeyring(tmp_path)
    assert ring.list() == [] and ring.for_domain("keys.test") == []
    rsa_key_ = ring.add("Keys.Test.", "s1")
    ed_key = ring.add("keys.test", "s2", "ed25519")
    dated = ring.add("other-keys.test")
    assert dated.selector == "certifica" + datetime.now(UTC).strftime("%Y%m")
    assert rsa_key_.domain == "keys.test" and rsa_key_.dns_name == "s1._domainkey.keys.test"
    assert rsa_key_.dns_txt.startswith("v=DKIM1; k=rsa; p=")
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ed_key.dns_txt)
    assert [(k.domain, k.selector, k.algorithm) for k in ring.list()] == [
        ("keys.test", "s1", "rsa"),
        ("keys.test", "s2", "ed25519"),
        ("other-keys.test", dated.selector, "rsa"),
    ]
    assert ring.for_domain("KEYS.test") == [rsa_key_, ed_key]
    assert ring.for_domain("sub.keys.test") == [] and ring.for_domain("not a domain") == []
    assert "PRIVATE" not in repr(rsa_key_)
    for path in (tmp_path / "dkim").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    assert sorted(p.name for p in (tmp_path / "dkim" / "keys.test").iterdir()) == [
        "s1.rsa.pem",
        "s2.ed25519.pem",
    ]


def test_keyring_refuses_bad_names_and_reused_selectors(tmp_path: Path) -> None:
    ring = DkimKeyring(tmp_path)
    ring.add("keys.test", "s1", "ed25519")
    for domain, selector, algorithm in [
        ("../etc", "s1", "rsa"),
        ("localhost", "s1", "rsa"),
        ("keys.test", "a/b", "rsa"),
        ("keys.test", "-x", "rsa"),
        ("keys.test", "s3", "dsa"),
        ("keys.test", "s1", "rsa"),  # selector already used
    ]:
        with pytest.raises(ValueError) as err:
            ring.add(domain, selector, algorithm)
        assert str(err.value).endswith(".")
    assert [k.selector for k in ring.list()] == ["s1"]


def test_gateway_key_is_made_once(tmp_path: Path) -> None:
    ring = DkimKeyring(tmp_path)
    first = ring.ensure_gateway_key("gateway.test")
    assert first.algorithm == "rsa"
    assert DkimKeyring(tmp_path).ensure_gateway_key("gateway.test") == first
    assert len(ring.list()) == 1


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_published_key_verifies_what_sign_made(
    dns: DNSServer, tmp_path: Path, algorithm: str
) -> None:
    domain = f"{algorithm}.keys.test"
    key = DkimKeyring(tmp_path).add(domain, "out", algorithm)
    dns.add(key.dns_name, "TXT", key.dns_txt)
    message = with_from(MESSAGE, f"alice@{domain}")
    signed = sign(message, [key])
    assert signed.endswith(message) and signed.startswith(b"DKIM-Signature:")
    signature = signed[: -len(message)]
    tags = parse_tag_value(signature.split(b":", 1)[1].replace(b"\r\n", b""))
    assert tags[b"c"] == b"relaxed/relaxed" and b"l" not in tags
    signed_headers = [h.strip() for h in tags[b"h"].split(b":")]
    assert signed_headers == [
        b"from",
        b"to",
        b"cc",
        b"subject",
        b"date",
        b"message-id",
        b"mime-version",
        b"content-type",
        b"from",  # oversigned
    ]
    results = check(dns, signed, from_domain=domain, mail_from=f"alice@{domain}")
    assert results.dkim == (DkimResult(domain, "out", "pass", ""),)
    assert results.aligned_dkim
    # From is oversigned: a second From header breaks the signature.
    forged = signed.replace(b"From: ", b"From: Mallory <m@evil.test>\r\nFrom: ", 1)
    assert check(dns, forged, from_domain=domain).dkim[0].result == "fail"


def test_sign_with_two_keys_adds_two_signatures(dns: DNSServer, tmp_path: Path) -> None:
    ring = DkimKeyring(tmp_path)
    keys = [ring.add("both.keys.test", "r"), ring.add("both.keys.test", "e", "ed25519")]
    for key in keys:
        dns.add(key.dns_name, "TXT", key.dns_txt)
    signed = sign(with_from(MESSAGE, "alice@both.keys.test"), ring.for_domain("both.keys.test"))
    assert signed.count(b"DKIM-Signature:") == 2
    results = check(dns, signed, from_domain="both.keys.test")
    assert sorted(s.result for s in results.dkim) == ["pass", "pass"]
    assert sign(MESSAGE, []) == MESSAGE


def test_key_files_survive_only_if_valid(tmp_path: Path) -> None:
    ring = DkimKeyring(tmp_path)
    ring.add("keys.test", "good")
    folder = tmp_path / "dkim" / "keys.test"
    (folder / "junk.rsa.pem").write_bytes(b"not a key")
    (folder / "misnamed.pem").write_bytes((folder / "good.rsa.pem").read_bytes())
    os.chmod(folder / "junk.rsa.pem", 0o600)
    assert [k.selector for k in ring.list()] == ["good"]


_BODY_BYTES = st.lists(
    st.sampled_from(
        [b"a", b"word", b" ", b"  ", b"\t", b"\r\n", b"\r", b"\n", b"-- ", b"\xc3\xa9", b"."]
    ),
    max_size=60,
).map(b"".join)


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> DkimKey:
    return DkimKeyring(tmp_path_factory.mktemp("signkey")).add("sign.test", "k")


@settings(max_examples=200, deadline=None)
@given(body=_BODY_BYTES, lf_only=st.booleans())
def test_sign_verifies_with_dkimpy_for_any_body(
    signing_key: DkimKey, body: bytes, lf_only: bool
) -> None:
    """The lean signer and dkimpy's verifier agree on every body: with and without the
    whitespace that takes the slow canonicalisation path, and with bare LF line ends."""
    message = b"From: a@sign.test\r\nTo: b@example.org\r\nSubject: s\r\n\r\n" + body
    if lf_only:
        message = message.replace(b"\r\n", b"\n")
    signed = sign(message, [signing_key])
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: signing_key.dns_txt.encode())


@settings(max_examples=500, deadline=None)
@given(body=_BODY_BYTES)
def test_relaxed_body_is_dkimpys(body: bytes) -> None:
    from dkim.canonicalization import Relaxed

    from relay.delivery.dkim_keys import _relaxed_body

    assert _relaxed_body(body) == Relaxed.canonicalize_body(body)
