"""Checking a PDF a visitor sent to the verification page, in another process.

Verifying a signature parses a hostile file with pyHanko and asn1crypto and takes CPU
time; neither may happen on an acceptor's event loop (ARCHITECTURE.md: the acceptors
only accept). The file is streamed, as it arrives, into a private temporary directory
(:class:`Upload`: mode 0700, the file 0600, its SHA-256 computed on the way, never the
whole file in memory), then :class:`PdfChecker` runs ``certifica verify --json`` on it
(:mod:`relay.cli.verify`) as a child process with a time limit, at most
:data:`CONCURRENT_CHECKS` at a time per acceptor; a check over its time is killed. The
directory is removed when the answer is known.

At most :data:`MAX_UPLOADS` files are received at once per acceptor, so the disk a
visitor can fill is bounded (``MAX_UPLOADS`` x ``[web] max_upload``); past it the page
says to try again later, as it does when a check could not be made (too busy, too slow,
the command failed): :meth:`PdfChecker.check` then returns None.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from relay.config import Config

__all__ = [
    "CHECK_TIMEOUT",
    "CONCURRENT_CHECKS",
    "MAX_UPLOADS",
    "CheckResult",
    "PdfChecker",
    "Upload",
    "trust_roots",
]

log = logging.getLogger("certifica/web")

CHECK_TIMEOUT = 60.0
"""Seconds a check may take, waiting for a free slot included."""

CONCURRENT_CHECKS = 2
"""Checks one acceptor runs at once (the machine's other work goes on meanwhile)."""

MAX_UPLOADS = 16
"""Files one acceptor receives at once."""


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


class Upload:
    """A visitor's file as it arrives: written to a private temporary file, hashed."""

    def __init__(self, folder: Path, file: BinaryIO) -> None:
        self.path = folder / "document.pdf"
        self.size = 0
        self._file = file
        self._hash = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)
        await asyncio.to_thread(self._file.write, chunk)

    async def finish(self) -> None:
        await asyncio.to_thread(self._file.close)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


class PdfChecker:
    """Receives a visitor's file (:meth:`receiving`) and runs ``certifica verify --json``
    on it, one child process per check (:meth:`check`)."""

    def __init__(self, cfg: Config, timeout: float = CHECK_TIMEOUT) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._slots = asyncio.Semaphore(CONCURRENT_CHECKS)
        self._uploads = 0

    @property
    def full(self) -> bool:
        """True when :data:`MAX_UPLOADS` files are being received or checked."""
        return self._uploads >= MAX_UPLOADS

    @contextlib.asynccontextmanager
    async def receiving(self) -> AsyncIterator[Upload]:
        """A private temporary file for one upload, removed on leaving."""
        self._uploads += 1
        try:
            with tempfile.TemporaryDirectory(prefix="certifica-check-") as folder:
                file = await asyncio.to_thread(_open_private, Path(folder) / "document.pdf")
                upload = Upload(Path(folder), file)
                try:
                    yield upload
                finally:
                    file.close()
        finally:
            self._uploads -= 1

    async def check(self, upload: Upload) -> CheckResult | None:
        """What ``certifica verify`` says of the received file; None when it could not
        say (waited or ran over :attr:`timeout`, or could not start)."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self._slots:
                    return await self._run(upload.path)
        except TimeoutError:
            log.warning("verification page: a check took over %.0f s and was stopped", self.timeout)
            return None
        except OSError as err:  # out of processes or descriptors
            log.error("verification page: check not made (%s)", err.strerror or type(err).__name__)
            return None

    async def _run(self, path: Path) -> CheckResult | None:
        command = [sys.executable, "-m", "relay.cli", "verify", "--json"]
        for root in trust_roots(self.cfg):
            command += ["--trust", str(root)]
        command.append(str(path))
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=path.parent,
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        return _parse(out, err, proc.returncode)


def _open_private(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


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
