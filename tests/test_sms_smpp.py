"""The ESME client (relay/sms/smpp.py) against the test SMSC (tests/smsc.py) on loopback.

The SMSC decodes with smpp34, the client encodes with smpplib: the octets checked here
are what a second SMPP implementation read off the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trustme

from relay.sms.encoding import EncodedSms, encode_sms
from relay.sms.inbound import DeliveryReceipt, MobileOriginated, ReceiptState, receipt_matches
from relay.sms.smpp import (
    EsmeClient,
    Outcome,
    SmscSettings,
    SubmitResult,
    sender_address,
    status_sentence,
)
from tests.smsc import Answer, TestSmsc

DEST = "34600111222"
ACME = sender_address("ACME")


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        async with asyncio.timeout(60):
            await scenario()

    asyncio.run(bounded())


class Inbox:
    """What the client handed to its callbacks."""

    def __init__(self) -> None:
        self.receipts: list[DeliveryReceipt] = []
        self.mos: list[MobileOriginated] = []
        self.fail_receipts = False

    async def receipt(self, receipt: DeliveryReceipt) -> None:
        if self.fail_receipts:
            raise RuntimeError("the store is down")
        self.receipts.append(receipt)

    async def mo(self, message: MobileOriginated) -> None:
        self.mos.append(message)


@contextlib.asynccontextmanager
async def connected(
    smsc: TestSmsc, inbox: Inbox | None = None, **options: Any
) -> AsyncIterator[EsmeClient]:
    inbox = inbox or Inbox()
    settings = SmscSettings(
        "127.0.0.1", smsc.port, "esme", options.pop("password", "secret"),
        system_type=options.pop("system_type", ""), backoff_first=0.05,
        response_timeout=options.pop("response_timeout", 5.0), **options,
    )  # fmt: skip
    client = EsmeClient(settings, inbox.receipt, inbox.mo)
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        await client.stop()
        await task


def _encoded(text: str, reference: int = 7) -> EncodedSms:
    sms = encode_sms(text, max_segments=6, reference=reference)
    assert isinstance(sms, EncodedSms)
    return sms


def test_bind_as_transceiver_with_the_configured_identity() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc, system_type="CERT") as client:
            await asyncio.wait_for(client.bound.wait(), 10)
            (bind,) = smsc.of("bind_transceiver")
            assert bind.fields == {
                "system_id": "esme", "password": "secret", "system_type": "CERT",
                "interface_version": 0x34,
            }  # fmt: skip
        assert smsc.received[-1].name == "unbind"  # stop() unbinds

    run(scenario)


def test_a_refused_bind_is_retried_and_said_in_words() -> None:
    async def scenario() -> None:
        async with (
            TestSmsc() as smsc,
            connected(smsc, password="wrong", response_timeout=0.5) as client,
        ):
            await smsc.wait_for(lambda: len(smsc.of("bind_transceiver")) >= 2)
            assert not client.bound.is_set()
            assert "the password was refused (ESME_RINVPASWD, 0x0000000E)" in client.last_error
            result = await client.submit(DEST, ACME, b"hi", 0)
            assert result.outcome is Outcome.DEFERRED
            assert "not bound to the SMSC" in result.sentence

    run(scenario)


def test_gsm_segments_byte_for_byte_as_the_smsc_decodes_them() -> None:
    text = "Cita confirmada: jueves 10:00. Importe 25€ [ref. 118]. " * 4  # 236 chars
    sms = _encoded(text)
    assert sms.segments == 2

    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc) as client:
            results = await client.submit_encoded(DEST, ACME, sms)
            assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2
            assert [r.message_id for r in results] == [m for m, _ in smsc.accepted]
            submits = [r.submit for r in smsc.of("submit_sm")]
            assert sorted(s.short_message[5] for s in submits) == [1, 2]
            submits.sort(key=lambda s: s.short_message[5])
            for seq, submit in enumerate(submits, start=1):
                assert submit.short_message[:6] == bytes((0x05, 0x00, 0x03, 7, 2, seq))
                assert submit.esm_class == 0x40
                assert submit.data_coding == 0
                assert submit.registered_delivery == 1
                assert (submit.source_addr_ton, submit.source_addr_npi) == (5, 0)
                assert submit.source_addr == "ACME"
                assert (submit.dest_addr_ton, submit.dest_addr_npi) == (1, 1)
                assert submit.destination_addr == DEST
            body = b"".join(s.short_message[6:] for s in submits)
            # GSM 03.38 unpacked, one septet per octet; the euro and brackets escaped.
            once = b"Cita confirmada: jueves 10:00. Importe 25\x1be \x1b<ref. 118\x1b>. "
            assert body == once * 4
            assert len(submits[0].short_message) == 6 + 153

    run(scenario)


def test_ucs2_segments_byte_for_byte_and_an_international_sender() -> None:
    text = "Ça marche ✅ " * 10  # 120 UTF-16 units: two parts of at most 67
    sms = _encoded(text, reference=200)

    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc) as client:
            sender = sender_address("+34911222333")
            results = await client.submit_encoded("393123456789", sender, sms)
            assert all(r.outcome is Outcome.ACCEPTED for r in results)
            submits = sorted(
                (r.submit for r in smsc.of("submit_sm")), key=lambda s: s.short_message[5]
            )
            assert [s.data_coding for s in submits] == [8, 8]
            assert [s.esm_class for s in submits] == [0x40, 0x40]
            assert [s.short_message[:5] for s in submits] == [bytes((5, 0, 3, 200, 2))] * 2
            assert len(submits[0].short_message) == 6 + 134
            assert b"".join(s.short_message[6:] for s in submits).decode("utf-16-be") == text
            assert (submits[0].source_addr_ton, submits[0].source_addr_npi) == (1, 1)
            assert submits[0].source_addr == "34911222333"

    run(scenario)


def test_a_single_sms_has_no_udh() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc) as client:
            (result,) = await client.submit_encoded(DEST, ACME, _encoded("Hola"))
            assert result.outcome is Outcome.ACCEPTED
            (submit,) = [r.submit for r in smsc.of("submit_sm")]
            assert (submit.short_message, submit.esm_class, submit.data_coding) == (b"Hola", 0, 0)

    run(scenario)


def test_throttling_and_a_full_queue_defer_a_permanent_error_fails_in_words() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc) as client:
            smsc.answers.extend([Answer.THROTTLED, Answer.QUEUE_FULL, Answer.INVALID_DESTINATION])
            throttled = await client.submit(DEST, ACME, b"a", 0)
            full = await client.submit(DEST, ACME, b"b", 0)
            refused = await client.submit(DEST, ACME, b"c", 0)
            assert (throttled.outcome, throttled.command_status) == (Outcome.DEFERRED, 0x58)
            assert "throttling" in throttled.sentence and not throttled.maybe_duplicate
            assert (full.outcome, full.command_status) == (Outcome.DEFERRED, 0x14)
            assert "message queue is full" in full.sentence
            assert refused == SubmitResult(
                Outcome.FAILED,
                command_status=0x0B,
                sentence="the SMSC refused the SMS: the destination number was refused "
                "(ESME_RINVDSTADR, 0x0000000B)",
            )
            again = await client.submit(DEST, ACME, b"a", 0)  # once the SMSC takes it
            assert again.outcome is Outcome.ACCEPTED and again.message_id

    run(scenario)


def test_no_answer_is_deferred_as_a_possible_duplicate() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc, response_timeout=0.5) as client:
            smsc.answers.append(Answer.NO_ANSWER)
            result = await client.submit(DEST, ACME, b"a", 0)
            assert result.outcome is Outcome.DEFERRED and result.maybe_duplicate
            assert "the outcome is unknown" in result.sentence

    run(scenario)


def test_a_dropped_connection_defers_what_was_in_flight_and_reconnects() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc) as client:
            smsc.answers.append(Answer.DROP)
            lost = await client.submit(DEST, ACME, b"a", 0)
            assert lost.outcome is Outcome.DEFERRED and lost.maybe_duplicate
            assert "connection to the SMSC was lost before its answer" in lost.sentence
            await smsc.wait_for(lambda: smsc.binds == 2)
            again = await client.submit(DEST, ACME, b"a", 0)
            assert again.outcome is Outcome.ACCEPTED
            assert client.binds == 2

    run(scenario)


def test_the_window_holds_back_submits_beyond_it() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc, submit_window=2) as client:
            await asyncio.wait_for(client.bound.wait(), 10)
            smsc.answers.extend([Answer.NO_ANSWER, Answer.NO_ANSWER])
            tasks = [asyncio.create_task(client.submit(DEST, ACME, b"x", 0)) for _ in range(3)]
            await smsc.wait_for(lambda: len(smsc.of("submit_sm")) == 2)
            await smsc.drop()  # the two in flight are lost; the third goes on the next bind
            results = await asyncio.gather(*tasks)
            assert sorted(r.outcome for r in results) == [
                Outcome.ACCEPTED, Outcome.DEFERRED, Outcome.DEFERRED,
            ]  # fmt: skip
            names = [r.name for r in smsc.received]
            second_bind = [i for i, n in enumerate(names) if n == "bind_transceiver"][1]
            third_submit = [i for i, n in enumerate(names) if n == "submit_sm"][2]
            assert third_submit > second_bind

    run(scenario)


def test_enquire_link_keeps_the_session_alive() -> None:
    async def scenario() -> None:
        async with TestSmsc() as smsc, connected(smsc, enquire_link_interval=0.1) as client:
            await smsc.wait_for(lambda: len(smsc.of("enquire_link")) >= 2)
            assert client.bound.is_set() and client.binds == 1

    run(scenario)


def test_receipts_in_both_formats_matched_to_the_message_ids() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        async with (
            TestSmsc(decimal_receipt_ids=True) as smsc,
            connected(smsc, inbox) as client,
        ):
            first = await client.submit(DEST, ACME, b"uno", 0)
            second = await client.submit(DEST, ACME, b"dos", 0)
            third = await client.submit(DEST, ACME, b"tres", 0)
            assert await smsc.send_receipt(first.message_id, "DELIVRD", style="tlv") == 0
            assert await smsc.send_receipt(second.message_id, "UNDELIV", "text", "001") == 0
            assert await smsc.send_receipt(third.message_id, "EXPIRED", style="both") == 0
            tlv, text, both = inbox.receipts
            assert receipt_matches(first.message_id, tlv.message_id)
            assert tlv.message_id == str(int(first.message_id, 16))  # decimal, as some SMSCs
            assert (tlv.state, tlv.tlv_state, tlv.short_message) == (
                ReceiptState.DELIVERED, 2, b"",
            )  # fmt: skip
            assert receipt_matches(second.message_id, text.message_id)
            assert not receipt_matches(first.message_id, text.message_id)
            assert text.state is ReceiptState.UNDELIVERABLE and text.tlv_state is None
            assert (text.submit_date, text.done_date, text.error) == (
                "2612031745", "2612031746", "001",
            )  # fmt: skip
            assert text.text_fields["text"] == "dos"
            assert text.short_message.startswith(b"id:")  # kept raw
            assert both.state is ReceiptState.EXPIRED and both.state.final
            assert receipt_matches(third.message_id, both.message_id)
            assert tlv.source_addr == "+" + DEST

    run(scenario)


def test_a_receipt_the_caller_cannot_take_is_answered_temporary_error() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        async with TestSmsc() as smsc, connected(smsc, inbox) as client:
            result = await client.submit(DEST, ACME, b"uno", 0)
            inbox.fail_receipts = True
            assert await smsc.send_receipt(result.message_id) == 0x64  # ESME_RX_T_APPN
            inbox.fail_receipts = False
            assert await smsc.send_receipt(result.message_id) == 0  # the SMSC's retry
            assert len(inbox.receipts) == 1

    run(scenario)


def test_mobile_originated_messages_reach_the_callback() -> None:
    async def scenario() -> None:
        inbox = Inbox()
        async with TestSmsc() as smsc, connected(smsc, inbox) as client:
            await asyncio.wait_for(client.bound.wait(), 10)
            assert await smsc.send_mo(DEST, "ACME", b"STOP") == 0
            assert await smsc.send_mo("393123456789", "ACME", "Baja ✋".encode("utf-16-be"), 8) == 0
            stop, baja = inbox.mos
            assert (stop.source_addr, stop.destination_addr, stop.text) == (
                "+" + DEST,
                "ACME",
                "STOP",
            )
            assert (baja.source_addr, baja.text, baja.data_coding) == (
                "+393123456789",
                "Baja ✋",
                8,
            )
            assert inbox.receipts == []

    run(scenario)


def test_tls(tmp_path: Any) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def scenario() -> None:
        async with (
            TestSmsc(ssl_context=server_context) as smsc,
            connected(smsc, ssl_context=client_context) as client,
        ):
            result = await client.submit(DEST, ACME, b"hola", 0)
            assert result.outcome is Outcome.ACCEPTED

    run(scenario)

    async def untrusted() -> None:
        async with (
            TestSmsc(ssl_context=server_context) as smsc,
            connected(smsc, ssl_context=ssl.create_default_context()) as client,
        ):
            await asyncio.wait_for(client.unbound.wait(), 10)
            assert "the SMSC's TLS certificate was not accepted" in client.last_error
            assert client.binds == 0 and smsc.binds == 0

    run(untrusted)


def test_every_status_has_words() -> None:
    assert status_sentence(0x58).startswith("too many messages were sent too fast")
    assert status_sentence(0x401) == (
        "an error the standard does not name (vendor-specific, 0x00000401)"
    )
    assert "reserved" in status_sentence(0x10)


def test_no_smsc_is_retried_with_backoff_and_stop_ends_the_wait() -> None:
    import socket

    with socket.socket() as probe:  # a loopback port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        settings = SmscSettings("127.0.0.1", port, "esme", "secret", backoff_first=30.0)
        client = EsmeClient(settings)
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.unbound.wait(), 10)
        assert client.last_error == "the SMSC refused the connection"
        await client.stop()  # during the 30 s pause: run() ends now, not after it
        await asyncio.wait_for(task, 5)

    run(scenario)
