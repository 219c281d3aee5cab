"""The gateway as a master and its children (README, "Processes").

For each kind of child, load runs (certified and plain mail through submission, with
smtplib; a message whose 250 did not come is sent again) while one child of that kind
is killed with SIGKILL: every message answered 250 reaches the MX, every certified one
gets exactly one certificate (one PDF: a certificate mail may arrive twice, at-least-once
delivery, but is never made twice), the master starts the child again, and the log has no
traceback. Also: SIGTERM stops the children in order, ``certifica status`` lists them,
and the acceptors share the listening sockets.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)

PROCESSES = "[processes]\nacceptors = 2\ndelivery_agents = 1\n"  # [signing] workers = 1
CHILDREN = (
    "qmgr-0",
    "acceptor-0",
    "acceptor-1",
    "delivery-0",
    "certify-0",
    "admin-0",
    "webhooks-0",
)


def statuses(gw: Gateway) -> dict[str, dict]:
    """The status files of the running children, by ``role-index``."""
    out = {}
    for path in (gw.state / "run" / "status").glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue  # being replaced
    return out


def pid_of(gw: Gateway, name: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while name not in statuses(gw):
        assert time.monotonic() < deadline, f"no status file for {name}: {gw.log()}"
        time.sleep(0.05)
    return int(statuses(gw)[name]["pid"])


def wait_for_new_pid(gw: Gateway, name: str, old: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        record = statuses(gw).get(name)
        if record and int(record["pid"]) != old:
            return int(record["pid"])
        assert time.monotonic() < deadline, f"{name} was not restarted: {gw.log()}"
        time.sleep(0.02)


@dataclass
class Load:
    """A thread sending ``count`` messages, every other one certified, one session each;
    a message is sent again (same Message-ID) until its DATA is answered 250."""

    gw: Gateway
    count: int
    attempts: int = 0
    accepted: dict[str, str] = field(default_factory=dict)  # Message-ID -> queue id
    certified: set[str] = field(default_factory=set)  # Message-IDs
    errors: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for i in range(self.count):
            certified = i % 2 == 0
            msgid = f"<load{i}.{time.monotonic_ns()}@example.com>"
            to = f"user{i}@example.org"
            raw = make_message(subject=f"load {i}", to=to, cc=CERT_ADDRESS if certified else "")
            raw = raw.replace(b"Message-ID: <", f"Message-ID: {msgid}\r\nX-Old-Id: <".encode(), 1)
            rcpts = [to, CERT_ADDRESS] if certified else [to]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                self.attempts += 1
                try:
                    with self.gw.smtp() as client:
                        client.mail("alice@example.com")
                        for r in rcpts:
                            client.rcpt(r)
                        code, text = client.data(raw)
                except (smtplib.SMTPException, OSError, ssl.SSLError) as err:
                    self.errors[type(err).__name__] += 1
                    time.sleep(0.05)
                    continue
                if code == 250:
                    self.accepted[msgid] = text.decode().rsplit(" ", 1)[1]
                    if certified:
                        self.certified.add(msgid)
                    break
                self.errors[str(code)] += 1
                time.sleep(0.05)

    def start(self) -> Load:
        self.thread.start()
        return self

    def wait_accepted(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < n:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} accepted"
            assert self.thread.is_alive() or len(self.accepted) >= n
            time.sleep(0.02)

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive()


def certificates(sink: Sink) -> dict[str, list[str]]:
    """The certificates received, by the queue id of the message they certify: the
    SHA-256 of the PDF of each certificate mail. The same PDF twice is one certificate
    delivered twice (at-least-once delivery); two PDFs would be a message certified
    twice."""
    made: dict[str, list[str]] = {}
    for m in list(sink.messages):
        if not (m.message["Subject"] or "").startswith("Certificate"):
            continue
        pdf = next(
            p.get_payload(decode=True)
            for p in m.message.iter_attachments()
            if p.get_content_type() == "application/pdf"
        )
        assert isinstance(pdf, bytes)
        made.setdefault(str(m.message["X-Certifica-Queue-Id"]), []).append(
            hashlib.sha256(pdf).hexdigest()
        )
    return made


def delivered_ids(messages: list[Received]) -> Counter[str]:
    return Counter(
        str(m.message["Message-ID"])
        for m in messages
        if not (m.message["Subject"] or "").startswith(("Certificate", "Being certified"))
    )


def kill_mid_load(
    sink_server: SinkServer, tmp_path: Path, victim: str, count: int = 40
) -> dict[str, float]:
    """Run the load, kill ``victim`` (``role-index``) once a quarter is accepted, check
    what the module docstring says, and return the figures."""

    def slow(msg: Received) -> str:
        time.sleep(0.05)  # a remote MX taking its time: attempts are in flight a while
        return "250 2.0.0 Ok: queued as SINK0001"

    sink = sink_server.start(Sink(data_reply=slow))
    cfg = write_config(
        tmp_path,
        {"example.org": sink.port, "example.com": sink.port},
        PROCESSES,
    )
    gw = start_gateway(cfg)
    try:
        old = pid_of(gw, victim)
        load = Load(gw, count).start()
        load.wait_accepted(count // 4)
        # Kill it while its status file (written each second) says it is busy.
        busy = "sessions" if victim.startswith("acceptor") else "in_flight"
        deadline = time.monotonic() + 20
        while not statuses(gw)[victim].get(busy, 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        killed = time.monotonic()
        signal_pid(old, signal.SIGKILL)
        new = wait_for_new_pid(gw, victim, old)
        restart = time.monotonic() - killed
        load.join()
        assert len(load.accepted) == count, (load.errors, gw.log())

        def complete(ms: list[Received]) -> bool:
            got = delivered_ids(ms)
            done = certificates(sink)
            return all(got[i] for i in load.accepted) and all(
                load.accepted[i] in done for i in load.certified
            )

        sink.wait_for(complete, timeout=120)
        time.sleep(1.5)  # a certificate made twice would come now
        made = certificates(sink)
        for msgid in load.certified:
            assert len(set(made[load.accepted[msgid]])) == 1, (msgid, made)
        assert all(len(set(pdfs)) == 1 for pdfs in made.values()), made
        got = delivered_ids(list(sink.messages))
        status = gw.cli("status")
        assert status.returncode == 0, status.stderr
        assert f"pid {new} " in status.stdout and f"pid {old} " not in status.stdout
        log = gw.log()
        assert f"{process_name(victim)} pid {old} ended (signal 9)" in log, log
    finally:
        gw.stop()
    assert_clean_log(gw.log())
    figures = {
        "sent": load.attempts,
        "accepted": len(load.accepted),
        "delivered": sum(1 for i in load.accepted if got[i]),
        "certificates": sum(len(set(pdfs)) for pdfs in made.values()),
        "duplicate copies": sum(n - 1 for n in got.values() if n > 1)
        + sum(len(pdfs) - 1 for pdfs in made.values()),
        "restart s": round(restart, 2),
    }
    lost = re.search(rf"{re.escape(process_name(victim))} pid {old} disconnected; (\d+) jobs", log)
    if lost:  # a delivery agent or certificate worker: what it was doing when killed
        figures["jobs lost"] = int(lost.group(1))
    print(f"\nkill -9 of {victim} under load: {figures}; client errors {dict(load.errors)}")
    return figures


def process_name(victim: str) -> str:
    role, index = victim.rsplit("-", 1)
    return role if role == "qmgr" else f"{role}[{index}]"


def signal_pid(pid: int, sig: int) -> None:
    import os

    os.kill(pid, sig)


@pytest.mark.parametrize("victim", ["acceptor-0", "qmgr-0", "delivery-0", "certify-0"])
def test_kill_9_of_a_child_under_load_loses_nothing(
    sink_server: SinkServer, tmp_path: Path, victim: str
) -> None:
    kill_mid_load(sink_server, tmp_path, victim)


def test_sigterm_stops_the_children_in_order_and_exits_0(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    pid_of(gw, "qmgr-0")
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(60) == 0, gw.log()
    lines = gw.log().splitlines()

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    def stopped(role: str) -> list[int]:
        return [
            i
            for i, line in enumerate(lines)
            if f"certifica/{role}[" in line and ": stopped" in line
        ]

    assert len(stopped("acceptor")) == 2
    assert first("stopping acceptor[0], acceptor[1]") < min(stopped("acceptor"))
    assert max(stopped("acceptor")) < first("master: stopping qmgr") < min(stopped("qmgr"))
    assert max(stopped("qmgr")) < first("master: stopping delivery[0], certify[0]")
    assert first("master: stopping delivery[0], certify[0]") < min(stopped("delivery"))
    assert first("master: stopping delivery[0], certify[0]") < min(stopped("certify"))
    assert max(stopped("delivery") + stopped("certify")) < first("certifica/master: stopped")
    assert_clean_log(gw.log())
    status = gw.cli("status")
    assert status.returncode == 1
    assert "the gateway is not running" in status.stderr


def test_status_lists_every_process(sink_server: SinkServer, tmp_path: Path) -> None:
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    try:
        for name in CHILDREN:
            pid_of(gw, name)
        result = gw.cli("status")
        assert result.returncode == 0, result.stderr
        names = [line.split()[0] for line in result.stdout.splitlines()]
        assert names == [
            "master",
            "qmgr",
            "acceptor[0]",
            "acceptor[1]",
            "delivery[0]",
            "certify[0]",
            "admin",
            "webhooks",
        ], result.stdout
        assert f"pid {gw.proc.pid} " in result.stdout.splitlines()[0]
        assert "supervising 7 children" in result.stdout
    finally:
        gw.stop()
    assert_clean_log(gw.log())


def test_status_of_a_killed_gateway_says_so(sink_server: SinkServer, tmp_path: Path) -> None:
    """After kill -9 of the master its children die with it (PR_SET_PDEATHSIG) and
    ``certifica status`` says the gateway is not running."""
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    children = [pid_of(gw, n) for n in CHILDREN]
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a child outlived the master"
        time.sleep(0.05)
    result = gw.cli("status")
    assert result.returncode == 1
    assert "the gateway is not running" in result.stderr and "killed" in result.stderr


def alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (ended, not yet reaped by init) counts as gone.
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def test_the_acceptors_share_the_listening_sockets(sink_server: SinkServer, tmp_path: Path) -> None:
    """Sessions opened on the one submission port are served by both acceptors."""
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    clients: list[socket.socket] = []
    try:
        pid_of(gw, "acceptor-0"), pid_of(gw, "acceptor-1")
        deadline = time.monotonic() + 30
        while True:
            for _ in range(4):
                sock = socket.create_connection(("127.0.0.1", gw.port()), timeout=10)
                assert sock.recv(512).startswith(b"220")
                clients.append(sock)
            time.sleep(1.2)  # the status files are written at most once a second
            served = {k: v["sessions_total"] for k, v in statuses(gw).items() if "acceptor" in k}
            if all(n > 0 for n in served.values()):
                break
            assert time.monotonic() < deadline, served
    finally:
        for sock in clients:
            sock.close()
        gw.stop()
    assert_clean_log(gw.log())


def test_an_attempt_under_way_when_the_qmgr_dies_is_not_made_twice(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """The queue manager is killed while the delivery agent waits for the MX's reply to
    DATA. The new one hears from the agent that the attempt is still under way: it keeps
    the recipient's lease (no second attempt), and the agent records the outcome."""
    entered, release = threading.Event(), threading.Event()

    def slow(msg: Received) -> str:
        entered.set()
        release.wait(30)  # holds the sinks' event loop: no other session is served
        return "250 2.0.0 Ok: queued as SLOW"

    sink = sink_server.start(Sink(data_reply=slow))
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    try:
        old, agent = pid_of(gw, "qmgr-0"), pid_of(gw, "delivery-0")
        with gw.smtp() as client:
            client.sendmail("alice@example.com", ["bob@example.org"], make_message(cc=""))
        assert entered.wait(30), gw.log()
        signal_pid(old, signal.SIGKILL)
        new = wait_for_new_pid(gw, "qmgr-0", old)
        hello = f"certifica/qmgr[{new}]: delivery[0] pid {agent} connected"
        deadline = time.monotonic() + 30
        while hello not in gw.log():
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        time.sleep(1.0)  # five scans: a released lease would be tried again by now
        release.set()
        sink.wait_for(lambda ms: bool(ms))
        deadline = time.monotonic() + 30
        while (listing := gw.cli("queue", "list")).stdout.strip() != "Mail queue is empty":
            assert time.monotonic() < deadline, listing.stdout
            time.sleep(0.1)
        assert len(sink.to("bob@example.org")) == 1
    finally:
        release.set()
        gw.stop()
    assert_clean_log(gw.log())


def test_a_second_serve_on_the_same_state_directory_is_refused(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """A second master would sweep the first one's spool files as never acknowledged:
    it stops, in one sentence, before touching the queue; the first one goes on."""
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port}, PROCESSES))
    try:
        pid_of(gw, "qmgr-0")
        second = gw.cli("serve")
        assert second.returncode != 0
        assert "in use by another certifica serve" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        with gw.smtp() as client:
            client.sendmail(
                "alice@example.com",
                ["bob@example.org"],
                make_message(to="bob@example.org", subject="after the refused second serve"),
            )
        sink.wait_for(lambda ms: any("after the refused" in m.data.decode() for m in ms))
    finally:
        gw.stop()
    assert_clean_log(gw.log())
