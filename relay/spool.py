"""The spool: one file per queued message, written so that a 250 never outlives a crash.

A message is written to ``tmp/<qid>``, fsynced, renamed into ``queue/<qid>.eml`` and
the directory fsynced (POSIX rename durability), before the database row that makes
it owned by the queue is committed. A file in ``queue/`` with no row is the trace of a
transaction that was never answered 250; :meth:`Spool.orphans` finds those at start.

Exceptions::

    OSError            -- propagated; ENOSPC/EDQUOT mean "out of storage" (see is_disk_full)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file, fsync, rename, fsync directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


class Spool:
    """Message files under ``<state_dir>/spool``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.queue_dir = root / "queue"
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
        return self.path(qid).read_bytes()

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
        """The message from the queue, or from the archive once it has left the queue."""
        try:
            return self.path(qid).read_bytes()
        except FileNotFoundError:
            return self.archived(qid).read_bytes()

    def remove(self, qid: str) -> None:
        self.path(qid).unlink(missing_ok=True)

    def queued_ids(self) -> set[str]:
        return {p.stem for p in self.queue_dir.glob("*.eml")}

    def clean_temporaries(self) -> None:
        for tmp in self.queue_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
