"""SMS recipient addresses: numbers normalised to E.164, groups told apart, refusals in words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sms.numbers import (
    NumberRefused,
    SmsGroup,
    SmsNumber,
    is_sms_address,
    parse_number,
    parse_sms_address,
)

DOMAIN = "certifica.example"


@pytest.mark.parametrize(
    "local, region, e164",
    [
        ("+34600111222", "ES", "+34600111222"),
        ("600111222", "ES", "+34600111222"),  # national, in default_region
        ("0034600111222", "ES", "+34600111222"),  # international prefix of Spain
        ("+34-600-11-12-22", "ES", "+34600111222"),  # separators dropped
        ("+393123456789", "ES", "+393123456789"),  # Italy, whatever the default region
        ("3123456789", "IT", "+393123456789"),
        ("+447911123456", "ES", "+447911123456"),
        ("+12015550123", "ES", "+12015550123"),  # US: FIXED_LINE_OR_MOBILE, accepted
        ("+14165550123", "ES", "+14165550123"),  # Canada, the same
    ],
)
def test_mobile_numbers_are_normalised_to_e164(local: str, region: str, e164: str) -> None:
    parsed = parse_sms_address(f"{local}@sms.{DOMAIN}", DOMAIN, region)
    assert isinstance(parsed, SmsNumber), parsed
    assert parsed.e164 == e164
    assert parsed.digits == e164[1:]


@pytest.mark.parametrize(
    "local, fragment",
    [
        ("+34912345678", "+34912345678 is a fixed-line number, not a mobile"),
        ("+34900123456", "toll-free"),
        ("+3460011", "is not a valid phone number in the numbering plan of ES"),
        ("+999123456789", "does not start with a country code"),
        ("+3460011122233344455", "more digits than any phone number"),
    ],
)
def test_refusals_are_sentences(local: str, fragment: str) -> None:
    refused = parse_sms_address(f"{local}@sms.{DOMAIN}", DOMAIN, "ES")
    assert isinstance(refused, NumberRefused)
    assert fragment in refused.sentence
    assert refused.sentence.endswith(".")


def test_a_national_number_needs_a_region() -> None:
    refused = parse_number("600111222", "")
    assert isinstance(refused, NumberRefused)
    assert "write it with + and the country code" in refused.sentence


def test_groups_are_told_apart_from_numbers() -> None:
    assert parse_sms_address(f"Comercial@sms.{DOMAIN}", DOMAIN, "ES") == SmsGroup("comercial")
    assert parse_sms_address(f"team-2.north@SMS.{DOMAIN.upper()}", DOMAIN, "ES") == SmsGroup(
        "team-2.north"
    )
    odd = parse_sms_address(f"a+b!@sms.{DOMAIN}", DOMAIN, "ES")
    assert isinstance(odd, NumberRefused)
    assert "neither a phone number" in odd.sentence


def test_only_the_sms_domain_is_an_sms_address() -> None:
    assert is_sms_address(f"+34600111222@sms.{DOMAIN}.", DOMAIN)
    assert not is_sms_address(f"+34600111222@{DOMAIN}", DOMAIN)
    assert not is_sms_address("+34600111222@sms.other.example", DOMAIN)
    refused = parse_sms_address("bob@example.org", DOMAIN, "ES")
    assert isinstance(refused, NumberRefused)
    assert f"not an address of sms.{DOMAIN}" in refused.sentence


@given(st.text(max_size=200), st.sampled_from(["ES", "US", "IT", ""]))
def test_any_text_gives_an_answer_never_an_exception(text: str, region: str) -> None:
    for address in (text, f"{text}@sms.{DOMAIN}"):
        answer = parse_sms_address(address, DOMAIN, region)
        assert isinstance(answer, SmsNumber | SmsGroup | NumberRefused)
        if isinstance(answer, NumberRefused):
            assert answer.sentence and "\n" not in answer.sentence
            assert all(" " <= c <= "~" for c in answer.sentence)


@given(st.from_regex(r"6[0-9]{8}", fullmatch=True))
def test_spanish_mobiles_round_trip(national: str) -> None:
    answer = parse_number(national, "ES")
    if isinstance(answer, SmsNumber):  # not every 6xx range is allocated
        assert answer.e164 == "+34" + national
        assert parse_number(answer.e164, "US") == answer
