"""``certifica status``: the gateway's processes and what each is doing.

It reads ``<state>/run/master.pid`` and the status files the processes write
(``run/status/<role>-<n>.json``, :class:`relay.process.child.StatusFile`), checks that
each pid is alive, and prints one line per process, like Postfix's ``postfix status``
with what ``ps`` would not tell::

    master       pid 100   up 3m   supervising 3 children, 0 restarts
    qmgr         pid 103   up 3m   20 jobs in flight (4 documents), 340 wake-ups
    acceptor[0]  pid 101   up 3m   12 sessions (1 in DATA), 340 accepted
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from certifier.errors import UsageError
from relay.process.child import STATUS_SUBDIR, process_name, run_dir

ORDER = {
    "master": 0,
    "qmgr": 1,
    "acceptor": 2,
    "delivery": 3,
    "certify": 4,
    "sms": 5,
    "admin": 6,
    "webhooks": 7,
}


class NotRunning(UsageError):
    """The gateway is not running; the message says how we know."""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _is_certifica(pid: int) -> bool:
    """Whether ``pid`` runs certifica (not another program that got the pid of a
    master that was killed); True where /proc cannot tell."""
    try:
        return b"certifica" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def master_pid(state_dir: Path) -> int:
    """The running master's pid; raises :class:`NotRunning`."""
    path = run_dir(state_dir) / "master.pid"
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise NotRunning(f"the gateway is not running (no {path})") from None
    except ValueError:
        raise NotRunning(f"the gateway is not running ({path} holds no pid)") from None
    if not alive(pid) or not _is_certifica(pid):
        raise NotRunning(
            f"the gateway is not running (pid {pid} in {path} has ended: it was killed)"
        )
    return pid


def processes(state_dir: Path) -> list[dict[str, Any]]:
    """The status records of the running gateway, master first; raises :class:`NotRunning`."""
    pid = master_pid(state_dir)
    records = []
    for path in (run_dir(state_dir) / STATUS_SUBDIR).glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced just now
        record["alive"] = alive(int(record.get("pid", 0)))
        records.append(record)
    if not any(r.get("role") == "master" for r in records):
        records.append({"role": "master", "index": 0, "pid": pid, "alive": True, "doing": ""})
    records.sort(key=lambda r: (ORDER.get(r.get("role", ""), 9), r.get("index", 0)))
    return records


def _uptime(started: float | None, now: float) -> str:
    if not started:
        return "-"
    seconds = max(0, int(now - started))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def lines(records: list[dict[str, Any]], now: float | None = None) -> list[str]:
    """One line per process, as ``certifica status`` prints them."""
    now = time.time() if now is None else now
    out = []
    for r in records:
        name = process_name(str(r.get("role")), int(r.get("index", 0)))
        if r.get("alive"):
            doing = r.get("doing", "")
        else:
            doing = "not running (the master is restarting it)"
        up = _uptime(r.get("started"), now)
        out.append(f"{name:<12} pid {r.get('pid', 0):<7} up {up:<6} {doing}".rstrip())
    return out
