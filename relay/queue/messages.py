"""The queue's messages: recording one as it is accepted, reading it back, and finding the
work it still needs (a notice, a certificate, a report, closing it).

A message is owned by the gateway from the commit of :meth:`Messages.enqueue` on: an
intake answers 250 only after it (RFC 5321 6.1). A certified message of an organisation
reserves its credits in that same transaction (:func:`relay.queue.credits.reserve`), so
the 250 and the credits are one decision: short of credits, nothing is written and the
intake refuses it (docs/credits.md). Each SMS recipient reserves its segments at the
price of its number, certified or not (docs/sms.md, "Credits"), and the message's SMS
text and parts (``sms_messages``) are written in the same transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from relay.queue import credits, evidence_log
from relay.queue.credits import Charge, Credits
from relay.queue.db import insert_row, update_message, update_message_if
from relay.queue.records import NewMessage, domain_of
from relay.queue.states import (
    DocumentState,
    MessageKind,
    MessageState,
    Product,
    RecipientState,
)
from relay.queue.tracking import mark_addendum_at


class Messages(Credits):
    """Messages and their recipients as the intakes queue them and the queue manager reads them."""

    async def enqueue(self, msg: NewMessage, now: float | None = None) -> None:
        """Record a spooled message and its recipients; the message is owned from now on."""
        await self._run(self._enqueue, msg, now or time.time())

    def _enqueue(self, msg: NewMessage, now: float) -> None:
        # Certified mail of an organisation reserves its recipients' credits with its
        # 250, and an SMS recipient its segments whether certified or not (an SMS costs
        # the operator money); other kinds (the gateway's own mail, reception,
        # postmaster) reserve none, and with the prices 0 nothing is read or written.
        terms = self.credit_terms
        prices: dict[str, tuple[Product, int, int]] = {}  # address: product, amount, units
        if msg.org and msg.kind == MessageKind.MAIL:
            segments = len(msg.sms.parts) if msg.sms is not None else 0
            for rcpt in msg.recipients:
                if msg.sms is not None and terms.is_sms(rcpt):
                    per = terms.sms_segment_price(rcpt.partition("@")[0])
                    prices[rcpt] = (Product.SMS_SEGMENT, per * segments, segments)
                elif msg.certified:
                    prices[rcpt] = (Product.EMAIL_RECIPIENT, terms.email_recipient, 1)
        payer = msg.org if any(amount > 0 for _, amount, _ in prices.values()) else None
        if payer:
            needed = sum(amount for _, amount, _ in prices.values())
            have = credits.balance(self._conn, payer)
            if have < needed:  # nothing written: the intake refuses the message
                raise terms.short(payer, have, needed)
        insert_row(
            self._conn,
            "messages",
            {
                "qid": msg.qid,
                "kind": msg.kind,
                "parent_qid": msg.parent_qid,
                "created": now,
                "expires": now + self.lifetime,
                "sender": msg.sender,
                "size": msg.size,
                "sha256": msg.sha256,
                "certified": int(msg.certified),
                "cert_id": msg.cert_id,
                "auth_user": msg.auth_user,
                "client_ip": msg.client_ip,
                "client_helo": msg.client_helo,
                "tls_version": msg.tls_version,
                "tls_cipher": msg.tls_cipher,
                "method": msg.method,
                "tracking": int(msg.tracking),
                "header_from": msg.header_from,
                "envelope_from": msg.envelope_from,
                "authentication": json.dumps(msg.authentication)
                if msg.authentication is not None
                else None,
                "reception": json.dumps(msg.reception) if msg.reception is not None else None,
                "content_key": msg.content_key,
                "summary": json.dumps(msg.summary) if msg.summary is not None else None,
                "dsn_ret": msg.dsn_ret,
                "dsn_envid": msg.dsn_envid,
                "original_to": json.dumps(list(msg.original_to)) if msg.original_to else None,
                "org": msg.org,
                "subject": msg.subject,
                "hosted_mode": msg.hosted,
                "state": MessageState.ACTIVE,
                "notice_state": DocumentState.PENDING
                if msg.certified and msg.kind == MessageKind.MAIL
                else DocumentState.NONE,
                "cert_state": DocumentState.PENDING if msg.certified else DocumentState.NONE,
            },
        )
        holds: list[credits.Hold] = []
        for rcpt in msg.recipients:
            insert_row(
                self._conn,
                "recipients",
                {
                    "qid": msg.qid,
                    "address": rcpt,
                    "domain": domain_of(rcpt),
                    "status": RecipientState.QUEUED,
                    "next_attempt": now,
                    "notify": msg.notify.get(rcpt),
                    "orcpt": msg.orcpt.get(rcpt),
                    # an SMS carries its text only (docs/sms.md)
                    "hosted": None if terms.is_sms(rcpt) and msg.sms else msg.hosted,
                },
            )
            if payer and rcpt in prices:  # its hold names it
                product, amount, units = prices[rcpt]
                rid = int(self._conn.execute("SELECT last_insert_rowid()").fetchone()[0])
                holds.append(credits.Hold(rid, product, amount, units))
        if msg.sms is not None:  # docs/sms.md
            sms = msg.sms
            self._conn.execute(
                "INSERT INTO sms_messages (qid, text, text_sha256, alphabet, data_coding,"
                " esm_class, parts, units, marketing, sender_id, skipped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    msg.qid,
                    sms.text,
                    sms.text_sha256,
                    sms.alphabet,
                    sms.data_coding,
                    sms.esm_class,
                    json.dumps(list(sms.parts)),
                    sms.units,
                    int(sms.marketing),
                    sms.sender_id,
                    json.dumps(list(sms.skipped)),
                ),
            )
        if msg.event:
            evidence_log.append(self._conn, now, msg.qid, msg.event, msg.event_detail)
        if payer:
            credits.reserve(
                self._conn,
                payer,
                msg.qid,
                holds,
                terms,
                now,
                actor=msg.auth_user or msg.sender or "gateway",
            )

    async def message(self, qid: str) -> dict[str, Any] | None:
        return await self._read(self._message, qid)

    def _message(self, qid: str) -> dict[str, Any] | None:
        rows = list(self._db.query("SELECT * FROM messages WHERE qid = ?", (qid,)))
        return rows[0] if rows else None

    async def recipients(self, qid: str) -> list[dict[str, Any]]:
        return await self._read(self._recipients, qid)

    def _recipients(self, qid: str) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM recipients WHERE qid = ? ORDER BY id", (qid,)))

    async def mark(self, qid: str, **columns: Any) -> None:
        await self._run(self._mark, qid, columns)

    def _mark(self, qid: str, columns: dict[str, Any]) -> None:
        update_message(self._conn, qid, columns)

    async def enqueue_generated(
        self,
        msg: NewMessage | None,
        parent_qid: str,
        parent_columns: dict[str, Any],
        now: float,
        *,
        only_if: dict[str, Any] | None = None,
        evidence: tuple[str, dict[str, Any]] | None = None,
        evidence_qid: str | None = None,
        addendum_at: tuple[int, int, float] | None = None,
        charge: Charge | None = None,
    ) -> bool:
        """Queue a notice or certificate and update its parent in one transaction, with
        the parent's ``evidence`` entry (event, detail) if given. With ``only_if``, all
        of it happens only while the parent's columns still hold those values: False,
        and nothing written, when they do not (a document job that ran twice makes its
        document once; ARCHITECTURE.md §1, Hand-offs). The evidence entry is about
        ``evidence_qid`` (default: the parent); with no ``msg``, nothing is mailed (a
        document for a message without a sender). ``addendum_at`` (after_id, last_id,
        time): the recipients of those opens and clicks had this addendum. ``charge``: the
        document's price is taken from its organisation in the same transaction
        (:class:`relay.queue.credits.InsufficientCredits`, nothing written, when short)."""
        return await self._run(
            self._enqueue_generated,
            msg,
            parent_qid,
            parent_columns,
            now,
            only_if,
            evidence,
            evidence_qid,
            addendum_at,
            charge,
        )

    def _enqueue_generated(
        self,
        msg: NewMessage | None,
        parent_qid: str,
        parent_columns: dict[str, Any],
        now: float,
        only_if: dict[str, Any] | None = None,
        evidence: tuple[str, dict[str, Any]] | None = None,
        evidence_qid: str | None = None,
        addendum_at: tuple[int, int, float] | None = None,
        charge: Charge | None = None,
    ) -> bool:
        if only_if:
            if not update_message_if(self._conn, parent_qid, parent_columns, only_if):
                return False
        else:
            update_message(self._conn, parent_qid, parent_columns)
        if charge is not None:  # after the condition: a document made once is charged once
            credits.charge(self._conn, charge, self.credit_terms, now)
        if evidence is not None:
            about = evidence_qid or parent_qid
            evidence_log.append(self._conn, now, about, evidence[0], evidence[1])
        if addendum_at is not None:
            mark_addendum_at(self._conn, parent_qid, *addendum_at)
        if msg is not None:
            self._enqueue(msg, now)
        return True

    async def active_qids(self) -> set[str]:
        return await self._read(
            lambda: {
                r["qid"] for r in self._db.query("SELECT qid FROM messages WHERE state != 'done'")
            }
        )

    async def all_qids(self) -> set[str]:
        return await self._read(
            lambda: {r["qid"] for r in self._db.query("SELECT qid FROM messages")}
        )

    async def finished_in_spool(self, qids: Iterable[str]) -> dict[str, bool]:
        """Of ``qids`` (files still in the spool's queue), those whose message is done,
        with whether it must be archived (certified, a DSN, or postmaster mail the
        operator's mailbox refused) rather than removed."""
        wanted = list(qids)

        def _query() -> dict[str, bool]:
            found: dict[str, bool] = {}
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                for r in self._db.query(
                    f"SELECT qid, certified, kind, EXISTS (SELECT 1 FROM recipients r"  # noqa: S608
                    f" WHERE r.qid = messages.qid AND r.status = 'failed') AS failed"
                    f" FROM messages WHERE state = 'done' AND qid IN ({marks})",
                    chunk,
                ):
                    found[r["qid"]] = (
                        bool(r["certified"])
                        or r["kind"] == MessageKind.DSN
                        or (r["kind"] == MessageKind.POSTMASTER and bool(r["failed"]))
                    )
            return found

        return await self._read(_query)

    async def pending_work(
        self, candidates: Iterable[str] | None = None, limit: int = 256, now: float | None = None
    ) -> dict[str, list[str]]:
        """Active messages needing a notice, and (among ``candidates``, or all active
        ones when None) those whose recipients are all final: to certify or close. At
        most ``limit`` of each, oldest first; the next scan takes the rest. A recipient
        whose lease has not expired at ``now`` (default: the clock) is still being tried."""
        wanted = None if candidates is None else list(candidates)
        return await self._read(self._pending_work, wanted, limit, now or time.time())

    def _pending_work(
        self, candidates: list[str] | None, limit: int, now: float
    ) -> dict[str, list[str]]:
        notices = [
            r["qid"]
            for r in self._db.query(
                "SELECT qid FROM messages WHERE notice_state = 'pending' AND state != 'done'"
                " LIMIT ?",
                (limit,),
            )
        ]
        finished = (
            " SELECT 1 FROM recipients r WHERE r.qid = m.qid"
            "  AND (r.status NOT IN ('delivered', 'failed', 'withdrawn', 'bounced')"
            "       OR r.lease_until >= ?"  # an attempt still under way
            # hosted content not yet handed over nor expired (docs/hosted.md)
            "       OR r.status = 'delivered' AND EXISTS (SELECT 1 FROM hosted_links h"
            "          WHERE h.recipient_id = r.id AND h.state = 'waiting'))"
        )
        # The sender's report goes first; a document waiting for credits is not finished
        # (``credits add`` makes it pending again).
        no_report = " AND m.reports_pending = 0 AND m.cert_state != 'waiting'"
        if candidates is None:
            ready = [
                r["qid"]
                for r in self._db.query(
                    f"SELECT m.qid FROM messages m WHERE m.state = 'active' AND NOT EXISTS ({finished})"  # noqa: S608
                    f"{no_report} ORDER BY m.created LIMIT ?",
                    (now, limit),
                )
            ]
        else:
            ready = []
            for start in range(0, len(candidates), 500):
                chunk = candidates[start : start + 500]
                marks = ", ".join("?" for _ in chunk)
                ready += [
                    r["qid"]
                    for r in self._db.query(
                        f"SELECT m.qid FROM messages m WHERE m.qid IN ({marks})"  # noqa: S608
                        f" AND m.state = 'active' AND NOT EXISTS ({finished}){no_report}",
                        [*chunk, now],
                    )
                ]
        reports = [
            r["qid"]
            for r in self._db.query(
                "SELECT m.qid FROM messages m WHERE m.reports_pending = 1 AND m.state = 'active'"
                " AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.qid = m.qid"
                "  AND r.lease_until >= ?) LIMIT ?",  # one report per delivery round
                (now, limit),
            )
        ]
        return {"notices": notices, "finished": ready, "reports": reports}
