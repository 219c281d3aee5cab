"""SMS recipients leave the queue through the ``sms`` process and come back with the
operator's receipts (docs/sms.md "Delivery", "Receipts"): the real gateway, bound to
the test SMSC (tests/smsc.py, smpp34's codec), one of each for the module; every SMS
sent by alice (an admin of ACME) through submission.

What the SMSC received is compared byte for byte with the parts stored for the
message; states, evidence and credits are read from the gateway's queue database."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.queue.records import NewMessage, Outcome, SmsContent
from relay.queue.sms import BROKEN_ATTEMPT, NO_RECEIPT, SmsAttempt
from relay.queue.store import Store
from relay.sms.inbound import DeliveryReceipt, ReceiptState
from relay.sms.smpp import Outcome as SubmitOutcome
from relay.sms.smpp import SubmitResult
from tests.conftest import Gateway, Sink, SinkServer, assert_clean_log, start_gateway
from tests.sms_queue import (
    SMS_DOMAIN,
    enqueue_sms,
    parts,
    recipient,
    rows,
    sms_config,
    status_is,
    stored_parts,
    submit_sms,
    wait_until,
)
from tests.smsc import Answer, SmscThread

RECEIPT_TIMEOUT = 6.0
TWO_PARTS = "Su cita del jueves 4 a las 10:00 en la calle Mayor 12 queda confirmada. " * 3


@pytest.fixture(scope="module")
def smsc() -> Iterator[SmscThread]:
    with SmscThread() as smsc:
        yield smsc


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, smsc: SmscThread, sink_server: SinkServer
) -> Iterator[Gateway]:
    mx = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("sms")
    cfg = sms_config(
        tmp,
        smsc.port,
        {"example.com": mx.port},
        extra="[credits]\nemail_recipient = 2\nsms_segment = 1\n",
        receipt_timeout=RECEIPT_TIMEOUT,
    )
    gw = start_gateway(cfg)
    assert gw.cli("org", "add", "ACME", "--name", "Acme S.L.").returncode == 0
    assert gw.cli("credits", "add", "ACME", "100").returncode == 0
    joined = gw.cli("users", "set", "alice@example.com", "--org", "ACME", "--role", "admin")
    assert joined.returncode == 0, joined.stderr
    smsc.wait_for(lambda: smsc.smsc.binds >= 1)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def submits_to(smsc: SmscThread, number: str) -> list[Any]:
    """The submit_sm the SMSC received for ``number``, in order (decoded by smpp34)."""
    return [
        r for r in list(smsc.smsc.received)
        if r.name == "submit_sm" and r.submit.destination_addr == number.lstrip("+")
    ]  # fmt: skip


def accepted_ids(smsc: SmscThread, number: str) -> list[str]:
    return [r.fields["message_id"] for r in submits_to(smsc, number) if "message_id" in r.fields]


def events(state: Path, qid: str, event: str) -> list[dict[str, Any]]:
    found = rows(state, "SELECT * FROM evidence WHERE qid = ? AND event = ?", qid, event)
    for row in found:
        row["detail"] = json.loads(row["detail"])
    return found


def holds(state: Path, qid: str) -> list[str]:
    return [r["state"] for r in rows(state, "SELECT state FROM credit_holds WHERE qid = ?", qid)]


def test_receipts_deliver_and_the_certificate_is_made(gw: Gateway, smsc: SmscThread) -> None:
    one, two = "+34600111001", "+34600111002"
    qid = submit_sms(gw, [one, two], TWO_PARTS + "€", certified=True)
    assert len(stored_parts(gw.state, qid)) == 2
    for n in (one, two):
        wait_until(lambda n=n: len(accepted_ids(smsc, n)) == 2, say=f"{n}'s two parts")
        wait_until(status_is(gw.state, qid, n, "submitted"))
    # Byte for byte: what the SMSC read (smpp34) is what the queue holds for the message.
    stored = rows(gw.state, "SELECT * FROM sms_messages WHERE qid = ?", qid)[0]
    for n in (one, two):
        got = sorted(submits_to(smsc, n), key=lambda r: r.submit.short_message[5])
        assert [r.submit.short_message.hex() for r in got] == json.loads(stored["parts"])
        for r in got:
            assert (r.submit.data_coding, r.submit.esm_class) == (0, 0x40)
            assert (r.submit.source_addr, r.submit.registered_delivery) == ("ACME", 1)
    # One receipt per part: TLV style for one number, Appendix B text for the other.
    for message_id in accepted_ids(smsc, one):
        assert smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD", style="tlv")) == 0
    for message_id in accepted_ids(smsc, two):
        assert smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD", style="text")) == 0
    for n in (one, two):
        wait_until(status_is(gw.state, qid, n, "delivered"))
        row = recipient(gw.state, qid, n)
        assert "DELIVRD" in row["reply_text"] and row["attempts"] == 1
        matched = [p for p in parts(gw.state, qid, n) if p["receipt_state"]]
        assert [p["receipt_state"] for p in matched] == ["DELIVRD", "DELIVRD"]
    receipts = events(gw.state, qid, "SmsDeliveryReceipt")
    assert len(receipts) == 4 and all(e["detail"]["state"] == "DELIVRD" for e in receipts)
    assert len(events(gw.state, qid, "SmsSubmitted")) == 4
    assert len(events(gw.state, qid, "RelayToNonERDS")) == 2
    assert holds(gw.state, qid) == ["spent", "spent"]
    wait_until(lambda: rows(gw.state, "SELECT cert_state FROM messages WHERE qid = ?", qid)[0]
               ["cert_state"] == "done", say="the certificate")  # fmt: skip


def test_undelivered_fails_and_its_credits_are_spent(gw: Gateway, smsc: SmscThread) -> None:
    n = "+34600111003"
    qid = submit_sms(gw, [n], "Hola", certified=True)
    (message_id,) = wait_until(lambda: accepted_ids(smsc, n))
    # An intermediate notification first: recorded, not final.
    assert smsc.call(smsc.smsc.send_receipt(message_id, "ENROUTE", style="both")) == 0
    wait_until(lambda: len(events(gw.state, qid, "SmsDeliveryReceipt")) == 1)
    assert recipient(gw.state, qid, n)["status"] == "submitted"
    assert smsc.call(smsc.smsc.send_receipt(message_id, "UNDELIV", style="both", err="001")) == 0
    wait_until(status_is(gw.state, qid, n, "failed"))
    row = recipient(gw.state, qid, n)
    assert "UNDELIV" in row["reply_text"] and "error 001" in row["reply_text"]
    assert holds(gw.state, qid) == ["spent"]  # a wrong but valid number costs
    (failure,) = events(gw.state, qid, "RelayToNonERDSFailure")
    assert "refunded" not in failure["detail"]


def test_a_permanent_error_fails_and_is_refunded(gw: Gateway, smsc: SmscThread) -> None:
    n = "+34600111004"
    smsc.smsc.answers.append(Answer.INVALID_DESTINATION)
    qid = submit_sms(gw, [n], "Hola", certified=True)
    wait_until(status_is(gw.state, qid, n, "failed"))
    row = recipient(gw.state, qid, n)
    assert "ESME_RINVDSTADR" in row["reply_text"] and row["reply_code"] is None
    assert holds(gw.state, qid) == ["refunded"]
    (part,) = parts(gw.state, qid, n)
    assert (part["state"], part["command_status"]) == ("failed", 0x0B)
    (failed,) = events(gw.state, qid, "SmsSubmitFailed")
    assert failed["detail"]["command_status"] == 0x0B
    assert len(submits_to(smsc, n)) == 1


def test_throttling_defers_and_only_the_missing_part_is_sent_again(
    gw: Gateway, smsc: SmscThread
) -> None:
    n = "+34600111005"
    smsc.smsc.answers.extend([Answer.OK, Answer.THROTTLED])
    qid = submit_sms(gw, [n], TWO_PARTS)
    wait_until(status_is(gw.state, qid, n, "submitted"))
    got = submits_to(smsc, n)
    assert len(got) == 3  # two, then the throttled one again
    assert got[2].submit.short_message == got[1].submit.short_message
    assert sorted(r.submit.short_message for r in got[::2]) == sorted(stored_parts(gw.state, qid))
    states = [(p["seq"], p["state"], p["command_status"]) for p in parts(gw.state, qid, n)]
    assert ("deferred" in [s for _, s, _ in states]) and (0x58 in [c for _, _, c in states])
    assert recipient(gw.state, qid, n)["attempts"] == 2
    # A full queue is throttling too.
    m = "+34600111006"
    smsc.smsc.answers.append(Answer.QUEUE_FULL)
    qid2 = submit_sms(gw, [m], "Hola")
    wait_until(status_is(gw.state, qid2, m, "submitted"))
    assert [p["command_status"] for p in parts(gw.state, qid2, m)] == [0x14, 0]
    for message_id in accepted_ids(smsc, n) + accepted_ids(smsc, m):
        smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD"))
    wait_until(status_is(gw.state, qid, n, "delivered"))
    wait_until(status_is(gw.state, qid2, m, "delivered"))


def test_a_dropped_connection_is_a_maybe_duplicate(gw: Gateway, smsc: SmscThread) -> None:
    n = "+34600111007"
    smsc.smsc.answers.append(Answer.DROP)
    qid = submit_sms(gw, [n], "Hola")
    wait_until(status_is(gw.state, qid, n, "submitted"))
    first, second = parts(gw.state, qid, n)
    assert (first["state"], first["maybe_duplicate"]) == ("deferred", 1)
    assert (second["state"], second["maybe_duplicate"]) == ("accepted", 1)
    (submitted,) = events(gw.state, qid, "SmsSubmitted")
    assert submitted["detail"]["maybe_duplicate"] is True
    assert len(submits_to(smsc, n)) == 2
    (message_id,) = accepted_ids(smsc, n)
    smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD"))
    wait_until(status_is(gw.state, qid, n, "delivered"))


def test_an_outage_of_the_smsc_defers_then_sends(gw: Gateway, smsc: SmscThread) -> None:
    n = "+34600111008"
    smsc.smsc.accepting = False
    try:
        smsc.call(smsc.smsc.drop())
        qid = submit_sms(gw, [n], "Hola")
        wait_until(lambda: any(p["state"] == "deferred" for p in parts(gw.state, qid, n)))
        assert "not bound" in recipient(gw.state, qid, n)["reply_text"]
        assert submits_to(smsc, n) == []
    finally:
        smsc.smsc.accepting = True
    wait_until(status_is(gw.state, qid, n, "submitted"))
    (message_id,) = accepted_ids(smsc, n)
    smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD"))
    wait_until(status_is(gw.state, qid, n, "delivered"))


def test_no_receipt_within_the_timeout_is_delivered_with_a_note(
    gw: Gateway, smsc: SmscThread
) -> None:
    n = "+34600111009"
    qid = submit_sms(gw, [n], "Hola")
    wait_until(status_is(gw.state, qid, n, "submitted"))
    wait_until(status_is(gw.state, qid, n, "delivered"), timeout=RECEIPT_TIMEOUT + 30)
    row = recipient(gw.state, qid, n)
    assert row["note"] == f"{NO_RECEIPT} within {RECEIPT_TIMEOUT:g} seconds"
    assert row["attempts"] == 1


def test_a_message_from_a_phone_is_kept(gw: Gateway, smsc: SmscThread) -> None:
    status = smsc.call(smsc.smsc.send_mo("34600999888", "ACME", b"Gracias, alli estare"))
    assert status == 0  # acknowledged after it was stored
    (mo,) = rows(gw.state, "SELECT * FROM sms_inbound WHERE source = '+34600999888'")
    assert mo["text"] == "Gracias, alli estare" and mo["destination"] == "ACME"
    assert b"Gracias" in mo["raw"] and len(mo["raw"]) > len(b"Gracias, alli estare") + 16


def test_status_shows_the_sms_process(gw: Gateway) -> None:
    out = gw.cli("status")
    assert out.returncode == 0, out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("sms[0]")]
    assert "bound to 127.0.0.1:" in line


# -- the store alone: a receipt that comes before its part's acceptance is committed --


def _receipt(message_id: str, state: ReceiptState) -> DeliveryReceipt:
    text = f"id:{message_id} stat:{state} err:000".encode()
    return DeliveryReceipt(
        message_id=message_id, state=state, submit_date="", done_date="2612031746",
        error="000", submitted="", delivered="", network_error_code=b"", text_fields={},
        tlv_state=None, source_addr="+34600111222", destination_addr="ACME",
        short_message=text, esm_class=0x04, raw=b"\0\0\0\x10" + text,
    )  # fmt: skip


def test_a_receipt_before_the_acceptance_is_matched_when_it_is_recorded(tmp_path: Path) -> None:
    async def run() -> None:
        store = Store(tmp_path / "queue.db", 3600.0)
        try:
            content = SmsContent("Hola", "x", "gsm", 0, 0, ("486f6c61",), 4, "ACME")
            await store.enqueue(
                NewMessage("Q1", "mail", "a@example.com", 4, "x",
                           (f"+34600111222@{SMS_DOMAIN}",), sms=content)
            )  # fmt: skip
            (rcpt,) = await store.recipients("Q1")
            (part,) = await store.sms_start_attempt("Q1", rcpt["id"], 1, 100.0)
            # The SMSC answered 00A1B2 and sent the receipt at once, in decimal, before
            # the gateway committed the answer: it is kept, unmatched.
            early = _receipt("41394", ReceiptState.DELIVERED)
            assert await store.record_sms_receipt(early, 101.0) is None
            assert len(await store.sms_unmatched_receipts()) == 1
            attempt = SmsAttempt("Q1", rcpt["id"], 0, expires=9e9, next_attempt=200.0)
            accepted = SubmitResult(SubmitOutcome.ACCEPTED, message_id="00A1B2", command_status=0)
            state = await store.record_sms_attempt(attempt, [(part, accepted)], 102.0)
            assert state == "delivered"
            assert await store.sms_unmatched_receipts() == []
            (row,) = await store.recipients("Q1")
            assert row["attempts"] == 1 and "DELIVRD" in row["reply_text"]
            # Idempotent: a final recipient stays as it is.
            late = Outcome(rcpt["id"], "failed", None, None, "late")
            await store.record("Q1", [late], 104.0)
            (row,) = await store.recipients("Q1")
            assert row["status"] == "delivered"
        finally:
            store.close()

    asyncio.run(run())


# -- an SMSC's odd message ids (SMPP 3.4 section 5.2.23: at most 65 octets) ---------


@pytest.mark.parametrize(
    "number, message_id, style",
    [("+34600111011", "9" * 5000, "tlv"), ("+34600111012", "ID-" + "7" * 63, "both")],
    ids=["5000 digits", "66 characters"],
)
def test_an_overlong_message_id_is_recorded_once_and_its_receipt_matched(
    gw: Gateway, smsc: SmscThread, number: str, message_id: str, style: str
) -> None:
    smsc.smsc.message_ids.append(message_id)
    qid = submit_sms(gw, [number], "Hola")
    wait_until(status_is(gw.state, qid, number, "submitted"))
    (part,) = parts(gw.state, qid, number)
    assert part["message_id"] == message_id and len(part["match_key"]) == 65
    assert smsc.call(smsc.smsc.send_receipt(message_id, "DELIVRD", style=style)) == 0
    wait_until(status_is(gw.state, qid, number, "delivered"))
    assert recipient(gw.state, qid, number)["attempts"] == 1
    assert len(submits_to(smsc, number)) == 1  # sent once: never again for its odd id
    (receipt,) = events(gw.state, qid, "SmsDeliveryReceipt")
    assert receipt["detail"]["message_id"] == message_id


def test_a_receipt_nothing_matches_is_kept_and_acknowledged(gw: Gateway, smsc: SmscThread) -> None:
    unknown = "8" * 5000
    # ESME_ROK: kept (unmatched), so the SMSC does not send it again and again.
    assert smsc.call(smsc.smsc.send_receipt(unknown, "DELIVRD", style="tlv")) == 0
    (kept,) = rows(gw.state, "SELECT * FROM sms_receipts WHERE message_id = ?", unknown)
    assert kept["part_id"] is None and kept["match_key"] == "8" * 65
    assert kept["state"] == "DELIVRD" and unknown.encode() in kept["raw"]


# -- an attempt the gateway cannot record: counted, backed off, failed at expiry ------


def test_an_attempt_that_cannot_be_recorded_backs_off_and_fails_at_expiry(
    tmp_path: Path, sink_server: SinkServer
) -> None:
    n = "+34600111013"
    mx = sink_server.start(Sink())
    with SmscThread() as own:
        gw = start_gateway(sms_config(tmp_path, own.port, {"example.com": mx.port}))
        try:
            own.wait_for(lambda: own.smsc.binds >= 1)
            # A fault that lasts: every acceptance the SMSC gives fails to be written.
            conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
            with conn:
                conn.execute(
                    "CREATE TRIGGER test_unrecordable BEFORE UPDATE OF state ON sms_parts"
                    " WHEN NEW.state = 'accepted' BEGIN SELECT RAISE(ABORT, 'no'); END"
                )
            conn.close()
            qid, _ = enqueue_sms(gw.state, [n], "Hola", lifetime=5.0)
            wait_until(status_is(gw.state, qid, n, "failed"), timeout=60)
            row = recipient(gw.state, qid, n)
            assert row["reply_text"].startswith("retries exhausted after")
            assert row["reply_text"].endswith(BROKEN_ATTEMPT)
            # Each attempt submitted it once and was counted, with the backoff between
            # them: not one submit_sm a second, forever.
            sent = [r for r in own.smsc.of("submit_sm") if r.submit.destination_addr == n[1:]]
            assert 1 <= len(sent) == row["attempts"] <= 5
            states = [(p["state"], p["maybe_duplicate"]) for p in parts(gw.state, qid, n)]
            assert states == [("submitting", 0)] + [("submitting", 1)] * (len(sent) - 1)
            deferred = events(gw.state, qid, "RelayAttemptDeferred")
            assert len(deferred) == len(sent) - 1
            assert all(BROKEN_ATTEMPT in e["detail"]["reply"] for e in deferred)
            (failure,) = events(gw.state, qid, "RelayToNonERDSFailure")
            assert "refunded" not in failure["detail"]  # the SMSC took it: it may arrive
        finally:
            gw.stop()
    log = gw.log()
    assert "Traceback" not in log
    assert f"{qid}: SMS attempt failed unexpectedly; will retry" in log


def test_a_broken_attempt_is_refunded_only_when_nothing_left(tmp_path: Path) -> None:
    async def run() -> None:
        store = Store(tmp_path / "queue.db", 3600.0)
        try:
            content = SmsContent("Hola", "x", "gsm", 0, 0, ("486f6c61",), 4, "ACME")
            numbers = (f"+34600111222@{SMS_DOMAIN}", f"+34600111333@{SMS_DOMAIN}")
            await store.enqueue(
                NewMessage("Q2", "mail", "a@example.com", 4, "x", numbers, sms=content)
            )
            first, second = await store.recipients("Q2")
            # Before its expiry: deferred with the backoff given, the attempt counted.
            attempt = SmsAttempt("Q2", first["id"], 0, expires=500.0, next_attempt=160.0)
            assert await store.record_sms_broken(attempt, 100.0) == "deferred"
            row = (await store.recipients("Q2"))[0]
            assert (row["attempts"], row["next_attempt"]) == (1, 160.0)
            # Past it: failed; nothing ever left for the first, so refunded...
            late = SmsAttempt("Q2", first["id"], 1, expires=500.0, next_attempt=999.0)
            assert await store.record_sms_broken(late, 600.0) == "failed"
            # ...while a part the SMSC may have taken keeps the second's credits spent.
            await store.sms_start_attempt("Q2", second["id"], 1, 100.0)
            late = SmsAttempt("Q2", second["id"], 0, expires=500.0, next_attempt=999.0)
            assert await store.record_sms_broken(late, 600.0) == "failed"
            refunds = [
                e.detail.get("refunded", False)
                for e in await store.evidence_for("Q2")
                if e.event == "RelayToNonERDSFailure"
            ]
            assert refunds == [True, False]
        finally:
            store.close()

    asyncio.run(run())
