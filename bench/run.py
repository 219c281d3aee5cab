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
import systems  # noqa: E402
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
    machine_cpu,
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
    linear: dict[int, int]  # size -> messages, for the rows of acceptance by size
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
        "gateway-certified": {4 * KB: 1000, 100 * KB: 300},
    },
    paced_rate=10.0,
    paced_seconds=30.0,
    memory_sessions=100,
    memory_backlog=100_000,
    memory_seconds=30.0,
    linear={1 * KB: 2000, 10 * KB: 2000, 100 * KB: 800, 1 * MB: 100},
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
        "gateway-plain": {4 * KB: 300, 100 * KB: 100},
        # Enough that acceptance lasts long enough to count certificates during it.
        "gateway-certified": {4 * KB: 200, 100 * KB: 40},
    },
    paced_rate=10.0,
    paced_seconds=5.0,
    memory_sessions=100,
    memory_backlog=1_000,
    memory_seconds=3.0,
    linear={1 * KB: 300, 10 * KB: 300, 100 * KB: 100, 1 * MB: 20},
    client_deadline=20.0,
    drain_deadline=30.0,
)


def size_label(size: int) -> str:
    return f"{size // MB} MB" if size >= MB and size % MB == 0 else f"{size // KB} KB"


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
        self.sampler.watch("gateway", gw.tree, gw.label)
        self.sampler.watch("postfix", self.postfix.tree, self.postfix.label)
        self.sampler.start()
        print(
            f"bench: CPU time of each system's whole process tree from {gw.tree.method}",
            flush=True,
        )
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
        if self.gateway is not None:
            self.gateway.close()

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
            return self._drive(proc, sessions, deadline, ready, auth)
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
        auth: bool,
    ) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # The password only where loadgen reads it (--user): a line it did not read
            # would be taken as the "go" below, and it would start before the row's
            # measurements.
            if auth:
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
        deadline: float | None = None,
        queued: int = 0,
        drain: bool = True,
    ) -> dict[str, Any]:
        """One measured row: a client sends, then the row waits until everything it sent
        is delivered (and certified) and out of the queue (not with ``drain=False``).
        ``queued``: messages already in the gateway's queue that the row does not wait
        for (the backlog rows)."""
        gw, pf = self.gateway, self.postfix
        assert gw is not None and pf is not None
        sessions = sessions or self.plan.sessions
        system = "postfix" if row.startswith("postfix") else "gateway"
        tree = pf.tree if system == "postfix" else gw.tree
        assert tree.pids(), f"{system} is not running"
        certified = row == "gateway-certified"
        # Taken when the client's sessions are up, just before the first message.
        snap: dict[str, Any] = {}

        def ready() -> None:
            snap["sink"] = self.sink.count
            snap["mark"] = self.recorder.mark()
            snap["cpu"] = tree.cpu_seconds()
            snap["machine"] = machine_cpu()
            self.sampler.reset()
            snap["by_process"] = self.sampler.cpu_by_process(system)
            snap["spy"] = self.start_profile(row, size, rate) if system == "gateway" else None

        if row == "postfix-smtp-source":
            ready()
            client = self.smtp_source(size, count)
        elif row == "postfix-loadgen":
            client = self.loadgen(
                pf.tls_port, size, count, sessions, auth=False, deadline=deadline, ready=ready
            )
        else:
            client = self.loadgen(
                gw.port, size, count, sessions, auth=True, certify=certified, rate=rate,
                deadline=deadline, ready=ready,
            )  # fmt: skip
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
                active = gw.active_messages()
                return active is not None and active <= queued
            return pf.queue_empty()

        wait = time.monotonic() + self.plan.drain_deadline
        while drain and not drained() and time.monotonic() < wait:
            time.sleep(0.05)
        complete = drained() if drain else None
        cpu = tree.cpu_seconds() - cpu0
        busy1, total1 = machine_cpu()
        rss, pss, main_rss = self.sampler.peak(system)
        by_process = cpu_split(snap["by_process"], self.sampler.cpu_by_process(system))
        name = f"{row}-{size_label(size).replace(' ', '')}" + (f"-paced{rate:g}" if rate else "")
        if kind != "throughput" and kind != "paced":
            name += f"-{kind}"
        if spy is not None:
            self.stop_profile(spy, name, system)

        delivered = min(self.sink.count - sink0, accepted)
        t_delivered = self.sink.reached(sink0 + delivered) if delivered else None
        certs = self.recorder.since(mark, "certificate")
        arrival = {qid: t for t, _, qid, _ in certs}
        latencies = [arrival[q] - t for t, q in client["sent"] if q in arrival]
        replies = [t for t, _ in client["sent"]]
        # The certify stage's two rates, on the issue's definitions. End to end: every
        # certificate, from the first acceptance (250 to the final dot) to the last
        # certificate at the sender's sink. During acceptance: the certificates that
        # arrived between the first and the last acceptance, over that time; equal to
        # the end-to-end rate when certificates keep pace with mail arriving, near 0
        # when they wait until acceptance stops.
        first, last = (min(replies), max(replies)) if replies else (t0, client["end"])
        accepting = last - first
        end_to_end = during = None
        if certified:  # no certificate at all is 0/s, not "not measured"
            end_to_end = len(certs) / max(1e-9, max(t for t, *_ in certs) - first) if certs else 0.0
            if accepting > 0:
                during = sum(1 for t, *_ in certs if first <= t <= last) / accepting
        seconds = client["end"] - t0
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
            "accepted_per_s": accepted / seconds if accepted and seconds > 0 else 0.0,
            "accepted_mb_per_s": accepted * size / MB / seconds
            if accepted and seconds > 0
            else 0.0,
            "acceptance_s": accepting,
            "delivered": delivered,
            "delivered_per_s": delivered / (t_delivered - t0) if t_delivered else 0.0,
            "certificates": len(certs) if certified else None,
            "certificates_per_s": end_to_end,
            "certificates_during_acceptance_per_s": during,
            "latency_p50_s": percentile(latencies, 50) if certified else None,
            "latency_p99_s": percentile(latencies, 99) if certified else None,
            "latency_max_s": max(latencies) if latencies else None,
            "peak_rss_mb": rss / MB,
            "peak_pss_mb": pss / MB,
            "peak_main_rss_mb": main_rss / MB,
            "cpu_s": cpu,
            "cpu_method": tree.method,
            "cpu_by_process_s": by_process,  # name -> [seconds, processes]
            "machine_busy_pct": 100 * (busy1 - busy0) / max(1e-9, total1 - total0),
            "seconds": time.time() - t0,
            "session_setup_s": client.get("setup_s"),
            "cpu_ms_per_msg": 1000 * cpu / accepted if accepted else None,
            "queued_before": queued,
            "complete": complete,
            "errors": client["errors"],
        }
        self.runs.append(result)
        note = "  (not drained before the deadline)" if complete is False else ""
        errs = f"  errors: {client['errors']}" if client["errors"] else ""
        print(
            f"  {time.monotonic() - self.began:5.0f}s {size_label(size):>6} {row:<20}"
            f" {kind:<11} accepted {result['accepted_per_s']:7.1f}/s"
            f"  delivered {result['delivered_per_s']:7.1f}/s"
            + (f"  certificates {end_to_end or 0:6.1f}/s" if certified else "")
            + f"  CPU {result['cpu_ms_per_msg'] or 0:.2f} ms/msg"
            + f"{note}{errs}",
            flush=True,
        )
        return result

    # -- profiling (--profile) -----------------------------------------------------
    def start_profile(self, row: str, size: int, rate: float) -> subprocess.Popen[bytes] | None:
        """py-spy on the gateway's root process and, with --subprocesses, every process
        it forks while the row runs (acceptors, qmgr, agents, certificate workers)."""
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

    def stop_profile(self, spy: subprocess.Popen[bytes], name: str, system: str) -> None:
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
            labels = {pid: label for pid, (label, _) in self.sampler.cpu_by_process(system).items()}
            self.profiles[name] = read_profile(target, labels)

    # -- the special rows ----------------------------------------------------------
    def paced(self) -> dict[str, Any]:
        plan = self.plan
        count = int(plan.paced_rate * plan.paced_seconds)
        return self.phase(
            "gateway-certified", 4 * KB, count, sessions=10, rate=plan.paced_rate, kind="paced"
        )

    def by_size(self) -> None:
        """Plain relay acceptance at 1 KB, 10 KB, 100 KB and 1 MB: linear in size?"""
        for size, count in sorted(self.plan.linear.items()):
            self.phase("gateway-plain", size, count, kind="size")

    def backlog_rows(self) -> None:
        """The rows with many sessions and a long queue, each against its reference.

        1. ``queue-empty``: plain 4 KB acceptance, 20 sessions, the queue empty.
        2. ``memory`` for Postfix: 100 sessions for ``memory_seconds``, its peak PSS.
        3. The gateway is stopped, ``memory_backlog`` messages are put in its queue,
           and it starts again.
        4. ``queue-full``: row 1 again, now with the backlog queued.
        5. ``memory`` for the gateway: 100 sessions of certified mail for
           ``memory_seconds``. Its peak PSS covers the start with the full queue, row 4
           and this row.

        The default backlog is deferred (the recipients' MX was down: every message
        waits for its next attempt in an hour), so that row 4 measures what a long
        queue costs acceptance, not the CPU the gateway spends delivering the backlog
        at the same time; ``--backlog fresh`` (everything due now) gives that instead.
        """
        plan, gw = self.plan, self.gateway
        assert gw is not None
        count = plan.count["gateway-plain"][4 * KB]
        self.phase("gateway-plain", 4 * KB, count, kind="queue-empty")
        self.phase(
            "postfix-loadgen",
            4 * KB,
            1_000_000,
            sessions=plan.memory_sessions,
            deadline=plan.memory_seconds,
            kind="memory",
        )
        gw.stop()
        started = time.monotonic()
        fill_queue(gw, plan.memory_backlog, 4 * KB, deferred=self.backlog == "deferred")
        fill_s = time.monotonic() - started
        self.sampler.reset()  # the peak includes the start with a full queue
        gw.start()
        start_peak = self.sampler.peak("gateway")
        full = self.phase(
            "gateway-plain", 4 * KB, count, kind="queue-full", queued=plan.memory_backlog
        )
        full["backlog_state"] = self.backlog
        mem = self.phase(
            "gateway-certified",
            4 * KB,
            1_000_000,
            sessions=plan.memory_sessions,
            deadline=plan.memory_seconds,
            kind="memory",
            drain=False,  # the certificates of 30 s of load take minutes: not waited for
        )
        mem.update(
            row="gateway-memory",
            backlog=plan.memory_backlog,
            backlog_state=self.backlog,
            backlog_fill_s=fill_s,
            peak_rss_mb=max(start_peak[0] / MB, full["peak_rss_mb"], mem["peak_rss_mb"]),
            peak_pss_mb=max(start_peak[1] / MB, full["peak_pss_mb"], mem["peak_pss_mb"]),
            peak_main_rss_mb=max(
                start_peak[2] / MB, full["peak_main_rss_mb"], mem["peak_main_rss_mb"]
            ),
            active_at_end=gw.active_messages(),
            # Not waited for (drain=False): partial, so not shown.
            delivered_per_s=None,
            certificates_per_s=None,
            certificates_during_acceptance_per_s=None,
            latency_p50_s=None,
            latency_p99_s=None,
        )
        print(
            f"  memory: {plan.memory_backlog} queued ({self.backlog}) + {plan.memory_sessions}"
            f" sessions for {plan.memory_seconds:g} s: peak PSS {mem['peak_pss_mb']:.0f} MB"
            f" (main process RSS {mem['peak_main_rss_mb']:.0f} MB)",
            flush=True,
        )
        gw.stop(grace=2)  # the backlog is thrown away: no need to let it finish

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
        if self.wanted("size"):
            print("bench: plain relay acceptance by message size", flush=True)
            self.by_size()
        if self.wanted("memory"):
            print(
                f"bench: {self.plan.memory_sessions} sessions, and acceptance and memory with "
                f"{self.plan.memory_backlog} queued messages ({self.backlog})",
                flush=True,
            )
            self.backlog_rows()

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
    from relay.queue.ids import new_certificate_id, new_queue_id
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
_PROCESS = re.compile(r"^process (\d+)")
_ENTRY_POINTS = ("main (relay/cli/__init__.py)", "cmd_serve (relay/cli/serve.py)")


def role(label: str) -> str:
    """``acceptor[1]`` -> ``acceptor``: processes of one kind are summed."""
    return re.sub(r"\[\d+\]$", "", label)


def read_profile(path: Path, labels: dict[int, str], limit: int = 8) -> dict[str, Any]:
    """Summarise py-spy's raw (collapsed-stack) output, per kind of process.

    With ``--subprocesses`` each stack starts with ``process PID:"command line"`` frames
    (the parent's, then the child's); the last one is the process sampled, named with
    ``labels`` (pid -> ``acceptor[0]``, ``qmgr``, ``certificate worker``... from the
    sampler). For each kind of process: its share of all the samples, the functions
    with the most own time (any code), and the gateway's own functions (relay/,
    certifier/) by time including what they call, as shares of that process kind's
    samples. Shares are of samples of the thread holding each process's GIL
    (``py-spy --gil``): Python time, not time waiting in fsync, SQLite or OpenSSL
    without the lock.
    """
    per: dict[str, dict[str, Any]] = {}
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        parts = stack.split(";")
        procs = [m for f in parts if (m := _PROCESS.match(f))]
        # By function, not by line: "check_data (relay/smtpd/protocol.py:61)" -> "... (relay/smtpd/protocol.py)".
        frames = [
            _LINE_NUMBER.sub(")", f) for f in parts if not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        samples += count
        pid = int(procs[-1].group(1)) if procs else 0
        kind = role(labels.get(pid, f"pid {pid}"))
        p = per.setdefault(kind, {"samples": 0, "own": {}, "total": {}, "pids": set()})
        p["samples"] += count
        p["pids"].add(pid)
        p["own"][frames[-1]] = p["own"].get(frames[-1], 0) + count
        for frame in set(frames):
            p["total"][frame] = p["total"].get(frame, 0) + count
    if not samples:
        return {}
    out: dict[str, Any] = {"samples": samples, "processes": {}}
    for kind, p in sorted(per.items(), key=lambda kv: -kv[1]["samples"]):
        own, total, n = p["own"], p["total"], p["samples"]
        project = [
            f
            for f in total
            if ("(relay/" in f or "(certifier/" in f)
            and not f.startswith(_ENTRY_POINTS)
            and total[f] < n  # in every sample: an entry point or a child's main loop
        ]
        out["processes"][kind] = {
            "share": round(100 * n / samples, 1),
            "count": len(p["pids"]),
            "self": [(f, round(100 * own[f] / n, 1)) for f in sorted(own, key=own.__getitem__, reverse=True)[:limit]],
            "project": [
                (f, round(100 * total[f] / n, 1))
                for f in sorted(project, key=total.__getitem__, reverse=True)[:limit]
            ],
        }  # fmt: skip
    return out


def cpu_split(
    before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
) -> dict[str, list[float]]:
    """CPU seconds the processes spent between two samples, and how many processes
    spent some, by process name: ``{"smtpd": [0.12, 20], "acceptor[0]": [...]}``."""
    split: dict[str, list[float]] = {}
    for pid, (label, seconds) in after.items():
        spent = seconds - before.get(pid, (label, 0.0))[1]
        if spent > 0:
            total = split.setdefault(label, [0.0, 0])
            total[0] += spent
            total[1] += 1
    return split


# -- the report ----------------------------------------------------------------------
KINDS = ("throughput", "paced", "size", "queue-empty", "queue-full", "memory")


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (row, size, kind): the median over rounds of every figure."""
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
        # The split of the CPU by process cannot be a median: take the round whose
        # total is nearest the median, and keep that round's total with it.
        if merged.get("cpu_s") is not None:
            near = min(group, key=lambda g: abs((g.get("cpu_s") or 0.0) - merged["cpu_s"]))
            merged["cpu_split_round"] = {
                "cpu_s": near.get("cpu_s"),
                "accepted": near.get("accepted"),
                "cpu_by_process_s": near.get("cpu_by_process_s"),
            }
        merged["complete"] = all(g.get("complete") is not False for g in group)
        rows.append(merged)
    ref = {r["size"]: r for r in rows if r["row"] == REFERENCE and r["kind"] == "throughput"}

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    for r in rows:
        base = ref.get(r["size"])
        if base and r["kind"] == "throughput" and r["row"] != REFERENCE:
            r["accepted_ratio"] = ratio(r["accepted_per_s"], base["accepted_per_s"])
            r["delivered_ratio"] = ratio(r["delivered_per_s"], base["delivered_per_s"])
            r["cpu_ratio"] = ratio(r.get("cpu_ms_per_msg"), base.get("cpu_ms_per_msg"))
    return rows


LINEAR_TOLERANCE = 0.2  # per-byte cost may grow by 20% from one size to the next larger


def budget(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The budget lines of the issue, each named for what it measures and judged on the
    figure it shows (``value``, against ``target``; ``detail`` gives the figures the
    value comes from)."""

    def find(row: str, size: int, kind: str = "throughput") -> dict[str, Any] | None:
        return next(
            (r for r in rows if r["row"] == row and r["size"] == size and r["kind"] == kind), None
        )

    def figure(row: str, size: int, key: str, kind: str = "throughput") -> float | None:
        r = find(row, size, kind)
        value = r.get(key) if r else None
        return float(value) if value is not None else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    lines: list[dict[str, Any]] = []

    def line(
        text: str,
        value: float | None,
        target: float,
        unit: str,
        most: bool = False,
        detail: str = "",
    ) -> None:
        holds = None if value is None else (value <= target if most else value >= target)
        lines.append({"line": text, "value": value, "target": target, "unit": unit,
                      "most": most, "holds": holds, "detail": detail})  # fmt: skip

    for size in sorted({r["size"] for r in rows if r["kind"] == "throughput"}):
        label = size_label(size)
        for key, what in (("accepted_per_s", "accepted/s"), ("delivered_per_s", "delivered/s")):
            gw, pf = figure("gateway-plain", size, key), figure(REFERENCE, size, key)
            line(
                f"plain relay {what} / Postfix's, {label}",
                ratio(gw, pf),
                1.0,
                "x",
                detail=f"{fmt(gw)} against {fmt(pf)}",
            )
        gw, pf = (
            figure("gateway-plain", size, "cpu_ms_per_msg"),
            figure(REFERENCE, size, "cpu_ms_per_msg"),
        )
        line(
            f"plain relay CPU per message (whole process tree) / Postfix's, {label}",
            ratio(gw, pf),
            1.0,
            "x",
            most=True,
            detail=f"{fmt(gw, '.2f')} ms against {fmt(pf, '.2f')} ms",
        )  # fmt: skip
    cert = find("gateway-certified", 4 * KB)
    end_to_end = cert.get("certificates_per_s") if cert else None
    during = cert.get("certificates_during_acceptance_per_s") if cert else None
    line(
        "certified end to end: certificates/s, first acceptance to last certificate, 4 KB",
        end_to_end,
        90,
        "/s",
        detail=f"{cert['certificates']} certificates" if cert else "",
    )
    line(
        "certified CPU per certified message (whole process tree), 4 KB",
        cert.get("cpu_ms_per_msg") if cert else None,
        18,
        "ms",
        most=True,
    )
    line(
        "certify keeps pace: certificates/s during acceptance / end to end, 4 KB",
        ratio(during, end_to_end),
        0.8,
        "x",
        detail=(
            f"{fmt(during)}/s between the first and the last acceptance "
            f"({fmt(cert.get('acceptance_s') if cert else None, '.2f')} s) against {fmt(end_to_end)}/s"
        ),
    )  # fmt: skip
    line(
        "p50 end of DATA -> certificate at 10 msg/s",
        figure("gateway-certified", 4 * KB, "latency_p50_s", "paced"),
        0.5,
        "s",
        most=True,
    )
    line(
        "p99 end of DATA -> certificate at 10 msg/s",
        figure("gateway-certified", 4 * KB, "latency_p99_s", "paced"),
        2.0,
        "s",
        most=True,
    )

    def peak_pss(system: str, kinds: tuple[str, ...]) -> float | None:
        values = [
            r["peak_pss_mb"] for r in rows if r["kind"] in kinds and r["system"].startswith(system)
        ]
        return max(values) if values else None

    gw_pss = peak_pss("gateway", ("throughput", "paced"))
    pf_pss = peak_pss("Postfix", ("throughput",))
    line(
        "peak PSS of the whole process tree / Postfix's, the throughput rows",
        ratio(gw_pss, pf_pss),
        1.0,
        "x",
        most=True,
        detail=f"{fmt(gw_pss, '.0f')} MB against {fmt(pf_pss, '.0f')} MB",
    )
    mem = next((r for r in rows if r["row"] == "gateway-memory"), None)
    pf_mem = find(REFERENCE, 4 * KB, "memory")
    line(
        f"peak PSS / Postfix's, {mem['sessions'] if mem else '?'} sessions and "
        f"{mem['backlog'] if mem else '?'} queued ({mem['backlog_state'] if mem else '?'})",
        ratio(mem["peak_pss_mb"] if mem else None, pf_mem["peak_pss_mb"] if pf_mem else None),
        1.0,
        "x",
        most=True,
        detail=(
            f"{fmt(mem['peak_pss_mb'] if mem else None, '.0f')} MB against "
            f"{fmt(pf_mem['peak_pss_mb'] if pf_mem else None, '.0f')} MB (Postfix: the same "
            "sessions, its queue empty)"
        ),
    )
    empty = figure("gateway-plain", 4 * KB, "accepted_per_s", "queue-empty")
    full = figure("gateway-plain", 4 * KB, "accepted_per_s", "queue-full")
    full_row = find("gateway-plain", 4 * KB, "queue-full")
    line(
        f"acceptance with {full_row['queued_before'] if full_row else '?'} queued "
        f"({full_row.get('backlog_state', '?') if full_row else '?'}) / with an empty queue, "
        "plain 4 KB",
        ratio(full, empty),
        0.9,
        "x",
        detail=f"{fmt(full)}/s against {fmt(empty)}/s",
    )
    # Acceptance is linear in size when time = fixed + per-byte cost x size: the cost
    # per byte (s per MB accepted) then falls or stays flat as messages grow. The line
    # judges the worst growth of the cost per byte from one size to the next larger
    # one, which may be at most LINEAR_TOLERANCE (measurement noise on a shared machine).
    sized = sorted((r["size"], r["accepted_mb_per_s"]) for r in rows if r["kind"] == "size")
    steps = [
        (a_mb / b_mb if b_mb else float("inf"), a, b)
        for (a, a_mb), (b, b_mb) in zip(sized, sized[1:], strict=False)
        if a_mb
    ]
    worst = max(steps, default=None, key=lambda s: s[0])
    line(
        "acceptance linear in size: worst growth of the cost per byte, one size to the next",
        worst[0] if worst and len(steps) == len(sized) - 1 and len(sized) > 1 else None,
        1 + LINEAR_TOLERANCE,
        "x",
        most=True,
        detail=(
            ", ".join(f"{size_label(s)} {mb:.1f} MB/s" for s, mb in sized)
            + (f"; worst {size_label(worst[1])} -> {size_label(worst[2])}" if worst else "")
        ),
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
        f"{'size':>6}  {'system':<21} {'client':<27} {'msgs':>5} {'acc/s':>7} {'MB/s':>6} "
        f"{'deliv/s':>7} {'cert/s':>6} {'during':>6} {'p50 s':>5} {'p99 s':>5} {'PSS MB':>6} "
        f"{'CPU ms':>6} {'acc x':>5} {'del x':>5} {'cpu x':>5}",
    ]
    order = {name: i for i, name in enumerate(ROWS)}
    kinds = {k: i for i, k in enumerate(KINDS)}

    def key(r: dict[str, Any]) -> tuple[int, int, int, int]:
        gateway_last = 0 if r["system"].startswith("Postfix") else 1
        return (kinds[r["kind"]], r["size"], gateway_last, order.get(r["row"], 9))

    for r in sorted(rows, key=key):
        client = r["client"]
        if r["kind"] == "paced":
            client = f"paced {r['rate_limit']:g} msg/s"
        elif r["kind"] == "size":
            client = "by size"
        elif r["kind"] in ("queue-empty", "queue-full"):
            client = f"{r['kind']}" + (
                f", {r['queued_before']} {r.get('backlog_state', '')}" if r["queued_before"] else ""
            )
        elif r["kind"] == "memory":
            client = f"{r['sessions']} sess" + (
                f", {r['backlog']} {r['backlog_state']}" if r.get("backlog") else ", queue empty"
            )
        flag = "" if r.get("complete", True) else " (not drained)"
        out.append(
            f"{size_label(r['size']):>6}  {r['system']:<21} {client:<27} {r['accepted']:>5} "
            f"{fmt(r['accepted_per_s']):>7} {fmt(r.get('accepted_mb_per_s')):>6} "
            f"{fmt(r.get('delivered_per_s')):>7} "
            f"{fmt(r.get('certificates_per_s')):>6} "
            f"{fmt(r.get('certificates_during_acceptance_per_s')):>6} "
            f"{fmt(r.get('latency_p50_s'), '.2f'):>5} {fmt(r.get('latency_p99_s'), '.2f'):>5} "
            f"{fmt(r.get('peak_pss_mb'), '.0f'):>6} "
            f"{fmt(r.get('cpu_ms_per_msg'), '.2f'):>6} {fmt(r.get('accepted_ratio'), '.2f'):>5} "
            f"{fmt(r.get('delivered_ratio'), '.2f'):>5} {fmt(r.get('cpu_ratio'), '.2f'):>5}{flag}"
        )
    method = next((r.get("cpu_method") for r in rows if r.get("cpu_method")), "?")
    out += [
        "",
        "acc/s, MB/s: accepted (250 to the final dot at the client) from the start to the last "
        "reply; deliv/s: at smtp-sink; cert/s: certificates at bench/mailsink.py, first "
        "acceptance to last certificate; during: certificates that arrived between the first "
        "and the last acceptance, per second of it; p50/p99: end of DATA -> certificate; PSS: "
        "peak sum over every process of the system; CPU ms: user+system of every process of "
        f"the system, ended ones included ({method}), per accepted message; x: gateway / "
        "Postfix with the same client.",
        "",
        "Budget:",
    ]
    for b in lines:
        value = fmt(b["value"], ".2f")
        target = f"{'<=' if b['most'] else '>='} {b['target']:g}"
        detail = f"  ({b['detail']})" if b.get("detail") else ""
        verdict = {True: "holds", False: "FAILS", None: " n/a "}[b["holds"]]
        if b["holds"] is None:
            detail = "  (not measured in this run)"
        out.append(f"  [{verdict}] {b['line']}: {value} {b['unit']}, target {target}{detail}")
    return "\n".join(out)


def cpu_report(rows: list[dict[str, Any]]) -> str:
    """Where the CPU goes, by kind of process, in ms per accepted message."""
    out = ["", "CPU by process, ms per accepted message (of the round nearest the median; "
           "last sample per process; 'unsampled': ended between samples; xN: N processes):"]  # fmt: skip
    kinds = {k: i for i, k in enumerate(KINDS)}
    for r in sorted(rows, key=lambda r: (kinds[r["kind"]], r["size"], r["row"])):
        one = r.get("cpu_split_round") or {}
        split, accepted = one.get("cpu_by_process_s") or {}, one.get("accepted") or 0
        if not split or not accepted:
            continue
        by_role: dict[str, tuple[float, int]] = {}
        for label, (seconds, processes) in split.items():
            total, n = by_role.get(role(label), (0.0, 0))
            by_role[role(label)] = (total + seconds, n + int(processes))
        parts = [
            f"{name}{f' x{n}' if n > 1 else ''} {1000 * s / accepted:.2f}"
            for name, (s, n) in sorted(by_role.items(), key=lambda kv: -kv[1][0])
            if 1000 * s / accepted >= 0.005  # what rounds to 0.00 says nothing
        ]
        total = one["cpu_s"]
        rest = total - sum(seconds for seconds, _ in split.values())
        if rest > 0.01 * total:
            parts.append(f"unsampled {1000 * rest / accepted:.2f}")
        out.append(
            f"  {size_label(r['size']):>6} {r['row']:<19} {r['kind']:<11} "
            f"{1000 * total / accepted:.2f} = " + " + ".join(parts)
        )
    return "\n".join(out)


def print_profiles(profiles: dict[str, dict[str, Any]]) -> str:
    out = []
    for name, prof in profiles.items():
        if not prof:
            continue
        shares = ", ".join(
            f"{kind}{' x' + str(p['count']) if p['count'] > 1 else ''} {p['share']}%"
            for kind, p in prof["processes"].items()
        )
        out.append(f"\nProfile of the gateway during {name} (py-spy, {prof['samples']} samples of "
                   f"Python time: {shares})")  # fmt: skip
        for kind, p in prof["processes"].items():
            out.append(f"  {kind} ({p['share']}% of the samples); own time:")
            out += [f"    {share:5.1f}%  {func}" for func, share in p["self"]]
            if p["project"]:
                out.append(f"  {kind}: the gateway's functions, with what they call:")
                out += [f"    {share:5.1f}%  {func}" for func, share in p["project"]]
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
    p.add_argument("--quick", action="store_true", help="fewer messages; under two minutes")
    p.add_argument("--profile", action="store_true",
                   help="record the gateway with py-spy during its rows (slows it down: "
                   "for finding where the time goes, not for the figures)")  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    p.add_argument(
        "--only",
        action="append",
        choices=[*ROWS, "paced", "size", "memory"],
        help="run only these rows (repeatable); ratios need postfix-loadgen",
    )
    p.add_argument(
        "--backlog",
        choices=["fresh", "deferred"],
        default="deferred",
        help="the backlog rows' queue: deferred with the MX down (default), or just submitted",
    )
    p.add_argument(
        "--cpu-from",
        choices=["auto", "proc"],
        default="auto",
        help="CPU time of each system: from its own cgroup where the run may make one "
        "(default), or from /proc (what runs elsewhere; to compare the two)",
    )
    args = p.parse_args(argv)
    systems.USE_CGROUP = args.cpu_from == "auto"
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
    print(cpu_report(rows))
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
