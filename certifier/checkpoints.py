"""Timestamped checkpoints of the evidence log: the chain head, dated by an RFC 3161 TSA.

The evidence log (:mod:`certifier.evidence`) is hash-chained, so the hash of its last
entry (the *head*) commits to every entry before it. A checkpoint is the triple
(``seq``, ``head``, ``time``): the last entry's number and hash and the gateway's clock
when the checkpoint was made, serialised as the *statement*

    ``["certifica-checkpoint/1",<seq>,"<head>","<time>"]``

(compact JSON, ASCII; ``time`` is Python's shortest ``repr`` of the float), whose
SHA-256 is the messageImprint of an RFC 3161 TimeStampToken (RFC 3161 section 2.4.2;
the token is CMS SignedData, RFC 5652, over a TSTInfo). The token proves that the log
up to ``seq`` existed, exactly as it is, no later than the token's ``genTime``: the
gateway's own operator cannot rewrite that part of history afterwards without the
checkpoint failing, because the TSA, not the gateway, signs the time.

``openssl ts -verify -data <statement file> -in <token> -token_in -CAfile <TSA root>``
checks an exported checkpoint independently of this code.

This module is the pure part: the statement, checking tokens, and auditing a whole
log handed to it (:func:`audit`). The checkpoints are stored by the queue package
(``relay/queue/evidence_log.py``, table ``evidence_checkpoints``); making them while
the gateway runs is :mod:`relay.certify.checkpoints`. :func:`check_token`
never raises on a bad token; it reports why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509

from certifier import evidence

__all__ = [
    "FORMAT",
    "Audit",
    "Checkpoint",
    "TokenCheck",
    "audit",
    "check_embedded",
    "check_token",
    "export",
    "statement",
    "token_time",
]

log = logging.getLogger(__name__)

FORMAT = "certifica-checkpoint/1"

_MAX_PROBLEMS = 10_000


def statement(seq: int, head: str, time: float) -> bytes:
    """The bytes a checkpoint's timestamp token covers (their SHA-256 is the imprint)."""
    return json.dumps(
        [FORMAT, seq, head, repr(float(time))], ensure_ascii=True, separators=(",", ":")
    ).encode("ascii")


@dataclass(frozen=True)
class Checkpoint:
    """One timestamped checkpoint of the chain."""

    seq: int
    head: str
    time: float
    tsa_time: float
    token: bytes

    def statement(self) -> bytes:
        return statement(self.seq, self.head, self.time)

    def as_evidence(self) -> dict[str, Any]:
        """The checkpoint as a certificate embeds it (``evidence_log.checkpoint``)."""
        return {
            "format": FORMAT,
            "seq": self.seq,
            "head": self.head,
            "time": repr(float(self.time)),
            "timestamp": evidence.iso_time(self.tsa_time),
            "token": base64.b64encode(self.token).decode("ascii"),
        }


def token_time(token: bytes) -> datetime:
    """The genTime of a DER TimeStampToken; ValueError when it is not one."""
    return _tst_info(cms.ContentInfo.load(token))["gen_time"].native  # type: ignore[no-any-return]


# -- checking tokens ----------------------------------------------------------------


@dataclass(frozen=True)
class TokenCheck:
    """Whether a token is a trusted RFC 3161 timestamp of a statement, and why not."""

    ok: bool
    detail: str
    time: datetime | None = None


def check_token(token: bytes, data: bytes, roots: list[asn1_x509.Certificate]) -> TokenCheck:
    """Check that *token* timestamps *data* and that its TSA chains to one of *roots*.

    RFC 3161 section 2.4.2: the TSTInfo's messageImprint is the hash of *data* with the
    token's own hash algorithm; the SignedData signature (RFC 5652 section 5.6) is
    intact; the TSA certificate is valid for time stamping (RFC 3161 section 2.3,
    extended key usage id-kp-timeStamping) and chains to a trust anchor. Must not run
    on an event loop's thread (it runs pyHanko's validator to completion).
    """
    try:
        info = cms.ContentInfo.load(token)
        tst_info = _tst_info(info)
        when: datetime = tst_info["gen_time"].native
        signed_data = info["content"]
    except Exception as exc:  # a hostile blob: whatever asn1crypto throws is "not a token"
        return TokenCheck(False, f"the token is not an RFC 3161 TimeStampToken ({_why(exc)})")
    stamp = when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    def imprint(algorithm: str) -> bytes:
        return hashlib.new(algorithm, data).digest()

    try:
        # pyHanko loads slowly and only verification needs it: the gateway's main
        # process makes checkpoints without ever importing it.
        from pyhanko.sign.validation.generic_cms import validate_tst_signed_data
        from pyhanko.sign.validation.status import TimestampSignatureStatus
        from pyhanko_certvalidator import ValidationContext

        context = ValidationContext(trust_roots=roots, allow_fetching=False)
        status = TimestampSignatureStatus(
            **asyncio.run(validate_tst_signed_data(signed_data, context, imprint))
        )
    except Exception as exc:
        log.debug("timestamp token validation aborted", exc_info=True)
        return TokenCheck(False, f"the token cannot be validated ({_why(exc)})", when)
    tsa = _who(status.signing_cert.subject) if status.signing_cert is not None else "unknown TSA"
    if not status.intact:
        return TokenCheck(
            False, f"the token ({stamp}, {tsa}) does not timestamp this checkpoint", when
        )
    if not status.valid:
        return TokenCheck(False, f"the token's signature ({stamp}, {tsa}) is broken", when)
    if not roots:
        return TokenCheck(
            False, f"timestamp {stamp} by {tsa}; not checked against a trust anchor", when
        )
    if not status.trusted:
        return TokenCheck(
            False, f"the timestamp authority {tsa} does not chain to a trusted root", when
        )
    return TokenCheck(True, f"timestamped {stamp} by {tsa}", when)


def _tst_info(info: cms.ContentInfo) -> tsp.TSTInfo:
    if info["content_type"].native != "signed_data":
        raise ValueError("not CMS SignedData")
    content = info["content"]["encap_content_info"]["content"]
    parsed = content.parsed if content is not None else None
    if not isinstance(parsed, tsp.TSTInfo):
        raise ValueError("the SignedData does not hold a TSTInfo")
    return parsed


# -- checking a whole database ------------------------------------------------------


@dataclass
class Audit:
    """What :func:`audit` found in a gateway's database."""

    entries: int = 0
    head: tuple[int, str] | None = None
    checkpoints: int = 0
    last_checkpoint: Checkpoint | None = None
    last_timestamp: datetime | None = None
    problems: list[str] = field(default_factory=list)
    more_problems: int = 0
    uncovered: int = 0
    """Entries after the last checkpoint (entries, not a difference of numbers: a
    ``Restored`` entry skips numbers)."""
    restores: list[str] = field(default_factory=list)
    """One line per ``Restored`` entry: the backup it came from and the numbers not in
    this log. A log cut short and then followed by a made-up ``Restored`` entry would
    verify like a real restore, so the auditor is told of every one."""

    @property
    def ok(self) -> bool:
        return not self.problems and not self.more_problems

    def problem(self, text: str) -> None:
        if len(self.problems) < _MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.more_problems += 1

    def summary(self) -> str:
        if self.head is None:
            chain = "the evidence log is empty"
        else:
            chain = f"{self.entries} evidence entries, head #{self.head[0]} {self.head[1][:16]}"
            if self.restores:
                chain += f", restored from a backup {len(self.restores)} time(s) (RESTORED above)"
        if self.last_checkpoint is None:
            marks = "no checkpoint yet"
        else:
            when = (
                self.last_timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                if self.last_timestamp
                else "an unreadable time"
            )
            marks = (
                f"{self.checkpoints} checkpoint(s), the last covering #{self.last_checkpoint.seq}"
                f" at {when}"
            )
            if self.uncovered > 0:
                marks += f" ({self.uncovered} newer entries not timestamped yet)"
        count = len(self.problems) + self.more_problems
        verdict = "OK" if self.ok else f"{count} problem(s)"
        return f"{chain}; {marks}: {verdict}"


def audit(
    rows: Iterable[evidence.Row],
    checkpoints: Iterable[Checkpoint],
    roots: list[asn1_x509.Certificate],
) -> Audit:
    """Recompute a whole chain (``rows``: every stored entry, in order) and check every
    checkpoint against it and its TSA.

    A checkpoint fails when the entry it names is gone, when that entry's hash is not
    the timestamped head (the log up to it was rewritten, even if consistently), when
    its token does not timestamp its statement or its TSA is not trusted, or when it is
    timestamped before the checkpoint preceding it.
    """
    result = Audit()
    marks = list(checkpoints)
    wanted = {checkpoint.seq for checkpoint in marks}
    hashes: dict[int, str] = {}  # the stored hash of each entry a checkpoint names

    last_mark = marks[-1].seq if marks else None

    def walked() -> Iterator[evidence.Row]:
        for row in rows:
            result.entries += 1
            result.head = (int(row[0]), str(row[7]))
            if row[0] in wanted:
                hashes[row[0]] = row[7]
            if last_mark is not None and row[0] > last_mark:
                result.uncovered += 1
            if row[4] == evidence.RESTORED:
                result.restores.append(_restore_line(row))
            yield row

    for _seq, problem in evidence.chain_problems(walked()):
        result.problem(problem)
    previous: tuple[int, datetime] | None = None
    for checkpoint in marks:
        result.checkpoints += 1
        result.last_checkpoint = checkpoint
        where = f"checkpoint #{checkpoint.seq}"
        stored = hashes.get(checkpoint.seq)
        if stored is None:
            result.problem(f"{where}: entry {checkpoint.seq} is not in the log (entries removed)")
        elif stored != checkpoint.head:
            result.problem(
                f"{where}: entry {checkpoint.seq}'s hash is not the timestamped head "
                "(the log up to it was rewritten)"
            )
        checked = check_token(checkpoint.token, checkpoint.statement(), roots)
        result.last_timestamp = checked.time
        if not checked.ok:
            result.problem(f"{where}: {checked.detail}")
        if checked.time is not None:
            if previous is not None and checked.time < previous[1]:
                result.problem(
                    f"{where} is timestamped before checkpoint #{previous[0]}, which it follows"
                )
            previous = (checkpoint.seq, checked.time)
    return result


def _restore_line(row: evidence.Row) -> str:
    """What a ``Restored`` entry says: when, from which backup, which numbers it skips."""
    try:
        detail = json.loads(str(row[5]))
    except ValueError:
        detail = None
    if not isinstance(detail, dict):
        detail = {}
    when = datetime.fromtimestamp(float(row[1]), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    line = (
        f"#{row[0]}, {when}: restored from the backup of {detail.get('backup_time', '?')}, "
        f"MANIFEST SHA-256 {detail.get('manifest_sha256', '?')}"
    )
    unlogged = detail.get("unlogged")
    if isinstance(unlogged, list) and len(unlogged) == 2:
        line += (
            f"; #{unlogged[0]} to #{unlogged[1]} are not in this log (made on the lost "
            "installation after the backup, or never)"
        )
    return line + "; check that a backup with that MANIFEST exists (sha256sum MANIFEST)"


def export(checkpoints: Iterable[Checkpoint], directory: Path) -> list[Path]:
    """Write each checkpoint as ``checkpoint-<seq>.dat`` (the statement) and ``.tst``
    (the DER token), for ``openssl ts -verify -data X.dat -in X.tst -token_in``."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for checkpoint in checkpoints:
        stem = directory / f"checkpoint-{checkpoint.seq:010d}"
        stem.with_suffix(".dat").write_bytes(checkpoint.statement())
        stem.with_suffix(".tst").write_bytes(checkpoint.token)
        written += [stem.with_suffix(".dat"), stem.with_suffix(".tst")]
    return written


def _who(name: asn1_x509.Name) -> str:
    native = name.native if isinstance(name.native, dict) else {}
    common_name = native.get("common_name")
    if isinstance(common_name, list):
        common_name = common_name[0] if common_name else None
    return repr(str(common_name)[:120]) if common_name else repr(name.human_friendly[:200])


def _why(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:160] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_embedded(
    raw: object, entries: list[dict[str, Any]], roots: list[asn1_x509.Certificate]
) -> TokenCheck:
    """Check a certificate's ``evidence_log.checkpoint`` against its (checked) entries.

    The checkpoint must cover the last entry; when it is that very entry, its head must
    be the entry's hash (a direct link). When it is a later one, the entries between are
    other messages' and only the gateway's log links them (``certifica evidence
    verify``); the token still dates the log up to the checkpoint.
    """
    if not isinstance(raw, dict):
        return TokenCheck(False, "evidence_log.checkpoint is not an object")
    seq, head, time, token = raw.get("seq"), raw.get("head"), raw.get("time"), raw.get("token")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(head, str):
        return TokenCheck(False, "the checkpoint has no valid seq and head")
    if not isinstance(time, str) or not isinstance(token, str):
        return TokenCheck(False, f"checkpoint #{seq} has no valid time and token")
    try:
        when = float(time)
        der = base64.b64decode(token, validate=True)
    except ValueError:
        return TokenCheck(False, f"checkpoint #{seq}'s time or token cannot be read")
    if repr(when) != time:
        return TokenCheck(False, f"checkpoint #{seq}'s time is not in canonical form")
    last = entries[-1]["seq"] if entries else 0
    if seq < last:
        return TokenCheck(False, f"checkpoint #{seq} does not cover entry {last}")
    same = next((e for e in entries if e["seq"] == seq), None)
    if same is not None and same["hash"] != head:
        return TokenCheck(False, f"checkpoint #{seq}'s head is not the hash of entry {seq}")
    checked = check_token(der, statement(seq, head, when), roots)
    if not checked.ok:
        return TokenCheck(False, f"checkpoint #{seq}: {checked.detail}", checked.time)
    link = (
        "it is the last entry's own hash"
        if same is not None
        else f"entries {last + 1} to {seq} of the gateway's log link it to the last entry"
    )
    return TokenCheck(True, f"checkpoint #{seq} {checked.detail}; {link}", checked.time)
