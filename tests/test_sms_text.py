"""The SMS text of a mail message: the body part, replies and signatures cut by the
documented rule, white space normalised (relay/sms/text.py; docs/sms.md)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.sms.text import NoText, SmsText, sms_text, sms_text_of_body

FIXTURES = Path(__file__).parent / "fixtures"


def _text(name: str) -> SmsText:
    result = sms_text((FIXTURES / name).read_bytes())
    assert isinstance(result, SmsText), result
    return result


def test_gmail_reply_in_spanish_keeps_only_the_new_text() -> None:
    # The attribution is wrapped over two lines, as Gmail writes it.
    result = _text("sms/gmail_reply_es.eml")
    assert result.text == "Confirmado: el jueves a las 10:00 en la oficina de Valladolid."
    assert result.reply_cut and not result.signature_cut


def test_thunderbird_reply_in_italian_loses_attribution_quote_and_signature() -> None:
    result = _text("sms/thunderbird_reply_it.eml")
    assert result.text == "La consegna è confermata per domani mattina.\nGrazie, Alice"
    assert result.reply_cut and result.signature_cut


def test_outlook_html_only_in_catalan_is_turned_into_text() -> None:
    # No text/plain part: the HTML, its <style> dropped, &nbsp; a space, the
    # "De: / Enviat:" header block of the quoted message cut.
    result = _text("sms/outlook_html_ca.eml")
    assert result.text == "Bon dia,\n\nLa factura 2026/118 ja està pagada. Gràcies!"
    assert result.reply_cut


def test_the_plain_part_is_preferred_to_the_html_one() -> None:
    result = _text("gmail_plain.eml")
    assert result.text.startswith("Hola Bob,\n\n¿Nos vemos el jueves a las 10:00")
    assert result.text.endswith("Un abrazo,\nAlicia")
    assert "<div" not in result.text


@pytest.mark.parametrize(
    "body, expected",
    [
        ("Hi\n-- \nAlice\n+34 600", "Hi"),  # RFC 3676 section 4.3
        ("Hi\n--\nAlice", "Hi"),  # the same, trailing space stripped by a mailer
        ("Hi\n---\nnot a signature", "Hi\n---\nnot a signature"),
        ("Yes.\nOn Wed, Dec 2, 2026 at 6:40 PM Bob <bob@example.org> wrote:\n> When?", "Yes."),
        ("Sí.\n\nEl 2/12/26 a les 18:40, Bob va escriure:\n> Quan?", "Sí."),
        ("Oui.\nLe 2 déc. 2026 à 18:40, Bob a écrit :\n> Quand ?", "Oui."),
        ("OK\n-----Original Message-----\nFrom: Bob", "OK"),
        ("OK\n\n-----Mensaje original-----\nDe: Bob", "OK"),
        ("OK\nFrom: Bob <bob@example.org>\nSent: Wednesday\n\nold", "OK"),
        ("From: the start\nof a sentence is kept", "From: the start\nof a sentence is kept"),
        ("Top\n> quoted\n  > indented quote\nBottom", "Top\nBottom"),
        ("  a \t\u00a0 b  \n\n\n\nc\u200b\n\n", "a b\n\nc"),
        ("On Monday we meet.", "On Monday we meet."),  # "On" alone is no attribution
    ],
)
def test_the_rule(body: str, expected: str) -> None:
    result = sms_text_of_body(body)
    assert isinstance(result, SmsText)
    assert result.text == expected


def test_quoted_lines_are_counted() -> None:
    result = sms_text_of_body("a\n> b\n> c\nd")
    assert isinstance(result, SmsText) and result.quoted_lines == 2


def test_nothing_left_is_no_text_with_a_sentence() -> None:
    for body in ("", "  \n\n", "> only quoted", "-- \nonly a signature"):
        result = sms_text_of_body(body)
        assert isinstance(result, NoText)
        assert "no text to send as an SMS" in result.sentence
    empty = sms_text(b"From: a@example.com\r\nSubject: x\r\n\r\n")
    assert isinstance(empty, NoText)


@given(st.binary(max_size=2000))
def test_any_bytes_give_text_or_a_sentence(raw: bytes) -> None:
    result = sms_text(raw)
    assert isinstance(result, SmsText | NoText)
    if isinstance(result, SmsText):
        assert result.text == result.text.strip()
        assert "\r" not in result.text and "\n\n\n" not in result.text


def _flowed(body: str, delsp: str = "") -> bytes:
    return (
        "From: alice@example.com\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n"
        f"Content-Type: text/plain; charset=UTF-8; format=flowed{delsp}\r\n\r\n"
        f"{body}\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n"
    ).encode()


def test_format_flowed_soft_breaks_are_joined() -> None:
    body = (
        "La consegna è confermata per \r\ndomani mattina, \r\n From the start.\r\n\r\n-- \r\nAlice"
    )
    result = sms_text(_flowed(body))
    assert isinstance(result, SmsText)
    assert result.text == "La consegna è confermata per domani mattina, From the start."
    assert result.signature_cut
    joined = sms_text(_flowed("Buon\r\ngiorno a tut \r\nti", "; delsp=yes"))
    assert isinstance(joined, SmsText) and joined.text == "Buon\ngiorno a tutti"


def test_fixed_text_keeps_its_line_breaks() -> None:
    raw = _flowed("one \r\ntwo").replace(b"; format=flowed", b"")
    result = sms_text(raw)
    assert isinstance(result, SmsText) and result.text == "one\ntwo"


# Characters that would act on the text on the phone instead of being read (Unicode
# Standard Annex #9's bidirectional controls, and the invisible format characters).
BIDI_AND_INVISIBLE = (
    "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e\ufff9\ufffa\ufffb"
)


def test_bidi_overrides_and_isolates_never_reach_the_phone() -> None:
    result = sms_text_of_body("Pay to \u202eNAPS\u202c now\u200f, \u2066ref\u2069 \u200e12")
    assert isinstance(result, SmsText)
    assert result.text == "Pay to NAPS now, ref 12"
    raw = (
        "From: alice@example.com\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nPay to \u202eNAPS\u202c\r\n"
    ).encode()
    mailed = sms_text(raw)
    assert isinstance(mailed, SmsText) and mailed.text == "Pay to NAPS"


def test_line_and_paragraph_separators_are_line_breaks() -> None:
    result = sms_text_of_body("one\u2028two\u2029\u2029\u2029three\u2028> quoted\u2028-- \u2028sig")
    assert isinstance(result, SmsText)
    assert result.text == "one\ntwo\n\nthree"
    assert result.quoted_lines == 1 and result.signature_cut


@given(st.text(st.characters(codec="utf-8") | st.sampled_from(BIDI_AND_INVISIBLE), max_size=300))
def test_no_control_or_format_character_is_ever_sent(body: str) -> None:
    result = sms_text_of_body(body)
    if isinstance(result, SmsText):
        assert not any(c in BIDI_AND_INVISIBLE or c in "\u2028\u2029" for c in result.text)
        assert all(c == "\n" or unicodedata.category(c) != "Cc" for c in result.text)
