"""An SMS text as SMPP ``short_message`` octets: alphabet, segments and their UDH.

Rules (3GPP TS 23.038 section 6.2.1, TS 23.040 sections 9.2.3.24.1 and 9.2.3.16):

- **GSM 7-bit default alphabet** when every character of the text is in it or in its
  extension table (section 6.2.1.1: ``^ { } \\ [ ~ ] | €`` and form feed, each written as
  the escape 0x1B and a second septet, so each counts twice). Else **UCS-2**, written as
  UTF-16BE: a character outside the Basic Multilingual Plane (an emoji) takes two code
  units, a surrogate pair. No character is ever replaced by a look-alike (``ç`` is not
  sent as ``Ç``): the certified text is the text that was sent.
- **One SMS** holds 160 septets or 70 UCS-2 code units (140 octets, TS 23.040 section
  9.2.3.16). A longer text is cut into parts of at most **153 septets or 67 code
  units**, each starting with a concatenation User Data Header (8-bit reference,
  section 9.2.3.24.1): ``05 00 03 <reference> <total> <sequence>``, 6 octets, which with
  the fill bit that aligns the septets leaves 153 septets (or 134 octets) for text. A cut
  never falls between an escape and its character, nor between the two halves of a
  surrogate pair.
- **SMPP carries GSM 7-bit unpacked**: SMPP 3.4 section 5.2.19 gives ``data_coding`` 0
  (the SMSC's default alphabet) and section 5.2.21 ``short_message`` as octets; the SMSC
  packs the septets for the air interface (TS 23.038 section 6.1.2.1.1), so each septet
  is sent as one octet and a part is at most 6 + 153 = 159 octets. No packing is done
  here. ``data_coding`` is ``[sms] gsm_data_coding`` (default 0) for GSM and 8 (UCS2,
  ISO/IEC 10646) for UCS-2; a part with a UDH is sent with ``esm_class`` 0x40 (UDHI,
  SMPP 3.4 section 5.2.12).
- ``[sms] max_segments`` bounds the parts; a longer text is an :class:`SmsTooLong`
  holding the sentence that refuses it.

Library: the GSM 03.38 tables are ``gsm0338``'s (a maintained codec registered as
``gsm03.38``, both tables from the standard). Its encoder writes a lone U+001B as the
octet 0x1B, which a handset reads as the escape to the extension table, so U+001B is
treated here as not in the alphabet (the text step removes control characters anyway).
Encoding is done from the same tables, one character at a time, because segmentation
needs each character's septet count; decoding (MO messages, and the tests' round trip)
goes through the codec itself.
"""

from __future__ import annotations

import codecs
import enum
import unicodedata
from dataclasses import dataclass

import gsm0338  # noqa: F401 - registers the "gsm03.38" codec
from gsm0338.charset import BASIC_CHARACTER_SET, BASIC_CHARACTER_SET_EXTENSION

from certifier.mime.text import SURROGATE

__all__ = [
    "DATA_CODING_UCS2",
    "ESM_CLASS_UDHI",
    "Alphabet",
    "EncodedSms",
    "SmsTooLong",
    "decode_short_message",
    "encode_sms",
    "gsm_septets",
    "segment_capacity",
]

ESCAPE = 0x1B
DATA_CODING_UCS2 = 8  # SMPP 3.4 section 5.2.19
DATA_CODING_LATIN1 = 3
DATA_CODING_IA5 = 1
ESM_CLASS_UDHI = 0x40  # SMPP 3.4 section 5.2.12: short_message starts with a UDH
UDH_CONCAT_LENGTH = 6  # 05 00 03 ref total seq
MAX_PARTS = 255  # the UDH's total is one octet

GSM_SINGLE, GSM_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


class Alphabet(enum.StrEnum):
    """The alphabet a text is sent in."""

    GSM7 = "GSM 7-bit"
    UCS2 = "UCS-2"


def _gsm_table() -> dict[str, bytes]:
    table: dict[str, bytes] = {}
    for code, name in BASIC_CHARACTER_SET.items():
        if code != ESCAPE:
            table[unicodedata.lookup(name)] = bytes((code,))
    for code, name in BASIC_CHARACTER_SET_EXTENSION.items():
        table.setdefault(unicodedata.lookup(name), bytes((ESCAPE, code)))
    return table


_GSM = _gsm_table()


@dataclass(frozen=True)
class EncodedSms:
    """A text ready for ``submit_sm``: one ``short_message`` per part (UDH included)."""

    text: str
    alphabet: Alphabet
    data_coding: int
    esm_class: int  # 0x40 when the parts carry a UDH, else 0
    parts: tuple[bytes, ...]
    units: int  # septets (GSM) or UTF-16 code units (UCS-2) of the whole text

    @property
    def segments(self) -> int:
        return len(self.parts)


@dataclass(frozen=True)
class SmsTooLong:
    """The text needs more parts than ``[sms] max_segments``: the refusal's sentence."""

    needed: int
    allowed: int
    sentence: str


def gsm_septets(text: str) -> list[bytes] | None:
    """Each character of ``text`` as 1 or 2 septets (one per octet), or None if one
    character is in neither GSM 03.38 table."""
    out: list[bytes] = []
    for char in text:
        code = _GSM.get(char)
        if code is None:
            return None
        out.append(code)
    return out


def _ucs2_units(text: str) -> list[bytes]:
    """Each character as its UTF-16BE bytes: 2, or 4 for a surrogate pair."""
    return [char.encode("utf-16-be") for char in text]


def segment_capacity(alphabet: Alphabet, segments: int) -> int:
    """Septets or code units that ``segments`` parts hold (160/153 or 70/67 each)."""
    single, part = (GSM_SINGLE, GSM_PART) if alphabet is Alphabet.GSM7 else (UCS2_SINGLE, UCS2_PART)
    return single if segments <= 1 else part * segments


def _split(pieces: list[bytes], unit: int, single: int, part: int) -> list[bytes]:
    """Join ``pieces`` (whole characters) into payloads of at most ``single`` units, or
    of ``part`` units each when that is not enough; a character is never cut."""
    total = sum(len(p) for p in pieces) // unit
    if total <= single:
        return [b"".join(pieces)]
    payloads: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for piece in pieces:
        size = len(piece) // unit
        if used + size > part:
            payloads.append(b"".join(current))
            current, used = [], 0
        current.append(piece)
        used += size
    payloads.append(b"".join(current))
    return payloads


def encode_sms(
    text: str, *, max_segments: int, reference: int, gsm_data_coding: int = 0
) -> EncodedSms | SmsTooLong:
    """Encode ``text`` (module docstring); ``reference`` (0-255) goes into every part's
    UDH so the handset joins the parts of this text and no other's."""
    if not 0 <= reference <= 255:
        raise ValueError("reference must be 0 to 255")
    if SURROGATE.search(text):  # text read by certifier.mime never has one
        raise ValueError("the text holds a lone surrogate, which is not a character")
    septets = gsm_septets(text)
    if septets is not None:
        alphabet, data_coding, unit = Alphabet.GSM7, gsm_data_coding, 1
        pieces = septets
        payloads = _split(pieces, 1, GSM_SINGLE, GSM_PART)
    else:
        alphabet, data_coding, unit = Alphabet.UCS2, DATA_CODING_UCS2, 2
        pieces = _ucs2_units(text)
        payloads = _split(pieces, 2, UCS2_SINGLE, UCS2_PART)
    units = sum(len(p) for p in pieces) // unit
    limit = min(max_segments, MAX_PARTS)
    if len(payloads) > limit:
        most = segment_capacity(alphabet, limit)
        twice = " (€ [ ] { } ~ ^ | \\ count twice)" if alphabet is Alphabet.GSM7 else ""
        return SmsTooLong(
            needed=len(payloads),
            allowed=limit,
            sentence=(
                f"The text needs {len(payloads)} SMS segments and at most {limit} are "
                f"allowed: shorten it to {most} characters{twice}."
                if alphabet is Alphabet.GSM7
                else f"The text needs {len(payloads)} SMS segments and at most {limit} are "
                f"allowed: written in UCS-2 (it has characters outside the GSM alphabet), "
                f"it must be {most} characters at most (an emoji counts twice)."
            ),
        )
    if len(payloads) == 1:
        return EncodedSms(text, alphabet, data_coding, 0, (payloads[0],), units)
    total = len(payloads)
    parts = tuple(
        bytes((5, 0, 3, reference, total, seq)) + payload
        for seq, payload in enumerate(payloads, start=1)
    )
    return EncodedSms(text, alphabet, data_coding, ESM_CLASS_UDHI, parts, units)


def decode_short_message(data: bytes, data_coding: int, esm_class: int = 0) -> tuple[bytes, str]:
    """The UDH (empty if none) and the text of a ``short_message``: GSM (data_coding 0,
    or ``gsm_data_coding``), UCS-2 (8), Latin-1 (3), IA5/ASCII (1). Never raises: octets
    that do not decode become U+FFFD."""
    udh = b""
    if esm_class & ESM_CLASS_UDHI and data:
        end = 1 + data[0]
        udh, data = data[:end], data[end:]
    if data_coding == DATA_CODING_UCS2:
        return udh, data.decode("utf-16-be", "replace")
    if data_coding == DATA_CODING_LATIN1:
        return udh, data.decode("latin-1")
    if data_coding == DATA_CODING_IA5:
        return udh, data.decode("ascii", "replace")
    try:
        return udh, codecs.decode(data, "gsm03.38", "replace")
    except (UnicodeDecodeError, ValueError, KeyError):
        return udh, data.decode("latin-1")
