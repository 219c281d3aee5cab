"""``certifica export --subject ADDRESS DIR``: everything the gateway holds about one
e-mail address, for a request of access (GDPR art. 15; docs/erasure.md).

DIR (new or empty) receives one JSON file per kind of record (:mod:`relay.queue.subjects`
finds them), copies of the messages kept in the spool and of the archived certificates
about those messages, ``README.txt`` saying in plain words what each file is, and
``MANIFEST.sha256`` (``sha256sum -c MANIFEST.sha256`` checks every file). After an
erasure it says what remains: records that name the address only by its commitment.
Everything is written into a temporary directory beside DIR and renamed into place when
complete, so an error leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_OK, UserError, config_of, open_store

_JSON_COLUMNS = ("summary", "authentication", "reception", "original_to", "detail")
_RECIPIENT_JSON = ("delivered_copy", "tracking_notes")


def subject_address(text: str, cfg: Any) -> str:
    """The ``--subject`` argument, normalised; a one-line refusal when it is no address,
    or one of the gateway's own (the certification address is in the Cc of every
    certified message: erasing it would erase them all)."""
    from relay.addresses import local_domains
    from relay.queue.subjects import looks_like_address, normalise

    address = normalise(text)
    if not looks_like_address(address):
        raise UserError(f"{text!r} is not an e-mail address (like bob@example.org)")
    if address.rpartition("@")[2].rstrip(".") in local_domains(cfg):
        raise UserError(
            f"{address} is an address of the gateway itself, not of a person; "
            "give the address of the person who asked"
        )
    return address


def subject_key(cfg: Any) -> bytes:
    """The installation's secret for commitments (``keys/subject.key``), made here if the
    gateway never ran (:func:`relay.process.gateway.secret`)."""
    from relay.process.gateway import SUBJECT_KEY, secret, state_paths

    return secret(state_paths(cfg)["keys"] / SUBJECT_KEY)


def cmd_export(args: argparse.Namespace) -> int:
    from relay.process.gateway import state_paths
    from relay.queue import subjects
    from relay.queue.spool import SPOOL_QUEUE

    cfg = config_of(args)
    address = subject_address(args.subject, cfg)
    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not an empty directory: give a new or empty one")
    with open_store(cfg) as store:
        key = subject_key(cfg)
        committed = subjects.commitment(key, address)
        found = store.run_sync(lambda db: subjects.holdings(db.conn, address, committed), read=True)
    paths = state_paths(cfg)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    try:
        copied = _write(partial, found, paths["spool"], SPOOL_QUEUE, paths["certificates"])
        if target.exists():
            target.rmdir()
        os.replace(partial, target)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    counts = found.counts()
    print(
        f"{address}: {counts['messages']} message(s), {counts['evidence_entries']} evidence "
        f"entr{'y' if counts['evidence_entries'] == 1 else 'ies'}, {copied} file(s) copied; "
        f"written to {target} (see README.txt; check with sha256sum -c MANIFEST.sha256)"
    )
    return EXIT_OK


def _readable(row: dict[str, Any], columns: tuple[str, ...]) -> dict[str, Any]:
    out = dict(row)
    for column in columns:
        value = out.get(column)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                out[column] = json.loads(value)
            except ValueError:
                pass
    for column, value in out.items():
        if isinstance(value, bytes):
            out[column] = value.decode("utf-8", "replace")
    return out


def _messages(found: Any) -> list[dict[str, Any]]:
    from relay.queue.subjects import is_sender

    out = []
    for message in found.messages:
        row = _readable(message, _JSON_COLUMNS)
        # The recipients of what the address sent are its own record; of a message it
        # received, only its own row: the others are other people's data.
        mine = is_sender(message)
        row["recipients"] = [
            _readable(r, _RECIPIENT_JSON)
            for r in message["recipients"]
            if mine
            or r["address"] in (found.address, found.committed)
            or r["address"].lower() == found.address
        ]
        out.append(row)
    return out


def _write(root: Path, found: Any, spool_root: Path, queue_dir: str, certificates: Path) -> int:
    records: dict[str, Any] = {
        "messages.json": _messages(found),
        "evidence.json": [_readable(e, _JSON_COLUMNS) for e in found.evidence],
        "tracking.json": {"events": found.tracking_events, "links": found.tracking_links},
        "verification-pages.json": [_readable(v, ("recipients",)) for v in found.verifications],
        "account.json": {
            "users": found.users,
            "reception_owners": found.reception_owners,
            "reception_acks": found.reception_acks,
        },
        "legal-holds.json": found.legal_holds,
        "erasures.json": [_readable(e, _JSON_COLUMNS) for e in found.erasures],
    }
    for name, value in records.items():
        (root / name).write_text(
            json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
    copied = 0
    for qid in found.qids:
        for where in (spool_root / queue_dir, spool_root / "archive"):
            source = where / f"{qid}.eml"
            if source.exists():
                (root / "messages").mkdir(exist_ok=True)
                shutil.copyfile(source, root / "messages" / f"{qid}.eml")
                copied += 1
                break
    for cert_id in found.cert_ids:
        source = certificates / f"{cert_id}.pdf"
        if source.exists():
            (root / "certificates").mkdir(exist_ok=True)
            shutil.copyfile(source, root / "certificates" / f"{cert_id}.pdf")
            copied += 1
    (root / "README.txt").write_text(_readme(found, copied), encoding="utf-8")
    _manifest(root)
    return copied


def _readme(found: Any, copied: int) -> str:
    counts = found.counts()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"What this mail gateway holds about {found.address}",
        f"Written on {when} (GDPR article 15: the right of access).",
        "",
        "The gateway relays and certifies e-mail: it records who sent what to whom, when,",
        "and what each recipient's mail server answered, and it issues signed PDF",
        "certificates of that. This folder holds every record of it that names this address.",
        "",
        f"messages.json          {counts['messages']} message(s) sent or received by the address,",
        "                       or naming it, with their recipients (of a message the address",
        "                       received, only its own recipient record) and the documents",
        "                       made about them.",
        f"evidence.json          {counts['evidence_entries']} entries of the evidence log that name it.",
        f"tracking.json          {counts['tracking_events']} opening(s) and click(s) of its copies.",
        f"verification-pages.json  {counts['verifications']} record(s) behind the public",
        "                       verification pages of those documents.",
        "account.json           its user account (without the password's hash), certified",
        "                       reception settings and proofs of receipt.",
        "legal-holds.json       messages kept under legal hold.",
        "erasures.json          erasures of this address already made.",
        f"messages/, certificates/  {copied} copies of the messages and certificates kept.",
        "MANIFEST.sha256        the SHA-256 of every file (check: sha256sum -c MANIFEST.sha256).",
        "",
    ]
    if found.erasures:
        dates = ", ".join(
            time.strftime("%Y-%m-%d", time.gmtime(float(e["time"]))) for e in found.erasures
        )
        lines += [
            f"This address was erased on {dates}. What remains names it only by a code",
            f"({found.committed}), computed with a secret key of this installation, that",
            "links the records of one person without saying who: the hashes and the",
            "evidence log that keep every certificate already issued verifiable. The",
            "certificates the sender holds still prove what they prove.",
            "",
        ]
    lines += [
        "Not in this folder: the gateway's log lines, kept by the operating system's",
        "journal under the operator's retention settings.",
    ]
    return "\n".join(lines) + "\n"


def _manifest(root: Path) -> None:
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(root).as_posix()}")
    (root / "MANIFEST.sha256").write_text("\n".join(lines) + "\n", encoding="utf-8")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica export`` to the subcommands."""
    p = sub.add_parser(
        "export",
        help="everything held about an e-mail address (GDPR access request)",
        description="Write into DIR (new or empty) everything the gateway holds about an "
        "e-mail address: its messages, evidence entries, opens and clicks, verification "
        "records and account as JSON, copies of the messages and certificates kept, a "
        "README.txt in plain words and MANIFEST.sha256. After an erasure it says what "
        "remains (records naming the address only by its commitment).",
    )
    p.add_argument("--subject", required=True, metavar="ADDRESS", help="the e-mail address")
    p.add_argument("dir", metavar="DIR", help="a new or empty directory to write into")
    p.set_defaults(func=cmd_export)
