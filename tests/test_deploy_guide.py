"""docs/deploy.md, the deployment guide, checked block by block.

Every fenced block of the guide carries an info string saying how it is checked, and a
block without one, or with one this file does not know, fails the test: nothing in the
guide escapes. The kinds:

- ``sh run``: run, in document order, by bash against a real gateway started as the
  other tests start it (port 0, a local sink as every MX), with the guide's paths mapped
  to the test's (``/etc/certifica/config.toml`` to the gateway's config,
  ``/var/lib/certifica`` to its state directory, ``127.0.0.1:9725`` to its admin
  listener, ``/etc/certifica/``, ``/root/`` and ``/var/backups/certifica`` to temporary
  directories); the signing certificate a provider would deliver is made here;
- ``sh syntax``: ``bash -n`` (systemctl, certbot, dig, and what needs a real host);
- ``dns``: a zone snippet starting with ``$ORIGIN``, read by dnspython; the MX, the PTRs
  and the host's addresses must agree with each other and with ``[gateway] hostname``;
- ``toml``: loaded by the gateway's own config loader (unknown keys are errors);
- ``nginx``: ``nginx -t`` on a minimal nginx.conf including it, with the certificate
  paths pointed at a certificate made here;
- ``systemd drop-in``: appended to systemd/certifica.service, ``systemd-analyze verify``;
  ``systemd NAME``: a unit file of that name, ``systemd-analyze verify``;
- ``yaml``: parsed; every ``certifica_*`` metric an alert names is in a real scrape;
- ``mta-sts``: an MTA-STS policy file, RFC 8461 section 3.2;
- ``refusal``: what ``certifica serve`` prints on systemd/config.toml as shipped, compared
  with what it does print.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dns.name
import dns.rdatatype
import dns.reversename
import dns.zone
import pytest
import yaml
from prometheus_client import Counter, Histogram

import relay.metrics
from relay.config import load_config
from tests.conftest import CERT_ADDRESS, CERTIFICA, ROOT, Gateway, Sink, make_message
from tests.test_certified_sending import generated_for, submit

GUIDE = ROOT / "docs" / "deploy.md"
UNIT = ROOT / "systemd" / "certifica.service"
SHIPPED_CERTIFICA = "/opt/certifica/.venv/bin/certifica"


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    line: int  # where the fence opens, 1-based

    def __str__(self) -> str:
        return f"docs/deploy.md:{self.line} ```{self.info}"


def guide_blocks() -> list[Block]:
    found: list[Block] = []
    lines = GUIDE.read_text(encoding="utf-8").splitlines()
    opened: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, start=1):
        if opened is None and line.startswith("```"):
            opened, body = (number, line[3:].strip()), []
        elif opened is not None and line.strip() == "```":
            found.append(Block(opened[1], "\n".join(body) + "\n", opened[0]))
            opened = None
        elif opened is not None:
            body.append(line)
    assert opened is None, f"docs/deploy.md:{opened[0]}: a block is never closed"
    return found


BLOCKS = guide_blocks()
SIMPLE_KINDS = {"sh run", "sh syntax", "dns", "toml", "nginx", "yaml", "mta-sts", "refusal"}


def kind(block: Block) -> str | None:
    if block.info in SIMPLE_KINDS or block.info == "systemd drop-in":
        return block.info
    if re.fullmatch(r"systemd [\w@.-]+\.(service|timer|socket|path)", block.info):
        return "systemd unit"
    return None


def of_kind(name: str) -> list[Block]:
    return [b for b in BLOCKS if kind(b) == name]


def test_every_block_says_how_it_is_checked() -> None:
    unknown = [str(b) for b in BLOCKS if kind(b) is None]
    assert not unknown, "blocks without a known info string: " + ", ".join(unknown)
    # The guide does have each kind that is checked below (a rename would skip them).
    kinds = {kind(b) for b in BLOCKS}
    assert kinds >= SIMPLE_KINDS | {"systemd drop-in", "systemd unit"}, kinds


def test_the_readme_links_the_guide_and_its_own_links_resolve() -> None:
    assert "(docs/deploy.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    text = GUIDE.read_text(encoding="utf-8")
    headings = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in headings, anchor
    for target in re.findall(r"\]\(([\w./-]+\.md)\)", text):
        assert (GUIDE.parent / target).is_file(), target


def test_the_refusal_shown_is_what_serve_says_on_the_shipped_config(tmp_path: Path) -> None:
    (block,) = of_kind("refusal")
    shipped = (ROOT / "systemd" / "config.toml").read_text()
    config = tmp_path / "config.toml"
    config.write_text(shipped.replace('"/var/lib/certifica"', f'"{tmp_path}/state"'))
    result = subprocess.run(
        [CERTIFICA, "-c", str(config), "serve"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    said = result.stderr.replace(str(config), "/etc/certifica/config.toml")
    assert said == block.text, said
    assert not (tmp_path / "state").exists()  # refused before anything was made


@pytest.mark.parametrize("block", of_kind("sh run") + of_kind("sh syntax"), ids=str)
def test_shell_blocks_parse(block: Block) -> None:
    result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True)
    assert result.returncode == 0, f"{block}: {result.stderr}"


def zones() -> list[dns.zone.Zone]:
    made = []
    for block in of_kind("dns"):
        assert block.text.startswith("$ORIGIN "), f"{block}: starts without $ORIGIN"
        made.append(dns.zone.from_text(block.text, check_origin=False, relativize=False))
    return made


def guide_config() -> dict[str, str]:
    """The [gateway] keys of the guide's first TOML block, the config of the example host."""
    return tomllib.loads(of_kind("toml")[0].text)["gateway"]


def test_dns_records_parse_and_agree_with_the_config() -> None:
    gateway = guide_config()
    hostname = dns.name.from_text(gateway["hostname"])
    domain = dns.name.from_text(gateway["domain"])
    records: dict[tuple[dns.name.Name, str], list[str]] = {}
    for zone in zones():
        for name, _ttl, rdata in zone.iterate_rdatas():
            records.setdefault((name, dns.rdatatype.to_text(rdata.rdtype)), []).append(
                rdata.to_text()
            )
    # The MX of the gateway's domain is the host the EHLO names.
    assert records[(domain, "MX")] == [f"10 {hostname}"]
    # SMTP listens on IPv4 only in the guide's config (one address per listener), so the
    # mail host has no AAAA; the PTR of its address names it back (forward-confirmed).
    assert (hostname, "AAAA") not in records
    addresses = records[(hostname, "A")] + records[(domain, "AAAA")]
    assert len(addresses) == 2
    for address in addresses:
        assert records[(dns.reversename.from_address(address), "PTR")] == [str(hostname)]
    listen = tomllib.loads(of_kind("toml")[0].text)["listen"]
    assert all(listen[k].startswith("0.0.0.0:") for k in ("mx", "submission", "submission_tls"))
    txt = {name.to_text(): values for (name, rtype), values in records.items() if rtype == "TXT"}
    assert txt[str(domain)][0].startswith('"v=spf1 ')
    assert all(a in txt[str(domain)][0] for a in addresses)
    assert txt[f"_dmarc.{domain}"][0].startswith('"v=DMARC1; p=')
    assert txt[f"_mta-sts.{domain}"][0].startswith('"v=STSv1; id=')
    assert txt[f"_smtp._tls.{domain}"][0].startswith('"v=TLSRPTv1; rua=mailto:')
    dkim = [n for n in txt if n.endswith(f"._domainkey.{domain}")]
    assert len(dkim) == 1 and txt[dkim[0]][0].startswith('"v=DKIM1; k=rsa; p=')


@pytest.mark.parametrize("block", of_kind("toml"), ids=str)
def test_toml_blocks_load_with_the_gateways_config_loader(block: Block, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(block.text)
    load_config(config)  # raises ConfigError naming an unknown or wrong key


def test_the_example_host_is_refused_only_for_its_reserved_names(tmp_path: Path) -> None:
    """Production mode (relay/production.py) refuses the guide's config as it is, for the
    documentation names alone, as the guide says: with the names swapped for real ones
    (and the files it names present) it would start."""
    from relay.config import ConfigError
    from relay.production import check_production

    config = tmp_path / "config.toml"
    config.write_text(of_kind("toml")[0].text)
    with pytest.raises(ConfigError) as refused:
        check_production(load_config(config))
    message = str(refused.value)
    assert "gateway.domain" in message or "gateway.postmaster" in message, message
    for key in ("tls.", "signing.", "sink.", "provider.name"):
        assert key not in message, message


def test_mta_sts_policy_is_well_formed() -> None:
    (block,) = of_kind("mta-sts")
    fields: dict[str, list[str]] = {}
    for line in block.text.splitlines():
        key, sep, value = line.partition(": ")
        assert sep and re.fullmatch(r"[a-z_]+", key), line
        fields.setdefault(key, []).append(value)
    assert fields["version"] == ["STSv1"]
    assert fields["mode"][0] in {"enforce", "testing", "none"}
    assert fields["mx"] == [guide_config()["hostname"]]
    assert 0 < int(fields["max_age"][0]) <= 31557600


def openssl_certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("nginx") is None, reason="no nginx here (Debian: nginx-light)")
@pytest.mark.parametrize("block", of_kind("nginx"), ids=str)
def test_nginx_config_passes_nginx_t(block: Block, tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    cert, key = openssl_certificate(live, "site")
    text = re.sub(r"/etc/letsencrypt/live/[^/]+/fullchain\.pem", str(cert), block.text)
    text = re.sub(r"/etc/letsencrypt/live/[^/]+/privkey\.pem", str(key), text)
    (tmp_path / "site.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{\n access_log off;\n include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [
            "nginx",
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "syntax is ok" in result.stderr, f"{block}: {result.stderr}"


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze here (Debian: systemd)"
)


def executable(tmp: Path, path: str) -> str:
    """The guide's ExecStart= programs, as programs that exist here."""
    if path == SHIPPED_CERTIFICA:
        return CERTIFICA
    stand_in = tmp / Path(path).name
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    return str(stand_in)


def with_executables(tmp: Path, text: str) -> str:
    return re.sub(
        r"^(ExecStart=)(\S+)",
        lambda m: m.group(1) + executable(tmp, m.group(2)),
        text,
        flags=re.MULTILINE,
    )


@needs_analyze
@pytest.mark.parametrize("block", of_kind("systemd drop-in"), ids=str)
def test_systemd_drop_in_verifies_on_the_unit(block: Block, tmp_path: Path) -> None:
    unit = tmp_path / UNIT.name
    unit.write_text(with_executables(tmp_path, UNIT.read_text()) + "\n" + block.text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        f"{block}: {result.stdout}{result.stderr}"
    )


@needs_analyze
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = []
    for block in of_kind("systemd unit"):
        unit = tmp_path / block.info.split(" ", 1)[1]
        unit.write_text(with_executables(tmp_path, block.text))
        units.append(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.fixture(scope="module")
def ran(gateway: Gateway, mx: Sink, tmp_path_factory: pytest.TempPathFactory) -> dict[int, str]:
    """Every ``sh run`` block's output, by the line it starts on, run against ``gateway``
    after one certified message to bob@example.org (so the evidence log, the metrics and an
    access request have something in them)."""
    qid = submit(
        gateway,
        make_message(to="bob@example.org", cc=CERT_ADDRESS),
        ["bob@example.org", CERT_ADDRESS],
    )
    generated_for(mx, qid, "certificate")
    tmp = tmp_path_factory.mktemp("guide")
    etc, work, home, backups = tmp / "etc", tmp / "work", tmp / "root", tmp / "backups"
    for directory in (etc, work, home, backups):
        directory.mkdir()
    # What the provider would deliver: a PKCS#12 file and its password.
    cert, key = openssl_certificate(tmp, "Example Provider S.L.")
    (etc / "signing.pass").write_text("a password\n")
    subprocess.run(
        ["openssl", "pkcs12", "-export", "-in", str(cert), "-inkey", str(key)]
        + ["-out", str(etc / "signing.p12"), "-passout", f"file:{etc / 'signing.pass'}"],
        check=True,
        capture_output=True,
    )
    paths = [
        ("/etc/certifica/config.toml", str(gateway.config)),
        ("/etc/certifica/", f"{etc}/"),
        ("/var/lib/certifica", str(gateway.state)),
        ("/root/", f"{home}/"),
        ("/var/backups/certifica", str(backups)),
        ("127.0.0.1:9725", gateway.listen["admin"]),
    ]
    env = {"PATH": f"{Path(CERTIFICA).parent}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    outputs = {}
    for block in of_kind("sh run"):
        script = block.text
        for guide_path, here in paths:
            script = script.replace(guide_path, here)
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail"],
            input=script,
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, f"{block}:\n{script}\n{result.stdout}{result.stderr}"
        assert "Traceback" not in result.stderr, f"{block}: {result.stderr}"
        outputs[block.line] = result.stdout
    return outputs


def run_output(ran: dict[int, str], command: str) -> str:
    (line,) = [b.line for b in of_kind("sh run") if command in b.text]
    return ran[line]


def test_every_run_block_succeeds_against_a_real_gateway(ran: dict[int, str]) -> None:
    assert set(ran) == {b.line for b in of_kind("sh run")}


def test_dkim_list_prints_a_record_the_dns_reads(ran: dict[int, str], gateway: Gateway) -> None:
    out = run_output(ran, "dkim list")
    records = [line.strip() for line in out.splitlines() if " IN TXT " in line]
    assert records, out
    zone = dns.zone.from_text(
        "$ORIGIN .\n$TTL 300\n" + "\n".join(records) + "\n", check_origin=False, relativize=False
    )
    texts = [
        b"".join(r.strings) for _n, _t, r in zone.iterate_rdatas() if r.rdtype == dns.rdatatype.TXT
    ]
    assert any(t.startswith(b"v=DKIM1; k=rsa; p=") for t in texts), out
    added = run_output(ran, "dkim add")
    assert "certifica202612._domainkey.customer.example.net. IN TXT" in added, added


def test_the_signing_certificate_checks_print_what_the_guide_says(ran: dict[int, str]) -> None:
    assert "organizationIdentifier = VATES-B00000000" in run_output(ran, "openssl req -in")
    shown = run_output(ran, "openssl pkcs12")
    assert "subject=CN = Example Provider S.L." in shown and "notAfter=" in shown, shown


def test_readyz_and_metrics_answer(ran: dict[int, str]) -> None:
    assert '"status"' in run_output(ran, "/readyz")
    metrics = run_output(ran, "/metrics")
    assert "certifica_queue_recipients{" in metrics, metrics
    assert "certifica_evidence_unstamped_seconds " in metrics, metrics


def test_the_alert_rules_name_metrics_the_gateway_exports(gateway: Gateway) -> None:
    documents = [yaml.safe_load(b.text) for b in of_kind("yaml")]
    scrape = next(d for d in documents if "scrape_configs" in d)
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9725"]
    rules = next(d for d in documents if "groups" in d)
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert all(isinstance(e, str) for e in exprs) and len(exprs) >= 5
    with urllib.request.urlopen(f"http://{gateway.listen['admin']}/metrics", timeout=30) as r:
        exported = set(
            re.findall(r"^(certifica_\w+?)(?:_bucket|_sum|_count)?[{ ]", r.read().decode(), re.M)
        )
    # A labelled counter shows in a scrape only once counted: add the declared ones.
    for metric in vars(relay.metrics).values():
        if isinstance(metric, Counter):
            exported.add(metric.describe()[0].name + "_total")
        elif isinstance(metric, Histogram):
            exported.add(metric.describe()[0].name)
    named = {m for e in exprs for m in re.findall(r"certifica_\w+", e)}
    assert named and named <= exported, named - exported
