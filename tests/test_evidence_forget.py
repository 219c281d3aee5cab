"""Forgetting the personal values of evidence entries (format 2, certifier/evidence.py):
the chain, the checkpoints and a certificate's excerpt made before still verify.

A certificate the sender holds embeds its entries with their salts; after the gateway
forgets the values (erasure, retention: docs/erasure.md) the stored hashes are unchanged,
so the sender's copy matches the log, and the log itself still recomputes end to end.
"""

from __future__ import annotations

import json
import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from certifier import evidence
from relay.queue import evidence_log
from relay.queue.store import migrate

QID = "4F2A1B3C5D6E"
ADDRESS = "rcpt-private@example.org"


def new_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    return conn


def fill(conn: sqlite3.Connection, n: int = 6) -> list[evidence.Entry]:
    start = 1_763_892_000.5
    return [
        evidence_log.append(
            conn,
            start + i,
            QID if i % 2 == 0 else "OTHER0001",
            "RelayToNonERDS" if i else "SubmissionAcceptance",
            {"reply": f"250 2.0.0 Ok R{i}", "ip": "192.0.2.7", "user_agent": "UA", "n": i},
            recipient=None if i == 0 else ADDRESS,
        )
        for i in range(n)
    ]


def timeline_of(entries: list[dict]) -> list[dict]:
    return [
        {
            "time": evidence.iso_time(float(e["time"])),
            "event": e["event"],
            "recipient": e["recipient"],
        }
        for e in entries
    ]


def stored(conn: sqlite3.Connection, seq: int) -> tuple:
    return conn.execute(
        "SELECT recipient, detail, salt, commitment, erased, hash FROM evidence WHERE seq = ?",
        (seq,),
    ).fetchone()


def add_format1(conn: sqlite3.Connection, n: int) -> None:
    """Entries as a gateway before format 2 wrote them (hash over the values)."""
    prev = evidence.GENESIS
    for seq in range(1, n + 1):
        detail = evidence.canonical_detail({"reply": "250 ok", "n": seq})
        when = 1_700_000_000.25 + seq
        digest = evidence.entry_hash(prev, seq, when, QID, ADDRESS, "RelayToNonERDS", detail)
        conn.execute(
            "INSERT INTO evidence (seq, time, qid, recipient, event, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, 'RelayToNonERDS', ?, ?, ?)",
            (seq, when, QID, ADDRESS, detail, prev, digest),
        )
        prev = digest


def test_new_entries_commit_to_their_values_with_a_salt() -> None:
    conn = new_db()
    entries = fill(conn)
    recipient, detail, salt, committed, erased, digest = stored(conn, 2)
    assert recipient == ADDRESS and erased is None and len(salt) == 64
    assert committed == evidence.commitment(salt, recipient, detail)
    assert digest == entries[1].hash
    # Two entries with the same values commit differently: the salt is random.
    assert len({stored(conn, seq)[2] for seq in range(1, 7)}) == 6
    assert evidence_log.verify_chain(conn) == (True, 6, "")


def test_forgetting_removes_the_values_and_the_chain_still_verifies() -> None:
    conn = new_db()
    fill(conn)
    hashes = [stored(conn, seq)[5] for seq in range(1, 7)]
    seqs = [
        row[0] for row in conn.execute("SELECT seq FROM evidence WHERE recipient = ?", (ADDRESS,))
    ]
    with conn:
        assert evidence_log.forget(conn, seqs, 1_800_000_000.0, reason="test") == 5
    assert evidence_log.forget(conn, seqs, 1_800_000_001.0, reason="test") == 0  # already forgotten
    for seq in seqs:
        recipient, detail, salt, committed, erased, _ = stored(conn, seq)
        assert (recipient, salt, erased) == (None, None, 1_800_000_000.0)
        assert json.loads(detail) == {"erased": True}
        assert committed is not None
    assert [stored(conn, seq)[5] for seq in range(1, 7)] == hashes
    # The forgetting is itself an entry of the chain: which entries, why, what they keep.
    (declaration,) = evidence_log.entries_for(conn, evidence.FORGETTING_QID)
    assert declaration.seq == 7 and declaration.event == evidence.FORGOTTEN_EVENT
    assert declaration.detail["reason"] == "test" and declaration.detail["seqs"] == seqs
    assert evidence_log.verify_chain(conn) == (True, 7, "")
    forgotten = [stored(conn, seq) for seq in seqs]
    assert not any(ADDRESS in str(v) or "192.0.2.7" in str(v) for row in forgotten for v in row)


def test_a_residue_outside_the_hash_may_be_kept() -> None:
    conn = new_db()
    fill(conn)
    evidence_log.forget(conn, [3], 1_800_000_000.0, keep=("n", "absent"), reason="test")
    assert json.loads(stored(conn, 3)[1]) == {"erased": True, "n": 2}
    assert evidence_log.verify_chain(conn)[0]


def test_the_senders_excerpt_still_matches_after_the_gateway_forgot() -> None:
    conn = new_db()
    fill(conn)
    seqs = [1, 3, 5]  # the entries of QID
    before = evidence_log.excerpt(conn, seqs)
    assert all("salt" in e for e in before)
    evidence_log.forget(conn, [3, 5], 1_800_000_000.0, reason="test")
    log = {"format": evidence.EXCERPT_FORMAT, "head": before[-1]["hash"], "entries": before}
    report = evidence.verify_excerpt(log, timeline_of(before), QID)
    assert report.problems == ()
    # The stored hashes are those the sender's copy recomputes.
    assert [e["hash"] for e in before] == [stored(conn, s)[5] for s in seqs]
    # An excerpt made after forgetting holds the commitments, no values, and verifies too.
    after = evidence_log.excerpt(conn, seqs)
    assert "salt" in after[0] and "commitment" in after[1] and after[1]["recipient"] is None
    log = {"format": evidence.EXCERPT_FORMAT, "head": after[-1]["hash"], "entries": after}
    report = evidence.verify_excerpt(log, timeline_of(after), QID)
    assert report.problems == ()
    assert "forgotten the values of 2 of them" in report.summary
    # A forgotten entry that claims values anyway: they are not covered by its hash.
    after[1]["recipient"] = "someone@example.org"
    report = evidence.verify_excerpt(log, timeline_of(after), QID)
    assert report.problems == (
        "entry 3 claims values the gateway says it forgot: they are not covered by its hash",
    )


def test_an_altered_value_salt_or_forgotten_field_is_found() -> None:
    conn = new_db()
    fill(conn)
    evidence_log.forget(conn, [4], 1_800_000_000.0, reason="test")  # declared by entry 7
    conn.execute("UPDATE evidence SET detail = replace(detail, 'R2', 'R9') WHERE seq = 3")
    conn.execute("UPDATE evidence SET salt = ? WHERE seq = 5", ("0" * 64,))
    conn.execute("UPDATE evidence SET time = time + 1 WHERE seq = 4")
    problems = [p for _, p in evidence_log.chain_problems(conn)]
    assert problems == [
        "entry 3 was altered (its values do not match their commitment)",
        "entry 4 was altered (its content does not match its hash)",
        "entry 5 was altered (its values do not match their commitment)",
        "the entries entry 7 declares forgotten were changed since (what a forgotten entry "
        "keeps no longer matches the declaration)",
    ]
    # A sender's excerpt whose recipient was changed no longer verifies.
    excerpt = evidence_log.excerpt(conn, [2])
    excerpt[0]["recipient"] = "someone-else@example.org"
    log = {"format": evidence.EXCERPT_FORMAT, "head": excerpt[0]["hash"], "entries": excerpt}
    report = evidence.verify_excerpt(log, timeline_of(excerpt), "OTHER0001")
    assert report.problems and "entry 2 was altered" in report.problems[0]


def test_emptying_an_entry_by_hand_or_changing_what_it_kept_is_found() -> None:
    conn = new_db()
    fill(conn)
    evidence_log.forget(conn, [3], 1_800_000_000.0, keep=("n",), reason="test")
    assert evidence_log.verify_chain(conn)[0]
    # The operator empties entry 5 the way forgetting does, without declaring it.
    conn.execute(
        "UPDATE evidence SET recipient = NULL, salt = NULL, detail = ?, erased = 1 WHERE seq = 5",
        (evidence.forgotten_detail("{}"),),
    )
    # ... and changes the residue entry 3 kept (outside its own hash).
    conn.execute("UPDATE evidence SET detail = ? WHERE seq = 3", ('{"erased":true,"n":7}',))
    problems = [p for _, p in evidence_log.chain_problems(conn)]
    assert problems == [
        "the entries entry 7 declares forgotten were changed since (what a forgotten entry "
        "keeps no longer matches the declaration)",
        "entry 5 was emptied, but no later entry records that it was forgotten",
    ]


def test_a_declaration_is_never_forgotten_and_tampering_with_it_shows() -> None:
    conn = new_db()
    fill(conn)
    evidence_log.forget(conn, [2], 1_800_000_000.0, reason="test")
    assert evidence_log.forget(conn, [7], 1_800_000_001.0, reason="test") == 0
    conn.execute(
        'UPDATE evidence SET detail = replace(detail, \'"reason":"test"\', \'"reason":"x"\')'
        " WHERE seq = 7"
    )
    problems = [p for _, p in evidence_log.chain_problems(conn)]
    assert problems == ["entry 7 was altered (its values do not match their commitment)"]


def test_format1_entries_verify_and_once_forgotten_hold_by_their_links() -> None:
    conn = new_db()
    add_format1(conn, 3)
    later = evidence_log.append(conn, 1_800_000_000.0, QID, "CertificateIssued", {"id": "CF"})
    assert later.seq == 4 and later.salt is not None
    assert evidence_log.verify_chain(conn) == (True, 4, "")
    old = evidence_log.excerpt(conn, [1, 2, 3, 4])
    assert "salt" not in old[0] and "commitment" not in old[0] and "salt" in old[3]
    log = {"format": evidence.EXCERPT_FORMAT, "head": old[-1]["hash"], "entries": old}
    assert evidence.verify_excerpt(log, timeline_of(old), QID).problems == ()
    evidence_log.forget(conn, [2], 1_800_000_001.0, reason="test")
    assert evidence_log.verify_chain(conn) == (True, 5, "")
    # Its own hash cannot be recomputed any more; what it still holds is bound by the
    # declaration, and its stored hash by the next entry's link.
    conn.execute("UPDATE evidence SET event = 'SubmissionRejection' WHERE seq = 2")
    conn.execute("UPDATE evidence SET hash = ? WHERE seq = 2", ("f" * 64,))
    problems = [p for _, p in evidence_log.chain_problems(conn)]
    assert problems == [
        "entry 3 does not follow the previous entry",
        "the entries entry 5 declares forgotten were changed since (what a forgotten entry "
        "keeps no longer matches the declaration)",
    ]


def test_certificates_made_before_format_2_still_verify() -> None:
    conn = new_db()
    add_format1(conn, 2)
    entries = evidence_log.excerpt(conn, [1, 2])
    log = {"format": "certifica-log-excerpt/1", "head": entries[-1]["hash"], "entries": entries}
    assert "certifica-log-excerpt/1" in evidence.EXCERPT_FORMATS
    assert evidence.verify_excerpt(log, timeline_of(entries), QID).problems == ()


@given(
    recipient=st.one_of(st.none(), st.text(max_size=40)),
    detail=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
    time=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
)
def test_any_entry_verifies_before_and_after_it_is_forgotten(
    recipient: str | None, detail: dict[str, str], time: float
) -> None:
    conn = new_db()
    evidence_log.append(conn, time, QID, "RelayToNonERDS", detail, recipient)
    excerpt = evidence_log.excerpt(conn, [1])
    evidence_log.forget(conn, [1], 1.0, reason="test")
    assert evidence_log.verify_chain(conn)[0]
    for entries in (excerpt, evidence_log.excerpt(conn, [1])):
        log = {"format": evidence.EXCERPT_FORMAT, "head": entries[0]["hash"], "entries": entries}
        assert evidence.verify_excerpt(log, timeline_of(entries), QID).problems == ()
