"""API tokens: what an integrator's program sends as ``Authorization: Bearer <token>``
to the JSON API (docs/api.md; RFC 6750).

A token is made by ``certifica token add ADDR --name erp``, shown once, and acts as its
user with its user's role (:mod:`relay.roles`). The database holds only its SHA-256
(``api_tokens.token_hash``), so a copy of the database, or a backup, gives no token.

A token is looked up by its hash, not compared by a slow password hash as passwords are:
a password is chosen by a person and may be guessed, so it is stored behind a slow,
salted function (scrypt) that makes each guess expensive; a token is 256 random bits
(:func:`new_token`), which no one guesses, fast hash or not, and a preimage of SHA-256
is as hard to find as the token itself. A fast hash keeps the lookup an index probe on
every request, and comparing hashes in that index tells a timing observer nothing about
the token (an attacker cannot choose a hash to probe with).

A token is void, without being removed, when it was made before its user's
``credentials_changed`` (set when the user is disabled: its tokens stay void when it is
enabled again; make new ones) or before its user's ``created`` (a user removed and added
again does not inherit the old tokens). ``last_used`` is written at most once a minute
(:data:`LAST_USED_EVERY`), so a busy integrator does not cost a database write per
request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass

import sqlite_utils

from relay.queue import orgs
from relay.queue.db import Database
from relay.queue.orgs import Account

TOKEN_PREFIX = "cfk_"  # noqa: S105 - a prefix, not a secret
"""What every token starts with, so that a secret scanner (or a person) recognises one
pasted where it should not be."""

TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A token's name (``erp``, ``crm-2026``): what ``token list`` shows and ``remove`` takes."""

TOKEN = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{43}")
"""The shape of a token (the prefix and 32 bytes in unpadded base64url, RFC 4648 §5)."""

LAST_USED_EVERY = 60.0
"""Seconds between two writes of a token's ``last_used``."""


def new_token() -> str:
    """A new token: the prefix and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the database holds of ``token``: its SHA-256, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiToken:
    """A token as ``token list`` shows it: never the token itself."""

    name: str
    created: float
    last_used: float | None


@dataclass(frozen=True)
class TokenUse:
    """Whom a presented token acts for, and whether its ``last_used`` is due a write."""

    account: Account
    token_id: int
    stale: bool


def holder(conn: sqlite3.Connection, digest: str, now: float) -> TokenUse | None:
    """The active user the token with SHA-256 ``digest`` acts for; None when there is no
    such token, it is void (made before its user's ``created`` or
    ``credentials_changed``), or its user or organisation is disabled."""
    row = conn.execute(
        "SELECT t.id, t.address, t.created, t.last_used, u.created, u.credentials_changed"
        " FROM api_tokens t JOIN users u ON u.address = t.address WHERE t.token_hash = ?",
        (digest,),
    ).fetchone()
    if row is None:
        return None
    token_id, address, created, last_used, user_created, changed = row
    if created < (user_created or 0) or (changed is not None and created < changed):
        return None
    found = orgs.account(conn, str(address))
    if found is None or not found.active:
        return None
    stale = last_used is None or now - float(last_used) >= LAST_USED_EVERY
    return TokenUse(found, int(token_id), stale)


class Tokens(Database):
    """``api_tokens``: ``certifica token`` and the JSON API's authentication."""

    async def token_user(self, token: str, now: float) -> Account | None:
        """The active user ``token`` acts for, or None (the API answers 401); records
        its use at most once a minute."""
        if not TOKEN.fullmatch(token):
            return None
        digest = token_hash(token)
        use = await self._read(lambda: holder(self._conn, digest, now))
        if use is None:
            return None
        if use.stale:

            def touch() -> None:
                self._conn.execute(
                    "UPDATE api_tokens SET last_used = ? WHERE id = ?"
                    " AND (last_used IS NULL OR last_used <= ?)",
                    (now, use.token_id, now - LAST_USED_EVERY),
                )

            await self._run(touch)
        return use.account

    def add_token(self, address: str, name: str, token: str, now: float) -> bool:
        """Record ``token`` (its hash) as ``address``'s token ``name``; False, with
        nothing changed, when the user has a token of that name already."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "INSERT OR IGNORE INTO api_tokens (address, name, token_hash, created)"
                    " VALUES (?, ?, ?, ?)",
                    (address, name, token_hash(token), now),
                ).rowcount
                > 0
            )
        )

    def tokens_of(self, address: str) -> list[ApiToken]:
        """``address``'s tokens, by name."""

        def read(db: sqlite_utils.Database) -> list[ApiToken]:
            rows = db.conn.execute(
                "SELECT name, created, last_used FROM api_tokens WHERE address = ? ORDER BY name",
                (address,),
            ).fetchall()
            return [ApiToken(str(n), float(c), None if u is None else float(u)) for n, c, u in rows]

        return self.run_sync(read, read=True)

    def remove_token(self, address: str, name: str) -> bool:
        """Remove ``address``'s token ``name``; False when it has none of that name."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "DELETE FROM api_tokens WHERE address = ? AND name = ?", (address, name)
                ).rowcount
                > 0
            )
        )
