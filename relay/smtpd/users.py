"""Submission users and their passwords (scrypt, RFC 7914).

A user is an e-mail address; it may send only as itself. Hashes are
``scrypt$N$r$p$salt$hash`` (base64), checked in constant time. Checking an unknown
user costs the same as a wrong password, so replies and timing do not tell them apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

_N, _R, _P, _LEN = 2**14, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN, maxmem=_MAXMEM
    )
    b64 = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


# A hash of a random password: checked when the user is unknown so timing matches.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def check_password(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; always does one full scrypt."""
    target = stored or _DUMMY_HASH
    try:
        scheme, n, r, p, salt, digest = target.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode("utf-8", "surrogateescape"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(digest)),
            maxmem=_MAXMEM,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest)) and stored is not None


def normalise_address(address: str) -> str:
    """Addresses are compared case-insensitively (local parts too, as every provider does)."""
    return address.strip().lower()
