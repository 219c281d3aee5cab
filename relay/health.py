"""Is the gateway ready for mail? The checks behind ``/readyz`` (README, "Metrics and health").

Each check is named and says in one sentence what it found:

``listeners``   every ``[listen]`` socket is bound (the master holds them) and at least
                one acceptor is alive to serve them (its status file names a live pid);
``database``    the queue's database takes the write lock and a write
                (:meth:`relay.queue.health.QueueHealth.probe_write`);
``spool``       the spool's file system has ``[limits] min_free`` megabytes free (below
                that MAIL is refused with 452 4.3.1, :mod:`relay.queue.space`);
``signing``     the last document signed, or the key checked at start, worked;
``tsa``         the timestamp authority answered its last real request; with no real
                request for :data:`TSA_FRESH` seconds, a remote TSA's host is reached by
                TCP at most every :data:`TSA_PROBE_EVERY` seconds. A probe never asks
                for a timestamp: a commercial TSA bills each one;
``checkpoint``  no evidence entry has waited for a timestamped checkpoint longer than
                three ``[evidence] checkpoint_interval`` (an idle log needs none).

The signing key and the TSA are used by the certificate workers, not by the admin
process: each use leaves its result in a :class:`UseRecord`, a small file under
``<state_dir>/run/health/`` that the check reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from relay.config import Config
from relay.queue.health import QueueFigures
from relay.queue.space import FreeSpace
from relay.queue.store import Store

log = logging.getLogger("certifica/admin")

HEALTH_SUBDIR = "health"
TSA_FRESH = 600.0
"""Seconds a real use of the TSA speaks for it; older, a remote TSA is probed."""
TSA_PROBE_EVERY = 300.0
"""Seconds between two probes of a remote TSA (a TCP connection, never a request)."""
CHECKPOINT_INTERVALS = 3
"""Intervals an evidence entry may wait for its checkpoint before the gateway is not ready."""


@dataclass(frozen=True)
class Check:
    """One line of ``/readyz``: its name, whether it passed, and what was found."""

    name: str
    ok: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail}


class UseRecord:
    """``run/health/<name>.json``: the result of the last real use of the signing key or
    the TSA, for ``/readyz``. Written when the result changes, and at most once a
    minute while it stays the same (the admin process only needs to know it is recent)."""

    def __init__(self, state_dir: Path, name: str, every: float = 60.0) -> None:
        self.path = state_dir / "run" / HEALTH_SUBDIR / f"{name}.json"
        self.every = every
        self._last: bool | None = None
        self._written = 0.0

    def record(self, ok: bool, detail: str = "") -> None:
        now = time.monotonic()
        if ok == self._last and now - self._written < self.every:
            return
        self._last, self._written = ok, now
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"ok": ok, "at": time.time(), "detail": detail[:300]}))
            os.replace(tmp, self.path)
        except OSError as err:  # the record is for the operator; the document goes on
            log.warning("cannot write %s: %s", self.path, err.strerror or err)

    def read(self) -> dict[str, Any] | None:
        """The last record, or None when there is none (or it cannot be read)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def why(err: BaseException) -> str:
    """An exception in one short line, for a use record (never shown to a client)."""
    first = str(err).splitlines()[0][:200] if str(err) else "no detail"
    return f"{err.__class__.__name__}: {first}"


class Readiness:
    """The checks of ``/readyz`` for one gateway (see the module docstring)."""

    def __init__(self, cfg: Config, store: Store, space: FreeSpace, listen: dict[str, str]) -> None:
        self.cfg = cfg
        self.store = store
        self.space = space
        self.listen = listen
        self.status_dir = cfg.state_dir / "run" / "status"
        self.signing = UseRecord(cfg.state_dir, "signing")
        self.tsa = UseRecord(cfg.state_dir, "tsa")
        self._probed: tuple[float, Check] | None = None

    async def checks(self, figures: QueueFigures | None, now: float) -> list[Check]:
        """Every check, in the order of the module docstring. ``figures``: the queue as
        read for this request (None: the database could not be read)."""
        return [
            self.listeners(),
            await self.database(),
            self.spool(),
            self.signer(),
            await self.timestamps(now),
            self.checkpoint(figures, now),
        ]

    def listeners(self) -> Check:
        names = ", ".join(sorted(n for n in self.listen if n != "admin")) or "none"
        alive = 0
        for path in self.status_dir.glob("acceptor-*.json"):
            try:
                pid = int(json.loads(path.read_text())["pid"])
                os.kill(pid, 0)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            alive += 1
        if not alive:
            return Check("listeners", False, f"no acceptor is serving {names}")
        return Check("listeners", True, f"{alive} acceptor(s) serving {names}")

    async def database(self) -> Check:
        try:
            await asyncio.wait_for(self.store.probe_write(), 5.0)
        except TimeoutError:
            return Check("database", False, "a write waited more than 5 seconds for its lock")
        except Exception as err:
            return Check("database", False, f"a write failed ({why(err)})")
        return Check("database", True, "takes writes")

    def spool(self) -> Check:
        free, need = self.space.free(), self.cfg.limits.min_free
        shown = "unknown" if free == float("inf") else f"{free:.0f} MB"
        if self.space.low():
            return Check("spool", False, f"{shown} free, less than limits.min_free = {need} MB")
        return Check("spool", True, f"{shown} free (limits.min_free = {need} MB)")

    def signer(self) -> Check:
        last = self.signing.read()
        if last is None:
            return Check("signing", True, "the key was checked at start; no document signed yet")
        if not last.get("ok"):
            return Check("signing", False, f"the last document failed: {last.get('detail')}")
        return Check("signing", True, "the last document was signed")

    async def timestamps(self, now: float) -> Check:
        last = self.tsa.read()
        if last is not None and not last.get("ok"):
            return Check("tsa", False, f"the last request failed: {last.get('detail')}")
        url = self.cfg.signing.tsa_url
        if not url:
            return Check("tsa", True, "the in-process development TSA")
        if last is not None and now - float(last.get("at") or 0) < TSA_FRESH:
            return Check("tsa", True, "the last request was answered")
        return await self._probe_tsa(url)

    async def _probe_tsa(self, url: str) -> Check:
        """Reach the TSA's host (TCP) at most every TSA_PROBE_EVERY seconds; no request."""
        mono = time.monotonic()
        if self._probed is not None and mono - self._probed[0] < TSA_PROBE_EVERY:
            return self._probed[1]
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), self.cfg.signing.tsa_timeout
            )
            writer.close()
            await writer.wait_closed()
            check = Check("tsa", True, f"no recent request; {host}:{port} is reachable")
        except (OSError, TimeoutError) as err:
            check = Check(
                "tsa", False, f"no recent request; {host}:{port} unreachable ({why(err)})"
            )
        self._probed = (mono, check)
        return check

    def checkpoint(self, figures: QueueFigures | None, now: float) -> Check:
        if figures is None:
            return Check("checkpoint", False, "the evidence log could not be read")
        limit = CHECKPOINT_INTERVALS * self.cfg.evidence.checkpoint_interval
        if figures.oldest_unstamped is None:
            return Check("checkpoint", True, "every evidence entry is covered by a checkpoint")
        waited = now - figures.oldest_unstamped
        if waited > limit:
            return Check(
                "checkpoint",
                False,
                f"an evidence entry has waited {waited:.0f} s for a checkpoint "
                f"(more than {CHECKPOINT_INTERVALS} x evidence.checkpoint_interval)",
            )
        return Check("checkpoint", True, f"the oldest entry not yet stamped is {waited:.0f} s old")
