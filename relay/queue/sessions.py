"""The web console's sessions and second factors (docs/console.md).

A console session is one row of ``web_sessions``, keyed by the SHA-256 of the random
256-bit id the browser holds in its cookie: the database never holds a value that
would let whoever reads it (a backup, an export) act as a user. A session is
``password`` (the password was right, the second factor is owed) or ``full``; it ends
after ``[console] session_idle`` seconds without a request, ``session_max`` seconds
after it began, when it is logged out, and when the user's credentials change after
it began (``users.credentials_changed``: a password reset, a second factor turned on or
off, the user disabled).

The second factor is TOTP (RFC 6238): ``users.totp_secret`` (base32) and
``users.totp_step``, the last time step accepted. A code is accepted once (RFC 6238
section 5.2): :func:`accept_totp_step` records its step on condition that it is later
than the last one, in one statement, so two requests racing with one code cannot both
win.

The module-level functions take a connection and run inside the caller's transaction;
:class:`WebSessions` is the part of :class:`relay.queue.store.Store` that wraps them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum

from relay.queue.db import Database
from relay.queue.orgs import Account, account

TOUCH_INTERVAL = 60.0
"""Seconds between two writes of a session's ``last_seen``: a page view is a read, not
a write per request; the idle expiry is therefore exact to within this."""


class SessionStage(StrEnum):
    """The two stages of a session (``web_sessions.stage``)."""

    PASSWORD = "password"  # noqa: S105 - a stage: the password was right, the code is owed
    FULL = "full"


@dataclass(frozen=True)
class WebSession:
    """A live console session and the account it acts for."""

    id_hash: str
    account: Account
    stage: str
    csrf: str
    created: float


def create(
    conn: sqlite3.Connection,
    id_hash: str,
    address: str,
    csrf: str,
    stage: str,
    now: float,
    ip: str,
    user_agent: str,
) -> None:
    conn.execute(
        "INSERT INTO web_sessions (id_hash, address, created, last_seen, csrf, stage, ip,"
        " user_agent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (id_hash, address, now, now, csrf, stage, ip, user_agent[:300]),
    )


def lookup(
    conn: sqlite3.Connection, id_hash: str, now: float, idle: float, longest: float
) -> tuple[WebSession | None, bool]:
    """The live session ``id_hash`` (or None), and whether a write is owed: the
    session is to be deleted (past its idle or absolute expiry, begun before its user's
    credentials changed, its user gone or disabled) or its ``last_seen`` is older than
    :data:`TOUCH_INTERVAL`. Reads only."""
    row = conn.execute(
        "SELECT s.address, s.created, s.last_seen, s.csrf, s.stage, u.credentials_changed"
        " FROM web_sessions s LEFT JOIN users u ON u.address = s.address WHERE s.id_hash = ?",
        (id_hash,),
    ).fetchone()
    if row is None:
        return None, False
    address, created, last_seen, csrf, stage, changed = row
    user = account(conn, str(address))
    if (
        user is None
        or not user.active
        or now - float(last_seen) > idle
        or now - float(created) > longest
        or (changed is not None and float(created) < float(changed))
    ):
        return None, True
    session = WebSession(id_hash, user, str(stage), str(csrf), float(created))
    return session, now - float(last_seen) > TOUCH_INTERVAL


def touch(conn: sqlite3.Connection, id_hash: str, now: float, alive: bool) -> None:
    """After :func:`lookup`: the session seen now, or deleted."""
    if alive:
        conn.execute("UPDATE web_sessions SET last_seen = ? WHERE id_hash = ?", (now, id_hash))
    else:
        delete(conn, id_hash)


def delete(conn: sqlite3.Connection, id_hash: str) -> None:
    conn.execute("DELETE FROM web_sessions WHERE id_hash = ?", (id_hash,))


def expire(conn: sqlite3.Connection, now: float, idle: float, longest: float) -> int:
    """Delete every session past its idle or absolute expiry (those never seen again)."""
    return conn.execute(
        "DELETE FROM web_sessions WHERE last_seen < ? OR created < ?", (now - idle, now - longest)
    ).rowcount


def end_sessions(conn: sqlite3.Connection, address: str, now: float) -> None:
    """The user's credentials changed: every console session of it ends, and one begun
    before ``now`` anywhere else (another process's cached view) is refused too."""
    conn.execute("UPDATE users SET credentials_changed = ? WHERE address = ?", (now, address))
    conn.execute("DELETE FROM web_sessions WHERE address = ?", (address,))


def totp_of(conn: sqlite3.Connection, address: str) -> tuple[str, int | None] | None:
    """The user's TOTP secret and last accepted step, or None when it has no second factor."""
    row = conn.execute(
        "SELECT totp_secret, totp_step FROM users WHERE address = ?", (address,)
    ).fetchone()
    if row is None or row[0] is None:
        return None
    return str(row[0]), None if row[1] is None else int(row[1])


def accept_totp_step(conn: sqlite3.Connection, address: str, step: int) -> bool:
    """Record ``step`` as used; False when it, or a later one, was used already."""
    return (
        conn.execute(
            "UPDATE users SET totp_step = ? WHERE address = ? AND totp_secret IS NOT NULL"
            " AND (totp_step IS NULL OR totp_step < ?)",
            (step, address, step),
        ).rowcount
        == 1
    )


class WebSessions(Database):
    """Console sessions, second factors and password resets (:mod:`relay.web.console`)."""

    async def begin_session(
        self,
        id_hash: str,
        address: str,
        csrf: str,
        stage: str,
        now: float,
        ip: str,
        user_agent: str,
        *,
        replaces: str | None = None,
        idle: float,
        longest: float,
    ) -> None:
        """A new session (a new id: at login and after the second factor); the one it
        ``replaces`` (the cookie the browser came with) and every expired one are
        deleted in the same transaction."""

        def write() -> None:
            if replaces is not None:
                delete(self._conn, replaces)
            expire(self._conn, now, idle, longest)
            create(self._conn, id_hash, address, csrf, stage, now, ip, user_agent)

        await self._run(write)

    async def web_session(
        self, id_hash: str, now: float, idle: float, longest: float
    ) -> WebSession | None:
        """The live session ``id_hash``, or None (an ended one is deleted). A read; a
        write only to delete it or, once a minute, to note it was seen."""
        found, owed = await self._read(lambda: lookup(self._conn, id_hash, now, idle, longest))
        if owed:
            await self._run(lambda: touch(self._conn, id_hash, now, found is not None))
        return found

    async def end_session(self, id_hash: str) -> None:
        await self._run(lambda: delete(self._conn, id_hash))

    async def replace_password(self, address: str, password_hash: str, now: float) -> bool:
        """A new password for ``address`` (an admin's reset); its sessions end. False
        when there is no such user."""

        def write() -> bool:
            done = self._conn.execute(
                "UPDATE users SET password_hash = ? WHERE address = ?", (password_hash, address)
            ).rowcount
            if done:
                end_sessions(self._conn, address, now)
            return done == 1

        return await self._run(write)

    async def totp_of(self, address: str) -> tuple[str, int | None] | None:
        return await self._read(lambda: totp_of(self._conn, address))

    async def accept_totp_step(self, address: str, step: int) -> bool:
        return await self._run(lambda: accept_totp_step(self._conn, address, step))

    async def set_totp(
        self, address: str, secret: str | None, step: int | None, now: float
    ) -> None:
        """Turn the second factor on (``secret``, with the step of the code that confirmed
        it) or off (None); the user's sessions end either way (the caller begins a new
        one for the browser that did it)."""

        def write() -> None:
            self._conn.execute(
                "UPDATE users SET totp_secret = ?, totp_step = ? WHERE address = ?",
                (secret, step, address),
            )
            end_sessions(self._conn, address, now)

        await self._run(write)
