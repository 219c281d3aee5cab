"""The sender's certificate of a recipient's acceptance or rejection of hosted content
(docs/hosted.md), made by a certificate worker as soon as the decision is recorded.

It is made like the other documents (:mod:`relay.certify.documents`): the message's
evidence record (``kind: acceptance``, ``addendum_of`` the message's certificate) with
the decision (``decision``: who, what, when, the typed name and comment, the SHA-256 of
the page the recipient was shown and of each attachment, the network address and
browser), rendered, with that exact page embedded as ``shown-page.html``, and signed PAdES with its timestamp, kept under ``certificates/``,
recorded for the verification page, and mailed to the sender. Page 1 says what the
recipient decided and that a typed name and a click are a simple electronic signature
(eIDAS art. 3(10)), not an advanced or qualified one (:mod:`certifier.document.pages`).

The PDF is written once (:func:`relay.queue.spool.write_once`) under the certificate id
given at the decision, so a job made again after a worker died mails that same PDF.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from certifier.pool import SHOWN_PAGE, SHOWN_PAGE_KEY
from relay.certify import notices
from relay.certify.evidence_record import build_evidence, iso
from relay.logs import log_failure, printable
from relay.queue.spool import SpoolFileMissing, write_once

if TYPE_CHECKING:
    from relay.certify.documents import DocumentMaker

log = logging.getLogger("certifica/certify")

ISSUED = "DecisionCertificateIssued"
"""The evidence event of a certificate of acceptance or rejection."""


async def decision_certificates(documents: DocumentMaker, qid: str) -> bool:
    """Make and mail every decision certificate owed for ``qid``; False on a failure
    (logged; the next scan tries again)."""
    try:
        row = await documents.store.message(qid)
        if row is None:
            return False
        for decision in await documents.store.decisions_pending(qid):
            async with documents._certificates:
                await _one(documents, row, decision)
        return True
    except Exception:
        log_failure(log, "%s: could not make the certificate of a decision; will retry", qid)
        return False


async def _one(documents: DocumentMaker, row: dict[str, Any], decision: dict[str, Any]) -> None:
    qid = row["qid"]
    try:
        raw = await asyncio.to_thread(documents.spool.read_any, qid)
    except SpoolFileMissing:
        raw = b""
    detail = json.loads(decision["decision_detail"] or "{}")
    cert_id = str(decision["decision_cert_id"])
    evidence = await build_evidence(documents.cfg, documents.store, row)
    evidence.update(
        kind="acceptance",
        certificate_id=cert_id,
        decision={
            "decision": decision["decision"],
            "recipient": decision["address"],
            "time": iso(decision["decided_at"]),
            **{
                k: detail[k]
                for k in (
                    "name",
                    "comment",
                    "page_sha256",
                    "message_sha256",
                    "attachments",
                    "ip",
                    "user_agent",
                    "automatic",
                    "reason",
                    "code_checked",
                )
                if k in detail
            },
        },
    )
    if row.get("cert_id"):
        evidence["addendum_of"] = row["cert_id"]
    if decision.get("decision_page"):  # the exact page decided on, as shown-page.html
        evidence[SHOWN_PAGE_KEY] = bytes(decision["decision_page"])
        evidence["decision"]["page_file"] = SHOWN_PAGE
    try:
        pdf = await documents._render(row, evidence, raw or None)
    finally:
        evidence.pop(SHOWN_PAGE_KEY, None)
    kept = await asyncio.to_thread(write_once, documents.certificates_dir / f"{cert_id}.pdf", pdf)
    pdf_sha = await documents._record_verification(row, cert_id, kept, pdf, evidence)
    data = notices.build_certificate_mail(
        gateway_name=f"Certifica ({documents.cfg.gateway.domain})",
        from_address=documents.cfg.gateway.certification_address,
        hostname=documents.cfg.gateway.hostname,
        to=row["sender"],
        qid=qid,
        cert_id=cert_id,
        sha256=row["sha256"],
        recipients=[
            {
                "address": decision["address"],
                "status": decision["decision"],  # accepted | rejected, never "delivered"
                "at": decision["decided_at"],
            }
        ],
        original=notices.original_headers(raw),
        pdf=kept,
        label="Certificate",
        reader=await documents.reader_for(row["sender"]),
        verify_url=evidence["verification"]["url"],
        publicly_trusted=documents.cfg.signing.publicly_trusted,
        outcome="acceptance" if decision["decision"] == "accepted" else "rejection",
    )
    issued = {
        "certificate_id": cert_id,
        "pdf_sha256": pdf_sha,
        "recipient_id": decision["recipient_id"],
    }
    await documents.queue_generated(
        "certificate",
        row,
        data,
        {},
        evidence=(ISSUED, issued),
    )
    await documents.store.decision_certified(int(decision["recipient_id"]))
    log.info(
        "%s: certificate %s of the %s by <%s> mailed to the sender",
        qid,
        cert_id,
        "acceptance" if decision["decision"] == "accepted" else "rejection",
        printable(str(decision["address"])),
    )
