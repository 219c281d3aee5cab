"""Certified SMS in the queue (docs/sms.md): the text a message's SMS recipients are
sent, each ``submit_sm`` of each part, the operators' delivery receipts matched to them,
and the messages phones send back (MO).

An SMS recipient is a row of ``recipients`` like any other (its address
``+34600111222@sms.<gateway domain>``, its domain the SMS domain), leased and retried
by the same queue. What differs is how an attempt ends: when the SMSC took every part
the recipient is ``submitted`` (not final), and the operator's receipts, or
``[sms] receipt_timeout`` without one, make it final.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from relay.queue.db import Database


def _rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    columns = [d[0] for d in cursor.description]
    return [dict(zip(columns, values, strict=True)) for values in cursor]


def sms_message_row(conn: sqlite3.Connection, qid: str) -> dict[str, Any] | None:
    """``sms_messages``' row of ``qid`` with ``parts`` and ``skipped`` read from their
    JSON; None when the message has no SMS recipients."""
    rows = _rows(conn.execute("SELECT * FROM sms_messages WHERE qid = ?", (qid,)))
    if not rows:
        return None
    row = rows[0]
    row["parts"] = json.loads(row["parts"])
    row["skipped"] = json.loads(row["skipped"])
    return row


class SmsQueue(Database):
    """SMS texts, parts, receipts and MO messages (module docstring)."""

    async def sms_message(self, qid: str) -> dict[str, Any] | None:
        """The SMS text of ``qid`` and its parts (:func:`sms_message_row`)."""
        return await self._read(lambda: sms_message_row(self._conn, qid))

    async def sms_parts_of(self, qid: str) -> list[dict[str, Any]]:
        """Every ``submit_sm`` of every part of ``qid``, by recipient, part, attempt."""
        return await self._read(
            lambda: _rows(
                self._conn.execute(
                    "SELECT * FROM sms_parts WHERE qid = ? ORDER BY recipient_id, seq, id",
                    (qid,),
                )
            )
        )

    async def sms_receipts_of(self, qid: str) -> list[dict[str, Any]]:
        """The receipts matched to the parts of ``qid``, in the order they came."""
        return await self._read(
            lambda: _rows(
                self._conn.execute(
                    "SELECT s.*, p.recipient_id, p.seq FROM sms_receipts s"
                    " JOIN sms_parts p ON p.id = s.part_id WHERE p.qid = ? ORDER BY s.id",
                    (qid,),
                )
            )
        )
