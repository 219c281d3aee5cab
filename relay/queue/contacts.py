"""Organisations' SMS contacts (docs/sms.md, "Contacts, consent and opt-out"): numbers
with names, groups and the marketing consent each gave, the opt-outs, and the sender
ID and number of each organisation and user.

A contact belongs to one organisation; its number is E.164 (checked by
:mod:`relay.sms.numbers` before it gets here) or NULL (a contact the organisation has
no number for, listed as skipped when its group is sent to). A consent to marketing and
an opt-out are evidence: each is written with an entry of the evidence log
(``SmsConsentRecorded``, ``SmsOptOut``, ``SmsOptIn``) in the transaction that records
it, under the queue id :data:`CONTACTS_QID` (they are about no message).

The module-level functions take a connection and run inside the caller's transaction;
:class:`Contacts` is the part of :class:`relay.queue.store.Store` that wraps them.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlite_utils

from relay.queue import evidence_log
from relay.queue.db import Database

if TYPE_CHECKING:
    from relay.queue.records import NewMessage
    from relay.sms.optout import MoRecord

CONTACTS_QID = "contacts"
"""The evidence log's queue id for consents and opt-outs (about no message)."""


@dataclass(frozen=True)
class Contact:
    """One contact of an organisation, with its groups."""

    id: int
    org: str
    number: str | None
    name: str | None
    consent_marketing: float | None  # when the opt-in was given; None: none recorded
    consent_source: str | None
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class OptOut:
    """A number that asked an organisation for no more SMS."""

    org: str
    number: str
    time: float
    how: str  # mo | web | operator
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Audience:
    """What an organisation's contacts say about the numbers and groups one message is
    sent to: each group's members, the contact of each number concerned (when there is
    one) and the opt-outs among them."""

    groups: dict[str, tuple[Contact, ...]]
    by_number: dict[str, Contact]
    optouts: dict[str, OptOut]


@dataclass(frozen=True)
class NewContact:
    """A contact to add (``certifica contacts add`` or one row of an import)."""

    number: str | None
    name: str | None = None
    groups: tuple[str, ...] = ()
    consent_marketing: float | None = None
    consent_source: str | None = None


_CONTACT = (
    "SELECT c.id, c.org, c.number, c.name, c.consent_marketing, c.consent_source,"
    " (SELECT group_concat(g.name, char(31)) FROM (SELECT name FROM contact_groups"
    "   WHERE contact_id = c.id ORDER BY name) g)"
    " FROM contacts c"
)


def _contact(row: tuple[Any, ...]) -> Contact:
    groups = tuple(str(row[6]).split("\x1f")) if row[6] else ()
    return Contact(
        id=int(row[0]),
        org=str(row[1]),
        number=None if row[2] is None else str(row[2]),
        name=None if row[3] is None else str(row[3]),
        consent_marketing=None if row[4] is None else float(row[4]),
        consent_source=None if row[5] is None else str(row[5]),
        groups=groups,
    )


def _optout(row: tuple[Any, ...]) -> OptOut:
    return OptOut(str(row[0]), str(row[1]), float(row[2]), str(row[3]), json.loads(row[4] or "{}"))


def group_exists(conn: sqlite3.Connection, org: str, group: str) -> bool:
    """Whether ``org`` has a contact in ``group`` (lower case)."""
    return (
        conn.execute(
            "SELECT 1 FROM contact_groups g JOIN contacts c ON c.id = g.contact_id"
            " WHERE c.org = ? AND g.name = ? LIMIT 1",
            (org, group),
        ).fetchone()
        is not None
    )


def contacts_of(conn: sqlite3.Connection, org: str, group: str | None = None) -> list[Contact]:
    """``org``'s contacts (those of ``group`` only, when given), by name then number."""
    where = " WHERE c.org = ?"
    args: tuple[Any, ...] = (org,)
    if group is not None:
        where += " AND c.id IN (SELECT contact_id FROM contact_groups WHERE name = ?)"
        args = (org, group)
    rows = conn.execute(
        _CONTACT + where + " ORDER BY coalesce(c.name, ''), coalesce(c.number, ''), c.id", args
    ).fetchall()
    return [_contact(r) for r in rows]


def contact_by_number(conn: sqlite3.Connection, org: str, number: str) -> Contact | None:
    row = conn.execute(_CONTACT + " WHERE c.org = ? AND c.number = ?", (org, number)).fetchone()
    return None if row is None else _contact(row)


def optout_of(conn: sqlite3.Connection, org: str, number: str) -> OptOut | None:
    row = conn.execute(
        "SELECT org, number, time, how, detail FROM sms_optouts WHERE org = ? AND number = ?",
        (org, number),
    ).fetchone()
    return None if row is None else _optout(row)


def audience(
    conn: sqlite3.Connection, org: str, numbers: Iterable[str], groups: Iterable[str]
) -> Audience:
    """:class:`Audience` of ``org`` for ``numbers`` (E.164) and ``groups`` (lower case)."""
    members = {g: tuple(contacts_of(conn, org, g)) for g in groups}
    wanted = set(numbers) | {c.number for m in members.values() for c in m if c.number}
    by_number: dict[str, Contact] = {}
    optouts: dict[str, OptOut] = {}
    for number in sorted(wanted):
        found = contact_by_number(conn, org, number)
        if found is not None:
            by_number[number] = found
        opted = optout_of(conn, org, number)
        if opted is not None:
            optouts[number] = opted
    return Audience(members, by_number, optouts)


def record_optout(
    conn: sqlite3.Connection,
    org: str,
    number: str,
    now: float,
    how: str,
    detail: dict[str, Any],
) -> bool:
    """Opt ``number`` out of ``org``'s SMS with its evidence entry (``SmsOptOut``);
    False, with nothing written, when it was opted out already."""
    if optout_of(conn, org, number) is not None:
        return False
    conn.execute(
        "INSERT INTO sms_optouts (org, number, time, how, detail) VALUES (?, ?, ?, ?, ?)",
        (org, number, now, how, json.dumps(detail)),
    )
    evidence_log.append(
        conn,
        now,
        CONTACTS_QID,
        "SmsOptOut",
        {"organisation": org, "number": number, "how": how, **detail},
    )
    return True


def _add(conn: sqlite3.Connection, org: str, new: NewContact, now: float, actor: str) -> int:
    cursor = conn.execute(
        "INSERT INTO contacts (org, number, name, consent_marketing, consent_source, added,"
        " added_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (org, new.number, new.name, new.consent_marketing, new.consent_source, now, actor),
    )
    contact_id = int(cursor.lastrowid or 0)
    conn.executemany(
        "INSERT OR IGNORE INTO contact_groups (contact_id, name) VALUES (?, ?)",
        [(contact_id, g.lower()) for g in new.groups],
    )
    if new.consent_marketing is not None:
        evidence_log.append(
            conn,
            now,
            CONTACTS_QID,
            "SmsConsentRecorded",
            {
                "organisation": org,
                "number": new.number,
                "name": new.name,
                "consent": "marketing",
                "given": new.consent_marketing,
                "source": new.consent_source,
                "actor": actor,
            },
        )
    return contact_id


def _digits(number: str) -> str:
    digits = "".join(c for c in number if c.isdigit())
    return digits[2:] if digits.startswith("00") else digits


def _is_number(sender_id: str) -> bool:
    """Whether a sender ID is a phone number (one a phone can reply to), not a name."""
    return re.fullmatch(r"\+?[0-9]{6,17}", sender_id) is not None


def mo_organisation(
    conn: sqlite3.Connection, destinations: Sequence[str], number: str | None, domain: str
) -> tuple[str, str, str | None] | None:
    """The organisation an MO from ``number`` answers, with its name and sender ID,
    ``destinations`` being the number the phone replied to read in E.164 (one reading,
    or two when the SMSC did not say whether it is international or national): the
    organisation whose ``sms_number`` it is, else, for a number several organisations
    send from (the shared ``[sms] source``), the one that last sent ``number`` an SMS
    *from that number*: a phone cannot reply to an alphanumeric sender ID, so an SMS
    sent under one is never what a reply answers. None when nothing matches (the MO
    is kept for nobody; docs/sms.md)."""
    wanted = [_digits(d) for d in destinations if _digits(d)]
    if not wanted:
        return None
    rows = conn.execute(
        "SELECT code, name, sms_sender, sms_number FROM organisations"
        " WHERE sms_number IS NOT NULL ORDER BY code"
    ).fetchall()
    for digits in wanted:
        for code, name, sender, own in rows:
            if _digits(str(own)) == digits:
                return str(code), str(name), sender
    if number is None:
        return None
    sent = conn.execute(
        "SELECT o.code, o.name, o.sms_sender, s.sender_id FROM recipients r"
        " JOIN messages m ON m.qid = r.qid JOIN organisations o ON o.code = m.org"
        " JOIN sms_messages s ON s.qid = r.qid"
        " WHERE r.address = ? ORDER BY m.created DESC, r.id DESC",
        (f"{number}@{domain}",),
    ).fetchall()
    for code, name, sender, sender_id in sent:
        if _is_number(str(sender_id)) and _digits(str(sender_id)) in wanted:
            return str(code), str(name), sender
    return None


def sender_known(conn: sqlite3.Connection, sender: str, shared: str) -> bool:
    """Whether ``sender`` (any case; a number by its digits) is a sender ID of this
    gateway: the shared ``[sms] source``, an organisation's or a user's now, or one any
    SMS was ever sent under. Decided without any phone number, so the answer tells
    nobody whom an organisation wrote to (docs/sms.md)."""
    if same_sender(sender, shared):
        return True
    used = conn.execute(
        "SELECT sms_sender FROM organisations WHERE sms_sender IS NOT NULL"
        " UNION SELECT sms_sender FROM users WHERE sms_sender IS NOT NULL"
        " UNION SELECT DISTINCT sender_id FROM sms_messages"
    ).fetchall()
    return any(same_sender(str(r[0]), sender) for r in used)


def sender_organisations(
    conn: sqlite3.Connection, sender: str, number: str, domain: str, shared: str
) -> list[str] | None:
    """The organisations an opt-out of ``number`` from the sender ID ``sender`` (any
    case) on the page is for: those that sent ``number`` an SMS under that sender ID
    (whatever their sender ID is now), and no other: the page cannot tell who typed a
    number, so it opts it out only of those that wrote to it. None when ``sender`` is
    no sender ID of this gateway (:func:`sender_known`); an empty list when it is one
    but nobody sent ``number`` anything under it (the page's answer is the same)."""
    if not sender_known(conn, sender, shared):
        return None
    sent = conn.execute(
        "SELECT DISTINCT m.org, s.sender_id FROM recipients r"
        " JOIN sms_messages s ON s.qid = r.qid JOIN messages m ON m.qid = r.qid"
        " WHERE r.address = ? AND m.org IS NOT NULL",
        (f"{number}@{domain}",),
    ).fetchall()
    return sorted({str(r[0]) for r in sent if same_sender(str(r[1]), sender)})


def optout_stops(optout: OptOut, marketing: bool, scope: str) -> bool:
    """Whether ``optout`` stops an SMS (``marketing`` or not) under ``[sms]
    optout_scope`` ``scope``: every opt-out stops marketing; with ``"all"`` a reply
    from the phone (``mo``) or one the operator recorded stops every SMS, but one made
    on the page does not, since a page cannot prove who owns the number it is given
    and a stranger must not be able to stop a person's bank notices (docs/sms.md)."""
    return marketing or (scope == "all" and optout.how != "web")


@dataclass(frozen=True)
class Taken:
    """Another organisation already using a sender ID or number (``certifica org set``,
    ``users set``): which, its name, and the user whose sender ID it is, if a user's."""

    what: str  # sender | number
    value: str
    org: str
    name: str
    user: str | None = None


def same_sender(a: str, b: str) -> bool:
    """Whether two sender IDs show the same on a phone: numbers by their digits, names
    in any case."""
    if _is_number(a) and _is_number(b):
        return _digits(a) == _digits(b)
    return a.casefold() == b.casefold()


def sms_identity_taken(
    conn: sqlite3.Connection, org: str | None, *, sender: str | None, number: str | None
) -> Taken | None:
    """The first organisation other than ``org`` that already sends as ``sender`` (its
    own sender ID, else one of its users') or whose own number is ``number``; None when
    none does. A reply and a web opt-out find an organisation by these, so two sharing
    one could not be told apart."""
    if sender:
        for code, name, user, used in conn.execute(
            "SELECT o.code, o.name, NULL, o.sms_sender FROM organisations o"
            " WHERE o.sms_sender IS NOT NULL"
            " UNION ALL SELECT o.code, o.name, u.address, u.sms_sender FROM users u"
            " JOIN organisations o ON o.code = u.org WHERE u.sms_sender IS NOT NULL"
            " ORDER BY 1, 3"
        ).fetchall():
            if code != org and same_sender(str(used), sender):
                return Taken("sender", sender, str(code), str(name), user)
    if number:
        for code, name, own in conn.execute(
            "SELECT code, name, sms_number FROM organisations WHERE sms_number IS NOT NULL"
            " ORDER BY code"
        ).fetchall():
            if code != org and _digits(str(own)) == _digits(number):
                return Taken("number", number, str(code), str(name))
    return None


class Contacts(Database):
    """Contacts, groups, consents and opt-outs (module docstring)."""

    if TYPE_CHECKING:  # Messages' (the Store has both): a confirmation is queued with its MO

        def _enqueue(self, msg: NewMessage, now: float) -> None: ...

    async def mo_organisation(
        self, destinations: Sequence[str], number: str | None, domain: str
    ) -> tuple[str, str, str | None] | None:
        """:func:`mo_organisation`."""
        return await self._read(lambda: mo_organisation(self._conn, destinations, number, domain))

    async def opted_out(self, org: str, number: str) -> bool:
        return await self._read(lambda: optout_of(self._conn, org, number) is not None)

    async def record_mo_optout(
        self,
        mo: MoRecord,
        org: str | None,
        confirmation: tuple[NewMessage, bytes] | None,
        now: float,
    ) -> bool:
        """Keep the MO ``mo`` and, when it is an opt-out keyword from a number for
        ``org``, opt the number out with the MO as its evidence and queue
        ``confirmation`` (its spool file written already), in one transaction. True
        when the number was opted out now (False: no keyword, no organisation, or
        opted out already, when ``confirmation`` is not queued)."""

        def write() -> bool:
            action = "optout" if mo.keyword and mo.number and org else "none"
            cursor = self._conn.execute(
                "INSERT INTO sms_inbound (received, source, destination, text, org, action, raw)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mo.received, mo.source, mo.destination, mo.text, org, action, mo.raw),
            )
            if action != "optout" or org is None or mo.number is None:
                return False
            detail = {
                "keyword": mo.keyword,
                "inbound_id": int(cursor.lastrowid or 0),
                "mo": {
                    "source": mo.source,
                    "destination": mo.destination,
                    "text": mo.text,
                    "received": mo.received,
                    "raw": mo.raw.hex(),
                },
            }
            if not record_optout(self._conn, org, mo.number, now, "mo", detail):
                return False
            if confirmation is not None:
                self._enqueue(confirmation[0], now)
            return True

        return await self._run(write)

    async def web_optout(
        self,
        sender: str,
        number: str,
        domain: str,
        shared: str,
        now: float,
        detail: dict[str, Any],
    ) -> list[str] | None:
        """Opt ``number`` out of every organisation :func:`sender_organisations` finds
        for ``sender`` (the page, ``how`` web: marketing only, :func:`optout_stops`);
        returns them (None: an unknown sender; empty: nobody wrote to ``number``)."""

        def write() -> list[str] | None:
            orgs = sender_organisations(self._conn, sender, number, domain, shared)
            for org in orgs or []:
                record_optout(
                    self._conn,
                    org,
                    number,
                    now,
                    "web",
                    {"sender": sender, "stops": "marketing", **detail},
                )
            return orgs

        return await self._run(write)

    async def take_optout_form(self, nonce: str, expires: float, now: float) -> bool:
        """Record the opt-out page's form token ``nonce`` as used (until ``expires``,
        when it is refused anyway); False when it was used already. Expired ones are
        forgotten here."""

        def write() -> bool:
            self._conn.execute("DELETE FROM sms_optout_forms WHERE expires < ?", (now,))
            cursor = self._conn.execute(
                "INSERT OR IGNORE INTO sms_optout_forms (nonce, expires) VALUES (?, ?)",
                (nonce, expires),
            )
            return cursor.rowcount == 1

        return await self._run(write)

    async def contact_group_exists(self, org: str, group: str) -> bool:
        """Whether ``org`` has a contact in ``group`` (lower case)."""
        return await self._read(lambda: group_exists(self._conn, org, group))

    async def sms_audience(self, org: str, numbers: list[str], groups: list[str]) -> Audience:
        """What ``org``'s contacts say about ``numbers`` and ``groups`` (:func:`audience`)."""
        return await self._read(lambda: audience(self._conn, org, numbers, groups))

    async def sms_sender_of(self, address: str) -> str | None:
        """The sender ID of the user ``address``: its own, else its organisation's; None
        when neither has one (``[sms] source`` then)."""

        def read() -> str | None:
            row = self._conn.execute(
                "SELECT coalesce(u.sms_sender, o.sms_sender) FROM users u"
                " JOIN organisations o ON o.code = u.org WHERE u.address = ?",
                (address,),
            ).fetchone()
            return None if row is None or row[0] is None else str(row[0])

        return await self._read(read)

    async def record_optout(
        self, org: str, number: str, now: float, how: str, detail: dict[str, Any]
    ) -> bool:
        """Opt ``number`` out of ``org`` (:func:`record_optout`)."""
        return await self._run(lambda: record_optout(self._conn, org, number, now, how, detail))

    # -- the command line (certifica contacts) ---------------------------------------

    def add_contacts(
        self, org: str, contacts: list[NewContact], now: float, actor: str
    ) -> list[str]:
        """Add ``contacts`` to ``org`` in one transaction; returns the numbers that were
        already contacts of ``org`` (those rows are not added: nothing is overwritten)."""

        def write(db: sqlite_utils.Database) -> list[str]:
            taken: list[str] = []
            for new in contacts:
                if new.number is not None and contact_by_number(db.conn, org, new.number):
                    taken.append(new.number)
                    continue
                _add(db.conn, org, new, now, actor)
            return taken

        return self.run_sync(write)

    def contacts_now(self, org: str, group: str | None = None) -> list[Contact]:
        return self.run_sync(lambda db: contacts_of(db.conn, org, group), read=True)

    def optouts_now(self, org: str) -> dict[str, OptOut]:
        rows = self.run_sync(
            lambda db: db.conn.execute(
                "SELECT org, number, time, how, detail FROM sms_optouts WHERE org = ?", (org,)
            ).fetchall(),
            read=True,
        )
        return {str(r[1]): _optout(r) for r in rows}

    def remove_contact(self, org: str, number: str) -> bool:
        """Remove ``org``'s contact ``number`` and its groups; False when there is none.
        Its opt-out, if any, stays (a number that said STOP is not sent marketing when
        it is added again)."""

        def write(db: sqlite_utils.Database) -> bool:
            found = contact_by_number(db.conn, org, number)
            if found is None:
                return False
            db.conn.execute("DELETE FROM contact_groups WHERE contact_id = ?", (found.id,))
            db.conn.execute("DELETE FROM contacts WHERE id = ?", (found.id,))
            return True

        return self.run_sync(write)

    def remove_numberless_contacts(self, org: str, name: str) -> int:
        """Remove ``org``'s contacts named ``name`` that have no number (a contact
        without a number has nothing else to name it by); how many were removed."""

        def write(db: sqlite_utils.Database) -> int:
            ids = [
                row[0]
                for row in db.conn.execute(
                    "SELECT id FROM contacts WHERE org = ? AND number IS NULL AND name = ?",
                    (org, name),
                )
            ]
            for contact_id in ids:
                db.conn.execute("DELETE FROM contact_groups WHERE contact_id = ?", (contact_id,))
                db.conn.execute("DELETE FROM contacts WHERE id = ?", (contact_id,))
            return len(ids)

        return self.run_sync(write)

    def optout_now(
        self, org: str, number: str, now: float, how: str, detail: dict[str, Any]
    ) -> bool:
        return self.run_sync(lambda db: record_optout(db.conn, org, number, now, how, detail))

    def optin_now(self, org: str, number: str, now: float, actor: str) -> bool:
        """Remove ``number``'s opt-out of ``org`` (the person asked again), with an
        ``SmsOptIn`` entry; False when it was not opted out."""

        def write(db: sqlite_utils.Database) -> bool:
            if optout_of(db.conn, org, number) is None:
                return False
            db.conn.execute("DELETE FROM sms_optouts WHERE org = ? AND number = ?", (org, number))
            evidence_log.append(
                db.conn,
                now,
                CONTACTS_QID,
                "SmsOptIn",
                {"organisation": org, "number": number, "actor": actor},
            )
            return True

        return self.run_sync(write)

    # -- sender IDs and numbers (certifica org set, users set) -------------------------

    def sms_identity_taken(
        self, org: str | None, *, sender: str | None = None, number: str | None = None
    ) -> Taken | None:
        """The other organisation (not ``org``) that already sends as ``sender`` (its
        own sender ID or one of its users') or owns ``number``
        (:func:`sms_identity_taken`); None when neither is taken."""
        return self.run_sync(
            lambda db: sms_identity_taken(db.conn, org, sender=sender, number=number), read=True
        )

    def set_org_sms(
        self,
        org: str,
        *,
        sender: str | None = None,
        number: str | None = None,
        actor: str = "operator",
        now: float = 0.0,
        forced: bool = False,
    ) -> bool:
        """Set ``org``'s sender ID and/or its own number ("" clears one), each change
        with an ``SmsSenderChanged`` evidence entry (who, old, new); False when there is
        no such organisation."""

        def write(db: sqlite_utils.Database) -> bool:
            conn = db.conn
            row = conn.execute(
                "SELECT sms_sender, sms_number FROM organisations WHERE code = ?", (org,)
            ).fetchone()
            if row is None:
                return False
            for column, value, old in (
                ("sms_sender", sender, row[0]),
                ("sms_number", number, row[1]),
            ):
                if value is None:
                    continue
                conn.execute(
                    f"UPDATE organisations SET {column} = ? WHERE code = ?",  # noqa: S608 - our names
                    (value or None, org),
                )
                _changed(conn, now, org, None, column, old, value or None, actor, forced)
            return True

        return self.run_sync(write)

    def org_sms_now(self, org: str) -> tuple[str | None, str | None]:
        """``org``'s sender ID and number (None: not set)."""
        row = self.run_sync(
            lambda db: db.conn.execute(
                "SELECT sms_sender, sms_number FROM organisations WHERE code = ?", (org,)
            ).fetchone(),
            read=True,
        )
        return (None, None) if row is None else (row[0], row[1])

    def set_user_sms_sender(
        self,
        address: str,
        sender: str,
        *,
        actor: str = "operator",
        now: float = 0.0,
        forced: bool = False,
    ) -> bool:
        """Set the user's own sender ID ("" clears it) with an ``SmsSenderChanged``
        evidence entry; False when there is no such user."""

        def write(db: sqlite_utils.Database) -> bool:
            conn = db.conn
            row = conn.execute(
                "SELECT org, sms_sender FROM users WHERE address = ?", (address,)
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE users SET sms_sender = ? WHERE address = ?", (sender or None, address)
            )
            _changed(
                conn, now, row[0], address, "sms_sender", row[1], sender or None, actor, forced
            )
            return True

        return self.run_sync(write)

    def user_org_now(self, address: str) -> str | None:
        """The organisation of the user ``address`` (None: none, or no such user)."""
        row = self.run_sync(
            lambda db: db.conn.execute(
                "SELECT org FROM users WHERE address = ?", (address,)
            ).fetchone(),
            read=True,
        )
        return None if row is None or row[0] is None else str(row[0])


def _changed(
    conn: sqlite3.Connection,
    now: float,
    org: str | None,
    user: str | None,
    column: str,
    old: str | None,
    new: str | None,
    actor: str,
    forced: bool,
) -> None:
    """The ``SmsSenderChanged`` evidence entry of one change of a sender ID or number
    (who answers a reply and whose opt-out a page records depend on them)."""
    detail: dict[str, Any] = {"organisation": org, "field": column, "old": old, "new": new}
    if user is not None:
        detail["user"] = user
    detail.update({"actor": actor, "forced": forced})
    evidence_log.append(conn, now, CONTACTS_QID, "SmsSenderChanged", detail)
