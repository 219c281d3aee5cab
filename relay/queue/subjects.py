"""Everything the gateway's database holds about one e-mail address or phone number: the
inventory that
``certifica export --subject`` writes out (GDPR art. 15) and ``certifica erase --subject``
erases (art. 17; :mod:`relay.queue.erasure`). docs/erasure.md says what is kept and why.

Where an address can be, column by column (the schema is :mod:`relay.queue.migrations`):

- ``messages``: ``sender`` (envelope sender; for MX mail the registered From; for a
  reception, its owner), ``auth_user``, ``header_from``, ``envelope_from``; inside the
  texts ``summary`` (To, Cc, From of the message), ``authentication`` (DKIM/SPF results),
  ``reception`` (owner, forwarding chain, the original sender), ``original_to``
  (postmaster mail), ``header_section`` (plain mail's kept header), ``dsn_envid``;
- ``recipients``: ``address``, ``orcpt``, and inside ``reply_text``, ``note``,
  ``delivered_copy`` (the trace fields added on the way out), ``tracking_notes``;
- ``tracking_events`` and ``tracking_links`` of the address's recipient rows (its IP
  addresses, user agents, the links of its copy);
- ``evidence``: ``recipient``, and inside ``detail`` (a late report's recipient, the
  recipients of a submission, a reception's original sender);
- ``verifications.recipients`` (what the verification page shows);
- ``users.address`` (with its organisation, role and whether it has a second factor),
  the user's ``app_passwords``, ``api_tokens`` and ``web_sessions`` (by ``address``:
  names and times, a session's IP address and user agent; never a secret nor its hash),
  ``reception_owners.owner``, ``reception_acks`` (owner, sender); an admin's pending
  requests to bind a domain (``org_domain_claims.requested_by``), which an erasure ends
  and an export does not list (a domain name and a time, the organisation's).

A phone number (certified SMS, docs/sms.md) is a subject in E.164 (``+34600111222``): its
recipient rows hold it as ``+34600111222@sms.<gateway domain>``, and it is also in
``contacts.number`` (with ``contact_groups``), ``sms_optouts.number`` (and its
``detail``), ``sms_inbound.source`` (with ``text`` and ``raw``: what the phone sent),
``sms_messages.skipped`` (an entry's ``address`` and ``name``), and, of its recipient
rows, ``sms_parts`` and their ``sms_receipts`` (``raw``, ``fields``: the deliver_sm
names the phone); in the evidence like an address (``SmsSubmitted``,
``SmsDeliveryReceipt``, ``SmsOptOut``, ``SmsConsentRecorded``...). Inside texts it is
matched as a whole number: with or without ``+`` (SMPP writes it without), after ``00``,
or in its national form; ``+346001112223`` is another number. :func:`sms_holdings`
gathers those rows.

An address is compared as the rest of the gateway compares it
(:func:`relay.smtpd.users.normalise_address`): the whole address case-insensitively.
RFC 5321 §2.4 lets a server tell ``Bob@`` from ``bob@``, but no provider does, and an
erasure that missed a spelling would leave the person's data behind; the text columns
are searched for the address as a whole word (``xbob@example.org`` is not
``bob@example.org``). Each text is searched by a function registered on the connection
(SQLite's ``lower()`` folds ASCII only): a full scan, which an operator's command can
afford.

Once erased, the address is replaced by its *commitment* (:func:`commitment`): an
HMAC-SHA256 of the normalised address under the installation's secret
(``keys/subject.key``), so the rows of one person stay linked and a later request about
the same address finds them, while nobody without the key can test a guess (a bare
SHA-256 of an address can be reversed by hashing candidate addresses).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers

from relay.queue.db import query_rows

ERASURE_EVENT = "Erasure"
"""The evidence event an erasure appends (detail: operator, subject commitment, scope;
:mod:`relay.queue.erasure`)."""

COMMITMENT_PREFIX = "erased:"
"""What an erased address becomes in a column: this prefix and 64 hex digits."""

_MENTIONS = "certifica_mentions_subject"  # the SQL function of :meth:`Matcher.register`
# Characters that may stand right before a local part, or right after a domain, and so
# make a longer address of which ours would only be a piece (RFC 5322 atext, dots).
_BEFORE = r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-])"
_AFTER = r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])"


_E164 = re.compile(r"\+[1-9][0-9]{6,14}")  # ITU-T E.164: at most 15 digits


def is_number(subject: str) -> bool:
    """Whether the subject (normalised) is a phone number in E.164 rather than an address."""
    return _E164.fullmatch(subject) is not None


def normalise(address: str) -> str:
    """The address as the gateway compares it: no angle brackets or blanks around it,
    lower case (as :func:`relay.smtpd.users.normalise_address`)."""
    return address.strip().removeprefix("<").removesuffix(">").strip().lower()


def looks_like_address(address: str) -> bool:
    """Whether ``address`` (normalised) is a mailbox ``local@domain`` with a dotted domain."""
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in address))


def commitment(key: bytes, address: str) -> str:
    """The keyed commitment that replaces ``address`` once erased:
    ``erased:`` + HMAC-SHA256(key, normalised address), hex (docs/erasure.md says why
    not a bare SHA-256)."""
    mac = hmac.new(key, normalise(address).encode("utf-8"), hashlib.sha256).hexdigest()
    return COMMITMENT_PREFIX + mac


def database_holds_erasures(path: Path) -> bool:
    """:func:`holds_erasures` of the database at ``path`` (made and migrated already),
    on a connection of its own (the master's start, before any process has the queue)."""
    conn = sqlite3.connect(path, timeout=10.0)
    try:
        return holds_erasures(conn)
    finally:
        conn.close()


def holds_erasures(conn: sqlite3.Connection) -> bool:
    """Whether an address was ever erased in this database: an ``Erasure`` evidence entry,
    or a commitment in an address column. Their commitments were made with
    ``keys/subject.key``: a new key would no longer match them."""
    like = COMMITMENT_PREFIX + "%"
    (found,) = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM evidence WHERE event = 'Erasure')"
        " OR EXISTS (SELECT 1 FROM recipients WHERE address LIKE :like)"
        " OR EXISTS (SELECT 1 FROM messages WHERE sender LIKE :like OR auth_user LIKE :like"
        " OR header_from LIKE :like OR envelope_from LIKE :like)",
        {"like": like},
    ).fetchone()
    return bool(found)


_ADDRESS_HOLDERS = (
    *(("messages", c) for c in ("sender", "auth_user", "header_from", "envelope_from")),
    ("recipients", "address"),
    ("evidence", "recipient"),
    ("users", "address"),
    ("reception_owners", "owner"),
    ("reception_acks", "owner"),
    ("reception_acks", "sender"),
)


def address_committed_to(conn: sqlite3.Connection, key: bytes, committed: str) -> str | None:
    """The address held in the database (a column holding one address) whose commitment
    under ``key`` is ``committed``, else None: how an erasure is applied again, by its
    commitment, to a backup restored from before it (docs/erasure.md). A phone's
    commitment is of its number in E.164: an SMS address is tried as its number, and so
    are the numbers of contacts and of the messages phones sent. A full scan of those
    columns, one HMAC per distinct address: for an operator's command."""
    seen: set[str] = set()
    holders = [
        (t, c, f"SELECT DISTINCT {c} FROM {t} WHERE {c} LIKE '%@%'")  # noqa: S608
        for t, c in _ADDRESS_HOLDERS
    ]
    holders += [
        ("contacts", "number", "SELECT DISTINCT number FROM contacts WHERE number LIKE '+%'"),
        ("sms_inbound", "source", "SELECT DISTINCT source FROM sms_inbound WHERE source LIKE '+%'"),
    ]
    for _table, _column, sql in holders:
        for (value,) in conn.execute(sql):
            address = normalise(str(value))
            local, _at, domain = address.rpartition("@")
            if is_number(local) and domain.startswith("sms."):
                address = local
            if address in seen:
                continue
            seen.add(address)
            if hmac.compare_digest(commitment(key, address), committed):
                return address
    return None


class Matcher:
    """Finds the address (or its commitment) in any column's value. A subject in E.164
    (:func:`is_number`) is a phone: its SMS address ``+34600111222@sms.<domain>`` is
    itself, and the number is found in texts as a whole number (module docstring)."""

    def __init__(self, address: str, committed: str) -> None:
        self.address = normalise(address)
        self.committed = committed
        self.number = self.address if is_number(self.address) else None
        if self.number is None:
            self.needle = self.address
            self.pattern = re.compile(_BEFORE + re.escape(self.address) + _AFTER, re.IGNORECASE)
            return
        digits = self.number[1:]
        parsed = phonenumbers.parse(self.number)
        national = phonenumbers.national_significant_number(parsed) or digits
        # Every form holds the national digits: the needle SQLite's instr looks for.
        self.needle = national if national in digits else digits
        self.pattern = re.compile(
            rf"(?<![0-9+])(?:(?:\+|00)?{digits}|0?{re.escape(national)})(?![0-9])"
        )

    def is_subject(self, value: object) -> bool:
        """The value is the address itself (a column holding one address), or for a phone
        the number in E.164 or its SMS address."""
        if not isinstance(value, str):
            return False
        value = normalise(value)
        if self.number is None:
            return value == self.address
        local, at, domain = value.rpartition("@")
        return value == self.number or (at != "" and local == self.number and domain[:4] == "sms.")

    def mentions(self, value: object) -> bool:
        """The address appears in the value (text, JSON or bytes) as a whole word."""
        return any(self.pattern.search(text) for text in _texts(value))

    def scrub(self, value: str | None, replacement: str = "[erased]") -> str | None:
        """The text with every mention of the address replaced."""
        if value is None:
            return None
        return self.pattern.sub(replacement, value)

    def params(self) -> dict[str, str]:
        """The parameters of :func:`naming`'s SQL. ``needle`` is what SQLite's ``lower()``
        can find: an ASCII address without characters JSON escapes; otherwise empty
        (``instr(x, '')`` is 1: every row goes to the registered function)."""
        plain = self.needle.isascii() and not set(self.needle) & set('"\\')
        return {"needle": self.needle if plain else "", "committed": self.committed}

    def register(self, conn: sqlite3.Connection) -> None:
        """Make ``certifica_mentions_subject(x)`` callable in this connection's SQL."""
        conn.create_function(
            _MENTIONS,
            1,
            lambda v: int(self.mentions(v) or (isinstance(v, str) and self.committed in v)),
            deterministic=True,
        )


def _texts(value: object) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        return
    yield text
    # JSON written with ensure_ascii hides a non-ASCII address as \\uXXXX escapes.
    if "\\u" in text and text[:1] in "[{":
        try:
            decoded = json.loads(text)
        except ValueError:
            return
        yield from _strings(decoded)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


MESSAGE_ADDRESS_COLUMNS = ("sender", "auth_user", "header_from", "envelope_from")
"""Columns of ``messages`` that hold one address each."""
MESSAGE_TEXT_COLUMNS = (
    "summary",
    "authentication",
    "reception",
    "original_to",
    "header_section",
    "dsn_envid",
    "subject",
)
"""Columns of ``messages`` whose text may name the address among other things."""
RECIPIENT_TEXT_COLUMNS = ("orcpt", "reply_text", "note", "delivered_copy", "tracking_notes")
"""Columns of ``recipients`` beside ``address`` whose text may name the address."""


@dataclass
class Holdings:
    """What the database holds about one address (the rows, as dicts)."""

    address: str
    committed: str
    messages: list[dict[str, Any]] = field(default_factory=list)  # with roles, recipients
    evidence: list[dict[str, Any]] = field(default_factory=list)
    tracking_events: list[dict[str, Any]] = field(default_factory=list)
    tracking_links: list[dict[str, Any]] = field(default_factory=list)
    verifications: list[dict[str, Any]] = field(default_factory=list)
    legal_holds: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    app_passwords: list[dict[str, Any]] = field(default_factory=list)
    api_tokens: list[dict[str, Any]] = field(default_factory=list)
    web_sessions: list[dict[str, Any]] = field(default_factory=list)
    reception_owners: list[dict[str, Any]] = field(default_factory=list)
    reception_acks: list[dict[str, Any]] = field(default_factory=list)
    erasures: list[dict[str, Any]] = field(default_factory=list)  # Erasure evidence entries
    sms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # sms_holdings()

    @property
    def qids(self) -> list[str]:
        return [m["qid"] for m in self.messages]

    @property
    def cert_ids(self) -> list[str]:
        """Every document issued about these messages (certificates, addenda, receptions)."""
        found = [m["cert_id"] for m in self.messages if m.get("cert_id")]
        found += [v["cert_id"] for v in self.verifications]
        return sorted(set(found))

    def counts(self) -> dict[str, int]:
        return {
            "messages": len(self.messages),
            "evidence_entries": len(self.evidence),
            "tracking_events": len(self.tracking_events),
            "verifications": len(self.verifications),
            "users": len(self.users),
            "reception_owners": len(self.reception_owners),
            "reception_acks": len(self.reception_acks),
            **{f"sms_{k}": len(v) for k, v in self.sms.items()},
        }


def chunks(values: list[Any], size: int = 500) -> Iterator[list[Any]]:
    """``values`` in pieces small enough for an SQL ``IN (...)`` list."""
    for start in range(0, len(values), size):  # SQLite's bound-parameter limit
        yield values[start : start + size]


def naming(columns: tuple[str, ...]) -> str:
    """SQL true for a row where one of ``columns`` names the address or its commitment.
    SQLite's ``instr`` over ``lower()`` passes over most rows in C; the registered
    function then decides on the few left (a whole word, any case, JSON escapes): a
    50,000-message database is searched in a fraction of a second instead of seconds,
    while the erasure holds the write lock."""
    return " OR ".join(
        f"((instr(lower({c}), :needle) > 0 OR instr({c}, :committed) > 0) AND {_MENTIONS}({c}))"
        for c in columns
    )


def concerned_qids(conn: sqlite3.Connection, match: Matcher) -> list[str]:
    """The messages about the address (or its commitment): sent or received by it, naming
    it, and the documents and reports made about those (their children, recursively)."""
    match.register(conn)
    on_message = naming(MESSAGE_ADDRESS_COLUMNS + MESSAGE_TEXT_COLUMNS)
    on_recipient = naming(("address", *RECIPIENT_TEXT_COLUMNS))
    params = match.params()
    found = {
        r[0]
        for r in conn.execute(f"SELECT qid FROM messages WHERE {on_message}", params)  # noqa: S608
    }
    found |= {
        r[0]
        for r in conn.execute(
            f"SELECT DISTINCT qid FROM recipients WHERE {on_recipient}",  # noqa: S608
            params,
        )
    }
    frontier = sorted(found)
    while frontier:
        children: set[str] = set()
        for chunk in chunks(frontier):
            marks = ", ".join("?" for _ in chunk)
            children |= {
                r[0]
                for r in conn.execute(
                    f"SELECT qid FROM messages WHERE parent_qid IN ({marks})",  # noqa: S608
                    chunk,
                )
            }
        frontier = sorted(children - found)
        found |= children
    return sorted(found)


def messages_of(conn: sqlite3.Connection, qids: list[str]) -> list[dict[str, Any]]:
    """The message rows of ``qids`` (ordered by time), each with all its recipient rows
    under ``recipients``."""
    out: list[dict[str, Any]] = []
    for chunk in chunks(qids):
        marks = ", ".join("?" for _ in chunk)
        out += query_rows(conn, f"SELECT * FROM messages WHERE qid IN ({marks})", chunk)  # noqa: S608
    out.sort(key=lambda m: (m["created"], m["qid"]))
    for message in out:
        message["recipients"] = query_rows(
            conn, "SELECT * FROM recipients WHERE qid = ? ORDER BY id", (message["qid"],)
        )
    return out


def evidence_about(conn: sqlite3.Connection, match: Matcher) -> list[dict[str, Any]]:
    """The evidence entries naming the address (recipient column or detail) or its
    commitment, in log order."""
    match.register(conn)
    return query_rows(
        conn,
        f"SELECT * FROM evidence WHERE {naming(('recipient', 'detail'))} ORDER BY seq",  # noqa: S608
        match.params(),
    )


def holdings(conn: sqlite3.Connection, address: str, committed: str) -> Holdings:
    """Everything the database holds about ``address`` (and rows already erased, which
    name only its commitment ``committed``). Read-only."""
    match = Matcher(address, committed)
    found = Holdings(match.address, committed)
    qids = concerned_qids(conn, match)
    found.messages = messages_of(conn, qids)
    for message in found.messages:
        message["roles"] = roles(message, match)
    own = [r["id"] for m in found.messages for r in m["recipients"] if _is(match, r["address"])]
    for chunk in chunks(own):
        marks = ", ".join("?" for _ in chunk)
        found.tracking_events += query_rows(
            conn,
            f"SELECT * FROM tracking_events WHERE recipient_id IN ({marks}) ORDER BY id",  # noqa: S608
            chunk,
        )
        found.tracking_links += query_rows(
            conn,
            f"SELECT * FROM tracking_links WHERE recipient_id IN ({marks})"  # noqa: S608
            " ORDER BY recipient_id, link",
            chunk,
        )
    entries = evidence_about(conn, match)
    found.evidence = [e for e in entries if e["event"] != ERASURE_EVENT]
    found.erasures = [e for e in entries if e["event"] == ERASURE_EVENT]
    found.verifications = verifications_of(conn, qids)
    for chunk in chunks(qids):
        marks = ", ".join("?" for _ in chunk)
        found.legal_holds += query_rows(
            conn,
            f"SELECT * FROM legal_holds WHERE qid IN ({marks})",  # noqa: S608
            chunk,
        )
    kept = accounts(conn, match)
    found.users = kept["users"]
    found.app_passwords = kept["app_passwords"]
    found.api_tokens = kept["api_tokens"]
    found.web_sessions = kept["web_sessions"]
    found.reception_owners = kept["reception_owners"]
    found.reception_acks = kept["reception_acks"]
    if match.number is not None:
        found.sms = sms_holdings(conn, match, own)
    return found


_RECEIVED = (
    "SELECT r.id AS recipient_id, r.qid, m.created, r.status, s.sender_id, s.marketing,"
    " s.text, s.text_sha256 FROM recipients r JOIN sms_messages s ON s.qid = r.qid"
    " JOIN messages m ON m.qid = r.qid"
)
_SKIPPED = (
    "SELECT s.qid, m.created, s.sender_id, s.marketing, s.skipped FROM sms_messages s"
    " JOIN messages m ON m.qid = s.qid"
)


def sms_holdings(
    conn: sqlite3.Connection, match: Matcher, recipient_ids: list[int]
) -> dict[str, list[dict[str, Any]]]:
    """What the SMS tables hold about a phone (``match.number``): ``contacts`` (with the
    organisation's name and the groups), ``optouts``, ``sent`` (the messages the phone
    sent, MO), ``received`` (the SMS sent to its recipient rows ``recipient_ids``, with
    their parts and receipts) and ``skipped`` (the SMS it was left out of, and why)."""
    match.register(conn)
    params = match.params()
    contacts = query_rows(
        conn,
        "SELECT c.id, c.org, o.name AS org_name, c.number, c.name, c.consent_marketing,"
        " c.consent_source, c.added, c.added_by FROM contacts c"
        " LEFT JOIN organisations o ON o.code = c.org WHERE c.number = ? ORDER BY c.org",
        (match.number,),
    )
    for contact in contacts:
        contact["groups"] = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM contact_groups WHERE contact_id = ? ORDER BY name",
                (contact.pop("id"),),
            )
        ]
    optouts = query_rows(
        conn, "SELECT * FROM sms_optouts WHERE number = ? ORDER BY org", (match.number,)
    )
    sent = query_rows(
        conn,
        f"SELECT * FROM sms_inbound WHERE {naming(('source',))} ORDER BY id",  # noqa: S608
        params,
    )
    received: list[dict[str, Any]] = []
    for chunk in chunks(recipient_ids):
        marks = ", ".join("?" for _ in chunk)
        received += query_rows(
            conn,
            _RECEIVED + f" WHERE r.id IN ({marks})",  # noqa: S608
            chunk,
        )
    received.sort(key=lambda r: (r["created"], r["recipient_id"]))
    for row in received:
        row["parts"] = query_rows(
            conn,
            "SELECT id, seq, attempt, state, started, answered, message_id, command_status,"
            " sentence, receipt_state FROM sms_parts WHERE recipient_id = ? ORDER BY id",
            (row["recipient_id"],),
        )
        for part in row["parts"]:
            part["receipts"] = query_rows(
                conn,
                "SELECT received, message_id, state, submit_date, done_date, error, fields"
                " FROM sms_receipts WHERE part_id = ? ORDER BY id",
                (part.pop("id"),),
            )
    skipped: list[dict[str, Any]] = []
    for row in query_rows(
        conn,
        _SKIPPED + f" WHERE {naming(('s.skipped',))} ORDER BY m.created",  # noqa: S608
        params,
    ):
        for entry in json.loads(row.pop("skipped") or "[]"):
            if _is(match, entry.get("address")):
                skipped.append({**row, **entry})
    return {
        "contacts": contacts,
        "optouts": optouts,
        "sent": sent,
        "received": received,
        "skipped": skipped,
    }


def _is(match: Matcher, value: object) -> bool:
    return match.is_subject(value) or value == match.committed


def roles(message: dict[str, Any], match: Matcher) -> list[str]:
    """How the address takes part in a message: the columns naming it, ``recipient``,
    ``named`` (only inside a text: a header, a report), or ``document`` (a document or
    report made about a message that concerns it)."""
    found = [c for c in MESSAGE_ADDRESS_COLUMNS if _is(match, message.get(c))]
    if any(_is(match, r["address"]) for r in message["recipients"]):
        found.append("recipient")
    if not found and (
        any(match.mentions(message.get(c)) for c in MESSAGE_TEXT_COLUMNS)
        or any(
            match.mentions(r.get(c)) for r in message["recipients"] for c in RECIPIENT_TEXT_COLUMNS
        )
    ):
        found.append("named")
    return found or ["document"]


def is_sender(message: dict[str, Any]) -> bool:
    """Whether the address sent the message (rather than received it or is named in it)."""
    return any(r in message["roles"] for r in MESSAGE_ADDRESS_COLUMNS)


def verifications_of(conn: sqlite3.Connection, qids: list[str]) -> list[dict[str, Any]]:
    """The verification records of the documents issued about ``qids``."""
    out: list[dict[str, Any]] = []
    for chunk in chunks(qids):
        marks = ", ".join("?" for _ in chunk)
        out += query_rows(
            conn,
            f"SELECT * FROM verifications WHERE qid IN ({marks}) ORDER BY issued_at",  # noqa: S608
            chunk,
        )
    return out


def tracking_to_erase(conn: sqlite3.Connection, recipient_ids: list[int]) -> list[int]:
    """The opens and clicks of these recipient rows that still hold who made them."""
    out: list[int] = []
    for chunk in chunks(recipient_ids):
        marks = ", ".join("?" for _ in chunk)
        out += [
            int(r[0])
            for r in conn.execute(
                f"SELECT id FROM tracking_events WHERE recipient_id IN ({marks})"  # noqa: S608
                " AND (ip != '' OR user_agent != '' OR url IS NOT NULL)",
                chunk,
            )
        ]
    return out


def tracked_links(conn: sqlite3.Connection, recipient_ids: list[int]) -> int:
    """How many links of these recipient rows' tracked copies are still stored."""
    count = 0
    for chunk in chunks(recipient_ids):
        marks = ", ".join("?" for _ in chunk)
        (n,) = conn.execute(
            f"SELECT COUNT(*) FROM tracking_links WHERE recipient_id IN ({marks})",  # noqa: S608
            chunk,
        ).fetchone()
        count += int(n)
    return count


def forget_tracking(conn: sqlite3.Connection, recipient_ids: list[int]) -> None:
    """Inside the caller's transaction: the opens and clicks of these recipient rows keep
    their kind, time and classification, and lose the IP address, the user agent and
    the URL; the links of their copies are removed (a click on one now finds nothing)."""
    for chunk in chunks(recipient_ids):
        marks = ", ".join("?" for _ in chunk)
        conn.execute(
            f"UPDATE tracking_events SET ip = '', user_agent = '', url = NULL"  # noqa: S608
            f" WHERE recipient_id IN ({marks})",
            chunk,
        )
        conn.execute(
            f"DELETE FROM tracking_links WHERE recipient_id IN ({marks})",  # noqa: S608
            chunk,
        )


def forget_hosted(conn: sqlite3.Connection, recipient_ids: list[int]) -> None:
    """Inside the caller's transaction: the decisions of these recipient rows on hosted
    content (docs/hosted.md) keep what was decided and when, and lose the typed name,
    the comment and the context (IP address, user agent); the certificate of the
    decision already issued still verifies (its values are in the evidence log, whose
    entries the erasure forgets the same way)."""
    for chunk in chunks(recipient_ids):
        marks = ", ".join("?" for _ in chunk)
        conn.execute(
            f"UPDATE hosted_links SET decision_detail = NULL"  # noqa: S608
            f" WHERE recipient_id IN ({marks})",
            chunk,
        )


# The columns of the user's own rows that an export shows: names, times, where a
# session came from; never a secret, a hash of one, nor a session's CSRF token.
_USER_ROWS = {
    "app_passwords": "SELECT name, created, last_used FROM app_passwords",
    "api_tokens": "SELECT name, created, last_used FROM api_tokens",
    "web_sessions": "SELECT created, last_seen, stage, ip, user_agent FROM web_sessions",
}


def accounts(conn: sqlite3.Connection, match: Matcher) -> dict[str, list[dict[str, Any]]]:
    """The address's user account (its organisation, role, whether it has a second
    factor; its app passwords, API tokens and console sessions), reception settings and
    proofs of receipt sent to or for it (the rows still naming the address itself)."""
    match.register(conn)
    own = {
        table: query_rows(conn, f"{select} WHERE address = ? ORDER BY created", (match.address,))
        for table, select in _USER_ROWS.items()
    }
    return {
        "users": query_rows(
            conn,
            "SELECT address, created, tracking, language, timezone, org, role, disabled,"
            " totp_secret IS NOT NULL AS second_factor FROM users"
            " WHERE lower(address) = ? OR address = ?",
            (match.address, match.address),
        ),
        **own,
        "reception_owners": query_rows(
            conn,
            "SELECT * FROM reception_owners WHERE owner = ?",
            (match.address,),
        ),
        "reception_acks": query_rows(
            conn,
            "SELECT * FROM reception_acks WHERE owner = ? OR lower(sender) = ? OR sender = ?",
            (match.address, match.address, match.address),
        ),
    }


WEBHOOK_ERASED = "given up: its recipient's data was erased"
"""``webhook_deliveries.last_error`` of an event an erasure stopped (``certifica webhook log``)."""


def remove_accounts(conn: sqlite3.Connection, match: Matcher) -> None:
    """Inside the caller's transaction: remove the address's user account (with its app
    passwords, API tokens and console sessions), its reception settings, the records
    of proofs of receipt to or for it, and the webhook events still owed that name it."""
    conn.execute(
        "DELETE FROM users WHERE lower(address) = ? OR address = ?", (match.address, match.address)
    )
    for table in _USER_ROWS:
        conn.execute(f"DELETE FROM {table} WHERE address = ?", (match.address,))  # noqa: S608
    conn.execute("DELETE FROM reception_owners WHERE owner = ?", (match.address,))
    # the admin's requests to bind a domain end with it (the organisation may ask again)
    conn.execute("DELETE FROM org_domain_claims WHERE requested_by = ?", (match.address,))
    conn.execute(
        "DELETE FROM reception_acks WHERE owner = ? OR lower(sender) = ? OR sender = ?",
        (match.address, match.address, match.address),
    )
    # A webhook event still owed names its recipient (docs/webhooks.md): it is given up
    # rather than sent, its body emptied as a delivered one's is.
    conn.execute(
        "UPDATE webhook_deliveries SET state = 'failed', payload = '', last_error = ?,"
        " done_at = ? WHERE state = 'pending' AND instr(lower(payload), ?) > 0",
        (WEBHOOK_ERASED, time.time(), json.dumps(match.address, ensure_ascii=False)),
    )


_MESSAGE_WRITABLE = frozenset(
    (*MESSAGE_ADDRESS_COLUMNS, *MESSAGE_TEXT_COLUMNS, "client_ip", "client_helo", "tracking")
    + ("addendum_pending",)
)
_RECIPIENT_WRITABLE = frozenset(("address", *RECIPIENT_TEXT_COLUMNS))


def update_message(conn: sqlite3.Connection, qid: str, columns: dict[str, Any]) -> None:
    """Inside the caller's transaction: set these columns (of the ones an erasure writes)."""
    _update(conn, "messages", "qid", qid, columns, _MESSAGE_WRITABLE)


def update_recipient(conn: sqlite3.Connection, rid: int, columns: dict[str, Any]) -> None:
    """Inside the caller's transaction: set these columns of recipient row ``rid``."""
    _update(conn, "recipients", "id", rid, columns, _RECIPIENT_WRITABLE)


def _update(
    conn: sqlite3.Connection,
    table: str,
    key: str,
    value: object,
    columns: dict[str, Any],
    allowed: frozenset[str],
) -> None:
    if not columns:
        return
    unknown = set(columns) - allowed
    if unknown:  # the names are joined into the SQL: only the listed ones (a raise, not assert)
        raise ValueError(f"not a column an erasure writes: {sorted(unknown)}")
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conn.execute(
        f"UPDATE {table} SET {assignments} WHERE {key} = ?",  # noqa: S608
        (*columns.values(), value),
    )
