"""The names the queue gives: queue ids (Postfix-like) and certificate ids."""

from __future__ import annotations

import secrets


def new_queue_id() -> str:
    """A Postfix-like queue id: 12 hex digits, unique enough and grep-friendly."""
    return secrets.token_hex(6).upper()


def new_certificate_id() -> str:
    return "CF-" + secrets.token_hex(8).upper()
