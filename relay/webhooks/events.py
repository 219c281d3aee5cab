"""Which evidence entries are webhook events, and the JSON body each is sent as.

The events (docs/webhooks.md, "Events"), from the evidence log's entries (ETSI EN 319 522
names, and the gateway's extensions):

==============  ===========================================================================
``delivered``   ``RelayToNonERDS``: a recipient's mail server accepted the message
``failed``      ``RelayToNonERDSFailure``: a recipient failed, or bounced after it was
                delivered (a late bounce: ``"status": "bounced"``)
``opened``      ``ContentOpened`` (``"status": "opened"``) or ``LinkClicked``
                (``"status": "clicked"``): a tracked copy was opened, or a tracked link
                followed (README, "Opens, clicks and late bounces")
``certificate`` ``CertificateIssued`` (``"document": "certificate"``) or ``AddendumIssued``
                (``"document": "addendum"``)
==============  ===========================================================================

The body holds what identifies the event and never the message's content (no subject,
no text, no link, no client address): ``event``, ``time`` (of the evidence entry, RFC
3339 UTC), ``queue_id``, ``certificate_id`` and ``verification_url`` (null for a message
that is not certified), ``recipient`` (null for a certificate), ``status``, ``reply``
(the remote server's answer, for ``delivered`` and ``failed``), ``automatic`` (for
``opened``: whether it looked like a machine, not a person), ``evidence_seq`` (the
entry's number in the evidence log, which the certificate's annex E lists).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from relay.certify.verification import verification_url
from relay.queue.webhooks import Entry, Mapper, WebhookEvent

EVENTS: dict[str, WebhookEvent] = {
    "RelayToNonERDS": WebhookEvent.DELIVERED,
    "RelayToNonERDSFailure": WebhookEvent.FAILED,
    "ContentOpened": WebhookEvent.OPENED,
    "LinkClicked": WebhookEvent.OPENED,
    "CertificateIssued": WebhookEvent.CERTIFICATE,
    "AddendumIssued": WebhookEvent.CERTIFICATE,
}
"""Evidence event -> webhook event; every other entry is no webhook event."""


def rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def payload(
    entry: Entry, public_url: str, key: bytes
) -> tuple[WebhookEvent, dict[str, Any]] | None:
    """The event ``entry`` is and its body, or None when it is no webhook event."""
    event = EVENTS.get(entry.event)
    if event is None:
        return None
    detail = entry.detail
    cert_id = entry.cert_id if entry.certified else None
    body: dict[str, Any] = {
        "event": str(event),
        "time": rfc3339(entry.time),
        "queue_id": entry.qid,
        "certificate_id": cert_id,
        "recipient": entry.recipient,
    }
    if event == WebhookEvent.DELIVERED:
        body["status"] = "delivered"
        body["reply"] = detail.get("reply")
    elif event == WebhookEvent.FAILED:
        body["status"] = "bounced" if detail.get("late") else "failed"
        late = detail.get("diagnostic") or detail.get("status")
        body["reply"] = detail.get("reply") if "reply" in detail else late
    elif event == WebhookEvent.OPENED:
        body["status"] = "opened" if entry.event == "ContentOpened" else "clicked"
        body["automatic"] = bool(detail.get("automatic"))
    else:
        issued = detail.get("certificate_id")
        if isinstance(issued, str) and issued:
            cert_id = issued
        body["certificate_id"] = cert_id
        body["recipient"] = None
        body["status"] = "issued"
        body["document"] = "certificate" if entry.event == "CertificateIssued" else "addendum"
    body["verification_url"] = verification_url(public_url, key, cert_id) if cert_id else None
    body["evidence_seq"] = entry.seq
    return event, body


def mapper(public_url: str, key: bytes) -> Mapper:
    """The function :meth:`relay.queue.webhooks.Webhooks.collect_webhook_events` takes:
    an entry to (event, the JSON body as it will be signed and sent)."""

    def to_event(entry: Entry) -> tuple[WebhookEvent, str] | None:
        found = payload(entry, public_url, key)
        if found is None:
            return None
        event, body = found
        return event, json.dumps(body, ensure_ascii=False, separators=(",", ":"))

    return to_event
