"""What the SMSC sends the gateway: operators' delivery receipts and mobile-originated
messages, read from ``deliver_sm`` PDUs (SMPP 3.4 section 4.6).

- A ``deliver_sm`` is a **receipt** when its ``esm_class`` message type (section 5.2.12,
  bits 5-2) is 0x04, SMSC delivery receipt, or 0x20, intermediate notification. It is
  read from the TLVs ``receipted_message_id`` and ``message_state`` (sections 5.3.2.12,
  5.3.2.35; values in 5.2.28) and from the text of Appendix B (``id:… sub:… dlvrd:…
  submit date:YYMMDDhhmm done date:YYMMDDhhmm stat:… err:… text:…``), both kept, with
  the raw ``short_message``; the TLVs win where both give a value. Times are kept as
  the operator wrote them (its clock, its time zone).
- Any other ``deliver_sm`` is a **mobile-originated** message (a reply such as STOP):
  its sender in E.164 when the TON is international (section 5.2.5), its text decoded
  by :func:`relay.sms.encoding.decode_short_message`, its UDH kept (a concatenated MO is
  joined by the caller).
- :func:`receipt_matches` tells whether a receipt's id names a ``message_id``, and
  :func:`match_key` writes an id in the one form under which the queue looks a receipt
  up (``sms_parts.match_key``, ``sms_receipts.match_key``): two ids that match have the
  same key.

The PDUs come from smpplib's parser (:mod:`relay.sms.smpp` says why that library);
every function here reads fields with ``getattr`` so an absent one is empty, never an
exception.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

from relay.sms.encoding import decode_short_message

__all__ = [
    "MAX_MESSAGE_ID",
    "DeliveryReceipt",
    "MobileOriginated",
    "ReceiptState",
    "is_receipt",
    "match_key",
    "mo_from_pdu",
    "parse_receipt_text",
    "pdu_text",
    "receipt_from_pdu",
    "receipt_matches",
    "unreadable_mo",
    "unreadable_receipt",
]

ESM_TYPE_MASK = 0x3C  # section 5.2.12, bits 5-2: the message type
ESM_RECEIPT = 0x04
ESM_INTERMEDIATE = 0x20
TON_INTERNATIONAL = 1
NPI_ISDN = 1


def is_receipt(esm_class: int) -> bool:
    """True for a delivery receipt or an intermediate notification (section 5.2.12)."""
    return (esm_class & ESM_TYPE_MASK) in (ESM_RECEIPT, ESM_INTERMEDIATE)


class ReceiptState(enum.StrEnum):
    """A message's state in a receipt (SMPP 3.4 section 5.2.28 and Appendix B)."""

    ENROUTE = "ENROUTE"
    DELIVERED = "DELIVRD"
    EXPIRED = "EXPIRED"
    DELETED = "DELETED"
    UNDELIVERABLE = "UNDELIV"
    ACCEPTED = "ACCEPTD"
    UNKNOWN = "UNKNOWN"
    REJECTED = "REJECTD"

    @property
    def final(self) -> bool:
        return self is not ReceiptState.ENROUTE


# message_state TLV values (section 5.2.28) to the text form of Appendix B.
_TLV_STATES = {
    1: ReceiptState.ENROUTE,
    2: ReceiptState.DELIVERED,
    3: ReceiptState.EXPIRED,
    4: ReceiptState.DELETED,
    5: ReceiptState.UNDELIVERABLE,
    6: ReceiptState.ACCEPTED,
    7: ReceiptState.UNKNOWN,
    8: ReceiptState.REJECTED,
}
# Appendix B; operators vary the case, add spaces, and some write "DELIVERED".
_RECEIPT_FIELDS = re.compile(
    r"\b(id|sub|dlvrd|submit date|done date|stat|err):[ ]?((?!text:)\S*)|\btext:(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_STATE_WORDS = {s.value: s for s in ReceiptState} | {
    "DELIVERED": ReceiptState.DELIVERED,
    "UNDELIVERABLE": ReceiptState.UNDELIVERABLE,
    "ACCEPTED": ReceiptState.ACCEPTED,
    "REJECTED": ReceiptState.REJECTED,
}


@dataclass(frozen=True)
class DeliveryReceipt:
    """An operator's receipt, raw and parsed. ``message_id`` is the TLV's when present,
    else the text's ``id:``; times are as the operator wrote them (``YYMMDDhhmm``)."""

    message_id: str
    state: ReceiptState | None
    submit_date: str
    done_date: str
    error: str
    submitted: str
    delivered: str
    network_error_code: bytes
    text_fields: dict[str, str]
    tlv_state: int | None
    source_addr: str
    destination_addr: str
    short_message: bytes
    esm_class: int
    raw: bytes = b""  # the whole deliver_sm PDU as received (header, fields, TLVs)


@dataclass(frozen=True)
class MobileOriginated:
    """A message from a phone (a reply such as STOP): its number, to whom, the text."""

    source_addr: str  # "+34600111222" when TON is international, else as sent
    destination_addr: str
    text: str
    udh: bytes
    data_coding: int
    short_message: bytes
    raw: bytes = b""  # the whole deliver_sm PDU as received


def parse_receipt_text(text: str) -> dict[str, str]:
    """The fields of an Appendix B receipt text, keys in lower case (``submit date``)."""
    fields: dict[str, str] = {}
    for m in _RECEIPT_FIELDS.finditer(text):
        if m.group(3) is not None:
            fields.setdefault("text", m.group(3))
        else:
            fields.setdefault(m.group(1).lower(), m.group(2))
    return fields


def receipt_matches(message_id: str, receipt_id: str) -> bool:
    """True when a receipt's id names the ``message_id`` a ``submit_sm_resp`` gave.

    SMSCs do not all write it alike: the same id may come in another case, with leading
    zeros, or in decimal in the receipt where the response had hexadecimal (a habit of
    several SMSC products; Appendix B calls the text's format vendor-specific). The
    notations are crossed only when one side has a hexadecimal letter, so two decimal
    ids never match by being read as hexadecimal. Never raises, whatever the SMSC sent:
    a decimal id is compared as digits, never read as a number (:func:`match_key`)."""
    a, b = message_id.strip().lower(), receipt_id.strip().lower()
    if not a or not b:
        return False
    if a == b or (a.lstrip("0") == b.lstrip("0") and a.isalnum() and b.isalnum()):
        return True
    for hexadecimal, decimal in ((a, b), (b, a)):
        if (
            decimal.isascii()
            and decimal.isdigit()
            and _HEX_ID.fullmatch(hexadecimal)
            and not hexadecimal.isdigit()
            and str(int(hexadecimal, 16)) == (decimal.lstrip("0") or "0")
        ):
            return True
    return False


_HEX_ID = re.compile(r"[0-9a-f]{1,32}")


MAX_MESSAGE_ID = 65
"""The longest ``message_id`` SMPP 3.4 allows (section 5.2.23: a C-Octet String of at
most 65 octets); a key is cut there, so an SMSC sending a longer one cannot make a key
of any size."""


def match_key(message_id: str) -> str:
    """``message_id`` in the form receipts are looked up by: two ids that
    :func:`receipt_matches` pairs get the same key (a property test holds it), so the
    queue finds a receipt's part with an index instead of comparing every id.

    Lower case, without surrounding spaces; an id of decimal digits without its leading
    zeros (compared as digits: never read as a number, whatever its length); a
    hexadecimal id with a letter as its value in decimal, the notation a decimal receipt
    would use; any other alphanumeric id without its leading zeros; cut to
    :data:`MAX_MESSAGE_ID` characters. A key may be shared by ids that do not match
    (``0-1`` and ``-1`` are not alphanumeric; two over-long ids alike in their first 65
    characters): the caller checks the candidates with :func:`receipt_matches`. Never
    raises."""
    key = message_id.strip().lower()
    if key.isalnum():
        key = key.lstrip("0") or "0"
        if not (key.isascii() and key.isdigit()) and _HEX_ID.fullmatch(key):
            key = str(int(key, 16))  # at most 32 hexadecimal digits: 39 decimal ones
    return key[:MAX_MESSAGE_ID]


def pdu_text(value: Any) -> str:
    """A C-octet string field as smpplib reads it (bytes), as text."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return "" if value is None else str(value)


def _body(pdu: Any) -> bytes:
    """The message octets: ``short_message``, else the ``message_payload`` TLV (5.3.2.32;
    the only body a ``data_sm`` has)."""
    body = getattr(pdu, "short_message", None) or getattr(pdu, "message_payload", None)
    return body if isinstance(body, bytes) else b""


def receipt_from_pdu(pdu: Any, raw: bytes = b"") -> DeliveryReceipt:
    """The receipt a ``deliver_sm`` (or ``data_sm``) PDU read by smpplib carries;
    ``raw``: the PDU's octets as received, kept as the evidence."""
    short = _body(pdu)
    fields = parse_receipt_text(short.decode("latin-1"))
    tlv_state = getattr(pdu, "message_state", None)
    state = _TLV_STATES.get(tlv_state) if tlv_state is not None else None
    if state is None:
        state = _STATE_WORDS.get(fields.get("stat", "").upper())
    message_id = pdu_text(getattr(pdu, "receipted_message_id", None)) or fields.get("id", "")
    return DeliveryReceipt(
        message_id=message_id,
        state=state,
        submit_date=fields.get("submit date", ""),
        done_date=fields.get("done date", ""),
        error=fields.get("err", ""),
        submitted=fields.get("sub", ""),
        delivered=fields.get("dlvrd", ""),
        network_error_code=_octets(getattr(pdu, "network_error_code", None)),
        text_fields=fields,
        tlv_state=tlv_state,
        source_addr=_international(pdu),
        destination_addr=pdu_text(pdu.destination_addr),
        short_message=short,
        esm_class=pdu.esm_class or 0,
        raw=raw,
    )


def unreadable_receipt(pdu: Any, raw: bytes) -> DeliveryReceipt:
    """What is kept of a receipt :func:`receipt_from_pdu` could not read: the PDU as
    received, no id, no state (it is kept unmatched and acknowledged, never refused:
    sent again it would be as unreadable)."""
    return DeliveryReceipt(
        message_id="",
        state=None,
        submit_date="",
        done_date="",
        error="",
        submitted="",
        delivered="",
        network_error_code=b"",
        text_fields={},
        tlv_state=None,
        source_addr="",
        destination_addr="",
        short_message=b"",
        esm_class=_int(getattr(pdu, "esm_class", 0)),
        raw=raw,
    )


def unreadable_mo(pdu: Any, raw: bytes) -> MobileOriginated:
    """What is kept of a message from a phone :func:`mo_from_pdu` could not read: the
    PDU as received, no text."""
    return MobileOriginated(
        source_addr="",
        destination_addr="",
        text="",
        udh=b"",
        data_coding=_int(getattr(pdu, "data_coding", 0)),
        short_message=b"",
        raw=raw,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _octets(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode("latin-1", "replace")


def _international(pdu: Any) -> str:
    addr = pdu_text(pdu.source_addr)
    if pdu.source_addr_ton == TON_INTERNATIONAL and addr.isdigit():
        return "+" + addr
    return addr


def mo_from_pdu(pdu: Any, raw: bytes = b"") -> MobileOriginated:
    """The mobile-originated message a ``deliver_sm`` (or ``data_sm``) PDU carries;
    ``raw``: the PDU's octets as received."""
    short = _body(pdu)
    data_coding = pdu.data_coding or 0
    udh, text = decode_short_message(short, data_coding, pdu.esm_class or 0)
    return MobileOriginated(
        source_addr=_international(pdu),
        destination_addr=pdu_text(pdu.destination_addr),
        text=text,
        udh=udh,
        data_coding=data_coding,
        short_message=short,
        raw=raw,
    )
