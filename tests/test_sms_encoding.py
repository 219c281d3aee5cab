"""GSM 7-bit / UCS-2 and segmentation: round trips, the segment count formulas, the UDH.

The octets the SMSC receives are checked in tests/test_sms_smpp.py; here the encoder alone.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sms.encoding import (
    DATA_CODING_UCS2,
    ESM_CLASS_UDHI,
    Alphabet,
    EncodedSms,
    SmsTooLong,
    decode_short_message,
    encode_sms,
    gsm_septets,
)

GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = "^{}\\[~]|€\f"


def _encoded(text: str, max_segments: int = 255, reference: int = 42) -> EncodedSms:
    result = encode_sms(text, max_segments=max_segments, reference=reference)
    assert isinstance(result, EncodedSms), result
    return result


def _join(sms: EncodedSms) -> str:
    """Decode every part and join them, checking each UDH on the way."""
    texts = []
    for seq, part in enumerate(sms.parts, start=1):
        udh, text = decode_short_message(part, sms.data_coding, sms.esm_class)
        if sms.segments > 1:
            assert udh == bytes((5, 0, 3, 42, sms.segments, seq))
        else:
            assert udh == b""
        texts.append(text)
    return "".join(texts)


def test_the_whole_gsm_alphabet_is_one_septet_each_and_the_extension_two() -> None:
    septets = gsm_septets(GSM_BASIC)
    assert septets is not None and all(len(s) == 1 for s in septets)
    assert len(GSM_BASIC) == 127  # 128 codes, less the escape
    extension = gsm_septets(GSM_EXTENSION)
    assert extension is not None and all(len(s) == 2 and s[0] == 0x1B for s in extension)
    assert gsm_septets("ç") is None  # not in GSM 03.38: never sent as "Ç"
    assert gsm_septets("\x1b") is None  # a lone escape would change the next character


def test_single_sms_limits() -> None:
    assert _encoded("a" * 160).segments == 1
    assert _encoded("a" * 161).segments == 2
    assert _encoded("€" * 80).segments == 1  # 160 septets
    assert _encoded("€" * 80 + "a").segments == 2
    ucs2 = _encoded("ç" * 70)
    assert (ucs2.alphabet, ucs2.data_coding, ucs2.segments) == (Alphabet.UCS2, DATA_CODING_UCS2, 1)
    assert ucs2.parts[0] == "ç".encode("utf-16-be") * 70
    assert _encoded("ç" * 71).segments == 2
    assert _encoded("😀" * 35).segments == 1  # 70 UTF-16 code units
    assert _encoded("😀" * 35 + "a").segments == 2


def test_gsm_parts_are_153_septets_unpacked_after_the_udh() -> None:
    sms = _encoded("x" * 306 + "y")
    assert sms.esm_class == ESM_CLASS_UDHI
    assert sms.data_coding == 0
    assert [len(p) for p in sms.parts] == [6 + 153, 6 + 153, 6 + 1]
    assert sms.parts[0] == bytes((5, 0, 3, 42, 3, 1)) + b"x" * 153
    assert sms.parts[2] == bytes((5, 0, 3, 42, 3, 3)) + b"y"


def test_an_escape_is_never_split_from_its_character() -> None:
    sms = _encoded("a" * 152 + "€" + "b" * 10)  # the euro would straddle septets 153 and 154
    assert sms.parts[0] == bytes((5, 0, 3, 42, 2, 1)) + b"a" * 152
    assert sms.parts[1] == bytes((5, 0, 3, 42, 2, 2)) + b"\x1be" + b"b" * 10


def test_a_surrogate_pair_is_never_split() -> None:
    sms = _encoded("ç" * 66 + "😀" + "ç")  # 69 units: one SMS
    assert sms.segments == 1
    sms = _encoded("ç" * 66 + "😀" + "ç" * 5)  # the emoji would straddle units 67 and 68
    first = sms.parts[0][6:]
    assert first == "ç".encode("utf-16-be") * 66
    assert sms.parts[1][6:] == "😀ççççç".encode("utf-16-be")
    assert _join(sms) == "ç" * 66 + "😀" + "ç" * 5


def test_gsm_data_coding_is_configurable_and_ucs2_is_always_8() -> None:
    gsm = encode_sms("hola", max_segments=6, reference=0, gsm_data_coding=1)
    ucs2 = encode_sms("hola ç", max_segments=6, reference=0, gsm_data_coding=1)
    assert isinstance(gsm, EncodedSms) and gsm.data_coding == 1
    assert isinstance(ucs2, EncodedSms) and ucs2.data_coding == 8


def test_max_segments_is_enforced_with_a_sentence() -> None:
    ok = encode_sms("a" * 918, max_segments=6, reference=1)
    assert isinstance(ok, EncodedSms) and ok.segments == 6
    too_long = encode_sms("a" * 919, max_segments=6, reference=1)
    assert isinstance(too_long, SmsTooLong)
    assert (too_long.needed, too_long.allowed) == (7, 6)
    assert "shorten it to 918 characters" in too_long.sentence
    ucs2 = encode_sms("ç" * 403, max_segments=6, reference=1)
    assert isinstance(ucs2, SmsTooLong)
    assert "402 characters at most" in ucs2.sentence
    single = encode_sms("a" * 161, max_segments=1, reference=1)
    assert isinstance(single, SmsTooLong) and "160 characters" in single.sentence


@given(st.text(alphabet=GSM_BASIC + GSM_EXTENSION, max_size=1200))
def test_gsm_round_trip_and_segment_formula(text: str) -> None:
    sms = _encoded(text)
    assert sms.alphabet is Alphabet.GSM7
    septets = len(text) + sum(1 for c in text if c in GSM_EXTENSION)
    assert sms.units == septets
    assert _join(sms) == text
    if septets <= 160:
        assert sms.segments == 1
    else:
        # ceil(septets / 153), plus at most one part more when escapes are moved whole
        assert math.ceil(septets / 153) <= sms.segments <= math.ceil(septets / 152)
        assert all(len(p) <= 6 + 153 for p in sms.parts)


@given(st.text(min_size=1, max_size=600).filter(lambda t: gsm_septets(t) is None))
def test_ucs2_round_trip_and_segment_formula(text: str) -> None:
    sms = _encoded(text)
    assert sms.alphabet is Alphabet.UCS2
    units = len(text.encode("utf-16-be", "surrogatepass")) // 2
    assert sms.units == units
    if not any("\ud800" <= c <= "\udfff" for c in text):  # lone surrogates are not text
        assert _join(sms) == text
    if units <= 70:
        assert sms.segments == 1
    else:
        assert math.ceil(units / 67) <= sms.segments <= math.ceil(units / 66)
        assert all(len(p) <= 6 + 134 for p in sms.parts)


def test_decoding_never_raises_on_odd_octets() -> None:
    assert decode_short_message(b"\x1b", 0) == (b"", "")
    assert decode_short_message(b"\xd8\x00", 8)[1] == "\ufffd"
    assert decode_short_message(b"\x05\x00\x03\x01\x02\x01hi", 0, 0x40) == (
        b"\x05\x00\x03\x01\x02\x01",
        "hi",
    )


@pytest.mark.parametrize("reference", [-1, 256])
def test_reference_is_one_octet(reference: int) -> None:
    with pytest.raises(ValueError):
        encode_sms("hi", max_segments=6, reference=reference)


def test_a_lone_surrogate_is_refused_not_sent() -> None:
    with pytest.raises(ValueError):
        encode_sms("a\ud800b", max_segments=6, reference=0)
