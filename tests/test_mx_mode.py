"""MX mode end to end: the Cc copy a sender's provider delivers, authenticated, certified.

The gateway runs as a subprocess whose DNS is a real server started here
(tests/dnsserver.py) that publishes the test domains' DKIM keys, SPF and DMARC
records. The "sender's provider" is smtplib talking to the gateway's MX port from
127.0.0.1; the recipients' and the sender's mail servers are aiosmtpd sinks. Outgoing
DKIM signatures are checked with dkimpy against the keys published in that DNS.
"""

from __future__ import annotations

import hashlib
import json
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.resolver
import pytest

from certifier.copies import rebuild
from certifier.verify import copies_check
from relay.delivery.dkim_keys import DkimKey, DkimKeyring
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer

SIGNED = [b"from", b"to", b"cc", b"subject", b"date", b"message-id"]
USERS = {
    "alice@sender.test": PASSWORD,
    "bob@spf.test": PASSWORD,
    "carol@flaky.test": PASSWORD,
}


@pytest.fixture(scope="module")
def dns_zone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DNSServer, dict]]:
    keys_dir = tmp_path_factory.mktemp("senderkeys")
    ring = DkimKeyring(keys_dir)
    keys = {
        "sender": ring.add("sender.test", "sel"),
        "other": ring.add("other.test", "sel"),
        "flaky": ring.add("flaky.test", "sel"),
    }
    with DNSServer() as server:
        server.add(keys["sender"].dns_name, "TXT", keys["sender"].dns_txt)
        server.add(keys["other"].dns_name, "TXT", keys["other"].dns_txt)
        server.add("sender.test", "TXT", "v=spf1 -all")
        server.add("_dmarc.sender.test", "TXT", "v=DMARC1; p=reject")
        server.add("spf.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        server.add("_dmarc.spf.test", "TXT", "v=DMARC1; p=quarantine")
        server.servfail("flaky.test")
        yield server, keys


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


def _gateway(tmp: Path, dns: DNSServer, sink: Sink, extra: str = "") -> Gateway:
    routes = {d: sink.port for d in ("example.org", "example.net", "sender.test", "spf.test")}
    cfg = write_config(tmp, routes, dns.config_toml() + extra)
    return start_gateway(cfg, USERS)


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, dns_zone: tuple[DNSServer, dict], sink: Sink
) -> Iterator[Gateway]:
    gw = _gateway(tmp_path_factory.mktemp("mxgw"), dns_zone[0], sink)
    _publish_gateway_keys(gw, dns_zone[0])
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


@pytest.fixture(scope="module")
def strict_gateway(
    tmp_path_factory: pytest.TempPathFactory, dns_zone: tuple[DNSServer, dict], sink: Sink
) -> Iterator[Gateway]:
    """Requires DKIM (SPF alone is not enough) and rewrites From when it cannot align."""
    extra = '[mx]\nrequire = "dkim"\n[dkim]\nfrom_handling = "rewrite"\n'
    gw = _gateway(tmp_path_factory.mktemp("mxstrict"), dns_zone[0], sink, extra)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def _publish_gateway_keys(gw: Gateway, dns: DNSServer) -> None:
    """Publish what `certifica dkim list` says, as the operator would."""
    out = gw.cli("dkim", "list")
    assert out.returncode == 0, out.stderr
    for name, txt in re.findall(r"(\S+)\. IN TXT (\".*\")", out.stdout):
        dns.add(name, "TXT", zone_txt(txt))


def zone_txt(text: str) -> str:
    """The value of a zone-file TXT record written as one or more quoted strings."""
    return "".join(re.findall(r'"([^"]*)"', text))


def message(
    sender: str = "Alice Example <alice@sender.test>",
    to: str = "dave@example.org",
    cc: str = f"erin@example.net, {CERT_ADDRESS}",
    subject: str = "Notice of termination",
    body: str = "Dear Dave,\r\nthe contract ends on 31 December.\r\n",
    extra: str = "",
) -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nCc: {cc}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@sender.test>\r\n{extra}"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}"
    ).encode()


def signed(raw: bytes, key: DkimKey, **kwargs: object) -> bytes:
    signature = dkim.sign(
        raw,
        key.selector.encode(),
        key.domain.encode(),
        key.private_pem,
        include_headers=SIGNED,
        canonicalize=(b"relaxed", b"relaxed"),
        **kwargs,  # type: ignore[arg-type]
    )
    return signature + raw


def send_mx(
    gw: Gateway, raw: bytes, mail_from: str = "alice@sender.test", helo: str = "mail.sender.test"
) -> tuple[int, str]:
    """What the sender's provider does: deliver the Cc copy to the gateway's MX."""
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo(helo)
        code, text = client.mail(mail_from)
        assert code == 250, text
        code, text = client.rcpt(CERT_ADDRESS)
        assert code == 250, text
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as err:
            code, reply = err.smtp_code, err.smtp_error
    return code, reply.decode()


def qid_of(reply: str) -> str:
    assert "queued as" in reply, reply
    return reply.rsplit(" ", 1)[1]


def copies(sink: Sink, qid: str, address: str, timeout: float = 60.0) -> list[Received]:
    def found(ms: list[Received]) -> list[Received]:
        return [m for m in ms if address in m.rcpt_tos and f" id {qid}" in m.message["Received"]]

    return found(sink.wait_for(lambda ms: bool(found(ms)), timeout))


def certificate_for(sink: Sink, qid: str, timeout: float = 90.0) -> Received:
    def found(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and (m.message["Subject"] or "").startswith("Certificate")
        ]

    return found(sink.wait_for(lambda ms: bool(found(ms)), timeout))[0]


def evidence_of(mail: Received, tmp: Path) -> tuple[Path, dict]:
    pdf = next(
        p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"
    )
    path = tmp / "certificate.pdf"
    path.write_bytes(pdf.get_payload(decode=True))  # type: ignore[arg-type]
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp), str(path)], check=True)
    return path, json.loads((tmp / "evidence.json").read_text())


def dkim_verifies(data: bytes, server: DNSServer) -> list[bytes]:
    """The d= of every DKIM signature of ``data`` that dkimpy verifies with the test DNS."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = int(server.address.rsplit(":", 1)[1])

    def txt(name: bytes, timeout: int = 5) -> bytes:
        try:
            answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        except dns.resolver.NXDOMAIN:
            return b""
        return b"".join(answer[0].strings)

    verifier = dkim.DKIM(data)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    good = []
    for idx in range(count):
        if verifier.verify(idx=idx, dnsfunc=txt):
            good.append(verifier.domain)
    return good


# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certified_run(
    gateway: Gateway, sink: Sink, dns_zone: tuple[DNSServer, dict], tmp_path_factory
) -> dict:
    raw = signed(message(), dns_zone[1]["sender"])
    code, reply = send_mx(gateway, raw)
    assert code == 250, reply
    qid = qid_of(reply)
    dave = copies(sink, qid, "dave@example.org")
    erin = copies(sink, qid, "erin@example.net")
    cert = certificate_for(sink, qid)
    pdf, evidence = evidence_of(cert, tmp_path_factory.mktemp("mxcert"))
    return {"raw": raw, "qid": qid, "dave": dave, "erin": erin, "pdf": pdf, "evidence": evidence}


def test_dkim_signed_cc_copy_is_delivered_to_to_and_cc_once(
    certified_run: dict, sink: Sink
) -> None:
    assert len(certified_run["dave"]) == 1 and len(certified_run["erin"]) == 1
    copy = certified_run["dave"][0].message
    assert "certified copy of a message from <alice@sender.test>" in copy["X-Certifica-Copy"]
    assert certified_run["evidence"]["certificate_id"] in copy["X-Certifica-Copy"]
    assert copy["From"] == "Alice Example <alice@sender.test>"  # kept: from_handling = keep
    # The certification address itself gets nothing.
    assert not [m for m in sink.messages if CERT_ADDRESS in m.rcpt_tos]


def test_certificate_holds_the_authentication_results(certified_run: dict) -> None:
    evidence = certified_run["evidence"]
    sender = evidence["sender"]
    assert sender["method"] == "mx"
    assert sender["envelope_from"] == "alice@sender.test"
    assert sender["header_from"].endswith("<alice@sender.test>")
    auth = sender["authentication"]
    assert "dkim=pass header.d=sender.test header.s=sel" in auth["header"]
    assert "spf=fail smtp.mailfrom=sender.test" in auth["header"]
    assert "dmarc=pass header.from=sender.test" in auth["header"]
    assert auth["dmarc_policy"] == "reject" and auth["aligned_dkim"] is True
    statuses = {r["address"]: r["status"] for r in evidence["recipients"]}
    assert statuses == {"dave@example.org": "delivered", "erin@example.net": "delivered"}
    text = subprocess.run(
        ["pdftotext", str(certified_run["pdf"]), "-"], capture_output=True, text=True, check=True
    ).stdout
    words = " ".join(text.split())
    assert "DKIM signature of sender.test: passed" in words
    assert "DMARC check for sender.test: passed" in words
    verify = subprocess.run(
        ["pdfsig", str(certified_run["pdf"])], capture_output=True, text=True, check=True
    )
    assert "Signature is Valid" in verify.stdout


def test_outbound_copy_is_dkim_signed_by_the_gateway(
    certified_run: dict, dns_zone: tuple[DNSServer, dict]
) -> None:
    data = certified_run["dave"][0].data
    # The gateway's own signature, and the sender's, which still verifies: the gateway
    # only prepended header fields it did not sign over.
    assert dkim_verifies(data, dns_zone[0]) == [b"certifica.localhost", b"sender.test"]


def test_notice_and_certificate_are_signed_by_the_gateway(
    certified_run: dict, sink: Sink, dns_zone: tuple[DNSServer, dict]
) -> None:
    cert = certificate_for(sink, certified_run["qid"])
    assert cert.rcpt_tos == ["alice@sender.test"]
    assert dkim_verifies(cert.data, dns_zone[0]) == [b"certifica.localhost"]


def test_delegated_key_signs_mail_from_its_domain(
    gateway: Gateway, sink: Sink, dns_zone: tuple[DNSServer, dict]
) -> None:
    out = gateway.cli("dkim", "add", "spf.test", "--selector", "deleg")
    assert out.returncode == 0, out.stderr
    name, txt = re.search(r"(\S+)\. IN TXT (\".*\")", out.stdout).groups()  # type: ignore[union-attr]
    assert name == "deleg._domainkey.spf.test"
    dns_zone[0].add(name, "TXT", zone_txt(txt))
    # spf.test authenticates by SPF only (dkim-or-spf): accepted, and signed with its key.
    raw = message(sender="Bob <bob@spf.test>", to="frank@example.org", cc=CERT_ADDRESS)
    code, reply = send_mx(gateway, raw, mail_from="bob@spf.test", helo="mail.spf.test")
    assert code == 250, reply
    copy = copies(sink, qid_of(reply), "frank@example.org")[0]
    assert dkim_verifies(copy.data, dns_zone[0]) == [b"spf.test"]


# -- refusals ----------------------------------------------------------------------------
def test_unsigned_mail_from_a_registered_user_is_refused(gateway: Gateway) -> None:
    code, reply = send_mx(gateway, message())
    assert code == 550 and reply.startswith("5.7.1"), reply
    assert "DKIM" in reply and "sender.test" in reply


def test_signature_by_another_domain_is_refused(
    gateway: Gateway, dns_zone: tuple[DNSServer, dict]
) -> None:
    code, reply = send_mx(gateway, signed(message(), dns_zone[1]["other"]))
    assert code == 550 and reply.startswith("5.7.1"), reply
    assert "other.test" in reply


def test_l_tag_signature_with_appended_text_is_refused(
    gateway: Gateway, dns_zone: tuple[DNSServer, dict]
) -> None:
    raw = signed(message(), dns_zone[1]["sender"], length=True)
    raw += b"\r\nP.S. Ignore the above, send the money to account 666.\r\n"
    code, reply = send_mx(gateway, raw)
    assert code == 550 and reply.startswith("5.7.1"), reply
    assert "l= tag" in reply


def test_unregistered_sender_is_refused_even_when_signed(
    gateway: Gateway, dns_zone: tuple[DNSServer, dict]
) -> None:
    raw = signed(message(sender="zoe@sender.test"), dns_zone[1]["sender"])
    code, reply = send_mx(gateway, raw, mail_from="zoe@sender.test")
    assert code == 550 and reply.startswith("5.7.1"), reply
    assert "zoe@sender.test is not registered" in reply


@pytest.mark.parametrize(
    "extra, sender",
    [
        ("From: mallory@other.test\r\n", "alice@sender.test"),  # two From fields
        ("", "alice@sender.test, mallory@other.test"),  # one From, two mailboxes
        ("", '"alice@sender.test" <mallory@other.test>'),  # a name that looks like an address
        ("", "alice@sender.test <mallory@other.test>"),  # ambiguous: unquoted name with @
    ],
)
def test_ambiguous_from_is_refused(
    gateway: Gateway, dns_zone: tuple[DNSServer, dict], extra: str, sender: str
) -> None:
    raw = signed(message(sender=sender, extra=extra), dns_zone[1]["sender"])
    code, reply = send_mx(gateway, raw)
    assert code == 550 and reply.startswith("5.7.1"), reply


def test_dns_servfail_defers(gateway: Gateway, dns_zone: tuple[DNSServer, dict]) -> None:
    raw = signed(message(sender="carol@flaky.test"), dns_zone[1]["flaky"])
    code, reply = send_mx(gateway, raw, mail_from="carol@flaky.test")
    assert code == 451 and reply.startswith("4.7."), reply


@pytest.mark.parametrize(
    "rcpt",
    [
        "victim1@example.org",
        "victim2%example.org@certifica.localhost",
        "@relay.example:victim3@example.org",
        '"victim4@example.org"@certifica.localhost',
        "victim5!example.org@certifica.localhost",
        "nobody@certifica.localhost",
    ],
)
def test_relay_attempts_are_refused_with_no_outbound_mail(
    gateway: Gateway, sink: Sink, rcpt: str
) -> None:
    with smtplib.SMTP("127.0.0.1", gateway.port("mx"), timeout=30) as client:
        client.ehlo("spammer.test")
        client.mail("spammer@other.test")
        code, text = client.rcpt(f"<{rcpt}>" if not rcpt.startswith("@") else f"<{rcpt}>")
        assert code == 550, text
        assert text.decode().startswith(("5.7.1", "5.1.1")), text
        code, _ = client.docmd("DATA")
        assert code == 503  # no valid recipient: nothing to send
    out = gateway.cli("queue", "list", "--json")
    assert "victim" not in out.stdout
    assert not [m for m in sink.messages if any("victim" in r for r in m.rcpt_tos)]


def test_header_recipients_at_the_gateway_domain_get_nothing(
    gateway: Gateway, sink: Sink, dns_zone: tuple[DNSServer, dict]
) -> None:
    raw = signed(
        message(to="postmaster@certifica.localhost", cc=CERT_ADDRESS), dns_zone[1]["sender"]
    )
    code, reply = send_mx(gateway, raw)
    assert code == 554 and reply.startswith("5.5.1"), reply


# -- policy "dkim" and From rewriting ------------------------------------------------------
def test_spf_only_is_refused_when_dkim_is_required(strict_gateway: Gateway) -> None:
    raw = message(sender="Bob <bob@spf.test>", to="gina@example.org", cc=CERT_ADDRESS)
    code, reply = send_mx(strict_gateway, raw, mail_from="bob@spf.test", helo="mail.spf.test")
    assert code == 550 and reply.startswith("5.7.1"), reply
    assert "DKIM" in reply


def test_from_is_rewritten_when_the_domain_has_no_key(
    strict_gateway: Gateway, sink: Sink, dns_zone: tuple[DNSServer, dict]
) -> None:
    raw = signed(message(to="hank@example.org"), dns_zone[1]["sender"])
    code, reply = send_mx(strict_gateway, raw)
    assert code == 250, reply
    copy = copies(sink, qid_of(reply), "hank@example.org")[0].message
    assert copy["From"] == f"Alice Example via Certifica <{CERT_ADDRESS}>"
    assert copy["Reply-To"] == "Alice Example <alice@sender.test>"
    assert len(copy.get_all("From")) == 1


# -- the delivered copies rebuilt from the certificate (certifier/copies.py) ---------------
def test_each_certified_copy_is_rebuilt_from_the_certificate(
    certified_run: dict, gateway: Gateway
) -> None:
    eml = (certified_run["pdf"].parent / "message.eml").read_bytes()
    assert eml == certified_run["raw"]
    got = {
        "dave@example.org": certified_run["dave"][0],
        "erin@example.net": certified_run["erin"][0],
    }
    for recipient in certified_run["evidence"]["recipients"]:
        data = got[recipient["address"]].data
        recipe = recipient["copy"]
        assert rebuild(eml, recipe) == data
        assert hashlib.sha256(data).hexdigest() == recipient["delivered_sha256"]
        added = [c["field"] for c in recipe["changes"] if c["change"] == "header_added"]
        assert added == ["DKIM-Signature", "Received", "X-Certifica-Copy"]
        assert recipe["edits"] == []  # only fields put in front: the sender's bytes follow
    result = gateway.cli("verify", str(certified_run["pdf"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   delivered-copies: 2 delivered copies rebuilt" in result.stdout, result.stdout


def test_a_copy_with_from_rewritten_is_rebuilt_from_the_certificate(
    strict_gateway: Gateway, sink: Sink, dns_zone: tuple[DNSServer, dict], tmp_path: Path
) -> None:
    raw = signed(message(to="ivan@example.org", cc=CERT_ADDRESS), dns_zone[1]["sender"])
    code, reply = send_mx(strict_gateway, raw)
    assert code == 250, reply
    qid = qid_of(reply)
    data = copies(sink, qid, "ivan@example.org")[0].data
    pdf, evidence = evidence_of(certificate_for(sink, qid), tmp_path)
    eml = (tmp_path / "message.eml").read_bytes()
    assert eml == raw
    (recipient,) = evidence["recipients"]
    recipe = recipient["copy"]
    assert rebuild(eml, recipe) == data
    assert hashlib.sha256(data).hexdigest() == recipient["delivered_sha256"]
    assert {"change": "from_rewritten"} in recipe["changes"]
    assert {"change": "header_added", "field": "Reply-To"} in recipe["changes"]
    assert copies_check(evidence, eml).ok
    result = strict_gateway.cli("verify", str(pdf))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   delivered-copies: 1 delivered copy rebuilt" in result.stdout, result.stdout
