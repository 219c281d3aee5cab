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


def _evidence_due_now(store: Store, qid: str) -> retention.Due:
    """What retention's pass decides, far in the future, about ``qid``: due or not."""
    cutoff = retention.years_before(time.time() + FAR, 5)
    due: retention.Due = []
    after = ""
    while True:
        found = store.run_sync(
            lambda d, after=after: retention._evidence_due(d.conn, after, cutoff)  # type: ignore[misc]
        )
        if found is None:
            return [d for d in due if d[0] == qid]
        after, batch = found
        due += batch


def test_a_hold_placed_after_retention_decided_still_keeps_the_pdf(
    held: tuple[Gateway, Sink],
) -> None:
    """Retention decides which evidence is due in one transaction and deletes the PDFs
    after it: a hold placed in between (by ``certifica evidence legal-hold``) keeps
    them, as the holds are read again, under the archive lock, right before deleting."""
    gw, sink = held
    qid, cert = _certified(gw, sink, "held at the last moment")
    paths = state_paths(load_config(gw.config))
    pdf = paths["certificates"] / f"{cert}.pdf"
    with Store(paths["db"], 30.0) as store:
        due = _evidence_due_now(store, qid)
        assert [q for q, _ in due] == [qid] and cert in due[0][1]
        placed = gw.cli("evidence", "legal-hold", cert, "--note", "just in time")
        assert placed.returncode == 0, placed.stderr
        left, deleted = retention._delete_pdfs(store, None, paths["certificates"], due)
    assert left == [] and deleted == 0
    assert pdf.exists()
    assert gw.cli("evidence", "legal-hold", cert, "--release").returncode == 0
    with Store(paths["db"], 30.0) as store:  # released, the same decision deletes it
        left, deleted = retention._delete_pdfs(store, None, paths["certificates"], due)
    assert left == due and deleted >= 1
    assert not pdf.exists()


def test_deleting_renewing_and_placing_a_hold_wait_for_the_archive_lock(
    held: tuple[Gateway, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the archive lock is held (another process replacing or deleting a file),
    retention's deletion, an erasure, a renewal's replacement and the placing of a hold
    each wait for it; here they give up after a short wait, and nothing has changed."""
    import argparse
    import hashlib

    from relay.certify.renewal import publish
    from relay.cli.common import UserError
    from relay.cli.legal_hold import cmd_legal_hold
    from relay.queue import archive, erasure

    gw, sink = held
    qid, cert = _certified(gw, sink, "locked archive")
    paths = state_paths(load_config(gw.config))
    certificates = paths["certificates"]
    pdf = certificates / f"{cert}.pdf"
    before = pdf.read_bytes()
    monkeypatch.setattr(archive, "TIMEOUT", 0.2)
    with archive.archive_lock(certificates), Store(paths["db"], 30.0) as store:
        with pytest.raises(archive.ArchiveBusy):
            retention._delete_pdfs(store, None, certificates, [(qid, [cert])])
        with pytest.raises(archive.ArchiveBusy):
            erasure.erase(
                store, "bob@example.org", b"k" * 32, paths["spool"], certificates, "test", 0.0
            )
        with pytest.raises(archive.ArchiveBusy):
            publish(pdf, before + b"%renewed\n", hashlib.sha256(before).hexdigest())
        with pytest.raises(UserError, match="stayed busy"):
            cmd_legal_hold(
                argparse.Namespace(config=str(gw.config), certificate=cert, note="", release=False)
            )
        assert not store.run_sync(lambda d: holds.is_held(d.conn, qid))
    assert pdf.read_bytes() == before
    placed = gw.cli("evidence", "legal-hold", cert)  # the lock free, it is placed at once
    assert placed.returncode == 0, placed.stderr
    assert gw.cli("evidence", "legal-hold", cert, "--release").returncode == 0
