"""The names the queue gives: queue ids (Postfix-like) and certificate ids."""

from __future__ import annotations

import re
import secrets

CERTIFICATE_ID = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")
"""What a certificate id looks like (``CF-1CD0C29858F87AD3``; upper-case letters and digits
in groups joined by hyphens): one checked against it is safe to use as a file name."""


def new_queue_id() -> str:
    """A Postfix-like queue id: 12 hex digits, unique enough and grep-friendly."""
    return secrets.token_hex(6).upper()


def new_certificate_id() -> str:
    return "CF-" + secrets.token_hex(8).upper()
