"""``certifica backup`` under load and ``certifica restore`` on a fresh state directory:
every message queued at backup time is delivered and certified by the restored gateway,
the evidence log verifies and continues past every number the lost one issued, and a
damaged backup or a state directory in use is refused (README, "Backups and restore")."""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from certifier import checkpoints, evidence
from certifier.i18n import Reader
from relay.queue.backup import RESTORE_GAP
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    run_cli,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit


def _config(tmp: Path, sink: Sink) -> Path:
    cfg = write_config(
        tmp, {"example.org": sink.port, "example.net": sink.port, "example.com": sink.port}
    )
    # Held mail must still be queued (not expired) when the restored gateway starts.
    cfg.write_text(cfg.read_text().replace("lifetime = 30.0", "lifetime = 600.0"))
    return cfg


def _in_flight(db: Path) -> dict[str, str]:
    """The backup's messages with a recipient still to be tried: qid -> kind."""
    conn = sqlite3.connect(db)
    try:
        return dict(
            conn.execute(
                "SELECT DISTINCT m.qid, m.kind FROM messages m JOIN recipients r ON r.qid = m.qid"
                " WHERE m.state != 'done' AND r.status IN ('queued', 'deferred')"
            ).fetchall()
        )
    finally:
        conn.close()


@pytest.fixture(scope="module")
def restored(sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A gateway backed up while a thread submits certified mail (carol's server holds
    it: 451), stopped, restored on a new state directory and started again."""
    holding = threading.Event()
    holding.set()
    sink = sink_server.start(
        Sink(
            rcpt_reply=lambda a: (
                "451 4.3.2 Try later" if holding.is_set() and "carol" in a else None
            )
        )
    )
    first = tmp_path_factory.mktemp("lost")
    gw = start_gateway(_config(first, sink))
    submitted: list[str] = []
    enough = threading.Event()
    stop = threading.Event()
    failures: list[BaseException] = []

    def submitting() -> None:
        try:
            n = 0
            while not stop.is_set():
                n += 1
                # Every third one to bob only: certified before the backup.
                to = ["bob@example.org"] if n % 3 == 0 else ["bob@example.org", "carol@example.net"]
                raw = make_message(subject=f"Backup load {n}", to=", ".join(to))
                submitted.append(submit(gw, raw, [*to, CERT_ADDRESS]))
                certified = [
                    m
                    for m in sink.to("alice@example.com")
                    if (m.message["Subject"] or "").startswith("Certificate")
                ]
                if n >= 6 and certified:
                    enough.set()
        except BaseException as err:  # noqa: BLE001 - reported by the test
            failures.append(err)
            enough.set()

    thread = threading.Thread(target=submitting)
    thread.start()
    backup_dir = tmp_path_factory.mktemp("backups") / "b1"
    try:
        assert enough.wait(120)
        made = gw.cli("backup", str(backup_dir))
        after_backup = len(submitted)
        while len(submitted) < after_backup + 3 and not failures:
            stop.wait(0.05)
    finally:
        stop.set()
        thread.join(120)
        gw.stop()
    assert not failures, failures
    assert made.returncode == 0, made.stderr
    assert_clean_log(gw.log())

    second = tmp_path_factory.mktemp("restored")
    cfg = _config(second, sink)
    restore = run_cli(cfg, "restore", str(backup_dir))
    assert restore.returncode == 0, restore.stderr
    # The figures README, "Backups and restore", quotes (pytest -s prints them).
    print(made.stdout, restore.stdout, sep="")
    holding.clear()
    # What the lost gateway sent: it may have certified after the backup a message the
    # backup still has queued (bob's only); the restored one certifies it again.
    sent_before = len(sink.messages)
    gw2 = start_gateway(cfg)
    return {
        "sink": sink,
        "sent_before": sent_before,
        "lost": gw,
        "gateway": gw2,
        "backup": backup_dir,
        "backup_out": made.stdout,
        "restore_out": restore.stdout,
        "in_flight": _in_flight(backup_dir / "queue.db"),
        "info": json.loads((backup_dir / "backup.json").read_text()),
    }


@pytest.fixture(scope="module", autouse=True)
def _stop(restored: dict[str, Any]) -> Any:
    yield
    restored["gateway"].stop()
    assert_clean_log(restored["gateway"].log())


def test_backup_lists_every_file_for_sha256sum(restored: dict[str, Any]) -> None:
    backup: Path = restored["backup"]
    check = subprocess.run(
        ["sha256sum", "-c", "--strict", "--quiet", "MANIFEST"],
        cwd=backup,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (backup / "MANIFEST").read_text().splitlines()}
    on_disk = {p.relative_to(backup).as_posix() for p in backup.rglob("*") if p.is_file()}
    assert on_disk - listed == {"MANIFEST"}
    assert {"queue.db", "backup.json", "keys/ca.pem", "keys/verp.key"} <= listed
    # The erasure commitments' key is kept apart from backups (docs/erasure.md).
    assert "keys/subject.key" not in listed
    assert any(name.startswith("keys/dkim/") for name in listed)
    assert (backup.stat().st_mode & 0o777) == 0o700
    assert all((backup / n).stat().st_mode & 0o077 == 0 for n in listed)
    info = restored["info"]
    assert info["format"] == "certifica-backup/1"
    assert info["highest_seq"] >= info["evidence_head"]["seq"] > 0
    assert info["schema_version"] >= 14
    # backup.json's time is the snapshot's (under the lock), not the end of the copy: it
    # is after the copy's last evidence entry and before the database copy was written.
    at = datetime.fromisoformat(info["time"].replace("Z", "+00:00")).timestamp()
    conn = sqlite3.connect(backup / "queue.db")
    try:
        (head_time,) = conn.execute("SELECT MAX(time) FROM evidence").fetchone()
    finally:
        conn.close()
    assert head_time - 0.001 <= at <= (backup / "queue.db").stat().st_mtime


def test_every_message_queued_at_backup_time_is_in_the_backup(restored: dict[str, Any]) -> None:
    in_flight = restored["in_flight"]
    kinds = set(in_flight.values())
    assert "mail" in kinds, in_flight  # carol's server held them: queued at backup time
    assert restored["info"]["spool_files_missing"] == []
    for qid in in_flight:
        assert (restored["backup"] / "spool" / "queue" / f"{qid}.eml").is_file(), qid
    # And every document the copy says was issued has its PDF.
    conn = sqlite3.connect(restored["backup"] / "queue.db")
    try:
        issued = [row[0] for row in conn.execute("SELECT cert_id FROM verifications")]
    finally:
        conn.close()
    assert issued
    for cert_id in issued:
        assert (restored["backup"] / "certificates" / f"{cert_id}.pdf").is_file(), cert_id


def test_every_message_queued_at_backup_time_leaves_the_queue(restored: dict[str, Any]) -> None:
    """Mail, notices and certificate mails alike: all delivered by the restored gateway."""
    gw: Gateway = restored["gateway"]
    wanted = sorted(restored["in_flight"])
    deadline = time.monotonic() + 120
    while True:
        conn = sqlite3.connect(gw.state / "queue.db")
        try:
            marks = ", ".join("?" for _ in wanted)
            left = conn.execute(
                f"SELECT m.qid, r.address, r.status FROM messages m JOIN recipients r"  # noqa: S608
                f" ON r.qid = m.qid WHERE m.qid IN ({marks}) AND r.status != 'delivered'",
                wanted,
            ).fetchall()
        finally:
            conn.close()
        if not left:
            break
        assert time.monotonic() < deadline, left
        time.sleep(0.2)


def _restored_certificate(sink: Sink, qid: str, sent_before: int) -> Any:
    def mine(ms: list[Any]) -> list[Any]:
        return [
            m
            for m in ms[sent_before:]
            if m.message["X-Certifica-Queue-Id"] == qid
            and (m.message["Subject"] or "").startswith("Certificate")
        ]

    return mine(sink.wait_for(lambda ms: bool(mine(ms)), 120))[0]


def test_every_message_queued_at_backup_time_is_delivered_and_certified(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    sink: Sink = restored["sink"]
    mails = [qid for qid, kind in restored["in_flight"].items() if kind == "mail"]
    pending: dict[str, set[str]] = {qid: set() for qid in mails}
    conn = sqlite3.connect(restored["backup"] / "queue.db")
    try:
        for qid, address in conn.execute(
            "SELECT qid, address FROM recipients WHERE status IN ('queued', 'deferred')"
        ):
            if qid in pending:
                pending[qid].add(address)
    finally:
        conn.close()
    for qid in mails:
        generated_for(sink, qid, "certificate", timeout=120)
        # The restored gateway's certificate, not one the lost gateway sent after the backup.
        mail = _restored_certificate(sink, qid, restored["sent_before"])
        pdf = certificate_pdf(mail, tmp_path / f"{qid}.pdf")
        out = tmp_path / qid
        out.mkdir()
        subprocess.run(["pdfdetach", "-saveall", "-o", str(out), str(pdf)], check=True)
        record = json.loads((out / "evidence.json").read_text())
        by_address = {r["address"]: r for r in record["recipients"]}
        assert {r["status"] for r in record["recipients"]} == {"delivered"}
        # Those still on their way at backup time: the certificate says "maybe twice".
        for address in pending[qid]:
            assert by_address[address]["restored_from"] == restored["info"]["time"]
        for address in set(by_address) - pending[qid]:
            assert "restored_from" not in by_address[address]
        text = subprocess.run(
            ["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True
        ).stdout
        assert "received it twice" in " ".join(text.split())
        checked = restored["gateway"].cli("verify", str(pdf))
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_evidence_log_verifies_and_continues_after_the_highest(
    restored: dict[str, Any],
) -> None:
    gw: Gateway = restored["gateway"]
    # Wait until the restored gateway has added entries of its own.
    for qid, kind in restored["in_flight"].items():
        if kind == "mail":
            generated_for(restored["sink"], qid, "certificate", timeout=120)
    verified = gw.cli("evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    info = restored["info"]
    conn = sqlite3.connect(gw.state / "queue.db")
    try:
        rows = conn.execute(
            "SELECT seq, event, detail FROM evidence WHERE event = ? ORDER BY seq",
            (evidence.RESTORED,),
        ).fetchall()
        (after,) = conn.execute(
            "SELECT COUNT(*) FROM evidence WHERE seq > ?", (rows[0][0],)
        ).fetchone()
        (before,) = conn.execute(
            "SELECT MAX(seq) FROM evidence WHERE seq < ?", (rows[0][0],)
        ).fetchone()
    finally:
        conn.close()
    assert len(rows) == 1
    seq, _event, detail_json = rows[0]
    detail = json.loads(detail_json)
    floor = int(_restored_entry(gw.state)[1] * 1000)
    assert seq == max(info["highest_seq"] + RESTORE_GAP, floor) + 1
    assert before == info["evidence_head"]["seq"]
    assert detail["unlogged"] == [info["evidence_head"]["seq"] + 1, seq - 1]
    assert detail["backup_time"] == info["time"]
    manifest = (restored["backup"] / "MANIFEST").read_bytes()
    assert detail["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert after > 0  # the restored gateway's own entries follow it
    assert f"evidence entry #{seq} records it" in restored["restore_out"]
    # The auditor is told of the restore: a log cut short and followed by a made-up
    # Restored entry would verify just the same.
    restores = [line for line in verified.stdout.splitlines() if line.startswith("RESTORED")]
    assert restores == [
        f"RESTORED #{seq}, {restores[0].split(', ')[1].split(': ')[0]}: restored from the backup of "
        f"{info['time']}, MANIFEST SHA-256 {detail['manifest_sha256']}; "
        f"#{detail['unlogged'][0]} to #{detail['unlogged'][1]} are not in this log (made on "
        "the lost installation after the backup, or never); check that a backup with that "
        "MANIFEST exists (sha256sum MANIFEST)"
    ]
    assert "restored from a backup 1 time(s)" in verified.stdout.splitlines()[-1]


def test_a_damaged_backup_is_refused_naming_the_file(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(restored["backup"], copy)
    victim = sorted((copy / "spool" / "queue").glob("*.eml"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    cfg = _config(tmp_path, restored["sink"])
    refused = run_cli(cfg, "restore", str(copy))
    assert refused.returncode == 2
    assert str(victim) in refused.stderr and "does not match its SHA-256" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "state" / "queue.db").exists()


def test_a_state_directory_with_files_is_refused(restored: dict[str, Any]) -> None:
    gw: Gateway = restored["gateway"]
    refused = gw.cli("restore", str(restored["backup"]))
    assert refused.returncode == 2
    assert f"{gw.state} is not empty" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_backup_into_a_non_empty_directory_is_refused(restored: dict[str, Any]) -> None:
    gw: Gateway = restored["gateway"]
    refused = gw.cli("backup", str(restored["backup"]))
    assert refused.returncode == 2
    assert f"{restored['backup']} is not an empty directory" in refused.stderr


def _rows(entries: list[evidence.Entry], details: list[str]) -> list[evidence.Row]:
    return [
        (
            e.seq,
            e.time,
            e.qid,
            e.recipient,
            e.event,
            d,
            e.prev_hash,
            e.hash,
            e.salt,
            e.commitment,
            None,
        )
        for e, d in zip(entries, details, strict=True)
    ]


def _chain(gap_event: str, declared: list[int] | None) -> list[evidence.Row]:
    entries: list[evidence.Entry] = []
    details: list[str] = []
    last: tuple[int, str] | None = None
    for n in range(3):
        entry, detail = evidence.next_entry(last, 1000.0 + n, f"Q{n}", "SubmissionAcceptance", {})
        entries.append(entry)
        details.append(detail)
        last = (entry.seq, entry.hash)
        if n == 1:  # after entry 2: a restore skipping 3..10
            body = {"unlogged": declared} if declared else {}
            entry, detail = evidence.next_entry((10, last[1]), 1100.0, "restore", gap_event, body)
            entries.append(entry)
            details.append(detail)
            last = (entry.seq, entry.hash)
    return _rows(entries, details)


def test_chain_accepts_only_the_gap_a_restored_entry_declares() -> None:
    assert list(evidence.chain_problems(_chain(evidence.RESTORED, [3, 10]))) == []
    assert [p for _s, p in evidence.chain_problems(_chain(evidence.RESTORED, [3, 9]))] == [
        "entries 3 to 10 are missing before entry 11"
    ]
    assert [p for _s, p in evidence.chain_problems(_chain("NoticeSent", [3, 10]))] == [
        "entries 3 to 10 are missing before entry 11"
    ]
    # An entry removed after the restore is still found.
    rows = _chain(evidence.RESTORED, [3, 10])
    assert [s for s, _p in evidence.chain_problems(rows[:2] + rows[3:])] == [12, 12]


def _restored_entry(state: Path) -> tuple[int, float]:
    """The sequence number and time of the state directory's (last) Restored entry."""
    conn = sqlite3.connect(state / "queue.db")
    try:
        seq, at = conn.execute(
            "SELECT seq, time FROM evidence WHERE event = ? ORDER BY seq DESC LIMIT 1",
            (evidence.RESTORED,),
        ).fetchone()
    finally:
        conn.close()
    return int(seq), float(at)


def test_one_backup_restored_twice_gives_different_increasing_numbers(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    """A drill, then the real restore of the same backup: the second Restored entry (and
    all that follows it) is numbered above the first, which depends on the backup only
    but for the clock's floor (milliseconds since the epoch)."""
    numbers = []
    for name in ("drill", "real"):
        (tmp_path / name).mkdir()
        cfg = _config(tmp_path / name, restored["sink"])
        done = run_cli(cfg, "restore", str(restored["backup"]))
        assert done.returncode == 0, done.stderr
        seq, at = _restored_entry(tmp_path / name / "state")
        assert seq == max(restored["info"]["highest_seq"] + RESTORE_GAP, int(at * 1000)) + 1
        assert seq < 2**53  # exact in JSON
        verified = run_cli(cfg, "evidence", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        numbers.append(seq)
    assert numbers[0] < numbers[1]


def test_entries_not_timestamped_are_counted_not_subtracted() -> None:
    """After a restore the numbers jump: the entries after the last checkpoint are
    counted (here #11 and #12 after a checkpoint on #2), not the difference of numbers."""
    rows = _chain(evidence.RESTORED, [3, 10])
    mark = checkpoints.Checkpoint(rows[1][0], rows[1][7], 1001.0, 1001.0, b"")
    audit = checkpoints.audit(rows, [mark], [])
    assert audit.uncovered == 2
    assert "the last covering #2" in audit.summary()
    assert "(2 newer entries not timestamped yet)" in audit.summary()
    assert len(audit.restores) == 1
    assert audit.restores[0].startswith("#11, ")
    assert "#3 to #10 are not in this log" in audit.restores[0]


def test_continue_after_a_number_learned_later(restored: dict[str, Any], tmp_path: Path) -> None:
    """A number from a later certificate moves the restored log past it; --gap 0 when the
    operator knows the lost log's last entry. The chain still verifies."""
    info = restored["info"]
    later = info["highest_seq"] + 500
    cfg = _config(tmp_path, restored["sink"])
    done = run_cli(
        cfg, "restore", str(restored["backup"]), "--continue-after", str(later), "--gap", "0"
    )
    assert done.returncode == 0, done.stderr
    seq, at = _restored_entry(tmp_path / "state")
    assert seq == max(later, int(at * 1000)) + 1
    verified = run_cli(cfg, "evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # A number below what the backup knows never moves the log back.
    again = tmp_path / "again"
    again.mkdir()
    cfg2 = _config(again, restored["sink"])
    done = run_cli(cfg2, "restore", str(restored["backup"]), "--continue-after", "1", "--gap", "0")
    assert done.returncode == 0, done.stderr
    seq, at = _restored_entry(again / "state")
    assert seq == max(info["highest_seq"], int(at * 1000)) + 1


def test_an_unfinished_backup_or_one_inside_the_state_directory_is_refused(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(restored["backup"], unfinished)
    (unfinished / "MANIFEST").unlink()  # written last: a backup stopped before the end
    refused = run_cli(_config(tmp_path, restored["sink"]), "restore", str(unfinished))
    assert refused.returncode == 2
    assert f"{unfinished / 'MANIFEST'} does not exist" in refused.stderr
    gw: Gateway = restored["gateway"]
    inside = gw.state / "spool" / "b"
    refused = gw.cli("backup", str(inside))
    assert refused.returncode == 2
    assert f"{inside} is inside {gw.state}" in refused.stderr
    assert not inside.exists()


def test_certificates_go_to_the_configured_archive_dir(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "pdfs"
    cfg = _config(tmp_path, restored["sink"])
    cfg.write_text(cfg.read_text() + f'\n[evidence]\narchive_dir = "{archive}"\n')
    archive.mkdir()
    (archive / "old.pdf").write_bytes(b"%PDF-1.7\n")
    refused = run_cli(cfg, "restore", str(restored["backup"]))
    assert refused.returncode == 2
    assert f"{archive} is not empty ({archive / 'old.pdf'} is there)" in refused.stderr
    (archive / "old.pdf").unlink()
    done = run_cli(cfg, "restore", str(restored["backup"]))
    assert done.returncode == 0, done.stderr
    backed_up = sorted(p.name for p in (restored["backup"] / "certificates").glob("*.pdf"))
    assert backed_up
    assert sorted(p.name for p in archive.glob("*.pdf")) == backed_up
    assert not (tmp_path / "state" / "certificates").exists()


def _pages(size: int) -> int:
    return -(-size // 4096)


def test_a_restore_stopped_by_a_full_disk_blocks_the_start_until_run_again(
    restored: dict[str, Any], tmp_path: Path
) -> None:
    """The disk fills up after queue.db was copied, before the spool files: the state
    directory holds the backup's database without its Restored entry. The gateway must
    not start on it (it would issue again numbers the lost one may have issued); the
    restore run again, with room, starts over and finishes."""
    backup: Path = restored["backup"]
    listed = [line.split("  ", 1)[1] for line in (backup / "MANIFEST").read_text().splitlines()]
    before = sum(
        _pages((backup / n).stat().st_size)
        for n in listed
        if not n.startswith("spool/") and n != "backup.json"
    )
    spool = [_pages((backup / n).stat().st_size) for n in listed if n.startswith("spool/")]
    assert len(spool) >= 4
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        cfg = _config(mount, restored["sink"])
        (mount / "state").mkdir()
        filler = mount / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        # Room for the marker, everything before the spool, and half the spool.
        os.truncate(filler, filler.stat().st_size - (before + 1 + sum(spool) // 2) * 4096)
        failed = run_cli(cfg, "restore", str(backup))
        assert failed.returncode == 2, failed.stdout + failed.stderr
        assert "No space left on device" in failed.stderr
        assert "the restore did not finish" in failed.stderr
        assert f"run certifica restore {backup} again" in failed.stderr
        assert "Traceback" not in failed.stderr
        state = mount / "state"
        assert (state / "queue.db").is_file()  # the backup's database, no Restored entry
        assert (state / "RESTORING").is_file()
        refused = run_cli(cfg, "serve")
        assert refused.returncode != 0
        assert f"{state / 'RESTORING'} is there: a restore into {state} did not finish" in (
            refused.stderr
        )
        assert "Traceback" not in refused.stderr
        assert not (state / "master.lock").exists()
        filler.unlink()
        done = run_cli(cfg, "restore", str(backup))
        assert done.returncode == 0, done.stderr
        assert not (state / "RESTORING").exists()
        for name in listed:
            if name.startswith("spool/"):
                assert (state / name).read_bytes() == (backup / name).read_bytes(), name
        verified = run_cli(cfg, "evidence", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        conn = sqlite3.connect(state / "queue.db")
        try:
            (restores,) = conn.execute(
                "SELECT COUNT(*) FROM evidence WHERE event = ?", (evidence.RESTORED,)
            ).fetchone()
        finally:
            conn.close()
        assert restores == 1
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_failed_backup_leaves_no_partial_copy(restored: dict[str, Any], tmp_path: Path) -> None:
    """A backup stopped after the database and the spool were copied (a key file whose
    name MANIFEST cannot list) removes the directory it made, or empties the empty one
    it was given."""
    cfg = _config(tmp_path, restored["sink"])
    done = run_cli(cfg, "restore", str(restored["backup"]))
    assert done.returncode == 0, done.stderr
    (tmp_path / "state" / "keys" / "odd\\name").write_bytes(b"x")
    new = tmp_path / "new" / "b"
    refused = run_cli(cfg, "backup", str(new))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cannot be listed" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not new.exists()
    given = tmp_path / "given"
    given.mkdir()
    refused = run_cli(cfg, "backup", str(given))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert given.is_dir()
    assert list(given.iterdir()) == []
    assert list((tmp_path / "state" / "run").glob("backup-*")) == []


def test_the_verification_page_says_when_the_service_was_restored(
    restored: dict[str, Any],
) -> None:
    """A certificate the lost machine issued after the backup is unknown to the restored
    one: its 404 says so, with the restore's and the backup's times, in the visitor's
    language; the same sentence for any code (it reveals nothing about which exist)."""
    gw: Gateway = restored["gateway"]
    _seq, restored_at = _restored_entry(gw.state)
    pages = {}
    for code, language in (("A" * 16, "en"), ("B" * 16, "en"), ("C" * 16, "es")):
        request = urllib.request.Request(
            f"http://{gw.listen['http']}/v/{code}", headers={"Accept-Language": language}
        )
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        assert answer.value.code == 404
        pages[code] = html.unescape(answer.value.read().decode())
    english = Reader("en", "UTC")
    sentence = (
        f"This service was restored on {english.moment(restored_at)} from a copy made on "
        f"{english.moment(restored['info']['time'])}: a document issued between those two "
        "times is not known here"
    )
    assert sentence in " ".join(pages["A" * 16].split())
    assert pages["A" * 16] == pages["B" * 16]
    assert "Este servicio se restableció el" in pages["C" * 16]
