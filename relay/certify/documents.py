"""The documents the gateway writes about a message (the certify stage).

A :class:`DocumentMaker` makes one :class:`~relay.queue.jobs.DocumentJob` at a time,
many at once: the processing notice to the sender of certified mail, the certificate
(of sending, of reception, or of a message whose content was lost), the delivery status
notification to the sender of plain mail (RFC 3464, :mod:`relay.certify.dsn`), and the
addenda (opens and clicks; a delivery report that came back late). What it states comes
from the store (:mod:`relay.certify.evidence_record`); the PDF is rendered and signed
by a :class:`Certifier`; the mail carrying it is queued in the same transaction that
records the message as done, so a crash never loses or doubles it.

A job may be asked twice (the process making it ended before answering): each kind
reads the message's state first, and a certificate is committed only while its message
is still uncertified.

A reception certificate and an addendum cost their organisation ``[credits] reception``
and ``addendum`` (docs/credits.md), charged in the transaction that queues them, so a
document made once is charged once. Short of credits, the document is not refused: it
waits (``DocumentState.WAITING``, the admins are told) until ``certifica credits add``
makes it pending again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from pyhanko.sign.timestamps import TimestampRequestError

from certifier.i18n import Reader, as_datetime
from certifier.outcome import outcome
from certifier.verify import embedded_evidence
from relay.certify import credit_notices, dsn, notices
from relay.certify.evidence_record import (
    build_evidence,
    iso,
    late_bounce_addendum,
    reception_evidence,
)
from relay.certify.retention import content_removed_reason
from relay.certify.verification import verification_code, verification_url
from relay.config import Config
from relay.delivery import outbound
from relay.delivery.client import DEFERRED, DELIVERED, FAILED
from relay.health import UseRecord, why
from relay.logs import log_failure, printable
from relay.metrics import CERTIFICATES, SIGNING_ERRORS, TSA_ERRORS
from relay.queue.credit_notices import CreditFacts, CreditNotice
from relay.queue.credits import Charge, InsufficientCredits
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.jobs import DocumentDone, DocumentJob, DocumentKind
from relay.queue.spool import Spool, SpoolFileMissing, write_once
from relay.queue.spool_missing import SPOOL_MISSING_TEXT, missing_since, spool_name
from relay.queue.states import DocumentState, MessageState, Product
from relay.queue.store import NewMessage, Store
from relay.queue.verifications import VersionKind

# The condition every certificate's commit carries: the message still owes it. A job run
# twice (a worker killed before it answered) then commits once (ARCHITECTURE.md §1).
CERTIFICATE_OWED = {"cert_state": DocumentState.PENDING}


def certified_columns(**extra: Any) -> dict[str, Any]:
    """The message's columns once its certificate (or addendum) is queued."""
    return {
        "cert_state": DocumentState.DONE,
        "state": MessageState.DONE,
        "done_at": time.time(),
        **extra,
    }


log = logging.getLogger("certifica/qmgr")
cert_log = logging.getLogger("certifica/certifier")

KEPT_HEADERS = 65536
"""Bytes of a plain message's header section kept once it leaves the queue, for a late
report passed on to its sender."""
CONCURRENT_DOCUMENTS = 12
"""Documents in the making at once. Rendering and signing (~13 ms) run in the worker
processes; most of a document's time is its fsyncs and transactions, which overlap
well, so more are in flight than there are workers."""


class Certifier(Protocol):
    """Turns evidence and the original message into a signed PDF, off the event loop."""

    async def certify(self, evidence: dict[str, Any], eml: bytes | None, reader: Reader) -> bytes:
        """``eml`` None: the message is lost; the evidence says why (no message.eml).
        ``reader``: the language and time zone the document is written for."""
        ...


class DocumentMaker:
    """The certify stage: makes the notices, certificates, reports and addenda the
    queue manager asks for, and queues each as a mail of the gateway's own.

    Every method reads what it needs from the store and records what it did there;
    the queue manager learns only which messages changed (the returned
    :class:`~relay.queue.jobs.DocumentDone`). A failure is logged and left for the
    next scan to find again.
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        spool: Spool,
        certifier: Certifier,
        certificates_dir: Path,
        code_key: bytes,
    ) -> None:
        self.cfg = cfg
        self.code_key = code_key
        self.store = store
        self.spool = spool
        self.certifier = certifier
        self.certificates_dir = certificates_dir
        self.certificates_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._certificates = asyncio.Semaphore(CONCURRENT_DOCUMENTS)
        # The result of the last real use of each, for /readyz (relay/health.py).
        self.signing_use = UseRecord(cfg.state_dir, "signing")
        self.tsa_use = UseRecord(cfg.state_dir, "tsa")

    async def reader_for(self, address: str | None) -> Reader:
        """Who reads what goes to ``address``: the user's language and time zone
        (``certifica users set ADDR --language/--timezone``), else ``[gateway]``'s."""
        language, timezone = (None, None)
        if address:
            language, timezone = await self.store.user_reading(address)
        return Reader(language or self.cfg.gateway.language, timezone or self.cfg.gateway.timezone)

    async def _render(
        self, row: dict[str, Any], evidence: dict[str, Any], eml: bytes | None
    ) -> bytes:
        """The signed PDF of ``evidence``, for the reader ``row``'s documents go to (its
        sender, or the mailbox owner), with its verification URL (README, "Verifying a
        certificate")."""
        url = verification_url(self.cfg.web.public_url, self.code_key, evidence["certificate_id"])
        evidence["verification"] = {"url": url}
        reader = await self.reader_for(row["sender"])
        started = time.monotonic()
        try:
            pdf = await self.certifier.certify(evidence, eml, reader)
        except TimestampRequestError as err:  # the TSA's fault: /readyz names it
            CERTIFICATES.labels("failed").observe(time.monotonic() - started)
            TSA_ERRORS.labels("certificate").inc()
            self.tsa_use.record(False, why(err))
            raise
        except Exception as err:
            CERTIFICATES.labels("failed").observe(time.monotonic() - started)
            SIGNING_ERRORS.labels("certificate").inc()
            self.signing_use.record(False, why(err))
            raise
        CERTIFICATES.labels("issued").observe(time.monotonic() - started)
        self.signing_use.record(True)
        self.tsa_use.record(True)
        return pdf

    async def _record_verification(
        self,
        row: dict[str, Any],
        cert_id: str,
        kept: bytes,
        rendered: bytes,
        evidence: dict[str, Any],
    ) -> str:
        """What the verification page shows for the PDF ``kept`` under ``cert_id``:
        recorded before the mail is queued, so the page answers by the time anyone has
        the link. A rerun keeps the PDF first written (:func:`write_once`): the page then
        describes that one, from its own embedded evidence, not this run's. The PDF is
        also the certificate's first version (``certificate_versions``). Returns the
        kept PDF's SHA-256."""
        pdf_sha = hashlib.sha256(kept).hexdigest()
        if kept != rendered:
            first: dict[str, Any] | None = await asyncio.to_thread(embedded_evidence, kept)
            evidence = first or evidence
        recipients = [
            {
                "address": r.get("address"),
                "status": r.get("status"),
                "time": r.get("time"),
                # A phone: its SMS outcome, as the certificate words it (docs/sms.md).
                **({"sms": r["sms"].get("outcome")} if isinstance(r.get("sms"), dict) else {}),
            }
            for r in evidence.get("recipients") or []
            if isinstance(r, dict)
        ]
        if evidence.get("kind") == "reception":
            reception = evidence.get("reception") or {}
            recipients = [
                {
                    "address": row["sender"],
                    "status": "received",
                    "time": reception.get("arrived_at"),
                }
            ]
        await self.store.record_verification(
            verification_code(self.code_key, cert_id),
            cert_id=cert_id,
            qid=row["qid"],
            kind=str(evidence.get("kind") or "sending"),
            outcome=str(outcome(evidence)),
            issued_at=_posix(evidence.get("issued_at")) or time.time(),
            pdf_sha256=pdf_sha,
            recipients=recipients,
        )
        # The first version of the archived file; renewals add theirs (relay.certify.renewal).
        await self.store.record_certificate_version(
            pdf_sha, cert_id, time.time(), VersionKind.ISSUED
        )
        return pdf_sha

    async def make(self, job: DocumentJob) -> DocumentDone:
        """Make the document of ``job``; never raises (a failure is logged and retried
        on a later scan)."""
        run = {
            DocumentKind.NOTICE: self.notice,
            DocumentKind.FINISH: self.finish,
            DocumentKind.REPORT: self.report,
            DocumentKind.ADDENDUM: self.tracking_addendum,
            DocumentKind.CREDITS: self.credit_notices,
            DocumentKind.ACCEPTANCE: self.decisions,
        }[job.kind]
        return DocumentDone((job.qid,) if await run(job.qid) else ())

    async def _certified_already(self, qid: str) -> bool:
        """Whether ``qid`` is closed or certified already: read again just before a
        certificate is written, so a job run twice does not certify twice."""
        row = await self.store.message(qid)
        return (
            row is None
            or row["state"] != MessageState.ACTIVE
            or row["cert_state"] != DocumentState.PENDING
        )

    async def decisions(self, qid: str) -> bool:
        """The certificates of acceptance or rejection owed for ``qid``
        (:mod:`relay.certify.acceptance`)."""
        from relay.certify.acceptance import decision_certificates

        return await decision_certificates(self, qid)

    async def tracking_addendum(self, qid: str) -> bool:
        """A signed addendum listing a message's opens and clicks, to its sender."""
        try:
            row = await self.store.message(qid)
            if row is None or not row["cert_id"]:
                return False
            # Short of credits it is not made: its opens and clicks stay unreported, and
            # the addenda due are found again once credits are added (docs/credits.md).
            go, charge = await self._charge_or_wait(row, row["org"], Product.ADDENDUM, "")
            if not go:
                return False
            async with self._certificates:
                now = time.time()
                removed: str | None = None
                try:
                    raw = await asyncio.to_thread(self.spool.read_any, qid)
                except SpoolFileMissing as missing:
                    removed = await self._removed_by_retention(qid)
                    if removed is None:
                        # No addendum can embed the message: recorded once, not retried.
                        await self._addendum_not_issued(qid, missing, "opens and clicks")
                        events = await self.store.tracking_events(qid, row["tracking_reported"])
                        last = max((e["id"] for e in events), default=row["tracking_reported"])
                        await self.store.mark_reported(qid, last, now)
                        return False
                    raw = b""  # the addendum is made without it, and says why
                # Only what the sender has not had yet, in the certificate or an addendum.
                evidence = await build_evidence(
                    self.cfg, self.store, row, tracking_after=row["tracking_reported"]
                )
                cert_id = new_certificate_id()
                evidence.update(kind="addendum", certificate_id=cert_id, addendum_of=row["cert_id"])
                if removed is not None:
                    evidence["message"]["content_unavailable"] = removed
                pdf = await self._render(row, evidence, raw or None)
                last = evidence["tracking"]["last_event_id"] if evidence["tracking"] else 0
                # Sent, recorded and marked reported in one transaction, on condition that
                # no other job reported these events meanwhile: an addendum made twice
                # (a worker killed before answering) is mailed once.
                return await self._send_document(
                    row,
                    cert_id,
                    pdf,
                    raw,
                    label="Addendum",
                    update_qid=None,
                    evidence=evidence,
                    reported=(row["tracking_reported"], last, now),
                    charge=charge,
                )
        except Exception:
            log_failure(log, "%s: could not make the tracking addendum; will retry", qid)
            return False

    async def queue_generated(
        self,
        kind: str,
        parent: dict[str, Any],
        data: bytes,
        parent_columns: dict[str, Any],
        update_qid: str | None = None,
        recipient: str | None = None,
        *,
        only_if: dict[str, Any] | None = None,
        evidence: tuple[str, dict[str, Any]] | None = None,
        qid: str | None = None,
        evidence_qid: str | None = None,
        addendum_at: tuple[int, int, float] | None = None,
        charge: Charge | None = None,
    ) -> str | None:
        """Queue a mail the gateway wrote, to the sender of ``parent`` (or ``recipient``);
        in the same transaction apply ``parent_columns`` to ``update_qid`` (default: the
        parent) and append its ``evidence`` entry. With ``only_if``, only while that
        message's columns still hold those values: None, and nothing queued, when they
        do not (the document was made already). ``qid``: the new mail's queue id, when
        the evidence names it."""
        qid = qid or new_queue_id()
        await asyncio.to_thread(self.spool.store, qid, data)
        msg = NewMessage(
            qid=qid,
            kind=kind,
            sender="",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            recipients=(recipient or parent["sender"],),
            parent_qid=parent["qid"],
            method="generated",
        )
        try:
            queued = await self.store.enqueue_generated(
                msg,
                update_qid or parent["qid"],
                parent_columns,
                time.time(),
                only_if=only_if,
                evidence=evidence,
                evidence_qid=evidence_qid,
                addendum_at=addendum_at,
                charge=charge,
            )
        except asyncio.CancelledError:
            # The store's thread may still commit the row: the file stays. If the row
            # never commits, the next start removes the file (no row, never acknowledged).
            raise
        except Exception:
            await asyncio.to_thread(self.spool.remove, qid)
            raise
        if not queued:
            await asyncio.to_thread(self.spool.remove, qid)
            log.info("%s: %s for %s made already; not queued again", qid, kind, parent["qid"])
            return None
        log.info("%s: from=<>, size=%d, nrcpt=1, %s for %s", qid, len(data), kind, parent["qid"])
        return qid

    async def notice(self, qid: str) -> bool:
        """The processing notice to the sender of certified mail, before its certificate."""
        try:
            row = await self.store.message(qid)
            if row is None or row["notice_state"] != "pending":
                return False
            if not row["sender"]:  # never a notice to the null sender
                await self.store.mark(qid, notice_state="done")
                return True
            try:
                raw = await asyncio.to_thread(self.spool.read, qid)
            except SpoolFileMissing as missing:
                # No notice about content the gateway cannot read; the sender hears of
                # the message in the mail that replaces its certificate.
                await missing_since(self.cfg, self.store, qid, missing)
                await self.store.append_evidence(
                    qid, "NoticeWithheld", {"reason": SPOOL_MISSING_TEXT}, time.time()
                )
                await self.store.mark(qid, notice_state="done")
                return True
            original = notices.original_headers(raw)
            recipients = [r["address"] for r in await self.store.recipients(qid)]
            try:
                data = notices.build_notice(
                    gateway_name=self._gateway_name(),
                    from_address=self.cfg.gateway.certification_address,
                    hostname=self.cfg.gateway.hostname,
                    to=row["sender"],
                    qid=qid,
                    accepted_at=iso(row["created"]) or "",
                    sha256=row["sha256"],
                    recipients=recipients,
                    original=original,
                    reader=await self.reader_for(row["sender"]),
                    hosted=bool(row.get("hosted_mode")),
                )
            except ValueError as why:
                # A value of the message's that no header field may carry: the same at
                # every retry, so the notice is withheld (and said so in the evidence)
                # rather than holding the certificate back for ever.
                reason = f"the notice could not be written ({printable(str(why))[:200]})"
                log.error("%s: processing notice withheld: %s", qid, reason)
                await self.store.append_evidence(
                    qid, "NoticeWithheld", {"reason": reason}, time.time()
                )
                await self.store.mark(qid, notice_state="done")
                return True
            notice_qid = new_queue_id()
            queued = await self.queue_generated(
                "notice",
                row,
                data,
                {"notice_state": "done"},
                qid=notice_qid,
                only_if={"notice_state": "pending"},
                evidence=("NoticeSent", {"notice_qid": notice_qid}),
            )
            return queued is not None  # its certificate waited for this notice
        except Exception:
            log_failure(log, "%s: could not make the processing notice; will retry", qid)
            return False

    async def finish(self, qid: str) -> bool:
        """Close a message whose recipients all ended: its certificate, the addendum
        or report a late bounce calls for, or only its removal from the queue. A
        message closed already (a job run twice) is left as it is."""
        try:
            row = await self.store.message(qid)
            if row is None or row["state"] != "active":
                return False
            if row["cert_state"] == DocumentState.WAITING:
                return False  # for its organisation's credits: `certifica credits add`
            if row["kind"] == "mail" and row["certified"] and row["cert_state"] == "pending":
                if row["notice_state"] == "pending":
                    return False  # the notice goes first; the next scan comes back here
                async with self._certificates:
                    return await self._certify(row)
            elif row["kind"] == "reception" and row["cert_state"] == "pending":
                async with self._certificates:
                    return await self._certify_reception(row)
            elif row["kind"] == "dsn":
                if row["certified"] and row["cert_state"] == "pending":
                    async with self._certificates:
                        return await self._addendum(row)
                await self._pass_on(row)
                await asyncio.to_thread(self.spool.archive, qid)
                log.info("%s: removed", qid)
            else:
                recipients = await self.store.recipients(qid)
                columns: dict[str, Any] = {"state": "done", "done_at": time.time()}
                if (
                    row["kind"] == "mail"
                    and not row["certified"]
                    and _envelope_sender(row)
                    and any(r["status"] == DELIVERED for r in recipients)
                ):
                    # A late DSN may still come for it: its report quotes this, not the
                    # header fields a remote DSN claims the message had.
                    columns["header_section"] = await asyncio.to_thread(self._kept_headers, qid)
                await self.store.mark(qid, **columns)
                if row["kind"] == "postmaster" and any(r["status"] == FAILED for r in recipients):
                    await asyncio.to_thread(self.spool.archive, qid)  # for the operator
                else:
                    await asyncio.to_thread(self.spool.remove, qid)
                log.info("%s: removed", qid)
            return False  # closed: nothing more to look at
        except Exception:
            log_failure(log, "%s: could not finish the message; will retry", qid)
            return False

    def _kept_headers(self, qid: str) -> bytes | None:
        """The header section of a queued message, whole fields up to
        :data:`KEPT_HEADERS` bytes; None when its spool file is gone."""
        try:
            head = dsn.header_section(self.spool.read_head(qid, KEPT_HEADERS + 4))
        except FileNotFoundError:
            return None
        if len(head) <= KEPT_HEADERS:
            return head
        kept = b""
        for field in outbound.header_fields(head):
            if len(kept) + len(field) > KEPT_HEADERS:
                break
            kept += field
        return kept

    # -- delivery status notifications to the sender of plain mail (relay/certify/dsn.py) --------
    async def report(self, qid: str) -> bool:
        """The report the sender of plain mail is due: recipients that failed (or, with
        NOTIFY=SUCCESS, were relayed) since the last report, and the one "still trying"
        report after ``[queue] delay_warning``. Queued and recorded in one transaction,
        before the message can be closed, so a restart sends it once."""
        try:
            row = await self.store.message(qid)
            if row is None or row["state"] != "active":
                return False
            now = time.time()
            recipients = await self.store.recipients(qid)
            final: list[int] = []
            entries: list[dsn.RecipientStatus] = []
            for r in recipients:
                action = {FAILED: dsn.Action.FAILED, DELIVERED: dsn.Action.RELAYED}.get(r["status"])
                if (
                    action is not None
                    and r["report_qid"] is None
                    and r["lease_until"] is None
                    and dsn.wants(r["notify"], action)
                ):
                    final.append(r["id"])
                    entries.append(_recipient_status(r, action))
            warn = self.cfg.queue.delay_warning
            delayed = [
                r
                for r in recipients
                if r["status"] == DEFERRED and dsn.wants(r["notify"], dsn.Action.DELAYED)
            ]
            delay = bool(
                warn > 0
                and delayed
                and row["delay_report_qid"] is None
                and now >= row["created"] + warn
            )
            if delay:
                entries += [
                    _recipient_status(r, dsn.Action.DELAYED, row["expires"]) for r in delayed
                ]
            if not entries:
                await self.store.record_report(qid, None, [], False, now)  # nothing left due
                return True
            sender = _envelope_sender(row)
            why_not = (
                "the message has the null sender"
                if not sender
                else "it is not plain mail"
                if row["kind"] != "mail" or row["certified"]
                else None
            )
            raw = b""
            if why_not is None:  # only plain mail is read from the spool
                try:
                    raw = await asyncio.to_thread(self.spool.read, qid)
                except FileNotFoundError:
                    pass  # the report still goes; it just cannot quote the original
                if dsn.is_report(raw):
                    why_not = "the message is itself a delivery report"
            if why_not:
                await self.store.record_report(qid, None, final, delay, now)
                log.info("%s: no delivery status notification: %s", qid, why_not)
                return True
            data = self._build_report(
                row, sender, entries, raw, reader=await self.reader_for(sender)
            )
            report_qid = new_queue_id()
            await asyncio.to_thread(self.spool.store, report_qid, data)
            report = NewMessage(
                qid=report_qid,
                kind="report",
                sender="",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                recipients=(sender,),
                parent_qid=qid,
                method="generated",
            )
            if not await self.store.record_report(qid, report, final, delay, now):
                await asyncio.to_thread(self.spool.remove, report_qid)  # another task sent it
                return False
            log.info("%s: sender %s: %s", qid, dsn.notification_name(entries), report_qid)
            log.info("%s: from=<>, size=%d, nrcpt=1, report for %s", report_qid, len(data), qid)
            return True
        except Exception:
            log_failure(log, "%s: could not make the delivery status notification; will retry", qid)
            return False

    def _build_report(
        self,
        row: dict[str, Any],
        sender: str,
        entries: list[dsn.RecipientStatus],
        original: bytes,
        reported_by: str | None = None,
        headers_only: bool = False,
        *,
        reader: Reader,
    ) -> bytes:
        """``headers_only``: ``original`` is only the header section (the message left the
        queue), attached as ``text/rfc822-headers`` whatever RET= asked. ``reader``: the
        sender, in whose language the report's first part is written."""
        # RET=FULL returns the whole message on failure only (RFC 3461 §4.3), up to a cap.
        full = (
            row["dsn_ret"] == "FULL"
            and not headers_only
            and any(e.action == dsn.Action.FAILED for e in entries)
        )
        too_big = full and len(original) > self.cfg.queue.dsn_full_limit
        return dsn.build_report(
            dsn.Report(
                hostname=self.cfg.gateway.hostname,
                domain=self.cfg.gateway.domain,
                to=sender,
                queue_id=row["qid"],
                arrival=row["created"],
                recipients=tuple(entries),
                original=original,
                return_full=full and not too_big,
                full_refused=len(original) if too_big else None,
                envid=row["dsn_envid"],
                reported_by=reported_by,
            ),
            reader=reader,
        )

    async def _pass_on(self, report_row: dict[str, Any]) -> None:
        """A DSN that came back (to the VERP return path) for plain mail goes on to its
        sender as a report of ours; the DSN is done in the same transaction. Anything
        else is only closed.

        The DSN is believed for no more than its per-recipient fields, and only for the
        reports :meth:`relay.queue.store.Store.accept_dsn` kept: about a recipient the gateway
        delivered to, once per recipient and action. Anyone who knows a return path can
        write a DSN, so the report quotes the original's own Subject and header fields
        (the spool, or what was kept when it left the queue), never the DSN's."""
        qid = report_row["qid"]
        now = time.time()
        parent = (
            await self.store.message(report_row["parent_qid"]) if report_row["parent_qid"] else None
        )
        sender = _envelope_sender(parent) if parent is not None else ""
        if parent is None or parent["kind"] != "mail" or parent["certified"] or not sender:
            await self.store.mark(qid, state="done", done_at=now)
            return
        summary = json.loads(report_row["summary"] or "{}")
        reports = summary.get("reports", [])
        wanted = {r["address"].lower(): r for r in await self.store.recipients(parent["qid"])}
        entries: list[dsn.RecipientStatus] = []
        reporting: str | None = None
        for index in summary.get("pass_on", []):
            said = reports[index]
            r = wanted.get(str(said.get("recipient") or "").lower())
            try:
                action = dsn.Action(str(said.get("action")))
            except ValueError:
                continue  # "expanded": nothing the sender needs
            if r is None or not dsn.wants(r["notify"], action):
                continue
            reporting = reporting or said.get("reporting_mta")
            entries.append(
                dsn.late_status(
                    address=r["address"],
                    action=action,
                    status=said.get("status"),
                    diagnostic=said.get("diagnostic"),
                    remote_mta=said.get("remote_mta") or said.get("reporting_mta"),
                    received=report_row["created"],
                    orcpt=r["orcpt"],
                )
            )
        headers_only = False
        try:
            original = await asyncio.to_thread(self.spool.read, parent["qid"])
        except FileNotFoundError:  # it left the queue: what was kept of it then
            original, headers_only = parent["header_section"] or b"", True
        if entries and dsn.is_report(original):
            entries = []  # a report about a report: never (RFC 3461 §6.2)
        if not entries:
            await self.store.mark(qid, state="done", done_at=now)
            log.info("%s: no delivery status notification passed on for %s", qid, parent["qid"])
            return
        data = self._build_report(
            parent,
            sender,
            entries,
            original,
            reporting or "",
            headers_only,
            reader=await self.reader_for(sender),
        )
        report_qid = await self.queue_generated(
            "report",
            parent,
            data,
            {"state": "done", "done_at": now},
            update_qid=qid,
            recipient=sender,
        )
        log.info("%s: sender %s: %s", parent["qid"], dsn.notification_name(entries), report_qid)

    async def _certify(self, row: dict[str, Any]) -> bool:
        qid = row["qid"]
        try:
            raw = await asyncio.to_thread(self.spool.read, qid)
        except SpoolFileMissing as missing:
            return await self._content_lost(row, missing)
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            # The spool no longer holds what was received: never certify something else.
            log.error(
                "%s: spool file does not match the received hash; certificate withheld, "
                "message put on hold for the operator",
                qid,
            )
            await self.store.mark(qid, state="held")
            return False
        evidence = await build_evidence(self.cfg, self.store, row)
        pdf = await self._render(row, evidence, raw)
        reported = evidence["tracking"]["last_event_id"] if evidence["tracking"] else 0
        if not await self._send_document(
            row,
            row["cert_id"],
            pdf,
            raw,
            label="Certificate",
            update_qid=qid,
            evidence=evidence,
            done={"tracking_reported": reported},
        ):
            return False
        await asyncio.to_thread(self.spool.archive, qid)
        log.info("%s: removed", qid)
        return True

    async def _certify_reception(self, row: dict[str, Any]) -> bool:
        """The reception certificate to the owner and, when decided at arrival (and still
        within the per-sender interval), the same PDF to the sender as proof of receipt."""
        qid = row["qid"]
        go, charge = await self._charge_or_wait(row, row["org"], Product.RECEPTION)
        if not go:
            return True  # it waits for credits; the queue manager looks at it again
        try:
            raw = await asyncio.to_thread(self.spool.read, qid)
        except SpoolFileMissing as missing:
            return await self._content_lost(row, missing)
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            log.error("%s: spool file does not match the received hash; held", qid)
            await self.store.mark(qid, state="held")
            return False
        detail = json.loads(row["reception"] or "{}")
        to = (detail.get("receipt") or {}).get("to")
        if to and not await self.store.claim_receipt(
            row["sender"], to, time.time(), self.cfg.reception.ack_interval
        ):
            detail["receipt"] = {
                "to": None,
                "why": "a proof of receipt already went to this sender within "
                f"{self.cfg.reception.ack_interval:.0f} s (RFC 3834: at most one per interval)",
                "reason": "interval",
            }
            to = None
        evidence = await build_evidence(self.cfg, self.store, row)
        evidence.update(kind="reception", reception=reception_evidence(detail))
        pdf = await self._render(row, evidence, raw)
        if await self._certified_already(qid):
            return False
        path = self.certificates_dir / f"{row['cert_id']}.pdf"
        kept = await asyncio.to_thread(write_once, path, pdf)
        pdf_sha = await self._record_verification(row, row["cert_id"], kept, pdf, evidence)
        pdf = kept
        original = notices.original_headers(raw)

        async def mail(receipt: bool, address: str) -> bytes:
            return notices.build_reception_mail(
                gateway_name=self._gateway_name(),
                from_address=self.cfg.gateway.certification_address,
                hostname=self.cfg.gateway.hostname,
                to=address,
                qid=qid,
                cert_id=row["cert_id"],
                sha256=row["sha256"],
                owner=row["sender"],
                original_from=row["header_from"] or "",
                original=original,
                pdf=pdf,
                receipt=receipt,
                reader=await self.reader_for(address),
                verify_url=evidence["verification"]["url"],
                publicly_trusted=self.cfg.signing.publicly_trusted,
                received_at=row["created"],
            )

        if to:
            receipt_qid = await self.queue_generated(
                "receipt", row, await mail(True, to), {}, recipient=to
            )
            await self.store.append_evidence(
                qid, "ReceiptSent", {"to": to, "receipt_qid": receipt_qid}, time.time()
            )
        try:
            queued = await self.queue_generated(
                "certificate",
                row,
                await mail(False, row["sender"]),
                certified_columns(),
                only_if=CERTIFICATE_OWED,
                evidence=(
                    "CertificateIssued",
                    {"certificate_id": row["cert_id"], "pdf_sha256": pdf_sha},
                ),
                charge=charge,
            )
        except InsufficientCredits as short:  # spent meanwhile by another document
            await self._wait_for_credits(qid, short.org, Product.RECEPTION)
            return True
        if queued is None:
            return False
        cert_log.info(
            "%s: reception certificate=%s owner=<%s> sha256=%s pdf_sha256=%s receipt=%s",
            qid, row["cert_id"], row["sender"], row["sha256"], pdf_sha, to or "none",
        )  # fmt: skip
        await asyncio.to_thread(self.spool.archive, qid)
        log.info("%s: removed", qid)
        return True

    async def credit_notices(self, org: str) -> bool:
        """The notices ``org``'s active admins are owed about its credits, each in the
        admin's language: the balance fell below ``[credits] warn_below``, documents
        wait for credits. Each kind is queued once, with the organisation marked told,
        in one transaction (docs/credits.md)."""
        try:
            facts = await self.store.credit_facts(org)
            if facts is None:
                return False
            for notice in facts.owed:
                await self._credit_notice(facts, notice)
            return False  # no message's state changed
        except Exception:
            log_failure(log, "%s: could not make the notice about credits; will retry", org)
            return False

    async def _credit_notice(self, facts: CreditFacts, notice: CreditNotice) -> None:
        qids: list[str] = []
        mails: list[NewMessage] = []
        try:
            for admin in facts.admins:
                reader = Reader(
                    admin.language or self.cfg.gateway.language,
                    admin.timezone or self.cfg.gateway.timezone,
                )
                qid = new_queue_id()
                common: dict[str, Any] = {
                    "gateway_name": self._gateway_name(),
                    "from_address": self.cfg.gateway.certification_address,
                    "hostname": self.cfg.gateway.hostname,
                    "to": admin.address,
                    "qid": qid,
                    "org_name": facts.name,
                    "balance": facts.balance,
                    "contact": self.cfg.provider.contact,
                    "reader": reader,
                }
                if notice == CreditNotice.LOW:
                    data = credit_notices.build_low_balance(
                        threshold=self.cfg.credits.warn_below, **common
                    )
                else:
                    data = credit_notices.build_waiting(
                        receptions=facts.receptions_waiting, addenda=facts.addenda_waiting, **common
                    )
                await asyncio.to_thread(self.spool.store, qid, data)
                qids.append(qid)
                mails.append(
                    NewMessage(
                        qid=qid,
                        kind="notice",
                        sender="",
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        recipients=(admin.address,),
                    )
                )
            queued = await self.store.queue_credit_notice(facts.org, notice, mails, time.time())
        except asyncio.CancelledError:
            raise  # the rows may still commit: the files stay (the next start sweeps them)
        except Exception:
            for qid in qids:
                await asyncio.to_thread(self.spool.remove, qid)
            raise
        if not queued:
            for qid in qids:
                await asyncio.to_thread(self.spool.remove, qid)
            return
        for mail in mails:
            log.info(
                "%s: from=<>, size=%d, nrcpt=1, %s credits notice for organisation %s",
                mail.qid, mail.size, notice, facts.org,
            )  # fmt: skip
        if not mails:
            log.info("organisation %s has no active admin to tell (%s credits)", facts.org, notice)

    async def _charge_or_wait(
        self, row: dict[str, Any], org: str | None, product: Product, wait_qid: str | None = None
    ) -> tuple[bool, Charge | None]:
        """Whether ``row``'s ``product`` may be made now, and what making it will charge
        (None: nothing, no organisation or free). Not when ``org`` is short of it: the
        document owed for ``wait_qid`` (default: ``row``) then waits for credits
        (docs/credits.md)."""
        if not org or self.store.credit_terms.price(product) <= 0:
            return True, None
        if not await self.store.can_pay(org, product):
            if wait_qid != "":  # "": nothing to mark (a tracking addendum waits unmarked)
                await self._wait_for_credits(wait_qid or row["qid"], org, product)
            return False, None
        return True, Charge(org, product, row["qid"])

    async def _wait_for_credits(self, qid: str, org: str, product: Product) -> None:
        if await self.store.mark_waiting(qid, org):
            log.info("%s: %s waits for credits of organisation %s", qid, product, org)

    async def _removed_by_retention(self, qid: str) -> str | None:
        """Why the message ``qid`` is no longer in the archive when the retention policy
        removed it (README, "Retention"), else None (it was lost). An addendum made then
        states what happened without the message; the policy is no fault to report."""
        removed = content_removed_reason(await self.store.evidence_for(qid))
        if removed is not None:
            log.info("%s: content removed by retention; the addendum is made without it", qid)
        return removed

    async def _addendum_not_issued(self, qid: str, missing: SpoolFileMissing, about: str) -> None:
        await self.store.append_evidence(
            qid, "AddendumNotIssued", {"about": about, "reason": SPOOL_MISSING_TEXT}, time.time()
        )
        log.error("%s: addendum about %s not issued: %s", qid, about, missing)

    async def _content_lost(
        self,
        row: dict[str, Any],
        missing: SpoolFileMissing,
        addendum: dict[str, Any] | None = None,
    ) -> bool:
        """The certificate of a message whose spool file is gone, once the grace is over
        (or, given the late delivery report ``addendum``, the addendum about it).

        What it can honestly state comes from the database and the evidence log: who
        sent a message when, its SHA-256 and size as received, each recipient's outcome
        and the timeline. What it cannot: the content. So the certificate is signed and
        timestamped as any other, its evidence says why the content is missing
        (``message.content_unavailable``), it embeds no message.eml and states no
        subject or text (:mod:`certifier.document`), and ``certifica verify`` reports
        the content as not certified (:mod:`certifier.verify`). The mail carrying it
        says the same in plain words.
        """
        qid = row["qid"]
        if addendum is None:
            since = await missing_since(self.cfg, self.store, qid, missing)
            if time.time() < since + self.cfg.queue.missing_spool_grace:
                return False  # the next full scan comes back here
        elif not any(e.event == "SpoolFileMissing" for e in await self.store.evidence_for(qid)):
            # The archived copy is gone (retention, a disk fault, an operator): the claim
            # the addendum makes rests on an entry of the evidence log, as the
            # certificate's does, naming the file that was looked for.
            where = spool_name(missing)
            await self.store.append_evidence(qid, "SpoolFileMissing", {"file": where}, time.time())
            log.error("%s: archived copy missing (%s); the addendum states no content", qid, where)
        evidence = await build_evidence(self.cfg, self.store, row)
        evidence["message"]["content_unavailable"] = SPOOL_MISSING_TEXT
        if row["kind"] == "reception":
            detail = json.loads(row["reception"] or "{}")
            evidence.update(kind="reception", reception=reception_evidence(detail))
        cert_id = row["cert_id"]
        if addendum is not None:
            cert_id = addendum["cert_id"]
            evidence.update(late_bounce_addendum(row, addendum))
        pdf = await self._render(row, evidence, None)
        done_qid = addendum["qid"] if addendum is not None else qid
        if await self._certified_already(done_qid):
            return False
        kept = await asyncio.to_thread(write_once, self.certificates_dir / f"{cert_id}.pdf", pdf)
        pdf_sha = await self._record_verification(row, cert_id, kept, pdf, evidence)
        pdf = kept
        label = "Addendum" if addendum is not None else "Certificate"
        recipients = await self.store.recipients(qid)
        data = notices.build_content_lost(
            gateway_name=self._gateway_name(),
            from_address=self.cfg.gateway.certification_address,
            hostname=self.cfg.gateway.hostname,
            to=row["sender"],
            qid=qid,
            cert_id=cert_id,
            received_at=iso(row["created"]) or "",
            sha256=row["sha256"],
            size=row["size"],
            addendum_of=row["cert_id"] if addendum is not None else None,
            recipients=_outcomes_for_mail(recipients),
            pdf=pdf,
            reader=await self.reader_for(row["sender"]),
            verify_url=evidence["verification"]["url"],
            publicly_trusted=self.cfg.signing.publicly_trusted,
            outcome=str(outcome(evidence)),
        )
        issued = (
            f"{label}Issued",
            {"certificate_id": cert_id, "pdf_sha256": pdf_sha, "content": "unavailable"},
        )
        columns = certified_columns()
        mailed: str | None = "none"
        if row["sender"]:
            mailed = await self.queue_generated(
                label.lower(),
                row,
                data,
                columns,
                update_qid=done_qid,
                only_if=CERTIFICATE_OWED,
                evidence=issued,
                evidence_qid=qid,
            )
            if mailed is None:
                return False
        elif not await self.store.enqueue_generated(
            None,
            done_qid,
            columns,
            time.time(),
            only_if=CERTIFICATE_OWED,
            evidence=issued,
            evidence_qid=qid,
        ):
            return False
        cert_log.warning(
            "%s: %s=%s sha256=%s pdf_sha256=%s without the message (%s); mailed as %s",
            qid,
            label.lower(),
            cert_id,
            row["sha256"],
            pdf_sha,
            missing,
            mailed,
        )
        if addendum is not None:
            await asyncio.to_thread(self.spool.archive, done_qid)
        log.info("%s: removed", done_qid)
        return True

    async def _send_document(
        self,
        row: dict[str, Any],
        cert_id: str,
        pdf: bytes,
        raw: bytes,
        *,
        label: str,
        update_qid: str | None,
        evidence: dict[str, Any],
        done: dict[str, Any] | None = None,
        reported: tuple[int, int, float] | None = None,
        charge: Charge | None = None,
    ) -> bool:
        """Keep the signed PDF, record it, and mail it to the sender of ``row``; the
        message ``update_qid`` is done (with ``done`` columns set) in the same
        transaction as the mail is queued, with its ``charge``. False, with nothing done,
        when that message was certified already (this job ran twice) or its organisation
        has no longer the credits (the document then waits)."""
        qid = row["qid"]
        if update_qid and await self._certified_already(update_qid):
            return False
        # The first PDF written under this id is the certificate: a job made again after
        # a worker died mid-way mails that one, never a second signed PDF.
        kept = await asyncio.to_thread(write_once, self.certificates_dir / f"{cert_id}.pdf", pdf)
        pdf_sha = await self._record_verification(row, cert_id, kept, pdf, evidence)
        pdf = kept
        recipients = await self.store.recipients(qid)
        data = notices.build_certificate_mail(
            gateway_name=self._gateway_name(),
            from_address=self.cfg.gateway.certification_address,
            hostname=self.cfg.gateway.hostname,
            to=row["sender"],
            qid=qid,
            cert_id=cert_id,
            sha256=row["sha256"],
            recipients=_outcomes_for_mail(recipients, evidence),
            original=notices.original_headers(raw),
            pdf=pdf,
            label=label,
            reader=await self.reader_for(row["sender"]),
            verify_url=evidence["verification"]["url"],
            publicly_trusted=self.cfg.signing.publicly_trusted,
            outcome=str(outcome(evidence)),
        )
        event = "CertificateIssued" if label == "Certificate" else "AddendumIssued"
        issued = (event, {"certificate_id": cert_id, "pdf_sha256": pdf_sha})
        if update_qid:
            # The evidence entry, the message's state and the mail in one transaction,
            # on condition that no other job certified the message meanwhile.
            try:
                mailed = await self.queue_generated(
                    label.lower(),
                    row,
                    data,
                    certified_columns(**(done or {})),
                    update_qid=update_qid,
                    only_if=CERTIFICATE_OWED,
                    evidence=issued,
                    evidence_qid=qid,
                    charge=charge,
                )
            except InsufficientCredits as short:  # spent meanwhile by another document
                await self._wait_for_credits(update_qid, short.org, Product.ADDENDUM)
                return False
            if mailed is None:
                return False
        elif reported is not None:
            previous, last, at = reported
            try:
                mailed = await self.queue_generated(
                    label.lower(),
                    row,
                    data,
                    {"tracking_reported": max(previous, last)},
                    only_if={"tracking_reported": previous},
                    evidence=issued,
                    addendum_at=(previous, last, at),
                    charge=charge,
                )
            except InsufficientCredits:  # made again once credits are added
                return False
            if mailed is None:
                return False
        else:
            await self.store.append_evidence(qid, *issued, time.time())
            await self.queue_generated(label.lower(), row, data, {})
        cert_log.info(
            "%s: %s=%s sha256=%s pdf_sha256=%s", qid, label.lower(), cert_id, row["sha256"], pdf_sha
        )
        return True

    async def _addendum(self, dsn: dict[str, Any]) -> bool:
        """A signed addendum to a certificate already sent: a recipient bounced late."""
        parent = await self.store.message(dsn["parent_qid"])
        if parent is None:
            await self.store.mark(dsn["qid"], state="done", done_at=time.time())
            return False
        go, charge = await self._charge_or_wait(parent, parent["org"], Product.ADDENDUM, dsn["qid"])
        if not go:
            return True  # it waits for credits
        removed: str | None = None
        try:
            raw = await asyncio.to_thread(self.spool.read_any, parent["qid"])
        except SpoolFileMissing as missing:
            removed = await self._removed_by_retention(parent["qid"])
            if removed is None:
                return await self._content_lost(parent, missing, addendum=dsn)
            raw = b""  # the addendum is made without it, and says why
        evidence = await build_evidence(self.cfg, self.store, parent)
        evidence.update(late_bounce_addendum(parent, dsn))
        if removed is not None:
            evidence["message"]["content_unavailable"] = removed
        pdf = await self._render(parent, evidence, raw or None)
        if not await self._send_document(
            parent,
            dsn["cert_id"],
            pdf,
            raw,
            label="Addendum",
            update_qid=dsn["qid"],
            evidence=evidence,
            charge=charge,
        ):
            return False
        await asyncio.to_thread(self.spool.archive, dsn["qid"])
        log.info("%s: removed", dsn["qid"])
        return True

    def _gateway_name(self) -> str:
        return f"Certifica ({self.cfg.gateway.domain})"


def _posix(iso_time: object) -> float | None:
    """The POSIX time of an evidence time (ISO 8601, UTC, ``Z``); None if it is not one."""
    moment = as_datetime(iso_time) if isinstance(iso_time, str) else None
    return moment.timestamp() if moment is not None else None


def _outcomes_for_mail(
    recipients: list[dict[str, Any]], evidence: dict[str, Any] | None = None
) -> list[dict[str, str]]:
    """Each recipient's address, status, last reply and its time, as the sender's mail
    lists them; a phone's with its SMS outcome from ``evidence`` (docs/sms.md)."""
    sms = {
        r.get("address"): r["sms"].get("outcome")
        for r in (evidence or {}).get("recipients") or []
        if isinstance(r, dict) and isinstance(r.get("sms"), dict)
    }
    return [
        {
            "address": r["address"],
            "status": r["status"],
            "reply": notices.one_line(f"{r['reply_code'] or ''} {r['reply_text'] or ''}"),
            "at": iso(r["last_attempt"]) or "",
            **({"sms": str(sms[r["address"]])} if r["address"] in sms else {}),
        }
        for r in recipients
    ]


def _envelope_sender(row: dict[str, Any]) -> str:
    """Where reports about a message go: its MAIL FROM as received ('' for the null one)."""
    return str(row["sender"] if row.get("envelope_from") is None else row["envelope_from"])


def _recipient_status(
    r: dict[str, Any], action: dsn.Action, retry_until: float | None = None
) -> dsn.RecipientStatus:
    return dsn.recipient_status(
        address=r["address"],
        action=action,
        reply_code=r["reply_code"],
        reply_enhanced=r["reply_enhanced"],
        reply_text=r["reply_text"],
        mx_host=r["mx_host"],
        last_attempt=r["last_attempt"],
        orcpt=r["orcpt"],
        will_retry_until=retry_until,
    )
