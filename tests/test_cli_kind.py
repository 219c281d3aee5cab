"""The command line is kind (issue 12, item 11), tried with the real ``certifica``
command as a subprocess: ``users add``/``users set``, no terminal, ``queue list``,
``reception enable --ack-sender/--no-ack-sender``, ``addendum -o FILE``, the line that
names the config and state directory, and root against another user's state."""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlite_utils

from relay.smtpd.users import check_password
from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    ROOT,
    Sink,
    SinkServer,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import submit


def certifica(
    cfg: Path, *args: str, stdin: str | None = None, devnull: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CERTIFICA, "-c", str(cfg), *args],
        input=stdin,
        stdin=subprocess.DEVNULL if devnull else None,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _hash_of(state: Path, address: str) -> str:
    with sqlite3.connect(state / "queue.db") as db:
        row = db.execute("SELECT password_hash FROM users WHERE address = ?", (address,)).fetchone()
    return str(row[0])


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "c.toml"
    path.write_text('[gateway]\nstate_dir = "state"\n')
    return path


def test_users_add_refuses_an_existing_user_and_set_changes_it(cfg: Path) -> None:
    state = cfg.parent / "state"
    added = certifica(
        cfg, "users", "add", "Zoe@Example.com", "--password-stdin", stdin="first pw 1\n"
    )
    assert added.returncode == 0, added.stderr
    assert "user zoe@example.com added" in added.stdout
    # The command that created state says where, on one line.
    assert f"certifica: config {cfg}, state directory {state}\n" in added.stderr
    again = certifica(
        cfg, "users", "add", "zoe@example.com", "--password-stdin", stdin="second pw 2\n"
    )
    assert again.returncode == 2
    assert "user zoe@example.com exists already" in again.stderr
    assert "certifica users set zoe@example.com [--password-stdin]" in again.stderr
    assert check_password("first pw 1", _hash_of(state, "zoe@example.com"))

    changed = certifica(
        cfg, "users", "set", "zoe@example.com", "--password-stdin", stdin="second pw 2\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert check_password("second pw 2", _hash_of(state, "zoe@example.com"))
    assert not check_password("first pw 1", _hash_of(state, "zoe@example.com"))

    tracking = certifica(cfg, "users", "set", "zoe@example.com", "--tracking", "off", devnull=True)
    assert tracking.returncode == 0, tracking.stderr
    assert "open and click tracking off" in tracking.stdout and "password" not in tracking.stdout
    assert check_password("second pw 2", _hash_of(state, "zoe@example.com"))  # kept
    with sqlite3.connect(state / "queue.db") as db:
        assert db.execute("SELECT tracking FROM users").fetchall() == [(0,)]

    unknown = certifica(
        cfg, "users", "set", "nobody@example.com", "--password-stdin", stdin="x" * 9
    )
    assert unknown.returncode == 2
    assert "there is no user nobody@example.com" in unknown.stderr
    assert "certifica users add nobody@example.com" in unknown.stderr


@pytest.mark.parametrize("action", ["add", "set"])
def test_no_terminal_says_to_use_password_stdin(cfg: Path, action: str) -> None:
    if action == "set":
        made = certifica(
            cfg, "users", "add", "amy@example.com", "--password-stdin", stdin="long enough\n"
        )
        assert made.returncode == 0, made.stderr
    before = certifica(cfg, "users", "list").stdout
    if action == "add":  # on a fresh machine: refused before any state is made
        fresh = cfg.parent / "fresh.toml"
        fresh.write_text('[gateway]\nstate_dir = "fresh-state"\n')
        out = certifica(fresh, "users", "add", "amy@example.com", devnull=True)
        assert out.returncode == 2 and "--password-stdin" in out.stderr
        assert not (cfg.parent / "fresh-state").exists()
    out = certifica(cfg, "users", action, "amy@example.com", devnull=True)
    assert out.returncode == 2
    assert "no terminal to ask for the password" in out.stderr
    assert f"certifica users {action} amy@example.com --password-stdin" in out.stderr
    assert "EOFError" not in out.stderr and "Traceback" not in out.stderr
    assert certifica(cfg, "users", "list").stdout == before  # nothing changed
    empty = certifica(cfg, "users", action, "amy@example.com", "--password-stdin", devnull=True)
    assert empty.returncode == 2 and "no password on standard input" in empty.stderr


def test_reception_enable_keeps_or_changes_ack_sender_explicitly(cfg: Path) -> None:
    def listed() -> str:
        out = certifica(cfg, "reception", "list")
        assert out.returncode == 0, out.stderr
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("own@example.com\t")]
        assert len(line) == 1, out.stdout
        return line[0]

    first = certifica(cfg, "reception", "enable", "own@example.com")
    assert first.returncode == 0 and "ack-sender: no" in first.stdout
    assert listed().endswith("\tack-sender: no")
    forward = listed().split("\t")[2]
    on = certifica(cfg, "reception", "enable", "own@example.com", "--ack-sender")
    assert on.returncode == 0 and "ack-sender: yes" in on.stdout
    assert listed().endswith("\tack-sender: yes")
    kept = certifica(cfg, "reception", "enable", "own@example.com")
    assert "ack-sender: yes" in kept.stdout and listed().endswith("\tack-sender: yes")
    off = certifica(cfg, "reception", "enable", "own@example.com", "--no-ack-sender")
    assert "ack-sender: no" in off.stdout and listed().endswith("\tack-sender: no")
    assert listed().split("\t")[2] == forward  # the forwarding address never changes


@pytest.fixture()
def queued(sink_server: SinkServer, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A certified message that stays queued: its recipient's server refuses connections
    (no SMTP reply code, only a text)."""
    closed = free_port()
    sink = sink_server.start(Sink())
    cfg = write_config(tmp_path, {"example.org": closed, "example.com": sink.port})
    cfg.write_text(
        cfg.read_text()
        .replace("first_retry = 1.0", "first_retry = 3600.0")
        .replace("max_retry = 2.0", "max_retry = 3600.0")
        .replace("lifetime = 30.0", "lifetime = 86400.0")
    )
    gw = start_gateway(cfg)
    try:
        qid = submit(gw, make_message(), ["bob@example.org", CERT_ADDRESS])
        deadline = time.monotonic() + 60
        while f"{qid}: to=<bob@example.org>" not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.1)
        yield cfg, qid
    finally:
        gw.stop()


def test_queue_list_separates_id_and_flags_and_shows_no_none(queued: tuple[Path, str]) -> None:
    cfg, qid = queued
    out = certifica(cfg, "queue", "list")
    assert out.returncode == 0, out.stderr
    assert "None" not in out.stdout, out.stdout
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "QUEUE",
        "ID",
        "FLAGS",
        "SIZE",
        "AGE",
        "SENDER",
        "(KIND),",
        "RECIPIENTS",
    ]
    assert re.search(
        rf"^{qid}  C-  +\d+ +\d+s  <alice@example\.com> \(mail\)$", out.stdout, re.M
    ), out.stdout
    rcpt = [ln for ln in lines if "<bob@example.org>" in ln]
    assert len(rcpt) == 1 and re.match(r"^ {14}deferred   <bob@example\.org> \(\S", rcpt[0]), rcpt


def test_addendum_writes_its_file_only_when_it_is_complete(
    queued: tuple[Path, str], tmp_path: Path
) -> None:
    cfg, qid = queued
    cert_id = json.loads(certifica(cfg, "queue", "show", qid, "--json").stdout)["cert_id"]
    out_file = tmp_path / "addendum.pdf"
    out_file.write_bytes(b"kept")
    failed = certifica(cfg, "addendum", "CF-0000000000000000", "-o", str(out_file))
    assert failed.returncode == 2 and "no certificate" in failed.stderr
    assert out_file.read_bytes() == b"kept"
    unwritable = certifica(cfg, "addendum", cert_id, "-o", str(tmp_path / "no" / "such" / "a.pdf"))
    assert unwritable.returncode == 2 and "cannot be written" in unwritable.stderr
    assert "Traceback" not in unwritable.stderr
    made = certifica(cfg, "addendum", cert_id, "-o", str(out_file))
    assert made.returncode == 0, made.stderr
    assert out_file.read_bytes().startswith(b"%PDF-")
    assert not list(tmp_path.glob(".addendum.pdf*"))  # no temporary file left


# -- root against a state directory that another user owns ---------------------------
@pytest.fixture()
def other_user() -> Iterator[pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the case is root running the CLI on another user's state")
    name = f"cftest{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False)


def _system_python() -> list[str] | None:
    """The distribution's Python of this minor version, which any user can read (the
    test's own may live under /root, as pyenv puts it), running this checkout."""
    path = Path(f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
    return [str(path), "-m", "relay.cli"] if path.exists() else None


@pytest.mark.parametrize("python", ["installed", "system"])
@pytest.mark.parametrize("made", ["made", "not yet"])
def test_root_acts_as_the_owner_of_the_state_directory_or_refuses(
    other_user: pwd.struct_passwd, python: str, made: str
) -> None:
    """Root never leaves files of its own in another user's state directory: it becomes
    that user, or, when that user could not even run this Python, refuses in a sentence.
    A state directory not made yet belongs to the owner of the directory it goes in."""
    command = [CERTIFICA]
    env = dict(os.environ)
    if python == "system":
        found = _system_python()
        if found is None:
            pytest.skip(f"no /usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}")
        command = found
        site = Path(sqlite_utils.__file__).resolve().parent.parent
        env["PYTHONPATH"] = f"{ROOT}:{site}"
    base = Path(tempfile.mkdtemp(prefix="certifica-owner-"))
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the other user must reach its state directory
        home = base / "home"
        home.mkdir(mode=0o700)
        os.chown(home, other_user.pw_uid, other_user.pw_gid)
        state = home / "state"
        if made == "made":
            state.mkdir(mode=0o700)
            os.chown(state, other_user.pw_uid, other_user.pw_gid)
        cfg = base / "config.toml"
        cfg.write_text('[gateway]\nstate_dir = "home/state"\n')

        def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*command, "-c", str(cfg), *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
            )

        name = other_user.pw_name
        added = run("users", "add", "ann@example.com", "--password-stdin", stdin="long enough\n")
        assert "Traceback" not in added.stderr
        if python == "system" or added.returncode == 0:
            assert added.returncode == 0, added.stderr
            assert f"running as {name}, the owner of {state}" in added.stderr
            assert run("dkim", "add", "example.com").returncode == 0
            assert run("queue", "list").returncode == 0
            assert (state / "queue.db").exists() and (state / "keys").is_dir()
        else:  # this Python is out of the other user's reach: a sentence, nothing done
            assert added.returncode == 2
            assert f"belongs to {name}, who cannot read" in added.stderr
            assert f"run the command as {name}" in added.stderr
            assert added.stderr.count("\n") == 1
        made_now = [state, *state.rglob("*")] if state.exists() else []
        assert [str(p) for p in made_now if p.lstat().st_uid != other_user.pw_uid] == []

        refused = run("serve")
        assert refused.returncode == 2
        assert f"belongs to {name}: run the gateway as {name}" in refused.stderr
        assert refused.stderr.count("\n") == 1
        assert [str(p) for p in state.rglob("*") if p.lstat().st_uid == 0] == []
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_evidence_export_writes_a_complete_directory_or_nothing(cfg: Path, tmp_path: Path) -> None:
    assert (
        certifica(
            cfg, "users", "add", "a@example.com", "--password-stdin", stdin="long enough\n"
        ).returncode
        == 0
    )
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("the operator's")
    refused = certifica(cfg, "evidence", "verify", "--export", str(busy))
    assert refused.returncode == 2 and "is not an empty directory" in refused.stderr
    assert [p.name for p in busy.iterdir()] == ["mine.txt"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    failed = certifica(cfg, "evidence", "verify", "--export", str(blocker / "out"))
    assert failed.returncode == 2 and "cannot be written" in failed.stderr
    assert "Traceback" not in failed.stderr
    fresh = tmp_path / "fresh" / "checkpoints"
    made = certifica(cfg, "evidence", "verify", "--export", str(fresh))
    assert made.returncode in (0, 1), made.stderr
    assert fresh.is_dir() and "written to" in made.stdout
    assert [p.name for p in fresh.parent.iterdir()] == ["checkpoints"]  # no partial left
