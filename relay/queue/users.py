"""The users who may submit mail (``certifica users ...``): their password hashes,
whether their certified mail is tracked, and the language and time zone their documents
are written in (NULL: the ``[gateway]`` defaults).
"""

from __future__ import annotations

import time
from typing import Any

from relay.queue.db import Database


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
        API tokens), whether its certified mail is tracked, its language or its time
        zone (None: unchanged; "" for language or timezone: back to the ``[gateway]``
        default). False when there is no such user."""

        def _set(db: Any) -> bool:
            found = db.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,))
            if found.fetchone() is None:
                return False
            if password_hash is not None:
                # A new password ends what the old one opened: console sessions and API
                # tokens made before now (docs/accounts.md).
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

    def list_users(self) -> list[dict[str, Any]]:
        """Every user's ``address``, ``created``, ``language`` and ``timezone``, by address."""
        return self.run_sync(
            lambda db: list(
                db.query("SELECT address, created, language, timezone FROM users ORDER BY address")
            )
        )

    def remove_user(self, address: str) -> bool:
        """Remove a user; False when there is none."""
        return self.run_sync(
            lambda db: (
                db.conn.execute("DELETE FROM users WHERE address = ?", (address,)).rowcount > 0
            )
        )
