"""What every child of the master does first, and the status file it keeps.

A child is forked by :mod:`relay.process.master` after the heavy imports, so it
shares the master's pages; it then makes itself a process of its own (ARCHITECTURE.md
§1):

* it dies with the master (``PR_SET_PDEATHSIG``: a ``kill -9`` of the master ends the
  whole tree, as a crash of a one-process gateway would);
* it takes back the signals the master blocked, ignores SIGINT (Ctrl-C in a terminal
  signals the whole process group; the master decides the order of the stop) and
  stops on SIGTERM, which only the master sends; SIGHUP (a reload) stays blocked until
  its event loop handles it (:func:`relay.process.reload.listen_for_reload`), so a
  reload sent while the child starts is applied once it can be, never a death;
* its log lines carry its role and pid (``certifica/qmgr[1234]``, as Postfix writes
  ``postfix/qmgr[1234]``);
* it opens its own handles (SQLite, TLS contexts, signer): nothing of that kind is
  inherited, because none exists in the master when it forks.

:class:`StatusFile` is ``<state>/run/status/<role>-<n>.json``, what ``certifica
status`` (:mod:`relay.process.status`) prints: written at most once a second, and
only when what the child does has changed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
RUN_SUBDIR = "run"
STATUS_SUBDIR = "status"


def die_with_parent() -> None:
    """Have the kernel send SIGKILL to this process when its parent ends (Linux);
    if the parent is gone already, end now."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        pass  # not Linux: a child left behind ends when its socket to the queue closes
    if os.getppid() != parent:
        os._exit(0)


def become_child(role: str, index: int) -> None:
    """The first steps of a forked child (see the module docstring)."""
    die_with_parent()
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGHUP})
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    name = process_name(role, index)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ProcessTag())
    try:
        import setproctitle  # type: ignore[import-not-found]

        setproctitle.setproctitle(f"certifica: {name}")
    except ImportError:
        pass


SINGLE = ("master", "qmgr", "admin", "webhooks")
"""The roles with one process, named without an index."""


def process_name(role: str, index: int) -> str:
    """``qmgr`` (one of its kind) or ``acceptor[2]``."""
    return role if role in SINGLE else f"{role}[{index}]"


class _ProcessTag(logging.Filter):
    """``certifica/smtp`` becomes ``certifica/smtp[1234]`` in this process's lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.endswith("]"):
            record.name = f"{record.name}[{record.process}]"
        return True


def run_dir(state_dir: Path) -> Path:
    return state_dir / RUN_SUBDIR


class StatusFile:
    """``run/status/<role>-<n>.json``: this child's pid, start and what it is doing."""

    def __init__(self, state_dir: Path, role: str, index: int, every: float = 1.0) -> None:
        self.path = run_dir(state_dir) / STATUS_SUBDIR / f"{role}-{index}.json"
        self.base = {"role": role, "index": index, "pid": os.getpid(), "started": time.time()}
        self.every = every
        self._last: dict[str, Any] | None = None
        self._written = 0.0

    def update(self, doing: str, counters: dict[str, int]) -> None:
        """Write the file if ``doing`` or the counters changed and a second has passed."""
        now = time.monotonic()
        state = {"doing": doing, **counters}
        if state == self._last or now - self._written < self.every:
            return
        self.write(state)

    def write(self, state: dict[str, Any]) -> None:
        self._last, self._written = state, time.monotonic()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps({**self.base, **state}))
            os.replace(tmp, self.path)
        except OSError as err:  # the status is for the operator; the mail goes on
            logging.getLogger("certifica/master").warning(
                "cannot write %s: %s", self.path, err.strerror or err
            )


async def report_status(
    status: StatusFile, describe: Callable[[], tuple[str, dict[str, int]]]
) -> None:
    """Keep ``status`` up to date every second until cancelled."""
    while True:
        doing, counters = describe()
        status.update(doing, counters)
        await asyncio.sleep(status.every)


def child_exit(code: int) -> None:
    """Leave the child without running the master's atexit handlers or flushing its
    copies of the master's buffers twice."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
