"""Certifica against Postfix, side by side, on this machine: ``make bench [QUICK=1]``.

One run starts three things on 127.0.0.1 and measures them in alternation:

* Postfix's ``smtp-sink`` as the recipients' MX (it counts what it gets; ``-c``);
* a Postfix instance configured as a plain relay to it (bench/postfix/*.in, its own
  directories in a temporary directory, no chroot, its own log file);
* the gateway (``certifica serve``, temporary state, shipped defaults), routing the
  recipients' domain to smtp-sink and the sender's domain (where its notices and
  certificates go) to bench/mailsink.py, which records arrival time and queue id.

Clients: ``smtp-source`` (plain SMTP; it cannot do TLS or AUTH) for Postfix, and
bench/loadgen.py (aiosmtplib, one connection per session reused like ``smtp-source
-d``) for both: STARTTLS for Postfix, STARTTLS + AUTH PLAIN for the gateway (its
submission port requires both). It prints one table, checks the budget lines and
writes every figure to bench/results/latest.json. Nothing here asserts on time: it only
reports.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

import loadgen  # noqa: E402 - bench/ is the script's directory
from systems import (  # noqa: E402
    CERT_ADDRESS,
    PASSWORD,
    SMTP_SOURCE,
    USER,
    BenchError,
    Gateway,
    Postfix,
    RecordingSink,
    Sampler,
    SmtpSink,
    cpu_seconds,
    machine_cpu,
    process_tree,
)

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    name: str
    sizes: tuple[int, ...]
    rounds: int
    sessions: int
    count: dict[str, dict[int, int]]  # row -> size -> messages
    paced_rate: float
    paced_seconds: float
    memory_sessions: int
    memory_backlog: int
    memory_seconds: float
    client_deadline: float  # seconds a client may spend sending one row
    drain_deadline: float  # seconds to wait for deliveries and certificates after that


ROWS = {
    "postfix-smtp-source": ("Postfix relay", "smtp-source, plain SMTP"),
    "postfix-loadgen": ("Postfix relay", "loadgen, STARTTLS"),
    "gateway-plain": ("gateway, plain relay", "loadgen, STARTTLS+AUTH"),
    "gateway-certified": ("gateway, certifying", "loadgen, STARTTLS+AUTH"),
}
REFERENCE = "postfix-loadgen"  # same client and TLS as the gateway rows: the ratios' base

FULL = Plan(
    name="full",
    sizes=(4 * KB, 100 * KB),
    rounds=2,
    sessions=20,
    count={
        "postfix-smtp-source": {4 * KB: 3000, 100 * KB: 1500},
        "postfix-loadgen": {4 * KB: 3000, 100 * KB: 1500},
        "gateway-plain": {4 * KB: 2000, 100 * KB: 1000},
        "gateway-certified": {4 * KB: 600, 100 * KB: 300},
    },
    paced_rate=10.0,
    paced_seconds=30.0,
    memory_sessions=100,
    memory_backlog=100_000,
    memory_seconds=30.0,
    client_deadline=120.0,
    drain_deadline=240.0,
)
QUICK = Plan(
    name="quick",
    sizes=(4 * KB, 100 * KB),
    rounds=1,
    sessions=20,
    count={
        "postfix-smtp-source": {4 * KB: 300, 100 * KB: 150},
        "postfix-loadgen": {4 * KB: 300, 100 * KB: 150},
        "gateway-plain": {4 * KB: 200, 100 * KB: 100},
        "gateway-certified": {4 * KB: 40, 100 * KB: 20},
    },
    paced_rate=10.0,
    paced_seconds=5.0,
    memory_sessions=100,
    memory_backlog=1_000,
    memory_seconds=3.0,
    client_deadline=20.0,
    drain_deadline=30.0,
)


def size_label(size: int) -> str:
    return f"{size // KB} KB"


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Bench:
    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        profile: bool = False,
        only: tuple[str, ...] = (),
        backlog: str = "fresh",
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self.profile = profile
        self.only = only
        self.backlog = backlog
        self.sink = SmtpSink(workdir)
        self.recorder = RecordingSink(workdir)
        self.gateway: Gateway | None = None
        self.postfix: Postfix | None = None
        self.sampler = Sampler()
        self.runs: list[dict[str, Any]] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.message_files: dict[int, Path] = {}
        self.began = time.monotonic()

    # -- setup ---------------------------------------------------------------------
    def start(self) -> None:
        self.sink.start()
        self.recorder.start()
        gw = self.gateway = Gateway(self.workdir, self.sink.port, self.recorder.port)
        gw.write_config()
        gw.add_user()
        gw.start()
        keys = gw.state / "keys"
        # Postfix offers STARTTLS with the gateway's own development certificate: same
        # key type and size, so the TLS work is the same on both sides.
        self.postfix = Postfix(self.workdir, self.sink.port, keys / "tls.pem", keys / "tls.key")
        self.postfix.start()
        self.sampler.watch("gateway", gw.pid)
        self.sampler.watch("postfix", self.postfix.master_pid)
        self.sampler.start()
        for size in self.plan.sizes:
            path = self.workdir / f"message-{size}.txt"
            path.write_bytes(loadgen.message(size, 0, newline=b"\n"))  # smtp-source adds CR
            self.message_files[size] = path

    def stop(self) -> None:
        self.sampler.stop()
        for part in (self.gateway, self.postfix, self.recorder, self.sink):
            if part is not None:
                try:
                    part.stop()
                except Exception as err:  # keep stopping the others
                    print(f"bench: could not stop {type(part).__name__}: {err}", file=sys.stderr)

    # -- clients -------------------------------------------------------------------
    def smtp_source(self, size: int, count: int) -> dict[str, Any]:
        assert self.postfix is not None
        start = time.time()
        result = subprocess.run(
            [
                SMTP_SOURCE,
                "-s", str(self.plan.sessions),
                "-m", str(count),
                "-d",
                "-f", loadgen.SENDER,
                "-t", loadgen.RECIPIENT,
                "-F", str(self.message_files[size]),
                f"127.0.0.1:{self.postfix.plain_port}",
            ],
            capture_output=True,
            text=True,
            timeout=self.plan.client_deadline + 30,
        )  # fmt: skip
        end = time.time()
        errors = {result.stderr.strip()[:200]: 1} if result.returncode != 0 else {}
        return {"start": start, "end": end, "accepted": count if not errors else 0, "sent": [],
                "errors": errors}  # fmt: skip

    def loadgen(
        self,
        port: int,
        size: int,
        count: int,
        sessions: int,
        *,
        auth: bool,
        certify: bool = False,
        rate: float = 0.0,
        deadline: float | None = None,
        ready: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Run bench/loadgen.py; ``ready`` is called once its sessions are logged in,
        just before it starts sending."""
        assert self.gateway is not None
        deadline = deadline or self.plan.client_deadline
        args = [
            sys.executable, str(BENCH / "loadgen.py"),
            "--port", str(port),
            "--sessions", str(sessions),
            "--count", str(count),
            "--size", str(size),
            "--tls", str(self.gateway.state / "keys" / "ca.pem"),
            "--deadline", str(deadline),
            "--rate", str(rate),
            "--wait-go",
        ]  # fmt: skip
        if auth:
            args += ["--user", USER]
        if certify:
            args += ["--certify", CERT_ADDRESS]
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            return self._drive(proc, sessions, deadline, ready)
        finally:
            if proc.poll() is None:  # an error or an interrupt on our side
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def _drive(
        self,
        proc: subprocess.Popen[bytes],
        sessions: int,
        deadline: float,
        ready: Callable[[], None] | None,
    ) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(PASSWORD.encode() + b"\n")
            proc.stdin.flush()
            # Logins first (bounded by the client's own timeouts), then the signal to go.
            ready_line = b""
            if select.select([proc.stdout], [], [], 120 + sessions)[0]:
                ready_line = proc.stdout.readline()
            if not ready_line.startswith(b"ready"):
                raise BenchError("the load generator did not get its sessions ready")
            if ready is not None:
                ready()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            out, err = proc.communicate(timeout=deadline + 90)
        except (subprocess.TimeoutExpired, BenchError, OSError) as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            raise BenchError(
                f"the load generator failed ({exc}): {err.decode(errors='replace')[-500:]}"
            ) from None
        if proc.returncode != 0:
            raise BenchError(f"the load generator failed: {err.decode(errors='replace')[-1000:]}")
        data: dict[str, Any] = json.loads(out)
        data["accepted"] = len(data["sent"])
        return data

    # -- one measured row ----------------------------------------------------------
    def phase(
        self,
        row: str,
        size: int,
        count: int,
        *,
        sessions: int | None = None,
        rate: float = 0.0,
        kind: str = "throughput",
    ) -> dict[str, Any]:
        gw, pf = self.gateway, self.postfix
        assert gw is not None and pf is not None
        sessions = sessions or self.plan.sessions
        system = "postfix" if row.startswith("postfix") else "gateway"
        root = pf.master_pid() if system == "postfix" else gw.pid()
        assert root is not None, f"{system} is not running"
        certified = row == "gateway-certified"
        # Taken when the client's sessions are up, just before the first message.
        snap: dict[str, Any] = {}

        def ready() -> None:
            snap["sink"] = self.sink.count
            snap["mark"] = self.recorder.mark()
            snap["cpu"] = cpu_seconds(process_tree(root))
            snap["machine"] = machine_cpu()
            self.sampler.reset()
            snap["spy"] = self.start_profile(row, size, rate) if system == "gateway" else None

        if row == "postfix-smtp-source":
            ready()
            client = self.smtp_source(size, count)
        elif row == "postfix-loadgen":
            client = self.loadgen(pf.tls_port, size, count, sessions, auth=False, ready=ready)
        else:
            client = self.loadgen(
                gw.port, size, count, sessions, auth=True, certify=certified, rate=rate, ready=ready
            )
        sink0, mark, cpu0, spy = snap["sink"], snap["mark"], snap["cpu"], snap["spy"]
        busy0, total0 = snap["machine"]
        accepted = client["accepted"]
        t0 = client["start"]

        def drained() -> bool:
            if self.sink.count < sink0 + accepted:
                return False
            if certified and len(self.recorder.since(mark, "certificate")) < accepted:
                return False
            if system == "gateway":
                return gw.active_messages() == 0
            return pf.queue_empty()

        deadline = time.monotonic() + self.plan.drain_deadline
        while not drained() and time.monotonic() < deadline:
            time.sleep(0.05)
        complete = drained()
        cpu = cpu_seconds(process_tree(root)) - cpu0
        busy1, total1 = machine_cpu()
        rss, pss, main_rss = self.sampler.peak(system)
        if spy is not None:
            self.stop_profile(spy, f"{row}-{size // KB}KB" + (f"-paced{rate:g}" if rate else ""))

        delivered = min(self.sink.count - sink0, accepted)
        t_delivered = self.sink.reached(sink0 + delivered) if delivered else None
        certs = self.recorder.since(mark, "certificate")
        arrival = {qid: t for t, _, qid, _ in certs}
        latencies = [arrival[q] - t for t, q in client["sent"] if q in arrival]
        result = {
            "row": row,
            "kind": kind,
            "system": ROWS[row][0],
            "client": ROWS[row][1],
            "size": size,
            "sessions": sessions,
            "rate_limit": rate or None,
            "messages": count,
            "accepted": accepted,
            "accepted_per_s": accepted / (client["end"] - t0) if accepted else 0.0,
            "delivered": delivered,
            "delivered_per_s": delivered / (t_delivered - t0) if t_delivered else 0.0,
            "certificates": len(certs) if certified else None,
            "certificates_per_s": (
                len(certs) / (max(t for t, *_ in certs) - t0) if certified and certs else None
            ),
            "certificates_while_accepting_per_s": (
                sum(1 for t, *_ in certs if t <= client["end"]) / (client["end"] - t0)
                if certified and accepted
                else None
            ),
            "latency_p50_s": percentile(latencies, 50) if certified else None,
            "latency_p99_s": percentile(latencies, 99) if certified else None,
            "latency_max_s": max(latencies) if latencies else None,
            "peak_rss_mb": rss / MB,
            "peak_pss_mb": pss / MB,
            "peak_main_rss_mb": main_rss / MB,
            "cpu_s": cpu,
            "machine_busy_pct": 100 * (busy1 - busy0) / max(1e-9, total1 - total0),
            "seconds": time.time() - t0,
            "session_setup_s": client.get("setup_s"),
            "cpu_ms_per_msg": 1000 * cpu / accepted if accepted else None,
            "complete": complete,
            "errors": client["errors"],
        }
        self.runs.append(result)
        note = "" if complete else "  (not drained before the deadline)"
        errs = f"  errors: {client['errors']}" if client["errors"] else ""
        print(
            f"  {time.monotonic() - self.began:5.0f}s {size_label(size):>6} {row:<20} accepted {result['accepted_per_s']:7.1f}/s"
            f"  delivered {result['delivered_per_s']:7.1f}/s"
            + (f"  certificates {result['certificates_per_s'] or 0:6.1f}/s" if certified else "")
            + f"{note}{errs}",
            flush=True,
        )
        return result

    # -- profiling (--profile) -----------------------------------------------------
    def start_profile(self, row: str, size: int, rate: float) -> subprocess.Popen[bytes] | None:
        if not self.profile or self.gateway is None or self.gateway.pid() is None:
            return None
        self._profile_out = self.workdir / f"profile-{len(self.profiles)}.txt"
        return subprocess.Popen(
            [
                str(BENCH.parent / ".venv" / "bin" / "py-spy"), "record",
                "--pid", str(self.gateway.pid()),
                "--subprocesses", "--gil", "--rate", "100", "--format", "raw", "--nonblocking",
                "-o", str(self._profile_out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def stop_profile(self, spy: subprocess.Popen[bytes], name: str) -> None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(spy.pid, signal.SIGKILL)
            return
        if self._profile_out.exists():
            results = BENCH / "results"
            results.mkdir(exist_ok=True)
            target = results / f"profile-{name}.txt"
            target.write_bytes(self._profile_out.read_bytes())
            self.profiles[name] = read_profile(target)

    # -- the special rows ----------------------------------------------------------
    def paced(self) -> dict[str, Any]:
        plan = self.plan
        count = int(plan.paced_rate * plan.paced_seconds)
        return self.phase(
            "gateway-certified", 4 * KB, count, sessions=10, rate=plan.paced_rate, kind="paced"
        )

    def memory(self) -> dict[str, Any]:
        """Peak RSS with a queue of ``memory_backlog`` messages and 100 sessions sending."""
        plan, gw = self.plan, self.gateway
        assert gw is not None
        gw.stop()
        started = time.monotonic()
        fill_queue(gw, plan.memory_backlog, 4 * KB, deferred=self.backlog == "deferred")
        fill_s = time.monotonic() - started
        self.sampler.reset()  # the peak includes the start with a full queue, and the logins
        gw.start()
        spy = self.start_profile("memory", 4 * KB, 0)
        cpu0 = cpu_seconds(process_tree(gw.pid() or 0))
        client = self.loadgen(
            gw.port,
            4 * KB,
            1_000_000,
            plan.memory_sessions,
            auth=True,
            certify=True,
            deadline=plan.memory_seconds,
        )
        cpu = cpu_seconds(process_tree(gw.pid() or 0)) - cpu0
        rss, pss, main_rss = self.sampler.peak("gateway")
        peak = rss / MB
        if spy is not None:
            self.stop_profile(spy, "memory")
        result = {
            "row": "gateway-memory",
            "kind": "memory",
            "system": "gateway, certifying",
            "client": f"loadgen, STARTTLS+AUTH, {plan.memory_sessions} sessions",
            "size": 4 * KB,
            "sessions": plan.memory_sessions,
            "backlog": plan.memory_backlog,
            "backlog_state": self.backlog,
            "backlog_fill_s": fill_s,
            "seconds": plan.memory_seconds,
            "accepted": client["accepted"],
            "accepted_per_s": client["accepted"] / max(1e-9, client["end"] - client["start"]),
            "session_setup_s": client.get("setup_s"),
            "peak_rss_mb": peak,
            "peak_pss_mb": pss / MB,
            "peak_main_rss_mb": main_rss / MB,
            "cpu_s": cpu,
            "active_at_end": gw.active_messages(),
            "errors": client["errors"],
        }
        self.runs.append(result)
        print(
            f"  memory: {plan.memory_backlog} queued + {plan.memory_sessions} sessions for "
            f"{plan.memory_seconds:g} s: peak RSS {peak:.0f} MB (main process {main_rss / MB:.0f} MB), accepted "
            f"{result['accepted_per_s']:.1f}/s"
            + (f"  errors: {client['errors']}" if client["errors"] else ""),
            flush=True,
        )
        gw.stop(grace=2)  # the backlog is thrown away: no need to let it finish
        return result

    def warm_up(self) -> None:
        """A few messages through every path first: imports, TLS, first certificate."""
        assert self.gateway is not None and self.postfix is not None
        self.loadgen(self.postfix.tls_port, 4 * KB, 20, 5, auth=False)
        self.loadgen(self.gateway.port, 4 * KB, 10, 5, auth=True, certify=True)
        deadline = time.monotonic() + 60
        while self.gateway.active_messages() != 0 and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- the whole run -------------------------------------------------------------
    def run(self) -> None:
        self.start()
        print(
            f"bench ({self.plan.name}): started in {time.monotonic() - self.began:.0f} s; warming up",
            flush=True,
        )
        self.warm_up()
        rows = [row for row in ROWS if self.wanted(row)]
        for round_no in range(1, self.plan.rounds + 1 if rows else 1):
            print(f"bench: round {round_no} of {self.plan.rounds}", flush=True)
            for size in self.plan.sizes:
                for row in rows:
                    self.phase(row, size, self.plan.count[row][size])
        if self.wanted("paced"):
            print(f"bench: certifying at {self.plan.paced_rate:g} msg/s (latency)", flush=True)
            self.paced()
        if self.wanted("memory"):
            print(
                f"bench: memory, {self.plan.memory_backlog} queued messages ({self.backlog}) "
                f"and {self.plan.memory_sessions} sessions",
                flush=True,
            )
            self.memory()

    def wanted(self, name: str) -> bool:
        return not self.only or name in self.only


def fill_queue(gw: Gateway, count: int, size: int, deferred: bool = False) -> None:
    """Put ``count`` messages in the stopped gateway's queue, as submission would have:
    spool file and database row, half of them certified, to the sink. One transaction;
    spool files unsynced (the benchmark does not need them to survive a crash).

    Fresh (default): all due now, each certified one still needing its notice, as after
    a burst of submissions. ``deferred``: as when the recipients' MX has been down for a
    while: notices sent, every recipient deferred after one attempt, next try in an hour.
    """
    from relay.queue.manager import new_certificate_id, new_queue_id
    from relay.queue.spool import Spool
    from relay.queue.store import NewMessage, Store

    spool = Spool(gw.state / "spool")
    messages = []
    for i in range(count):
        certified = i % 2 == 0
        data = loadgen.message(size, i, CERT_ADDRESS if certified else "")
        qid = new_queue_id()
        spool.path(qid).write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        messages.append(
            NewMessage(
                qid=qid,
                kind="mail",
                sender=USER,
                size=len(data),
                sha256=sha,
                recipients=(loadgen.RECIPIENT,),
                certified=certified,
                method="submission",
                cert_id=new_certificate_id() if certified else None,
                auth_user=USER,
                client_ip="127.0.0.1",
                client_helo="loadgen.bench",
                tls_version="TLSv1.3",
                event="SubmissionAcceptance" if certified else None,
                event_detail={"sha256": sha, "size": len(data), "envelope_from": USER,
                              "recipients": [loadgen.RECIPIENT], "client_ip": "127.0.0.1",
                              "authenticated_user": USER, "tls": "TLSv1.3"},
            )
        )  # fmt: skip
    store = Store(gw.state / "queue.db", 432000.0)
    try:
        now = time.time()

        def enqueue_all(db: object) -> None:
            for m in messages:
                store._enqueue(m, now)  # the submission path's own insert, in one transaction
            if deferred:
                conn = store._conn
                conn.execute(
                    "UPDATE recipients SET status = 'deferred', attempts = 1, next_attempt = ?,"
                    " reply_code = 421, reply_text = 'benchmark: MX down'",
                    (now + 3600,),
                )
                conn.execute("UPDATE messages SET notice_state = 'done' WHERE certified = 1")

        store.run_sync(enqueue_all)
    finally:
        store.close()


_LINE_NUMBER = re.compile(r":\d+\)$")
_ENTRY_POINTS = ("main (relay/cli.py)", "cmd_serve (relay/cli.py)")


def read_profile(path: Path, limit: int = 12) -> dict[str, Any]:
    """Summarise py-spy's raw (collapsed-stack) output.

    ``processes``: share of the samples in the gateway's main process and in its
    certificate workers; ``self``: functions by own time (any code); ``project``: the
    gateway's own functions (relay/, certifier/) by time including callees. Shares are of
    the samples of the thread holding each process's GIL (``py-spy --gil``), so of the
    Python time.
    """
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    processes: dict[str, int] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        parts = stack.split(";")
        procs = [f for f in parts if f.startswith("process ")]
        # By function, not by line: "check_data (relay/smtpd/protocol.py:61)" -> "... (relay/smtpd/protocol.py)".
        frames = [
            _LINE_NUMBER.sub(")", f) for f in parts if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        samples += count
        kind = "certificate workers" if len(procs) > 1 else "main process"
        processes[kind] = processes.get(kind, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    if not samples:
        return {}

    def pct(n: int) -> float:
        return round(100 * n / samples, 1)

    project = [
        f
        for f in total
        if ("(relay/" in f or "(certifier/" in f) and not f.startswith(_ENTRY_POINTS)
    ]
    return {
        "samples": samples,
        "processes": {k: pct(v) for k, v in sorted(processes.items())},
        "self": [(f, pct(own[f])) for f in sorted(own, key=own.__getitem__, reverse=True)[:limit]],
        "project": [
            (f, pct(total[f])) for f in sorted(project, key=total.__getitem__, reverse=True)[:limit]
        ],
    }


# -- the report ----------------------------------------------------------------------
def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (row, size): the median over rounds of every figure."""
    keyed: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        keyed.setdefault((r["row"], r["size"], r.get("kind", "throughput")), []).append(r)
    rows = []
    for (_row, _size, kind), group in keyed.items():
        merged = dict(group[0])
        for key, value in group[0].items():
            if isinstance(value, float) and all(isinstance(g.get(key), float) for g in group):
                merged[key] = statistics.median(g[key] for g in group)
        merged["kind"] = kind
        merged["rounds"] = len(group)
        merged["complete"] = all(g.get("complete", True) for g in group)
        rows.append(merged)
    ref = {r["size"]: r for r in rows if r["row"] == REFERENCE and r["kind"] == "throughput"}
    for r in rows:
        base = ref.get(r["size"])
        if base and r["kind"] == "throughput" and r["row"] != REFERENCE:
            r["accepted_ratio"] = (
                r["accepted_per_s"] / base["accepted_per_s"] if base["accepted_per_s"] else None
            )
            r["delivered_ratio"] = (
                r["delivered_per_s"] / base["delivered_per_s"] if base["delivered_per_s"] else None
            )
    return rows


def budget(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's budget lines, each with the figure it is judged on."""

    def figure(row: str, size: int, key: str, kind: str = "throughput") -> float | None:
        for r in rows:
            if r["row"] == row and r["size"] == size and r["kind"] == kind:
                value = r.get(key)
                return float(value) if value is not None else None
        return None

    lines: list[dict[str, Any]] = []

    def line(text: str, value: float | None, target: float, unit: str, most: bool = False) -> None:
        holds = value is not None and (value <= target if most else value >= target)
        lines.append({"line": text, "value": value, "target": target, "unit": unit, "holds": holds})

    for size in sorted({r["size"] for r in rows if r["kind"] == "throughput"}):
        label = size_label(size)
        line(
            f"plain relay accepted >= 1.0x Postfix, {label}",
            figure("gateway-plain", size, "accepted_ratio"),
            1.0,
            "x",
        )
        line(
            f"plain relay delivered >= 1.0x Postfix, {label}",
            figure("gateway-plain", size, "delivered_ratio"),
            1.0,
            "x",
        )
        line(
            f"certified accepted >= 0.8x Postfix relay, {label}",
            figure("gateway-certified", size, "accepted_ratio"),
            0.8,
            "x",
        )
    line(
        "certificates/s sustained while accepting (4 KB, 20 sessions) >= 50",
        figure("gateway-certified", 4 * KB, "certificates_per_s"),
        50,
        "/s",
    )
    line(
        "p50 end of DATA -> certificate at 10 msg/s <= 0.5 s",
        figure("gateway-certified", 4 * KB, "latency_p50_s", "paced"),
        0.5,
        "s",
        most=True,
    )
    line(
        "p99 end of DATA -> certificate at 10 msg/s <= 2 s",
        figure("gateway-certified", 4 * KB, "latency_p99_s", "paced"),
        2.0,
        "s",
        most=True,
    )
    mem = next((r for r in rows if r["kind"] == "memory"), None)
    line(
        f"peak RSS <= 150 MB, {mem['sessions'] if mem else '?'} sessions, "
        f"{mem['backlog'] if mem else '?'} queued ({mem['backlog_state'] if mem else '?'})",
        mem["peak_rss_mb"] if mem else None,
        150,
        "MB",
        most=True,
    )
    return lines


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(
    plan: Plan, rows: list[dict[str, Any]], lines: list[dict[str, Any]], machine: dict[str, Any]
) -> str:
    out = [
        f"Certifica vs Postfix ({plan.name}; {os.cpu_count()} cores; {plan.sessions} sessions; "
        f"median of {plan.rounds} round(s); ratios against Postfix driven by the same client "
        "with STARTTLS)",
        f"Machine before the run: {machine['busy_before_pct']:.0f}% busy, load average "
        f"{machine['loadavg_before']}; after: load average {machine.get('loadavg_after', '-')}"
        + (
            "  << other work was running: figures are low"
            if machine["busy_before_pct"] > 20
            else ""
        ),
        "",
        f"{'size':>6}  {'system':<21} {'client':<24} {'msgs':>5} {'acc/s':>7} {'deliv/s':>7} "
        f"{'cert/s':>6} {'p50 s':>6} {'p99 s':>6} {'RSS MB':>6} {'PSS MB':>6} {'CPU ms':>6} "
        f"{'acc x':>5} {'del x':>5}",
    ]
    order = {name: i for i, name in enumerate(ROWS)}
    kinds = {"throughput": 0, "paced": 1, "memory": 2}
    for r in sorted(rows, key=lambda r: (kinds[r["kind"]], r["size"], order.get(r["row"], 9))):
        client = r["client"]
        if r["kind"] == "paced":
            client = f"paced {r['rate_limit']:g} msg/s"
        if r["kind"] == "memory":
            client = f"{r['sessions']} sess, {r['backlog']} {r['backlog_state']}"
        flag = "" if r.get("complete", True) else " (not drained)"
        out.append(
            f"{size_label(r['size']):>6}  {r['system']:<21} {client:<24} {r['accepted']:>5} "
            f"{fmt(r['accepted_per_s']):>7} {fmt(r.get('delivered_per_s')):>7} "
            f"{fmt(r.get('certificates_per_s')):>6} {fmt(r.get('latency_p50_s'), '.2f'):>6} "
            f"{fmt(r.get('latency_p99_s'), '.2f'):>6} {fmt(r['peak_rss_mb'], '.0f'):>6} "
            f"{fmt(r.get('peak_pss_mb'), '.0f'):>6} "
            f"{fmt(r.get('cpu_ms_per_msg'), '.2f'):>6} {fmt(r.get('accepted_ratio'), '.2f'):>5} "
            f"{fmt(r.get('delivered_ratio'), '.2f'):>5}{flag}"
        )
    out += [
        "",
        "acc/s: end of each DATA reply at the client; deliv/s: messages at smtp-sink (its -c "
        "counter); cert/s: certificate mails at bench/mailsink.py; p50/p99: end of DATA -> "
        "certificate mail at the sink, matched by queue id; RSS/PSS: peak sum over the process "
        "tree (gateway + certificate workers; Postfix master + daemons), PSS splitting shared "
        "pages; CPU ms: per accepted message, same trees, from /proc.",
        "",
        "Budget:",
    ]
    for b in lines:
        value = fmt(b["value"], ".2f")
        out.append(f"  [{'holds' if b['holds'] else 'FAILS'}] {b['line']}: {value} {b['unit']}")
    return "\n".join(out)


def print_profiles(profiles: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, prof in profiles.items():
        if not prof:
            continue
        shares = ", ".join(f"{k} {v}%" for k, v in prof["processes"].items())
        out.append(
            f"\nProfile of the gateway during {name} (py-spy; {prof['samples']} samples: {shares})"
        )
        out.append("  own time:")
        out += [f"    {share:5.1f}%  {func}" for func, share in prof["self"]]
        out.append("  the gateway's functions, with what they call:")
        out += [f"    {share:5.1f}%  {func}" for func, share in prof["project"]]
    return "\n".join(out)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info() -> dict[str, Any]:
    """The machine, and how busy it is with other work before anything starts (1 s)."""
    busy0, total0 = machine_cpu()
    time.sleep(1.0)
    busy1, total1 = machine_cpu()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "busy_before_pct": 100 * (busy1 - busy0) / max(1e-9, total1 - total0),
        "loadavg_before": loadavg(),
    }


def _interrupt() -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer messages; under a minute")
    p.add_argument("--profile", action="store_true",
                   help="record the gateway with py-spy during its rows (slows it down: "
                   "for finding where the time goes, not for the figures)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument(
        "--only",
        action="append",
        choices=[*ROWS, "paced", "memory"],
        help="run only these rows (repeatable); ratios need postfix-loadgen",
    )
    p.add_argument(
        "--backlog",
        choices=["fresh", "deferred"],
        default="fresh",
        help="the memory row's queue: just submitted (default), or deferred with the MX down",
    )
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="certifica-bench-"))
    workdir.chmod(0o755)  # Postfix's daemons (user postfix) work inside it
    bench = Bench(plan, workdir, args.profile, tuple(args.only or ()), args.backlog)
    # SIGTERM (make interrupted, a CI timeout) goes through the same cleanup as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda signum, frame: _interrupt())
    started = time.monotonic()
    failure: BaseException | None = None
    try:
        bench.run()
    except Exception as err:  # print what was measured, after stopping everything
        failure = err
        print(f"bench: stopped early: {type(err).__name__}: {err}", file=sys.stderr)
    except KeyboardInterrupt as err:
        failure = err
    finally:
        bench.stop()
    rows = summarise(bench.runs)
    lines = budget(rows)
    print()
    machine["loadavg_after"] = loadavg()
    print(table(plan, rows, lines, machine))
    if bench.profiles:
        print(print_profiles(bench.profiles))
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    report = {
        "plan": asdict(plan),
        "machine": machine,
        "finished": failure is None,
        "seconds": time.monotonic() - started,
        "rows": rows,
        "runs": bench.runs,
        "budget": lines,
        "profiles": bench.profiles,
    }  # fmt: skip
    (results / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nbench: {time.monotonic() - started:.0f} s; figures in {results / 'latest.json'}"
          + (f"; logs in {workdir}" if args.keep else ""))  # fmt: skip
    if not args.keep:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
