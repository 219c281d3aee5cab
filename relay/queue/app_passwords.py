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

An app password ends with the credentials it was made under, as an API token does
(:mod:`relay.queue.tokens`): one made before its user's ``credentials_changed`` (a
password reset, the user disabled, the second factor turned on or off or cleared by the
operator) or before its user's ``created`` (a user removed and added again) is *void*:
SMTP AUTH refuses it, it is not listed, and the next app password made for the user
deletes it. The user lists and revokes its own in the web console (docs/console.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

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


LIVE = (
    "a.created >= u.created AND (u.credentials_changed IS NULL"
    " OR a.created >= u.credentials_changed)"
)
"""SQL: app password ``a`` is not void (made since its user ``u`` was added and since
its credentials last changed)."""


def listed(conn: sqlite3.Connection, address: str) -> list[AppPassword]:
    """The app passwords of ``address`` that are not void, by name."""
    rows = conn.execute(
        "SELECT a.name, a.created, a.last_used FROM app_passwords a"  # noqa: S608 - LIVE
        f" JOIN users u ON u.address = a.address WHERE a.address = ? AND {LIVE}"
        " ORDER BY a.name",
        (address,),
    ).fetchall()
    return [
        AppPassword(str(r[0]), float(r[1]), None if r[2] is None else float(r[2])) for r in rows
    ]


def matching(conn: sqlite3.Connection, address: str, candidate: str) -> int | None:
    """The id of ``address``'s app password that ``candidate`` is, or None, also when
    that one is void. Every hash of the user is compared, void or not, in constant time,
    whichever matches: a void app password costs what a wrong one costs."""
    wanted = secret_hash(candidate).encode("ascii")
    found = None
    for row_id, stored, live in conn.execute(
        f"SELECT a.id, a.secret_hash, {LIVE} FROM app_passwords a"  # noqa: S608 - LIVE
        " JOIN users u ON u.address = a.address WHERE a.address = ?",
        (address,),
    ):
        if hmac.compare_digest(wanted, str(stored).encode("ascii")) and live:
            found = int(row_id)
    return found


def delete_void(conn: sqlite3.Connection, address: str) -> None:
    """Delete ``address``'s void app passwords (their names become free again)."""
    conn.execute(
        "DELETE FROM app_passwords WHERE id IN (SELECT a.id FROM app_passwords a"  # noqa: S608
        f" JOIN users u ON u.address = a.address WHERE a.address = ? AND NOT ({LIVE}))",
        (address,),
    )


def insert(conn: sqlite3.Connection, address: str, name: str, secret: str, now: float) -> bool:
    """Store ``secret``'s hash as ``address``'s app password ``name`` (the user's void
    ones deleted first); False when it has a live one of that name."""
    delete_void(conn, address)
    return (
        conn.execute(
            "INSERT OR IGNORE INTO app_passwords (address, name, secret_hash, created)"
            " VALUES (?, ?, ?, ?)",
            (address, name, secret_hash(secret), now),
        ).rowcount
        > 0
    )


def delete(conn: sqlite3.Connection, address: str, name: str) -> bool:
    """Remove ``address``'s app password ``name``; False when there is none."""
    return (
        conn.execute(
            "DELETE FROM app_passwords WHERE address = ? AND name = ?", (address, name)
        ).rowcount
        > 0
    )


class AppPasswords(Database):
    """The ``app_passwords`` table: added and removed by ``certifica users app-password``
    and by the user on its console account page, checked by SMTP AUTH
    (:meth:`relay.smtpd.submission.SubmissionHandler.verify_password`)."""

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

    async def app_passwords_of(self, address: str) -> list[AppPassword]:
        """The user's own list (the console's account page)."""
        return await self._read(lambda: listed(self._conn, address))

    async def new_app_password(self, address: str, name: str, now: float) -> str | None:
        """:meth:`add_app_password`, for the console."""
        secret = new_secret()
        added = await self._run(lambda: insert(self._conn, address, name, secret, now))
        return secret if added else None

    async def revoke_app_password(self, address: str, name: str) -> bool:
        """:meth:`remove_app_password`, for the console."""
        return await self._run(lambda: delete(self._conn, address, name))

    def add_app_password(self, address: str, name: str, now: float) -> str | None:
        """A new app password named ``name`` for the user ``address``: returns the secret
        (shown once; only its hash is kept), or None when that user already has one of
        that name."""
        secret = new_secret()
        added = self.run_sync(lambda db: insert(db.conn, address, name, secret, now))
        return secret if added else None

    def app_passwords_now(self, address: str) -> list[AppPassword]:
        return self.run_sync(lambda db: listed(db.conn, address), read=True)

    def remove_app_password(self, address: str, name: str) -> bool:
        """Remove ``address``'s app password ``name``; False when there is none."""
        return self.run_sync(lambda db: delete(db.conn, address, name))
