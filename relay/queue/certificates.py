"""Finding certificates again: what the web console and the JSON API search and list
(docs/accounts.md).

A *document* is one row of ``verifications``: a certificate of sending or of reception,
or an addendum, with its certificate id, its message and its outcome. Who may see it is
decided here, in the query, never after it: a sender sees the documents about the
messages it sent (``messages.auth_user``, or the registered sender of a Cc copy
received by the MX) or received through certified reception (the owner); an admin or an auditor sees every document
of its organisation (``messages.org``), as :mod:`relay.roles` says. A document a viewer
may not see is reported exactly as one that does not exist.

Searches read only: they run on the store's thread as reads, so a console user's search
never waits for, nor holds up, the queue's writers.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from relay.queue.db import Database
from relay.queue.orgs import Account
from relay.roles import Action, allowed

MAX_PAGE = 200
"""The most documents one search returns."""


@dataclass(frozen=True)
class CertificateQuery:
    """What a viewer searches by; every field narrows, None leaves it open."""

    since: float | None = None  # issued at or after (Unix time)
    until: float | None = None  # issued before
    recipient: str | None = None  # part of a recipient's address, any case
    subject: str | None = None  # part of the subject, any case
    status: str | None = None  # the document's outcome (verifications.outcome)
    kind: str | None = None  # sending | reception | addendum
    sender: str | None = None  # the authenticated user who sent it (admins, auditors)
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class CertificateRecipient:
    address: str
    status: str
    sms: str | None = None  # a phone's outcome (docs/sms.md: delivered, refused, ...)


@dataclass(frozen=True)
class CertificateInfo:
    """One document as a viewer sees it in a list."""

    cert_id: str
    qid: str
    kind: str  # sending | reception | addendum
    outcome: str  # delivery, non-delivery, partial, ... (certifier/outcome.py)
    issued_at: float
    sender: str  # the authenticated user, else the envelope sender
    subject: str | None  # None once the content is past retention or erased
    recipients: tuple[CertificateRecipient, ...]
    org: str | None
    pdf_sha256: str
    erased: bool


def _scope(viewer: Account) -> tuple[str, list[object]] | None:
    """The SQL condition on ``m`` (messages) of what ``viewer`` may see, or None."""
    if not viewer.active:
        return None
    if allowed(viewer.role, Action.SEE_ORG_CERTIFICATES):
        return "m.org = ?", [viewer.org]
    if allowed(viewer.role, Action.SEE_OWN_CERTIFICATES):
        # its own: what it sent through submission (the authenticated user), and what
        # it sent through the MX or received through certified reception (no SMTP
        # user; the sender is the registered From or the reception owner)
        return (
            "m.org = ? AND (m.auth_user = ? OR (m.auth_user IS NULL AND m.sender = ?))",
            [viewer.org, viewer.address, viewer.address],
        )
    return None


_SELECT = (
    "SELECT v.cert_id, v.qid, v.kind, v.outcome, v.issued_at, v.pdf_sha256, v.erased_at,"
    " v.recipients, m.auth_user, m.sender, m.subject, m.org"
    " FROM verifications v JOIN messages m ON m.qid = v.qid"
)


def _info(row: tuple[object, ...]) -> CertificateInfo:
    listed = json.loads(str(row[7])) if row[7] else []
    recipients = tuple(
        CertificateRecipient(
            str(r.get("address", "")),
            str(r.get("status", "")),
            str(r["sms"]) if r.get("sms") is not None else None,
        )
        for r in listed
        if isinstance(r, dict)
    )
    return CertificateInfo(
        cert_id=str(row[0]),
        qid=str(row[1]),
        kind=str(row[2]),
        outcome=str(row[3]),
        issued_at=float(row[4]),  # type: ignore[arg-type]
        pdf_sha256=str(row[5]),
        erased=row[6] is not None,
        sender=str(row[8] or row[9] or ""),
        subject=None if row[10] is None else str(row[10]),
        org=None if row[11] is None else str(row[11]),
        recipients=recipients,
    )


def _like(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, its own % and _ literal."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def find(
    conn: sqlite3.Connection, viewer: Account, query: CertificateQuery
) -> list[CertificateInfo]:
    """The documents ``viewer`` may see that match ``query``, newest first."""
    scope = _scope(viewer)
    if scope is None:
        return []
    where, params = [scope[0]], list(scope[1])
    if query.since is not None:
        where.append("v.issued_at >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("v.issued_at < ?")
        params.append(query.until)
    if query.status:
        where.append("v.outcome = ?")
        params.append(query.status)
    if query.kind:
        where.append("v.kind = ?")
        params.append(query.kind)
    if query.sender:
        where.append("m.auth_user = ?")
        params.append(query.sender.lower())
    if query.subject:
        where.append("m.subject LIKE ? ESCAPE '\\'")
        params.append(_like(query.subject))
    if query.recipient:
        where.append(
            "EXISTS (SELECT 1 FROM recipients r WHERE r.qid = v.qid AND r.address LIKE ? ESCAPE '\\')"
        )
        params.append(_like(query.recipient.lower()))
    limit = max(1, min(query.limit, MAX_PAGE))
    sql = f"{_SELECT} WHERE {' AND '.join(where)} ORDER BY v.issued_at DESC, v.cert_id LIMIT ? OFFSET ?"
    rows = conn.execute(sql, [*params, limit, max(0, query.offset)]).fetchall()
    return [_info(r) for r in rows]


def get(conn: sqlite3.Connection, viewer: Account, cert_id: str) -> CertificateInfo | None:
    """The document ``cert_id`` if ``viewer`` may see it; None when it may not or when
    there is none (the caller answers both the same way)."""
    scope = _scope(viewer)
    if scope is None:
        return None
    row = conn.execute(
        f"{_SELECT} WHERE v.cert_id = ? AND {scope[0]}", [cert_id, *scope[1]]
    ).fetchone()
    return None if row is None else _info(row)


class Certificates(Database):
    """The console's and the API's searches (reads only)."""

    async def find_certificates(
        self, viewer: Account, query: CertificateQuery
    ) -> list[CertificateInfo]:
        return await self._read(lambda: find(self._conn, viewer, query))

    async def certificate_for(self, viewer: Account, cert_id: str) -> CertificateInfo | None:
        return await self._read(lambda: get(self._conn, viewer, cert_id))
