"""Tracking tokens: who opened or clicked what, carried in the URL and bound by a MAC.

A token names one recipient's copy of one message and one link in it (link 0 is the
open pixel). It is not a random key into a table: it carries the queue id, the
recipient id and the link number in the clear, followed by a 128-bit truncated
HMAC-SHA256 over them (RFC 2104; truncation as allowed by RFC 2104 section 5 and
NIST SP 800-107). Nobody without the gateway's key can make a token that reads back,
so a token cannot be guessed or edited to point at another message, recipient or link,
and the endpoint needs no lookup to trust what it says.

Layout, before base64url without padding (RFC 4648 section 5)::

    version (1 byte, 1) | qid length (1 byte) | qid (ASCII) |
    recipient_id (unsigned LEB128) | link (unsigned LEB128) | MAC (16 bytes)

The MAC key is derived from the gateway's key (HMAC with a fixed label), so the same
secret can serve other purposes without a MAC from one being valid for the other.

Every token has exactly one spelling: varints must be minimal and the base64 text
canonical (unused bits zero), so changing any character of a valid token makes it
invalid. :meth:`TokenCodec.read` never raises: anything malformed, over-long or with a
wrong MAC reads as ``None``. :meth:`TokenCodec.make` raises ``ValueError`` for data it
cannot represent (a programming error, not bad input).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass

__all__ = ["MAX_TOKEN_CHARS", "TokenCodec", "TokenData"]

_VERSION = 1
_MAC_BYTES = 16  # 128 bits
_KEY_LABEL = b"certifica addendum tracking token v1"
_QID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_MAX_VALUE = 2**63 - 1  # fits the database's INTEGER
# 1 + 1 + 64 + 9 + 9 + 16 bytes at most, 147 base64 characters.
MAX_TOKEN_CHARS = 160


@dataclass(frozen=True)
class TokenData:
    """What a token says: one recipient's copy of a message, and which link (0 = open)."""

    qid: str
    recipient_id: int
    link: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int] | None:
    """(value, next position) of a minimal LEB128 varint, or None."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 9, len(data))):
        byte = data[i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and i > pos:
                return None  # not minimal: a second spelling of a smaller value
            return value, i + 1
    return None


def _b64encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii").rstrip("=")


class TokenCodec:
    """Makes and reads tracking tokens with a gateway key (at least 32 random bytes)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) < 32:
            raise ValueError("the tracking key must be at least 32 bytes")
        self._key = hmac.new(bytes(key), _KEY_LABEL, hashlib.sha256).digest()

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, data: TokenData) -> str:
        """The URL-safe token for ``data`` (characters ``A-Z a-z 0-9 - _``)."""
        if not isinstance(data.qid, str) or not _QID.fullmatch(data.qid):
            raise ValueError("qid must be 1 to 64 characters of A-Z a-z 0-9 . _ -")
        for name in ("recipient_id", "link"):
            value = getattr(data, name)
            if type(value) is not int or not 0 <= value <= _MAX_VALUE:
                raise ValueError(f"{name} must be an integer from 0 to 2**63-1")
        qid = data.qid.encode("ascii")
        payload = (
            bytes([_VERSION, len(qid)]) + qid + _varint(data.recipient_id) + _varint(data.link)
        )
        return _b64encode(payload + self._mac(payload)).replace("+", "-").replace("/", "_")

    def read(self, token: str) -> TokenData | None:
        """What ``token`` says, or None if it is malformed, too long or not ours."""
        try:
            return self._read(token)
        except Exception:  # never raises; the checks below are meant to make this unreachable
            return None

    def _read(self, token: str) -> TokenData | None:
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARS:
            return None
        if len(token) % 4 == 1 or not _TOKEN_CHARS.fullmatch(token):
            return None
        standard = token.replace("-", "+").replace("_", "/")
        try:
            raw = binascii.a2b_base64(standard + "=" * (-len(token) % 4), strict_mode=True)
        except (binascii.Error, ValueError):
            return None
        if _b64encode(raw).replace("+", "-").replace("/", "_") != token:
            return None  # non-zero unused bits: a second spelling of the same bytes
        if len(raw) < 2 + 1 + 1 + 1 + _MAC_BYTES or raw[0] != _VERSION:
            return None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(self._mac(payload), mac):
            return None
        qid_len = payload[1]
        qid_bytes = payload[2 : 2 + qid_len]
        if len(qid_bytes) != qid_len:
            return None
        qid = qid_bytes.decode("ascii", "replace")
        if not _QID.fullmatch(qid):
            return None
        first = _read_varint(payload, 2 + qid_len)
        if first is None:
            return None
        recipient_id, pos = first
        second = _read_varint(payload, pos)
        if second is None:
            return None
        link, pos = second
        if pos != len(payload) or recipient_id > _MAX_VALUE or link > _MAX_VALUE:
            return None
        return TokenData(qid, recipient_id, link)
