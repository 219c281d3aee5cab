"""The spool: one file per queued message, written so that a 250 never outlives a crash.

A message is written to ``tmp/<qid>``, fsynced, renamed into ``queue/<qid>.eml`` and
the directory fsynced (POSIX rename durability), before the database row that makes
it owned by the queue is committed. A file in ``queue/`` with no row is the trace of a
transaction that was never answered 250; :meth:`Spool.orphans` finds those at start.

Exceptions::

    OSError            -- propagated; ENOSPC/EDQUOT mean "out of storage" (see is_disk_full)
      SpoolFileMissing -- (a FileNotFoundError) a queued message's file is gone: a disk
                          fault or an operator's mistake, never a normal state
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from pathlib import Path

from certifier.errors import StorageError


class SpoolFileMissing(FileNotFoundError, StorageError):
    """The file of a queued message is not in the spool; ``str()`` says so in plain words."""

    def __init__(self, qid: str, path: Path) -> None:
        super().__init__(f"spool file missing: {path}")
        self.qid = qid
        self.path = path

    def __str__(self) -> str:
        return f"spool file missing: {self.path}"


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir_now(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirSync:
    """Group commit for renames: concurrent fsyncs of one directory are coalesced.

    A caller returns once an fsync of the directory that *began after its call* has
    finished (so it covers the caller's rename), or raises that fsync's error. Twenty
    sessions renaming at once then share one or two fsyncs instead of queueing twenty.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started = 0  # generations of fsync begun
        self._finished = 0
        self._running = False
        self._failed: dict[int, OSError] = {}

    def sync(self, path: Path) -> None:
        with self._cond:
            wanted = self._started + 1
            while self._finished < wanted and self._running:
                self._cond.wait()
            if self._finished >= wanted:
                self._raise_if_failed(wanted)
                return
            self._running = True
            self._started += 1
            generation = self._started
        error: OSError | None = None
        try:
            _fsync_dir_now(path)
        except OSError as err:
            error = err
        with self._cond:
            self._running = False
            self._finished = generation
            if error is not None:
                self._failed[generation] = error
                if len(self._failed) > 64:
                    del self._failed[min(self._failed)]
            self._cond.notify_all()
        if error is not None:
            raise error

    def _raise_if_failed(self, wanted: int) -> None:
        # Only the generation that began after the caller's call covers it; a later one
        # covers it too, so the caller fails only if all of those failed.
        covering = range(wanted, self._finished + 1)
        if all(g in self._failed for g in covering):
            raise self._failed[covering[-1]]


_DIR_SYNC: dict[str, _DirSync] = {}
_DIR_SYNC_LOCK = threading.Lock()


def fsync_dir(path: Path) -> None:
    """fsync ``path`` (a directory) so that renames into it survive a crash."""
    key = os.fspath(path)
    with _DIR_SYNC_LOCK:
        syncer = _DIR_SYNC.get(key)
        if syncer is None:
            syncer = _DIR_SYNC[key] = _DirSync()
    syncer.sync(path)


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data`` and fsync it (the directory entry is the caller's)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_synced(tmp, data, mode)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_once(path: Path, data: bytes, mode: int = 0o600) -> bytes:
    """Write ``data`` to ``path`` unless a file is there already; return what ``path``
    holds. The first writer wins (a hard link fails on an existing name, rename would
    replace it), so a document made again after a worker died, or by two workers at
    once, is kept and mailed as the one first written (ARCHITECTURE.md §1, Hand-offs)."""
    # A name of its own per call: two jobs in one process may write the same path.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    _write_synced(tmp, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)  # one fsync covers the link and the temporary name's removal
    return data


SPOOL_SUBDIR = "spool"
"""The spool's directory under the state directory."""
SPOOL_QUEUE = "queue"
"""Queued messages' files (``<qid>.eml``), under the spool."""


class Spool:
    """Message files under ``<state_dir>/spool``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / SPOOL_QUEUE
        self.queue_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Certified originals (and the DSNs about them) stay as evidence after delivery:
        # addenda embed them. Retention is the operator's policy (README, GDPR).
        self.archive_dir = root / "archive"
        self.archive_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, qid: str) -> Path:
        return self.queue_dir / f"{qid}.eml"

    def store(self, qid: str, data: bytes) -> Path:
        """Write the message durably and return its path. Blocking: call from a worker thread."""
        path = self.path(qid)
        write_durably(path, data)
        return path

    def read(self, qid: str) -> bytes:
        """The queued message; raises :class:`SpoolFileMissing` when its file is gone."""
        path = self.path(qid)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise SpoolFileMissing(qid, path) from None

    def read_head(self, qid: str, limit: int) -> bytes:
        """The first ``limit`` bytes of the queued message (its header section, usually);
        raises :class:`SpoolFileMissing` when its file is gone."""
        path = self.path(qid)
        try:
            with path.open("rb") as f:
                return f.read(limit)
        except FileNotFoundError:
            raise SpoolFileMissing(qid, path) from None

    def archive(self, qid: str) -> None:
        """Move a finished message to the archive, durably (rename + fsync of both dirs)."""
        source = self.path(qid)
        if source.exists():
            os.replace(source, self.archived(qid))
            fsync_dir(self.archive_dir)
            fsync_dir(self.queue_dir)

    def archived(self, qid: str) -> Path:
        return self.archive_dir / f"{qid}.eml"

    def read_any(self, qid: str) -> bytes:
        """The message from the queue, or from the archive once it has left the queue;
        raises :class:`SpoolFileMissing` (naming the archive) when it is in neither."""
        try:
            return self.path(qid).read_bytes()
        except FileNotFoundError:
            pass
        archived = self.archived(qid)
        try:
            return archived.read_bytes()
        except FileNotFoundError:
            raise SpoolFileMissing(qid, archived) from None

    def remove(self, qid: str) -> None:
        self.path(qid).unlink(missing_ok=True)

    def queued_ids(self) -> set[str]:
        return {p.stem for p in self.queue_dir.glob("*.eml")}

    def clean_temporaries(self) -> None:
        for tmp in self.queue_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
