"""Legal holds (docs/retention.md): a certificate under hold keeps its message's content,
its PDFs and its evidence values whatever retention or an erasure would remove.

A hold is placed on a certificate id (``certifica evidence legal-hold CERT-ID``) and
keeps the message that certificate is about, with the documents and delivery reports
about it; placing and releasing it are evidence entries of that message (``LegalHold``,
``LegalHoldReleased``: the certificate, the operator, the note).

The table ``legal_holds`` (migration 13) names the certificate and its message; these
functions take a connection and run inside the caller's transaction, so that retention
and erasure decide and remove in one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from certifier.errors import UsageError
from relay.queue import evidence_log
from relay.queue.states import MessageKind

LEGAL_HOLD = "LegalHold"
"""The evidence event of a hold placed (detail: certificate id, note, operator)."""
LEGAL_HOLD_RELEASED = "LegalHoldReleased"
"""The evidence event of a hold released."""


def is_held(conn: sqlite3.Connection, qid: str) -> bool:
    """Whether message ``qid`` (or a document about it) is under legal hold: held itself,
    or a message about a held one (a late delivery report: its ``parent_qid``)."""
    row = conn.execute(
        "SELECT 1 FROM legal_holds WHERE qid = ?"
        " OR qid = (SELECT parent_qid FROM messages WHERE qid = ?) LIMIT 1",
        (qid, qid),
    ).fetchone()
    return row is not None


def held_qids(conn: sqlite3.Connection) -> set[str]:
    """Every message under legal hold."""
    return {str(row[0]) for row in conn.execute("SELECT qid FROM legal_holds")}


@dataclass(frozen=True)
class Hold:
    """A legal hold: the certificate it was placed on, the message it keeps, since when
    and why (the operator's note)."""

    cert_id: str
    qid: str
    since: float
    note: str


class NoSuchCertificate(UsageError, LookupError):
    """No document with that certificate id was issued by this gateway."""


def message_of(conn: sqlite3.Connection, cert_id: str) -> str | None:
    """The queue id of the message a certificate id is about: a certificate of sending or
    reception, or an addendum (its message, not the late report that caused it)."""
    row = conn.execute("SELECT qid FROM verifications WHERE cert_id = ?", (cert_id,)).fetchone()
    if row is None:
        row = conn.execute(
            "SELECT qid FROM messages WHERE cert_id = ? AND kind IN (?, ?)",
            (cert_id, MessageKind.MAIL, MessageKind.RECEPTION),
        ).fetchone()
    return None if row is None else str(row[0])


def hold_on(conn: sqlite3.Connection, qid: str) -> Hold | None:
    """The hold keeping ``qid`` (the first placed), or None."""
    row = conn.execute(
        "SELECT cert_id, qid, since, note FROM legal_holds WHERE qid = ? ORDER BY since LIMIT 1",
        (qid,),
    ).fetchone()
    return None if row is None else Hold(*row)


def place(
    conn: sqlite3.Connection, cert_id: str, note: str, operator: str, now: float
) -> tuple[Hold, bool]:
    """Place a legal hold on the message of ``cert_id``, with an evidence entry
    ``LegalHold`` (who placed it, and why); returns the hold and whether it is new (False: it was there already,
    unchanged). Raises :class:`NoSuchCertificate`."""
    qid = message_of(conn, cert_id)
    if qid is None:
        raise NoSuchCertificate(cert_id)
    row = conn.execute(
        "SELECT cert_id, qid, since, note FROM legal_holds WHERE cert_id = ?", (cert_id,)
    ).fetchone()
    if row is not None:
        return Hold(*row), False
    conn.execute(
        "INSERT INTO legal_holds (cert_id, qid, since, note) VALUES (?, ?, ?, ?)",
        (cert_id, qid, now, note),
    )
    evidence_log.append(
        conn,
        now,
        qid,
        LEGAL_HOLD,
        {"certificate_id": cert_id, "note": note, "operator": operator},
    )
    return Hold(cert_id, qid, now, note), True


def release(
    conn: sqlite3.Connection, cert_id: str, note: str, operator: str, now: float
) -> Hold | None:
    """Release the legal hold placed on ``cert_id``, with an evidence entry
    ``LegalHoldReleased``; returns the hold released, None when there was none."""
    row = conn.execute(
        "SELECT cert_id, qid, since, note FROM legal_holds WHERE cert_id = ?", (cert_id,)
    ).fetchone()
    if row is None:
        return None
    hold = Hold(*row)
    conn.execute("DELETE FROM legal_holds WHERE cert_id = ?", (cert_id,))
    evidence_log.append(
        conn,
        now,
        hold.qid,
        LEGAL_HOLD_RELEASED,
        {"certificate_id": cert_id, "note": note, "operator": operator, "since": hold.since},
    )
    return hold


def holds(conn: sqlite3.Connection) -> list[Hold]:
    """Every legal hold in place, oldest first."""
    return [
        Hold(*row)
        for row in conn.execute(
            "SELECT cert_id, qid, since, note FROM legal_holds ORDER BY since, cert_id"
        )
    ]
