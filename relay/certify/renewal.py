"""Renewal of the archived certificates' long-term validation (README, "Renewal").

A PAdES B-LTA certificate (:mod:`certifier.lta`) proves what it proves for as long as
its newest document timestamp can be trusted, that is until its timestamp authority's
certificate expires. Before that, a renewal appends the validation data of that
timestamp and a new document timestamp (:meth:`certifier.lta.Archiver.renew`, ETSI
EN 319 142-1 section 5.5), as an incremental update: every earlier byte stays, so every
copy handed out before is still a prefix of the renewed file and still verifies.

Which files: every PDF in the archive (``[evidence] archive_dir``: certificates, addenda,
reception certificates) whose newest timestamp's authority certificate expires within
``before`` (``certifica evidence renew --before DAYS``, default ``[evidence]
renew_before``), and, with ``[evidence] lta_delay`` > 0, every file issued B-LT and not
yet given its first document timestamp. Files under legal hold are renewed like any
other: renewal never removes anything.

How a file is replaced: the renewed bytes' SHA-256 is recorded in
``certificate_versions`` first (so the verification page knows the version before anyone
can have it), then the file is replaced atomically and durably (temporary file, fsync,
rename, fsync of the directory). When the file is gone or has changed by then (retention
or an erasure removed it), or the replacement fails, the recorded version is removed
again: the page takes the newest recorded version for the current document, and must
never announce a renewal that did not happen. A crash between the two leaves a recorded
version nobody holds until the next pass renews the file (it is still due). One
pass at a time (an advisory lock on ``<archive>/.renew.lock``): the gateway's daily task
and ``certifica evidence renew`` never renew one file twice at once.

Errors: a file that cannot be read or renewed is reported (one line, its name and the
reason) and left as it was; the others go on. :class:`RenewalBusy` when another pass
holds the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from certifier import pool
from certifier.errors import TemporaryError
from relay.config import Config
from relay.queue.archive import archive_lock
from relay.queue.spool import write_durably
from relay.queue.verifications import VersionKind

if TYPE_CHECKING:  # pyHanko weighs ~50 MB: loaded where a file is read
    from certifier.lta import Archiver
    from relay.certify.maintenance import Task, TimeStampingCertifier

__all__ = [
    "Candidate",
    "RenewalBusy",
    "RenewalReport",
    "candidates",
    "publish",
    "renew_bytes",
    "renewal_lock",
    "renewal_tasks",
]

log = logging.getLogger("certifica/renewal")

LOCK_NAME = ".renew.lock"


class RenewalBusy(TemporaryError):
    """Another renewal pass (the gateway's task or a ``certifica`` command) is running."""


@dataclass(frozen=True)
class Candidate:
    """An archived PDF and what its newest timestamp says."""

    cert_id: str
    path: Path
    expires: dt.datetime  # its newest timestamp's authority certificate's notAfter
    document_timestamps: int  # 0: issued B-LT (lta_delay > 0), or B-T
    authority: bytes  # the SHA-256 of that authority's certificate

    def due(self, now: dt.datetime, before: dt.timedelta) -> bool:
        """Whether it needs a document timestamp: none yet, or its newest timestamp's
        authority expires within ``before`` of ``now``."""
        return self.document_timestamps == 0 or self.expires <= now + before


@dataclass
class RenewalReport:
    """What a pass did: one line per renewed (or, dry run, due) file and per failure."""

    renewed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    looked_at: int = 0
    skipped_same_authority: int = 0
    seconds: float = 0.0

    def summary(self, dry_run: bool = False) -> str:
        verb = "due" if dry_run else "renewed"
        text = (
            f"{len(self.renewed)} {verb}, {self.looked_at - len(self.renewed) - len(self.failed)}"
            f" not due, {len(self.failed)} failed, of {self.looked_at} archived document(s)"
        )
        if self.skipped_same_authority:
            text += (
                f"; {self.skipped_same_authority} not renewed: the timestamp authority's "
                "own certificate expires too soon (renew it first)"
            )
        return text + f" in {self.seconds:.1f} s"


@contextlib.contextmanager
def renewal_lock(archive: Path) -> Iterator[None]:
    """Hold the archive's renewal lock, or raise :class:`RenewalBusy` at once."""
    archive.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(archive / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RenewalBusy("another renewal is running") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


def candidates(
    archive: Path, newer_than: float | None = None
) -> Iterator[Candidate | tuple[Path, str]]:
    """Every PDF in ``archive`` (written after ``newer_than``, a POSIX time, if given),
    in name order, as a :class:`Candidate`, or ``(path, reason)`` when it cannot be read.
    Blocking: runs in a thread."""
    from certifier.lta import newest_timestamp

    for path in sorted(archive.glob("*.pdf")):
        try:
            if newer_than is not None and path.stat().st_mtime < newer_than:
                continue
            newest = newest_timestamp(path.read_bytes())
        except FileNotFoundError:
            continue  # removed meanwhile (retention, erasure)
        except Exception as exc:  # a damaged file: reported, the others go on
            yield path, _why(exc)
            continue
        yield Candidate(
            cert_id=path.stem,
            path=path,
            expires=newest.expires,
            document_timestamps=newest.document_timestamps,
            authority=bytes(newest.tsa_cert.sha256),
        )


def renew_bytes(archiver: Archiver, path: Path) -> tuple[str, bytes]:
    """The SHA-256 of ``path`` as it is and its renewed bytes. Blocking, CPU and the
    timestamp authority: runs on the signing thread."""
    pdf = path.read_bytes()
    renewed = archiver.renew(pdf)
    if len(renewed) <= len(pdf) or not renewed.startswith(pdf):
        # An incremental update never rewrites a byte, and a renewal adds one.
        raise ValueError("the renewed file does not extend the archived one")
    return hashlib.sha256(pdf).hexdigest(), renewed


def publish(path: Path, renewed: bytes, before_sha256: str) -> bool:
    """Replace ``path`` with ``renewed`` (atomically, durably), unless it is gone or is
    no longer the version renewed. The check and the replacement hold the archive lock
    (:mod:`relay.queue.archive`), which retention and an erasure hold while they delete:
    a file they removed is never put back. Blocking: runs in a thread."""
    with archive_lock(path.parent):
        try:
            now = path.read_bytes()
        except FileNotFoundError:
            return False  # retention or an erasure removed it meanwhile: stays removed
        if hashlib.sha256(now).hexdigest() != before_sha256:
            return False
        write_durably(path, renewed)
        return True


def renew_archive_sync(
    archive: Path,
    archiver: Archiver | None,
    record: Callable[[str, str, float, VersionKind], None],
    forget: Callable[[str, str], None],
    *,
    before: dt.timedelta,
    dry_run: bool = False,
    echo: Callable[[str], None] = lambda line: None,
) -> RenewalReport:
    """One pass over ``archive`` for ``certifica evidence renew``: renew every due file,
    saying each on ``echo``. ``record(sha256, cert_id, made, kind)`` writes a version,
    ``forget(sha256, cert_id)`` removes a renewed one that was not published;
    ``archiver`` may be None only in a ``dry_run``."""
    report = RenewalReport()
    start = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    with renewal_lock(archive):
        for found in candidates(archive):
            report.looked_at += 1
            if isinstance(found, tuple):
                line = f"{found[0].name}: cannot be read ({found[1]})"
                report.failed.append(line)
                echo(line)
                continue
            if not found.due(now, before):
                continue
            if dry_run:
                line = f"{found.cert_id}: due ({describe(found)})"
                report.renewed.append(line)
                echo(line)
                continue
            if archiver is None:
                raise ValueError("no archiver to renew with")
            try:
                mtime = found.path.stat().st_mtime
                old_sha, renewed = renew_bytes(archiver, found.path)
                new_sha = hashlib.sha256(renewed).hexdigest()
                # The version the archive held is recorded too (a certificate issued
                # before versions were recorded), then the renewed one, then the file.
                record(old_sha, found.cert_id, mtime, VersionKind.ISSUED)
                record(new_sha, found.cert_id, time.time(), VersionKind.RENEWED)
                published = False
                try:
                    published = publish(found.path, renewed, old_sha)
                finally:
                    if not published:  # gone, changed, or not written: no such version
                        forget(new_sha, found.cert_id)
                if not published:
                    continue
            except Exception as exc:
                line = f"{found.cert_id}: not renewed ({_why(exc)})"
                report.failed.append(line)
                echo(line)
                continue
            line = f"{found.cert_id}: renewed ({describe(found)}), sha256 {new_sha}"
            report.renewed.append(line)
            echo(line)
    report.seconds = time.monotonic() - start
    return report


class VersionRecords(Protocol):
    """The store's ``certificate_versions`` (:mod:`relay.queue.verifications`)."""

    async def record_certificate_version(
        self, pdf_sha256: str, cert_id: str, made: float, kind: VersionKind
    ) -> None: ...

    async def forget_certificate_renewal(self, pdf_sha256: str, cert_id: str) -> None: ...


async def renew_archive(
    archive: Path,
    thread: TimeStampingCertifier,
    records: VersionRecords,
    *,
    before: dt.timedelta,
    newer_than: float | None = None,
    first_only: bool = False,
) -> RenewalReport:
    """One pass of the gateway's own renewal task (:func:`renewal_tasks`): like
    ``certifica evidence renew``, but a file whose newest timestamp is already by the
    authority the gateway uses now is left alone (one more timestamp from the same
    certificate would extend nothing, and a paid authority bills each one), and every
    file is renewed on the signing thread in a call of its own, so the certificates being
    issued meanwhile wait for one renewal at most. ``first_only``: only the files that
    have no document timestamp yet (``[evidence] lta_delay``); ``newer_than``: only the
    files written after that POSIX time."""
    report = RenewalReport()
    start = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    with renewal_lock(archive):
        found_all = await asyncio.to_thread(list, candidates(archive, newer_than))
        current: bytes | None = None  # asked of the authority only when a file is due
        for found in found_all:
            report.looked_at += 1
            if isinstance(found, tuple):
                report.failed.append(f"{found[0].name}: cannot be read ({found[1]})")
                continue
            if not found.due(now, before) or (first_only and found.document_timestamps):
                continue
            if found.document_timestamps:
                if current is None:
                    current = await thread.run_in_signing_thread(current_authority)
                if found.authority == current:
                    report.skipped_same_authority += 1
                    continue
            try:
                mtime = found.path.stat().st_mtime
                old_sha, renewed = await thread.run_in_signing_thread(
                    partial(renew_with_this_process, found.path)
                )
                new_sha = hashlib.sha256(renewed).hexdigest()
                await records.record_certificate_version(
                    old_sha, found.cert_id, mtime, VersionKind.ISSUED
                )
                await records.record_certificate_version(
                    new_sha, found.cert_id, time.time(), VersionKind.RENEWED
                )
                published = False
                try:
                    published = await asyncio.to_thread(publish, found.path, renewed, old_sha)
                finally:
                    if not published:  # gone, changed, or not written: no such version
                        await records.forget_certificate_renewal(new_sha, found.cert_id)
                if not published:
                    continue
            except Exception as exc:
                report.failed.append(f"{found.cert_id}: not renewed ({_why(exc)})")
                continue
            report.renewed.append(f"{found.cert_id}: renewed ({describe(found)})")
    report.seconds = time.monotonic() - start
    return report


def current_authority() -> bytes:
    """The SHA-256 of the certificate this process's timestamp authority signs with."""
    return bytes(pool.archiver().tsa_certificate().sha256)


def renew_with_this_process(path: Path) -> tuple[str, bytes]:
    """:func:`renew_bytes` with this process's archiver (:func:`certifier.pool.init_process`)."""
    return renew_bytes(pool.archiver(), path)


def describe(found: Candidate) -> str:
    """Why a file is due, in a few words."""
    if found.document_timestamps == 0:
        return "no document timestamp yet"
    return f"timestamp authority expires {found.expires:%Y-%m-%d}"


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


LTA_LOOKBACK = 7 * 86400.0
"""How far back (seconds, by the file's time) the ``lta`` task looks for documents
without a document timestamp; the daily ``renew`` task looks at every one."""


def renewal_tasks(
    cfg: Config, records: VersionRecords, thread: TimeStampingCertifier, archive: Path
) -> list[Task]:
    """The gateway's own renewal (:class:`relay.certify.maintenance.Maintenance` runs
    them): ``renew`` daily, and with ``[evidence] lta_delay`` > 0 ``lta`` often enough
    that a document gets its first document timestamp within that delay."""
    from relay.certify.maintenance import Task

    before = dt.timedelta(days=cfg.evidence.renew_before)

    async def run(newer_than: float | None, first_only: bool) -> str:
        # RenewalBusy (certifica evidence renew holds the archive) propagates: the
        # scheduler logs it and tries again later, rather than counting today as done.
        report = await renew_archive(
            archive, thread, records, before=before, newer_than=newer_than, first_only=first_only
        )
        for line in report.failed:
            log.warning("renewal: %s", line)
        return report.summary()

    async def renew(now: float) -> str:
        return await run(None, False)

    async def lta(now: float) -> str:
        return await run(now - LTA_LOOKBACK, True)

    tasks = [Task("renew", 86400.0, renew)]
    if cfg.evidence.lta_delay > 0:
        tasks.append(Task("lta", min(cfg.evidence.lta_delay / 2, 3600.0), lta))
    return tasks
