"""Legal holds (docs/retention.md): a certificate under hold keeps its message's content,
its PDFs and its evidence values whatever retention or an erasure would remove.

The table ``legal_holds`` (migration 13) names the certificate and its message; these
functions take a connection and run inside the caller's transaction, so that retention
and erasure decide and remove in one.
"""

from __future__ import annotations

import sqlite3


def is_held(conn: sqlite3.Connection, qid: str) -> bool:
    """Whether message ``qid`` (or a document about it) is under legal hold."""
    row = conn.execute("SELECT 1 FROM legal_holds WHERE qid = ? LIMIT 1", (qid,)).fetchone()
    return row is not None


def held_qids(conn: sqlite3.Connection) -> set[str]:
    """Every message under legal hold."""
    return {str(row[0]) for row in conn.execute("SELECT qid FROM legal_holds")}
