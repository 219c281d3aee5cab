"""Helpers for the tests that drive SMS through the real gateway: a configuration with
an ``[sms]`` section pointing at the test SMSC (tests/smsc.py), an SMS sent through
submission (:func:`submit_sms`), or put in the gateway's queue as its intake does
(:func:`enqueue_sms`: spool file, then the message row with its ``sms_messages`` row,
in the queue's own :class:`~relay.queue.store.Store`; for a queue the intake would not
fill, such as one with ``[sms]`` off), and polling the queue's tables with a deadline
(no sleeps)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from relay.queue.credits import FREE, CreditTerms
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.records import NewMessage, SmsContent
from relay.queue.spool import Spool
from relay.queue.store import Store
from relay.sms.encoding import EncodedSms, encode_sms
from tests.conftest import CERT_ADDRESS, Gateway, write_config

T = TypeVar("T")

SMS_DOMAIN = "sms.certifica.localhost"
SMSC_PASSWORD = "secret"  # tests/smsc.py TestSmsc's default  # noqa: S105


def sms_config(
    tmp: Path,
    smsc_port: int,
    routes: dict[str, int],
    extra: str = "",
    *,
    enabled: bool = True,
    response_timeout: float = 2.0,
    receipt_timeout: float = 172800.0,
) -> Path:
    """A gateway configuration whose ``[sms]`` binds to the test SMSC on ``smsc_port``."""
    (tmp / "smsc.password").write_text(SMSC_PASSWORD + "\n")
    return write_config(
        tmp,
        routes,
        extra
        + f"""
[sms]
enabled = {"true" if enabled else "false"}
smsc = "127.0.0.1:{smsc_port}"
system_id = "esme"
password_file = "smsc.password"
source = "ACME"
response_timeout = {response_timeout}
receipt_timeout = {receipt_timeout}
""",
    )


def encoded(text: str, reference: int = 7) -> EncodedSms:
    sms = encode_sms(text, max_segments=6, reference=reference)
    assert isinstance(sms, EncodedSms)
    return sms


def enqueue_sms(
    state: Path,
    numbers: list[str],
    text: str,
    *,
    certified: bool = False,
    org: str | None = None,
    sender_id: str = "ACME",
    lifetime: float = 30.0,
    credit_terms: CreditTerms = FREE,
) -> tuple[str, EncodedSms]:
    """Queue ``text`` for ``numbers`` (E.164) as the intake does: the spool file first,
    then one transaction with the message, its recipients and its SMS text."""
    sms = encoded(text)
    content = SmsContent(
        text=text,
        text_sha256=hashlib.sha256(text.encode()).hexdigest(),
        alphabet=str(sms.alphabet),
        data_coding=sms.data_coding,
        esm_class=sms.esm_class,
        parts=tuple(p.hex() for p in sms.parts),
        units=sms.units,
        sender_id=sender_id,
    )
    qid = new_queue_id()
    raw = (
        "From: alice@example.com\r\nTo: " + ", ".join(f"{n}@{SMS_DOMAIN}" for n in numbers)
        + "\r\nSubject: SMS\r\nMessage-ID: <" + qid + "@example.com>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n"
    ).encode()  # fmt: skip
    Spool(state / "spool").store(qid, raw)
    store = Store(state / "queue.db", lifetime, credit_terms)
    try:
        asyncio.run(
            store.enqueue(
                NewMessage(
                    qid=qid,
                    kind="mail",
                    sender="alice@example.com",
                    size=len(raw),
                    sha256=hashlib.sha256(raw).hexdigest(),
                    recipients=tuple(f"{n}@{SMS_DOMAIN}" for n in numbers),
                    certified=certified,
                    cert_id=new_certificate_id() if certified else None,
                    method="submission",
                    auth_user="alice@example.com",
                    org=org,
                    subject="SMS",
                    sms=content,
                )
            )
        )
    finally:
        store.close()
    return qid, sms


def submit_sms(gw: Gateway, numbers: list[str], text: str, *, certified: bool = False) -> str:
    """Send ``text`` to ``numbers`` (E.164) as alice through submission, with the
    certification address in Cc when ``certified``; the queue id of the 250."""
    to = ", ".join(f"{n}@{SMS_DOMAIN}" for n in numbers)
    raw = (
        f"From: Alice <alice@example.com>\r\nTo: {to}\r\n"
        + (f"Cc: {CERT_ADDRESS}\r\n" if certified else "")
        + f"Subject: SMS\r\nMessage-ID: <{time.monotonic_ns()}@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{text}\r\n"
    ).encode()
    rcpts = [f"{n}@{SMS_DOMAIN}" for n in numbers] + ([CERT_ADDRESS] if certified else [])
    with gw.smtp() as client:
        client.mail("alice@example.com")
        for r in rcpts:
            code, reply = client.rcpt(r)
            assert code == 250, (r, reply)
        code, reply = client.data(raw)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[1]


def stored_parts(state: Path, qid: str) -> list[bytes]:
    """The exact ``short_message`` octets of each part, as the queue holds them."""
    (row,) = rows(state, "SELECT parts FROM sms_messages WHERE qid = ?", qid)
    return [bytes.fromhex(p) for p in json.loads(row["parts"])]


def rows(state: Path, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of the gateway's queue database (read only, beside the running gateway)."""
    conn = sqlite3.connect(f"file:{state / 'queue.db'}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, args)]
    finally:
        conn.close()


def recipient(state: Path, qid: str, number: str) -> dict[str, Any]:
    (row,) = rows(
        state,
        "SELECT * FROM recipients WHERE qid = ? AND address = ?",
        qid,
        f"{number}@{SMS_DOMAIN}",
    )
    return row


def parts(state: Path, qid: str, number: str | None = None) -> list[dict[str, Any]]:
    sql = "SELECT p.* FROM sms_parts p JOIN recipients r ON r.id = p.recipient_id WHERE p.qid = ?"
    args: tuple[Any, ...] = (qid,)
    if number is not None:
        sql += " AND r.address = ?"
        args += (f"{number}@{SMS_DOMAIN}",)
    return rows(state, sql + " ORDER BY p.id", *args)


def wait_until(what: Callable[[], T | None], timeout: float = 60.0, say: str = "") -> T:
    """Poll ``what`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {say or what}")
        time.sleep(0.05)


def status_is(state: Path, qid: str, number: str, *states: str) -> Callable[[], bool]:
    return lambda: recipient(state, qid, number)["status"] in states
