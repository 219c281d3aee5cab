"""Delivery receipts' Appendix B text and message ids, as SMSC products write them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sms.inbound import (
    MAX_MESSAGE_ID,
    DeliveryReceipt,
    match_key,
    parse_receipt_text,
    receipt_matches,
    unreadable_receipt,
)
from relay.sms.smpp import _read, sender_address


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


# Ids as SMSCs write them: decimal, hexadecimal in either case, padded with zeros, and
# now and then something else (a dash, a letter past f).
_ID_CHARS = st.sampled_from("0123456789abcdefABCDEF0000xz-")
_ids = st.text(_ID_CHARS, min_size=1, max_size=12)


def _notations(value: int) -> st.SearchStrategy[tuple[str, str]]:
    """One number as receipts write it: decimal or hexadecimal (any case), zero-padded,
    with the notation used ("d", "x", "X")."""
    return st.tuples(
        st.sampled_from(["d", "x", "X"]), st.integers(0, 3), st.sampled_from(["", " "])
    ).map(lambda f: (f[2] + "0" * f[1] + format(value, f[0]) + f[2], f[0]))


@given(_ids, _ids)
def test_ids_that_match_share_their_key(a: str, b: str) -> None:
    if receipt_matches(a, b):
        assert match_key(a) == match_key(b)


@given(st.integers(0, 2**64).flatmap(lambda n: st.tuples(_notations(n), _notations(n))))
def test_one_number_in_two_notations(pair: tuple[tuple[str, str], tuple[str, str]]) -> None:
    (a, how_a), (b, how_b) = pair
    if receipt_matches(a, b):
        assert match_key(a) == match_key(b)
    if how_a == how_b == "d" or (how_a != "d" and how_b != "d"):
        assert receipt_matches(a, b)  # one notation: zeros and case aside, the same id
    elif any(c.isalpha() for c in a + b):
        assert receipt_matches(a, b)  # hexadecimal with a letter against decimal


@pytest.mark.parametrize(
    "message_id, key",
    [("0A1B2C", "662316"), ("662316", "662316"), ("000123", "123"), ("0", "0"),
     (" Ab-1 ", "ab-1"), ("0xyz", "xyz")],
)  # fmt: skip
def test_match_keys(message_id: str, key: str) -> None:
    assert match_key(message_id) == key


# Ids an SMSC should not send (SMPP 3.4 section 5.2.23: 65 octets at most), and do.
_long_ids = st.text(_ID_CHARS, min_size=1, max_size=90)


@pytest.mark.parametrize(
    "message_id",
    ["9" * 5000, "0" * 4999 + "1", "A" * 5000, "ID-" + "7" * 63, "x" * 66, "\x00" * 70],
)
def test_an_overlong_id_gets_a_key_of_65_characters_at_most(message_id: str) -> None:
    key = match_key(message_id)
    assert 0 < len(key) <= MAX_MESSAGE_ID
    assert receipt_matches(message_id, message_id)
    assert match_key(message_id.lower().center(len(message_id) + 4)) == key


def test_a_long_decimal_id_against_hexadecimal_is_compared_without_raising() -> None:
    # A decimal id past Python's 4,300-digit int() limit is never read as a number.
    assert not receipt_matches("9" * 5000, "7b")
    assert receipt_matches("0" * 5000 + "123", "7b")
    assert match_key("0" * 5000 + "123") == match_key("7b") == "123"


@given(_long_ids, _long_ids)
def test_long_ids_that_match_share_their_key(a: str, b: str) -> None:
    if receipt_matches(a, b):
        assert match_key(a) == match_key(b)
    assert len(match_key(a)) <= MAX_MESSAGE_ID


@given(st.text(max_size=200))
def test_any_id_has_a_key(text: str) -> None:
    assert len(match_key(text)) <= MAX_MESSAGE_ID
    if receipt_matches(text, text.upper()):
        assert match_key(text) == match_key(text.upper())


def test_a_receipt_that_cannot_be_read_is_kept_raw() -> None:
    def unreadable(pdu: object, raw: bytes) -> DeliveryReceipt:
        raise ValueError("an SMSC's surprise")

    raw = b"\0\0\0\x15\0\0\0\x05\0\0\0\0\0\0\0\x07\x04"
    kept = _read(unreadable, unreadable_receipt, object(), raw)  # a PDU with no fields
    assert (kept.raw, kept.message_id, kept.state, kept.esm_class) == (raw, "", None, 0)
