"""Time-based one-time passwords (RFC 6238) for the console's second factor, with pyotp.

Six digits, SHA-1, 30-second steps: what every authenticator app reads from an
``otpauth://`` URI (the QR code shown at enrolment). A code is accepted for the step
before, the step of and the step after the server's clock (RFC 6238 section 5.2 allows
one step of drift either way); which step matched is returned so the caller records it
and never accepts it, or an earlier one, again.
"""

from __future__ import annotations

import hmac
import re

import pyotp

STEP_SECONDS = 30
SECRET = re.compile(r"[A-Z2-7]{32}")
"""A secret as :func:`new_secret` makes it: 160 bits (RFC 4226 section 4 recommends
160), base32."""
CODE = re.compile(r"[0-9]{6}")


def new_secret() -> str:
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, address: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app reads from the QR code."""
    return pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=issuer)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step ``code`` belongs to (one step of drift either way), or None."""
    code = code.strip().replace(" ", "")
    if not CODE.fullmatch(code) or not SECRET.fullmatch(secret):
        return None
    otp = pyotp.TOTP(secret)
    current = int(now // STEP_SECONDS)
    found = None
    for step in (current - 1, current, current + 1):
        # every step compared, in constant time: which one matched takes no longer
        if hmac.compare_digest(otp.generate_otp(step).encode(), code.encode()):
            found = step
    return found
