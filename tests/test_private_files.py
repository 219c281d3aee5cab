"""Files are private whatever the umask (issue 12, item 9): the gateway started with
umask 022 still writes 0600 files in 0700 directories (database and its -wal/-shm,
spool, keys, certificates, the local mailbox), and a state directory open to other
users is a warning naming the path."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    Gateway,
    free_port,
    make_message,
    run_cli,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import submit


@pytest.fixture()
def umask_022() -> Iterator[None]:
    """Every process started in the test (CLI and gateway) inherits umask 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _open_to_others(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) that is not 0700 (dirs) or 0600 (files)."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in [".", *dirs, *files]:
            path = Path(top) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            want = 0o700 if path.is_dir() else 0o600
            if mode != want:
                found.append(f"{path} {mode:04o}")
    return found


def test_state_is_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    state = tmp_path / "state"
    state.mkdir()
    os.chmod(state, 0o755)  # noqa: S103 - as a careless install leaves it
    sink_port = free_port()
    cfg = write_config(
        tmp_path,
        {"example.org": sink_port, "example.com": sink_port},
        f'[sink]\nlisten = "127.0.0.1:{sink_port}"\ndir = "state/mailbox"\n',
    )
    gw: Gateway = start_gateway(cfg)
    try:
        qid = submit(gw, make_message(), ["bob@example.org", CERT_ADDRESS])
        mailbox = state / "mailbox" / "alice@example.com"
        deadline = time.monotonic() + 90
        while not list(mailbox.glob("*.pdf")) or f"{qid}: removed" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.2)
        assert run_cli(cfg, "dkim", "add", "example.com").returncode == 0
        # While the gateway runs, with the database's -wal and -shm in use.
        assert (state / "queue.db-wal").exists() and (state / "queue.db-shm").exists()
        assert list((state / "certificates").glob("*.pdf"))
        assert list((state / "spool" / "archive").glob("*.eml"))
        assert _open_to_others(state) == []
    finally:
        gw.stop()
    assert _open_to_others(state) == []
    # The first command that opened the state directory (users add) said it, naming it.
    warned = run_cli(cfg, "users", "list")
    assert "open to other users" not in warned.stderr


def test_state_dir_open_to_others_is_a_warning_naming_it(tmp_path: Path, umask_022: None) -> None:
    cfg = write_config(tmp_path, {})
    state = tmp_path / "state"
    opened = (state, state / "spool", state / "spool" / "queue")
    (state / "spool" / "queue").mkdir(parents=True)
    for path in opened:
        os.chmod(path, 0o755)  # noqa: S103 - the fault under test
    # The gateway, started on it, says so in its log and makes it private.
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CERTIFICA, "-c", str(cfg), "serve"], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while not (state / "listen.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log_path.read_text()
    for path in opened:
        assert f"warning: state directory: {path} was open to other users (mode 0755)" in text
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert "Traceback" not in text
    # The command line says the same on stderr.
    os.chmod(state, 0o750)  # noqa: S103 - the fault under test
    out = run_cli(cfg, "users", "list")
    assert out.returncode == 0
    assert f"{state} was open to other users (mode 0750); made it 0700" in out.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
