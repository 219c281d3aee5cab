"""Organisations' SMS contacts (docs/sms.md, "Contacts, consent and opt-out"): numbers
with names, groups and the marketing consent each gave, the opt-outs, and the sender
ID and number of each organisation and user."""

from __future__ import annotations

from relay.queue.db import Database


class Contacts(Database):
    """Contacts, groups, consents and opt-outs (module docstring)."""
