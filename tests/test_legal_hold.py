"""Legal hold (README "Retention", docs/retention.md): ``certifica evidence legal-hold``
and ``certifica evidence holds`` against a running gateway, and retention leaving a
held message whole until the hold is released.
"""

from __future__ import annotations

import json
import smtplib
import sqlite3
import time
from collections.abc import Iterator

import pytest

from relay.config import load_config
from relay.process.gateway import state_paths
from relay.queue import holds, retention
from relay.queue.spool import Spool
from relay.queue.store import Store
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import generated_for, submit
from tests.test_late_bounce import addendum_for, dsn_for
from tests.test_tracking_gateway import cert_id_of

FAR = 10 * 365 * 86400.0  # later than every retention period


@pytest.fixture(scope="module")
def held(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Sink]]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("hold")
    gw = start_gateway(write_config(tmp, {"example.org": sink.port, "example.com": sink.port}))
    yield gw, sink
    gw.stop()
    assert_clean_log(gw.log())


def _certified(gw: Gateway, sink: Sink, subject: str) -> tuple[str, str]:
    qid = submit(gw, make_message(subject=subject), ["bob@example.org", CERT_ADDRESS])
    return qid, cert_id_of(generated_for(sink, qid, "certificate"))


def _events(gw: Gateway, qid: str) -> list[tuple[str, dict]]:  # type: ignore[type-arg]
    with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True) as db:
        return [
            (event, json.loads(detail))
            for event, detail in db.execute(
                "SELECT event, detail FROM evidence WHERE qid = ? ORDER BY seq", (qid,)
            )
        ]


def _apply_far(gw: Gateway) -> retention.Removed:
    paths = state_paths(load_config(gw.config))
    with Store(paths["db"], 30.0) as store:
        return retention.apply(
            store,
            Spool(paths["spool"]),
            paths["certificates"],
            time.time() + FAR,
            content_days=30,
            tracking_days=90,
            evidence_years=5,
        )


def test_a_held_message_keeps_everything_until_released(
    held: tuple[Gateway, Sink],
) -> None:
    gw, sink = held
    kept_qid, kept = _certified(gw, sink, "under dispute")
    other_qid, _ = _certified(gw, sink, "nobody disputes this")
    placed = gw.cli(
        "evidence", "legal-hold", kept.lower(), "--note", "case 12/2026, court of Girona"
    )
    assert placed.returncode == 0, placed.stderr
    assert f"{kept}: legal hold placed on message {kept_qid}" in placed.stdout
    listed = gw.cli("evidence", "holds")
    assert listed.returncode == 0
    assert (
        kept in listed.stdout and kept_qid in listed.stdout and "court of Girona" in listed.stdout
    )
    event, detail = _events(gw, kept_qid)[-1]
    assert event == "LegalHold" and detail["certificate_id"] == kept
    assert detail["note"] == "case 12/2026, court of Girona" and detail["operator"]

    # A late bounce about the held message: the report and its addendum are held too.
    delivered = [m for m in sink.to("bob@example.org") if kept_qid.encode() in m.data[:3000]][0]
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        assert c.rcpt(delivered.mail_from)[0] == 250
        code, text = c.data(dsn_for(delivered.mail_from, "bob@example.org", delivered.data))
        assert code == 250, text
    addendum = cert_id_of(addendum_for(sink, kept_qid))
    paths = state_paths(load_config(gw.config))
    with sqlite3.connect(f"file:{paths['db']}?mode=ro", uri=True) as db:
        (report_qid,) = db.execute(
            "SELECT qid FROM messages WHERE kind = 'dsn' AND parent_qid = ?", (kept_qid,)
        ).fetchone()
    with Store(paths["db"], 30.0) as store:
        assert store.run_sync(lambda d: holds.is_held(d.conn, report_qid))
        assert not store.run_sync(lambda d: holds.is_held(d.conn, other_qid))

    spool = Spool(paths["spool"])
    kept_files = [
        spool.archived(kept_qid),
        spool.archived(report_qid),
        paths["certificates"] / f"{kept}.pdf",
        paths["certificates"] / f"{addendum}.pdf",
    ]
    assert all(f.exists() for f in kept_files)
    before = _events(gw, kept_qid)
    removed = _apply_far(gw)
    assert removed.holds == 1 and removed.content.messages >= 1
    assert all(f.exists() for f in kept_files)  # held: untouched
    assert _events(gw, kept_qid) == before
    assert not Spool(paths["spool"]).archived(other_qid).exists()  # not held: gone

    released = gw.cli("evidence", "legal-hold", kept, "--release", "--note", "case closed")
    assert released.returncode == 0, released.stderr
    assert f"{kept}: legal hold on message {kept_qid} released" in released.stdout
    event, detail = _events(gw, kept_qid)[-1]
    assert event == "LegalHoldReleased" and detail["note"] == "case closed"
    assert "No legal holds" in gw.cli("evidence", "holds").stdout

    # Released, the policy applies again: everything past its time goes.
    removed = _apply_far(gw)
    assert removed.holds == 0
    assert not any(f.exists() for f in kept_files)
    with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True) as db:
        erased = db.execute(
            "SELECT COUNT(*) FROM evidence WHERE qid = ? AND erased IS NULL", (kept_qid,)
        ).fetchone()[0]
    assert erased == 0
    verified = gw.cli("evidence", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_hold_refusals_are_one_sentence(held: tuple[Gateway, Sink]) -> None:
    gw, sink = held
    _, cert = _certified(gw, sink, "twice")
    assert gw.cli("evidence", "legal-hold", cert).returncode == 0
    again = gw.cli("evidence", "legal-hold", cert, "--note", "another")
    assert again.returncode == 1 and "already under legal hold since" in again.stdout
    unknown = gw.cli("evidence", "legal-hold", "CF-0000000000000000")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().splitlines()[-1] == (
        "certifica: no certificate CF-0000000000000000 was issued by this gateway"
    )
    bad = gw.cli("evidence", "legal-hold", "not an id")
    assert bad.returncode == 2 and "is not a certificate id" in bad.stderr
    not_held = gw.cli("evidence", "legal-hold", "CF-0000000000000000", "--release")
    assert not_held.returncode == 2 and "is not under legal hold" in not_held.stderr
    for out in (again, unknown, bad, not_held):
        assert "Traceback" not in out.stdout + out.stderr
    assert gw.cli("evidence", "legal-hold", cert, "--release").returncode == 0


def test_a_hold_placed_after_the_content_went_says_so(held: tuple[Gateway, Sink]) -> None:
    gw, sink = held
    qid, cert = _certified(gw, sink, "late hold")
    paths = state_paths(load_config(gw.config))
    with Store(paths["db"], 30.0) as store:
        gone = retention.remove_content(store, Spool(paths["spool"]), time.time() + 31 * 86400, 30)
    assert gone.messages >= 1
    placed = gw.cli("evidence", "legal-hold", cert)
    assert placed.returncode == 0, placed.stderr
    assert "its content was removed before the hold, after 30 days" in placed.stdout
    assert gw.cli("evidence", "legal-hold", cert, "--release").returncode == 0
