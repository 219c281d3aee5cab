"""Organisations, their users' roles and their domains (docs/accounts.md).

An organisation (``certifica org add ACME --name "Acme S.L." --legal-id B12345678``) is
what buys credits and what its users' certified mail is attributed to. Every user
belongs to exactly one, with one role (:class:`relay.queue.states.Role`; what each role
may do is :mod:`relay.roles`). The users that existed before organisations joined the
organisation ``default`` as senders (migration 15). A domain bound to an organisation
(``certifica org domain add ACME acme.example``) attributes to it the MX-mode and
reception mail of that domain. The operator binds at once; an organisation's admin
*claims* a domain (:class:`DomainClaim`, ``org_domain_claims``), and the claim binds it
only once the domain publishes the claim's token in the DNS (:mod:`relay.web.domain_proof`).

The module-level functions take a connection and run inside the caller's transaction;
:class:`Organisations` is the part of :class:`relay.queue.store.Store` that wraps them.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from relay.queue.db import Database
from relay.queue.states import Role

DEFAULT_ORG = "default"
"""The organisation migration 15 made for the users that existed before organisations."""

ORG_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
"""An organisation's code: what the operator types (``ACME``); letters, digits, - and _."""


def normalise_domain(domain: str) -> str:
    """``domain`` as ``org_domains`` holds it and as it is looked up: lower case, without
    a final dot, each label in its ASCII form (IDNA A-labels, RFC 5890; Python's codec,
    the same the rest of the gateway uses for host names), so ``Bücher.Example`` and
    ``xn--bcher-kva.example`` are one domain. Raises ValueError, with a sentence, for
    what is no domain name."""
    text = domain.strip().rstrip(".").lower()
    if not text or "@" in text or any(c.isspace() for c in text) or "." not in text:
        raise ValueError(f"{domain!r} is not a domain name such as acme.example")
    try:
        ascii_form = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{domain!r} is not a valid domain name") from None
    if not _HOSTNAME.fullmatch(ascii_form):
        raise ValueError(f"{domain!r} is not a valid domain name")
    return ascii_form


# RFC 1123 §2.1 labels (letters, digits, inner hyphens, at most 63), at most 253 in all.
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
)


@dataclass(frozen=True)
class Organisation:
    """One row of ``organisations``."""

    code: str
    name: str
    legal_id: str
    created: float
    disabled: bool
    balance: int


@dataclass(frozen=True)
class Account:
    """A user as the console, the API and the SMTP side see it: who, in which
    organisation, with which role, and whether it may act at all."""

    address: str
    org: str
    org_name: str
    role: Role
    user_disabled: bool
    org_disabled: bool
    language: str | None
    timezone: str | None
    totp: bool  # has a second factor (RFC 6238): SMTP then takes app passwords only

    @property
    def active(self) -> bool:
        """Neither the user nor its organisation is disabled."""
        return not (self.user_disabled or self.org_disabled)


_ACCOUNT = (
    "SELECT u.address, u.org, o.name, u.role, u.disabled, o.disabled, u.language,"
    " u.timezone, u.totp_secret IS NOT NULL"
    " FROM users u JOIN organisations o ON o.code = u.org"
)


def _account(row: tuple[object, ...]) -> Account:
    return Account(
        address=str(row[0]),
        org=str(row[1]),
        org_name=str(row[2]),
        role=Role(str(row[3])),
        user_disabled=bool(row[4]),
        org_disabled=bool(row[5]),
        language=None if row[6] is None else str(row[6]),
        timezone=None if row[7] is None else str(row[7]),
        totp=bool(row[8]),
    )


def account(conn: sqlite3.Connection, address: str) -> Account | None:
    """The user ``address`` (normalised already), or None."""
    row = conn.execute(_ACCOUNT + " WHERE u.address = ?", (address,)).fetchone()
    return None if row is None else _account(row)


def org_accounts(conn: sqlite3.Connection, org: str) -> list[Account]:
    """The users of ``org``, by address."""
    rows = conn.execute(_ACCOUNT + " WHERE u.org = ? ORDER BY u.address", (org,)).fetchall()
    return [_account(row) for row in rows]


def admins(conn: sqlite3.Connection, org: str) -> list[Account]:
    """The active admins of ``org``: whom a notice about the organisation goes to."""
    return [a for a in org_accounts(conn, org) if a.role == Role.ADMIN and a.active]


def _organisation(row: tuple[Any, ...]) -> Organisation:
    return Organisation(
        str(row[0]), str(row[1]), str(row[2]), float(row[3]), bool(row[4]), int(row[5])
    )


def organisation(conn: sqlite3.Connection, code: str) -> Organisation | None:
    row = conn.execute(
        "SELECT code, name, legal_id, created, disabled, balance FROM organisations WHERE code = ?",
        (code,),
    ).fetchone()
    return None if row is None else _organisation(row)


def organisations(conn: sqlite3.Connection) -> list[Organisation]:
    rows = conn.execute(
        "SELECT code, name, legal_id, created, disabled, balance FROM organisations ORDER BY code"
    ).fetchall()
    return [_organisation(row) for row in rows]


def org_for_domain(conn: sqlite3.Connection, domain: str) -> str | None:
    """The organisation ``domain`` (lower case) is bound to, or None."""
    row = conn.execute("SELECT org FROM org_domains WHERE domain = ?", (domain,)).fetchone()
    return None if row is None else str(row[0])


def domains(conn: sqlite3.Connection, org: str) -> list[str]:
    return [
        str(r[0])
        for r in conn.execute(
            "SELECT domain FROM org_domains WHERE org = ? ORDER BY domain", (org,)
        )
    ]


@dataclass(frozen=True)
class DomainClaim:
    """An admin's pending request to bind ``domain`` to ``org`` (``org_domain_claims``):
    bound once ``_certifica.<domain>`` publishes ``token`` (docs/accounts.md)."""

    domain: str
    org: str
    token: str
    requested: float
    requested_by: str


def claims(conn: sqlite3.Connection, org: str) -> list[DomainClaim]:
    """The pending claims of ``org``, by domain."""
    rows = conn.execute(
        "SELECT domain, org, token, requested, requested_by FROM org_domain_claims"
        " WHERE org = ? ORDER BY domain",
        (org,),
    ).fetchall()
    return [DomainClaim(str(r[0]), str(r[1]), str(r[2]), float(r[3]), str(r[4])) for r in rows]


def strangers(conn: sqlite3.Connection, org: str, domain: str) -> list[str]:
    """The users of other organisations than ``org`` at ``domain`` (a normalised domain
    name: letters, digits, dots and hyphens, so no LIKE wildcard), by address."""
    rows = conn.execute(
        "SELECT address FROM users WHERE org != ? AND address LIKE ? ORDER BY address",
        (org, "%@" + domain),
    ).fetchall()
    return [str(r[0]) for r in rows]


def claim(conn: sqlite3.Connection, org: str, domain: str) -> DomainClaim | None:
    """``org``'s pending claim of ``domain``, or None."""
    return next((c for c in claims(conn, org) if c.domain == domain), None)


class Organisations(Database):
    """Organisations, memberships and domains: the ``certifica org`` commands, the
    console's administration, and who a message is attributed to."""

    # Reads the serving processes make, on the store's thread.
    async def account(self, address: str) -> Account | None:
        return await self._read(lambda: account(self._conn, address))

    async def org_accounts(self, org: str) -> list[Account]:
        return await self._read(lambda: org_accounts(self._conn, org))

    async def organisation(self, code: str) -> Organisation | None:
        return await self._read(lambda: organisation(self._conn, code))

    async def org_for_domain(self, domain: str) -> str | None:
        """The organisation ``domain`` (any spelling: :func:`normalise_domain`) is bound
        to, or None (also for what is no domain name)."""
        try:
            key = normalise_domain(domain)
        except ValueError:
            return None
        return await self._read(lambda: org_for_domain(self._conn, key))

    async def org_domains(self, org: str) -> list[str]:
        return await self._read(lambda: domains(self._conn, org))

    async def domain_claims(self, org: str) -> list[DomainClaim]:
        return await self._read(lambda: claims(self._conn, org))

    async def domain_strangers(self, org: str, domain: str) -> list[str]:
        """Users of other organisations at ``domain``: the operator's to look at when
        ``org`` proves the domain is its own (docs/accounts.md)."""
        return await self._read(lambda: strangers(self._conn, org, domain))

    # The same, from synchronous code (the certifica command, tests).
    def account_now(self, address: str) -> Account | None:
        return self.run_sync(lambda db: account(db.conn, address), read=True)

    def organisation_now(self, code: str) -> Organisation | None:
        return self.run_sync(lambda db: organisation(db.conn, code), read=True)

    def organisations_now(self) -> list[Organisation]:
        return self.run_sync(lambda db: organisations(db.conn), read=True)

    def org_accounts_now(self, org: str) -> list[Account]:
        return self.run_sync(lambda db: org_accounts(db.conn, org), read=True)

    def org_domains_now(self, org: str) -> list[str]:
        return self.run_sync(lambda db: domains(db.conn, org), read=True)

    def domain_claims_now(self, org: str) -> list[DomainClaim]:
        return self.run_sync(lambda db: claims(db.conn, org), read=True)

    def add_organisation(self, code: str, name: str, legal_id: str, now: float) -> bool:
        """Add an organisation; False, with nothing changed, when the code is taken."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "INSERT OR IGNORE INTO organisations (code, name, legal_id, created)"
                    " VALUES (?, ?, ?, ?)",
                    (code, name, legal_id, now),
                ).rowcount
                > 0
            )
        )

    def set_organisation(
        self,
        code: str,
        *,
        name: str | None = None,
        legal_id: str | None = None,
        disabled: bool | None = None,
    ) -> bool:
        """Change an organisation's name, legal id or whether it is disabled; False when
        there is no such organisation."""
        changes: dict[str, object] = {}
        if name is not None:
            changes["name"] = name
        if legal_id is not None:
            changes["legal_id"] = legal_id
        if disabled is not None:
            changes["disabled"] = int(disabled)

        def write(db: sqlite_utils.Database) -> bool:
            conn = db.conn
            if (
                conn.execute("SELECT 1 FROM organisations WHERE code = ?", (code,)).fetchone()
                is None
            ):
                return False
            for column, value in changes.items():
                conn.execute(
                    f"UPDATE organisations SET {column} = ? WHERE code = ?",  # noqa: S608 - our names
                    (value, code),
                )
            return True

        return self.run_sync(write)

    def set_membership(
        self,
        address: str,
        *,
        org: str | None = None,
        role: Role | None = None,
        disabled: bool | None = None,
        now: float | None = None,
    ) -> bool:
        """Move a user to another organisation, change its role, or disable or enable
        it; False when there is no such user. Disabling a user also ends its console
        sessions (``credentials_changed``)."""

        def write(db: sqlite_utils.Database) -> bool:
            conn = db.conn
            if conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone() is None:
                return False
            if org is not None:
                conn.execute("UPDATE users SET org = ? WHERE address = ?", (org, address))
            if role is not None:
                conn.execute("UPDATE users SET role = ? WHERE address = ?", (str(role), address))
            if disabled is not None:
                conn.execute(
                    "UPDATE users SET disabled = ? WHERE address = ?", (int(disabled), address)
                )
                if disabled:
                    conn.execute(
                        "UPDATE users SET credentials_changed = ? WHERE address = ?",
                        (now, address),
                    )
                    conn.execute("DELETE FROM web_sessions WHERE address = ?", (address,))
            return True

        return self.run_sync(write)

    def bind_domain(self, org: str, domain: str, now: float) -> str | None:
        """Bind ``domain`` (lower case) to ``org``. Returns None when bound (or already
        bound to it), else the organisation that holds the domain already."""

        def write(db: sqlite_utils.Database) -> str | None:
            holder = org_for_domain(db.conn, domain)
            if holder is not None:
                return None if holder == org else holder
            db.conn.execute(
                "INSERT INTO org_domains (domain, org, added) VALUES (?, ?, ?)", (domain, org, now)
            )
            # the operator decided: admins' pending claims of the domain end
            db.conn.execute("DELETE FROM org_domain_claims WHERE domain = ?", (domain,))
            return None

        return self.run_sync(write)

    def claim_domain(
        self, org: str, domain: str, token: str, now: float, requested_by: str
    ) -> DomainClaim | str | None:
        """An admin of ``org`` asks for ``domain`` (lower case). Returns the claim, the
        one already pending if there is one (its token unchanged, so a record already
        published stays good); None when the domain is bound to ``org`` already; the
        holder's code when another organisation holds it."""

        def write(db: sqlite_utils.Database) -> DomainClaim | str | None:
            holder = org_for_domain(db.conn, domain)
            if holder is not None:
                return None if holder == org else holder
            db.conn.execute(
                "INSERT OR IGNORE INTO org_domain_claims"
                " (domain, org, token, requested, requested_by) VALUES (?, ?, ?, ?, ?)",
                (domain, org, token, now, requested_by),
            )
            return claim(db.conn, org, domain)

        return self.run_sync(write)

    def confirm_claim(self, org: str, domain: str, token: str, now: float) -> str | None:
        """Bind ``domain`` to ``org`` on the proof of ``token``, if that is still
        ``org``'s claim and nobody holds the domain; every claim of the domain ends.
        Returns None when bound, else why not: ``"claim"`` (no such claim, or another
        token) or the holder's code."""

        def write(db: sqlite_utils.Database) -> str | None:
            conn = db.conn
            pending = claim(conn, org, domain)
            if pending is None or pending.token != token:
                return "claim"
            holder = org_for_domain(conn, domain)
            if holder is not None and holder != org:
                return holder
            if holder is None:
                conn.execute(
                    "INSERT INTO org_domains (domain, org, added) VALUES (?, ?, ?)",
                    (domain, org, now),
                )
            conn.execute("DELETE FROM org_domain_claims WHERE domain = ?", (domain,))
            return None

        return self.run_sync(write)

    def withdraw_claim(self, org: str, domain: str) -> bool:
        """Drop ``org``'s pending claim of ``domain``; False when it had none."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "DELETE FROM org_domain_claims WHERE domain = ? AND org = ?", (domain, org)
                ).rowcount
                > 0
            )
        )

    def unbind_domain(self, org: str, domain: str) -> bool:
        """Unbind ``domain`` from ``org``; False when it was not bound to it."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "DELETE FROM org_domains WHERE domain = ? AND org = ?", (domain, org)
                ).rowcount
                > 0
            )
        )
