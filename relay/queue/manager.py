"""The queue manager: the workers that deliver, notify and certify (Postfix's qmgr + smtp).

The SMTP side only accepts; this module does everything after the 250. It scans the
store for work, so a restart resumes whatever was in flight: recipients still queued
or deferred are tried again, notices and certificates still pending are made. Each
delivery attempt ends every recipient in one of the named outcomes of
:mod:`relay.delivery.client`; deferred ones get an exponential backoff (RFC 5321 §4.5.4.1)
until the queue lifetime ends, then fail as "retries exhausted". The sender of plain
(uncertified) mail is told of failures, and of delays and successes when asked, by a
delivery status notification (:mod:`relay.certify.dsn`); certified mail has its certificate.

Log lines follow Postfix's, queue id first, so "what happened to X?" is one grep.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from certifier import evidence as evidence_log
from relay.certify import dsn, notices
from relay.certify.checkpoints import evidence_log_section
from relay.cleanup.bounces import make_return_path
from relay.config import Config
from relay.delivery import outbound
from relay.delivery.client import (
    DEFERRED,
    DELIVERED,
    FAILED,
    AttemptResult,
    Deliverer,
    RecipientResult,
)
from relay.delivery.dkim_keys import DkimKeyring, UnsignableMessage, sign
from relay.logs import log_failure, printable
from relay.queue.spool import Spool, SpoolFileMissing, write_durably
from relay.queue.store import NewMessage, Outcome, Store
from relay.web.tracking import inject_copy, tracked_for

log = logging.getLogger("certifica/qmgr")
smtp_log = logging.getLogger("certifica/smtp")
cert_log = logging.getLogger("certifica/certifier")

_LOG_STATUS = {DELIVERED: "sent", DEFERRED: "deferred", FAILED: "bounced"}
FULL_SCAN = 5.0
"""Seconds between looks at every active message for one that became finished."""
MAX_DOCUMENT_TASKS = 256
"""Notices, certificates and addenda started and not yet done, at most."""
KEPT_HEADERS = 65536
"""Bytes of a plain message's header section kept once it leaves the queue, for a late
report passed on to its sender."""
_SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-:\[\]]")


class Certifier(Protocol):
    """Turns evidence and the original message into a signed PDF, off the event loop."""

    async def certify(self, evidence: dict[str, Any], eml: bytes | None) -> bytes:
        """``eml`` None: the message is lost; the evidence says why (no message.eml)."""
        ...


def new_queue_id() -> str:
    """A Postfix-like queue id: 12 hex digits, unique enough and grep-friendly."""
    return secrets.token_hex(6).upper()


def new_certificate_id() -> str:
    return "CF-" + secrets.token_hex(8).upper()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def backoff(cfg: Config, attempts: int) -> float:
    """Seconds until the next try after ``attempts`` tries (Postfix: 5 min doubling to ~67)."""
    return float(min(cfg.queue.max_retry, cfg.queue.first_retry * (2 ** max(0, attempts - 1))))


def received_header(row: dict[str, Any], hostname: str, recipients: list[str]) -> bytes:
    """The Received trace field this gateway adds (RFC 5321 §4.4), stable across retries."""
    helo = _SAFE_HELO.sub("", str(row.get("client_helo") or "unknown"))[:64] or "unknown"
    ip = _SAFE_HELO.sub("", str(row.get("client_ip") or "unknown"))[:64]
    proto = "ESMTPSA" if row.get("auth_user") else "ESMTP"
    if row.get("in_tls_version"):
        proto = proto.replace("ESMTP", "ESMTPS") if not proto.startswith("ESMTPS") else proto
    for_clause = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    date = email.utils.formatdate(row["created"], usegmt=True)
    return (
        f"Received: from {helo} ([{ip}])\r\n\tby {hostname} (Certifica) with {proto} "
        f"id {row['qid']}{for_clause};\r\n\t{date}\r\n"
    ).encode("ascii", "replace")


class QueueManager:
    def __init__(
        self,
        cfg: Config,
        store: Store,
        spool: Spool,
        deliverer: Deliverer,
        certifier: Certifier,
        certificates_dir: Path,
        verp_key: bytes = b"",
        tracking_key: bytes = b"",
        offload: Any = None,
        dkim: DkimKeyring | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.deliverer = deliverer
        self.certifier = certifier
        self.certificates_dir = certificates_dir
        self.verp_key = verp_key
        self.tracking_key = tracking_key
        # Runs a plain function in the worker processes (MIME rewriting is CPU work).
        self.offload = offload
        self.dkim = dkim
        self.certificates_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._wake = asyncio.Event()
        self._delivering = 0
        self._by_domain: dict[str, int] = {}  # attempts spawned and not yet ended, per domain
        self._unreachable: set[str] = set()  # no server of the domain answered, last time
        self._maybe_finished: set[str] = set()  # messages whose last attempt just ended
        self._next_full_scan = 0.0
        self._per_destination: dict[str, asyncio.Semaphore] = {}
        self._certifying: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliveries = asyncio.Semaphore(cfg.delivery.concurrency)
        # Documents in the making at once. Rendering and signing (~13 ms) run in the
        # workers; most of a document's time is its fsyncs and transactions, which
        # overlap well, so more are in flight than there are workers.
        self._certificates = asyncio.Semaphore(12)
        self._stopping = False

    def wake(self, qid: str | None = None) -> None:
        """Scan now; ``qid``: a message that may be finished already (it has no
        recipients to wait for, or one of them just reached a final state)."""
        if qid is not None:
            self._maybe_finished.add(qid)
        self._wake.set()

    async def run(self) -> None:
        """Scan for work until stopped; woken early whenever a message is accepted."""
        while not self._stopping:
            try:
                await self.scan()
            except Exception:  # keep the queue running; the error is for the operator's log
                log_failure(log, "queue scan failed; will retry")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.cfg.queue.scan_interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def scan(self) -> None:
        now = time.time()
        # Take only as much as the workers can start soon: a queue of 100k messages
        # stays in the database, not in memory.
        room = self.cfg.delivery.concurrency * 4 - self._delivering
        if room > 0:
            d = self.cfg.delivery
            # Longer than the longest attempt can take (every hop connecting, then stalling
            # on each command), so a lease never ends while its attempt still runs.
            per_hop = d.connect_timeout + d.greeting_timeout + 4 * d.command_timeout
            lease = now + 5 * (per_hop + d.data_init_timeout + d.data_timeout)
            # A domain never has more attempts under way than its limit, so none waits on
            # a busy or dead destination while holding the room the others need; a domain
            # whose servers do not answer at all gets one attempt at a time until one does
            # (Postfix's destination concurrency feedback).
            slots = {
                d: self._allowance(d) - self._by_domain.get(d, 0)
                for d in {*self._by_domain, *self._unreachable}
            }
            due = await self.store.take_due(
                now, room * 4, lease, slots, self.cfg.delivery.per_destination
            )
            groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
            for row in due:
                # A tracked copy is made for each recipient: one transaction each.
                alone = self._tracked(row) and row["id"] or 0
                groups.setdefault((row["qid"], row["domain"], alone), []).append(row)
            later: list[int] = []
            for rows in groups.values():
                domain = rows[0]["domain"]
                if self._by_domain.get(domain, 0) >= self._allowance(domain):
                    later.extend(r["id"] for r in rows)  # for a later scan
                    continue
                self._delivering += 1
                self._by_domain[domain] = self._by_domain.get(domain, 0) + 1
                self._spawn(self._deliver(rows))
            if later:
                await self.store.release(later)
        if self.cfg.tracking.enabled:
            for qid in await self.store.addenda_due(now, self.cfg.tracking.addendum_interval):
                if qid + ":addendum" not in self._certifying:
                    self._certifying.add(qid + ":addendum")
                    self._spawn(self._tracking_addendum(qid))
        # Messages become finished when an attempt ends (their qids are noted then); every
        # FULL_SCAN seconds, and at start, all active ones are looked at too, for what
        # changed elsewhere (a withdrawal by the operator's command, a late DSN).
        candidates: set[str] | None = self._maybe_finished
        if now >= self._next_full_scan:
            candidates = None
            self._next_full_scan = now + FULL_SCAN
        self._maybe_finished = set()
        work = await self.store.pending_work(candidates)
        # A backlog of 100k notices or certificates stays in the database: only so many
        # tasks wait for the document slots at once; the rest is found again later.
        for qid in work["notices"]:
            if len(self._certifying) >= MAX_DOCUMENT_TASKS:
                break
            if qid + ":notice" not in self._certifying:
                self._certifying.add(qid + ":notice")
                self._spawn(self._notice(qid))
        reports = list(work["reports"])
        warn = self.cfg.queue.delay_warning
        if warn > 0 and candidates is None:  # delay reports: looked for on the full scans
            reports += await self.store.delays_due(now - warn)
        for qid in reports:
            if (
                len(self._certifying) < MAX_DOCUMENT_TASKS
                and qid + ":report" not in self._certifying
            ):
                self._certifying.add(qid + ":report")
                self._spawn(self._report(qid))
        for qid in work["finished"]:
            if len(self._certifying) >= MAX_DOCUMENT_TASKS:
                self._maybe_finished.add(qid)
            elif qid not in self._certifying:
                self._certifying.add(qid)
                self._spawn(self._finish(qid))

    # -- delivery ------------------------------------------------------------------
    async def _deliver(self, rows: list[dict[str, Any]]) -> None:
        first = rows[0]
        qid = first["qid"]
        try:
            # The destination's slot first, then a global one: a slow or dead destination
            # waits on its own limit without holding global slots the others need.
            async with self._destination(first["domain"]), self._deliveries:
                try:
                    raw = await asyncio.to_thread(self.spool.read, qid)
                except SpoolFileMissing as missing:
                    result = await self._spool_missing_result(rows, missing)
                    await self._record(rows, result, time.time(), feedback=False)
                    return
                addresses = [r["address"] for r in rows]
                sender = first["sender"]
                if self._tracked(first):
                    copy = await self.offload(
                        inject_copy,
                        raw,
                        self.cfg.tracking.public_url,
                        self.tracking_key,
                        qid,
                        first["id"],
                        self.cfg.tracking.rewrite_text,
                    )
                    # The URLs are stored before the copy leaves: a click can only ever be
                    # sent where the original message pointed.
                    tracked = copy.message != raw
                    notes = copy.notes or (
                        () if tracked else ("it had no link or HTML part to track",)
                    )
                    await self.store.tracking_copy(qid, [first["id"]], copy.links, tracked, notes)
                    raw = copy.message
                elif first.get("tracking") and first["kind"] == "mail":
                    why = (
                        f"{first['domain']} is covered by tracking.never_domains"
                        if self.cfg.tracking.enabled
                        else "tracking was turned off on the gateway"
                    )
                    ids = [r["id"] for r in rows]
                    await self.store.tracking_copy(qid, ids, (), False, (why,))
                if first["kind"] in ("mail", "postmaster"):
                    # Late bounces come back to us (VERP, MAC-tagged), not to the sender.
                    sender = make_return_path(
                        qid, self.cfg.gateway.domain, self.verp_key, self.cfg.gateway.bounce_prefix
                    )
                raw = await self._outgoing(first, addresses, raw)
                started = time.time()
                result = await self.deliverer.attempt(
                    first["domain"], sender, addresses, raw, qid=qid
                )
                await self._record(rows, result, started)
        except Exception:
            log_failure(log, "%s: delivery attempt failed unexpectedly; will retry", qid)
            # Counted as a deferral: backoff, and a certified failure once the queue
            # lifetime is over, so a fault (a lost spool file) never loops or lingers.
            try:
                await self._record(rows, _internal_failure(rows), time.time(), feedback=False)
            except Exception:
                log_failure(log, "%s: could not record the failed attempt", qid)
                try:
                    await self.store.postpone(
                        [r["id"] for r in rows], time.time() + self.cfg.queue.first_retry
                    )
                except Exception:
                    log_failure(log, "%s: could not postpone the failed attempt", qid)
        finally:
            self._delivering -= 1
            domain = first["domain"]
            self._by_domain[domain] -= 1
            if not self._by_domain[domain]:
                del self._by_domain[domain]
            self.wake()

    async def _outgoing(self, row: dict[str, Any], addresses: list[str], raw: bytes) -> bytes:
        """The copy that leaves: trace and copy headers, From handling, DKIM signatures
        (:mod:`relay.delivery.outbound`). Mail the gateway wrote itself is only signed. Mail for
        postmaster@ and abuse@ (:mod:`relay.cleanup.postmaster`) came from anyone: it gets the
        trace and ``X-Original-To`` (Postfix's name for the address it was sent to), its
        From is never rewritten, and only the gateway's own key signs it, never a key a
        customer delegated."""
        gateway_domain = self.cfg.gateway.domain
        if row["kind"] == "postmaster":
            head = received_header(row, self.cfg.gateway.hostname, addresses)
            for address in json.loads(row.get("original_to") or "[]"):
                head += f"X-Original-To: {notices.one_line(str(address), 320)}\r\n".encode(
                    "ascii", "replace"
                )
            raw = head + raw
        if row["kind"] == "mail":
            from_address = row.get("header_from") or row.get("auth_user") or row["sender"]
            from_domain = str(from_address).rpartition("@")[2].lower()
        else:
            from_domain = gateway_domain
        keys = []
        if self.dkim is not None:
            keys = await asyncio.to_thread(
                outbound.signing_keys, self.dkim, from_domain, gateway_domain
            )
        if row["kind"] == "mail":
            if self.cfg.dkim.from_handling == "rewrite" and outbound.needs_rewrite(
                keys, from_domain
            ):
                raw = outbound.rewrite_from(
                    raw,
                    outbound.display_name(raw) or str(from_address),
                    self.cfg.gateway.certification_address,
                    "Certifica",
                )
            head = received_header(row, self.cfg.gateway.hostname, addresses)
            if row.get("method") == "submission":
                head += outbound.submission_fields(
                    raw, row["qid"], row["created"], self.cfg.gateway.hostname
                )
            if row.get("method") == "mx" and row.get("cert_id"):
                head += outbound.certified_copy_header(str(from_address), row["cert_id"])
            raw = head + raw
        if not keys:
            return raw
        try:
            return await asyncio.to_thread(sign, raw, keys)
        except UnsignableMessage as why:  # the sender's header section: not a fault of ours
            log.warning("%s: not DKIM-signed: %s (RFC 5322 2.2); sent as received", row["qid"], why)
            return raw
        except Exception:  # a corrupt key file: the mail still goes, unsigned, and says why
            log_failure(log, "%s: DKIM signing failed; sent unsigned", row["qid"])
            return raw

    def _allowance(self, domain: str) -> int:
        """Attempts to ``domain`` allowed at once: one while it looks dead."""
        return 1 if domain in self._unreachable else self.cfg.delivery.per_destination

    def _tracked(self, row: dict[str, Any]) -> bool:
        return bool(
            row.get("tracking")
            and row["kind"] == "mail"
            and self.cfg.tracking.enabled
            and tracked_for(self.cfg, row["domain"])
        )

    async def _tracking_addendum(self, qid: str) -> None:
        """A signed addendum listing a message's opens and clicks, to its sender."""
        try:
            row = await self.store.message(qid)
            if row is None or not row["cert_id"]:
                return
            async with self._certificates:
                now = time.time()
                try:
                    raw = await asyncio.to_thread(self.spool.read_any, qid)
                except SpoolFileMissing as missing:
                    # No addendum can embed the message: recorded once, not retried.
                    await self._addendum_not_issued(qid, missing, "opens and clicks")
                    events = await self.store.tracking_events(qid, row["tracking_reported"])
                    last = max((e["id"] for e in events), default=row["tracking_reported"])
                    await self.store.mark_reported(qid, last, now)
                    return
                # Only what the sender has not had yet, in the certificate or an addendum.
                evidence = await self.build_evidence(row, tracking_after=row["tracking_reported"])
                cert_id = new_certificate_id()
                evidence.update(kind="addendum", certificate_id=cert_id, addendum_of=row["cert_id"])
                pdf = await self.certifier.certify(evidence, raw)
                await self._send_document(row, cert_id, pdf, raw, label="Addendum", update_qid=None)
                last = evidence["tracking"]["last_event_id"] if evidence["tracking"] else 0
                await self.store.mark_reported(qid, last, now)
            self.wake()
        except Exception:
            log_failure(log, "%s: could not make the tracking addendum; will retry", qid)
        finally:
            self._certifying.discard(qid + ":addendum")

    def _destination(self, domain: str) -> asyncio.Semaphore:
        route = self.deliverer.router.fixed_route(domain)
        key = str(route) if route is not None else domain
        if key not in self._per_destination:
            self._per_destination[key] = asyncio.Semaphore(self.cfg.delivery.per_destination)
        return self._per_destination[key]

    async def _record(
        self,
        rows: list[dict[str, Any]],
        result: AttemptResult,
        started: float,
        feedback: bool = True,
    ) -> None:
        now = time.time()
        qid = rows[0]["qid"]
        hop = result.hop
        domain = rows[0]["domain"]
        if not feedback:
            pass  # the attempt was never made: it says nothing about the destination
        elif all(r.code is None and r.status == DEFERRED for r in result.results):
            self._unreachable.add(domain)  # no reply at all: connection-level trouble
        else:
            self._unreachable.discard(domain)
        outcomes: list[Outcome] = []
        for row, res in zip(rows, result.results, strict=True):
            status, text, next_attempt = res.status, res.text, None
            if status == DEFERRED:
                if now >= row["expires"]:
                    status = FAILED
                    text = f"retries exhausted after {row['attempts'] + 1} attempts; last: {text}"
                else:
                    next_attempt = now + backoff(self.cfg, row["attempts"] + 1)
            outcomes.append(
                Outcome(
                    recipient_id=row["id"],
                    status=status,
                    reply_code=res.code,
                    reply_enhanced=res.enhanced,
                    reply_text=text,
                    remote_qid=res.remote_qid,
                    mx_host=hop.host if hop else None,
                    ip=hop.ip if hop else None,
                    port=hop.port if hop else None,
                    tls_version=result.tls_version,
                    tls_cipher=result.tls_cipher,
                    delivered_sha256=result.delivered_sha256 if status == DELIVERED else None,
                    note=res.note,
                    next_attempt=next_attempt,
                )
            )
            relay = f"{hop.host}[{hop.ip}]:{hop.port}" if hop else "none"
            dsn = res.enhanced or (
                f"{res.code // 100}.0.0"
                if res.code
                else ("4.4.1" if status == DEFERRED else "5.4.4")
            )
            reply = (
                f"{res.code} {res.enhanced + ' ' if res.enhanced else ''}{text}"
                if res.code
                else text
            )
            # delays=a/b/c/d as Postfix: a = before the queue manager took it (arrival to
            # due, the backoff included), b = in the queue manager (due, waiting for a
            # delivery slot), c = connection setup (DNS, connect, greeting, EHLO, TLS),
            # d = the transaction itself.
            due_at = max(row["created"], row["next_attempt"])
            c = result.setup_seconds or 0.0
            delays = (
                f"{max(0.0, due_at - row['created']):.2f}/{max(0.0, started - due_at):.2f}/"
                f"{c:.2f}/{max(0.0, now - started - c):.2f}"
            )
            smtp_log.info(
                "%s: to=<%s>, relay=%s, delay=%.2f, delays=%s, dsn=%s, status=%s (%s)",
                qid,
                row["address"],
                relay,
                now - row["created"],  # Postfix's delay: total time since arrival
                delays,
                dsn,
                _LOG_STATUS[status],
                notices.one_line(reply, 400),
            )
        await self.store.record(qid, outcomes, now)
        self._maybe_finished.add(qid)
        if rows[0]["kind"] == "postmaster":
            for row, out in zip(rows, outcomes, strict=True):
                if out.status == FAILED:
                    # Never told to its sender (relay/cleanup/postmaster.py): the operator's log is
                    # where it shows, and the message stays in the spool archive.
                    log.error(
                        "%s: postmaster mail could not be delivered to <%s> (%s); it is kept "
                        "in the spool archive: certifica queue show %s",
                        qid,
                        row["address"],
                        notices.one_line(f"{out.reply_code or ''} {out.reply_text}", 300),
                        qid,
                    )

    # -- notices and certificates ----------------------------------------------------
    async def _queue_generated(
        self,
        kind: str,
        parent: dict[str, Any],
        data: bytes,
        parent_columns: dict[str, Any],
        update_qid: str | None = None,
        recipient: str | None = None,
    ) -> str:
        """Queue a mail the gateway wrote, to the sender of ``parent`` (or ``recipient``);
        in the same transaction apply ``parent_columns`` to ``update_qid`` (default: the
        parent)."""
        qid = new_queue_id()
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
        await self.store.enqueue_generated(
            msg, update_qid or parent["qid"], parent_columns, time.time()
        )
        log.info("%s: from=<>, size=%d, nrcpt=1, %s for %s", qid, len(data), kind, parent["qid"])
        return qid

    async def _notice(self, qid: str) -> None:
        try:
            row = await self.store.message(qid)
            if row is None or row["notice_state"] != "pending":
                return
            if not row["sender"]:  # never a notice to the null sender
                await self.store.mark(qid, notice_state="done")
                return
            try:
                raw = await asyncio.to_thread(self.spool.read, qid)
            except SpoolFileMissing as missing:
                # No notice about content the gateway cannot read; the sender hears of
                # the message in the mail that replaces its certificate.
                await self._missing_since(qid, missing)
                await self.store.append_evidence(
                    qid, "NoticeWithheld", {"reason": SPOOL_MISSING_TEXT}, time.time()
                )
                await self.store.mark(qid, notice_state="done")
                self.wake(qid)
                return
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
                self.wake(qid)
                return
            notice_qid = await self._queue_generated("notice", row, data, {"notice_state": "done"})
            await self.store.append_evidence(
                qid, "NoticeSent", {"notice_qid": notice_qid}, time.time()
            )
            self.wake(qid)  # its certificate waited for this notice
        except Exception:
            log_failure(log, "%s: could not make the processing notice; will retry", qid)
        finally:
            self._certifying.discard(qid + ":notice")

    async def _finish(self, qid: str) -> None:
        try:
            row = await self.store.message(qid)
            if row is None or row["state"] != "active":
                return
            if row["kind"] == "mail" and row["certified"] and row["cert_state"] == "pending":
                if row["notice_state"] == "pending":
                    return  # the notice goes first; the next scan comes back here
                async with self._certificates:
                    await self._certify(row)
            elif row["kind"] == "reception" and row["cert_state"] == "pending":
                async with self._certificates:
                    await self._certify_reception(row)
            elif row["kind"] == "dsn":
                if row["certified"] and row["cert_state"] == "pending":
                    async with self._certificates:
                        await self._addendum(row)
                else:
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
        except Exception:
            log_failure(log, "%s: could not finish the message; will retry", qid)
        finally:
            self._certifying.discard(qid)

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
    async def _report(self, qid: str) -> None:
        """The report the sender of plain mail is due: recipients that failed (or, with
        NOTIFY=SUCCESS, were relayed) since the last report, and the one "still trying"
        report after ``[queue] delay_warning``. Queued and recorded in one transaction,
        before the message can be closed, so a restart sends it once."""
        try:
            row = await self.store.message(qid)
            if row is None or row["state"] != "active":
                return
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
                self.wake(qid)
                return
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
                self.wake(qid)
                return
            data = self._build_report(row, sender, entries, raw)
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
                return
            log.info("%s: sender %s: %s", qid, dsn.notification_name(entries), report_qid)
            log.info("%s: from=<>, size=%d, nrcpt=1, report for %s", report_qid, len(data), qid)
            self.wake(qid)
        except Exception:
            log_failure(log, "%s: could not make the delivery status notification; will retry", qid)
        finally:
            self._certifying.discard(qid + ":report")

    def _build_report(
        self,
        row: dict[str, Any],
        sender: str,
        entries: list[dsn.RecipientStatus],
        original: bytes,
        reported_by: str | None = None,
        headers_only: bool = False,
    ) -> bytes:
        """``headers_only``: ``original`` is only the header section (the message left the
        queue), attached as ``text/rfc822-headers`` whatever RET= asked."""
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
            )
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
            parent, sender, entries, original, reporting or "a remote server", headers_only
        )
        report_qid = await self._queue_generated(
            "report",
            parent,
            data,
            {"state": "done", "done_at": now},
            update_qid=qid,
            recipient=sender,
        )
        log.info("%s: sender %s: %s", parent["qid"], dsn.notification_name(entries), report_qid)

    async def _certify(self, row: dict[str, Any]) -> None:
        qid = row["qid"]
        try:
            raw = await asyncio.to_thread(self.spool.read, qid)
        except SpoolFileMissing as missing:
            await self._content_lost(row, missing)
            return
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            # The spool no longer holds what was received: never certify something else.
            log.error(
                "%s: spool file does not match the received hash; certificate withheld, "
                "message put on hold for the operator",
                qid,
            )
            await self.store.mark(qid, state="held")
            return
        evidence = await self.build_evidence(row)
        pdf = await self.certifier.certify(evidence, raw)
        reported = evidence["tracking"]["last_event_id"] if evidence["tracking"] else 0
        await self._send_document(
            row,
            row["cert_id"],
            pdf,
            raw,
            label="Certificate",
            update_qid=qid,
            done={"tracking_reported": reported},
        )
        await asyncio.to_thread(self.spool.archive, qid)
        log.info("%s: removed", qid)
        self.wake()

    async def _certify_reception(self, row: dict[str, Any]) -> None:
        """The reception certificate to the owner and, when decided at arrival (and still
        within the per-sender interval), the same PDF to the sender as proof of receipt."""
        qid = row["qid"]
        try:
            raw = await asyncio.to_thread(self.spool.read, qid)
        except SpoolFileMissing as missing:
            await self._content_lost(row, missing)
            return
        if hashlib.sha256(raw).hexdigest() != row["sha256"]:
            log.error("%s: spool file does not match the received hash; held", qid)
            await self.store.mark(qid, state="held")
            return
        detail = json.loads(row["reception"] or "{}")
        to = (detail.get("receipt") or {}).get("to")
        if to and not await self.store.claim_receipt(
            row["sender"], to, time.time(), self.cfg.reception.ack_interval
        ):
            detail["receipt"] = {
                "to": None,
                "why": "a proof of receipt already went to this sender within "
                f"{self.cfg.reception.ack_interval:.0f} s (RFC 3834: at most one per interval)",
            }
            to = None
        evidence = await self.build_evidence(row)
        evidence.update(kind="reception", reception=_reception_evidence(detail))
        pdf = await self.certifier.certify(evidence, raw)
        path = self.certificates_dir / f"{row['cert_id']}.pdf"
        await asyncio.to_thread(write_durably, path, pdf)
        pdf_sha = hashlib.sha256(pdf).hexdigest()
        original = notices.original_headers(raw)

        def mail(receipt: bool, address: str) -> bytes:
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
            )

        await self.store.append_evidence(
            qid, "CertificateIssued", {"certificate_id": row["cert_id"], "pdf_sha256": pdf_sha},
            time.time(),
        )  # fmt: skip
        if to:
            receipt_qid = await self._queue_generated(
                "receipt", row, mail(True, to), {}, recipient=to
            )
            await self.store.append_evidence(
                qid, "ReceiptSent", {"to": to, "receipt_qid": receipt_qid}, time.time()
            )
        await self._queue_generated(
            "certificate",
            row,
            mail(False, row["sender"]),
            {"cert_state": "done", "state": "done", "done_at": time.time()},
        )
        cert_log.info(
            "%s: reception certificate=%s owner=<%s> sha256=%s pdf_sha256=%s receipt=%s",
            qid, row["cert_id"], row["sender"], row["sha256"], pdf_sha, to or "none",
        )  # fmt: skip
        await asyncio.to_thread(self.spool.archive, qid)
        log.info("%s: removed", qid)
        self.wake()

    # -- a spool file that is gone ----------------------------------------------------
    async def _missing_since(self, qid: str, missing: SpoolFileMissing) -> float:
        """When the spool file of ``qid`` was first found missing. The first time is an
        evidence event (``SpoolFileMissing``), so a restart does not start the grace
        again, and the one error line the operator gets about it."""
        for entry in await self.store.evidence_for(qid):
            if entry.event == "SpoolFileMissing":
                return entry.time
        now = time.time()
        # The file as the spool names it; its full path is for the operator's log only.
        where = f"spool/{missing.path.parent.name}/{missing.path.name}"
        await self.store.append_evidence(qid, "SpoolFileMissing", {"file": where}, now)
        log.error(
            "%s: spool file missing (%s): the gateway's copy of the message is gone; "
            "it fails after queue.missing_spool_grace (%.0f s) unless the file is restored",
            qid,
            missing.path,
            self.cfg.queue.missing_spool_grace,
        )
        return now

    async def _spool_missing_result(
        self, rows: list[dict[str, Any]], missing: SpoolFileMissing
    ) -> AttemptResult:
        """A deferral of every recipient while the grace lasts, a failure after it."""
        since = await self._missing_since(rows[0]["qid"], missing)
        final = time.time() >= since + self.cfg.queue.missing_spool_grace
        text = SPOOL_MISSING_TEXT + (
            "; not delivered"
            if final
            else f"; it fails after {self.cfg.queue.missing_spool_grace:.0f} s unless restored"
        )
        status, enhanced = (FAILED, "5.3.0") if final else (DEFERRED, "4.3.0")
        return AttemptResult(
            tuple(RecipientResult(r["address"], status, None, enhanced, text) for r in rows),
            None,
            None,
            None,
            None,
        )

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
    ) -> None:
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
            since = await self._missing_since(qid, missing)
            if time.time() < since + self.cfg.queue.missing_spool_grace:
                return  # the next full scan comes back here
        elif not any(e.event == "SpoolFileMissing" for e in await self.store.evidence_for(qid)):
            # The archived copy is gone (retention, a disk fault, an operator): the claim
            # the addendum makes rests on an entry of the evidence log, as the
            # certificate's does, naming the file that was looked for.
            where = f"spool/{missing.path.parent.name}/{missing.path.name}"
            await self.store.append_evidence(qid, "SpoolFileMissing", {"file": where}, time.time())
            log.error("%s: archived copy missing (%s); the addendum states no content", qid, where)
        evidence = await self.build_evidence(row)
        evidence["message"]["content_unavailable"] = SPOOL_MISSING_TEXT
        if row["kind"] == "reception":
            detail = json.loads(row["reception"] or "{}")
            evidence.update(kind="reception", reception=_reception_evidence(detail))
        cert_id = row["cert_id"]
        if addendum is not None:
            cert_id = addendum["cert_id"]
            evidence.update(_late_bounce_addendum(row, addendum))
        pdf = await self.certifier.certify(evidence, None)
        await asyncio.to_thread(write_durably, self.certificates_dir / f"{cert_id}.pdf", pdf)
        pdf_sha = hashlib.sha256(pdf).hexdigest()
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
        )
        await self.store.append_evidence(
            qid,
            f"{label}Issued",
            {"certificate_id": cert_id, "pdf_sha256": pdf_sha, "content": "unavailable"},
            time.time(),
        )
        done_qid = addendum["qid"] if addendum is not None else qid
        columns = {"cert_state": "done", "state": "done", "done_at": time.time()}
        if row["sender"]:
            mailed = await self._queue_generated(
                label.lower(), row, data, columns, update_qid=done_qid
            )
        else:
            await self.store.mark(done_qid, **columns)
            mailed = "none"
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
        self.wake()

    async def _send_document(
        self,
        row: dict[str, Any],
        cert_id: str,
        pdf: bytes,
        raw: bytes,
        *,
        label: str,
        update_qid: str | None,
        done: dict[str, Any] | None = None,
    ) -> None:
        """Keep the signed PDF, record it, and mail it to the sender of ``row``; the
        message ``update_qid`` is done (with ``done`` columns set) in the same
        transaction as the mail is queued."""
        qid = row["qid"]
        path = self.certificates_dir / f"{cert_id}.pdf"
        await asyncio.to_thread(write_durably, path, pdf)
        pdf_sha = hashlib.sha256(pdf).hexdigest()
        recipients = await self.store.recipients(qid)
        data = notices.build_certificate_mail(
            gateway_name=self._gateway_name(),
            from_address=self.cfg.gateway.certification_address,
            hostname=self.cfg.gateway.hostname,
            to=row["sender"],
            qid=qid,
            cert_id=cert_id,
            sha256=row["sha256"],
            recipients=_outcomes_for_mail(recipients),
            original=notices.original_headers(raw),
            pdf=pdf,
            label=label,
        )
        event = "CertificateIssued" if label == "Certificate" else "AddendumIssued"
        await self.store.append_evidence(
            qid, event, {"certificate_id": cert_id, "pdf_sha256": pdf_sha}, time.time()
        )
        await self._queue_generated(
            label.lower(),
            row,
            data,
            {"cert_state": "done", "state": "done", "done_at": time.time(), **(done or {})}
            if update_qid
            else {},
            update_qid=update_qid,
        )
        cert_log.info(
            "%s: %s=%s sha256=%s pdf_sha256=%s", qid, label.lower(), cert_id, row["sha256"], pdf_sha
        )

    async def _addendum(self, dsn: dict[str, Any]) -> None:
        """A signed addendum to a certificate already sent: a recipient bounced late."""
        parent = await self.store.message(dsn["parent_qid"])
        if parent is None:
            await self.store.mark(dsn["qid"], state="done", done_at=time.time())
            return
        try:
            raw = await asyncio.to_thread(self.spool.read_any, parent["qid"])
        except SpoolFileMissing as missing:
            await self._content_lost(parent, missing, addendum=dsn)
            return
        evidence = await self.build_evidence(parent)
        evidence.update(_late_bounce_addendum(parent, dsn))
        pdf = await self.certifier.certify(evidence, raw)
        await self._send_document(
            parent, dsn["cert_id"], pdf, raw, label="Addendum", update_qid=dsn["qid"]
        )
        await asyncio.to_thread(self.spool.archive, dsn["qid"])
        log.info("%s: removed", dsn["qid"])
        self.wake()

    async def build_evidence(self, row: dict[str, Any], tracking_after: int = 0) -> dict[str, Any]:
        """Everything the certificate states, as JSON-ready data (``evidence.json``);
        opens and clicks only after event ``tracking_after`` (those are in an earlier
        document)."""
        qid = row["qid"]
        recipients = await self.store.recipients(qid)
        entries = await self.store.evidence_for(qid)
        summary = row.get("summary")
        return {
            "format": "certifica-evidence/1",
            "kind": "sending",
            "certificate_id": row["cert_id"],
            "queue_id": qid,
            "issued_at": iso(time.time()),
            "gateway": {
                "hostname": self.cfg.gateway.hostname,
                "domain": self.cfg.gateway.domain,
                "software": f"Certifica {_version()}",
            },
            "sender": {
                "envelope_from": row["sender"]
                if row.get("envelope_from") is None
                else row["envelope_from"],
                "header_from": None,
                "authentication": json.loads(row["authentication"])
                if row.get("authentication")
                else None,
                "authenticated_user": row["auth_user"],
                "client_ip": row["client_ip"],
                "client_helo": row["client_helo"],
                "tls": {"version": row["tls_version"], "cipher": row["tls_cipher"]}
                if row["tls_version"]
                else None,
                "method": row["method"],
            },
            "message": {
                "sha256": row["sha256"],
                "size": row["size"],
                "summary_pending": summary is None,
                # Header fields the gateway added on the way out (RFC 6409 §8): the
                # received hash is of the message without them, the delivered one with.
                "added_fields": next(
                    (
                        list(e.detail.get("added_fields") or [])
                        for e in entries
                        if e.event == "SubmissionAcceptance"
                    ),
                    [],
                ),
            },
            "recipients": [
                {
                    "address": r["address"],
                    "status": r["status"],
                    "time": iso(r["last_attempt"]),
                    "mx_host": r["mx_host"],
                    "ip": r["ip"],
                    "port": r["port"],
                    "reply": {
                        "code": r["reply_code"],
                        "enhanced": r["reply_enhanced"],
                        "text": r["reply_text"],
                    },
                    "remote_qid": r["remote_qid"],
                    "tls": {"version": r["tls_version"], "cipher": r["tls_cipher"]}
                    if r["tls_version"]
                    else None,
                    "attempts": r["attempts"],
                    "delivered_sha256": r["delivered_sha256"],
                    "note": r["note"],
                    "tracking": None
                    if r.get("tracked") is None
                    else {
                        "tracked": bool(r["tracked"]),
                        "notes": json.loads(r["tracking_notes"] or "[]"),
                    },
                }
                for r in recipients
            ],
            "tracking": await self._tracking_evidence(row, tracking_after),
            "timeline": [
                {
                    "time": iso(e.time),
                    "event": e.event,
                    "recipient": e.recipient,
                    "detail": _timeline_detail(e),
                }
                for e in entries
            ],
            # The timeline's entries in full (every hashed field) and the RFC 3161
            # checkpoint covering them, so a verifier recomputes them offline.
            "evidence_log": await evidence_log_section(self.store, entries),
        }

    async def _tracking_evidence(self, row: dict[str, Any], after: int) -> dict[str, Any] | None:
        if not row.get("tracking"):
            return None
        events = await self.store.tracking_events(row["qid"], after)
        return {
            "enabled": True,
            "public_url": self.cfg.tracking.public_url,
            "last_event_id": max([e["id"] for e in events], default=after),
            "reported_before": {"until_event": after, "certificate_id": row["cert_id"]}
            if after
            else None,
            "events": [
                {
                    "time": iso(e["time"]),
                    "recipient": e["address"],
                    "kind": e["kind"],
                    "link": e["link"],
                    "url": e["url"],
                    "ip": e["ip"],
                    "user_agent": e["user_agent"],
                    "method": e["method"],
                    "automatic": bool(e["automatic"]),
                    "reason": e["reason"],
                }
                for e in events
            ],
        }

    def _gateway_name(self) -> str:
        return f"Certifica ({self.cfg.gateway.domain})"


def _late_bounce_addendum(parent: dict[str, Any], dsn: dict[str, Any]) -> dict[str, Any]:
    """The evidence fields that make a message's evidence the addendum about the late
    delivery report ``dsn`` (a row of kind dsn) that came back for it."""
    return {
        "kind": "addendum",
        "certificate_id": dsn["cert_id"],
        "addendum_of": parent["cert_id"],
        "late_bounce": {
            "dsn_queue_id": dsn["qid"],
            "dsn_sha256": dsn["sha256"],
            "reports": json.loads(dsn["summary"] or "{}").get("reports", []),
        },
    }


def _outcomes_for_mail(recipients: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each recipient's address, status and last reply, as the sender's mail lists them."""
    return [
        {
            "address": r["address"],
            "status": r["status"],
            "reply": notices.one_line(f"{r['reply_code'] or ''} {r['reply_text'] or ''}"),
        }
        for r in recipients
    ]


def _reception_evidence(detail: dict[str, Any]) -> dict[str, Any]:
    """What a reception certificate states about the arrival, JSON-ready."""
    return {
        "owner": detail.get("owner"),
        "arrived_at": iso(detail.get("arrived_at")),
        "envelope": detail.get("envelope"),
        "original_from": detail.get("original_from"),
        "trace": detail.get("trace"),
        "arc": detail.get("arc"),
        "receipt": detail.get("receipt"),
    }


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


SPOOL_MISSING_TEXT = (
    "spool file missing: the gateway's copy of the message is gone (disk fault or operator error)"
)


def _internal_failure(rows: list[dict[str, Any]]) -> AttemptResult:
    """A deferral for every recipient of an attempt that could not even be made."""
    text = "the gateway could not attempt delivery (internal error; see its log)"
    return AttemptResult(
        tuple(RecipientResult(r["address"], DEFERRED, None, None, text) for r in rows),
        None,
        None,
        None,
        None,
    )


def _timeline_detail(entry: evidence_log.Entry) -> str:
    d = entry.detail
    if d.get("late"):
        by = f" (reported by {d['reporting_mta']})" if d.get("reporting_mta") else ""
        status = d.get("status") or ""
        return f"delivery report after acceptance: {d.get('action')} {status} {d.get('diagnostic', '')}{by}"
    if entry.event in ("RelayToNonERDS", "RelayToNonERDSFailure", "RelayAttemptDeferred"):
        where = f" via {d.get('mx_host')}[{d.get('ip')}]:{d.get('port')}" if d.get("ip") else ""
        note = f"; {d['note']}" if d.get("note") else ""
        return f"{d.get('reply', '')}{where}{note}"
    if entry.event == "SubmissionAcceptance":
        return f"accepted as {entry.qid}, {d.get('size')} bytes, sha256 {d.get('sha256')}"
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))


@functools.cache
def _version() -> str:
    """The installed version, read once (importlib.metadata reads files every call)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("certifica")
    except PackageNotFoundError:
        return "development"
