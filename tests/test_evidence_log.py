"""The hash-chained evidence log, its RFC 3161 checkpoints, and their offline checks.

The chain itself on a real SQLite database (tamper tests flip one byte of one stored
field; a property test appends anything); checkpoints made by the in-process TSA of a
real development PKI and checked by pyHanko's validator and by ``openssl ts -verify``;
certificates signed for real and verified by :func:`certifier.verify.verify_certificate`;
and the running gateway: a certificate that arrives at the sink carries its entries in
full, ``certifica verify`` rejects one whose evidence was altered and re-signed, and
``certifica evidence verify`` checks the gateway's database and exports its checkpoints.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyhanko.sign.timestamps import HTTPTimeStamper, TimeStamper

from certifier import checkpoints, evidence
from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import SigningSettings, build_signer, render_and_sign
from certifier.signing import DocumentSigner
from certifier.tsa import make_timestamper
from certifier.verify import verify_certificate
from relay.certify.checkpoints import NO_CHECKPOINT_YET, Checkpointer, evidence_log_section
from relay.queue import evidence_log
from relay.queue.store import Store, migrate
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certificate_pdf import EML, failed, make_evidence
from tests.test_certified_sending import certificate_pdf, generated_for, submit

QID = "4F2A1B3C9D"

# --- helpers ----------------------------------------------------------------------------


def new_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)  # the gateway's own migrations: the evidence and checkpoint tables
    return conn


def fill(conn: sqlite3.Connection, n: int = 6, qid: str = QID) -> list[evidence.Entry]:
    start = 1_763_892_000.123456
    out = []
    for i in range(n):
        out.append(
            evidence_log.append(
                conn,
                start + i * 0.25,
                qid if i % 2 == 0 else "OTHER0001",
                "RelayToNonERDS" if i else "SubmissionAcceptance",
                {"reply": f"250 2.0.0 Ok: queued as R{i}", "ip": "192.0.2.7", "n": i},
                recipient=None if i == 0 else f"rcpt{i}@example.org",
            )
        )
    return out


def flip_text(value: str, pos: int) -> str:
    """One byte changed: an ASCII character with its lowest bit flipped."""
    pos %= len(value)
    return value[:pos] + chr(ord(value[pos]) ^ 0x01) + value[pos + 1 :]


def flip_float(value: float) -> float:
    """One byte of the stored double changed (its lowest mantissa byte)."""
    raw = bytearray(struct.pack("<d", value))
    raw[0] ^= 0x01
    return float(struct.unpack("<d", bytes(raw))[0])


def timeline_of(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The certificate's timeline for *entries*, as relay.queue.manager.build_evidence writes it."""
    return [
        {
            "time": evidence.iso_time(float(e["time"])),
            "event": e["event"],
            "recipient": e["recipient"],
            "detail": "",
        }
        for e in entries
    ]


def excerpt_log(conn: sqlite3.Connection, qid: str = QID) -> dict[str, Any]:
    seqs = [e.seq for e in evidence_log.entries_for(conn, qid)]
    entries = evidence_log.excerpt(conn, seqs)
    return {
        "format": evidence.EXCERPT_FORMAT,
        "head": entries[-1]["hash"] if entries else evidence.GENESIS,
        "entries": entries,
        "checkpoint": None,
    }


def make_checkpoint(conn: sqlite3.Connection, stamper: TimeStamper) -> checkpoints.Checkpoint:
    head = evidence_log.head(conn)
    assert head is not None
    now = time.time()
    imprint = hashlib.sha256(checkpoints.statement(head[0], head[1], now)).digest()
    token = asyncio.run(stamper.async_timestamp(imprint, "sha256")).dump()
    made = checkpoints.Checkpoint(
        head[0], head[1], now, checkpoints.token_time(token).timestamp(), token
    )
    evidence_log.record_checkpoint(conn, made)
    return made


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("keys") / "pki", "certifica.localhost")


@pytest.fixture(scope="module")
def roots(pki: Pki) -> list[Any]:
    from pyhanko.keys import load_certs_from_pemder

    return list(load_certs_from_pemder([str(pki.ca_cert)]))


@pytest.fixture(scope="module")
def stamper(pki: Pki) -> TimeStamper:
    return make_timestamper(pki, None)


@pytest.fixture(scope="module")
def signer(pki: Pki) -> DocumentSigner:
    return build_signer(SigningSettings.from_pki(pki))


# --- the chain ----------------------------------------------------------------------------


def test_appended_entries_verify() -> None:
    conn = new_db()
    assert evidence_log.verify_chain(conn) == (True, 0, "")
    fill(conn)
    assert evidence_log.verify_chain(conn) == (True, 6, "")
    assert list(evidence_log.chain_problems(conn)) == []
    assert evidence_log.head(conn) == (6, evidence_log.entries_for(conn, "OTHER0001")[-1].hash)


FIELDS = ["detail", "event", "time", "prev_hash", "hash", "qid", "recipient"]


@pytest.mark.parametrize("seq", [1, 2, 4, 6])
@pytest.mark.parametrize("column", FIELDS)
def test_one_changed_byte_names_the_first_broken_entry(column: str, seq: int) -> None:
    conn = new_db()
    fill(conn)
    (value,) = conn.execute(f"SELECT {column} FROM evidence WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
    if column == "recipient" and value is None:
        value = "x"  # entry 1 has no recipient: giving it one is a change too
        changed: object = value
    elif column == "time":
        changed = flip_float(value)
    else:
        changed = flip_text(value, seq * 7)
    conn.execute(f"UPDATE evidence SET {column} = ? WHERE seq = ?", (changed, seq))  # noqa: S608
    ok, checked, problem = evidence_log.verify_chain(conn)
    assert not ok
    assert problem.startswith(f"entry {seq} "), problem
    assert checked == seq
    problems = list(evidence_log.chain_problems(conn))
    assert problems and problems[0][0] == seq
    # Only the changed entry and, for its hash, the link to the next one are reported.
    assert {s for s, _ in problems} <= {seq, seq + 1}


def test_a_removed_entry_is_named() -> None:
    conn = new_db()
    fill(conn)
    conn.execute("DELETE FROM evidence WHERE seq = 3")
    problems = [p for _, p in evidence_log.chain_problems(conn)]
    assert problems == [
        "entry 3 is missing before entry 4",
        "entry 4 does not follow the previous entry",
    ]
    assert not evidence_log.verify_chain(conn)[0]


def test_an_int_time_is_hashed_as_stored() -> None:
    # The column is REAL: 5 comes back as 5.0, and repr(5) != repr(5.0).
    conn = new_db()
    evidence_log.append(conn, 1_763_892_000, QID, "SubmissionAcceptance", {})
    assert evidence_log.verify_chain(conn)[0]


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
_appends = st.lists(
    st.tuples(
        st.floats(min_value=1e9, max_value=4e9) | st.integers(min_value=10**9, max_value=4 * 10**9),
        st.sampled_from(["QA", "QB", "Q\u00e9"]) | st.text(min_size=1, max_size=12),
        st.text(min_size=1, max_size=30),
        st.dictionaries(st.text(max_size=10), _json, max_size=5),
        st.none() | st.text(max_size=40),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(appends=_appends)
def test_any_sequence_of_appends_verifies(appends: list[tuple[Any, ...]]) -> None:
    conn = new_db()
    for when, qid, event, detail, recipient in appends:
        evidence_log.append(conn, when, qid, event, detail, recipient=recipient)
    assert evidence_log.verify_chain(conn) == (True, len(appends), "")
    # Each message's excerpt, as a certificate embeds it, verifies offline too.
    for qid in {a[1] for a in appends}:
        log = excerpt_log(conn, qid)
        report = evidence.verify_excerpt(log, timeline_of(log["entries"]), qid)
        assert report.problems == (), report.problems


# --- the offline check of a certificate's excerpt ------------------------------------------


def test_excerpt_verifies_and_counts_its_links() -> None:
    conn = new_db()
    fill(conn)
    log = excerpt_log(conn)  # entries 1, 3, 5: no two consecutive
    report = evidence.verify_excerpt(log, timeline_of(log["entries"]), QID)
    assert report.problems == ()
    assert "3 log entries (#1 to #5)" in report.summary and "0 of 2 links" in report.summary
    # A message with consecutive entries has them linked.
    evidence_log.append(conn, time.time(), QID, "CertificateIssued", {})
    evidence_log.append(conn, time.time(), QID, "NoticeSent", {})
    log = excerpt_log(conn)
    report = evidence.verify_excerpt(log, timeline_of(log["entries"]), QID)
    assert report.problems == () and "1 of 4 links" in report.summary


@pytest.mark.parametrize("key", ["detail", "event", "time", "qid", "recipient", "prev", "hash"])
def test_excerpt_with_one_changed_byte_fails(key: str) -> None:
    conn = new_db()
    fill(conn)
    log = excerpt_log(conn)
    timeline = timeline_of(log["entries"])
    entry = log["entries"][1]  # seq 3
    entry[key] = flip_text(entry[key], 3)
    report = evidence.verify_excerpt(log, timeline, QID)
    assert report.problems, f"{key} changed and the excerpt still verified"
    assert any("entry 3" in p or "entry 2 in" in p for p in report.problems), report.problems


def test_excerpt_and_timeline_must_agree() -> None:
    conn = new_db()
    fill(conn)
    log = excerpt_log(conn)
    timeline = timeline_of(log["entries"])
    timeline[2]["event"] = "RelayToNonERDSFailure"
    problems = evidence.verify_excerpt(log, timeline, QID).problems
    assert problems == ("the timeline says 'RelayToNonERDSFailure' for entry 5",)
    shorter = evidence.verify_excerpt(log, timeline[:2], QID).problems
    assert shorter == ("the timeline has 2 events, the log excerpt 3",)
    dropped = dict(log, entries=log["entries"][:2])  # an entry left out
    assert "head" in " ".join(evidence.verify_excerpt(dropped, timeline[:2], QID).problems)
    assert evidence.verify_excerpt(log, timeline_of(log["entries"]), "ANOTHER").problems


@pytest.mark.parametrize(
    "log",
    [None, [], {"entries": "nope"}, {"entries": [1, None, {"seq": True}]}, {"entries": [{}]}],
)
def test_excerpt_check_never_raises(log: object) -> None:
    assert evidence.verify_excerpt(log, [], QID).problems


@settings(max_examples=100, deadline=None)
@given(
    log=st.none() | _json | st.fixed_dictionaries({"format": st.just("x"), "entries": _json}),
    timeline=_json,
    entries=st.lists(
        st.fixed_dictionaries(
            {
                "seq": st.integers() | st.booleans(),
                "time": st.text(max_size=30)
                | st.floats().map(repr)
                | st.integers(-(10**30), 10**30).map(lambda n: repr(float(n))),
                "qid": st.just(QID) | _json,
                "recipient": _json,
                "event": st.text(max_size=8),
                "detail": st.text(max_size=8),
                "prev": st.just("0" * 64) | st.text(max_size=64),
                "hash": st.just("a" * 64) | st.text(max_size=64),
            }
        ),
        max_size=4,
    ),
)
def test_excerpt_check_never_raises_on_hostile_evidence(
    log: object, timeline: object, entries: list[dict[str, Any]]
) -> None:
    evidence.verify_excerpt(log, timeline, QID)
    report = evidence.verify_excerpt({"format": "x", "entries": entries}, timeline, QID)
    if entries:
        assert report.problems  # made-up hashes never verify


# --- checkpoints --------------------------------------------------------------------------


def test_checkpoint_token_timestamps_the_head(stamper: TimeStamper, roots: list[Any]) -> None:
    conn = new_db()
    fill(conn)
    made = make_checkpoint(conn, stamper)
    assert (made.seq, made.head) == evidence_log.head(conn)
    assert abs(made.tsa_time - made.time) < 60
    checked = checkpoints.check_token(made.token, made.statement(), roots)
    assert checked.ok, checked.detail
    audit = evidence_log.audit(conn, roots)
    assert audit.ok, audit.problems
    assert audit.summary().endswith(": OK")
    assert "1 checkpoint(s), the last covering #6" in audit.summary()
    # The statement is what the token covers; any other statement is refused.
    other = checkpoints.statement(made.seq, made.head, made.time + 1)
    assert not checkpoints.check_token(made.token, other, roots).ok
    assert (
        "not checked against a trust anchor"
        in checkpoints.check_token(made.token, made.statement(), []).detail
    )


def test_a_consistent_rewrite_of_history_fails_the_checkpoint(
    stamper: TimeStamper, roots: list[Any]
) -> None:
    conn = new_db()
    fill(conn)
    make_checkpoint(conn, stamper)
    # The operator edits entry 2 and recomputes every hash after it: the chain holds...
    rows = conn.execute(
        "SELECT seq, time, qid, recipient, event, detail, salt FROM evidence ORDER BY seq"
    ).fetchall()
    prev = evidence.GENESIS
    for seq, when, qid, recipient, event, detail, salt in rows:
        if seq == 2:
            detail = detail.replace("250", "550")
        committed = evidence.commitment(salt, recipient, detail)
        digest = evidence.entry_hash_v2(prev, seq, when, qid, event, committed)
        conn.execute(
            "UPDATE evidence SET detail = ?, commitment = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (detail, committed, prev, digest, seq),
        )
        prev = digest
    assert evidence_log.verify_chain(conn)[0]
    # ...but the timestamped head no longer matches.
    audit = evidence_log.audit(conn, roots)
    assert audit.problems == [
        "checkpoint #6: entry 6's hash is not the timestamped head (the log up to it was rewritten)"
    ]


def test_removed_entries_and_an_edited_checkpoint_fail(
    stamper: TimeStamper, roots: list[Any]
) -> None:
    conn = new_db()
    fill(conn)
    make_checkpoint(conn, stamper)
    conn.execute("DELETE FROM evidence WHERE seq >= 5")  # the chain alone cannot see this
    assert evidence_log.verify_chain(conn)[0]
    assert evidence_log.audit(conn, roots).problems == [
        "checkpoint #6: entry 6 is not in the log (entries removed)"
    ]
    conn = new_db()
    fill(conn)
    made = make_checkpoint(conn, stamper)
    conn.execute("UPDATE evidence_checkpoints SET time = ?", (flip_float(made.time),))
    (problem,) = evidence_log.audit(conn, roots).problems
    assert problem.startswith("checkpoint #6: the token (") and "does not timestamp" in problem
    conn.execute(
        "UPDATE evidence_checkpoints SET time = ?, token = ?", (made.time, made.token[:-40])
    )
    (problem,) = evidence_log.audit(conn, roots).problems
    assert problem.startswith("checkpoint #6: the token")


def test_a_foreign_tsa_is_not_trusted(tmp_path: Path, roots: list[Any]) -> None:
    forger = ensure_dev_pki(tmp_path / "forger", "certifica.localhost")
    conn = new_db()
    fill(conn)
    make_checkpoint(conn, make_timestamper(forger, None))
    (problem,) = evidence_log.audit(conn, roots).problems
    assert "does not chain to a trusted root" in problem


def test_exported_checkpoint_passes_openssl_ts_verify(
    stamper: TimeStamper, pki: Pki, tmp_path: Path
) -> None:
    conn = new_db()
    fill(conn, 3)
    make_checkpoint(conn, stamper)
    fill(conn, 2)
    make_checkpoint(conn, stamper)
    written = checkpoints.export(evidence_log.all_checkpoints(conn), tmp_path / "out")
    names = sorted(p.name for p in written)
    assert names == [
        "checkpoint-0000000003.dat",
        "checkpoint-0000000003.tst",
        "checkpoint-0000000005.dat",
        "checkpoint-0000000005.tst",
    ]
    for stem in ("checkpoint-0000000003", "checkpoint-0000000005"):
        assert openssl_ts_verify(tmp_path / "out" / stem, pki.ca_cert)
    # One byte of the statement changed: openssl refuses it as well.
    dat = tmp_path / "out" / "checkpoint-0000000005.dat"
    dat.write_bytes(dat.read_bytes().replace(b'",5,"', b'",4,"'))
    assert not openssl_ts_verify(tmp_path / "out" / "checkpoint-0000000005", pki.ca_cert)


def openssl_ts_verify(stem: Path, ca: Path) -> bool:
    out = subprocess.run(
        [
            "openssl",
            "ts",
            "-verify",
            "-data",
            str(stem.with_suffix(".dat")),
            "-in",
            str(stem.with_suffix(".tst")),
            "-token_in",
            "-CAfile",
            str(ca),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return "Verification: OK" in out.stdout


# --- the periodic task --------------------------------------------------------------------


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "queue.db", 3600)
    yield s
    s.close()


async def wait_for_checkpoint(store: Store, seq: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        latest = await store.latest_checkpoint()
        if latest is not None and latest.seq >= seq:
            return
        assert time.monotonic() < deadline, f"no checkpoint of #{seq} within {timeout}s"
        await asyncio.sleep(0.02)


def test_checkpointer_stamps_the_log_when_it_grows(
    store: Store, stamper: TimeStamper, roots: list[Any]
) -> None:
    async def scenario() -> None:
        task = Checkpointer(store, stamper, interval=0.05)
        assert await task.checkpoint() is None  # an empty log: nothing to stamp
        task.start()
        await store.append_evidence(QID, "SubmissionAcceptance", {"size": 1}, time.time())
        await wait_for_checkpoint(store, 1)
        for n in range(3):
            await store.append_evidence(QID, "RelayToNonERDS", {"n": n}, time.time(), "b@x.org")
        await wait_for_checkpoint(store, 4)
        await store.append_evidence(QID, "CertificateIssued", {}, time.time())
        await task.stop()  # the last one, made on the way out
        assert (await store.latest_checkpoint()).seq == 5  # type: ignore[union-attr]
        assert await task.checkpoint() is None  # nothing new: no second checkpoint of #5

    asyncio.run(scenario())
    audit = store.audit_evidence(roots)
    assert audit.ok and audit.checkpoints >= 3, audit.problems


def test_checkpoint_interval_must_be_positive(store: Store, stamper: TimeStamper) -> None:
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="interval must be positive"):
            Checkpointer(store, stamper, interval=bad)


class BlockingTimeStamper(TimeStamper):
    """The in-process TSA behind a gate: a slow TSA, held until the test opens it."""

    def __init__(self, inner: TimeStamper) -> None:
        super().__init__()
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()

    async def async_request_tsa_response(self, req: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(30)  # blocks this thread (as a stuck socket read would)
        return await self.inner.async_request_tsa_response(req)


def test_a_slow_tsa_does_not_block_the_event_loop(store: Store, stamper: TimeStamper) -> None:
    slow = BlockingTimeStamper(stamper)

    async def scenario() -> None:
        await store.append_evidence(QID, "SubmissionAcceptance", {}, time.time())
        task = Checkpointer(store, slow, interval=3600)
        pending = asyncio.create_task(task.checkpoint())
        assert await asyncio.to_thread(slow.entered.wait, 10)
        # While the TSA holds the request, the loop keeps serving: a store call, a timer.
        started = time.monotonic()
        await asyncio.wait_for(store.append_evidence(QID, "NoticeSent", {}, time.time()), 5)
        await asyncio.sleep(0.01)
        assert time.monotonic() - started < 5
        assert not pending.done()
        slow.gate.set()
        made = await asyncio.wait_for(pending, 20)
        assert made is not None and made.seq == 1  # the head when the request was made

    asyncio.run(scenario())


def test_an_unreachable_tsa_is_a_warning_and_a_retry(
    store: Store, stamper: TimeStamper, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = HTTPTimeStamper(f"http://127.0.0.1:{port}/tsa", timeout=5)

    async def scenario() -> None:
        await store.append_evidence(QID, "SubmissionAcceptance", {}, time.time())
        task = Checkpointer(store, dead, interval=3600)
        task.start()
        await task.stop(final=True)
        assert await store.latest_checkpoint() is None
        task = Checkpointer(store, stamper)
        assert (await task.checkpoint()) is not None  # the next one covers the entry

    with caplog.at_level("WARNING", logger="certifica/evidence"):
        asyncio.run(scenario())
    warnings = [r for r in caplog.records if r.name == "certifica/evidence"]
    assert warnings and all(r.levelname == "WARNING" for r in warnings)
    assert "will retry" in warnings[0].getMessage()


def test_evidence_log_section_embeds_the_covering_checkpoint(
    store: Store, stamper: TimeStamper
) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        await store.append_evidence(QID, "SubmissionAcceptance", {"x": 1}, time.time())
        await store.append_evidence("OTHER", "SubmissionAcceptance", {}, time.time())
        entries = await store.evidence_for(QID)
        before = await evidence_log_section(store, entries)
        await Checkpointer(store, stamper).checkpoint()
        await store.append_evidence(QID, "RelayToNonERDS", {}, time.time(), "b@x.org")
        await Checkpointer(store, stamper).checkpoint()
        after = await evidence_log_section(store, entries)
        return before, after

    before, after = asyncio.run(scenario())
    assert before["checkpoint"] is None and before["checkpoint_note"] == NO_CHECKPOINT_YET
    assert after["checkpoint"]["seq"] == 2  # the earliest covering: the tightest date
    assert "checkpoint_note" not in after
    assert after["entries"] == before["entries"]
    assert set(after["entries"][0]) == {
        "seq",
        "time",
        "qid",
        "recipient",
        "event",
        "detail",
        "prev",
        "hash",
        "salt",
    }


# --- certificates verified offline --------------------------------------------------------


def certified_evidence(conn: sqlite3.Connection, checkpoint: dict | None = None) -> dict:
    log = excerpt_log(conn)
    log["checkpoint"] = checkpoint
    ev = make_evidence()
    ev["queue_id"] = QID
    ev["timeline"] = timeline_of(log["entries"])
    ev["evidence_log"] = log
    return ev


def test_certificate_with_its_entries_verifies(signer: DocumentSigner, pki: Pki) -> None:
    conn = new_db()
    fill(conn)
    report = verify_certificate(
        render_and_sign(certified_evidence(conn), EML, signer), [pki.ca_cert]
    )
    assert report.ok, failed(report)
    check = next(c for c in report.checks if c.name == "evidence-log")
    assert "3 log entries (#1 to #5) match their hashes" in check.detail
    assert "no timestamped checkpoint" in check.detail
    assert "checkpoint" not in [c.name for c in report.checks]


def test_validly_signed_certificate_with_an_altered_entry_fails(
    signer: DocumentSigner, pki: Pki
) -> None:
    # The gateway's own key signs it: only the log shows that the entry was changed.
    conn = new_db()
    fill(conn)
    ev = certified_evidence(conn)
    entry = ev["evidence_log"]["entries"][1]
    entry["detail"] = entry["detail"].replace("250 2.0.0", "250 2.0.1")
    report = verify_certificate(render_and_sign(ev, EML, signer), [pki.ca_cert])
    assert set(failed(report)) == {"evidence-log"}
    assert "entry 3 was altered" in failed(report)["evidence-log"]


def test_certificate_with_a_checkpoint_verifies_it(
    signer: DocumentSigner, pki: Pki, stamper: TimeStamper, tmp_path: Path
) -> None:
    conn = new_db()
    fill(conn, 5)  # the message's last entry is #5: a checkpoint of #5 links directly
    made = make_checkpoint(conn, stamper)
    report = verify_certificate(
        render_and_sign(certified_evidence(conn, made.as_evidence()), EML, signer),
        [pki.ca_cert],
    )
    assert report.ok, failed(report)
    check = next(c for c in report.checks if c.name == "checkpoint")
    assert "it is the last entry's own hash" in check.detail and "UTC" in check.detail
    # A checkpoint from another TSA, or of another head, fails its check only.
    forger = ensure_dev_pki(tmp_path / "forger", "certifica.localhost")
    foreign = make_checkpoint(conn, make_timestamper(forger, None)).as_evidence()
    report = verify_certificate(
        render_and_sign(certified_evidence(conn, foreign), EML, signer), [pki.ca_cert]
    )
    assert set(failed(report)) == {"checkpoint"}
    wrong = dict(made.as_evidence(), head="ab" * 32)
    report = verify_certificate(
        render_and_sign(certified_evidence(conn, wrong), EML, signer), [pki.ca_cert]
    )
    assert "not the hash of entry 5" in failed(report)["checkpoint"]


def test_legacy_certificate_entries_pass_with_a_note(signer: DocumentSigner, pki: Pki) -> None:
    # Certificates issued before this change list (seq, event, hash) only.
    report = verify_certificate(render_and_sign(make_evidence(), EML, signer), [pki.ca_cert])
    assert report.ok, failed(report)
    check = next(c for c in report.checks if c.name == "evidence-log")
    assert "by hash only" in check.detail


# --- the running gateway ------------------------------------------------------------------


@pytest.fixture(scope="module")
def evidence_gateway(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gw-evidence")
    cfg = write_config(tmp, {"example.org": mx.port, "example.com": mx.port})
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


@pytest.fixture(scope="module")
def certified(
    evidence_gateway: Gateway, mx: Sink, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    raw = make_message(subject="Evidence log")
    qid = submit(evidence_gateway, raw, ["bob@example.org", CERT_ADDRESS])
    mail = generated_for(mx, qid, "certificate")
    pdf = certificate_pdf(mail, tmp_path_factory.mktemp("cert") / "certificate.pdf")
    report = verify_certificate(pdf.read_bytes(), [evidence_gateway.state / "keys" / "ca.pem"])
    return {"qid": qid, "raw": raw, "pdf": pdf, "evidence": report.evidence, "report": report}


def test_gateway_certificate_embeds_its_entries_in_full(certified: dict) -> None:
    ev = certified["evidence"]
    log = ev["evidence_log"]
    assert log["format"] == evidence.EXCERPT_FORMAT
    assert [e["event"] for e in log["entries"]] == [t["event"] for t in ev["timeline"]]
    assert log["entries"][0]["event"] == "SubmissionAcceptance"
    assert all(e["qid"] == certified["qid"] for e in log["entries"])
    # The certificate is made right after delivery: no checkpoint covers it yet.
    assert log["checkpoint"] is None and log["checkpoint_note"] == NO_CHECKPOINT_YET
    assert certified["report"].ok, failed(certified["report"])


def test_verify_command_shows_the_evidence_log_check(
    certified: dict, evidence_gateway: Gateway
) -> None:
    result = evidence_gateway.cli("verify", str(certified["pdf"]))
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "evidence-log:" in x)
    assert line.startswith("ok ") and "match their hashes" in line


def test_verify_command_rejects_a_resigned_certificate_with_an_altered_entry(
    certified: dict, evidence_gateway: Gateway, tmp_path: Path
) -> None:
    ev = json.loads(json.dumps(certified["evidence"]))
    entry = next(e for e in ev["evidence_log"]["entries"] if e["event"] == "RelayToNonERDS")
    entry["detail"] = flip_text(entry["detail"], entry["detail"].index("250"))  # 250 -> 350
    keys = evidence_gateway.state / "keys"
    gateway_signer = build_signer(
        SigningSettings.from_pki(ensure_dev_pki(keys, "certifica.localhost"))
    )
    bad = tmp_path / "resigned.pdf"
    bad.write_bytes(render_and_sign(ev, certified["raw"], gateway_signer))
    result = evidence_gateway.cli("verify", str(bad))
    assert result.returncode == 1, result.stdout
    fails = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert len(fails) == 1 and fails[0].startswith("FAIL evidence-log:"), result.stdout
    assert f"entry {entry['seq']} was altered" in fails[0]


def test_evidence_verify_after_stop_checks_the_last_checkpoint(
    certified: dict, evidence_gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    gw = evidence_gateway
    gw.stop()  # the last checkpoint is made on the way out
    assert "checkpoint: seq=" in gw.log()
    out = tmp_path / "checkpoints"
    result = gw.cli("evidence", "verify", "--export", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.endswith(": OK") and "checkpoint(s), the last covering" in summary
    tokens = sorted(out.glob("*.tst"))
    assert tokens
    assert openssl_ts_verify(tokens[-1].with_suffix(""), gw.state / "keys" / "ca.pem")
    # Against another authority's root, every checkpoint fails.
    other = ensure_dev_pki(tmp_path / "other", "certifica.localhost")
    result = gw.cli("evidence", "verify", "--trust", str(other.ca_cert))
    assert result.returncode == 1
    assert "does not chain to a trusted root" in result.stdout

    # An addendum made now embeds the checkpoint, and certifica verify checks its token.
    cert_id = certified["evidence"]["certificate_id"]
    addendum = tmp_path / "addendum.pdf"
    with open(addendum, "wb") as f:
        done = subprocess.run(
            [*gw_cli(gw), "addendum", cert_id], stdout=f, stderr=subprocess.PIPE, timeout=120
        )
    assert done.returncode == 0, done.stderr
    result = gw.cli("verify", str(addendum))
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if " checkpoint:" in x)
    assert line.startswith("ok ") and "UTC" in line

    # One byte of one stored entry changed: one FAIL line naming it, exit 1.
    db = sqlite3.connect(gw.state / "queue.db")
    with db:
        seq, detail = db.execute(
            "SELECT seq, detail FROM evidence WHERE qid = ? AND event = 'RelayToNonERDS'",
            (certified["qid"],),
        ).fetchone()
        db.execute("UPDATE evidence SET detail = ? WHERE seq = ?", (flip_text(detail, 5), seq))
    db.close()
    result = gw.cli("evidence", "verify")
    assert result.returncode == 1
    fails = [x for x in result.stdout.splitlines() if x.startswith("FAIL")]
    assert fails == [f"FAIL entry {seq} was altered (its values do not match their commitment)"]
    assert "1 problem(s)" in result.stdout.splitlines()[-1]
    assert "Traceback" not in result.stderr


def gw_cli(gw: Gateway) -> list[str]:
    from tests.conftest import CERTIFICA

    return [CERTIFICA, "-c", str(gw.config)]


def test_embedded_checkpoint_token_is_base64_der(stamper: TimeStamper, store: Store) -> None:
    async def scenario() -> checkpoints.Checkpoint | None:
        await store.append_evidence(QID, "SubmissionAcceptance", {}, time.time())
        return await Checkpointer(store, stamper).checkpoint()

    made = asyncio.run(scenario())
    assert made is not None
    embedded = made.as_evidence()
    assert base64.b64decode(embedded["token"]) == made.token
    assert embedded["time"] == repr(made.time)
    assert checkpoints.token_time(made.token).timestamp() == made.tsa_time
