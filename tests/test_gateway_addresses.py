"""The gateway's own addresses (relay/addresses.py), and development or production mode.

Against the real gateway (a subprocess on ports the OS picks) with smtplib: on both the
MX port and the submission port, an address at the gateway's domain that is none of its
own gets ``550 5.1.1`` at RCPT with a sentence; postmaster (bare too) and abuse are
accepted, from the null sender on the MX, and arrive at ``[gateway] postmaster`` (an
aiosmtpd sink); submitted mail for them is handed to the gateway's own MX without a DNS
lookup (a DNS server that records queries says so). Production mode refuses to start
with one line naming the key and the file.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certifier.pki import ensure_dev_pki
from relay.addresses import (
    ADDRESS_FORMS,
    DEVELOPMENT_POSTMASTER,
    AddressKind,
    GatewayAddresses,
    edit_distance,
    postmaster_address,
)
from relay.cleanup.bounces import make_return_path
from relay.config import ConfigError, Endpoint, load_config, parse_endpoint
from relay.delivery.routing import RouteError, Router
from relay.smtpd import replies
from tests.conftest import (
    CERTIFICA,
    PASSWORD,
    ROOT,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    client_tls_context,
    start_gateway,
)
from tests.dnsserver import DNSServer

DOMAIN = "certifica.localhost"
CERT = f"certifica@{DOMAIN}"
POSTMASTER = "ops@example.net"
KEY = bytes(range(32))


# -- the list and the decision, without a gateway ----------------------------------------
def addresses(**kwargs: object) -> GatewayAddresses:
    return GatewayAddresses(
        domain=DOMAIN,
        certification_address=CERT,
        verp_key=KEY,
        **kwargs,  # type: ignore[arg-type]
    )


def test_every_kind_is_one_entry_of_the_list() -> None:
    assert sorted(set(e.kind for e in ADDRESS_FORMS)) == sorted(AddressKind)
    forms = [form for _, form, _ in addresses().forms()]
    assert forms == [
        CERT,
        f"certifica+hosted@{DOMAIN}",  # the hosted modes' tags (docs/hosted.md)
        f"certifica+hosted-code@{DOMAIN}",
        f"certifica+accept@{DOMAIN}",
        f"bounces+<id>.<mac>@{DOMAIN}",
        f"recepcion+<token>@{DOMAIN}",
        f"postmaster@{DOMAIN}",
        f"mailer-daemon@{DOMAIN}",
        f"abuse@{DOMAIN}",
    ]


@pytest.mark.parametrize(
    ("address", "kind", "canonical"),
    [
        (CERT, AddressKind.CERTIFY, CERT),
        ("Certifica@CERTIFICA.localhost", AddressKind.CERTIFY, "Certifica@CERTIFICA.localhost"),
        ("Postmaster", AddressKind.POSTMASTER, f"postmaster@{DOMAIN}"),
        ("POSTMASTER", AddressKind.POSTMASTER, f"postmaster@{DOMAIN}"),
        (f"PostMaster@{DOMAIN}", AddressKind.POSTMASTER, f"postmaster@{DOMAIN}"),
        (f"abuse@{DOMAIN}.", AddressKind.ABUSE, f"abuse@{DOMAIN}"),
        (f"MAILER-DAEMON@{DOMAIN}", AddressKind.POSTMASTER, f"mailer-daemon@{DOMAIN}"),
        (f"recepcion+5uorlxra64bj@{DOMAIN}", AddressKind.RECEPTION, None),
        (make_return_path("4F2A1B3C9D0E", DOMAIN, KEY), AddressKind.BOUNCE, None),
    ],
)
def test_our_addresses(address: str, kind: AddressKind, canonical: str | None) -> None:
    decision = addresses().classify(address)
    assert decision.kind is kind and decision.refusal is None
    assert decision.address == (canonical or address)


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        (f"nobody@{DOMAIN}", "no such address at certifica.localhost"),
        ("nobody", "no such address"),
        (f'"a b"@{DOMAIN}', "no such address"),
        (f"postmaster+x@{DOMAIN}", "no such address"),
        (f"certifica+bogus@{DOMAIN}", "+tag of the certification address does not exist"),
        (f"certifca@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"certifica.@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"certificat@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"certifcia@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"certifca+x@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"u%ext.example@{DOMAIN}", "no such address"),
        (f"@relay.example:x@{DOMAIN}", "no such address"),
        (f'"x@ext.example"@{DOMAIN}', "no such address"),
        (f'"a:b"@{DOMAIN}', "no such address"),
        (f"bounces+4F2A1B3C9D0E.aaaaaaaaaa@{DOMAIN}", "No such user here"),
        (f"recepcion+not-a-token@{DOMAIN}", "No such user here"),
    ],
)
def test_other_local_addresses_are_refused_with_a_sentence(address: str, reply: str) -> None:
    decision = addresses().classify(address)
    assert decision.kind is None and decision.refusal is not None
    assert decision.refusal.startswith("550 5.1.1 ")
    assert reply.lower() in decision.refusal.lower()
    assert len(decision.refusal) <= 510  # RFC 5321 §4.5.3.1.5


@pytest.mark.parametrize(
    "address",
    [
        "bob@example.org",
        "certification@example.org",  # far from the certification address
        "certifica@example.org",  # the same local part at an unrelated domain
        # A letter away from our domain, but a real domain of someone else's: the
        # gateway cannot tell a typo from an address there, so it does not guess.
        "certifica@certifca.localhost",
        "u%ext.example@elsewhere.example",
    ],
)
def test_addresses_elsewhere_are_left_to_the_relay_rules(address: str) -> None:
    assert addresses().classify(address).kind is None
    assert addresses().classify(address).refusal is None


def test_a_documented_tag_is_one_entry_and_the_refusal_lists_the_forms() -> None:
    tagged = addresses(tags={"hosted": "recipients get a link, not the content"})
    assert tagged.classify(f"certifica+Hosted@{DOMAIN}").kind is AddressKind.CERTIFY
    assert tagged.classify(f"certifica+Hosted@{DOMAIN}").detail == "hosted"
    assert (f"certifica+hosted@{DOMAIN}") in [f for _, f, _ in tagged.forms()]
    refusal = tagged.classify(f"certifica+bogus@{DOMAIN}").refusal
    assert refusal == replies.CERTIFICATION_TAG_UNKNOWN.format(
        valid=f"{CERT}, certifica+hosted@{DOMAIN}"
    )


def test_the_hostname_and_the_certification_domain_are_local() -> None:
    gateway = GatewayAddresses(
        domain="certifica.example",
        hostname="mx1.certifica.example",
        certification_address="cc@certify.example",
    )
    assert gateway.classify("postmaster@MX1.certifica.example").kind is AddressKind.POSTMASTER
    assert gateway.classify("abuse@certify.example").kind is AddressKind.ABUSE
    assert gateway.classify("cc@certify.example").kind is AddressKind.CERTIFY
    assert "did you mean" in (gateway.classify("cc@certifica.example").refusal or "")
    assert gateway.classify("x@other.example").refusal is None


def _osa(a: str, b: str) -> int:
    """The textbook optimal string alignment distance, without a limit."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


@given(st.text("certifa.+", max_size=12), st.text("certifa.+", max_size=12), st.integers(0, 4))
def test_edit_distance_is_the_bounded_textbook_distance(a: str, b: str, limit: int) -> None:
    assert edit_distance(a, b, limit) == min(_osa(a, b), limit + 1)
    assert edit_distance(a, b, limit) == edit_distance(b, a, limit)


@given(st.text(max_size=300))
def test_classify_never_raises_and_refuses_with_5_1_1(address: str) -> None:
    decision = addresses().classify(address)
    assert decision.refusal is None or decision.refusal.startswith("550 5.1.1 ")
    assert decision.kind is None or decision.refusal is None


# -- config: mode and postmaster ---------------------------------------------------------
def write(tmp: Path, gateway: str, rest: str = "") -> Path:
    path = tmp / "config.toml"
    path.write_text(f'[gateway]\nstate_dir = "state"\n{gateway}\n{rest}')
    return path


def test_the_shipped_config_is_development_and_its_postmaster_lands_in_the_mailbox() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.gateway.mode == "development" and cfg.gateway.postmaster == ""
    assert postmaster_address(cfg) == DEVELOPMENT_POSTMASTER
    domain = DEVELOPMENT_POSTMASTER.rpartition("@")[2]
    assert parse_endpoint(cfg.delivery.routes[domain], "", "") == parse_endpoint(
        cfg.sink.listen, "", ""
    )
    assert load_config(ROOT / "systemd" / "config.toml").gateway.mode == "production"


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ('mode = "staging"', 'gateway.mode must be "development" or "production"'),
        ('postmaster = "nobody"', "gateway.postmaster = 'nobody' is not an e-mail address"),
        (f'postmaster = "root@{DOMAIN}"', "is an address of the gateway itself"),
        (
            'hostname = "mx.example.org"\npostmaster = "pm@MX.example.org"',
            "is an address of the gateway itself",
        ),
    ],
)
def test_bad_mode_or_postmaster_names_the_key_and_file(
    tmp_path: Path, gateway: str, message: str
) -> None:
    path = write(tmp_path, gateway)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


PRODUCTION = """mode = "production"
hostname = "mail.certifica.es"
domain = "certifica.es"
certification_address = "certifica@certifica.es"
postmaster = "ops@operator.es"
"""
PORTS = """[listen]
submission = "127.0.0.1:0"
mx = "127.0.0.1:0"
http = "127.0.0.1:0"
admin = "127.0.0.1:0"
[provider]
name = "Certifica Servicios de Confianza S.L."
legal_id = "B00000000"
[web]
public_url = "https://verify.certifica.es"
[signing]
workers = 1
"""


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CERTIFICA, "-c", str(config), "serve"], capture_output=True, text=True, timeout=120
    )


def assert_refused(result: subprocess.CompletedProcess[str], config: Path, key: str) -> str:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"certifica: {config}: {key} "), lines[0]
    assert "production mode refuses to start" in lines[0]
    assert not (config.parent / "state").exists()  # refused before anything was made
    return lines[0]


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (('postmaster = "ops@operator.es"', ""), "gateway.postmaster"),
        (
            ('postmaster = "ops@operator.es"', 'postmaster = "ops@example.com"'),
            "gateway.postmaster",
        ),
        (('domain = "certifica.es"', 'domain = "certifica.test"'), "gateway.domain"),
        (('hostname = "mail.certifica.es"', 'hostname = "localhost"'), "gateway.hostname"),
        (
            (
                'certification_address = "certifica@certifica.es"',
                'certification_address = "c@x.invalid"',
            ),
            "gateway.certification_address",
        ),
        (("", ""), "web.public_url"),
        (("", ""), "provider.name"),
    ],
)
def test_production_refuses_to_start_naming_the_key_and_file(
    tmp_path: Path, change: tuple[str, str], key: str
) -> None:
    old, new = change
    rest = PORTS
    if key == "web.public_url":
        rest = rest.replace("https://verify.certifica.es", "http://127.0.0.1:8080")
    if key == "provider.name":
        rest = rest.replace('name = "Certifica Servicios de Confianza S.L."', "")
    config = write(tmp_path, PRODUCTION.replace(old, new) if old else PRODUCTION, rest)
    assert_refused(serve(config), config, key)


def test_the_systemd_config_refuses_until_edited(tmp_path: Path) -> None:
    """As shipped its names are placeholders; the one line names every key to edit."""
    config = tmp_path / "config.toml"
    text = (ROOT / "systemd" / "config.toml").read_text()
    config.write_text(text.replace('"/var/lib/certifica', f'"{tmp_path}/state'))
    line = assert_refused(serve(config), config, "gateway.postmaster")
    for key in ("gateway.domain", "gateway.hostname", "gateway.certification_address"):
        assert key in line


def operator_keys(tmp_path: Path) -> str:
    """[signing] keys of the operator's own (a CA-issued certificate in real life; here
    one made like the development PKI, outside the state directory) and a TSA URL."""
    pki = ensure_dev_pki(tmp_path / "operator-keys", "mail.certifica.es")
    return (
        f'cert = "{pki.signing_cert}"\nkey = "{pki.signing_key}"\n'
        f'chain = ["{pki.ca_cert}"]\ntsa_url = "http://127.0.0.1:9/tsa"\n'
    )


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("", "signing.cert"),
        ("KEYS", "signing.tsa_url"),
        ("KEYS", "tls.cert"),
        ('KEYS[sink]\nlisten = "127.0.0.1:0"\n', "sink.listen"),
        *(
            (f"KEYSWEB={url}", "web.public_url")
            for url in (
                "http://127.1",
                "http://2130706433",
                "http://0x7f000001",
                "http://0.0.0.0",
                "http://[::]",
                "http://[::ffff:127.0.0.1]",
                "https://10.1.2.3",
                "https://track.certifica.local",
            )
        ),
        # The deprecated key still works, and is the key named.
        ("KEYSOLD=http://127.1", "tracking.public_url"),
    ],
)
def test_production_refuses_development_keys_mailbox_and_unreachable_urls(
    tmp_path: Path, extra: str, key: str
) -> None:
    keys = operator_keys(tmp_path).replace('tsa_url = "http://127.0.0.1:9/tsa"\n', "")
    if key != "signing.tsa_url":
        keys += 'tsa_url = "http://127.0.0.1:9/tsa"\n'
    ports = PORTS
    if "WEB=" in extra:
        extra, _, url = extra.partition("WEB=")
        ports = PORTS.replace("https://verify.certifica.es", url)
    if "OLD=" in extra:
        extra, _, url = extra.partition("OLD=")
        ports = PORTS.replace('[web]\npublic_url = "https://verify.certifica.es"\n', "")
        extra += f'[tracking]\nenabled = true\npublic_url = "{url}"\n'
    config = write(tmp_path, PRODUCTION, ports + (extra.replace("KEYS", keys) if extra else ""))
    assert_refused(serve(config), config, key)


def operator_tls(tmp_path: Path) -> str:
    """A [tls] server certificate of the operator's own (ACME's in real life)."""
    pki = ensure_dev_pki(tmp_path / "operator-keys", "mail.certifica.es")
    return f'[tls]\ncert = "{pki.tls_cert}"\nkey = "{pki.tls_key}"\n'


def test_production_with_real_names_starts(tmp_path: Path) -> None:
    config = write(tmp_path, PRODUCTION, PORTS + operator_keys(tmp_path) + operator_tls(tmp_path))
    gw = start_gateway(config, users={})
    try:
        assert gw.proc.poll() is None
    finally:
        gw.stop()
    assert gw.proc.returncode == 0, gw.log()


def test_the_router_sends_our_domains_to_our_mx_whatever_the_routes(tmp_path: Path) -> None:
    with DNSServer() as dns:
        dns.add(DOMAIN, "MX", "10 trap.example.test.")
        config = write(
            tmp_path,
            'hostname = "mx1.certifica.localhost"',
            f'{dns.config_toml()}\n[delivery.routes]\n"*" = "127.0.0.1:2525"\n',
        )
        router = Router(load_config(config))
        with pytest.raises(RouteError) as err:  # no MX listener: nowhere to go, and final
            asyncio.run(router.resolve(DOMAIN))
        assert not err.value.temporary and "[listen] mx" in err.value.text
        router.route_local(Endpoint("0.0.0.0", 2526))  # noqa: S104 - a wildcard bind
        for domain in (DOMAIN, "CERTIFICA.localhost.", "mx1.certifica.localhost"):
            (hop,) = asyncio.run(router.resolve(domain))
            assert (hop.ip, hop.port) == ("127.0.0.1", 2526)
        assert asyncio.run(router.resolve("example.org"))[0].port == 2525
        assert dns.queries == []


# -- the real gateway ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ops(sink_server: SinkServer) -> Sink:
    """The remote MX of example.org/.net/.com: the operator's mailbox and Bob's."""
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def dns() -> Iterator[DNSServer]:
    with DNSServer() as server:
        # Were the gateway to look its own domain up, it would find this and fail.
        server.add(DOMAIN, "MX", "10 trap.example.test.")
        server.add("trap.example.test", "A", "127.0.0.2")
        yield server


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, ops: Sink, dns: DNSServer
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("addresses")
    routes = "\n".join(
        f'"{d}" = "127.0.0.1:{ops.port}"' for d in ("example.org", "example.net", "example.com")
    )
    config = write(
        tmp,
        f'postmaster = "{POSTMASTER}"',
        f"{PORTS}[queue]\nfirst_retry = 1.0\nmax_retry = 2.0\nscan_interval = 0.2\n"
        f"[limits]\nauth_delay = 0.2\n{dns.config_toml()}\n[delivery.routes]\n{routes}\n",
    )
    gw = start_gateway(config)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def mx_client(gw: Gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30)
    client.ehlo("mail.sender.test")
    return client


def submission_client(gw: Gateway) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", gw.port("submission"), timeout=30)
    client.ehlo("laptop.test")
    client.starttls(context=client_tls_context(gw.state))
    client.ehlo("laptop.test")
    client.login("alice@example.com", PASSWORD)
    return client


def rcpt_on_both_ports(gw: Gateway, address: str) -> list[tuple[int, str]]:
    answers = []
    with mx_client(gw) as client:
        client.mail("someone@sender.test")
        code, text = client.docmd(f"RCPT TO:<{address}>")
        answers.append((code, text.decode()))
    with submission_client(gw) as client:
        client.mail("alice@example.com")
        code, text = client.docmd(f"RCPT TO:<{address}>")
        answers.append((code, text.decode()))
    return answers


@pytest.mark.parametrize(
    ("address", "sentence"),
    [
        (
            f"nobody@{DOMAIN}",
            f"no such address at {DOMAIN}; this gateway receives mail only at {CERT}",
        ),
        (f"certifica+bogus@{DOMAIN}", "+tag of the certification address does not exist"),
        (f"certifca@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"Certifica.@{DOMAIN}", f"did you mean the certification address {CERT}?"),
        (f"certificat@{DOMAIN}", f"did you mean the certification address {CERT}?"),
    ],
)
def test_other_addresses_at_our_domain_get_550_5_1_1_on_both_ports(
    gateway: Gateway, address: str, sentence: str
) -> None:
    for code, text in rcpt_on_both_ports(gateway, address):
        assert code == 550 and text.startswith("5.1.1 "), text
        assert sentence.lower() in text.lower(), text


def test_submission_checks_a_reception_token_at_rcpt(gateway: Gateway) -> None:
    enabled = gateway.cli("reception", "enable", "owner@example.com")
    assert enabled.returncode == 0, enabled.stderr
    forward = next(w for w in enabled.stdout.split() if w.startswith("recepcion+"))
    with submission_client(gateway) as client:
        client.mail("alice@example.com")
        assert client.docmd(f"RCPT TO:<{forward}>")[0] == 250
        code, text = client.docmd(f"RCPT TO:<recepcion+0000000000000000@{DOMAIN}>")
        assert (code, text.decode()) == (550, replies.NO_SUCH_USER[4:])


def body(marker: str) -> bytes:
    return (
        f"From: someone@sender.test\r\nTo: postmaster\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@sender.test>\r\n\r\n{marker}\r\n"
    ).encode()


@pytest.mark.parametrize("address", ["Postmaster", f"postmaster@{DOMAIN}", f"ABUSE@{DOMAIN}"])
def test_postmaster_and_abuse_take_the_null_sender_and_reach_the_operator(
    gateway: Gateway, ops: Sink, address: str
) -> None:
    marker = f"pm-{time.monotonic_ns()}"
    with mx_client(gateway) as client:
        assert client.docmd("MAIL FROM:<>")[0] == 250
        code, text = client.docmd(f"RCPT TO:<{address}>")
        assert code == 250, text
        code, text = client.data(body(marker))
        assert code == 250 and b"queued as" in text, text
    received = ops.wait_for(lambda ms: any(marker.encode() in m.data for m in ms), timeout=60)
    (got,) = [m for m in received if marker.encode() in m.data]
    assert got.rcpt_tos == [POSTMASTER] and marker.encode() in got.data
    assert got.mail_from.startswith("bounces+") and got.mail_from.endswith(f"@{DOMAIN}")


def test_submitted_mail_to_postmaster_goes_to_our_mx_not_to_the_dns(
    gateway: Gateway, ops: Sink, dns: DNSServer
) -> None:
    marker = f"sub-{time.monotonic_ns()}"
    message = (
        f"From: alice@example.com\r\nTo: postmaster@{DOMAIN}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@example.com>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n{marker}\r\n"
    ).encode()
    with submission_client(gateway) as client:
        client.mail("alice@example.com")
        assert client.docmd("RCPT TO:<Postmaster>")[0] == 250
        assert client.docmd(f"RCPT TO:<abuse@{DOMAIN}>")[0] == 250
        code, text = client.data(message)
        assert code == 250, text
    received = ops.wait_for(lambda ms: any(marker.encode() in m.data for m in ms), timeout=60)
    (got,) = [m for m in received if marker.encode() in m.data]
    assert got.rcpt_tos == [POSTMASTER]
    assert not [q for q in dns.queries if q[0].lower().rstrip(".") == DOMAIN]
    assert f"relayed to <{POSTMASTER}> (gateway.postmaster)" in gateway.log()


# -- postmaster mail is the operator's, never a user's (relay/cleanup/postmaster.py) ---------------
OPERATOR = "ops@operator.example"


@pytest.fixture(scope="module")
def operator_box(sink_server: SinkServer) -> Sink:
    """The operator's mailbox, which refuses (550) what carries ``refuse-me``; it is also
    the MX of example.net, where the forged sender's mailbox is."""

    def reply(msg: Received) -> str:
        if b"refuse-me" in msg.data:
            return "550 5.7.1 Message refused by the operator's filter"
        return "250 2.0.0 Ok: queued as OPS0001"

    return sink_server.start(Sink(data_reply=reply))


@pytest.fixture(scope="module")
def strict_gateway(
    tmp_path_factory: pytest.TempPathFactory, operator_box: Sink
) -> Iterator[Gateway]:
    """From rewriting on, and a DKIM key delegated by bank.example: the settings under
    which postmaster mail must still be neither rewritten nor signed as the bank."""
    tmp = tmp_path_factory.mktemp("postmaster")
    routes = "\n".join(
        f'"{d}" = "127.0.0.1:{operator_box.port}"'
        for d in ("operator.example", "example.net", "bank.example")
    )
    config = write(
        tmp,
        f'postmaster = "{OPERATOR}"',
        f"{PORTS}[queue]\nfirst_retry = 1.0\nmax_retry = 2.0\nscan_interval = 0.2\n"
        f'[dkim]\nfrom_handling = "rewrite"\n[delivery.routes]\n{routes}\n',
    )
    (tmp / "state").mkdir(mode=0o700)
    delegated = subprocess.run(
        [CERTIFICA, "-c", str(config), "dkim", "add", "bank.example"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert delegated.returncode == 0, delegated.stderr
    gw = start_gateway(config, users={})
    yield gw
    gw.stop()
    log = gw.log()
    # The one error line the refused postmaster mail is allowed to cause.
    errors = [line for line in log.splitlines() if ": error: " in line]
    assert all("postmaster mail could not be delivered" in line for line in errors), errors
    assert_clean_log("\n".join(line for line in log.splitlines() if line not in errors))


def send_to_postmaster(gw: Gateway, mail_from: str, rcpt: str, message: bytes) -> str:
    with mx_client(gw) as client:
        assert client.docmd(f"MAIL FROM:<{mail_from}>")[0] == 250
        code, text = client.docmd(f"RCPT TO:<{rcpt}>")
        assert code == 250, text
        code, text = client.data(message)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def wait_for_log(gw: Gateway, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (log := gw.log()):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.1)
    return log


def bank_mail(marker: str, to: str) -> bytes:
    return (
        f"From: Bank <alerts@bank.example>\r\nTo: {to}\r\nSubject: {marker}\r\n"
        f"Message-ID: <{marker}@bank.example>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"\r\n{marker}\r\n"
    ).encode()


def test_refused_postmaster_mail_never_goes_back_to_its_forgeable_sender(
    strict_gateway: Gateway, operator_box: Sink
) -> None:
    """The reviewer's reproducer: MAIL FROM a victim, RCPT abuse@, the operator's mailbox
    answers 550. The victim gets nothing; the operator's log has one error line."""
    marker = f"refuse-me-{time.monotonic_ns()}"
    qid = send_to_postmaster(
        strict_gateway, "victim@example.net", f"abuse@{DOMAIN}", bank_mail(marker, "abuse")
    )
    log = wait_for_log(strict_gateway, f"{qid}: removed")
    errors = [line for line in log.splitlines() if ": error: " in line and qid in line]
    assert len(errors) == 1, errors
    assert "postmaster mail could not be delivered" in errors[0]
    assert f"certifica queue show {qid}" in errors[0]
    assert not re.search(rf"{qid}: sender [a-z -]*notification", log)
    time.sleep(1.0)  # a report would have been queued with the outcome; give it a scan
    assert operator_box.to("victim@example.net") == []
    assert not [m for m in operator_box.messages if OPERATOR.encode() in m.data]
    shown = strict_gateway.cli("queue", "show", qid)
    assert shown.returncode == 0, shown.stderr
    assert "(postmaster, done)" in shown.stdout and f"<{OPERATOR}> failed" in shown.stdout
    archived = strict_gateway.state / "spool" / "archive" / f"{qid}.eml"
    assert marker.encode() in archived.read_bytes()  # kept for the operator


@pytest.mark.parametrize(
    ("rcpt", "original_to"),
    [("Postmaster", f"postmaster@{DOMAIN}"), ("ABUSE@Certifica.LOCALHOST", f"abuse@{DOMAIN}")],
)
def test_postmaster_mail_keeps_its_from_is_never_signed_as_the_sender_and_says_where_it_went(
    strict_gateway: Gateway, operator_box: Sink, rcpt: str, original_to: str
) -> None:
    marker = f"pm-from-{time.monotonic_ns()}"
    send_to_postmaster(strict_gateway, "alerts@bank.example", rcpt, bank_mail(marker, rcpt))
    received = operator_box.wait_for(lambda ms: any(marker.encode() in m.data for m in ms))
    (got,) = [m for m in received if marker.encode() in m.data]
    assert got.rcpt_tos == [OPERATOR]
    msg = got.message
    assert msg["From"] == "Bank <alerts@bank.example>"  # not "Bank via Certifica"
    assert msg.get_all("X-Original-To") == [original_to]
    assert "Reply-To" not in msg
    signers = {
        re.search(r"\bd=([^;\s]+)", " ".join(str(s).split())).group(1)  # type: ignore[union-attr]
        for s in msg.get_all("DKIM-Signature") or []
    }
    assert signers <= {DOMAIN}  # the gateway's own key at most, never bank.example's
    assert got.mail_from.startswith("bounces+")  # its late bounces come back to us


def test_postmaster_mail_queued_before_the_upgrade_becomes_the_operators(tmp_path: Path) -> None:
    """Migration 10: plain mail taken on the MX (only postmaster mail ever was) that is
    still queued gets its own kind, so no report goes to its sender after the upgrade."""
    import sqlite3

    from relay.queue.migrations import MIGRATIONS, migrate, statements

    conn = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    for number, script in enumerate(MIGRATIONS[:9], start=1):
        for statement in statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?)", (number,))
    row = (
        "INSERT INTO messages (qid, kind, created, expires, sender, size, sha256, certified,"
        " method, state, notice_state, cert_state) VALUES (?, 'mail', 0, 1, 'v@example.net',"
        " 1, 'x', ?, ?, ?, 'none', 'none')"
    )
    conn.execute(row, ("PM0000000001", 0, "mx", "active"))
    conn.execute(row, ("PM0000000002", 0, "submission", "active"))
    conn.execute(row, ("PM0000000003", 1, "mx", "active"))
    assert migrate(conn) == len(MIGRATIONS)
    kinds = dict(conn.execute("SELECT qid, kind FROM messages ORDER BY qid").fetchall())
    assert kinds == {
        "PM0000000001": "postmaster",
        "PM0000000002": "mail",
        "PM0000000003": "mail",
    }
