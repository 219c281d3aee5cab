"""Hosted content and acceptance (docs/hosted.md): each recipient's link, what became of
it, the one-time codes and the decisions, with their evidence entries.

A link's row is made the first time its notification is built (:meth:`Hosted.hosted_link`,
idempotent: every attempt writes the same link); its state goes ``waiting`` ->
``handed_over`` (the recipient opened the content on the page: ``ContentHandover``) or
``expired`` (not opened within ``[hosted] expiry_days``: ``ContentHandoverFailure``, a
consignment expiry). Each download is one more ``ContentHandover`` entry; an acceptance
or rejection (``ContentAccepted`` / ``ContentRejected``, extensions to ETSI EN 319 522:
its consent-based consignment is consent to receive, not to terms) is recorded once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from relay.queue import evidence_log
from relay.queue.db import Database, query_rows

HANDOVER = "ContentHandover"
"""ETSI EN 319 522-2's event: the content reached the recipient (the page showed it, or
an attachment was downloaded)."""
EXPIRY = "ContentHandoverFailure"
"""ETSI EN 319 522-2's event for a handover that did not happen: the link expired."""
DECISIONS = {"accepted": "ContentAccepted", "rejected": "ContentRejected"}
"""The evidence event of each decision (Certifica's extensions)."""

WAITING, HANDED_OVER, EXPIRED = "waiting", "handed_over", "expired"


def link_row(conn: sqlite3.Connection, token_sha256: str) -> dict[str, Any] | None:
    """A link by its token's hash, with its recipient and message; None when unknown."""
    cursor = conn.execute(
        "SELECT h.*, r.address, r.status AS recipient_status, r.last_attempt, m.sender,"
        " m.auth_user,"
        " m.created AS accepted_at, m.cert_id, m.sha256 AS message_sha256"
        " FROM hosted_links h JOIN recipients r ON r.id = h.recipient_id"
        " JOIN messages m ON m.qid = h.qid WHERE h.token_sha256 = ?",
        (token_sha256,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


def expire_links(conn: sqlite3.Connection, now: float) -> int:
    """Inside the caller's transaction: every waiting link past its expiry is expired,
    with its ``ContentHandoverFailure`` entry. Returns how many."""
    due = conn.execute(
        "SELECT h.recipient_id, h.qid, h.expires, h.mode, r.address FROM hosted_links h"
        " JOIN recipients r ON r.id = h.recipient_id"
        " WHERE h.state = ? AND h.expires <= ? ORDER BY h.expires",
        (WAITING, now),
    ).fetchall()
    for recipient_id, qid, expires, mode, address in due:
        conn.execute(
            "UPDATE hosted_links SET state = ?, expired_at = ? WHERE recipient_id = ?",
            (EXPIRED, now, recipient_id),
        )
        evidence_log.append(
            conn,
            now,
            qid,
            EXPIRY,
            {
                "reason": "consignment expiry: the link was not opened",
                "mode": mode,
                "expired": expires,
            },
            address,
        )
    return len(due)


class Hosted(Database):
    """Hosted links, their handovers, codes and decisions (with :class:`HostedDecisions`,
    the certificates the decisions are owed)."""

    async def user_hosted_mode(self, address: str) -> str | None:
        """The user's default mode (``certifica users set --mode``); None: plain."""

        def read() -> str | None:
            row = self._conn.execute(
                "SELECT hosted_mode FROM users WHERE address = ?", (address.lower(),)
            ).fetchone()
            return row[0] if row else None

        return await self._read(read)

    def set_user_hosted_mode(self, address: str, mode: str | None) -> bool:
        """Set the user's default mode (None: plain); False when there is no such user."""

        def write(db: Any) -> bool:
            cursor = db.conn.execute(
                "UPDATE users SET hosted_mode = ? WHERE address = ?", (mode, address.lower())
            )
            return bool(cursor.rowcount)

        return self.run_sync(write)

    async def hosted_link(
        self, qid: str, recipient_id: int, token_sha256: str, mode: str, now: float, days: int
    ) -> float:
        """Make the recipient's link if it is not made yet; returns its expiry."""

        def write() -> float:
            self._conn.execute(
                "INSERT OR IGNORE INTO hosted_links (recipient_id, qid, token_sha256, mode,"
                " created, expires, state) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (recipient_id, qid, token_sha256, mode, now, now + days * 86400.0, WAITING),
            )
            row = self._conn.execute(
                "SELECT expires FROM hosted_links WHERE recipient_id = ?", (recipient_id,)
            ).fetchone()
            return float(row[0])

        return await self._run(write)

    async def hosted_by_token(self, token_sha256: str) -> dict[str, Any] | None:
        return await self._read(lambda: link_row(self._conn, token_sha256))

    async def hosted_links_of(self, qid: str) -> list[dict[str, Any]]:
        """The links of a message, by recipient id (the certificate lists them)."""

        def read() -> list[dict[str, Any]]:
            return query_rows(
                self._conn,
                "SELECT h.recipient_id, h.mode, h.state, h.created, h.expires,"
                " h.handed_over_at, h.expired_at, h.decision, h.decided_at, r.address,"
                # the first opening's classification (person or machine) and code check
                " (SELECT detail FROM evidence e WHERE e.qid = h.qid AND e.event = ?"
                "  AND e.recipient = r.address ORDER BY e.seq LIMIT 1) AS handover_detail"
                " FROM hosted_links h JOIN recipients r ON r.id = h.recipient_id"
                " WHERE h.qid = ? ORDER BY h.recipient_id",
                (HANDOVER, qid),
            )

        return await self._read(read)

    async def record_handover(
        self,
        recipient_id: int,
        detail: dict[str, Any],
        now: float,
        page_sha256: str | None = None,
        page: tuple[str, bytes] | None = None,
    ) -> dict[str, Any] | None:
        """A ``ContentHandover`` entry (the page shown, or one download); the first makes
        the link ``handed_over``. Nothing after the link's expiry. ``page``: the nonce and exact bytes of the content page
        sent, kept until a decision names that nonce (``accept``). None (and nothing
        written) when the link is not waiting or handed over (expired)."""

        def write() -> dict[str, Any] | None:
            row = self._conn.execute(
                "SELECT h.qid, h.state, r.address, h.expires FROM hosted_links h"
                " JOIN recipients r ON r.id = h.recipient_id WHERE h.recipient_id = ?",
                (recipient_id,),
            ).fetchone()
            if row is None or row[1] not in (WAITING, HANDED_OVER) or row[3] <= now:
                return None  # never a handover after the link's expiry
            qid, state, address, _expires = row
            if state == WAITING:
                self._conn.execute(
                    "UPDATE hosted_links SET state = ?, handed_over_at = ? WHERE recipient_id = ?",
                    (HANDED_OVER, now, recipient_id),
                )
            if page_sha256 is not None:
                self._conn.execute(
                    "UPDATE hosted_links SET shown_sha256 = ? WHERE recipient_id = ?",
                    (page_sha256, recipient_id),
                )
            if page is not None:
                nonce, html = page
                self._conn.execute(
                    "INSERT INTO hosted_pages (recipient_id, nonce, sha256, html, shown)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (recipient_id, nonce, hashlib.sha256(html).hexdigest(), html, now),
                )
            entry = evidence_log.append(self._conn, now, qid, HANDOVER, detail, address)
            return {"seq": entry.seq, "first": state == WAITING}

        return await self._run(write)

    async def set_hosted_code(
        self,
        recipient_id: int,
        code_sha256: str,
        expires: float,
        now: float = 0.0,
        per_day: int = 0,
    ) -> str | None:
        """A new one-time code for the link (the previous one no longer works). Refused
        (nothing written) with the reason, ``locked`` (too many wrong codes) or
        ``too_many`` (``per_day`` codes mailed in the last 24 hours), else None."""

        def write() -> str | None:
            row = self._conn.execute(
                "SELECT codes_sent, codes_since, code_locked_until FROM hosted_links"
                " WHERE recipient_id = ?",
                (recipient_id,),
            ).fetchone()
            if row is None:
                return "locked"
            sent, since, locked = row
            if locked is not None and locked > now:
                return "locked"
            if since is None or now - since >= 86400.0:
                sent, since = 0, now  # a new day's window
            if per_day and sent >= per_day:
                return "too_many"
            self._conn.execute(
                "UPDATE hosted_links SET code_sha256 = ?, code_expires = ?, code_tries = 0,"
                " codes_sent = ?, codes_since = ? WHERE recipient_id = ?",
                (code_sha256, expires, sent + 1, since, recipient_id),
            )
            return None

        return await self._run(write)

    async def code_locked(self, recipient_id: int, now: float) -> bool:
        """Whether the link's codes are refused now (too many wrong ones)."""

        def read() -> bool:
            row = self._conn.execute(
                "SELECT code_locked_until FROM hosted_links WHERE recipient_id = ?",
                (recipient_id,),
            ).fetchone()
            return bool(row and row[0] is not None and row[0] > now)

        return await self._read(read)

    async def check_hosted_code(
        self,
        recipient_id: int,
        code_sha256: str,
        now: float,
        tries: int,
        failures: int = 0,
        lock_seconds: float = 0.0,
    ) -> bool:
        """Whether ``code_sha256`` is the link's live code; a wrong one counts, and after
        ``tries`` wrong ones the code is void (a new one must be sent). Wrong codes also
        count per link, whatever the code: after ``failures`` of them the link's codes
        are refused for ``lock_seconds`` (the live one is void)."""

        def check() -> bool:
            row = self._conn.execute(
                "SELECT code_sha256, code_expires, code_tries, code_locked_until,"
                " wrong_codes FROM hosted_links WHERE recipient_id = ?",
                (recipient_id,),
            ).fetchone()
            if row is None or row[3] is not None and row[3] > now:
                return False
            if row[0] is None or row[1] < now or row[2] >= tries:
                return False
            if row[0] != code_sha256:
                self._conn.execute(
                    "UPDATE hosted_links SET code_tries = code_tries + 1,"
                    " wrong_codes = wrong_codes + 1 WHERE recipient_id = ?",
                    (recipient_id,),
                )
                if failures and row[4] + 1 >= failures:
                    self._conn.execute(
                        "UPDATE hosted_links SET code_locked_until = ?, wrong_codes = 0,"
                        " code_sha256 = NULL WHERE recipient_id = ?",
                        (now + lock_seconds, recipient_id),
                    )
                return False
            self._conn.execute(  # one code, one opening
                "UPDATE hosted_links SET code_sha256 = NULL WHERE recipient_id = ?",
                (recipient_id,),
            )
            return True

        return await self._run(check)

    async def shown_page(self, recipient_id: int, nonce: str) -> tuple[str, bytes] | None:
        """The SHA-256 and bytes of the content page sent with ``nonce``; None when no
        such page was sent to that link."""

        def read() -> tuple[str, bytes] | None:
            row = self._conn.execute(
                "SELECT sha256, html FROM hosted_pages WHERE recipient_id = ? AND nonce = ?",
                (recipient_id, nonce),
            ).fetchone()
            return (str(row[0]), bytes(row[1])) if row else None

        return await self._read(read)

    async def record_decision(
        self,
        recipient_id: int,
        decision: str,
        detail: dict[str, Any],
        cert_id: str,
        now: float,
        page: bytes | None = None,
    ) -> bool:
        """Record the recipient's decision once (False: one was recorded already, or the
        link expired), with
        ``page``, the exact content page it was made on; the other pages sent go."""

        def write() -> bool:
            row = self._conn.execute(
                "SELECT h.qid, r.address FROM hosted_links h"
                " JOIN recipients r ON r.id = h.recipient_id"
                " WHERE h.recipient_id = ? AND h.decision IS NULL AND h.state != ?"
                " AND h.expires > ?",  # never a decision after the link's expiry
                (recipient_id, EXPIRED, now),
            ).fetchone()
            if row is None:
                return False
            qid, address = row
            self._conn.execute(
                "UPDATE hosted_links SET decision = ?, decided_at = ?, decision_detail = ?,"
                " decision_cert_id = ?, decision_cert_state = 'pending', decision_page = ?"
                " WHERE recipient_id = ?",
                (decision, now, json.dumps(detail, sort_keys=True), cert_id, page, recipient_id),
            )
            self._conn.execute("DELETE FROM hosted_pages WHERE recipient_id = ?", (recipient_id,))
            event = DECISIONS[decision]
            evidence_log.append(
                self._conn, now, qid, event, {**detail, "certificate": cert_id}, address
            )
            return True

        return await self._run(write)

    async def expire_hosted(self, now: float) -> int:
        """Expire every waiting link past its expiry (the daily task)."""
        return await self._run(lambda: expire_links(self._conn, now))

    def expire_hosted_now(self, now: float) -> int:
        """:meth:`expire_hosted` for the command line."""
        return self.run_sync(lambda db: expire_links(db.conn, now))


def kept_for_hosting(conn: sqlite3.Connection, qids: list[str], now: float, days: int) -> set[str]:
    """Of ``qids``, the hosted messages whose content retention must keep: a link still
    open, or expired or answered less than ``days`` ago (``[retention] content_days``
    counts from the expiry of a hosted message's last link, docs/hosted.md)."""
    if not qids:
        return set()
    rows = conn.execute(
        "SELECT DISTINCT qid FROM hosted_links WHERE qid IN (SELECT value FROM json_each(?))"
        " AND expires + ? > ?",
        (json.dumps(qids), days * 86400.0, now),
    )
    return {r[0] for r in rows}


class HostedDecisions(Database):
    """The decisions whose certificate is owed (the queue manager hands them out to a
    certificate worker: :mod:`relay.certify.acceptance`)."""

    async def decisions_due(self, limit: int = 100) -> list[str]:
        """Messages with a decision whose certificate is not made yet."""
        return await self._read(
            lambda: [
                r[0]
                for r in self._conn.execute(
                    "SELECT DISTINCT qid FROM hosted_links WHERE decision_cert_state = 'pending'"
                    " LIMIT ?",
                    (limit,),
                )
            ]
        )

    async def decisions_pending(self, qid: str) -> list[dict[str, Any]]:
        """The decisions of ``qid`` whose certificate is owed, with their detail."""

        def read() -> list[dict[str, Any]]:
            return query_rows(
                self._conn,
                "SELECT h.recipient_id, h.decision, h.decided_at, h.decision_detail,"
                " h.decision_cert_id, h.decision_page, r.address FROM hosted_links h"
                " JOIN recipients r ON r.id = h.recipient_id"
                " WHERE h.qid = ? AND h.decision_cert_state = 'pending' ORDER BY h.recipient_id",
                (qid,),
            )

        return await self._read(read)

    async def decision_certified(self, recipient_id: int) -> None:
        await self._run(
            lambda: self._conn.execute(
                "UPDATE hosted_links SET decision_cert_state = 'done' WHERE recipient_id = ?",
                (recipient_id,),
            )
        )
