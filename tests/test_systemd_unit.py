"""The hardening of systemd/certifica.service, measured.

``systemd-analyze security`` rates the unit's exposure from 0 (every protection) to 10;
the unit must stay "OK", at most 2.0, and the figure is printed (in `make test` too).
``systemd-analyze verify`` must find nothing in it (tests/test_systemd.py runs it on the
unit as shipped; here it runs on the unit as an operator installs it, with its own
ExecStart= path). And since a filter that breaks the gateway would only show on a real
host, the gateway runs a certified send under the same seccomp filters the unit asks for
(system calls, no writable executable memory, address families), installed by
tests/unit_sandbox.py the way systemd installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    ROOT,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    run_cli,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_signing_hsm import MODULE, Hsm, _config

UNIT = ROOT / "systemd" / "certifica.service"
SANDBOX = Path(__file__).with_name("unit_sandbox.py")
SYSTEM_PYTHON = "/usr/bin/python3"  # where Debian's python3-seccomp is
MAX_EXPOSURE = 2.0  # "OK" in systemd-analyze's words

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="no systemd-analyze here (Debian: systemd)"
)


def exposure(unit: Path) -> tuple[float, str]:
    """The overall exposure figure and its word ("OK", "MEDIUM"...) for ``unit``."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    return float(found.group(1)), found.group(2)


@needs_analyze
def test_systemd_analyze_security_rates_the_unit_ok(capsys: pytest.CaptureFixture[str]) -> None:
    figure, word = exposure(UNIT)
    with capsys.disabled():  # the figure shows in `make test`'s output too
        print(
            f"\nsystemd-analyze security --offline=true {UNIT.relative_to(ROOT)}: {figure} {word}"
        )
    assert figure <= MAX_EXPOSURE and word == "OK", (figure, word)


@needs_analyze
def test_a_unit_without_the_hardening_is_rated_exposed(tmp_path: Path) -> None:
    """The measurement can fail: the same unit without its hardening lines is not OK."""
    text = UNIT.read_text()
    bare = text[: text.index("# Hardening")] + text[text.index("[Install]") :]
    unit = tmp_path / UNIT.name
    unit.write_text(bare)
    figure, word = exposure(unit)
    assert figure > MAX_EXPOSURE and word != "OK", (figure, word)


@needs_analyze
def test_systemd_analyze_verify_of_the_installed_unit_finds_nothing(tmp_path: Path) -> None:
    """As an operator who installed the project elsewhere: ExecStart= edited to point at
    it (verify checks that the program exists), the rest as shipped."""
    text = UNIT.read_text()
    shipped = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert shipped
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(shipped.group(1), CERTIFICA))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_a_gateway_ended_by_sighup_is_started_again() -> None:
    """A reload that reaches the process before Python runs its first line ends it with
    SIGHUP, which Restart=on-failure alone counts as a clean stop (systemd.service(5))."""
    lines = UNIT.read_text().splitlines()
    assert "Restart=on-failure" in lines
    assert "RestartForceExitStatus=SIGHUP" in lines


def _has_seccomp() -> bool:
    if not os.path.exists(SYSTEM_PYTHON) or shutil.which("systemd-analyze") is None:
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"], capture_output=True)
    return probe.returncode == 0


needs_seccomp = pytest.mark.skipif(
    not _has_seccomp(), reason="needs systemd-analyze and Debian's python3-seccomp"
)


def sandboxed(argv: list[str]) -> list[str]:
    return [SYSTEM_PYTHON, str(SANDBOX), str(UNIT), *argv]


@needs_seccomp
def test_the_sandbox_refuses_what_the_unit_forbids() -> None:
    """The emulation bites: writable executable memory, a netlink socket and chown fail."""
    probe = (
        "import mmap, os, socket\n"
        "for name, act in (\n"
        "    ('wx', lambda: mmap.mmap(-1, 4096, prot=7)),\n"
        "    ('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),\n"
        "    ('chown', lambda: os.chown('.', os.getuid(), os.getgid())),\n"
        "):\n"
        "    try:\n"
        "        act(); print(name, 'allowed')\n"
        "    except OSError as e:\n"
        "        print(name, e.errno)\n"
    )
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert free.stdout.split() == ["wx", "allowed", "netlink", "allowed", "chown", "allowed"]
    caged = subprocess.run(
        sandboxed([sys.executable, "-c", probe]),
        capture_output=True,
        text=True,
    )
    assert caged.stdout.split() == ["wx", "1", "netlink", "97", "chown", "1"], caged


def start_sandboxed(config: Path) -> Gateway:
    state = config.parent / "state"
    added = run_cli(config, "users", "add", "alice@example.com", "--password-stdin",
                    stdin="correct horse battery\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    log_path = config.parent / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            sandboxed([CERTIFICA, "-c", str(config), "serve"]),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    listen = state / "listen.json"
    deadline = time.monotonic() + 60
    while not listen.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"gateway not ready: {log_path.read_text()}")
        time.sleep(0.05)
    return Gateway(config, state, proc, json.loads(listen.read_text()), log_path)


@pytest.fixture
def caged_gateway(tmp_path: Path, sink_server: SinkServer) -> Iterator[tuple[Gateway, Sink]]:
    mx = sink_server.start(Sink())
    cfg = write_config(tmp_path, {d: mx.port for d in ("example.org", "example.com")})
    gw = start_sandboxed(cfg)
    yield gw, mx
    gw.stop()


@needs_seccomp
def test_the_gateway_certifies_under_the_units_seccomp_filters(
    caged_gateway: tuple[Gateway, Sink],
) -> None:
    """Accept, relay, sign (pyHanko, cryptography), timestamp and mail the certificate
    with every filter of the unit in force, the certificate workers' threads included."""
    gw, mx = caged_gateway
    status = Path(f"/proc/{gw.proc.pid}/status").read_text()
    assert re.search(r"^Seccomp:\s+2$", status, re.M), status  # 2: filtering
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    qid = submit(gw, make_message(), ["bob@example.org", CERT_ADDRESS])
    mail = generated_for(mx, qid, "certificate")
    assert any(p.get_content_type() == "application/pdf" for p in mail.message.iter_attachments())
    gw.stop()
    assert gw.proc.returncode == 0, gw.log()
    assert_clean_log(gw.log())
    # A refused call would show as EPERM somewhere; nothing in the log mentions one.
    assert "Operation not permitted" not in gw.log(), gw.log()


@needs_seccomp
@pytest.mark.skipif(not MODULE.exists(), reason="no SoftHSM2 (Debian: softhsm2)")
def test_signing_through_pkcs11_works_under_the_units_seccomp_filters(
    hsm: Hsm, sink_server: SinkServer, tmp_path: Path
) -> None:
    """python-pkcs11 and SoftHSM2's library (a PKCS#11 module loaded into the process)
    sign under the same filters: no device, no writable executable memory needed. A USB
    token would need its device (the unit's comments say how)."""
    mx = sink_server.start(Sink())
    routes = {d: mx.port for d in ("example.org", "example.com")}
    gw = start_sandboxed(_config(tmp_path, routes, hsm.signing_lines()))
    try:
        qid = submit(gw, make_message(), ["bob@example.org", CERT_ADDRESS])
        pdf = certificate_pdf(generated_for(mx, qid, "certificate"), tmp_path / "c.pdf")
    finally:
        gw.stop()
    assert gw.proc.returncode == 0, gw.log()
    assert_clean_log(gw.log())
    out = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout
    assert "Signature is Valid" in out and "Certifica HSM Seal" in out, out  # the token's key


def test_the_units_config_marks_every_placeholder_for_the_operator() -> None:
    """systemd/config.toml carries no development name and no loopback public URL
    silently: every reserved-name or loopback value is on a line marked EDIT, or is the
    public pages' listener, which stays behind the proxy on this host, or the admin
    listener, which stays on loopback (no authentication)."""
    text = (ROOT / "systemd" / "config.toml").read_text()
    assert "localhost" not in text
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("["):
            section = line
        value = line.split("#", 1)[0]
        if ".example" in value or "127.0.0.1" in value:
            behind_proxy = section == "[listen]" and value.startswith(("http ", "admin "))
            assert "EDIT" in line or behind_proxy, f"config.toml:{number}: {line}"
