"""The users who may submit mail (``certifica users ...``): their password hashes,
whether their certified mail is tracked, and the language and time zone their documents
are written in (NULL: the ``[gateway]`` defaults). Their organisation and role are
:mod:`relay.queue.orgs`; their app passwords :mod:`relay.queue.app_passwords`.
"""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

from relay.queue.db import Database

USER_TABLES = ("app_passwords", "api_tokens", "web_sessions")
"""The tables whose rows belong to one user (``address``): removed with it, listed by
``certifica export --subject`` and removed by ``certifica erase --subject``."""


class Users(Database):
    """The ``users`` table."""

    async def user_hash(self, address: str) -> str | None:
        return await self._read(self._user_hash, address)

    def _user_hash(self, address: str) -> str | None:
        row = self._conn.execute(
            "SELECT password_hash FROM users WHERE address = ?", (address.lower(),)
        ).fetchone()
        return row[0] if row else None

    async def user_tracking(self, address: str) -> bool:
        return await self._read(
            lambda: bool(
                (
                    self._conn.execute(
                        "SELECT tracking FROM users WHERE address = ?", (address.lower(),)
                    ).fetchone()
                    or (1,)
                )[0]
            )
        )

    async def user_reading(self, address: str) -> tuple[str | None, str | None]:
        """The user's (language, timezone); (None, None) for no user or no choice."""

        def read() -> tuple[str | None, str | None]:
            row = self._conn.execute(
                "SELECT language, timezone FROM users WHERE address = ?", (address.lower(),)
            ).fetchone()
            return (row[0], row[1]) if row else (None, None)

        return await self._read(read)

    def user_exists(self, address: str) -> bool:
        """Whether ``address`` (normalised already) is a user."""
        return self.run_sync(
            lambda db: (
                db.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone()
                is not None
            )
        )

    def add_user(
        self,
        address: str,
        password_hash: str,
        now: float,
        *,
        org: str = "default",
        role: str = "sender",
    ) -> bool:
        """Add a user to organisation ``org`` with ``role`` (docs/accounts.md); False,
        with nothing changed, when it exists already (added by someone else since the
        caller looked)."""
        return self.run_sync(
            lambda db: (
                db.conn.execute(
                    "INSERT OR IGNORE INTO users (address, password_hash, created, org, role)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (address, password_hash, now, org, role),
                ).rowcount
                > 0
            )
        )

    def set_user(
        self,
        address: str,
        *,
        password_hash: str | None = None,
        tracking: bool | None = None,
        language: str | None = None,
        timezone: str | None = None,
    ) -> bool:
        """Change a user's password hash (which ends its console sessions and voids its
        API tokens and app passwords: ``credentials_changed``), whether its certified mail is tracked, its language or its time
        zone (None: unchanged; "" for language or timezone: back to the ``[gateway]``
        default). False when there is no such user."""

        def _set(db: Any) -> bool:
            found = db.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,))
            if found.fetchone() is None:
                return False
            if password_hash is not None:
                # A new password ends what the old one opened: console sessions, API
                # tokens and app passwords made before now (docs/accounts.md).
                db.conn.execute(
                    "UPDATE users SET password_hash = ?, credentials_changed = ? WHERE address = ?",
                    (password_hash, time.time(), address),
                )
                db.conn.execute("DELETE FROM web_sessions WHERE address = ?", (address,))
            if tracking is not None:
                db.conn.execute(
                    "UPDATE users SET tracking = ? WHERE address = ?", (int(tracking), address)
                )
            if language is not None:
                db.conn.execute(
                    "UPDATE users SET language = ? WHERE address = ?", (language or None, address)
                )
            if timezone is not None:
                db.conn.execute(
                    "UPDATE users SET timezone = ? WHERE address = ?", (timezone or None, address)
                )
            return True

        return self.run_sync(_set)

    def clear_totp(self, address: str, now: float) -> bool:
        """The operator's reset of a lost second factor (``certifica users set ADDR
        --no-totp``): the TOTP secret is forgotten, the user's console sessions end (and
        its app passwords: ``credentials_changed``), and its account password works for
        SMTP AUTH again (docs/accounts.md). False when
        there is no such user."""

        def write(db: sqlite_utils.Database) -> bool:
            changed = db.conn.execute(
                "UPDATE users SET totp_secret = NULL, totp_step = NULL, credentials_changed = ?"
                " WHERE address = ?",
                (now, address),
            ).rowcount
            if changed:
                db.conn.execute("DELETE FROM web_sessions WHERE address = ?", (address,))
            return changed > 0

        return self.run_sync(write)

    def list_users(self) -> list[dict[str, Any]]:
        """Every user's ``address``, ``created``, ``language``, ``timezone``, ``org``,
        ``role``, ``disabled`` and ``totp`` (whether it has a second factor), by address."""
        return self.run_sync(
            lambda db: list(
                db.query(
                    "SELECT address, created, language, timezone, org, role, disabled,"
                    " totp_secret IS NOT NULL AS totp FROM users ORDER BY address"
                )
            ),
            read=True,
        )

    def remove_user(self, address: str) -> bool:
        """Remove a user, with its app passwords, API tokens and console sessions; False
        when there is none."""

        def write(db: sqlite_utils.Database) -> bool:
            if not db.conn.execute("DELETE FROM users WHERE address = ?", (address,)).rowcount:
                return False
            for table in USER_TABLES:
                db.conn.execute(f"DELETE FROM {table} WHERE address = ?", (address,))  # noqa: S608
            # its pending requests to bind a domain (docs/accounts.md) end with it
            db.conn.execute("DELETE FROM org_domain_claims WHERE requested_by = ?", (address,))
            return True

        return self.run_sync(write)
