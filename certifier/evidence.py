"""The evidence log: an append-only, hash-chained record of every event.

Each entry carries the SHA-256 of the previous entry, so that removing, reordering or
editing any row breaks the chain from that row on (the same construction as a
Certificate Transparency or git history, minus the tree). Event names follow
ETSI EN 319 522-2 where one fits:

``SubmissionAcceptance``, ``SubmissionRejection``, ``RelayToNonERDS`` (the remote
server said 2xx), ``RelayToNonERDSFailure`` (5xx, retries exhausted, later DSN),
``ContentHandover``, ``ReceivedFromNonERDS``; and the extensions ``RelayAttemptDeferred``,
``CertificateIssued``, ``NoticeSent``, ``Restored`` (the gateway was restored from a
backup: :data:`RESTORED`).

The log lives in the gateway's database, stored and read by the queue package
(``relay/queue/evidence_log.py``, the only code that writes SQL); this module computes
entries and checks the rows it is handed, so it depends on neither the relay nor a
database. Checkpoints of the chain head, timestamped by an RFC 3161 authority, are
:mod:`certifier.checkpoints`.

Two entry formats, both in every log made since the second one exists:

- **Format 2** (every entry made now): the personal values of an entry, its
  ``recipient`` and its ``detail``, are covered through a salted commitment,
  ``commitment = SHA-256(salt || [recipient, detail])`` (the 32 random bytes of ``salt``,
  then the compact ASCII JSON array), and the entry's hash is SHA-256 over the compact
  JSON array ``[2, prev_hash, seq, time, qid, event, commitment]``. The values and the
  salt are stored beside the commitment, so they can be forgotten (erasure and retention,
  docs/erasure.md: values and salt removed, commitment kept) while every hash of the
  chain still recomputes. Without the salt, the commitment says nothing about the
  address it covers: it cannot be tested against a list of guesses.
- **Format 1** (entries made before): the hash is SHA-256 over
  ``[prev_hash, seq, time, qid, recipient, event, detail]``. A forgotten format-1 entry
  keeps its stored hash; the chain checks it by its links only (the next entry's hash
  covers it, and so do the timestamped checkpoints).

In both, arrays are compact JSON in ASCII (``\\uXXXX`` escapes), ``time`` is the
shortest decimal form of the entry's time (Python's ``repr`` of the float) and
``detail`` the JSON text of the detail object exactly as stored (keys sorted, compact).
A certificate embeds its message's entries in that form (:func:`excerpt_entry`, format
``certifica-log-excerpt/2``: each entry's ``time`` and ``detail`` are those two strings,
and a format-2 entry has its ``salt``, so anyone can recompute its hash without this
code, even after the gateway forgot the values); :func:`verify_excerpt` checks one
offline. The entries of one message are not contiguous in the log (other messages'
entries come between them), so an excerpt proves each entry's content and the links
between consecutive entries only; the rest of the chain is checked on the gateway
(:func:`chain_problems`, ``certifica evidence verify``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
EXCERPT_FORMAT = "certifica-log-excerpt/2"
EXCERPT_FORMATS = ("certifica-log-excerpt/1", EXCERPT_FORMAT)
"""Excerpt formats :func:`verify_excerpt` reads (certificates made before format 2 say /1)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_YEAR_10000 = 253_402_300_800.0  # what a timeline's ISO 8601 time can still say

Row = tuple[int, float, str, str | None, str, str, str, str, str | None, str | None, float | None]
"""An entry as stored: seq, time, qid, recipient, event, detail (its JSON text, as
hashed), prev_hash, hash, salt (hex; None for format 1 or once forgotten), commitment
(hex; None for format 1), erased (when the values were forgotten, else None)."""

RESTORED = "Restored"
"""The entry ``certifica restore`` makes (README, "Backups and restore"). Entries made on
the lost installation after the backup are not in the restored log, and their sequence
numbers must never be issued again: a Restored entry is numbered past them, chained to
the backup's head, and its detail declares the numbers it skips as ``"unlogged": [first,
last]``. That is the one gap :func:`chain_problems` accepts."""

FORGOTTEN = {"erased": True}
"""What a forgotten entry's detail holds (plus the residue the forgetting kept)."""

FORGOTTEN_EVENT = "EvidenceForgotten"
"""The entry that declares which entries were just forgotten (:func:`forgotten_digest`)."""
FORGETTING_QID = "evidence"
"""The queue id of those declarations: about the log, not about one message, so that no
retention or erasure of a message ever forgets them."""


@dataclass(frozen=True)
class Entry:
    seq: int
    time: float
    qid: str
    recipient: str | None
    event: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str
    salt: str | None = None
    commitment: str | None = None


def _ascii_json(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def commitment(salt: str, recipient: str | None, detail_json: str) -> str:
    """The salted commitment to a format-2 entry's personal values (hex SHA-256)."""
    return hashlib.sha256(bytes.fromhex(salt) + _ascii_json([recipient, detail_json])).hexdigest()


def entry_hash_v2(
    prev_hash: str, seq: int, time: float, qid: str, event: str, commitment: str
) -> str:
    """The chained hash of a format-2 entry: it covers the commitment, not the values."""
    return hashlib.sha256(
        _ascii_json([2, prev_hash, seq, repr(time), qid, event, commitment])
    ).hexdigest()


def entry_hash(
    prev_hash: str,
    seq: int,
    time: float,
    qid: str,
    recipient: str | None,
    event: str,
    detail_json: str,
) -> str:
    """The chained hash of one entry: SHA-256 over a canonical JSON array of its fields."""
    canonical = json.dumps(
        [prev_hash, seq, repr(time), qid, recipient, event, detail_json],
        ensure_ascii=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def canonical_detail(detail: dict[str, Any]) -> str:
    """The JSON text an entry's detail is stored and hashed as."""
    return json.dumps(detail, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def next_entry(
    last: tuple[int, str] | None,
    time: float,
    qid: str,
    event: str,
    detail: dict[str, Any],
    recipient: str | None = None,
    salt: str | None = None,
) -> tuple[Entry, str]:
    """The format-2 entry that follows ``last`` (the log's head as (seq, hash); None for
    an empty log), with its detail's JSON text as it must be stored. ``salt``: 64 hex
    digits, random when not given."""
    # The column is REAL: an int time (5) reads back as 5.0, whose repr differs, and the
    # entry would no longer verify. Hash what is stored.
    time = float(time)
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
    detail_json = canonical_detail(detail)
    salt = salt if salt is not None else secrets.token_hex(32)
    committed = commitment(salt, recipient, detail_json)
    digest = entry_hash_v2(prev, seq, time, qid, event, committed)
    entry = Entry(seq, time, qid, recipient, event, detail, prev, digest, salt, committed)
    return entry, detail_json


def forgotten_detail(detail_json: str, keep: Iterable[str] = ()) -> str:
    """The detail a forgotten entry keeps: :data:`FORGOTTEN` and the ``keep`` keys of the
    old detail (a residue outside the hash, such as a tracking hit's classification)."""
    try:
        old = json.loads(detail_json)
    except ValueError:
        old = {}
    residue = {k: old[k] for k in keep if isinstance(old, dict) and k in old}
    return canonical_detail({**residue, **FORGOTTEN})


def forgotten_digest(rows: Iterable[Row]) -> str:
    """SHA-256 over the forgotten entries as they are stored right after forgetting (seq,
    time, qid, recipient, event, detail, hash, commitment of each, in seq order, as a
    compact ASCII JSON array): the declaration entry (:data:`FORGOTTEN_EVENT`) records it,
    so what a forgotten entry still holds (its time, its event, the residue kept in its
    detail) can no longer be changed unseen, even for a format-1 entry whose own hash
    cannot be recomputed any more."""
    items = [
        [r[0], repr(r[1]), r[2], r[3], r[4], r[5], r[7], r[9]]
        for r in sorted(rows, key=lambda r: r[0])
    ]
    return hashlib.sha256(_ascii_json(items)).hexdigest()


def row_problem(row: Row) -> str | None:
    """Why a stored entry does not match its own hash, or None. A forgotten format-1
    entry cannot be recomputed: its links and the declaration that forgot it
    (:func:`forgotten_digest`) are what check it."""
    seq, time, qid, recipient, event, detail_json, prev_hash, digest, salt, committed, erased = row
    if committed is None:
        if erased is not None:
            return None
        if entry_hash(prev_hash, seq, time, qid, recipient, event, detail_json) != digest:
            return f"entry {seq} was altered (its content does not match its hash)"
        return None
    if erased is None and (salt is None or commitment(salt, recipient, detail_json) != committed):
        return f"entry {seq} was altered (its values do not match their commitment)"
    if entry_hash_v2(prev_hash, seq, time, qid, event, committed) != digest:
        return f"entry {seq} was altered (its content does not match its hash)"
    return None


def excerpt_entry(row: Row) -> dict[str, Any]:
    """A stored entry as a certificate embeds it: every hashed field, as hashed.

    Made from the stored columns (not re-serialised from :class:`Entry`), so that the
    hash of each excerpt entry recomputes even for a detail that would not survive a
    JSON round trip unchanged.
    """
    seq, time, qid, recipient, event, detail_json, prev_hash, digest, salt, committed, erased = row
    out: dict[str, Any] = {
        "seq": seq,
        "time": repr(time),
        "qid": qid,
        "recipient": recipient,
        "event": event,
        "detail": detail_json,
        "prev": prev_hash,
        "hash": digest,
    }
    if committed is not None:
        # A forgotten entry has no salt: its commitment is all that is left to hash.
        out.update({"salt": salt} if erased is None and salt else {"commitment": committed})
    return out


def chain_problems(rows: Iterable[Row]) -> Iterator[tuple[int, str]]:
    """Walk a whole chain (every stored entry, in order) and yield (seq, sentence) for
    every problem, in order.

    It goes on after the first break, checking each entry against its own stored
    predecessor hash, so one edited row is one or two lines and not "everything after
    row N". Numbers missing before an entry are a problem unless that entry is a
    :data:`RESTORED` one declaring exactly them.
    """
    expected_prev, expected_seq = GENESIS, 1
    for row in rows:
        seq, prev_hash, digest = row[0], row[6], row[7]
        if seq != expected_seq and not _declared_gap(row, expected_seq):
            missing = (
                f"entry {expected_seq} is"
                if seq == expected_seq + 1
                else f"entries {expected_seq} to {seq - 1} are"
            )
            yield seq, f"{missing} missing before entry {seq}"
        if prev_hash != expected_prev:
            yield seq, f"entry {seq} does not follow the previous entry"
        problem = row_problem(row)
        if problem:
            yield seq, problem
        expected_prev, expected_seq = digest, seq + 1


def _declared_gap(row: Row, expected_seq: int) -> bool:
    """Whether ``row`` is a :data:`RESTORED` entry that declares exactly the numbers
    from ``expected_seq`` to the one before its own as unlogged. Its detail is covered
    by its hash; once forgotten (retention), its event name, which the hash covers too,
    is what is left to go by."""
    seq, event, detail_json, erased = row[0], row[4], row[5], row[10]
    if event != RESTORED or seq <= expected_seq:
        return False
    if erased is not None:
        return True
    try:
        detail = json.loads(detail_json)
    except ValueError:
        return False
    return isinstance(detail, dict) and detail.get("unlogged") == [expected_seq, seq - 1]


def iso_time(ts: float) -> str:
    """An entry time as the certificate's timeline writes it (UTC, milliseconds)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class ExcerptReport:
    """What :func:`verify_excerpt` found: problems (empty when it passed) and a summary."""

    problems: tuple[str, ...]
    summary: str
    entries: tuple[dict[str, Any], ...] = ()


def verify_excerpt(log: object, timeline: object, queue_id: object) -> ExcerptReport:
    """Check a certificate's ``evidence_log`` (format :data:`EXCERPT_FORMAT`) offline.

    Every entry's hash is recomputed from its fields; consecutive entries (seq n and
    n+1) must be linked (the later one's ``prev`` is the earlier one's hash); every
    entry belongs to *queue_id*; ``head`` is the last entry's hash; and the timeline
    lists the same events, recipients and times in the same order.
    """
    problems: list[str] = []
    if not isinstance(log, dict):
        return ExcerptReport(("the evidence has no evidence_log object",), "")
    raw_entries = log.get("entries")
    if not isinstance(raw_entries, list):
        return ExcerptReport(("evidence_log.entries is not a list",), "")
    entries: list[dict[str, Any]] = []
    forgotten = 0
    for n, raw in enumerate(raw_entries, start=1):
        problem = _entry_shape_problem(raw)
        if problem:
            problems.append(f"log entry {n} in the certificate {problem}")
            continue
        assert isinstance(raw, dict)
        entries.append(raw)
        seq = raw["seq"]
        if "commitment" in raw and "salt" not in raw:
            forgotten += 1
            if raw["recipient"] is not None or _detail_of(raw["detail"]).get("erased") is not True:
                problems.append(
                    f"entry {seq} claims values the gateway says it forgot: they are not "
                    "covered by its hash"
                )
        digest = _excerpt_hash(raw)
        if digest != raw["hash"]:
            problems.append(
                f"entry {seq} was altered: its fields hash to {digest[:16]}..., "
                f"not to the recorded {raw['hash'][:16]}..."
            )
        if raw["qid"] != queue_id:
            problems.append(f"entry {seq} is about queue id {raw['qid'][:40]!r}, not this message")
    links = checked_links = 0
    for before, after in zip(entries, entries[1:], strict=False):
        if after["seq"] <= before["seq"]:
            problems.append(f"entry {after['seq']} comes after entry {before['seq']}: out of order")
            continue
        links += 1
        if after["seq"] == before["seq"] + 1:
            checked_links += 1
            if after["prev"] != before["hash"]:
                problems.append(f"entry {after['seq']} does not follow entry {before['seq']}")
    expected_head = entries[-1]["hash"] if entries else GENESIS
    if len(entries) == len(raw_entries) and log.get("head") != expected_head:
        problems.append("evidence_log.head is not the hash of the last entry")
    problems.extend(_timeline_problems(entries, raw_entries, timeline))
    if not entries:
        summary = "The certificate lists no log entries."
    else:
        first, last = entries[0]["seq"], entries[-1]["seq"]
        if checked_links == links:
            chained = f"the {links} links between them hold"
        else:
            chained = (
                f"{checked_links} of {links} links between them checked "
                "(the others pass through other messages' entries)"
            )
        summary = (
            f"{len(entries)} log entries (#{first} to #{last}) match their hashes; "
            f"{chained}; the timeline lists them"
        )
        if forgotten:
            summary += (
                f"; the gateway had forgotten the values of {forgotten} of them (retention "
                "or erasure) before this document was made: their content is not certified"
            )
    return ExcerptReport(tuple(problems), summary, tuple(entries))


def _detail_of(detail_json: str) -> dict[str, Any]:
    try:
        value = json.loads(detail_json)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _excerpt_hash(raw: dict[str, Any]) -> str:
    """The hash an excerpt entry's fields give: format 2 when it has a salt (or, once
    forgotten, only its commitment), else format 1."""
    time = float(raw["time"])
    if "salt" in raw or "commitment" in raw:
        committed = (
            commitment(raw["salt"], raw["recipient"], raw["detail"])
            if "salt" in raw
            else raw["commitment"]
        )
        return entry_hash_v2(raw["prev"], raw["seq"], time, raw["qid"], raw["event"], committed)
    return entry_hash(
        raw["prev"], raw["seq"], time, raw["qid"], raw["recipient"], raw["event"], raw["detail"]
    )


def _entry_shape_problem(raw: object) -> str | None:
    if not isinstance(raw, dict):
        return "is not an object"
    want = {"seq", "time", "qid", "recipient", "event", "detail", "prev", "hash"}
    missing = sorted(want - set(raw))
    if missing:
        return f"lacks {', '.join(missing)}"
    seq, time = raw["seq"], raw["time"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "has no valid seq"
    if not isinstance(time, str):
        return f"(entry {seq}) has a time that is not the hashed decimal string"
    try:
        value = float(time)
    except ValueError:
        return f"(entry {seq}) has a time that is not a number"
    if not math.isfinite(value) or repr(value) != time:
        return f"(entry {seq}) has a time that is not in canonical form"
    if not 0 <= value < _YEAR_10000:
        return f"(entry {seq}) has a time outside the calendar"
    for key in ("qid", "event", "detail"):
        if not isinstance(raw[key], str):
            return f"(entry {seq}) has a {key} that is not a string"
    if raw["recipient"] is not None and not isinstance(raw["recipient"], str):
        return f"(entry {seq}) has a recipient that is neither a string nor null"
    for key in ("prev", "hash", "commitment"):
        if key in raw and (not isinstance(raw[key], str) or not _HEX64.fullmatch(raw[key])):
            return f"(entry {seq}) has a {key} that is not a SHA-256 in hex"
    if "salt" in raw and (not isinstance(raw["salt"], str) or not _HEX64.fullmatch(raw["salt"])):
        return f"(entry {seq}) has a salt that is not 64 hexadecimal digits"
    return None


def _timeline_problems(
    entries: list[dict[str, Any]], raw_entries: list[Any], timeline: object
) -> list[str]:
    if not isinstance(timeline, list):
        return ["the evidence has no timeline list"]
    if len(timeline) != len(raw_entries):
        return [f"the timeline has {len(timeline)} events, the log excerpt {len(raw_entries)}"]
    if len(entries) != len(raw_entries):
        return []  # already reported: an entry that cannot be read cannot be compared
    problems = []
    for item, entry in zip(timeline, entries, strict=True):
        seq = entry["seq"]
        if not isinstance(item, dict):
            problems.append(f"the timeline event for entry {seq} is not an object")
            continue
        if item.get("event") != entry["event"]:
            problems.append(f"the timeline says {str(item.get('event'))[:60]!r} for entry {seq}")
        if item.get("recipient") != entry["recipient"]:
            problems.append(f"the timeline names another recipient for entry {seq}")
        if item.get("time") != iso_time(float(entry["time"])):
            problems.append(f"the timeline gives another time for entry {seq}")
    return problems
