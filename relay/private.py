"""The gateway's files are private whatever the umask it was started with.

Everything under the state directory (the database and its ``-wal``/``-shm``, the
spool, keys, certificates, the development mailbox) is mail or key material: files
are 0600 in directories 0700, owned by the user the gateway runs as. Two things make
it so, not the operator's umask:

* :func:`restrict_umask` at the start of every ``certifica`` command: whatever is
  created afterwards (SQLite's files, ``mkdir`` with parents, files written by
  libraries) is private. SQLite creates ``-wal`` and ``-shm`` with the mode of the
  database file, so a 0600 database gives 0600 companions.
* :func:`secure_state_dir` when a command opens the state directory: the directories
  and database files that already exist are made private again, and each one that was
  open to other users is reported, naming the path, so the operator learns that its
  content may have been read.

Exceptions::

    OSError -- propagated (a state directory the user cannot change is the caller's
               to report)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600

STATE_SUBDIRS = ("keys", "keys/dkim", "spool", "spool/queue", "spool/archive", "certificates")
"""Directories of the state directory that are made private again at start."""
DATABASE_FILES = ("queue.db", "queue.db-wal", "queue.db-shm")


def restrict_umask() -> int:
    """Make everything created from now on private; returns the umask it replaced."""
    return os.umask(PRIVATE_UMASK)


def _restrict(path: Path, mode: int) -> str | None:
    """chmod ``path`` to ``mode`` if group or others have any access; says what it did."""
    try:
        current = stat.S_IMODE(path.lstat().st_mode)
    except FileNotFoundError:
        return None
    if path.is_symlink() or not current & 0o077:
        return None
    # Through a descriptor opened without following links: a link put in its place
    # since the look above is refused (ELOOP), never followed to another file.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return f"{path} was open to other users (mode {current:04o}); made it {mode:04o}"


def secure_state_dir(root: Path) -> list[str]:
    """Create ``root`` (0700) if needed and make its directories and database files
    private; one sentence per path that was open to other users."""
    root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    found = [_restrict(root, DIR_MODE)]
    found += [_restrict(root / sub, DIR_MODE) for sub in STATE_SUBDIRS]
    found += [_restrict(root / name, FILE_MODE) for name in DATABASE_FILES]
    return [f for f in found if f]


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist yet (so that a library
    that creates it, SQLite, cannot give it another mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
    os.close(fd)
