"""Retention through the running gateway (README "Retention", docs/retention.md).

Certified and plain mail go through a real gateway; then the retention functions of
:mod:`relay.queue.retention` run against its database and state directory with ``now``
moved forward (days, months, years), as the daily task would run them then. What
must hold: what is due goes (files, columns, evidence values), what is not due stays,
the evidence chain still verifies, the certificate the sender holds still verifies,
documents made after the content went say why they have no message, and the daily task
ran at the gateway's start. ``certifica retention run`` is tested with a message aged
in the database (its ``done_at`` moved back), the one thing a test cannot wait for.
"""

from __future__ import annotations

import hashlib
import json
import re
import smtplib
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay.config import load_config
from relay.process.gateway import state_paths
from relay.queue import retention
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.web.pages import mask_address
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
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_late_bounce import dsn_for
from tests.test_tracking_e2e import addenda, copy_for, fetch, free_port, html_message
from tests.test_tracking_gateway import cert_id_of, pdf_evidence, tracking_urls

DAY = 86400.0
YEAR = 365 * DAY


@dataclass
class World:
    gw: Gateway
    sink: Sink
    base: str
    qid: str  # certified, tracked, opened once
    cert_id: str
    certificate: Path  # the PDF the sender got
    plain: str  # plain mail to a recipient that took it

    def store(self) -> Store:
        return Store(self.gw.state / "queue.db", 30.0)

    def spool(self) -> Spool:
        return Spool(self.gw.state / "spool")

    def certificates(self) -> Path:
        return state_paths(load_config(self.gw.config))["certificates"]

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.gw.state / 'queue.db'}?mode=ro", uri=True)

    def message(self, qid: str) -> dict[str, Any]:
        with self.db() as db:
            db.row_factory = sqlite3.Row
            return dict(db.execute("SELECT * FROM messages WHERE qid = ?", (qid,)).fetchone())

    def recipients(self, qid: str) -> list[dict[str, Any]]:
        with self.db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM recipients WHERE qid = ?", (qid,))]

    def evidence(self, qid: str) -> list[dict[str, Any]]:
        with self.db() as db:
            db.row_factory = sqlite3.Row
            return [
                dict(r)
                for r in db.execute("SELECT * FROM evidence WHERE qid = ? ORDER BY seq", (qid,))
            ]


def _wait(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def world(sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("retention")
    port = free_port()
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += (
        f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n[tracking]\nenabled = true\n'
        "addendum_interval = 0.0\nfast_seconds = 0.0\n"
        "[retention]\ncontent_days = 1\ntracking_days = 1\nevidence_years = 1\n"
    )
    cfg.write_text(text)
    gw = start_gateway(cfg)
    base = f"http://127.0.0.1:{port}"
    qid = submit(gw, html_message("bob@example.org"), ["bob@example.org", CERT_ADDRESS])
    mail = generated_for(sink, qid, "certificate")
    certificate = certificate_pdf(mail, tmp / "certificate.pdf")
    _, pixels = tracking_urls(copy_for(sink, "bob@example.org", qid), base)
    assert fetch(pixels[0])[0] == 200  # an open: its IP address and user agent are kept
    sink.wait_for(lambda ms: len(addenda(sink, qid)) >= 1, timeout=90)
    plain = submit(gw, make_message(cc="", to="carol@example.org"), ["carol@example.org"])
    _wait(lambda: f"{plain}: removed" in gw.log(), "the plain message leaving the queue")
    yield World(gw, sink, base, qid, cert_id_of(mail), certificate, plain)
    gw.stop()
    assert_clean_log(gw.log())


def test_the_daily_task_ran_at_start(world: World) -> None:
    _wait(lambda: "maintenance: retention: " in world.gw.log(), "the retention task's log line")
    line = next(x for x in world.gw.log().splitlines() if "maintenance: retention: " in x)
    assert re.search(r"content of \d+ messages? \(\d+ files?\)", line), line
    with world.db() as db:
        row = db.execute(
            "SELECT last_run FROM maintenance_runs WHERE task = 'retention'"
        ).fetchone()
    assert row is not None and abs(row[0] - time.time()) < 600


def test_dry_run_changes_nothing(world: World) -> None:
    archived = world.spool().archived(world.qid)
    before = world.message(world.qid), world.evidence(world.qid)
    with world.store() as store:
        found = retention.apply(
            store,
            world.spool(),
            world.certificates(),
            time.time() + 10 * YEAR,
            content_days=30,
            tracking_days=90,
            evidence_years=5,
            dry_run=True,
        )
    assert found.content.messages >= 2 and found.content.files >= 1  # the certified and the plain
    assert found.tracking.events >= 1 and found.tracking.entries >= 1
    assert found.evidence.messages >= 2 and found.evidence.pdfs >= 2  # certificate and addendum
    assert archived.exists()
    assert (world.message(world.qid), world.evidence(world.qid)) == before
    assert world.gw.cli("retention", "run", "--dry-run").returncode == 0


def test_a_pass_asked_to_stop_stops_before_its_next_batch(world: World) -> None:
    """The daily task sets ``stop`` when the worker stops: the pass ends before it
    touches the database again (a pass interrupted later resumes at the next run)."""
    before = world.message(world.qid), world.evidence(world.qid)
    stop = threading.Event()
    stop.set()
    with world.store() as store, pytest.raises(retention.Stopped):
        retention.apply(
            store,
            world.spool(),
            world.certificates(),
            time.time() + 10 * YEAR,
            content_days=30,
            tracking_days=90,
            evidence_years=5,
            stop=stop,
        )
    assert (world.message(world.qid), world.evidence(world.qid)) == before


# The passes below move time forward in order (content, tracking, evidence), each once
# per module, as fixtures: a test selected alone still finds the passes it follows made.


@pytest.fixture(scope="module")
def content_gone(world: World) -> tuple[retention.ContentRemoval, ...]:
    """Content passes at 29 days (nothing due), 31 days, and 31 days again."""
    assert world.spool().archived(world.qid).exists()
    assert world.message(world.plain)["header_section"]
    assert any(r["delivered_copy"] for r in world.recipients(world.qid))
    with world.store() as store:
        return tuple(
            retention.remove_content(store, world.spool(), time.time() + days * DAY, 30)
            for days in (29, 31, 31)
        )


@pytest.fixture(scope="module")
def tracking_gone(world: World) -> tuple[int, retention.TrackingRemoval, retention.TrackingRemoval]:
    """How many hits had an IP address, then tracking passes at 89 and 91 days."""
    with world.db() as db:
        (before,) = db.execute(
            "SELECT COUNT(*) FROM tracking_events WHERE qid = ? AND ip != ''", (world.qid,)
        ).fetchone()
    with world.store() as store:
        early = retention.remove_tracking(store, time.time() + 89 * DAY, 90)
        removed = retention.remove_tracking(store, time.time() + 91 * DAY, 90)
    return before, early, removed


@pytest.fixture(scope="module")
def evidence_gone(
    world: World, content_gone: object, tracking_gone: object
) -> tuple[list[str], retention.EvidenceRemoval, retention.EvidenceRemoval]:
    """The documents issued about the tracked message (all kept until now), then
    evidence passes at 4 and 6 years."""
    with world.db() as db:
        documents = [
            r[0]
            for r in db.execute("SELECT cert_id FROM verifications WHERE qid = ?", (world.qid,))
        ]
    assert all((world.certificates() / f"{c}.pdf").exists() for c in documents)
    with world.store() as store:
        early = retention.remove_evidence(store, world.certificates(), time.time() + 4 * YEAR, 5)
        removed = retention.remove_evidence(store, world.certificates(), time.time() + 6 * YEAR, 5)
    return documents, early, removed


def test_content_goes_after_content_days(
    world: World, content_gone: tuple[retention.ContentRemoval, ...]
) -> None:
    archived = world.spool().archived(world.qid)
    early, removed, again = content_gone
    assert early == retention.ContentRemoval(0, 0)
    assert removed.messages >= 2 and removed.files >= 1
    assert again == retention.ContentRemoval(0, 0)  # done once, recorded once
    assert not archived.exists()
    assert world.message(world.plain)["header_section"] is None
    assert not any(r["delivered_copy"] for r in world.recipients(world.qid))
    entries = [e for e in world.evidence(world.qid) if e["event"] == "ContentRemoved"]
    assert len(entries) == 1 and json.loads(entries[0]["detail"])["content_days"] == 30
    # What proves the message stays: its hash, the certificate kept.
    assert world.message(world.qid)["sha256"]
    assert (world.certificates() / f"{world.cert_id}.pdf").exists()


def test_addenda_after_the_content_went_say_why(
    world: World, content_gone: object, tmp_path: Path
) -> None:
    """An open and a late bounce after content_days: each addendum is made without the
    message and states that retention removed it; no error reaches the log."""
    assert not world.spool().archived(world.qid).exists()
    seen = len(addenda(world.sink, world.qid))
    _, pixels = tracking_urls(copy_for(world.sink, "bob@example.org", world.qid), world.base)
    assert fetch(pixels[0])[0] == 200
    world.sink.wait_for(lambda ms: len(addenda(world.sink, world.qid)) > seen, timeout=90)
    opened = addenda(world.sink, world.qid)[-1]
    evidence = _checked_without_content(world, opened, tmp_path / "open")
    assert evidence["tracking"]["events"]

    seen = len(addenda(world.sink, world.qid))
    delivered = copy_for(world.sink, "bob@example.org", world.qid)
    with smtplib.SMTP("127.0.0.1", world.gw.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        assert c.rcpt(delivered.mail_from)[0] == 250
        code, text = c.data(dsn_for(delivered.mail_from, "bob@example.org", delivered.data))
        assert code == 250, text
    world.sink.wait_for(lambda ms: len(addenda(world.sink, world.qid)) > seen, timeout=90)
    late = addenda(world.sink, world.qid)[-1]
    evidence = _checked_without_content(world, late, tmp_path / "late")
    assert evidence["late_bounce"]["reports"][0]["recipient"] == "bob@example.org"
    log = world.gw.log()
    assert f"{world.qid}: content removed by retention" in log
    assert "SpoolFileMissing" not in json.dumps(world.evidence(world.qid))

    # certifica addendum CERT-ID makes one without the message too.
    out = tmp_path / "now.pdf"
    made = world.gw.cli("addendum", world.cert_id, "-o", str(out))
    assert made.returncode == 0, made.stderr
    assert (
        "retention policy" in pdf_evidence(out, tmp_path / "now")["message"]["content_unavailable"]
    )


def _checked_without_content(world: World, mail: Received, dest: Path) -> dict[str, Any]:
    dest.mkdir()
    pdf = certificate_pdf(mail, dest / "addendum.pdf")
    evidence = pdf_evidence(pdf, dest / "files")
    assert evidence["kind"] == "addendum" and evidence["addendum_of"] == world.cert_id
    reason = evidence["message"]["content_unavailable"]
    assert "retention policy" in reason and "30 days" in reason
    assert not (dest / "files" / "message.eml").exists()
    checked = world.gw.cli("verify", str(pdf))
    assert checked.returncode == 3, checked.stdout + checked.stderr  # content not certified
    assert "retention policy" in checked.stdout
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "retention policy" in " ".join(text.split())
    return evidence


def test_tracking_goes_after_tracking_days(
    world: World, tracking_gone: tuple[int, retention.TrackingRemoval, retention.TrackingRemoval]
) -> None:
    before, early, removed = tracking_gone
    assert before >= 1 and early.events == 0
    assert removed.events >= before and removed.entries >= before
    with world.db() as db:
        left = db.execute(
            "SELECT ip, user_agent, automatic, reason FROM tracking_events WHERE qid = ?",
            (world.qid,),
        ).fetchall()
    assert left and all(ip == "" and ua == "" and reason for ip, ua, _, reason in left)
    hits = [e for e in world.evidence(world.qid) if e["event"] in retention.TRACKING_EVENTS]
    for hit in hits:
        detail = json.loads(hit["detail"])
        assert detail["erased"] is True and hit["erased"] is not None
        assert "ip" not in detail and "user_agent" not in detail and "url" not in detail
        assert {"link", "method", "automatic", "reason"} <= set(detail)
    verified = world.gw.cli("evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_evidence_goes_after_evidence_years(
    world: World,
    evidence_gone: tuple[list[str], retention.EvidenceRemoval, retention.EvidenceRemoval],
    tmp_path: Path,
) -> None:
    certificates = world.certificates()
    documents, early, removed = evidence_gone
    assert len(documents) >= 2  # the certificate and the first addendum, at least
    assert early.messages == 0
    assert removed.pdfs >= len(documents) and removed.entries >= 5
    assert not any((certificates / f"{c}.pdf").exists() for c in documents)
    message = world.message(world.qid)
    assert message["sender"] == "" and message["client_ip"] is None
    assert message["sha256"] and message["cert_id"] == world.cert_id  # the proof stays
    assert all(r["address"] == "" and r["delivered_sha256"] for r in world.recipients(world.qid))
    assert all(
        e["erased"] is not None and e["recipient"] is None for e in world.evidence(world.qid)
    )
    assert "bob@example.org" not in json.dumps(world.evidence(world.qid))
    with world.db() as db:
        pages = db.execute(
            "SELECT recipients, pdf_sha256 FROM verifications WHERE qid = ?", (world.qid,)
        ).fetchall()
    assert pages and all(r is None and sha for r, sha in pages)
    assert world.recipients(world.plain)[0]["address"] == ""
    # Opening the mail or clicking its links now records nothing: nobody to tell.
    hits = len(world.evidence(world.qid))
    clicks, pixels = tracking_urls(copy_for(world.sink, "bob@example.org", world.qid), world.base)
    assert fetch(pixels[0])[0] == 200 and fetch(clicks[0])[0] == 404
    assert len(world.evidence(world.qid)) == hits
    # The chain still verifies, and so does the certificate the sender holds.
    verified = world.gw.cli("evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    checked = world.gw.cli("verify", str(world.certificate))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The verification page still confirms it: its record keeps the PDF's hash.
    url = pdf_evidence(world.certificate, tmp_path / "held")["verification"]["url"]
    status, _, page = fetch(url)
    sha = hashlib.sha256(world.certificate.read_bytes()).hexdigest()
    assert status == 200 and sha[:8] in page.decode(), page[:2000]
    assert mask_address("bob@example.org") not in page.decode()  # the recipients went


def test_retention_run_with_real_ages(world: World) -> None:
    """``certifica retention run`` with the configured ages (1 day, 1 year): a message
    that left the queue two days ago loses its content, a newer one keeps it."""
    qid = submit(world.gw, make_message(subject="aged"), ["bob@example.org", CERT_ADDRESS])
    generated_for(world.sink, qid, "certificate")
    fresh = submit(world.gw, make_message(subject="fresh"), ["bob@example.org", CERT_ADDRESS])
    generated_for(world.sink, fresh, "certificate")
    with sqlite3.connect(world.gw.state / "queue.db") as db:  # two days pass for one of them
        db.execute("UPDATE messages SET done_at = done_at - 2 * 86400 WHERE qid = ?", (qid,))
    dry = world.gw.cli("retention", "run", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "content (kept 1 day): would remove the content of 1 message (1 file)" in dry.stdout
    assert world.spool().archived(qid).exists()
    run = world.gw.cli("retention", "run")
    assert run.returncode == 0, run.stderr
    assert "content (kept 1 day): removed the content of 1 message (1 file)" in run.stdout
    assert "evidence (kept 1 year): removed the evidence of 0 messages" in run.stdout
    assert not world.spool().archived(qid).exists()
    assert world.spool().archived(fresh).exists()


def test_years_are_calendar_years() -> None:
    """``evidence_years`` counts calendar years: 29 February goes back to 28 February,
    and five years before a date in March span the leap days between."""
    from datetime import UTC, datetime

    def at(*ymd: int) -> float:
        return datetime(*ymd, 12, tzinfo=UTC).timestamp()

    assert retention.years_before(at(2028, 2, 29), 5) == at(2023, 2, 28)
    assert retention.years_before(at(2031, 3, 1), 5) == at(2026, 3, 1)
    assert retention.years_before(at(2031, 3, 1), 5) < at(2031, 3, 1) - 5 * YEAR
