"""Timestamped checkpoints of the evidence log while the gateway runs (RFC 3161).

Every ``interval`` seconds, when the evidence log has grown since the last checkpoint,
:class:`Checkpointer` asks the configured timestamp authority (RFC 3161; the
in-process development TSA by default, :func:`certifier.tsa.make_timestamper`) for a
TimeStampToken over the checkpoint statement of the chain head
(:func:`certifier.checkpoints.statement`) and stores it in ``evidence_checkpoints``. It
also makes one when the gateway starts (a crash may have left entries unstamped) and
one when it stops, so the last events before a shutdown are dated too.

The request runs in a thread with its own event loop: the in-process TSA signs with
RSA (CPU) and pyHanko's HTTP client must not share the SMTP loop's time with a slow
TSA, so the gateway's event loop never waits for a timestamp.

:func:`evidence_log_section` is the ``evidence_log`` part of a certificate's
``evidence.json``: the message's entries with every hashed field
(:func:`certifier.evidence.excerpt_entry`) and the earliest checkpoint covering them, when
there is one yet.

Errors: a failed timestamp request (``TimestampRequestError``, an ``OSError``, a
timeout) is logged as a warning and tried again at the next interval; it never stops
the gateway, and no entry is lost (the next checkpoint covers it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Protocol

from asn1crypto import cms

from certifier import checkpoints, evidence
from relay.health import UseRecord, why
from relay.metrics import TSA_ERRORS
from relay.queue.store import Store


class TimeStamper(Protocol):
    """What a checkpoint needs of a TSA client: pyHanko's ``TimeStamper`` method, which
    :class:`certifier.pool.PoolTimeStamper` also has."""

    async def async_timestamp(
        self, message_digest: bytes, md_algorithm: str
    ) -> cms.ContentInfo: ...


__all__ = ["DEFAULT_INTERVAL", "Checkpointer", "evidence_log_section"]

log = logging.getLogger("certifica/evidence")

DEFAULT_INTERVAL = 300.0
"""Seconds between checkpoints while the log grows (a checkpoint costs one timestamp)."""

NO_CHECKPOINT_YET = (
    "No timestamped checkpoint covered these entries when this document was made; the "
    "gateway's next checkpoint does (certifica evidence verify, on the gateway, checks it)."
)


class Checkpointer:
    """Makes RFC 3161 checkpoints of the evidence log's head, periodically."""

    def __init__(
        self,
        store: Store,
        timestamper: TimeStamper,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = 30.0,
        tsa_use: UseRecord | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"the checkpoint interval must be positive, not {interval!r}")
        self.store = store
        self.timestamper = timestamper
        self.interval = interval
        self.timeout = timeout
        self.tsa_use = tsa_use  # the TSA's last result, for /readyz (relay/health.py)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def start(self) -> None:
        """Run :meth:`run` in the background (the gateway's start)."""
        self._task = asyncio.create_task(self.run(), name="checkpoints")

    async def run(self) -> None:
        while not self._stop.is_set():
            await self._checkpoint_logged()
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    async def stop(self, final: bool = True) -> None:
        """Stop the periodic task; with *final*, checkpoint what is not stamped yet."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if final:
            await self._checkpoint_logged()

    async def checkpoint(self) -> checkpoints.Checkpoint | None:
        """Checkpoint the head now if the log grew since the last one; the new one or None.

        Raises what the TSA client raises (``TimestampRequestError``, ``OSError``) and
        ``TimeoutError`` after ``timeout`` seconds.
        """
        async with self._lock:
            head = await self.store.evidence_head()
            if head is None:
                return None
            last = await self.store.latest_checkpoint()
            if last is not None and last.seq >= head[0]:
                return None
            seq, digest = head
            now = time.time()
            imprint = hashlib.sha256(checkpoints.statement(seq, digest, now)).digest()
            try:
                token = await asyncio.wait_for(
                    asyncio.to_thread(_timestamp, self.timestamper, imprint), self.timeout
                )
            except Exception as err:
                TSA_ERRORS.labels("checkpoint").inc()
                if self.tsa_use is not None:
                    self.tsa_use.record(False, why(err))
                raise
            if self.tsa_use is not None:
                self.tsa_use.record(True)
            made = checkpoints.Checkpoint(
                seq, digest, now, checkpoints.token_time(token).timestamp(), token
            )
            await self.store.add_checkpoint(made)
        log.info(
            "checkpoint: seq=%d head=%s timestamp=%s",
            seq,
            digest,
            evidence.iso_time(made.tsa_time),
        )
        return made

    async def _checkpoint_logged(self) -> None:
        try:
            await self.checkpoint()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            # A TSA outage is the operator's to see, not a gateway fault: a warning, and
            # the traceback only at debug level.
            log.warning(
                "checkpoint: not made (%s: %s); will retry in %.0f s",
                err.__class__.__name__,
                str(err).splitlines()[0][:200] if str(err) else "no detail",
                self.interval,
            )
            log.debug("traceback", exc_info=err)


def _timestamp(timestamper: TimeStamper, imprint: bytes) -> bytes:
    """A DER TimeStampToken over the SHA-256 *imprint*; runs in a worker thread."""
    token = asyncio.run(timestamper.async_timestamp(imprint, "sha256"))
    return bytes(token.dump())


async def evidence_log_section(store: Store, entries: list[evidence.Entry]) -> dict[str, Any]:
    """``evidence_log`` of a certificate: *entries* in full, and the checkpoint covering them.

    *entries* are the ones the timeline is made of, so the two always list the same
    events; reading their stored columns again gives exactly what was hashed (an entry
    whose values were forgotten, docs/erasure.md, gives its commitment instead).
    """
    excerpt = await store.evidence_excerpt([e.seq for e in entries])
    covering = await store.checkpoint_covering(entries[-1].seq) if entries else None
    section: dict[str, Any] = {
        "format": evidence.EXCERPT_FORMAT,
        "head": entries[-1].hash if entries else evidence.GENESIS,
        "entries": excerpt,
        "checkpoint": covering.as_evidence() if covering is not None else None,
    }
    if covering is None:
        section["checkpoint_note"] = NO_CHECKPOINT_YET
    return section
