"""The evidence log: an append-only, hash-chained record of every event.

Each entry carries the SHA-256 of the previous entry, so that removing, reordering or
editing any row breaks the chain from that row on (the same construction as a
Certificate Transparency or git history, minus the tree). Event names follow
ETSI EN 319 522-2 where one fits:

``SubmissionAcceptance``, ``SubmissionRejection``, ``RelayToNonERDS`` (the remote
server said 2xx), ``RelayToNonERDSFailure`` (5xx, retries exhausted, later DSN),
``ContentHandover``, ``ReceivedFromNonERDS``; and the extensions ``RelayAttemptDeferred``,
``CertificateIssued``, ``NoticeSent``.

The log lives in the gateway's SQLite database (table ``evidence``); this module only
needs a DB-API connection, so it does not depend on the relay.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE evidence (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    qid TEXT NOT NULL,
    recipient TEXT,
    event TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX evidence_qid ON evidence(qid);
"""


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    qid: str
    recipient: str | None
    event: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str


def entry_hash(
    prev_hash: str,
    seq: int,
    time: float,
    qid: str,
    recipient: str | None,
    event: str,
    detail_json: str,
) -> str:
    """The chained hash of one entry: SHA-256 over a canonical JSON array of its fields."""
    canonical = json.dumps(
        [prev_hash, seq, repr(time), qid, recipient, event, detail_json],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def append(
    conn: sqlite3.Connection,
    time: float,
    qid: str,
    event: str,
    detail: dict[str, Any],
    recipient: str | None = None,
) -> Entry:
    """Append one entry inside the caller's transaction and return it."""
    row = conn.execute("SELECT seq, hash FROM evidence ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
    detail_json = json.dumps(detail, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    digest = entry_hash(prev, seq, time, qid, recipient, event, detail_json)
    conn.execute(
        "INSERT INTO evidence (seq, time, qid, recipient, event, detail, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (seq, time, qid, recipient, event, detail_json, prev, digest),
    )
    return Entry(seq, time, qid, recipient, event, detail, prev, digest)


def entries_for(conn: sqlite3.Connection, qid: str) -> list[Entry]:
    rows = conn.execute(
        "SELECT seq, time, qid, recipient, event, detail, prev_hash, hash FROM evidence"
        " WHERE qid = ? ORDER BY seq",
        (qid,),
    ).fetchall()
    return [Entry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]


def verify_chain(conn: sqlite3.Connection) -> tuple[bool, int, str]:
    """Recompute the whole chain. Returns (ok, entries checked, first problem or "")."""
    prev = GENESIS
    count = 0
    cursor = conn.execute(
        "SELECT seq, time, qid, recipient, event, detail, prev_hash, hash FROM evidence"
        " ORDER BY seq"
    )
    for seq, time, qid, recipient, event, detail_json, prev_hash, digest in cursor:
        count += 1
        if prev_hash != prev:
            return False, count, f"entry {seq} does not follow the previous entry"
        if entry_hash(prev, seq, time, qid, recipient, event, detail_json) != digest:
            return False, count, f"entry {seq} was altered"
        prev = digest
    return True, count, ""
