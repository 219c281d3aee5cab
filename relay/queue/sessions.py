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

Wrong codes are counted twice (:func:`wrong_code`), besides the per-address lockout the
console shares with SMTP AUTH: per session (``web_sessions.wrong_codes``), which ends
after :data:`SESSION_WRONG_CODES`, so the next guesses cost a password login again; and
per user (``users.wrong_codes`` since ``wrong_codes_since``), whose codes are refused
for ``[limits] auth_block_window`` (``codes_refused_until``) after
:data:`ACCOUNT_WRONG_CODES` within such a window, from whatever addresses they came. A
right code sets both counts back to zero. Only someone who knows the password can make
them count, so the refusal is not a way for anyone else to lock a user out.

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


SESSION_WRONG_CODES = 5
"""Wrong second-factor codes after which a password-stage session ends."""

ACCOUNT_WRONG_CODES = 10
"""Wrong second-factor codes of one user within ``[limits] auth_block_window`` after
which its codes are refused for that long."""


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
    before ``now`` anywhere else (another process's cached view) is refused too, as are
    its API tokens and app passwords made before ``now``."""
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


@dataclass(frozen=True)
class WrongCode:
    """What one wrong second-factor code led to."""

    session_ended: bool  # the session reached SESSION_WRONG_CODES: it was deleted
    codes_refused: bool  # this one made the user's ACCOUNT_WRONG_CODES: refused from now


def codes_refused(conn: sqlite3.Connection, address: str, now: float) -> bool:
    """Whether the user's second-factor codes are refused now (too many wrong ones)."""
    row = conn.execute(
        "SELECT codes_refused_until FROM users WHERE address = ?", (address,)
    ).fetchone()
    return row is not None and row[0] is not None and float(row[0]) > now


def wrong_code(
    conn: sqlite3.Connection, id_hash: str | None, address: str, now: float, window: float
) -> WrongCode:
    """Count a wrong code against session ``id_hash`` (None: not at login, no session
    count) and against the user, in the caller's transaction."""
    ended = False
    if id_hash is not None:
        conn.execute(
            "UPDATE web_sessions SET wrong_codes = wrong_codes + 1 WHERE id_hash = ?", (id_hash,)
        )
        ended = (
            conn.execute(
                "DELETE FROM web_sessions WHERE id_hash = ? AND wrong_codes >= ?",
                (id_hash, SESSION_WRONG_CODES),
            ).rowcount
            > 0
        )
    row = conn.execute(
        "SELECT wrong_codes, wrong_codes_since FROM users WHERE address = ?", (address,)
    ).fetchone()
    if row is None:
        return WrongCode(ended, False)
    count, since = int(row[0]), row[1]
    if since is None or now - float(since) >= window:
        count, since = 0, now  # a new window begins with this code
    count += 1
    refused = count >= ACCOUNT_WRONG_CODES
    conn.execute(
        "UPDATE users SET wrong_codes = ?, wrong_codes_since = ?,"
        " codes_refused_until = CASE WHEN ? THEN ? ELSE codes_refused_until END"
        " WHERE address = ?",
        (0 if refused else count, None if refused else since, refused, now + window, address),
    )
    return WrongCode(ended, refused)


def right_code(conn: sqlite3.Connection, address: str) -> None:
    """A right code: the user's count of wrong ones starts again from zero (the session
    that owed it is replaced by a new one, whose count is zero)."""
    conn.execute(
        "UPDATE users SET wrong_codes = 0, wrong_codes_since = NULL WHERE address = ?",
        (address,),
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
        """Accept a right code's ``step`` once (:func:`accept_totp_step`); when accepted,
        the user's count of wrong codes starts again from zero."""

        def write() -> bool:
            accepted = accept_totp_step(self._conn, address, step)
            if accepted:
                right_code(self._conn, address)
            return accepted

        return await self._run(write)

    async def codes_refused(self, address: str, now: float) -> bool:
        return await self._read(lambda: codes_refused(self._conn, address, now))

    async def wrong_code(
        self, id_hash: str | None, address: str, now: float, window: float
    ) -> WrongCode:
        return await self._run(lambda: wrong_code(self._conn, id_hash, address, now, window))

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
