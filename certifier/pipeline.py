"""From the queue's evidence and the received bytes to a signed certificate, in one worker call.

The relay hands over what it recorded (sender, recipients, timeline); this step adds
what the message itself says (subject, From, attachments and their hashes, text, the
essentials of the attachments that are invoices, read as ``[invoices]`` says),
parsed here, in the worker process, so that parsing a large or hostile MIME tree
never runs on the SMTP event loop. Then it renders and signs (PAdES-B-T).
"""

from __future__ import annotations

import hashlib
from typing import Any

from certifier import pool
from certifier.i18n import Reader
from certifier.invoices import InvoiceSettings
from certifier.message import summarise


def complete_evidence(
    evidence: dict[str, Any], eml: bytes | None, invoices: InvoiceSettings | None = None
) -> dict[str, Any]:
    """Fill ``evidence["message"]`` from the message bytes; refuse if the hash differs.
    Without the bytes (``eml`` None), the evidence must say why
    (``message.content_unavailable``) and is kept as it is. Attachments are read as
    invoices as ``invoices`` says, by default as this process was set up
    (:func:`certifier.pool.invoice_settings`)."""
    if eml is None:
        if not (evidence.get("message") or {}).get("content_unavailable"):
            raise ValueError("no message bytes, and the evidence does not say why")
        return evidence
    summary = summarise(eml, invoices=invoices or pool.invoice_settings())
    expected = (evidence.get("message") or {}).get("sha256")
    if expected is not None and expected != hashlib.sha256(eml).hexdigest():
        raise ValueError("the message bytes do not match the received hash")
    completed = dict(evidence)
    message = summary.as_evidence()
    added = (evidence.get("message") or {}).get("added_fields")
    if added:  # header fields the gateway added on the way out (RFC 6409 §8)
        message["added_fields"] = list(added)
    completed["message"] = message
    sender = dict(completed.get("sender") or {})
    sender["header_from"] = summary.from_
    completed["sender"] = sender
    return completed


def certify(evidence: dict[str, Any], eml: bytes | None, reader: Reader | None = None) -> bytes:
    """Complete the evidence, render the certificate for ``reader`` (default: English,
    UTC) and sign it; runs in a pool worker."""
    return pool.render_and_sign(complete_evidence(evidence, eml), eml, reader=reader)
