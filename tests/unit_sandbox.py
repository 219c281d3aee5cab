"""Run a command under the seccomp filters a systemd unit asks for, without systemd.

    /usr/bin/python3 tests/unit_sandbox.py UNIT COMMAND [ARG...]

systemd turns a unit's ``SystemCallFilter=``, ``SystemCallErrorNumber=``,
``SystemCallArchitectures=native``, ``MemoryDenyWriteExecute=`` and
``RestrictAddressFamilies=`` into seccomp filters installed just before it runs
``ExecStart=`` (systemd.exec(5)). This script installs the same filters with libseccomp
(Debian ``python3-seccomp``, for the system's Python: it is not in the virtualenv), then
executes COMMAND, so a test can run the real gateway under them on a machine where
systemd is not PID 1 (a container):

* the system call allow-list: the groups and names of the unit's first
  ``SystemCallFilter=`` line, expanded by ``systemd-analyze syscall-filter`` (the same
  tables systemd uses), less those of every later ``~`` line; any other call fails
  with ``SystemCallErrorNumber=`` (EPERM), as systemd makes it;
* ``MemoryDenyWriteExecute=true`` as systemd v252 filters it: ``mmap`` asking for
  memory both writable and executable, ``mprotect``/``pkey_mprotect`` making memory
  executable, and ``shmat`` with ``SHM_EXEC`` fail with EPERM;
* ``RestrictAddressFamilies=``: ``socket()`` of any other family fails with
  EAFNOSUPPORT;
* ``NoNewPrivileges=`` (libseccomp sets it: a filter requires it).

The file-system and namespace settings (``ProtectSystem=``, ``PrivateTmp=``...) are not
emulated: they change what the gateway sees, not which calls it may make, and the state
directory a test gives it is the only place it writes.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import seccomp  # type: ignore[import-not-found]

PROT_WRITE, PROT_EXEC = 0x2, 0x4  # <sys/mman.h>
SHM_EXEC = 0o100000  # <sys/shm.h>
AF_MAX = 46  # <linux/socket.h>, Linux 6.x
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}


def service_keys(unit: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    section = ""
    with open(unit) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
            elif section == "Service":
                key, _, value = line.partition("=")
                keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def expand(names: list[str], seen: dict[str, set[str]]) -> set[str]:
    """System call names, each ``@group`` replaced by its members (recursively)."""
    calls: set[str] = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
            continue
        if name not in seen:
            listing = subprocess.run(
                ["systemd-analyze", "syscall-filter", name],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()[1:]
            members = [m.strip() for m in listing if m.strip() and not m.strip().startswith("#")]
            seen[name] = expand(members, seen)
        calls |= seen[name]
    return calls


def allowed_calls(lines: list[str]) -> set[str]:
    seen: dict[str, set[str]] = {}
    first, rest = lines[0], lines[1:]
    if first.startswith("~"):
        raise SystemExit("unit_sandbox: a deny-list first is not emulated")
    allowed = expand(first.split(), seen)
    for line in rest:
        if line.startswith("~"):
            allowed -= expand(line[1:].split(), seen)
        else:
            allowed |= expand(line.split(), seen)
    return allowed


def errno_of(keys: dict[str, list[str]]) -> int:
    name = (keys.get("SystemCallErrorNumber") or ["EPERM"])[-1]
    return int(getattr(errno, name))


def install(keys: dict[str, list[str]]) -> None:
    """Load the filters; the allow-list last, since loading a filter is a system call
    the list may not allow."""
    filters = []
    if (keys.get("MemoryDenyWriteExecute") or ["false"])[-1] in ("true", "yes", "1"):
        mdwe = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        eperm = seccomp.ERRNO(errno.EPERM)
        wx = PROT_WRITE | PROT_EXEC
        mdwe.add_rule(eperm, "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for call in ("mprotect", "pkey_mprotect"):
            mdwe.add_rule(eperm, call, seccomp.Arg(2, seccomp.MASKED_EQ, PROT_EXEC, PROT_EXEC))
        mdwe.add_rule(eperm, "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, SHM_EXEC, SHM_EXEC))
        filters.append(mdwe)
    if keys.get("RestrictAddressFamilies"):
        wanted = {FAMILIES[f] for line in keys["RestrictAddressFamilies"] for f in line.split()}
        families = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        refuse = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for family in range(AF_MAX + 1):
            if family not in wanted:
                families.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.EQ, family))
        families.add_rule(refuse, "socket", seccomp.Arg(0, seccomp.GT, AF_MAX))
        filters.append(families)
    if keys.get("SystemCallFilter"):
        calls = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno_of(keys)))
        for name in sorted(allowed_calls(keys["SystemCallFilter"])):
            try:
                calls.add_rule(seccomp.ALLOW, name)
            except (RuntimeError, ValueError):
                pass  # a call this architecture does not have (e.g. the 32-bit ones)
        filters.append(calls)
    for f in filters:
        f.load()


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        raise SystemExit("usage: unit_sandbox.py UNIT COMMAND [ARG...]")
    install(service_keys(argv[1]))
    os.execv(argv[2], argv[2:])  # noqa: S606 - the command, as systemd runs ExecStart=


if __name__ == "__main__":
    main(sys.argv)
