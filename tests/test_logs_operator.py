"""Logs for operators: ``[log] format = "json"``, ``[log] file``, lines without a time
under systemd's journal, and ``certifica log QID``.

Real gateways, real clients, real sinks; the log is read back as an operator (or a log
shipper) reads it.
"""

from __future__ import annotations

import datetime
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
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
    start_gateway,
    write_config,
)
from tests.test_certified_sending import generated_for, submit
from tests.test_cli_kind import _system_python
from tests.test_cli_kind import other_user as other_user  # a user made for the test

FIELDS = {"time", "level", "process", "message"}
LEVELS = {"debug", "info", "warning", "error"}
TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def remote(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


def routes(remote: Sink) -> dict[str, int]:
    return {d: remote.port for d in ("example.org", "example.net", "example.com")}


@pytest.fixture(scope="module")
def json_gateway(
    tmp_path_factory: pytest.TempPathFactory, remote: Sink
) -> Iterator[tuple[Gateway, Path]]:
    tmp = tmp_path_factory.mktemp("jsonlog")
    cfg = write_config(tmp, routes(remote), '[log]\nformat = "json"\nfile = "log/gateway.log"\n')
    (tmp / "log").mkdir()
    gw = start_gateway(cfg)
    yield gw, tmp / "log" / "gateway.log"
    gw.stop()


@pytest.fixture(scope="module")
def two_messages(json_gateway: tuple[Gateway, Path], remote: Sink) -> tuple[str, str]:
    """Two certified sends, each finished: its certificate mail delivered."""
    gw, _ = json_gateway
    first = submit(gw, make_message("First"), ["bob@example.org", CERT_ADDRESS])
    second = submit(gw, make_message("Second"), ["carol@example.net", CERT_ADDRESS])
    for qid in (first, second):
        mail = generated_for(remote, qid, "certificate")
        cert_qid = mail.message["X-Certifica-Queue-Id"]
        assert cert_qid == qid
    # The certificate mail's own delivery is logged once the sink said 250: wait for it.
    log = json_gateway[1]
    deadline = time.monotonic() + 60
    while log.read_text().count("to=<alice@example.com>") < 4:  # 2 notices, 2 certificates
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return first, second


def entries(text: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        out.append(entry)
    return out


def test_json_lines_have_the_fields_in_the_file_and_on_stderr(
    json_gateway: tuple[Gateway, Path], two_messages: tuple[str, str]
) -> None:
    gw, log_file = json_gateway
    first, _ = two_messages
    written, stderr = entries(log_file.read_text()), entries(gw.log())
    assert written and len(stderr) >= len(written)  # the file holds what stderr has
    for entry in written + stderr:
        assert FIELDS <= set(entry), entry
        assert entry["level"] in LEVELS, entry
        when = datetime.datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        assert when.utcoffset() == datetime.timedelta(0), entry
        assert entry["process"].startswith("certifica"), entry
        if re.match(r"[0-9A-F]{12}: ", entry["message"]):
            assert entry["qid"] == entry["message"][:12], entry
        else:
            assert "qid" not in entry, entry
    about_first = [e for e in written if e.get("qid") == first]
    assert any("status=sent" in e["message"] for e in about_first), about_first
    # A child's lines carry its role and pid, as in the text format.
    assert any(re.fullmatch(r"certifica/\w+\[\d+\]", e["process"]) for e in written)


def test_log_prints_every_line_about_a_message_and_nothing_about_another(
    json_gateway: tuple[Gateway, Path], two_messages: tuple[str, str]
) -> None:
    gw, _ = json_gateway
    first, second = two_messages
    result = gw.cli("log", first)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    messages = [e["message"] for e in lines]
    text = "\n".join(messages)
    print(f"\ncertifica log {first}:\n{text}")
    # Acceptance, delivery to Bob, the certificate, and the mails made about it.
    assert re.search(rf"^{first}: from=<alice@example.com>", text, re.M), text
    assert re.search(rf"^{first}: to=<bob@example.org>, .*status=sent", text, re.M), text
    assert re.search(rf"^{first}: certificate=CF-", text, re.M), text
    linked = {e["qid"] for e in lines if e.get("qid") and e["qid"] != first}
    assert len(linked) >= 2, text  # the notice and the certificate mail
    for qid in linked:
        assert re.search(rf"^{qid}: to=<alice@example.com>, .*status=sent", text, re.M), text
    # Nothing about the other message, nor about the mails made about it.
    other = gw.cli("log", second)
    assert other.returncode == 0, other.stderr
    theirs = {json.loads(line).get("qid") for line in other.stdout.splitlines()} - {None}
    assert second in theirs and not theirs & ({first} | linked), (theirs, linked)
    for line in result.stdout.splitlines():
        assert not any(q in line for q in theirs), line
    # An abbreviated id does the same; an unknown one is one line and exit status 1 or 2.
    assert gw.cli("log", first[:8]).stdout == result.stdout
    unknown = gw.cli("log", "ABCDEF012345")
    assert unknown.returncode == 1 and unknown.stdout == "", unknown
    assert unknown.stderr.count("\n") == 1 and "no line about ABCDEF012345" in unknown.stderr
    assert gw.cli("log", "zz").returncode == 2


def rotate(log_file: Path) -> None:
    """Run logrotate with the rule README.md gives, on ``log_file``, now."""
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not Path(logrotate).exists():
        pytest.skip("no logrotate (Debian: logrotate)")
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^/var/log/certifica/certifica\.log \{\n.*?^\}\n", readme, re.M | re.S)
    assert found, "README.md has no logrotate rule"
    me = pwd.getpwuid(os.getuid()).pw_name
    rule = found.group(0).replace("/var/log/certifica/certifica.log", str(log_file))
    rule = rule.replace("create 0600 certifica certifica", f"create 0600 {me} {me}")
    conf = log_file.parent.parent / "logrotate.conf"
    conf.write_text(rule)
    done = subprocess.run(
        [logrotate, "--force", "--state", str(conf.with_suffix(".state")), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and not done.stderr, done.stderr


def test_log_reads_the_rotated_file_and_the_gateway_writes_a_new_one(
    json_gateway: tuple[Gateway, Path], two_messages: tuple[str, str], remote: Sink
) -> None:
    """logrotate, with the README's rule, renames the file (create mode): the gateway's
    processes notice and write a new one; ``certifica log`` reads the previous one too."""
    gw, log_file = json_gateway
    first, _ = two_messages
    before = gw.cli("log", first).stdout
    rotate(log_file)
    assert log_file.with_name(log_file.name + ".1").exists()
    third = submit(gw, make_message("Third"), ["bob@example.org", CERT_ADDRESS])
    generated_for(remote, third, "certificate")
    deadline = time.monotonic() + 60
    while not (log_file.exists() and f"{third}: certificate=" in log_file.read_text()):
        assert time.monotonic() < deadline, "no new log file after the rotation"
        time.sleep(0.1)
    assert gw.cli("log", first).stdout == before  # all in the rotated file
    assert f'"qid": "{third}"' in gw.cli("log", third).stdout


def journal_env(stderr_file: Path) -> dict[str, str]:
    """What systemd sets for a service whose stderr is the journal (systemd.exec(5))."""
    status = os.stat(stderr_file)
    return {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}


def run_briefly(cfg: Path, env: dict[str, str], stderr_file: Path) -> str:
    """Start ``certifica serve``, wait for its listeners, stop it; its stderr."""
    listen = cfg.parent / "state" / "listen.json"
    listen.unlink(missing_ok=True)
    with open(stderr_file, "ab") as out:
        proc = subprocess.Popen([CERTIFICA, "-c", str(cfg), "serve"], stderr=out, env=env)
    try:
        deadline = time.monotonic() + 60
        while not listen.exists():
            assert proc.poll() is None and time.monotonic() < deadline, stderr_file.read_text()
            time.sleep(0.05)
    finally:
        proc.terminate()
        assert proc.wait(60) == 0, stderr_file.read_text()
    return stderr_file.read_text()


def test_under_the_journal_text_lines_have_no_time_and_a_priority(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {}, '[log]\nfile = "gateway.log"\n')
    stderr_file = tmp_path / "journal.txt"
    stderr_file.touch()
    text = run_briefly(cfg, journal_env(stderr_file), stderr_file)
    lines = text.splitlines()
    assert any("stopped" in line for line in lines), text
    for line in lines:
        assert re.match(r"<[3-7]>certifica(/[\w.-]+(\[\d+\])?)?: ", line), line
        assert not TIME.match(line), line
    # The file has no journal to stamp it: its lines keep their time, and no priority.
    for line in (tmp_path / "gateway.log").read_text().splitlines():
        assert TIME.match(line) and not line.startswith("<"), line
    assert_clean_log(text)


def test_journal_stream_of_another_file_is_not_trusted(tmp_path: Path) -> None:
    """A process whose stderr was redirected away from the journal inherits the
    variable; the time stays in its lines."""
    cfg = write_config(tmp_path, {})
    elsewhere = tmp_path / "other.txt"
    elsewhere.touch()
    stderr_file = tmp_path / "stderr.txt"
    text = run_briefly(cfg, journal_env(elsewhere), stderr_file)
    assert text and all(TIME.match(line) for line in text.splitlines()), text


JOURNALD = Path("/lib/systemd/systemd-journald")
MACHINE_ID = Path("/etc/machine-id")


@pytest.fixture
def journal() -> Iterator[str]:
    """A journald of its own (a journal namespace, systemd-journald(8)), so the test
    neither needs systemd as PID 1 nor reads or writes the machine's journal."""
    if not (JOURNALD.exists() and shutil.which("journalctl") and MACHINE_ID.exists()):
        pytest.skip("needs systemd-journald, journalctl and a machine id")
    if os.geteuid() != 0:
        pytest.skip("needs root (journald's sockets are in /run/systemd)")
    namespace = f"certifica-test-{secrets.token_hex(4)}"
    run = Path(f"/run/systemd/journal.{namespace}")
    machine = MACHINE_ID.read_text().strip()
    stored = [Path(f"/{base}/log/journal/{machine}.{namespace}") for base in ("var", "run")]
    daemon = subprocess.Popen(
        [str(JOURNALD), namespace], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not (run / "stdout").exists():
            assert daemon.poll() is None and time.monotonic() < deadline, "journald did not start"
            time.sleep(0.05)
        yield namespace
    finally:
        daemon.terminate()
        daemon.wait(30)
        for path in (run, *stored):
            shutil.rmtree(path, ignore_errors=True)


def journal_stream(namespace: str, identifier: str) -> socket.socket:
    """A stream to journald, as systemd gives a service for its stdout and stderr: the
    header names the identifier and asks journald to read a ``<N>`` priority prefix."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(f"/run/systemd/journal.{namespace}/stdout")
    # identifier, unit, default priority, level prefix, to syslog, kmsg, console
    stream.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    stream.shutdown(socket.SHUT_RD)
    return stream


def test_log_reads_the_journal_when_the_gateway_runs_under_it(
    journal: str, remote: Sink, tmp_path: Path
) -> None:
    """The gateway's stderr is a journald stream with JOURNAL_STREAM set, as under the
    unit; its lines arrive with their priority read and without a time of their own, and
    ``certifica log`` finds a message's lines through journalctl."""
    cfg = write_config(tmp_path, routes(remote))
    added = run_cli(cfg, "users", "add", "alice@example.com", "--password-stdin",
                    stdin="correct horse battery\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    stream = journal_stream(journal, "certifica")
    status = os.fstat(stream.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
    listen = tmp_path / "state" / "listen.json"
    proc = subprocess.Popen(
        [CERTIFICA, "-c", str(cfg), "serve"], stdout=stream, stderr=stream, env=env
    )
    stream.close()
    try:
        deadline = time.monotonic() + 60
        while not listen.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "gateway did not start"
            time.sleep(0.05)
        gw = Gateway(cfg, tmp_path / "state", proc, json.loads(listen.read_text()), tmp_path)
        qid = submit(gw, make_message("Journal"), ["bob@example.org", CERT_ADDRESS])
        generated_for(remote, qid, "certificate")
    finally:
        proc.terminate()
        assert proc.wait(60) == 0

    def lines_about(qid: str) -> str:
        result = run_cli(cfg, "log", "--journal", "--namespace", journal, qid)
        assert result.returncode == 0, result.stderr
        return result.stdout

    deadline = time.monotonic() + 30
    while f"{qid}: certificate=CF-" not in (text := lines_about(qid)):
        assert time.monotonic() < deadline, text
        time.sleep(0.2)
    assert re.search(rf"certifica\[\d+\]: certifica/\S+: {qid}: from=<alice", text), text
    assert re.search(rf": {qid}: to=<bob@example.org>, .*status=sent", text), text
    assert text.count("status=sent") >= 3, text  # Bob's copy, the notice, the certificate
    # journald read each line's priority and took it off; no time but the journal's own.
    records = subprocess.run(
        ["journalctl", f"--namespace={journal}", "-t", "certifica", "-o", "json", "--no-pager"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert records
    for record in map(json.loads, records):
        message = record["MESSAGE"]
        assert message.startswith("certifica"), record  # no time of its own first
        expected = {"error": "3", "warning": "4"}
        level = re.search(r": (error|warning): ", message)
        assert record["PRIORITY"] == (expected[level.group(1)] if level else "6"), record


def test_root_reads_the_journal_while_the_queue_is_read_as_its_owner(
    journal: str, other_user: pwd.struct_passwd, request: pytest.FixtureRequest
) -> None:
    """As an operator with sudo on a host where the state belongs to the certifica user:
    the queue is read as that user (root leaves no file there), the journal as root,
    which that user cannot read."""
    found = _system_python()  # a Python the other user can run (this one may be root's)
    if found is None:
        pytest.skip("no system Python of this version for the other user")
    import sqlite_utils

    site = Path(sqlite_utils.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{site}"}
    base = Path(tempfile.mkdtemp(prefix="certifica-log-"))  # pytest's are root's alone
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)  # noqa: S103 - the other user must reach its state directory
    state = base / "state"
    state.mkdir(mode=0o700)
    os.chown(state, other_user.pw_uid, other_user.pw_gid)
    cfg = write_config(base, {})

    def certifica(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*found, "-c", str(cfg), *args], capture_output=True, text=True, env=env, timeout=120
        )

    assert certifica("queue", "list").returncode == 0  # the queue made, as its owner
    qid = secrets.token_hex(6).upper()  # a message the queue no longer holds
    stream = journal_stream(journal, "certifica")
    stream.sendall(f"<6>certifica/smtpd[7]: {qid}: from=<a@example.com>, size=1\n".encode())
    stream.sendall(b"<6>certifica/smtpd[7]: 000000000000: from=<b@example.com>, size=2\n")
    stream.close()
    deadline = time.monotonic() + 30
    while (result := certifica("log", "--namespace", journal, qid)).returncode != 0:
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.2)
    assert f"running as {other_user.pw_name}" in result.stderr
    (line,) = result.stdout.splitlines()
    assert line.endswith(f"certifica/smtpd[7]: {qid}: from=<a@example.com>, size=1"), line
    owned = [p for p in (state, *state.rglob("*")) if p.lstat().st_uid != other_user.pw_uid]
    assert owned == []


def test_bad_log_keys_are_refused_naming_the_key(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {}, '[log]\nformat = "xml"\n')
    result = run_cli(cfg, "serve")
    assert result.returncode == 2 and "log.format" in result.stderr and str(cfg) in result.stderr
    cfg = write_config(tmp_path, {}, '[log]\nfile = "no/such/dir/gateway.log"\n')
    result = run_cli(cfg, "serve")
    assert result.returncode == 2, result
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"certifica: {cfg}: log.file ") and "Traceback" not in line, line
