"""Backups of a running gateway and their restore (``certifica backup DIR``,
``certifica restore DIR``; README, "Backups and restore").

A backup holds the database (copied with SQLite's online backup API,
https://www.sqlite.org/backup.html, so the gateway goes on working), the spool
(``spool/queue`` and ``spool/archive``), the certificates (``[evidence] archive_dir``)
and the keys (``keys/``: the development PKI and TLS certificate, DKIM keys, the
``verp.key`` and ``tracking.key`` secrets; not ``subject.key``, :data:`LEFT_OUT`). ``MANIFEST`` lists the
SHA-256 of every other file, in the format ``sha256sum -c`` reads; ``backup.json`` (listed
in it) says when the backup was made (the time of the database snapshot, taken under the
lock), by which version, the schema version, the
evidence log's head in the copy and the highest sequence number the log had issued when
the backup ended.

**Why the copy is consistent.** The rule: every message the database copy has queued has
its spool file in the backup, and every certificate it names has its PDF. A spool file is
written before the row that queues it, and removed (or moved to the archive) only after
the transaction that finishes it has committed (ARCHITECTURE.md §4). Neither order of
"copy the files, then the database" nor "database, then the files" is enough on its own:
a file written between the copy and the snapshot, or removed between the snapshot and the
copy, would be missing. So the backup takes SQLite's write lock on the live database
(``BEGIN IMMEDIATE``: no transaction can commit while it is held, so no message can be
finished and no file of a queued message removed), pins a read snapshot on a second
connection, hard-links every spool and certificate file into a staging directory (a
link keeps the file's bytes whatever the gateway does with its name afterwards), and
lets the lock go. The links are made once before the lock, then brought up to date
under it: a listing of the directories (the inode of each name comes with it), and a
link only for a file added or replaced since, so the gateway's writers (whose busy
timeout is 5 s) wait for a listing, not for a link per certificate; only then are the database pages copied from the pinned snapshot
and the linked files copied into the backup, at leisure. A file written after the
snapshot (a message whose row is not in it) is harmless: the restored gateway removes a
spool file without a row at its start. Where the certificates live on another file
system than the state directory (no hard link across), they are copied instead (a
replaced one under the lock).

**Restore** checks every hash of the manifest first, refuses a state directory that
holds any file (naming it), writes :data:`UNFINISHED` into it, copies the files back
durably, records a ``Restored`` evidence entry naming the backup (its time and the
SHA-256 of its ``MANIFEST``), and only after that entry has committed removes
:data:`UNFINISHED`. A restore stopped half way (a full disk) leaves a database without
its ``Restored`` entry: a gateway started on it would issue again the numbers after the
backup's head, so ``certifica serve`` refuses to start while the marker is there, and
``certifica restore`` run again removes what the stopped one copied and starts over. Entries
made on the lost installation after the backup had sequence numbers above the copy's
head; they must never be issued twice (a certificate sent before the loss may cite one).
The highest one known is the larger of ``backup.json``'s ``highest_seq`` and the
operator's ``--continue-after`` (read from a later certificate or checkpoint); no one
knows what the lost installation issued after that, so the ``Restored`` entry takes its
sequence number a margin (:data:`RESTORE_GAP`, ``--gap``) beyond it, and declares the
numbers it skips (:func:`certifier.evidence.chain_problems` accepts exactly that gap).
That alone depends on the backup only: the same backup restored twice (a drill, then the
real thing; or a restore redone after the restored gateway ran for a while) would issue
the same numbers twice. So the number is also at least the restore's time in
milliseconds since the epoch (13 digits, far below JSON's exact 2**53): two restores
get increasing numbers as long as a restored log issues fewer than a thousand entries a
second on average.
Its ``prev_hash`` is the copy's head, so the chain still verifies end to end.

Delivery is at least once (RFC 5321 §6.1): a recipient still pending in the copy may have
been delivered by the lost installation after the backup, and will be delivered again.
Restore marks those recipients (``recipients.restored_from``, the backup's time), and
their certificate says that the message may have arrived twice.

Exceptions::

    BackupError -- (a UsageError) a refusal: a non-empty target, a damaged backup, a
                   state directory that holds files; one sentence naming the path. Also
                   a restore that failed once it had begun copying (a full disk): the
                   sentence says it did not finish and to run it again
    OSError     -- propagated from a backup (a disk that cannot be read or written; the
                   partial copy is removed first)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from certifier import evidence
from certifier.errors import UsageError
from relay.private import DIR_MODE, FILE_MODE
from relay.queue import evidence_log
from relay.queue.migrations import MIGRATIONS, migrate
from relay.queue.spool import fsync_dir
from relay.queue.states import PENDING, MessageState

BACKUP_FORMAT = "certifica-backup/1"
MANIFEST = "MANIFEST"
"""``<sha256>  <path>`` lines, one per file of the backup but itself (``sha256sum -c``)."""
INFO = "backup.json"
DATABASE = "queue.db"
SPOOL_DIRS = ("spool/queue", "spool/archive")
CERTIFICATES = "certificates"
KEYS = "keys"
UNFINISHED = "RESTORING"
"""In the state directory from a restore's first file copied until its ``Restored`` entry
has committed: a restore stopped half way (a full disk) leaves it, ``certifica serve``
refuses to start while it is there, and ``certifica restore`` run again removes what the
stopped one copied and starts over."""
LEFT_OUT = "keys/subject.key"
"""Never in a backup: whoever holds the database and this key together can test guessed
addresses against the erasure commitments (docs/erasure.md, "The commitment key"), so the
operator keeps it apart and puts it back after a restore."""
RESTORE_QID = "restore"
"""The queue id of a ``Restored`` evidence entry (it is about the gateway, no message)."""
RESTORE_GAP = 1_000_000
"""Sequence numbers left unused after the highest known one by default: entries the lost
installation may have made after anything the operator can know of. A number costs
nothing (SQLite's integers have 63 bits); a number issued twice would make two entries
claim one place in the chain."""

_CHUNK = 1 << 20


class BackupError(UsageError):
    """A backup or restore refused; the sentence names the path to look at."""


@dataclass
class BackupResult:
    directory: Path
    files: int = 0
    size: int = 0
    seconds: float = 0.0
    lock_seconds: float = 0.0
    head: tuple[int, str] | None = None
    highest_seq: int = 0
    in_flight: int = 0
    missing: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    state_dir: Path
    files: int
    backup_time: str
    manifest_sha256: str
    restored_seq: int
    unlogged: tuple[int, int] | None
    in_flight: int


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _files_under(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (not following links), sorted."""
    if not root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path


def _first_file(root: Path) -> Path | None:
    return next(_files_under(root), None)


def _copy_durably(source: Path, dest: Path) -> tuple[str, int]:
    """Copy ``source`` to ``dest`` (0600), fsynced; returns its SHA-256 and size. The
    directory entries are the caller's to fsync (once per directory)."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    with source.open("rb") as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    return digest.hexdigest(), size


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, _files in os.walk(root):
        fsync_dir(Path(dirpath))


def _check_name(relative: str) -> None:
    # sha256sum escapes such names; a gateway never makes them, so refuse rather than guess.
    if "\n" in relative or "\\" in relative:
        raise BackupError(f"{relative!r}: a file name with a newline or backslash cannot be listed")


def _scan(root: Path, prefix: str = "") -> dict[str, int]:
    """Every regular file under ``root`` as {relative path: inode}, from the directory
    entries alone (no stat of each file: ``DirEntry.inode`` comes with the listing)."""
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            found.update(_scan(Path(entry.path), f"{prefix}{entry.name}/"))
        elif entry.is_file(follow_symlinks=False) and not (
            entry.name.startswith(".") and entry.name.endswith(".tmp")  # a write in progress
        ):
            found[prefix + entry.name] = entry.inode()
    return found


def _link(source: Path, dest: Path) -> bool:
    """Hard-link ``source`` as ``dest`` (copy it across file systems); False when it is
    gone already."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    try:
        os.link(source, dest)
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno != errno.EXDEV:  # another file system: copy
            raise
        try:
            shutil.copyfile(source, dest)
        except FileNotFoundError:
            return False
    return True


def _stage(source: Path, staging: Path, staged: dict[str, int] | None = None) -> dict[str, int]:
    """Make ``staging`` hold what ``source`` holds now, by hard links; returns what it
    holds. With ``staged`` (what an earlier call staged), only the files added,
    replaced (another inode under the name) or removed since are linked or unlinked:
    the call made under the write lock costs a directory listing, not a link per file."""
    now = _scan(source)
    done = dict(staged or {})
    for name in set(done) - set(now):
        (staging / name).unlink(missing_ok=True)
        del done[name]
    for name, inode in now.items():
        if done.get(name) == inode:
            continue
        (staging / name).unlink(missing_ok=True)
        if _link(source / name, staging / name):
            done[name] = inode
        else:
            done.pop(name, None)
    return done


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def backup(state_dir: Path, certificates: Path, target: Path, version: str) -> BackupResult:
    """Copy the gateway's state (``state_dir``; certificates in ``certificates``) into
    ``target``, a new or empty directory, while the gateway runs."""
    started = time.monotonic()
    db_path = state_dir / DATABASE
    if not db_path.is_file():
        raise BackupError(f"{db_path} does not exist: there is nothing to back up")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not an empty directory: give a new or empty one")
    inside = [r for r in (state_dir, certificates) if target.resolve().is_relative_to(r.resolve())]
    if inside:
        raise BackupError(f"{target} is inside {inside[0]}: give a directory outside it")
    created = not target.exists()
    try:
        return _write_backup(state_dir, certificates, target, version, started)
    except BaseException:
        # A partial backup would only be mistaken for one (it has no MANIFEST, but an
        # operator may not look): remove what this command made.
        _remove_partial(target, created)
        raise


def _remove_partial(target: Path, created: bool) -> None:
    """Remove ``target`` if this command ``created`` it, else only what it holds."""
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    try:
        for entry in os.scandir(target):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                Path(entry.path).unlink(missing_ok=True)
    except OSError:
        pass  # the error being raised says what went wrong


def _write_backup(
    state_dir: Path, certificates: Path, target: Path, version: str, started: float
) -> BackupResult:
    """The body of :func:`backup`, once its refusals are past."""
    db_path = state_dir / DATABASE
    target.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(target, DIR_MODE)
    result = BackupResult(target)
    staging = state_dir / "run" / f"backup-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir(parents=True, mode=DIR_MODE)
    hashes: dict[str, str] = {}
    try:
        sources = {sub: state_dir / sub for sub in SPOOL_DIRS}
        sources[CERTIFICATES] = certificates
        # First without the lock (the long part), then again under it (the changes only).
        staged = {sub: _stage(path, staging / sub) for sub, path in sources.items()}
        writer, reader = _connect(db_path), _connect(db_path)
        try:
            locked = time.monotonic()
            writer.execute("BEGIN IMMEDIATE")
            try:
                reader.execute("BEGIN")
                result.head = evidence_log.head(reader)  # pins the snapshot
                # The copy's time (backup.json, and restored_from after a restore): the
                # snapshot's, not the end of the copy, which may come minutes later.
                snapshot_at = time.time()
                for sub, path in sources.items():
                    _stage(path, staging / sub, staged[sub])
            finally:
                if writer.in_transaction:
                    writer.execute("ROLLBACK")
                result.lock_seconds = time.monotonic() - locked
            copy = target / DATABASE
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            os.close(fd)
            snapshot = sqlite3.connect(copy, isolation_level=None)
            try:
                reader.backup(snapshot)
                reader.execute("ROLLBACK")
                # One self-contained file: the restored gateway turns WAL on again.
                snapshot.execute("PRAGMA journal_mode=DELETE")
                queued = [
                    str(row[0])
                    for row in snapshot.execute(
                        "SELECT qid FROM messages WHERE state != ?", (MessageState.DONE,)
                    )
                ]
                (result.in_flight,) = snapshot.execute(
                    "SELECT COUNT(DISTINCT r.qid) FROM recipients r JOIN messages m"
                    " ON m.qid = r.qid WHERE m.state != ? AND r.status IN (?, ?)",
                    (MessageState.DONE, *sorted(PENDING)),
                ).fetchone()
                (schema,) = snapshot.execute(
                    "SELECT MAX(version) FROM schema_migrations"
                ).fetchone()
            finally:
                snapshot.close()
            with copy.open("rb+") as f:
                os.fsync(f.fileno())
            hashes[DATABASE] = _sha256_of(copy)
            result.size += copy.stat().st_size
        finally:
            writer.close()
            reader.close()
        for path in _files_under(staging):
            relative = path.relative_to(staging).as_posix()
            _check_name(relative)
            hashes[relative], size = _copy_durably(path, target / relative)
            result.size += size
        for path in _files_under(state_dir / KEYS):
            relative = path.relative_to(state_dir).as_posix()
            if relative == LEFT_OUT:
                continue
            _check_name(relative)
            hashes[relative], size = _copy_durably(path, target / relative)
            result.size += size
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    result.missing = [q for q in queued if f"spool/queue/{q}.eml" not in hashes]
    live = _connect(db_path)
    try:
        live_head = evidence_log.head(live)
    finally:
        live.close()
    result.highest_seq = max(live_head[0] if live_head else 0, result.head[0] if result.head else 0)
    info = {
        "format": BACKUP_FORMAT,
        "time": _iso(snapshot_at),
        "version": version,
        "schema_version": int(schema),
        "evidence_head": {"seq": result.head[0], "hash": result.head[1]} if result.head else None,
        "highest_seq": result.highest_seq,
        "state_dir": str(state_dir),
        "messages_queued": len(queued),
        "messages_in_flight": result.in_flight,
        "spool_files_missing": result.missing,
    }
    data = (json.dumps(info, indent=2, sort_keys=True) + "\n").encode()
    hashes[INFO] = _write_new(target / INFO, data)
    result.size += len(data)
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes.items()))
    # Written last: a backup without its MANIFEST is an unfinished one, and restore says so.
    _write_new(target / MANIFEST, lines.encode())
    _fsync_tree(target)
    result.files = len(hashes)
    result.seconds = time.monotonic() - started
    return result


def _write_new(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def check_backup(source: Path) -> tuple[dict[str, Any], dict[str, str], str]:
    """Check every hash of ``source``'s manifest. Returns (backup.json, the manifest as
    {path: sha256}, the SHA-256 of the MANIFEST file); raises :class:`BackupError` naming
    the first damaged, missing or unlisted file."""
    manifest = source / MANIFEST
    try:
        text = manifest.read_bytes()
    except FileNotFoundError:
        raise BackupError(
            f"{manifest} does not exist: {source} is not a backup, or an unfinished one"
        ) from None
    listed: dict[str, str] = {}
    for number, line in enumerate(text.decode("utf-8", "replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or name.startswith("/") or ".." in name:
            raise BackupError(f"{manifest}: line {number} is not '<sha256>  <file>'")
        listed[name] = digest
    for name, digest in sorted(listed.items()):
        path = source / name
        if not path.is_file():
            raise BackupError(f"the backup is damaged: {path} is missing")
        if _sha256_of(path) != digest:
            raise BackupError(f"the backup is damaged: {path} does not match its SHA-256")
    for path in _files_under(source):
        relative = path.relative_to(source).as_posix()
        if relative != MANIFEST and relative not in listed:
            raise BackupError(f"the backup is damaged: {path} is not in its MANIFEST")
    try:
        info = json.loads((source / INFO).read_text())
    except (OSError, ValueError):
        raise BackupError(f"{source / INFO} cannot be read") from None
    if not isinstance(info, dict) or info.get("format") != BACKUP_FORMAT:
        raise BackupError(f"{source / INFO} is not a {BACKUP_FORMAT} description")
    return info, listed, hashlib.sha256(text).hexdigest()


def restore(
    source: Path,
    state_dir: Path,
    certificates: Path,
    continue_after: int | None = None,
    gap: int = RESTORE_GAP,
    now: float | None = None,
) -> RestoreResult:
    """Restore the backup ``source`` into ``state_dir`` (and ``certificates``), which must
    hold no file, and record the ``Restored`` evidence entry (see the module docstring)."""
    info, listed, manifest_sha256 = check_backup(source)
    schema = int(info.get("schema_version") or 0)
    if schema > len(MIGRATIONS):
        raise BackupError(
            f"{source} was made by a newer version (database schema {schema}, this one "
            f"knows {len(MIGRATIONS)}): restore it with that version or a later one"
        )
    if gap < 0:
        raise BackupError("--gap must be 0 or more")
    marker = state_dir / UNFINISHED
    unfinished = _unfinished_restore(marker)
    for root in (state_dir, certificates):
        if unfinished is not None and (root == state_dir or str(root) == unfinished):
            continue  # this command's own partial copy, removed below
        found = _first_file(root)
        if found is not None:
            raise BackupError(
                f"{root} is not empty ({found} is there): restore only into an empty state "
                "directory"
            )
    if DATABASE not in listed:
        raise BackupError(f"the backup is damaged: {source / DATABASE} is not in its MANIFEST")
    state_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    try:
        if unfinished is not None:
            _clear(state_dir, keep=marker)
            _clear(certificates)
        else:
            # Before the first file: a copy stopped half way is never taken for a state
            # directory (`certifica serve` refuses to start while it is there).
            mark = {"source": str(source), "certificates": str(certificates)}
            _write_new(marker, json.dumps(mark).encode())
            fsync_dir(state_dir)
        entry, unlogged, in_flight, backup_time = _restore_files(
            source, listed, info, manifest_sha256, state_dir, certificates, continue_after, gap, now
        )
        # Only once the Restored entry has committed is the state directory a gateway's.
        marker.unlink()
        fsync_dir(state_dir)
    except (OSError, sqlite3.Error) as err:
        where = getattr(err, "filename", None)
        why = getattr(err, "strerror", None) or str(err)
        raise BackupError(
            f"{where + ': ' if where else ''}{why}; the restore did not finish, and the gateway "
            f"will not start on {state_dir} until it has: run certifica restore {source} again "
            "(it starts over)"
        ) from None
    return RestoreResult(
        state_dir,
        len(listed),
        backup_time,
        manifest_sha256,
        entry.seq,
        unlogged,
        in_flight,
    )


def _unfinished_restore(marker: Path) -> str | None:
    """The certificates directory an unfinished restore wrote into, when ``marker``
    (:data:`UNFINISHED`) says one did; None when there is none."""
    try:
        text = marker.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except ValueError:  # cut short by the failure it marks: the state directory only
        return ""
    return str(data.get("certificates")) if isinstance(data, dict) else ""


def _clear(root: Path, keep: Path | None = None) -> None:
    """Remove everything under ``root`` but ``keep``: what an unfinished restore copied."""
    if not root.is_dir():
        return
    for entry in os.scandir(root):
        path = Path(entry.path)
        if path == keep:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path)
        else:
            path.unlink()
    fsync_dir(root)


def _restore_files(
    source: Path,
    listed: dict[str, str],
    info: dict[str, Any],
    manifest_sha256: str,
    state_dir: Path,
    certificates: Path,
    continue_after: int | None,
    gap: int,
    now: float | None,
) -> tuple[evidence.Entry, tuple[int, int] | None, int, str]:
    """Copy the backup's files and record the ``Restored`` entry; returns the entry, the
    numbers it skips, the recipients still to be tried and the backup's time."""
    for name in sorted(listed):
        if name in (INFO,):
            continue
        if name.startswith(CERTIFICATES + "/"):
            dest = certificates / name[len(CERTIFICATES) + 1 :]
        else:
            dest = state_dir / name
        try:
            _copy_durably(source / name, dest)
        except OSError as err:
            if not err.filename:  # a failed write names no file: name the one written
                err.filename = str(dest)
            raise
    for root in (state_dir, certificates):
        if root.is_dir():
            _fsync_tree(root)
    head = info.get("evidence_head")
    head_seq = int(head["seq"]) if head else 0
    known = max(int(info.get("highest_seq") or 0), head_seq, continue_after or 0)
    restored_at = time.time() if now is None else now
    backup_time = str(info.get("time"))
    backup_ts = datetime.fromisoformat(backup_time.replace("Z", "+00:00")).timestamp()
    conn = sqlite3.connect(state_dir / DATABASE, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        migrate(conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            in_flight = conn.execute(
                "UPDATE recipients SET restored_from = ?, lease_until = NULL, lease_owner = NULL"
                " WHERE status IN (?, ?) AND qid IN (SELECT qid FROM messages WHERE state != ?)",
                (backup_ts, *sorted(PENDING), MessageState.DONE),
            ).rowcount
            # The clock's floor: two restores of one backup must not issue the same
            # numbers either (module docstring).
            last = max(known + gap, int(restored_at * 1000))
            unlogged = (head_seq + 1, last) if last > head_seq else None
            detail: dict[str, Any] = {
                "backup_time": backup_time,
                "manifest_sha256": manifest_sha256,
                "backup_head": head_seq,
                "highest_known": known,
                "recipients_in_flight": in_flight,
            }
            if unlogged:
                detail["unlogged"] = list(unlogged)
            entry = evidence_log.append(
                conn,
                restored_at,
                RESTORE_QID,
                evidence.RESTORED,
                detail,
                continue_after=last,
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return entry, unlogged, in_flight, backup_time
