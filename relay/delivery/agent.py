"""The delivery agent: one attempt to deliver a message to the recipients of one domain
(Postfix's smtp(8)).

It reads the message from the spool, makes the tracked copy, writes the copy that leaves
(trace fields, From handling, DKIM: :mod:`relay.delivery.outbound`), hands it to the SMTP
client (:mod:`relay.delivery.client`) and records each recipient's outcome in the store:
delivered, deferred with an exponential backoff (RFC 5321 §4.5.4.1) until the queue
lifetime ends, or failed. The queue manager (:mod:`relay.queue.manager`) learns only
the :class:`relay.queue.jobs.DeliveryDone` it returns.

Log lines follow Postfix's, queue id first, so "what happened to X?" is one grep.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from addendum.inject import Injection
from certifier import copies
from relay.certify import notices
from relay.certify.hosted_notification import notification_for
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
from relay.logs import log_failure
from relay.metrics import DELIVERY_ATTEMPTS, RECIPIENTS_FINAL
from relay.queue.jobs import DeliveryDone, DeliveryJob, Row
from relay.queue.spool import Spool, SpoolFileMissing
from relay.queue.spool_missing import SPOOL_MISSING_TEXT, missing_since
from relay.queue.store import Outcome, Store
from relay.web.tracking import inject_copy, tracked_for

log = logging.getLogger("certifica/qmgr")
smtp_log = logging.getLogger("certifica/smtp")

_LOG_STATUS = {DELIVERED: "sent", DEFERRED: "deferred", FAILED: "bounced"}
_SAFE_HELO = re.compile(r"[^A-Za-z0-9.\-:\[\]]")

Offload = Callable[..., Awaitable[Any]]
"""Runs a plain function in the worker processes (MIME rewriting is CPU work)."""


def backoff(cfg: Config, attempts: int) -> float:
    """Seconds until the next try after ``attempts`` tries (Postfix: 5 min doubling to ~67)."""
    return float(min(cfg.queue.max_retry, cfg.queue.first_retry * (2 ** max(0, attempts - 1))))


def received_header(row: Row, hostname: str, recipients: list[str]) -> bytes:
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


def gets_tracked_copy(cfg: Config, row: Row) -> bool:
    """Whether the recipient of ``row`` gets a copy with tracked links (one per recipient)."""
    return bool(
        row.get("tracking")
        and row["kind"] == "mail"
        and cfg.tracking.enabled
        and tracked_for(cfg, row["domain"])
    )


def tracking_changes(copy: Injection) -> list[dict[str, Any]]:
    """What tracking changed in a copy, as the certificate lists it."""
    changes: list[dict[str, Any]] = [
        {"change": "link_tracked", "link": n, "url": url} for n, url in enumerate(copy.links, 1)
    ]
    if copy.pixel:
        changes.append({"change": "open_pixel_added"})
    changes += [
        {"change": "part_reencoded", "part": part, "encoding": encoding}
        for part, encoding in copy.reencoded
    ]
    return changes


def answered(result: AttemptResult) -> bool:
    """Whether any server of the destination replied (no reply at all to any recipient:
    connection-level trouble)."""
    return not all(r.code is None and r.status == DEFERRED for r in result.results)


class DeliveryAgent:
    """The delivery stage: attempts a :class:`~relay.queue.jobs.DeliveryJob` and records
    its outcome.

    At most ``[delivery] concurrency`` attempts run at once, and at most
    ``per_destination`` to one destination (a domain, or the fixed route it goes to);
    a slow or dead destination waits on its own limit without holding the slots the
    others need. The agent keeps no state the queue manager reads: what it decides is
    in the store, and the one thing the scheduler needs back, whether the destination
    answered, is in the returned :class:`~relay.queue.jobs.DeliveryDone`.
    """

    def __init__(
        self,
        cfg: Config,
        store: Store,
        spool: Spool,
        deliverer: Deliverer,
        verp_key: bytes = b"",
        tracking_key: bytes = b"",
        offload: Offload | None = None,
        dkim: DkimKeyring | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.spool = spool
        self.deliverer = deliverer
        self.verp_key = verp_key
        self.tracking_key = tracking_key
        self.offload = offload
        self.dkim = dkim
        self._per_destination: dict[str, asyncio.Semaphore] = {}
        self._deliveries = asyncio.Semaphore(cfg.delivery.concurrency)

    async def deliver(self, job: DeliveryJob) -> DeliveryDone:
        """One attempt for the recipients of ``job``; never raises: an attempt that
        cannot even be made is recorded as a deferral (and failure once the queue
        lifetime is over), so a fault never loops or lingers."""
        rows = job.rows
        first = rows[0]
        qid = job.qid
        reachable: bool | None = None
        try:
            # The destination's slot first, then a global one: a slow or dead destination
            # waits on its own limit without holding global slots the others need.
            async with self._destination(job.domain), self._deliveries:
                try:
                    raw = await asyncio.to_thread(self.spool.read, qid)
                except SpoolFileMissing as missing:
                    result = await self._spool_missing_result(rows, missing)
                    await self._record(rows, result, time.time())
                    return DeliveryDone(qid, job.domain, None)
                addresses = [r["address"] for r in rows]
                sender = first["sender"]
                # How to rebuild the copy that leaves from the message as received.
                recipe = outbound.CopyRecipe(raw)
                hosted = bool(first.get("hosted")) and first["kind"] == "mail"
                if hosted:  # a notification instead of the content (docs/hosted.md)
                    raw = await notification_for(
                        self.cfg, self.store, self.tracking_key, first, raw
                    )
                    recipe = outbound.CopyRecipe(raw)
                elif gets_tracked_copy(self.cfg, first):
                    if self.offload is None:
                        raise RuntimeError("a tracked copy needs the worker processes (offload)")
                    copy = await self.offload(
                        inject_copy,
                        raw,
                        self.cfg.web.public_url,
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
                    recipe.rewritten(copy.edits, *tracking_changes(copy))
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
                # The notification is the gateway's own mail: only signed, as such.
                row = {**first, "kind": "hosted"} if hosted else first
                raw = await self.outgoing(row, addresses, raw, recipe)
                raw = recipe.wire(raw)
                # Rebuilding the copy to check its recipe is CPU work on the whole message:
                # off this agent's event loop, like the tracking rewrite. A notification
                # is not the message: there is no recipe from the one to the other.
                delivered_copy = (
                    None
                    if hosted
                    else await asyncio.to_thread(self.delivered_copy, qid, raw, recipe)
                )
                started = time.time()
                result = await self.deliverer.attempt(job.domain, sender, addresses, raw, qid=qid)
                reachable = answered(result)
                await self._record(rows, result, started, delivered_copy)
        except Exception:
            log_failure(log, "%s: delivery attempt failed unexpectedly; will retry", qid)
            # Counted as a deferral: backoff, and a certified failure once the queue
            # lifetime is over, so a fault (a lost spool file) never loops or lingers.
            try:
                await self._record(rows, _internal_failure(rows), time.time())
            except Exception:
                log_failure(log, "%s: could not record the failed attempt", qid)
                try:
                    await self.store.postpone(
                        [r["id"] for r in rows], time.time() + self.cfg.queue.first_retry
                    )
                except Exception:
                    log_failure(log, "%s: could not postpone the failed attempt", qid)
        return DeliveryDone(qid, job.domain, reachable)

    async def outgoing(
        self, row: Row, addresses: list[str], raw: bytes, recipe: outbound.CopyRecipe | None = None
    ) -> bytes:
        """The copy that leaves: trace and copy headers, From handling, DKIM signatures
        (:mod:`relay.delivery.outbound`), each step told to ``recipe`` when given (what
        was added is put in front; From handling is edits on the message). Mail the
        gateway wrote itself is only signed. Mail for
        postmaster@ and abuse@ (:mod:`relay.cleanup.postmaster`) came from anyone: it gets the
        trace and ``X-Original-To`` (Postfix's name for the address it was sent to), its
        From is never rewritten, and only the gateway's own key signs it, never a key a
        customer delegated."""
        gateway_domain = self.cfg.gateway.domain
        recipe = recipe or outbound.CopyRecipe(raw)
        if row["kind"] == "postmaster":
            head = received_header(row, self.cfg.gateway.hostname, addresses)
            for address in json.loads(row.get("original_to") or "[]"):
                head += f"X-Original-To: {notices.one_line(str(address), 320)}\r\n".encode(
                    "ascii", "replace"
                )
            raw = head + raw
            recipe.prepended(head)
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
                edits = outbound.from_edits(
                    raw,
                    outbound.display_name(raw) or str(from_address),
                    self.cfg.gateway.certification_address,
                    "Certifica",
                )
                if edits:
                    raw = copies.apply(raw, edits)
                    added = [{"change": "header_added", "field": "Reply-To"}]
                    recipe.rewritten(
                        edits,
                        {"change": "from_rewritten"},
                        *(added if edits[-1].length == 0 else []),
                    )
            head = received_header(row, self.cfg.gateway.hostname, addresses)
            if row.get("method") == "submission":
                head += outbound.submission_fields(
                    raw, row["qid"], row["created"], self.cfg.gateway.hostname
                )
            if row.get("method") == "mx" and row.get("cert_id"):
                head += outbound.certified_copy_header(str(from_address), row["cert_id"])
            raw = head + raw
            recipe.prepended(head)
        if not keys:
            return raw
        try:
            signed = await asyncio.to_thread(sign, raw, keys)
            recipe.prepended(signed[: len(signed) - len(raw)])
            return signed
        except UnsignableMessage as why:  # the sender's header section: not a fault of ours
            log.warning("%s: not DKIM-signed: %s (RFC 5322 2.2); sent as received", row["qid"], why)
            return raw
        except Exception:  # a corrupt key file: the mail still goes, unsigned, and says why
            log_failure(log, "%s: DKIM signing failed; sent unsigned", row["qid"])
            return raw

    def delivered_copy(self, qid: str, copy: bytes, recipe: outbound.CopyRecipe) -> str | None:
        """The recipe of ``copy`` as stored with a delivered outcome (compact JSON). Should
        it not rebuild the copy (a step missed), the difference itself is recorded and
        the log says so; should even that fail, none is, and the delivery goes on."""
        try:
            made = recipe.recipe(copy)
            if recipe.broken:
                log.error("%s: the delivered copy's recipe did not fit; recorded as a diff", qid)
            return json.dumps(made.to_json(), separators=(",", ":"))
        except Exception:
            log_failure(log, "%s: the delivered copy's recipe could not be made", qid)
            return None

    def _destination(self, domain: str) -> asyncio.Semaphore:
        route = self.deliverer.router.fixed_route(domain)
        key = str(route) if route is not None else domain
        if key not in self._per_destination:
            self._per_destination[key] = asyncio.Semaphore(self.cfg.delivery.per_destination)
        return self._per_destination[key]

    async def _record(
        self,
        rows: list[Row],
        result: AttemptResult,
        started: float,
        delivered_copy: str | None = None,
    ) -> None:
        """Each recipient's outcome of the attempt, in one transaction, and its log line;
        a delivered one with ``delivered_copy``, the recipe of the copy that left."""
        now = time.time()
        qid = rows[0]["qid"]
        hop = result.hop
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
                    delivered_copy=delivered_copy if status == DELIVERED else None,
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
        for out in outcomes:
            DELIVERY_ATTEMPTS.labels(out.status).observe(max(0.0, now - started))
            if out.status in (DELIVERED, FAILED):
                RECIPIENTS_FINAL.labels(out.status).inc()
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

    async def _spool_missing_result(
        self, rows: list[Row], missing: SpoolFileMissing
    ) -> AttemptResult:
        """A deferral of every recipient while the grace lasts, a failure after it."""
        since = await missing_since(self.cfg, self.store, rows[0]["qid"], missing)
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


def _internal_failure(rows: list[Row]) -> AttemptResult:
    """A deferral for every recipient of an attempt that could not even be made."""
    text = "the gateway could not attempt delivery (internal error; see its log)"
    return AttemptResult(
        tuple(RecipientResult(r["address"], DEFERRED, None, None, text) for r in rows),
        None,
        None,
        None,
        None,
    )
