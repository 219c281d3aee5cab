"""The evidence log (``certifica-evidence/1``) and its RFC 3161 timestamped checkpoints,
as the gateway keeps them in its database.

:mod:`certifier.evidence` defines an entry, its hash and the chain (and checks an
excerpt offline); :mod:`certifier.checkpoints` defines a checkpoint and checks its token.
This module stores and reads them: the two tables ``evidence`` and
``evidence_checkpoints`` (:mod:`relay.queue.migrations`). The functions take a
connection and run inside the caller's transaction; :class:`EvidenceLog` is the store's
side, one transaction per call.

Appending reads the head and inserts the entry after it in one transaction; ``seq`` is
the primary key, so two writers can never both append entry *n* (one fails, and its
transaction with it): the chain never forks (see :class:`relay.queue.store.Store` for
what a backend with several writers must add).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509

from certifier import checkpoints, evidence
from relay.queue.db import Database

_COLUMNS = (  # evidence.Row's order
    "seq, time, qid, recipient, event, detail, prev_hash, hash, salt, commitment, erased"
)
_CHECKPOINT_COLUMNS = "seq, head, time, tsa_time, token"


# -- the evidence table ------------------------------------------------------------------


def append(
    conn: sqlite3.Connection,
    time: float,
    qid: str,
    event: str,
    detail: dict[str, Any],
    recipient: str | None = None,
    continue_after: int | None = None,
) -> evidence.Entry:
    """Append one entry after the log's head, inside the caller's transaction.

    ``continue_after``: number the entry ``continue_after + 1`` (still chained to the
    head) where numbers were issued elsewhere: only a ``Restored`` entry does, and it
    declares the numbers it skips (:func:`certifier.evidence.chain_problems`)."""
    last = head(conn)
    if continue_after is not None:
        if event != evidence.RESTORED or continue_after < (last[0] if last else 0):
            raise ValueError("only a Restored entry skips sequence numbers, and only forward")
        last = (continue_after, last[1] if last else evidence.GENESIS)
    entry, detail_json = evidence.next_entry(last, time, qid, event, detail, recipient)
    conn.execute(
        f"INSERT INTO evidence ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",  # noqa: S608
        (
            entry.seq,
            entry.time,
            entry.qid,
            entry.recipient,
            entry.event,
            detail_json,
            entry.prev_hash,
            entry.hash,
            entry.salt,
            entry.commitment,
        ),
    )
    return entry


def forget(
    conn: sqlite3.Connection,
    seqs: Iterable[int],
    now: float,
    keep: Iterable[str] = (),
    *,
    reason: str,
) -> int:
    """Forget the personal values of entries ``seqs``, inside the caller's transaction,
    and declare it in the log. Returns how many entries changed.

    Each entry's recipient and salt are removed and its detail becomes
    :data:`certifier.evidence.FORGOTTEN` plus the ``keep`` keys of the old detail (the
    residue, e.g. a tracking hit's classification). The commitment and the hash stay, so
    the chain still recomputes (docs/erasure.md). Then one entry
    :data:`certifier.evidence.FORGOTTEN_EVENT` (queue id
    :data:`certifier.evidence.FORGETTING_QID`) records ``reason``, the sequence numbers
    and :func:`certifier.evidence.forgotten_digest` of what the entries hold now, and each
    forgotten entry points to it (``forgotten_by``): emptying an entry by hand, or
    changing what a forgotten one still holds, shows in :func:`forgetting_problems`.
    Entries already forgotten, and declarations, are left alone.
    """
    kept = tuple(keep)
    found = conn.execute(
        "SELECT seq, detail FROM evidence WHERE seq IN (SELECT value FROM json_each(?))"
        " AND erased IS NULL AND event != ? ORDER BY seq",
        (json.dumps(sorted(set(seqs))), evidence.FORGOTTEN_EVENT),
    ).fetchall()
    if not found:
        return 0
    for seq, detail_json in found:
        conn.execute(
            "UPDATE evidence SET recipient = NULL, salt = NULL, detail = ?, erased = ?"
            " WHERE seq = ?",
            (evidence.forgotten_detail(detail_json, kept), now, seq),
        )
    declared = [int(row[0]) for row in found]
    changed = _stored(conn, declared)
    declaration = append(
        conn,
        now,
        evidence.FORGETTING_QID,
        evidence.FORGOTTEN_EVENT,
        {"reason": reason, "seqs": declared, "digest": evidence.forgotten_digest(changed)},
    )
    conn.execute(
        "UPDATE evidence SET forgotten_by = ? WHERE seq IN (SELECT value FROM json_each(?))",
        (declaration.seq, json.dumps(declared)),
    )
    return len(changed)


def _stored(conn: sqlite3.Connection, seqs: Iterable[int]) -> list[evidence.Row]:
    """Entries ``seqs`` as stored, in log order (any number of them: the list goes in as
    one JSON parameter, not one bound parameter each)."""
    return conn.execute(
        f"SELECT {_COLUMNS} FROM evidence WHERE seq IN (SELECT value FROM json_each(?))"  # noqa: S608
        " ORDER BY seq",
        (json.dumps(sorted(set(seqs))),),
    ).fetchall()


def forgetting_problems(conn: sqlite3.Connection) -> Iterator[tuple[int, str]]:
    """(seq, sentence) for every forgotten entry no declaration accounts for, and every
    declaration whose entries changed since (:func:`forget`)."""
    declarations = conn.execute(
        "SELECT seq, detail, erased FROM evidence WHERE event = ? ORDER BY seq",
        (evidence.FORGOTTEN_EVENT,),
    ).fetchall()
    for seq, detail_json, erased in declarations:
        try:
            detail = json.loads(detail_json)
            listed = [int(n) for n in detail["seqs"]]
            recorded = str(detail["digest"])
        except (ValueError, KeyError, TypeError):
            yield seq, f"entry {seq} declares forgotten entries in a form that cannot be read"
            continue
        if erased is not None:
            yield seq, f"entry {seq}, which declares forgotten entries, was itself emptied"
            continue
        found = _stored(conn, listed)
        pointing = {
            int(r[0])
            for r in conn.execute("SELECT seq FROM evidence WHERE forgotten_by = ?", (seq,))
        }
        if (
            len(found) != len(listed)
            or pointing != set(listed)
            or any(row[10] is None or row[0] >= seq for row in found)
            or evidence.forgotten_digest(found) != recorded
        ):
            yield (
                seq,
                (
                    f"the entries entry {seq} declares forgotten were changed since "
                    "(what a forgotten entry keeps no longer matches the declaration)"
                ),
            )
    undeclared = conn.execute(
        "SELECT e.seq FROM evidence e LEFT JOIN evidence d ON d.seq = e.forgotten_by"
        " WHERE e.erased IS NOT NULL AND (d.seq IS NULL OR d.event != ?) ORDER BY e.seq",
        (evidence.FORGOTTEN_EVENT,),
    )
    for (seq,) in undeclared:
        yield seq, f"entry {seq} was emptied, but no later entry records that it was forgotten"


def head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The last entry's (seq, hash), or None for an empty log."""
    row = conn.execute("SELECT seq, hash FROM evidence ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def entries_for(conn: sqlite3.Connection, qid: str) -> list[evidence.Entry]:
    """The entries about message ``qid``, in log order."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM evidence WHERE qid = ? ORDER BY seq",  # noqa: S608
        (qid,),
    ).fetchall()
    return [
        evidence.Entry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8], r[9])
        for r in rows
    ]


def excerpt(conn: sqlite3.Connection, seqs: Iterable[int]) -> list[dict[str, Any]]:
    """The entries ``seqs`` as a certificate embeds them (:func:`certifier.evidence.excerpt_entry`),
    read from the stored columns so that each hash recomputes exactly."""
    return [evidence.excerpt_entry(row) for row in _stored(conn, seqs)]


def rows(conn: sqlite3.Connection) -> Iterator[evidence.Row]:
    """Every entry as stored, in log order (read as it goes, not all at once)."""
    yield from conn.execute(f"SELECT {_COLUMNS} FROM evidence ORDER BY seq")  # noqa: S608


def chain_problems(conn: sqlite3.Connection) -> Iterator[tuple[int, str]]:
    """(seq, sentence) for every break in the whole chain (:func:`certifier.evidence.chain_problems`),
    then for every forgotten entry that does not hold (:func:`forgetting_problems`)."""
    yield from evidence.chain_problems(rows(conn))
    yield from forgetting_problems(conn)


def verify_chain(conn: sqlite3.Connection) -> tuple[bool, int, str]:
    """Recompute the whole chain. Returns (ok, entries checked, first problem or "")."""
    for seq, problem in chain_problems(conn):
        (checked,) = conn.execute("SELECT COUNT(*) FROM evidence WHERE seq <= ?", (seq,)).fetchone()
        return False, int(checked), problem
    (count,) = conn.execute("SELECT COUNT(*) FROM evidence").fetchone()
    return True, int(count), ""


# -- the checkpoints table ---------------------------------------------------------------


def record_checkpoint(conn: sqlite3.Connection, checkpoint: checkpoints.Checkpoint) -> None:
    """Store a checkpoint inside the caller's transaction (once per head)."""
    conn.execute(
        f"INSERT OR IGNORE INTO evidence_checkpoints ({_CHECKPOINT_COLUMNS})"  # noqa: S608
        " VALUES (?, ?, ?, ?, ?)",
        (checkpoint.seq, checkpoint.head, checkpoint.time, checkpoint.tsa_time, checkpoint.token),
    )


def latest_checkpoint(conn: sqlite3.Connection) -> checkpoints.Checkpoint | None:
    """The checkpoint of the highest seq, or None."""
    row = conn.execute(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM evidence_checkpoints"  # noqa: S608
        " ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    return _checkpoint(row) if row else None


def checkpoint_covering(conn: sqlite3.Connection, seq: int) -> checkpoints.Checkpoint | None:
    """The earliest checkpoint that covers entry ``seq``: the tightest "no later than"."""
    row = conn.execute(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM evidence_checkpoints WHERE seq >= ?"  # noqa: S608
        " ORDER BY seq LIMIT 1",
        (seq,),
    ).fetchone()
    return _checkpoint(row) if row else None


def all_checkpoints(conn: sqlite3.Connection) -> list[checkpoints.Checkpoint]:
    """Every checkpoint, oldest first."""
    return [
        _checkpoint(row)
        for row in conn.execute(
            f"SELECT {_CHECKPOINT_COLUMNS} FROM evidence_checkpoints ORDER BY seq"  # noqa: S608
        )
    ]


def _checkpoint(row: Any) -> checkpoints.Checkpoint:
    return checkpoints.Checkpoint(
        int(row[0]), str(row[1]), float(row[2]), float(row[3]), bytes(row[4])
    )


def audit(conn: sqlite3.Connection, roots: list[asn1_x509.Certificate]) -> checkpoints.Audit:
    """Recompute the whole chain and check every checkpoint (:func:`certifier.checkpoints.audit`),
    and every forgotten entry against its declaration (:func:`forgetting_problems`)."""
    result = checkpoints.audit(rows(conn), all_checkpoints(conn), roots)
    for _seq, problem in forgetting_problems(conn):
        result.problem(problem)
    return result


class EvidenceLog(Database):
    """Appending to the hash-chained evidence log, reading it, and its checkpoints."""

    async def evidence_for(self, qid: str) -> list[evidence.Entry]:
        return await self._read(lambda: entries_for(self._conn, qid))

    async def append_evidence(
        self, qid: str, event: str, detail: dict[str, Any], now: float, recipient: str | None = None
    ) -> None:
        await self._run(lambda: append(self._conn, now, qid, event, detail, recipient))

    async def evidence_head(self) -> tuple[int, str] | None:
        return await self._read(lambda: head(self._conn))

    async def evidence_excerpt(self, seqs: list[int]) -> list[dict[str, Any]]:
        """Entries as a certificate embeds them (every hashed field, as hashed)."""
        return await self._read(lambda: excerpt(self._conn, seqs))

    async def add_checkpoint(self, checkpoint: checkpoints.Checkpoint) -> None:
        await self._run(lambda: record_checkpoint(self._conn, checkpoint))

    async def latest_checkpoint(self) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: latest_checkpoint(self._conn))

    async def checkpoint_covering(self, seq: int) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: checkpoint_covering(self._conn, seq))

    def audit_evidence(self, roots: list[asn1_x509.Certificate]) -> checkpoints.Audit:
        """Recompute the whole chain and check every checkpoint against it and its TSA
        (``certifica evidence verify``)."""
        return self.run_sync(lambda db: audit(db.conn, roots))

    def export_checkpoints(self, directory: Path) -> list[Path]:
        """Write every checkpoint into ``directory`` as files ``openssl ts -verify`` reads."""
        return self.run_sync(lambda db: checkpoints.export(all_checkpoints(db.conn), directory))
