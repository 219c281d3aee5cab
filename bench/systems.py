"""The processes the benchmark runs and measures: sinks, a Postfix instance, the gateway.

Each class starts its process(es) in their own session (process group) and ``stop()``
ends them, escalating from the polite way (``postfix stop``, SIGTERM) to SIGKILL of the
whole group; ``stop()`` never raises, so it is safe in ``finally``.

A system under test is a whole tree of processes (Postfix's master and its daemons; the
gateway's master and the children it forks, see ARCHITECTURE.md; today's gateway, one
process and its certificate workers). :class:`ProcessTree` finds every process of one
system and measures its CPU time, whatever the processes come and go; :class:`Sampler`
records the peak memory of the trees and the CPU of each process. No psutil: cgroup
files and ``/proc``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"


class BenchError(Exception):
    """A part of the benchmark could not start or did not finish in time."""


def free_port() -> int:
    """A port nobody listens on now (for programs that cannot bind port 0 themselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not within {timeout:.0f} s")
        time.sleep(step)


def kill_group(proc: subprocess.Popen[bytes] | None, term_wait: float = 10.0) -> None:
    """SIGTERM the leader (it stops its own children), then SIGKILL what is left of the group."""
    if proc is None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(term_wait)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


# -- /proc ---------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def _all_stats() -> dict[int, list[str]]:
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                stats[int(entry.name)] = fields
    return stats


def _tree(root: int, stats: dict[int, list[str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)
    tree, todo = [], [root] if root in stats else []
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants that are alive now (zombies included)."""
    return _tree(root, _all_stats())


def tree_cpu_seconds(root: int) -> float:
    """User + system time of ``root``'s tree: of every live process and of every child
    that any of them has reaped.

    The kernel adds a reaped child's utime + stime and its own cutime + cstime to the
    parent's cutime + cstime (getrusage(2), RUSAGE_CHILDREN), so a process that ended is
    still counted, exactly, in the parent that waited for it, and in the grandparent
    after that. One scan of /proc is not atomic: a reap between reading the child and
    the parent would count the child twice or not at all, so the scan is repeated until
    two in a row see the same processes.
    """
    previous: frozenset[int] | None = None
    for _ in range(5):
        stats = _all_stats()
        tree = _tree(root, stats)
        # utime stime cutime cstime are fields 14-17 of proc_pid_stat(5).
        ticks = sum(int(x) for pid in tree for x in stats[pid][11:15])
        if frozenset(tree) == previous:
            break
        previous = frozenset(tree)
    return ticks / CLK_TCK


def own_cpu_seconds(pid: int) -> float | None:
    """CPU time of one process so far.

    Two sources, each short in its own way: utime + stime from ``stat`` count every
    thread, also those that ended, but in whole clock ticks (10 ms), which loses most
    of what a process does when a row gives it a few ms (Postfix's twenty smtpd); the
    first field of each thread's ``schedstat`` is exact (ns) but exists only for live
    threads. The larger of the two.
    """
    fields = _stat(pid)
    if not fields:
        return None
    ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
    exact = 0
    try:
        for task in os.scandir(f"/proc/{pid}/task"):
            try:
                exact += int(Path(task.path, "schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return max(ticks, exact / 1e9)


def _cgroup2_mount() -> Path | None:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


def _own_cgroup2() -> str | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return None


_JOIN = 'echo $$ > "$0" && exec "$@"'  # sh: move into the cgroup, then become the command
USE_CGROUP = True  # bench/run.py --cpu-from proc: measure from /proc even where a cgroup works


class ProcessTree:
    """Every process of one system under test, and the CPU time they all spent.

    The CPU time must cover the whole tree, children that ended included: the gateway
    forks acceptors, a queue manager, delivery agents and certificate workers
    (ARCHITECTURE.md), and Postfix's master forks daemons that exit when idle. Two ways,
    the first one that works on this machine:

    * **cgroup v2** (when the benchmark may create one: root, cgroup2 mounted). The
      system is started inside its own cgroup (``command()`` wraps it in a shell that
      joins the cgroup and then execs), and every process it ever forks stays in it.
      The kernel charges each task's CPU time to its cgroup as it runs, so
      ``cpu.stat``'s ``usage_usec`` counts every process, alive, ended, reaped by
      whoever, or re-parented: nothing escapes, nothing is counted twice.
      ``cgroup.procs`` lists the processes for the memory samples.
    * **/proc** otherwise: the descendants of the root pid (``root()``), with
      :func:`tree_cpu_seconds` (live processes plus what they reaped). Exact as long as
      every process is reaped by its parent inside the tree; a process whose parent
      ended before it is re-parented out of the tree and its time is lost from then on.

    Not ``getrusage(RUSAGE_CHILDREN)`` of the benchmark: it counts only children the
    benchmark has waited for (the gateway once it has stopped, never during a row), it
    would mix in the benchmark's other children (clients, sinks), and Postfix is not
    the benchmark's child (``postfix start`` daemonizes). Not the last value seen per
    pid either: it loses what a process spends after its last sample and misses
    processes that live less than one sampling interval.
    """

    def __init__(self, name: str, root: Callable[[], int | None]) -> None:
        self.name = name
        self.root = root
        self.cgroup = self._make_cgroup(name)
        self.method = "cgroup v2" if self.cgroup is not None else "/proc tree"

    @staticmethod
    def _make_cgroup(name: str) -> Path | None:
        mount, own = _cgroup2_mount(), _own_cgroup2()
        if not USE_CGROUP or mount is None or own is None:
            return None
        path = mount / own.lstrip("/") / f"certifica-bench-{os.getpid()}-{name}"
        try:
            path.mkdir(exist_ok=True)
            # Try it: some hosts let us create a cgroup but not move into it.
            joined = subprocess.run(
                ["sh", "-c", _JOIN, str(path / "cgroup.procs"), "true"],
                capture_output=True,
                timeout=10,
            )
            if joined.returncode == 0 and (path / "cpu.stat").read_text():
                return path
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            path.rmdir()
        except OSError:
            pass
        return None

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` so that it runs inside this tree's cgroup (unchanged without one)."""
        if self.cgroup is None:
            return argv
        return ["sh", "-c", _JOIN, str(self.cgroup / "cgroup.procs"), *argv]

    def pids(self) -> list[int]:
        if self.cgroup is not None:
            try:
                return [int(x) for x in (self.cgroup / "cgroup.procs").read_text().split()]
            except (OSError, ValueError):
                return []
        root = self.root()
        return process_tree(root) if root is not None else []

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the whole tree so far; use differences."""
        if self.cgroup is not None:
            for line in (self.cgroup / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
            return 0.0
        root = self.root()
        return tree_cpu_seconds(root) if root is not None else 0.0

    def close(self) -> None:
        """Remove the cgroup (once every process in it has ended)."""
        if self.cgroup is None:
            return
        try:
            wait_until(lambda: not self.pids(), 10, f"{self.name}: processes ending")
            self.cgroup.rmdir()
        except (OSError, BenchError) as err:
            print(f"bench: could not remove {self.cgroup}: {err}", file=sys.stderr)


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: shared pages split between the processes sharing them, so
    a sum over many processes of one program (Postfix's daemons) is not inflated."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


class Sampler:
    """Samples the process trees in a thread: the peak RSS and PSS of each tree, and the
    CPU time and name of each process in it.

    Memory is a sum over the whole tree at one moment, sampled every ``interval``
    seconds. The CPU time per process is the last value seen for each pid: it serves
    only to split the exact total of :meth:`ProcessTree.cpu_seconds` by process (what
    a process spends after its last sample is missing from the split, not the total).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.trees: dict[str, tuple[ProcessTree, Callable[[int], str]]] = {}
        self.peaks: dict[str, tuple[int, int, int]] = {}
        self.cpu: dict[str, dict[int, tuple[str, float]]] = {}  # tree -> pid -> (name, s)
        self._lock = threading.Lock()
        # One sample at a time: a sample that read older values must not write them
        # over a newer one's (the thread's and a row's own samples would interleave).
        self._sampling = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watch(self, name: str, tree: ProcessTree, label: Callable[[int], str]) -> None:
        """Sample ``tree``; ``label(pid)`` names a process of it (``acceptor[0]``...)."""
        with self._lock:
            self.trees[name] = (tree, label)
            self.cpu.setdefault(name, {})

    def start(self) -> None:
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.peaks.clear()
        self.sample()

    def peak(self, name: str) -> tuple[int, int, int]:
        """Peak RSS and PSS of the tree, and RSS of the root alone, in bytes, since the
        last reset."""
        self.sample()
        with self._lock:
            return self.peaks.get(name, (0, 0, 0))

    def cpu_by_process(self, name: str) -> dict[int, tuple[str, float]]:
        """pid -> (name, CPU seconds at the last sample), for every process seen."""
        self.sample()
        with self._lock:
            return dict(self.cpu.get(name, {}))

    def sample(self) -> None:
        with self._sampling:
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            trees = dict(self.trees)
        for name, (tree, label) in trees.items():
            pids = tree.pids()
            if not pids:
                continue
            root = tree.root()
            rss, pss = rss_bytes(pids), pss_bytes(pids)
            own = rss_bytes([root]) if root is not None else 0
            seen = {}
            for pid in pids:
                cpu = own_cpu_seconds(pid)
                if cpu is not None:
                    seen[pid] = (label(pid), cpu)
            with self._lock:
                old = self.peaks.get(name, (0, 0, 0))
                self.peaks[name] = (max(old[0], rss), max(old[1], pss), max(old[2], own))
                self.cpu[name].update(seen)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def comm(pid: int) -> str:
    """The process's command name (Postfix's daemons: smtpd, cleanup, qmgr, smtp...)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""


# -- sinks ---------------------------------------------------------------------------
class SmtpSink:
    """Postfix's smtp-sink as the recipients' MX; counts messages from its ``-c`` output."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        self.updates: list[tuple[float, int]] = []  # (time, count) at each change
        self._lock = threading.Lock()

    def start(self) -> None:
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        # -c: counters on stdout; backlog 1024: never the limit with 100 sessions.
        self.proc = subprocess.Popen(
            [SMTP_SINK, *user, "-c", "-m", "512", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "smtp-sink.err", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_until(self._listening, 10, "smtp-sink listening")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            err = (self.workdir / "smtp-sink.err").read_text(errors="replace")
            raise BenchError(f"smtp-sink exited: {err.strip()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        pattern = re.compile(rb"mesg=(\d+)")
        tail = b""
        stream = self.proc.stdout
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            now = time.time()
            records = (tail + chunk).split(b"\r")
            tail = records.pop()
            for rec in reversed(records):
                m = pattern.search(rec)
                if m:
                    value = int(m.group(1))
                    with self._lock:
                        if value != self.count:
                            self.count = value
                            self.updates.append((now, value))
                    break

    def reached(self, n: int) -> float | None:
        """When the counter first reached ``n``, or None."""
        with self._lock:
            for t, value in self.updates:
                if value >= n:
                    return t
        return None

    def stop(self) -> None:
        kill_group(self.proc, 5)


class RecordingSink:
    """bench/mailsink.py in its own process: records every notice and certificate."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.records: list[tuple[float, str, str, int]] = []  # time, kind, qid, size
        self._lock = threading.Lock()
        self._ready = threading.Event()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "mailsink.py"), "0"],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "mailsink.err", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(15):
            raise BenchError("the recording sink did not start")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.decode("ascii", "replace").split()
            if parts[:1] == ["listening"]:
                self.port = int(parts[1])
                self._ready.set()
            elif len(parts) == 4:
                with self._lock:
                    self.records.append((float(parts[0]), parts[1], parts[2], int(parts[3])))

    def mark(self) -> int:
        with self._lock:
            return len(self.records)

    def since(self, mark: int, kind: str) -> list[tuple[float, str, str, int]]:
        with self._lock:
            return [r for r in self.records[mark:] if r[1] == kind]

    def stop(self) -> None:
        kill_group(self.proc, 5)


# -- Postfix -------------------------------------------------------------------------
class Postfix:
    """A Postfix instance relaying everything to the sink, in its own directories."""

    def __init__(self, workdir: Path, sink_port: int, tls_cert: Path, tls_key: Path) -> None:
        self.dir = workdir / "postfix"
        self.config = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        self.log = self.dir / "maillog"
        self.sink_port = sink_port
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.plain_port = free_port()
        self.tls_port = free_port()
        self.started = False
        self.tree = ProcessTree("postfix", self.master_pid)

    def start(self) -> None:
        for d in (self.dir, self.config, self.queue):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)  # the daemons run as the postfix user and must get through
        self.data.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, "postfix", "postfix")
        self.data.chmod(0o700)
        fields = {
            "QUEUE_DIR": str(self.queue),
            "DATA_DIR": str(self.data),
            "LOG_FILE": str(self.log),
            "LOG_PREFIX": str(self.dir),
            "SINK_PORT": str(self.sink_port),
            "TLS_CERT": str(self.tls_cert),
            "TLS_KEY": str(self.tls_key),
            "PLAIN_PORT": str(self.plain_port),
            "TLS_PORT": str(self.tls_port),
        }
        for name in ("main.cf", "master.cf"):
            text = (BENCH / "postfix" / f"{name}.in").read_text()
            for key, value in fields.items():
                text = text.replace(f"@{key}@", value)
            (self.config / name).write_text(text)
        result = subprocess.run(
            self.tree.command([POSTFIX, "-c", str(self.config), "start"]),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise BenchError(f"postfix start failed: {result.stderr.strip()} {self._log_tail()}")
        self.started = True
        for port in (self.plain_port, self.tls_port):
            wait_until(partial(_accepts, port), 30, f"postfix smtpd on port {port}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return ""

    def label(self, pid: int) -> str:
        """A Postfix process by its daemon's name (smtpd, cleanup, qmgr, smtp, ...)."""
        return comm(pid)

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queue_empty(self) -> bool:
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.queue / sub):
                if files:
                    return False
        return True

    def stop(self) -> None:
        if not (self.config / "main.cf").exists():
            return  # never started
        pid = self.master_pid()
        try:
            subprocess.run(
                [POSTFIX, "-c", str(self.config), "stop"], capture_output=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            pass
        if pid is not None:
            try:
                wait_until(lambda: not Path(f"/proc/{pid}").exists(), 10, "postfix stop")
            except BenchError:
                for p in process_tree(pid):
                    try:
                        os.kill(p, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.started = False
        self.tree.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- the gateway ---------------------------------------------------------------------
CERTIFICA = ROOT / ".venv" / "bin" / "certifica"
USER = "alice@example.com"
PASSWORD = "benchmark password"
CERT_ADDRESS = "certifica@certifica.localhost"


class Gateway:
    """``certifica serve`` with a temporary state directory, routed to the two sinks."""

    def __init__(self, workdir: Path, sink_port: int, sender_port: int) -> None:
        self.dir = workdir / "gateway"
        self.config = self.dir / "config.toml"
        self.state = self.dir / "state"
        self.sink_port = sink_port
        self.sender_port = sender_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self.tree = ProcessTree("gateway", self.pid)

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # Defaults everywhere else (the shipped config.toml's values): delivery
        # concurrency 20, one certificate worker per core, INFO logging.
        self.config.write_text(
            f"""
[gateway]
state_dir = "state"
[listen]
submission = "127.0.0.1:0"
submission_tls = ""
mx = ""
admin = "127.0.0.1:0"
[sink]
listen = ""
[delivery.routes]
"example.com" = "127.0.0.1:{self.sender_port}"
"*" = "127.0.0.1:{self.sink_port}"
"""
        )

    def add_user(self) -> None:
        result = subprocess.run(
            [str(CERTIFICA), "-c", str(self.config), "users", "add", USER, "--password-stdin"],
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise BenchError(f"certifica users add failed: {result.stderr.strip()}")

    def start(self, timeout: float = 120.0) -> None:
        listen = self.state / "listen.json"
        listen.unlink(missing_ok=True)
        self.starts += 1
        self.log = self.dir / f"gateway-{self.starts}.log"
        self.proc = subprocess.Popen(
            self.tree.command([str(CERTIFICA), "-c", str(self.config), "serve"]),
            stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BenchError(f"gateway exited: {self.log.read_text(errors='replace')[-2000:]}")
            return listen.exists()

        wait_until(ready, timeout, "gateway ready")
        self.port = int(json.loads(listen.read_text())["submission"].rsplit(":", 1)[1])

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def label(self, pid: int) -> str:
        """A gateway process by its role: from the status file each child of the
        multi-process gateway writes (``<state>/run/status/<role>-<n>.json``: role,
        index, pid), else from its command line (a certificate worker started by
        multiprocessing, or a title set with setproctitle), else "master" or "main
        process" for the process the benchmark started."""
        for status in (self.state / "run" / "status").glob("*.json"):
            try:
                info = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and info.get("pid") == pid:
                index = info.get("index")
                return f"{info.get('role', '?')}" + (f"[{index}]" if index is not None else "")
        if pid == self.pid():
            return "master" if (self.state / "run" / "status").is_dir() else "main process"
        line = cmdline(pid)
        if "multiprocessing.resource_tracker" in line:
            return "resource tracker"
        if "multiprocessing" in line:
            return "certificate worker"
        root = self.pid()
        if line and root is not None and line != cmdline(root):
            return line[:40]
        return comm(pid)

    def active_messages(self) -> int | None:
        """Messages not yet done, from the gateway's database (read-only)."""
        try:
            conn = sqlite3.connect(f"file:{self.state / 'queue.db'}?mode=ro", uri=True, timeout=2)
            try:
                row = conn.execute(
                    "SELECT count(*) FROM messages WHERE state = 'active'"
                ).fetchone()
                return int(row[0])
            finally:
                conn.close()
        except sqlite3.Error:
            return None

    def log_count(self, needle: str) -> int:
        try:
            return self.log.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (the gateway stops accepting and gives in-flight work 10 s), SIGKILL
        after ``grace`` seconds."""
        kill_group(self.proc, grace)
        self.proc = None

    def close(self) -> None:
        self.tree.close()
