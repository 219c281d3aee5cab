"""A phone number as the subject of an access request and an erasure (docs/erasure.md,
"Phone numbers (certified SMS)"), on a real gateway with ``[sms]`` and the test SMSC
(tests/smsc.py): the number is a contact of ACME, receives a certified SMS and its
receipt, answers STOP and then something else, and is left out of a marketing SMS. Then
``certifica export --subject +34600111222`` lists every SMS item, ``certifica erase
--subject 600111222`` (national form) leaves the number and the contact's name nowhere
in the database but in ``sms_optouts``, the opt-out still stops the next marketing SMS,
and ``certifica evidence verify`` still passes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.migrations import migrate
from relay.queue.subjects import Matcher, address_committed_to, commitment
from tests.conftest import Gateway, Sink, SinkServer, assert_clean_log, start_gateway
from tests.sms_queue import SMS_DOMAIN, rows, sms_config, wait_until
from tests.smsc import SmscThread
from tests.test_erasure import checkpointed, settle
from tests.test_sms_end_to_end import certificate_of, submit, submits

NUMBER = "+34600111222"
OTHER = "+34600111333"
ACME_NUMBER = "+34699000000"
NAME = "Ana Ruiz"
SOURCE = "web form, 2026 campaign"
TEXT = "Su pedido 4471 ha salido hoy."
MARKETING = "Ofertas de diciembre: 20% en todo.\r\n"
FORMS = ("34600111222", "600111222", NAME)  # the number in every form, and the name


@pytest.fixture(scope="module")
def smsc() -> Iterator[SmscThread]:
    with SmscThread() as smsc:
        yield smsc


@pytest.fixture(scope="module")
def mx(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, smsc: SmscThread, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sms-erasure")
    gw = start_gateway(sms_config(tmp, smsc.port, {"example.com": mx.port}))
    for args in (
        ("org", "add", "ACME", "--name", "Acme S.L."),
        ("users", "set", "alice@example.com", "--org", "ACME", "--role", "admin"),
        ("org", "set", "ACME", "--sms-sender", "ACME", "--sms-number", ACME_NUMBER),
        ("contacts", "add", "ACME", NUMBER, "--name", NAME, "--group", "clients",
         "--consent", "marketing", "--consent-source", SOURCE),
        ("contacts", "add", "ACME", OTHER, "--name", "Bea", "--consent", "marketing",
         "--consent-source", "web form"),
    ):  # fmt: skip
        result = gw.cli(*args)
        assert result.returncode == 0, (args, result.stderr)
    smsc.wait_for(lambda: smsc.smsc.binds >= 1)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def receipt_for_each(smsc: SmscThread, before: int, count: int) -> None:
    """Wait for ``count`` submit_sm after the first ``before``, and deliver each one."""
    smsc.wait_for(lambda: len(submits(smsc)) >= before + count)
    for sent in submits(smsc)[before : before + count]:
        assert smsc.call(smsc.smsc.send_receipt(sent.fields["message_id"], "DELIVRD")) == 0


def text_columns_naming(state: Path, needles: tuple[str, ...]) -> list[str]:
    """``table.column`` of every row of queue.db whose text or bytes hold one of
    ``needles`` (any case): every table, every column."""
    conn = sqlite3.connect(f"file:{state / 'queue.db'}?mode=ro", uri=True, timeout=10)
    found: list[str] = []
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
            for column in columns:
                for (value,) in conn.execute(f"SELECT {column} FROM {table}"):  # noqa: S608
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    if isinstance(value, str) and any(n.lower() in value.lower() for n in needles):
                        found.append(f"{table}.{column}")
    finally:
        conn.close()
    return sorted(set(found))


def test_a_number_is_matched_as_a_whole_number() -> None:
    match = Matcher(NUMBER, "erased:" + "0" * 64)
    assert match.mentions('{"source_addr": "34600111222"}')
    assert match.mentions(f"to {NUMBER}@{SMS_DOMAIN}, sent")
    assert match.mentions("0034600111222") and match.mentions("tel. 600 111 222".replace(" ", ""))
    assert not match.mentions("+346001112223") and not match.mentions("1600111222")
    assert match.is_subject(f"{NUMBER}@{SMS_DOMAIN.upper()}") and match.is_subject(NUMBER)
    assert not match.is_subject(f"{NUMBER}@example.org")


def test_a_number_is_found_by_its_commitment_in_a_restored_backup(tmp_path: Path) -> None:
    """``certifica erase --commitment``: a phone's commitment is of its E.164 form, found
    from its SMS address in a recipient row or from a contact's number."""
    key = bytes(range(32))
    conn = sqlite3.connect(tmp_path / "queue.db")
    migrate(conn)
    with conn:
        conn.execute(
            "INSERT INTO recipients (qid, address, domain, status, next_attempt)"
            " VALUES ('q1', ?, ?, 'delivered', 0)",
            (f"{NUMBER}@{SMS_DOMAIN}", SMS_DOMAIN),
        )
        conn.execute(
            "INSERT INTO contacts (org, number, added, added_by) VALUES ('ACME', ?, 0, 'op')",
            (OTHER,),
        )
    assert address_committed_to(conn, key, commitment(key, NUMBER)) == NUMBER
    assert address_committed_to(conn, key, commitment(key, OTHER)) == OTHER
    assert address_committed_to(conn, key, commitment(key, "+34600111444")) is None
    conn.close()


def test_export_then_erase_a_phone_number(
    gw: Gateway, smsc: SmscThread, mx: Sink, tmp_path: Path
) -> None:
    # A certified SMS and its receipt.
    before = len(submits(smsc))
    qid = submit(gw, TEXT + "\r\n")
    receipt_for_each(smsc, before, 1)
    certificate_of(mx, qid)
    # STOP (opted out, one confirmation SMS back), then another reply.
    before = len(submits(smsc))
    assert smsc.call(smsc.smsc.send_mo(NUMBER[1:], ACME_NUMBER[1:], b"Stop.")) == 0
    receipt_for_each(smsc, before, 1)
    assert smsc.call(smsc.smsc.send_mo(NUMBER[1:], ACME_NUMBER[1:], b"Gracias, hasta luego")) == 0
    wait_until(lambda: len(rows(gw.state, "SELECT id FROM sms_inbound")) >= 2, say="the MO")
    # A marketing SMS: the number is left out of it, the other one receives it.
    before = len(submits(smsc))
    left_out = submit(
        gw, MARKETING, headers="X-Certifica-SMS: marketing\r\n", numbers=(NUMBER, OTHER)
    )
    receipt_for_each(smsc, before, 1)
    settle(gw)

    out = tmp_path / "export"
    exported = gw.cli("export", "--subject", f"{NUMBER}@{SMS_DOMAIN}", str(out))
    assert exported.returncode == 0, exported.stderr
    sms = json.loads((out / "sms.json").read_text())
    (contact,) = sms["contacts"]
    assert (contact["org"], contact["org_name"], contact["name"]) == ("ACME", "Acme S.L.", NAME)
    assert contact["groups"] == ["clients"] and contact["consent_source"] == SOURCE
    assert contact["consent_marketing"] is not None
    (optout,) = sms["opt_outs"]
    assert optout["org"] == "ACME" and optout["how"] == "mo" and optout["time"] > 0
    texts = sorted(m["text"] for m in sms["sent_by_the_phone"])
    assert texts == ["Gracias, hasta luego", "Stop."]
    assert all(m["destination"].endswith("699000000") for m in sms["sent_by_the_phone"])
    received = {r["qid"]: r for r in sms["received"]}
    certified = received[qid]
    assert certified["text"] == TEXT and certified["sender_id"] == "ACME"
    (part,) = certified["parts"]
    assert part["state"] == "accepted" and part["receipt_state"] == "DELIVRD"
    (receipt,) = part["receipts"]
    assert receipt["state"] == "DELIVRD" and isinstance(receipt["fields"], dict)
    assert len(received) == 2  # and the opt-out's confirmation
    (skipped,) = sms["left_out_of"]
    assert skipped["qid"] == left_out and skipped["name"] == NAME and skipped["reason"]
    events = {e["event"] for e in json.loads((out / "evidence.json").read_text())}
    assert {"SmsConsentRecorded", "SmsOptOut", "SmsSubmitted", "SmsDeliveryReceipt"} <= events
    messages = {m["qid"]: m for m in json.loads((out / "messages.json").read_text())}
    assert "recipient" in messages[qid]["roles"]
    assert [r["address"] for r in messages[qid]["recipients"]] == [f"{NUMBER}@{SMS_DOMAIN}"]
    assert "sms.json" in (out / "README.txt").read_text()
    assert "sms.json" in (out / "MANIFEST.sha256").read_text()

    erased = gw.cli("erase", "--subject", "600111222", "--yes")
    assert erased.returncode == 0, erased.stderr
    assert f"{NUMBER} erased:" in erased.stdout
    assert f"1 SMS opt-out(s) of {NUMBER} are kept" in erased.stdout, erased.stdout
    checkpointed(gw)
    found = text_columns_naming(gw.state, FORMS)
    assert "sms_optouts.number" in found
    assert set(found) <= {"sms_optouts.number", "sms_optouts.detail"}, found
    assert not rows(gw.state, "SELECT * FROM contacts WHERE name = ?", NAME)
    (certified_row,) = rows(gw.state, "SELECT text FROM sms_messages WHERE qid = ?", qid)
    assert certified_row["text"] is None
    inbound = rows(gw.state, "SELECT * FROM sms_inbound")
    assert {(r["text"], r["raw"]) for r in inbound} == {("", b"")}
    assert all(r["source"].startswith("erased:") and r["received"] > 0 for r in inbound)
    (skipped_row,) = rows(gw.state, "SELECT skipped FROM sms_messages WHERE qid = ?", left_out)
    (entry,) = json.loads(skipped_row["skipped"])
    assert entry["address"] == entry["name"] and entry["address"].startswith("erased:")
    assert all(r["raw"] == b"" for r in rows(gw.state, "SELECT raw FROM sms_receipts"
                                              " WHERE fields LIKE '%erased:%'"))  # fmt: skip
    assert gw.cli("evidence", "verify").returncode == 0

    # A second run changes nothing, and says again why the opt-out stays.
    again = gw.cli("erase", "--subject", NUMBER, "--yes")
    assert again.returncode == 0, again.stderr
    assert "Nothing to erase" in again.stdout and "opt-out(s)" in again.stdout

    # The opt-out still stops marketing to the number.
    before = len(submits(smsc))
    later = submit(gw, MARKETING, headers="X-Certifica-SMS: marketing\r\n", numbers=(NUMBER, OTHER))
    (row,) = rows(gw.state, "SELECT skipped FROM sms_messages WHERE qid = ?", later)
    assert [s["address"] for s in json.loads(row["skipped"])] == [NUMBER]
    receipt_for_each(smsc, before, 1)
    assert [s.submit.destination_addr for s in submits(smsc)[before:]] == [OTHER[1:]]
    settle(gw)
    assert gw.cli("evidence", "verify").returncode == 0


def test_an_sms_under_legal_hold_keeps_its_text_and_receipts_until_released(
    gw: Gateway, smsc: SmscThread, mx: Sink
) -> None:
    held_number = "+34600111444"
    before = len(submits(smsc))
    qid = submit(gw, TEXT + "\r\n", numbers=(held_number,))
    receipt_for_each(smsc, before, 1)
    certificate_of(mx, qid)
    settle(gw)
    ((cert_id,),) = [tuple(r.values()) for r in rows(gw.state, "SELECT cert_id FROM messages"
                                                     " WHERE qid = ?", qid)]  # fmt: skip
    # What `certifica evidence legal-hold CERT-ID` records (relay.queue.holds).
    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    with conn:
        conn.execute(
            "INSERT INTO legal_holds (cert_id, qid, since, note) VALUES (?, ?, ?, 'claim')",
            (cert_id, qid, time.time()),
        )
    conn.close()

    def held() -> tuple[object, ...]:
        (row,) = rows(
            gw.state,
            "SELECT s.text, x.raw FROM sms_messages s JOIN sms_parts p ON p.qid = s.qid"
            " JOIN sms_receipts x ON x.part_id = p.id WHERE s.qid = ?",
            qid,
        )
        return row["text"], row["raw"]

    kept = gw.cli("erase", "--subject", held_number, "--yes")
    assert kept.returncode == 0, kept.stderr
    assert "under legal hold" in kept.stdout
    text, raw = held()
    assert text == TEXT and isinstance(raw, bytes) and raw != b""

    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    with conn:
        conn.execute("DELETE FROM legal_holds WHERE qid = ?", (qid,))
    conn.close()
    released = gw.cli("erase", "--subject", held_number, "--yes")
    assert released.returncode == 0, released.stderr
    assert held() == (None, b"")
    checkpointed(gw)
    assert text_columns_naming(gw.state, (held_number[1:],)) == []
    assert gw.cli("evidence", "verify").returncode == 0


@pytest.mark.parametrize(
    ("subject", "sentence"),
    [
        ("+34 91 123", "is not a valid phone number"),
        ("+34911234567", "not a mobile"),
        ("ab12", "is not an e-mail address (like bob@example.org) nor a phone number"),
    ],
)
def test_an_unreadable_number_is_refused_in_one_sentence(
    gw: Gateway, tmp_path: Path, subject: str, sentence: str
) -> None:
    for args in (("export", "--subject", subject, str(tmp_path / "x")),
                 ("erase", "--subject", subject, "--yes")):  # fmt: skip
        refused = gw.cli(*args)
        assert refused.returncode != 0
        assert sentence in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
