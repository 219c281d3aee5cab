"""``certifica export --subject ADDRESS DIR``: everything the gateway holds about one
e-mail address or phone number, for a request of access (GDPR art. 15; docs/erasure.md).
A phone number's SMS records (its contacts, opt-outs, the messages it sent, the SMS it
received with their parts and receipts, those it was left out of) are ``sms.json``.

DIR (new or empty) receives one JSON file per kind of record (:mod:`relay.queue.subjects`
finds them), copies of the messages kept in the spool and of the archived certificates
about those messages, ``README.txt`` saying in plain words what each file is (in the
person's language: ``--language``, else theirs as a user, else ``[gateway] language``), and
``MANIFEST.sha256`` (``sha256sum -c MANIFEST.sha256`` checks every file). After an
erasure it says what remains: records that name the address only by its commitment.
Everything is written into a temporary directory beside DIR and renamed into place when
complete, so an error leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from certifier.i18n import LANGUAGES
from relay.cli.common import (
    EXIT_OK,
    UserError,
    config_of,
    open_store,
    refuse_unless_empty,
    written_at_once,
)

if TYPE_CHECKING:
    from relay.queue.store import Store

_JSON_COLUMNS = ("summary", "authentication", "reception", "original_to", "detail")
_RECIPIENT_JSON = ("delivered_copy", "tracking_notes")
# Of a message the address did not send, what is the sender's alone: where it connected
# from, its login and its authentication results (message columns; the same values
# under the evidence details' names). The other recipients are left out separately.
_SENDER_CONNECTION = frozenset(
    {"client_ip", "client_helo", "auth_user", "authentication", "authenticated_user"}
)
WITHHELD = "[withheld]"
"""What replaces another person's address in a record exported to someone else."""
# An address inside a text (a header, a report). Not '=' in the local part: a DKIM
# signature's ``i=@domain`` is no address.
_ADDRESS = re.compile(r"[\w.!#$%&'*+/?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def subject_address(text: str, cfg: Any) -> str:
    """The ``--subject`` argument, normalised; a one-line refusal when it is no address,
    or one of the gateway's own (the certification address is in the Cc of every
    certified message: erasing it would erase them all). A phone number (``+34600111222``,
    national in ``[sms] default_region``, or its SMS address ``+34600111222@sms.<domain>``)
    becomes its E.164 form (docs/erasure.md, "Phone numbers")."""
    from relay.addresses import local_domains
    from relay.queue.subjects import looks_like_address, normalise
    from relay.sms.numbers import is_sms_address

    address = normalise(text)
    local, at, _domain = address.rpartition("@")
    if at and is_sms_address(address, cfg.gateway.domain):
        return _phone(local, cfg)
    if not at and address[:1] in tuple("+0123456789"):
        return _phone(address, cfg)
    if not looks_like_address(address):
        raise UserError(
            f"{text!r} is not an e-mail address (like bob@example.org) nor a phone number"
            " (like +34600111222)"
            if not at and any(c.isdigit() for c in address)
            else f"{text!r} is not an e-mail address (like bob@example.org)"
        )
    if address.rpartition("@")[2].rstrip(".") in local_domains(cfg):
        raise UserError(
            f"{address} is an address of the gateway itself, not of a person; "
            "give the address of the person who asked"
        )
    return address


def _phone(text: str, cfg: Any) -> str:
    """A phone number given as the subject, in E.164; the refusal's one sentence if not."""
    from relay.sms.numbers import SmsNumber, parse_number

    found = parse_number(text, cfg.sms.default_region)
    if not isinstance(found, SmsNumber):
        raise UserError(f"{found.sentence.rstrip('.')} (--subject)")
    return str(found.e164)


def subject_key(cfg: Any, store: Store) -> bytes:
    """The installation's secret for commitments (``keys/subject.key``), made here if the
    gateway never ran; refused (one line) when it is missing from a state directory whose
    database already holds erasures (:func:`relay.process.gateway.subject_key`)."""
    from certifier.errors import StartupError
    from relay.process.gateway import state_paths
    from relay.process.gateway import subject_key as load
    from relay.queue.subjects import holds_erasures

    def erasures() -> bool:
        return store.run_sync(lambda db: holds_erasures(db.conn), read=True)

    try:
        return load(state_paths(cfg)["keys"], erasures)
    except StartupError as err:
        raise UserError(str(err)) from None


def cmd_export(args: argparse.Namespace) -> int:
    from relay.process.gateway import state_paths
    from relay.queue import subjects
    from relay.queue.spool import SPOOL_QUEUE

    cfg = config_of(args)
    address = subject_address(args.subject, cfg)
    target = Path(args.dir)
    refuse_unless_empty(target)  # before the database is opened
    with open_store(cfg) as store:
        key = subject_key(cfg, store)
        committed = subjects.commitment(key, address)
        found = store.run_sync(lambda db: subjects.holdings(db.conn, address, committed), read=True)
    paths = state_paths(cfg)
    # The person's own language when it is a user who chose one, else the gateway's.
    chosen = [u["language"] for u in found.users if u.get("language")]
    language = args.language or (chosen[0] if chosen else cfg.gateway.language)
    zones = [u["timezone"] for u in found.users if u.get("timezone")]
    timezone = zones[0] if zones else cfg.gateway.timezone
    with written_at_once(target) as partial:
        copied = _write(
            partial, found, paths["spool"], SPOOL_QUEUE, paths["certificates"], language, timezone
        )
    counts = found.counts()
    sms = (
        f"{len(found.sms['contacts'])} contact(s), {len(found.sms['optouts'])} opt-out(s), "
        f"{len(found.sms['sent'])} SMS sent and {len(found.sms['received'])} received, "
        if found.sms
        else ""
    )
    print(
        f"{address}: {counts['messages']} message(s), {counts['evidence_entries']} evidence "
        f"entr{'y' if counts['evidence_entries'] == 1 else 'ies'}, {sms}{copied} file(s) "
        f"copied; written to {target} (see README.txt; check with sha256sum -c MANIFEST.sha256)"
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


class _Others:
    """Keeps other people out of an export (docs/erasure.md, "Access"). Of a message the
    address sent, everything is its own record. Of any other message (one it received,
    one naming it, a document about one of those): only its own recipient row and
    evidence entries, no value of the sender's connection (:data:`_SENDER_CONNECTION`),
    and in every other text each address but its own and the sender's becomes
    :data:`WITHHELD`; a list item that is another address (a Bcc recipient) is left out,
    so not even their number shows."""

    def __init__(self, found: Any) -> None:
        from relay.queue.subjects import Matcher, is_sender, normalise

        self.subject = {found.address, found.committed}
        self._match = Matcher(found.address, found.committed)  # a phone: its SMS address too
        self.by_qid = {m["qid"]: m for m in found.messages}
        self.sent = {m["qid"] for m in found.messages if is_sender(m)}
        grew = True
        while grew:  # the documents and reports about what it sent are its record too
            more = {m["qid"] for m in found.messages if m.get("parent_qid") in self.sent}
            grew = bool(more - self.sent)
            self.sent |= more
        self._normalise = normalise

    def is_subject(self, value: object) -> bool:
        return self._match.is_subject(value) or (
            isinstance(value, str) and self._normalise(value) in self.subject
        )

    def allowed(self, qid: str) -> set[str]:
        """The addresses a record of message ``qid`` may show: the subject's and the
        sender's (which the message it received names anyway)."""
        message = self.by_qid.get(qid) or {}
        senders = (message.get(c) for c in ("sender", "header_from", "envelope_from"))
        return self.subject | {self._normalise(a) for a in senders if isinstance(a, str) and a}

    def withhold(self, value: Any, allowed: set[str]) -> Any:
        """``value`` (a JSON value) without the sender's connection and other addresses."""
        if isinstance(value, str):
            return _ADDRESS.sub(
                lambda m: (
                    m[0] if self._normalise(m[0]) in allowed or self.is_subject(m[0]) else WITHHELD
                ),
                value,
            )
        if isinstance(value, dict):
            return {
                k: self.withhold(v, allowed)
                for k, v in value.items()
                if k not in _SENDER_CONNECTION
            }
        if isinstance(value, list):
            return [self.withhold(v, allowed) for v in value if not self._foreign(v, allowed)]
        return value

    def _foreign(self, item: Any, allowed: set[str]) -> bool:
        if isinstance(item, dict):
            item = item.get("address", item.get("recipient"))
        return (
            isinstance(item, str)
            and _ADDRESS.fullmatch(item.strip().strip("<>")) is not None
            and self._normalise(item) not in allowed
            and not self.is_subject(item)
        )


def _messages(found: Any, others: _Others) -> list[dict[str, Any]]:
    out = []
    for message in found.messages:
        row = _readable(message, _JSON_COLUMNS)
        if message["qid"] in others.sent:
            # The recipients of what the address sent are its own record.
            row["recipients"] = [_readable(r, _RECIPIENT_JSON) for r in message["recipients"]]
            out.append(row)
            continue
        allowed = others.allowed(message["qid"])
        row = others.withhold(
            {k: v for k, v in row.items() if k != "recipients" and k != "roles"}, allowed
        )
        row["roles"] = message["roles"]
        row["recipients"] = [
            others.withhold(_readable(r, _RECIPIENT_JSON), allowed)
            for r in message["recipients"]
            if others.is_subject(r["address"])
        ]
        out.append(row)
    return out


def _evidence(found: Any, others: _Others) -> list[dict[str, Any]]:
    out = []
    for entry in found.evidence:
        row = _readable(entry, _JSON_COLUMNS)
        if entry["qid"] not in others.sent:
            if entry.get("recipient") and not others.is_subject(entry["recipient"]):
                continue  # another recipient's entry
            # Without the values left out, the salt would let anyone test guesses of
            # them against the entry's commitment: it goes too.
            row.pop("salt", None)
            row = others.withhold(row, others.allowed(entry["qid"]))
        out.append(row)
    return out


def _verifications(found: Any, others: _Others) -> list[dict[str, Any]]:
    out = []
    for record in found.verifications:
        row = _readable(record, ("recipients",))
        if record["qid"] not in others.sent and isinstance(row.get("recipients"), list):
            row["recipients"] = [
                r
                for r in row["recipients"]
                if isinstance(r, dict) and others.is_subject(r.get("address"))
            ]
        out.append(row)
    return out


def _sms(held: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``sms.json``: a phone number's SMS records (:func:`relay.queue.subjects.sms_holdings`),
    its own: the contacts by organisation (not who added them), the opt-outs with how and
    when, the messages it sent, the SMS sent to it with their parts and the operator's
    receipts (parsed), and the SMS it was left out of with the reason."""
    contacts = [{k: v for k, v in c.items() if k != "added_by"} for c in held["contacts"]]
    sent = [{k: v for k, v in _readable(m, ()).items() if k != "raw"} for m in held["sent"]]
    received = []
    for row in held["received"]:
        parts = []
        for part in row["parts"]:
            receipts = [_readable(r, ("fields",)) for r in part["receipts"]]
            parts.append({**part, "receipts": receipts})
        received.append({**row, "parts": parts})
    return {
        "contacts": contacts,
        "opt_outs": [_readable(o, ("detail",)) for o in held["optouts"]],
        "sent_by_the_phone": sent,
        "received": received,
        "left_out_of": held["skipped"],
    }


def _write(
    root: Path,
    found: Any,
    spool_root: Path,
    queue_dir: str,
    certificates: Path,
    language: str,
    timezone: str,
) -> int:
    others = _Others(found)
    records: dict[str, Any] = {
        "messages.json": _messages(found, others),
        "evidence.json": _evidence(found, others),
        "tracking.json": {"events": found.tracking_events, "links": found.tracking_links},
        "verification-pages.json": _verifications(found, others),
        "account.json": {
            "users": found.users,
            "app_passwords": found.app_passwords,
            "api_tokens": found.api_tokens,
            "web_sessions": found.web_sessions,
            "reception_owners": found.reception_owners,
            "reception_acks": found.reception_acks,
        },
        "legal-holds.json": found.legal_holds,
        "erasures.json": [_readable(e, _JSON_COLUMNS) for e in found.erasures],
    }
    if found.sms:
        records["sms.json"] = _sms(found.sms)
    for name, value in records.items():
        (root / name).write_text(
            json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
    copied = 0
    # The copies it sent or received; not another's mail that names it, nor the mail
    # carrying a sender's certificate.
    received = {m["qid"] for m in found.messages if "recipient" in m["roles"]}
    for qid in found.qids:
        if qid not in others.sent and qid not in received:
            continue
        for where in (spool_root / queue_dir, spool_root / "archive"):
            source = where / f"{qid}.eml"
            if source.exists():
                (root / "messages").mkdir(exist_ok=True)
                shutil.copyfile(source, root / "messages" / f"{qid}.eml")
                copied += 1
                break
    # A certificate belongs to the sender of its message, who holds it: it names every
    # recipient (README.txt says so when some are not copied).
    theirs = {m["cert_id"] for m in found.messages if m["qid"] not in others.sent}
    theirs |= {v["cert_id"] for v in found.verifications if v["qid"] not in others.sent}
    for cert_id in found.cert_ids:
        source = certificates / f"{cert_id}.pdf"
        if cert_id in theirs:
            continue
        if source.exists():
            (root / "certificates").mkdir(exist_ok=True)
            shutil.copyfile(source, root / "certificates" / f"{cert_id}.pdf")
            copied += 1
    withheld = bool(set(found.qids) - others.sent)
    (root / "README.txt").write_text(
        _readme(found, copied, withheld, language, timezone), encoding="utf-8"
    )
    _manifest(root)
    return copied


def _readme(found: Any, copied: int, withheld: bool, language: str, timezone: str) -> str:
    """README.txt for the person who asked, in their language (the ``mail`` catalog)."""
    from certifier.i18n import Reader, translations

    _ = translations(language, "mail").gettext
    reader = Reader(language, timezone)
    counts = found.counts()

    def para(text: str) -> str:
        return textwrap.fill(text, 78, break_long_words=False, break_on_hyphens=False)

    def item(name: str, text: str) -> str:
        return (
            name
            + "\n"
            + textwrap.fill(
                text, 78, initial_indent="    ", subsequent_indent="    ", break_long_words=False
            )
        )

    parts = [
        _("What this mail gateway holds about %(address)s") % {"address": found.address},
        para(
            _("Written on %(when)s, in answer to a request of access (article 15 of the GDPR).")
            % {"when": reader.moment(time.time())}
        ),
        para(
            _(
                "This gateway relays and certifies e-mail: it records who sent what to whom "
                "and when, and what each recipient's mail server answered, and it issues "
                "signed PDF certificates of that. This folder holds every record it keeps "
                "that names this address."
            )
        ),
        para(
            _(
                "Messages: %(messages)s. Evidence entries: %(entries)s. Opens and clicks: "
                "%(tracking)s. Copies of messages and certificates: %(files)s."
            )
            % {
                "messages": reader.number(counts["messages"]),
                "entries": reader.number(counts["evidence_entries"]),
                "tracking": reader.number(counts["tracking_events"]),
                "files": reader.number(copied),
            }
        ),
        _("What each file holds:"),
        item(
            "messages.json",
            _(
                "the messages sent or received by this address, or naming it, with their "
                "recipients (of a message it received, only its own record), and the "
                "documents made about them."
            ),
        ),
        item("evidence.json", _("the entries of the gateway's evidence log that name it.")),
        item("tracking.json", _("the times its copies were opened and their links followed.")),
        item(
            "verification-pages.json",
            _("what the public verification pages of those certificates show."),
        ),
        item(
            "account.json",
            _(
                "its user account (without the password), its certified reception settings "
                "and the proofs of receipt sent to it."
            ),
        ),
        item("legal-holds.json", _("the messages kept under legal hold.")),
        item("erasures.json", _("the erasures of this address already made.")),
        *(
            [
                item(
                    "sms.json",
                    _(
                        "for a phone number: the address books of organisations that hold it "
                        "(name, groups, consent to marketing and where it was given), its "
                        "requests to receive no more SMS, the messages the phone sent, the "
                        "SMS sent to it with each part's state and the operator's delivery "
                        "receipts, and the SMS it was left out of, with the reason."
                    ),
                )
            ]
            if found.sms
            else []
        ),
        item(
            "messages/, certificates/",
            _("copies of the messages and certificates the gateway keeps."),
        ),
        item(
            "MANIFEST.sha256", _("the SHA-256 fingerprint of every file; this command checks them:")
        )
        + "\n\n        sha256sum -c MANIFEST.sha256",
    ]
    if withheld:
        parts.append(
            para(
                _(
                    "Of the messages this address did not send, these files hold only what "
                    "is about it: the other recipients, where the sender connected from and "
                    "its login are left out, and other people's addresses are shown as "
                    "[withheld]. Their certificates are not copied: they name every "
                    "recipient, and the sender of each message holds its own."
                )
            )
        )
    if found.erasures:
        # "; " between them: each moment already has commas ("3 de diciembre de 2026, 11:42 ...").
        dates = "; ".join(reader.moment(float(e["time"])) for e in found.erasures)
        parts.append(
            para(
                _(
                    "This address was erased on %(dates)s. What remains names it only by a "
                    "code (%(code)s), computed with a secret key of this gateway, which links "
                    "the records of one person without saying who it is. It is kept with the "
                    "fingerprints and the evidence log, so that the certificates already "
                    "issued stay verifiable: the certificates their holders keep still prove "
                    "what they prove."
                )
                % {"dates": dates, "code": found.committed}
            )
        )
    parts.append(
        para(
            _(
                "Not in this folder: the gateway's log lines, which the operating system "
                "keeps for the period the operator set."
            )
        )
    )
    return "\n\n".join(parts) + "\n"


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
        help="everything held about an e-mail address or phone number (GDPR access request)",
        description="Write into DIR (new or empty) everything the gateway holds about an "
        "e-mail address or a phone number: its messages, evidence entries, opens and clicks, "
        "verification records and account as JSON (a number's contacts, opt-outs and SMS "
        "as sms.json), copies of the messages and certificates kept, a "
        "README.txt in plain words and MANIFEST.sha256. After an erasure it says what "
        "remains (records naming the address only by its commitment).",
    )
    p.add_argument(
        "--subject",
        required=True,
        metavar="ADDRESS",
        help="the e-mail address, or a phone number (+34600111222, national in [sms] "
        "default_region, or its address at sms.<gateway domain>)",
    )
    p.add_argument(
        "--language",
        choices=LANGUAGES,
        help="the language of README.txt (default: the user's, else [gateway] language)",
    )
    p.add_argument("dir", metavar="DIR", help="a new or empty directory to write into")
    p.set_defaults(func=cmd_export)
