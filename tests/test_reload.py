"""Reloading without a restart (README "Reloading"): SIGHUP to the running gateway.

One gateway for the module, its config file rewritten and the master sent SIGHUP by each
test in turn: the TLS certificate a new client sees, a session opened before the reload
that completes its transaction on the old certificate, the log level, a route, a DKIM
key rotation, broken configs refused with one line while the old certificate is still
served, and keys that need a restart reported and left as they were.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import smtplib
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dkim
import pytest
import trustme

from tests.conftest import (
    CERTIFICA,
    PASSWORD,
    ROOT,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    run_cli,
    start_gateway,
    write_config,
)

CHILDREN = 6  # qmgr, delivery[0], certify[0], acceptor[0], admin, webhooks
CHILD_APPLIED = re.compile(r"certifica/\w+\[\d+\]: reload: applied")


class Setup:
    """The gateway, its two remote MXs, and what its config file says now."""

    def __init__(self, tmp: Path, mx: Sink, other: Sink) -> None:
        self.tmp, self.mx, self.other = tmp, mx, other
        self.ca = trustme.CA()
        self.cert, self.key = tmp / "tls.crt", tmp / "tls.key"
        self.route = mx.port
        self.listen_mx = "127.0.0.1:0"
        self.sections: dict[str, str] = {}
        self.first = b""  # the certificate the gateway starts with, DER
        self.gw: Gateway

    def install_certificate(self) -> bytes:
        """A new TLS certificate and key at the configured paths; returns its DER."""
        issued = self.ca.issue_cert("certifica.localhost")
        issued.private_key_pem.write_to_path(str(self.key))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        return ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())

    def write(self, **sections: str) -> Path:
        """config.toml with the TLS files, one acceptor, the route for example.org and
        ``sections`` (TOML text by section name, replacing the defaults here)."""
        wanted = {
            "tls": f'cert = "{self.cert}"\nkey = "{self.key}"',
            "processes": "acceptors = 1\ndelivery_agents = 1",
            **self.sections,
            **sections,
        }
        extra = "\n".join(f"[{name}]\n{body}" for name, body in wanted.items())
        routes = {"example.org": self.route, "example.com": self.mx.port}
        config = write_config(self.tmp, routes, extra)
        text = config.read_text().replace('mx = "127.0.0.1:0"', f'mx = "{self.listen_mx}"')
        config.write_text(text)
        return config


def unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
    return ctx


def served(gw: Gateway) -> bytes:
    """The certificate a new client of port 465 (implicit TLS) is given, DER."""
    pem = ssl.get_server_certificate(("127.0.0.1", gw.port("submission_tls")), timeout=30)
    return ssl.PEM_cert_to_DER_cert(pem)


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def session(gw: Gateway) -> smtplib.SMTP:
    """An authenticated submission session on port 587, after STARTTLS."""
    client = smtplib.SMTP("127.0.0.1", gw.port(), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=unverified())
    client.ehlo("client.test")
    client.login("alice@example.com", PASSWORD)
    return client


def message(subject: str, to: str = "bob@example.org") -> bytes:
    return (
        f"From: Alice <alice@example.com>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@example.com>\r\n\r\nHello.\r\n"
    ).encode()


def send(gw: Gateway, subject: str, to: str = "bob@example.org") -> None:
    with session(gw) as client:
        client.sendmail("alice@example.com", [to], message(subject, to))


def arrived(sink: Sink, subject: str) -> bytes:
    wanted = f"Subject: {subject}\r\n".encode()
    found = sink.wait_for(lambda ms: any(wanted in m.data for m in ms))
    return next(m.data for m in found if wanted in m.data)


def reload(
    gw: Gateway,
    children: int = CHILDREN,
    timeout: float = 30.0,
    trigger: Callable[[], object] | None = None,
) -> str:
    """SIGHUP the master (or call ``trigger``, which makes it so); wait for its line
    (and, when it applied the reload, one line from each child); return the log lines
    written since."""
    start = len(gw.log())
    if trigger is None:
        gw.proc.send_signal(signal.SIGHUP)
    else:
        trigger()
    deadline = time.monotonic() + timeout
    while True:
        new = gw.log()[start:]
        if "reload refused" in new:
            return new
        if "certifica/master: reload: " in new and "applying" in new:
            if len(CHILD_APPLIED.findall(new)) >= children:
                return new
        if time.monotonic() > deadline:
            raise AssertionError(f"no reload seen within {timeout}s:\n{new}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, sink_server: SinkServer) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("reload")
    s = Setup(tmp, sink_server.start(Sink()), sink_server.start(Sink()))
    s.first = s.install_certificate()
    s.gw = start_gateway(s.write())
    yield s
    s.gw.stop()
    assert_clean_log(s.gw.log())


def test_new_clients_get_the_new_certificate_and_open_sessions_finish(setup: Setup) -> None:
    gw = setup.gw
    first = setup.first
    assert served(gw) == first
    before = session(gw)  # opened before the reload, in the middle of a transaction
    assert before.sock.getpeercert(binary_form=True) == first  # type: ignore[union-attr]
    before.mail("alice@example.com")
    before.rcpt("bob@example.org")
    second = setup.install_certificate()  # as certbot's deploy hook copies them
    assert fingerprint(second) != fingerprint(first)
    lines = reload(gw)
    colons = ":".join(f"{b:02X}" for b in hashlib.sha256(second).digest())
    assert f"TLS certificate SHA256 {colons}," in lines  # as openssl x509 -fingerprint
    assert fingerprint(served(gw)) == fingerprint(second)
    with session(gw) as after:  # STARTTLS on 587 too
        assert after.sock.getpeercert(binary_form=True) == second  # type: ignore[union-attr]
    # The session from before the reload keeps its certificate and completes.
    code, reply = before.data(message("opened before the reload"))
    assert code == 250, reply
    assert before.sock.getpeercert(binary_form=True) == first  # type: ignore[union-attr]
    before.quit()
    assert b"Hello." in arrived(setup.mx, "opened before the reload")


def test_the_log_level_changes_to_debug_and_a_log_file_opens(setup: Setup) -> None:
    gw = setup.gw
    send(gw, "at info level")
    arrived(setup.mx, "at info level")
    assert "example.org: fixed route" not in gw.log()
    written = setup.tmp / "logs" / "certifica.log"
    written.parent.mkdir()
    setup.sections["log"] = f'level = "debug"\nfile = "{written}"'
    setup.write()
    lines = reload(gw)
    assert "applying log.level, log.file" in lines
    send(gw, "at debug level")
    arrived(setup.mx, "at debug level")
    deadline = time.monotonic() + 10
    while "example.org: fixed route" not in gw.log():
        assert time.monotonic() < deadline, gw.log()[-3000:]
        time.sleep(0.05)
    # Every process writes [log] file from the reload on, its lines tagged as before.
    assert len(CHILD_APPLIED.findall(written.read_text())) == CHILDREN
    assert "example.org: fixed route" in written.read_text()


def test_a_changed_route_is_taken_by_the_next_message(setup: Setup) -> None:
    gw = setup.gw
    setup.route = setup.other.port
    setup.write()
    lines = reload(gw)
    assert "applying delivery.routes" in lines
    send(gw, "after the route changed")
    assert b"Hello." in arrived(setup.other, "after the route changed")
    assert not [m for m in setup.mx.messages if b"after the route changed" in m.data]


def test_a_rotated_dkim_key_signs_the_next_message(setup: Setup) -> None:
    from relay.delivery.dkim_keys import DkimKeyring

    gw = setup.gw
    keyring = DkimKeyring(gw.state / "keys")
    (old,) = keyring.for_domain("certifica.localhost")
    result = gw.cli("dkim", "add", "certifica.localhost", "--selector", "rotated")
    assert result.returncode == 0, result.stderr
    new = next(k for k in keyring.for_domain("certifica.localhost") if k.selector == "rotated")
    # The old key retires: its file goes (its DNS record stays a while for mail in transit).
    (gw.state / "keys" / "dkim" / "certifica.localhost" / f"{old.selector}.rsa.pem").unlink()
    reload(gw)
    send(gw, "after the DKIM rotation")
    data = arrived(setup.other, "after the DKIM rotation")
    assert b"s=rotated" in data
    published = {new.dns_name: new.dns_txt.encode(), old.dns_name: old.dns_txt.encode()}

    def txt(name: bytes, timeout: int = 5) -> bytes:
        return published.get(name.decode().rstrip("."), b"")

    assert dkim.verify(data, dnsfunc=txt)
    assert not dkim.verify(data, dnsfunc=lambda name, timeout=5: old.dns_txt.encode())


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        ({"tls": "cert = [unclosed"}, "not valid TOML"),
        ({"tls": 'cert = "x"\nkey = "y"\nsize = 1'}, "unknown key 'tls.size'"),
        ({"tls": 'cert = "missing.crt"\nkey = "tls.key"'}, "tls.cert = "),
        ({"tls": 'cert = "tls.crt"\nkey = "other.key"'}, "tls.key = "),
        ({"log": 'file = "no-such-directory/certifica.log"'}, "log.file = "),
    ],
    ids=["bad TOML", "wrong key", "unreadable file", "key not the certificate's", "log file"],
)
def test_a_broken_config_is_refused_and_the_old_one_stays(
    setup: Setup, broken: dict[str, str], named: str
) -> None:
    gw = setup.gw
    other = setup.ca.issue_cert("other.test")
    other.private_key_pem.write_to_path(str(setup.tmp / "other.key"))
    in_force = served(gw)
    checked = gw.state / "run" / "reload.toml"  # what a child sent SIGHUP would apply
    text_before = checked.read_bytes() if checked.exists() else None
    config = setup.write(**broken)
    lines = reload(gw)
    assert (checked.read_bytes() if checked.exists() else None) == text_before
    refused = [line for line in lines.splitlines() if "reload refused" in line]
    assert len(refused) == 1, lines
    assert named in refused[0] and str(config) in refused[0], refused
    assert "the configuration in force stays" in refused[0]
    assert not CHILD_APPLIED.search(lines), lines
    assert served(gw) == in_force
    setup.write()  # the good file again, for the next test
    send(gw, f"after a refused reload: {named}")
    arrived(setup.other, f"after a refused reload: {named}")


def test_certifica_reload_says_what_came_of_it(setup: Setup, tmp_path: Path) -> None:
    gw = setup.gw
    results: list[subprocess.CompletedProcess[str]] = []
    start = len(gw.log())
    setup.write(tls="cert = [unclosed")
    unreadable = gw.cli("reload")  # refused by the command itself: nothing is signalled
    assert unreadable.returncode == 2 and "not valid TOML" in unreadable.stderr, unreadable
    assert "reload" not in gw.log()[start:]
    setup.write(tls=f'cert = "{setup.cert}"\nkey = "{setup.tmp / "other.key"}"')
    reload(gw, trigger=lambda: results.append(gw.cli("reload")))
    refused = results.pop()
    assert refused.returncode == 1, refused
    assert "reload refused:" in refused.stderr and "is not the key of tls.cert" in refused.stderr
    assert refused.stderr.count("\n") == 1 and not refused.stdout
    setup.write()
    reload(gw, trigger=lambda: results.append(gw.cli("reload")))
    applied = results.pop()
    assert applied.returncode == 0, applied
    assert (
        "applying no changed key" in applied.stdout and "TLS certificate SHA256" in applied.stdout
    )
    idle = run_cli(write_config(tmp_path, {}), "reload")
    assert idle.returncode == 3 and "the gateway is not running" in idle.stderr, idle


def test_keys_that_need_a_restart_are_reported_and_left(setup: Setup) -> None:
    gw = setup.gw
    mx_before = gw.listen["mx"]
    setup.listen_mx = "127.0.0.1:1"
    setup.write(processes="acceptors = 2\ndelivery_agents = 1")
    lines = reload(gw)
    restart = [line for line in lines.splitlines() if "needs a restart" in line]
    assert len(restart) == 1, lines
    assert "needs a restart: listen.mx, processes.acceptors" in restart[0], restart
    assert "applying no changed key" in lines
    assert len(CHILD_APPLIED.findall(lines)) == CHILDREN  # still one acceptor
    with smtplib.SMTP("127.0.0.1", int(mx_before.rsplit(":", 1)[1]), timeout=30) as client:
        assert client.ehlo("client.test")[0] == 250


def held_signals(pid: int) -> int:
    """The signals ``pid``'s main thread blocks, as a bit mask (bit n-1: signal n)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^SigBlk:\s+([0-9a-f]+)$", status, re.M)
    assert found, status
    return int(found.group(1), 16)


def test_a_reload_sent_as_the_gateway_starts_is_applied_not_fatal(tmp_path: Path) -> None:
    """systemd allows `systemctl reload` as soon as it has started the process
    (Type=simple): a SIGHUP that comes before the master listens for it is held, then
    applied, instead of ending the gateway (SIGHUP's default action)."""
    config = write_config(tmp_path, {})
    state = tmp_path / "state"
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [CERTIFICA, "-c", str(config), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    gw = Gateway(config, state, proc, {}, log_path)
    try:
        # The first moment the process holds SIGHUP: the interpreter has just started,
        # the command's modules and the config are not loaded, nothing of state_dir exists.
        deadline = time.monotonic() + 30
        while not held_signals(proc.pid) & (1 << (signal.SIGHUP - 1)):
            assert proc.poll() is None and time.monotonic() < deadline, gw.log()
        proc.send_signal(signal.SIGHUP)
        assert not (state / "listen.json").exists()
        deadline = time.monotonic() + 60
        while "certifica/master: reload: " not in gw.log():
            assert proc.poll() is None, f"ended ({proc.returncode}):\n{gw.log()}"
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        assert "applying no changed key" in gw.log(), gw.log()
        assert proc.poll() is None
        assert run_cli(config, "status").returncode == 0
    finally:
        gw.stop()
    assert proc.returncode == 0, gw.log()
    assert_clean_log(gw.log())


HOOK = ROOT / "systemd" / "certbot-deploy-hook"


def test_the_certbot_deploy_hook_is_valid_shell() -> None:
    assert subprocess.run(["bash", "-n", str(HOOK)], capture_output=True).returncode == 0
    assert os.access(HOOK, os.X_OK)


def test_the_certbot_deploy_hook_installs_the_renewal_and_reloads(setup: Setup) -> None:
    """The hook as certbot runs it, with the real ``certifica reload`` against the test
    gateway's config: it exits 0 when the gateway took the pair, 1 when it refused it
    (the previous pair still served), 1 while its name= is the placeholder, and 0 when
    the gateway is not running (the files are installed for its start)."""
    gw, tmp = setup.gw, setup.tmp
    dest = tmp / "tls"
    idle_dest = tmp / "idle" / "tls"

    def renew(
        lineage: Path, domains: str, name: str | None = "mx.example.org", **more: str
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "RENEWED_LINEAGE": str(lineage),
            "RENEWED_DOMAINS": domains,
            "CERTIFICA_TLS_DIR": str(dest),
            "CERTIFICA_TLS_OWNER": subprocess.check_output(["id", "-un"], text=True).strip(),
            "CERTIFICA_TLS_GROUP": subprocess.check_output(["id", "-gn"], text=True).strip(),
            "CERTIFICA_CONFIG": str(gw.config),
            "CERTIFICA_COMMAND": CERTIFICA,
            **more,
        }
        if name is not None:
            env["CERTIFICA_TLS_NAME"] = name
        else:
            env.pop("CERTIFICA_TLS_NAME", None)
        return subprocess.run([str(HOOK)], env=env, capture_output=True, text=True, timeout=60)

    def lineage(name: str, key_of: str | None = None) -> tuple[Path, bytes]:
        live = tmp / "live" / name
        live.mkdir(parents=True)
        issued = setup.ca.issue_cert("mx.example.org")
        issued.private_key_pem.write_to_path(str(live / "privkey.pem"))
        if key_of is not None:  # a key that is not the certificate's
            (live / "privkey.pem").write_bytes((tmp / "live" / key_of / "privkey.pem").read_bytes())
        chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
        (live / "fullchain.pem").write_bytes(chain)
        return live, ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())

    # Another certificate of the host: nothing copied, no reload.
    start = len(gw.log())
    other, _ = lineage("other")
    result = renew(other, "www.example.org")
    assert result.returncode == 0 and not result.stdout and not result.stderr, result
    assert not dest.exists() and "reload" not in gw.log()[start:]

    # name= left as shipped: every certificate is refused, none installed.
    placeholder = renew(other, "mx.example.org", name=None)
    assert placeholder.returncode == 1, placeholder
    assert "still the placeholder mx.example.org" in placeholder.stderr, placeholder
    assert placeholder.stderr.count("\n") == 1 and not dest.exists()

    setup.listen_mx = "127.0.0.1:0"
    setup.sections["tls"] = f'cert = "{dest}/fullchain.pem"\nkey = "{dest}/privkey.pem"'
    setup.write()
    results: list[subprocess.CompletedProcess[str]] = []
    for name in ("first", "renewed"):
        live, der = lineage(name)
        lines = reload(
            gw, trigger=lambda live=live: results.append(renew(live, "example.org mx.example.org"))
        )
        assert "reload refused" not in lines, lines
        took = results.pop()
        assert took.returncode == 0, took
        assert "reload: " in took.stdout and "TLS certificate SHA256" in took.stdout, took
        assert served(gw) == der
    assert (dest / "privkey.pem").read_bytes() == (live / "privkey.pem").read_bytes()
    assert (dest / "fullchain.pem").stat().st_mode & 0o777 == 0o644
    assert (dest / "privkey.pem").stat().st_mode & 0o777 == 0o640
    assert dest.stat().st_mode & 0o777 == 0o750
    assert sorted(p.name for p in dest.iterdir()) == ["fullchain.pem", "privkey.pem"]

    # A pair the gateway refuses: certbot sees the hook fail; the previous pair stays served.
    broken, _ = lineage("broken", key_of="first")
    reload(gw, trigger=lambda: results.append(renew(broken, "mx.example.org")))
    refused = results.pop()
    assert refused.returncode == 1, refused
    assert "reload refused:" in refused.stderr and "is not the key of tls.cert" in refused.stderr
    assert "still serves the previous one" in refused.stderr, refused
    assert served(gw) == der
    reload(gw, trigger=lambda: results.append(renew(live, "mx.example.org")))  # good again
    assert results.pop().returncode == 0 and served(gw) == der

    # The gateway not running (the first certificate, before the first start).
    (tmp / "idle").mkdir()
    idle_config = write_config(tmp / "idle", {})
    stopped = renew(
        live, "mx.example.org", CERTIFICA_CONFIG=str(idle_config), CERTIFICA_TLS_DIR=str(idle_dest)
    )
    assert stopped.returncode == 0, stopped
    assert "the gateway is not running; it reads" in stopped.stdout, stopped
    assert (idle_dest / "fullchain.pem").read_bytes() == (live / "fullchain.pem").read_bytes()


def test_no_process_was_restarted_by_the_reloads(setup: Setup) -> None:
    """Every reload above was applied in place: no child ended, none was started again."""
    log = setup.gw.log()
    assert log.count("certifica/master: reload: ") >= 8
    assert " ended (" not in log, [line for line in log.splitlines() if " ended (" in line]
    assert log.count(" started, pid ") == CHILDREN
