"""Delivery receipts' Appendix B text and message ids, as SMSC products write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sms.inbound import parse_receipt_text, receipt_matches
from relay.sms.smpp import sender_address


def test_the_appendix_b_example() -> None:
    text = (
        "id:7220082391 sub:001 dlvrd:001 submit date:2612031745 done date:2612031746 "
        "stat:DELIVRD err:000 text:Su cita del jueves"
    )
    assert parse_receipt_text(text) == {
        "id": "7220082391", "sub": "001", "dlvrd": "001", "submit date": "2612031745",
        "done date": "2612031746", "stat": "DELIVRD", "err": "000",
        "text": "Su cita del jueves",
    }  # fmt: skip


def test_variants_operators_send() -> None:
    # Upper case names, seconds in the dates, an empty err, text with colons in it.
    fields = parse_receipt_text(
        "ID:0A1B2C SUB:001 DLVRD:000 SUBMIT DATE:261203174501 DONE DATE:261203180000 "
        "STAT:UNDELIV ERR: Text:Cita: 10:00"
    )
    assert fields["id"] == "0A1B2C"
    assert fields["submit date"] == "261203174501"
    assert fields["stat"] == "UNDELIV"
    assert fields["err"] == ""
    assert fields["text"] == "Cita: 10:00"


@pytest.mark.parametrize(
    "submitted, receipt, same",
    [
        ("0A1B2C", "0a1b2c", True),
        ("0A1B2C", str(0x0A1B2C), True),  # hexadecimal in the response, decimal in the receipt
        ("1194684", "123abc", True),  # and the other way round
        ("10", "16", False),  # two decimal ids are never read as hexadecimal
        ("000123", "123", True),
        ("0A1B2C", "0A1B2D", False),
        ("", "", False),
    ],
)
def test_message_ids_match_across_notations(submitted: str, receipt: str, same: bool) -> None:
    assert receipt_matches(submitted, receipt) is same


@given(st.text(max_size=300))
def test_any_text_parses_without_raising(text: str) -> None:
    fields = parse_receipt_text(text)
    assert set(fields) <= {"id", "sub", "dlvrd", "submit date", "done date", "stat", "err", "text"}
    receipt_matches(text, text[::-1])


def test_sender_ids_get_their_ton_and_npi() -> None:
    assert sender_address("ACME") == sender_address("ACME")
    assert (sender_address("ACME").ton, sender_address("ACME").npi) == (5, 0)
    number = sender_address("+34600111222")
    assert (number.addr, number.ton, number.npi) == ("34600111222", 1, 1)
