"""App passwords: one secret per device for SMTP AUTH (docs/accounts.md, "App passwords").

A user with a second factor (TOTP, RFC 6238, set up in the web console) cannot type a
one-time code into a mail client, so SMTP AUTH takes from it only an *app password*:
``certifica users app-password add alice@example.com --name phone`` prints one, once;
it is given to that one device, and removed (``... remove ... --name phone``) when the
device is lost, without changing the account password or the other devices'. A user
without a second factor may use either.

An app password is 160 random bits (:func:`new_secret`), written in base32. The table
``app_passwords`` holds only its SHA-256: a secret that random cannot be found from its
hash by guessing, so the slow, salted hash a person's password needs (scrypt,
:mod:`relay.smtpd.users`) would add cost and nothing else (the same reasoning as for
API tokens and session cookies). A candidate is compared with every hash of the user
in constant time (:func:`hmac.compare_digest`), so the time taken does not tell how
much of a hash matched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

import sqlite_utils

from relay.queue.db import Database

SECRET_BITS = 160
"""The randomness of an app password (at least 128 bits: no slow hash is needed)."""


@dataclass(frozen=True)
class AppPassword:
    """One device's app password, as listed: never the secret, nor its hash."""

    name: str
    created: float
    last_used: float | None


def new_secret() -> str:
    """A new app password: :data:`SECRET_BITS` random bits in lower-case base32 (32
    letters and digits, easy to type on a phone, no ambiguous punctuation)."""
    raw = secrets.token_bytes(SECRET_BITS // 8)
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def secret_hash(secret: str) -> str:
    """What the table holds of ``secret``: its SHA-256, in hex. Spaces are left out and
    case is ignored, so a password typed in groups or in capitals still matches."""
    typed = "".join(secret.split()).lower()
    return hashlib.sha256(typed.encode("utf-8", "surrogateescape")).hexdigest()


def listed(conn: sqlite3.Connection, address: str) -> list[AppPassword]:
    """The app passwords of ``address``, by name."""
    rows = conn.execute(
        "SELECT name, created, last_used FROM app_passwords WHERE address = ? ORDER BY name",
        (address,),
    ).fetchall()
    return [
        AppPassword(str(r[0]), float(r[1]), None if r[2] is None else float(r[2])) for r in rows
    ]


def matching(conn: sqlite3.Connection, address: str, candidate: str) -> int | None:
    """The id of ``address``'s app password that ``candidate`` is, or None. Every hash of
    the user is compared, in constant time, whichever matches."""
    wanted = secret_hash(candidate).encode("ascii")
    found = None
    for row_id, stored in conn.execute(
        "SELECT id, secret_hash FROM app_passwords WHERE address = ?", (address,)
    ):
        if hmac.compare_digest(wanted, str(stored).encode("ascii")):
            found = int(row_id)
    return found


class AppPasswords(Database):
    """The ``app_passwords`` table: added and removed by ``certifica users app-password``,
    checked by SMTP AUTH (:meth:`relay.smtpd.submission.SubmissionHandler.verify_password`)."""

    async def app_password_id(self, address: str, candidate: str) -> int | None:
        """Which of ``address``'s app passwords ``candidate`` is (its id), or None. Only
        reads: a guesser's wrong passwords take no write lock."""
        return await self._read(lambda: matching(self._conn, address, candidate))

    async def app_password_used(self, row_id: int, now: float) -> None:
        """Record that app password ``row_id`` was just used to log in (``last_used``)."""
        await self._run(
            lambda: self._conn.execute(
                "UPDATE app_passwords SET last_used = ? WHERE id = ?", (now, row_id)
            )
        )

    def add_app_password(self, address: str, name: str, now: float) -> str | None:
        """A new app password named ``name`` for the user ``address``: returns the secret
        (shown once; only its hash is kept), or None when that user already has one of
        that name."""
        secret = new_secret()

        def write(db: sqlite_utils.Database) -> bool:
            return (
                db.conn.execute(
                    "INSERT OR IGNORE INTO app_passwords (address, name, secret_hash, created)"
                    " VALUES (?, ?, ?, ?)",
                    (address, name, secret_hash(secret), now),
                ).rowcount
                > 0
            )

        return secret if self.run_sync(write) else None

    def app_passwords_now(self, address: str) -> list[AppPassword]:
        return self.run_sync(lambda db: listed(db.conn, address), read=True)

    def remove_app_password(self, address: str, name: str) -> bool:
        """Remove ``address``'s app password ``name``; False when there is none."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "DELETE FROM app_passwords WHERE address = ? AND name = ?", (address, name)
                ).rowcount
                > 0
            )
        )
