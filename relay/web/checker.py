"""Checking a PDF a visitor sent to the verification page, in another process.

Verifying a signature parses a hostile file with pyHanko and asn1crypto and takes CPU
time; neither may happen on an acceptor's event loop (ARCHITECTURE.md: the acceptors
only accept). :class:`PdfChecker` writes the file to a private temporary directory and
runs ``certifica verify --json`` on it (:mod:`relay.cli.verify`) as a child process with
a time limit, at most :data:`CONCURRENT_CHECKS` at a time per acceptor; a check over its
time is killed.

The answer is a :class:`CheckResult`, or None when the check could not be made (too busy,
too slow, the command failed): the page then says to try again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from relay.config import Config

__all__ = ["CHECK_TIMEOUT", "CONCURRENT_CHECKS", "CheckResult", "PdfChecker", "trust_roots"]

log = logging.getLogger("certifica/web")

CHECK_TIMEOUT = 60.0
"""Seconds a check may take, waiting for a free slot included."""

CONCURRENT_CHECKS = 2
"""Checks one acceptor runs at once (the machine's other work goes on meanwhile)."""


@dataclass(frozen=True)
class CheckResult:
    """What ``certifica verify --json`` found."""

    ok: bool
    content_certified: bool
    timestamp: str | None  # ISO 8601, the RFC 3161 genTime
    checks: dict[str, bool]  # check name -> passed


def trust_roots(cfg: Config) -> list[Path]:
    """The anchors the page checks against: ``[signing] trust_roots``, else this
    gateway's own CA (as ``certifica verify`` chooses them)."""
    if cfg.signing.trust_roots:
        return [Path(p).resolve() for p in cfg.signing.trust_roots]
    ca = cfg.state_dir / "keys" / "ca.pem"
    return [ca.resolve()] if ca.exists() else []


class PdfChecker:
    """Runs ``certifica verify --json`` on a visitor's file, one child process per check."""

    def __init__(self, cfg: Config, timeout: float = CHECK_TIMEOUT) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._slots = asyncio.Semaphore(CONCURRENT_CHECKS)

    async def check(self, pdf: bytes) -> CheckResult | None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    return await self._run(pdf)
        except TimeoutError:
            log.warning("verification page: a check took over %.0f s and was stopped", self.timeout)
            return None
        except OSError as err:  # no room for the file, out of processes or descriptors
            log.error("verification page: check not made (%s)", err.strerror or type(err).__name__)
            return None

    async def _run(self, pdf: bytes) -> CheckResult | None:
        with tempfile.TemporaryDirectory(prefix="certifica-check-") as folder:
            path = Path(folder) / "document.pdf"
            await asyncio.to_thread(_write_private, path, pdf)
            command = [sys.executable, "-m", "relay.cli", "verify", "--json"]
            for root in trust_roots(self.cfg):
                command += ["--trust", str(root)]
            command.append(str(path))
            proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=folder,
            )
            try:
                out, err = await proc.communicate()
            except asyncio.CancelledError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        return _parse(out, err, proc.returncode)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _parse(out: bytes, err: bytes, status: int | None) -> CheckResult | None:
    try:
        report = json.loads(out.decode("utf-8"))
        return CheckResult(
            ok=bool(report["ok"]),
            content_certified=bool(report["content_certified"]),
            timestamp=report.get("timestamp") if isinstance(report.get("timestamp"), str) else None,
            checks={str(c["name"]): bool(c["ok"]) for c in report["checks"]},
        )
    except (ValueError, KeyError, TypeError):
        line = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        log.error(
            "verification page: certifica verify gave no report (exit %s: %r)", status, line[0]
        )
        return None
