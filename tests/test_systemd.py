"""systemd/certifica.service and the command line it runs.

The unit is checked twice: by ``systemd-analyze verify`` when this machine has it, and
always by reading its keys against what the gateway needs (a writable state directory,
SIGTERM to the main process only, a stop timeout longer than the gateway's own stop).
The config it ships, systemd/config.toml, is loaded from where the unit expects it.
"""

from __future__ import annotations

import inspect
import json
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from relay.cli import build_parser
from relay.config import SigningConfig, load_config
from relay.process.master import Master as GatewayProcess
from tests.conftest import CERTIFICA, ROOT, run_cli, write_config

UNIT = ROOT / "systemd" / "certifica.service"
UNIT_CONFIG = ROOT / "systemd" / "config.toml"


def unit_keys(path: Path) -> dict[str, dict[str, list[str]]]:
    """The unit's sections and keys; a key may repeat, so each maps to its values."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not a key=value line"
        assert not line.endswith("\\"), f"{path.name}:{number}: continuation lines not expected"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(keys: dict[str, list[str]], key: str) -> str:
    values = keys.get(key, [])
    assert len(values) == 1, f"{key}= should be set once, is {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span as far as this unit uses them: "30", "30s", "1min", "1min 30s"."""
    total = 0.0
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    for part in value.split():
        number = part.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units[part[len(number) :]]
    return total


SERVICE = unit_keys(UNIT)["Service"]
EXEC_START = shlex.split(one(SERVICE, "ExecStart"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this checkout's.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(EXEC_START[0], CERTIFICA))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Unknown keys and bad values are warnings with exit status 0: any output is a finding.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


def test_unit_parsed_has_every_section_and_runs_serve() -> None:
    sections = unit_keys(UNIT)
    assert set(sections) == {"Unit", "Service", "Install"}
    assert one(sections["Install"], "WantedBy") == "multi-user.target"
    assert one(SERVICE, "Type") == "simple"
    assert Path(EXEC_START[0]).name == "certifica" and Path(EXEC_START[0]).is_absolute()
    args = build_parser().parse_args(EXEC_START[1:])
    assert args.command == "serve" and args.config == "/etc/certifica/config.toml"


def test_shipped_config_puts_the_state_where_the_unit_lets_it_write(tmp_path: Path) -> None:
    """Where the unit reads it, systemd/config.toml's every written path is writable."""
    assert one(SERVICE, "ProtectSystem") == "strict"  # everything else is read-only
    state = Path("/var/lib") / one(SERVICE, "StateDirectory")
    writable = [state] + [Path(p) for p in SERVICE.get("ReadWritePaths", [])]
    assert Path(one(SERVICE, "WorkingDirectory")) == state  # relative defaults land there
    config_path = Path(build_parser().parse_args(EXEC_START[1:]).config)
    # Load it from the same directory name the unit uses: paths resolve next to the file.
    installed = tmp_path / config_path.relative_to("/")
    installed.parent.mkdir(parents=True)
    installed.write_text(UNIT_CONFIG.read_text())
    cfg = load_config(installed)
    assert cfg.state_dir == state
    for written in (cfg.state_dir, cfg.sink.dir):
        assert written.is_absolute() and any(written.is_relative_to(w) for w in writable), written
    # The top-level config.toml would not do: its relative "var" lands under /etc.
    assert not load_config(ROOT / "config.toml").state_dir.is_relative_to(state)


def test_sigterm_goes_to_the_main_process_and_the_stop_has_time() -> None:
    assert one(SERVICE, "KillMode") == "mixed"  # workers are not signalled mid-signature
    assert one(SERVICE, "KillSignal") == "SIGTERM"
    grace = inspect.signature(GatewayProcess.stop).parameters["grace"].default
    tsa = SigningConfig().tsa_timeout  # the longest step of a certificate being signed
    assert seconds(one(SERVICE, "TimeoutStopSec")) >= grace + tsa + 5


def test_config_option_after_the_subcommand(tmp_path: Path) -> None:
    """``certifica serve -c FILE``, the order of issue 2 and of the unit, runs the gateway."""
    cfg = write_config(tmp_path, {})
    listen = tmp_path / "state" / "listen.json"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([CERTIFICA, "serve", "-c", str(cfg)], stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 60
        while not listen.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert json.loads(listen.read_text())["submission"].startswith("127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    # Nested subcommands too, and a config given after the subcommand wins.
    added = subprocess.run(
        [CERTIFICA, "users", "add", "-c", str(cfg), "x@example.com", "--password-stdin"],
        input="a long enough password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert added.returncode == 0, added.stderr
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = write_config(other, {})
    listed = subprocess.run(
        [CERTIFICA, "-c", str(elsewhere), "users", "list", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0 and "x@example.com" in listed.stdout, listed
    assert "x@example.com" not in run_cli(elsewhere, "users", "list").stdout  # top-level alone
