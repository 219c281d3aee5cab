"""The archive of issued PDFs (``[evidence] archive_dir``, README "Renewal" and
"Retention") and its lock.

Three things change the files of the archive, from the gateway or from ``certifica``
commands, in processes of their own: a renewal replaces a file
(:func:`relay.certify.renewal.publish`), retention (:mod:`relay.queue.retention`) and
an erasure (:mod:`relay.queue.erasure`) delete files; and a legal hold
(:mod:`relay.queue.holds`) forbids deleting them. Each decides and acts on the files
while holding the archive lock:

- a renewal checks that the file is still there, unchanged, and replaces it, under the
  lock: a file that retention or an erasure deleted is never put back;
- retention and an erasure read the legal holds again under the lock, right before
  deleting, and placing a hold (``certifica evidence legal-hold``) takes the lock: a
  hold comes either before a deletion (its files stay) or after it (they were gone
  before the hold was placed), never in between.

The lock is an exclusive ``flock`` on ``<archive>/.archive.lock``, held for short moments
(one file replaced, one batch deleted, one hold placed). A taker waits for it up to
``timeout`` seconds, then :class:`ArchiveBusy`. It is not the renewal pass's own lock
(``.renew.lock``, :func:`relay.certify.renewal.renewal_lock`), which is held for a whole
pass and never waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from certifier.errors import TemporaryError

__all__ = ["LOCK_NAME", "ArchiveBusy", "archive_lock"]

LOCK_NAME = ".archive.lock"
TIMEOUT = 30.0
"""Seconds to wait for the archive lock: far longer than anyone holds it."""


class ArchiveBusy(TemporaryError):
    """The archive lock was not free within the time allowed."""


@contextlib.contextmanager
def archive_lock(archive: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the archive's lock (created with the archive if need be), waiting for it up
    to ``timeout`` seconds (default :data:`TIMEOUT`), else :class:`ArchiveBusy`.
    Blocking: not on an event loop."""
    timeout = TIMEOUT if timeout is None else timeout
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(archive / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # flock has no timeout of its own: try again, less and less often.
                if time.monotonic() >= deadline:
                    raise ArchiveBusy(f"the archive {archive} stayed locked") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
