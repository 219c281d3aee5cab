"""The public verification page's records (README, "Verifying a certificate"): one row
per document issued, found by the SHA-256 of its verification code.

The code (``<public_url>/v/<code>``, printed on the document and in its QR code) is a
capability: whoever holds the PDF may see the page. The table keeps only its hash, so a
copy of the database hands out no working links. What the page shows of the recipients
(addresses, outcome, time) is kept apart from what proves the document (issue time and
the PDF's SHA-256): erasing a person's data (:meth:`Verifications.erase_verification`)
empties the first and keeps the second, so the page still confirms the document.

``certificate_versions`` lists every PDF the gateway handed out or archived under a
certificate id, by SHA-256: the one issued (kind ``issued``) and each renewal's
(``renewed``, :mod:`relay.certify.renewal`). The page matches a dropped copy against them,
so an earlier copy is recognised as genuine and its holder offered the current one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from enum import StrEnum
from typing import Any

from certifier import evidence
from relay.queue.db import Database


def code_sha256(code: str) -> str:
    return hashlib.sha256(code.encode("ascii", "replace")).hexdigest()


class VersionKind(StrEnum):
    """How a version of a certificate's PDF came to be."""

    ISSUED = "issued"  # written when the document was made, and mailed
    RENEWED = "renewed"  # a renewal appended validation data and a document timestamp


def record_version(
    conn: sqlite3.Connection, pdf_sha256: str, cert_id: str, made: float, kind: VersionKind
) -> None:
    """Record one version of ``cert_id``'s PDF (inside the caller's transaction); a version
    recorded already keeps its first row (a document job rerun keeps the same PDF)."""
    conn.execute(
        "INSERT INTO certificate_versions (pdf_sha256, cert_id, made, kind) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(pdf_sha256) DO NOTHING",
        (pdf_sha256, cert_id, made, str(kind)),
    )


def forget_renewal(conn: sqlite3.Connection, pdf_sha256: str, cert_id: str) -> bool:
    """Remove a ``renewed`` version recorded for ``cert_id`` that was never published (the
    file was gone or had changed when the renewal came to replace it): the page must not
    take for the current document a file nobody holds. Returns whether a row went."""
    cur = conn.execute(
        "DELETE FROM certificate_versions WHERE pdf_sha256 = ? AND cert_id = ? AND kind = ?",
        (pdf_sha256, cert_id, str(VersionKind.RENEWED)),
    )
    return cur.rowcount > 0


def versions_of(conn: sqlite3.Connection, cert_id: str) -> list[dict[str, Any]]:
    """Every recorded version of ``cert_id``'s PDF, oldest first:
    ``{"pdf_sha256", "made", "kind"}``."""
    cur = conn.execute(
        "SELECT pdf_sha256, made, kind FROM certificate_versions WHERE cert_id = ?"
        " ORDER BY made, kind = 'renewed'",
        (cert_id,),
    )
    return [{"pdf_sha256": r[0], "made": r[1], "kind": r[2]} for r in cur.fetchall()]


class Verifications(Database):
    """The ``verifications`` table."""

    async def record_verification(
        self,
        code: str,
        *,
        cert_id: str,
        qid: str,
        kind: str,
        outcome: str,
        issued_at: float,
        pdf_sha256: str,
        recipients: list[dict[str, Any]],
    ) -> None:
        """Record a document issued; made again for the same document (a job rerun keeps
        the first PDF, so the same hash), the row is rewritten unchanged."""

        def write() -> None:
            self._conn.execute(
                "INSERT INTO verifications (code_sha256, cert_id, qid, kind, outcome,"
                " issued_at, pdf_sha256, recipients) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(cert_id) DO UPDATE SET code_sha256 = excluded.code_sha256,"
                " kind = excluded.kind, outcome = excluded.outcome,"
                " issued_at = excluded.issued_at, pdf_sha256 = excluded.pdf_sha256,"
                " recipients = excluded.recipients WHERE erased_at IS NULL",
                (
                    code_sha256(code),
                    cert_id,
                    qid,
                    kind,
                    outcome,
                    issued_at,
                    pdf_sha256,
                    json.dumps(recipients, ensure_ascii=False),
                ),
            )

        await self._run(write)

    async def record_certificate_version(
        self, pdf_sha256: str, cert_id: str, made: float, kind: VersionKind
    ) -> None:
        """Record a version of a certificate's PDF (:func:`record_version`)."""
        await self._run(record_version, self._conn, pdf_sha256, cert_id, made, kind)

    def record_certificate_version_sync(
        self, pdf_sha256: str, cert_id: str, made: float, kind: VersionKind
    ) -> None:
        """:meth:`record_certificate_version` for ``certifica`` commands."""
        self.run_sync(lambda db: record_version(db.conn, pdf_sha256, cert_id, made, kind))

    async def forget_certificate_renewal(self, pdf_sha256: str, cert_id: str) -> None:
        """Remove a renewed version that was never published (:func:`forget_renewal`)."""
        await self._run(forget_renewal, self._conn, pdf_sha256, cert_id)

    def forget_certificate_renewal_sync(self, pdf_sha256: str, cert_id: str) -> None:
        """:meth:`forget_certificate_renewal` for ``certifica`` commands."""
        self.run_sync(lambda db: forget_renewal(db.conn, pdf_sha256, cert_id))

    async def certificate_versions(self, cert_id: str) -> list[dict[str, Any]]:
        """Every recorded version of ``cert_id``'s PDF, oldest first (:func:`versions_of`)."""
        return await self._read(versions_of, self._conn, cert_id)

    async def last_restore(self) -> tuple[float, str] | None:
        """When the last ``Restored`` evidence entry was made, and the time of the backup
        it restored (README, "Backups and restore"); None when there was no restore."""

        def read() -> tuple[float, str] | None:
            row = self._conn.execute(
                "SELECT time, detail FROM evidence WHERE event = ? ORDER BY seq DESC LIMIT 1",
                (evidence.RESTORED,),
            ).fetchone()
            if row is None:
                return None
            try:
                detail = json.loads(row[1])
            except ValueError:
                detail = {}
            backup_time = detail.get("backup_time") if isinstance(detail, dict) else None
            return float(row[0]), str(backup_time or "")

        return await self._read(read)

    async def verification(self, code: str) -> dict[str, Any] | None:
        """The record for ``code``, with ``recipients`` decoded (None once erased); None
        when no document has that code."""

        def read() -> dict[str, Any] | None:
            cur = self._conn.execute(
                "SELECT cert_id, qid, kind, outcome, issued_at, pdf_sha256, recipients,"
                " erased_at FROM verifications WHERE code_sha256 = ?",
                (code_sha256(code),),
            )
            row = cur.fetchone()
            if row is None:
                return None
            out = dict(zip([d[0] for d in cur.description], row, strict=True))
            out["recipients"] = json.loads(out["recipients"]) if out["recipients"] else None
            return out

        return await self._read(read)

    def erase_verification(self, cert_id: str, now: float) -> bool:
        """Forget the personal data the page shows for ``cert_id`` (its recipients),
        keeping the issue time and the PDF's hash. False when there is no such record."""
        return self.run_sync(lambda db: erase_record(db.conn, cert_id, now))


def erase_record(conn: sqlite3.Connection, cert_id: str, now: float) -> bool:
    """Inside the caller's transaction: forget what the page shows of ``cert_id``'s
    recipients, keeping the issue time and the PDF's hash (an erasure,
    :mod:`relay.queue.erasure`). False when there is no such record."""
    cursor = conn.execute(
        "UPDATE verifications SET recipients = NULL, erased_at = ? WHERE cert_id = ?",
        (now, cert_id),
    )
    return cursor.rowcount > 0
