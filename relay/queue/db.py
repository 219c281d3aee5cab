"""The plumbing of the queue's database: one connection, on one thread, with group commit.

SQLite in WAL mode with ``synchronous=FULL``, through sqlite-utils. Every call the store
offers is one *operation* handed to the store's own thread, so the event loop never
blocks on disk; the thread runs the operations waiting at that moment in one transaction
(each inside its own savepoint) and commits once before answering any of them (see
:class:`Database`). The schema is :mod:`relay.queue.migrations`; the concerns built on this
class are the other modules of :mod:`relay.queue`, put together in
:class:`relay.queue.store.Store`.
"""

from __future__ import annotations

import asyncio
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlite_utils

from relay.private import create_private_file
from relay.queue.errors import StoreError, StoreFullError
from relay.queue.migrations import migrate

T = TypeVar("T")


GROUP_MAX = 256
"""Operations committed together at most (see :class:`Database`)."""


@dataclass(frozen=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    reply: Callable[[bool, Any], None]
    read: bool = False  # only reads: needs no write lock (WAL readers never wait)


def _store_error(err: Exception) -> Exception:
    """The exception a caller sees: SQLite's mapped to :class:`StoreError` (full disk:
    :class:`StoreFullError`), anything else (a bug) as it is."""
    if isinstance(err, sqlite3.OperationalError):
        if "full" in str(err).lower():
            return _chained(StoreFullError(str(err)), err)
        return _chained(StoreError(str(err)), err)
    if isinstance(err, sqlite3.DatabaseError):
        return _chained(StoreError(str(err)), err)
    return err


def _chained(new: Exception, cause: Exception) -> Exception:
    new.__cause__ = cause
    return new


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
_INSERTABLE = frozenset({"messages", "recipients", "tracking_events", "sms_messages"})


def _check_columns(columns: Iterable[str]) -> None:
    # Column names are joined into the SQL; they come from the code, never from a client,
    # and this makes sure of it (a raise, not an assert: ``python -O`` keeps it).
    for column in columns:
        if not _COLUMN.match(column):
            raise ValueError(f"not a column name: {column!r}")


def query_rows(
    conn: sqlite3.Connection, sql: str, params: Iterable[Any] | dict[str, Any] = ()
) -> list[dict[str, Any]]:
    """The rows ``sql`` selects, as dicts by column name, on ``conn`` (inside the
    caller's transaction, where ``sqlite_utils``' own ``query`` is not at hand)."""
    cursor = conn.execute(sql, params if isinstance(params, dict) else tuple(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def insert_row(conn: sqlite3.Connection, table: str, row: dict[str, Any]) -> None:
    """Insert ``row`` into ``table`` inside the current transaction."""
    # Plain SQL rather than sqlite-utils' insert(), which commits on its own and would
    # split what must be one transaction (message, recipients, evidence).
    if table not in _INSERTABLE:
        raise ValueError(f"not a table rows are inserted into: {table!r}")
    _check_columns(row)
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(row.values()))  # noqa: S608


def update_message(conn: sqlite3.Connection, qid: str, columns: dict[str, Any]) -> None:
    """Set ``columns`` of message ``qid`` inside the current transaction."""
    if not columns:
        return
    _check_columns(columns)
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conn.execute(
        f"UPDATE messages SET {assignments} WHERE qid = ?",  # noqa: S608
        (*columns.values(), qid),
    )


def update_message_if(
    conn: sqlite3.Connection, qid: str, columns: dict[str, Any], only_if: dict[str, Any]
) -> bool:
    """Set ``columns`` of message ``qid`` only while its columns still hold ``only_if``;
    False when they no longer do (another process got there first). The condition and
    the write are one statement, so no claimer sees a stale value (ARCHITECTURE.md §5)."""
    if not columns or not only_if:
        raise ValueError("a conditional update needs columns to set and a condition")
    _check_columns(columns)
    _check_columns(only_if)
    assignments = ", ".join(f"{c} = ?" for c in columns)
    conditions = " AND ".join(f"{c} = ?" for c in only_if)
    cursor = conn.execute(
        f"UPDATE messages SET {assignments} WHERE qid = ? AND {conditions}",  # noqa: S608
        (*columns.values(), qid, *only_if.values()),
    )
    return cursor.rowcount == 1


class Database:
    """The database, reached only through its own thread, with group commit.

    Every call is one operation: the store's thread runs the operations waiting at that
    moment (at most :data:`GROUP_MAX`) in one transaction, each inside its own savepoint,
    and commits once; only then are their callers answered. Under load twenty SMTP
    sessions' acceptances share one fsync of the WAL instead of paying one each, and a
    caller is still never told "stored" before its commit is on disk. An operation that
    fails is rolled back to its savepoint alone; a failed commit fails every operation
    of the group (each caller then answers 451, nothing half-stored).

    A subclass adds operations: a coroutine that hands a function of its own to
    :meth:`_run` (writes) or :meth:`_read` (reads only), or a synchronous method for the
    CLI that hands it to :meth:`run_sync`. That function runs on the store's thread and
    may use :attr:`_conn` and :attr:`_db`; nothing else does.
    """

    def __init__(self, path: Path, lifetime: float) -> None:
        self.path = path
        self.lifetime = lifetime
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._opened: Future[None] = Future()
        self._thread = threading.Thread(target=self._serve, name="store", daemon=True)
        self._thread.start()
        self._opened.result()

    def _open(self) -> None:
        if not self.path.exists():
            # SQLite gives -wal and -shm the database file's mode: 0600 for all three.
            create_private_file(self.path)
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        self._database = sqlite_utils.Database(conn)
        migrate(conn)

    @property
    def _db(self) -> sqlite_utils.Database:
        return self._database

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._database.conn

    def _serve(self) -> None:
        try:
            self._open()
        except BaseException as err:  # noqa: BLE001 - handed to the constructor's caller
            self._opened.set_exception(err)
            return
        self._opened.set_result(None)
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            group = [first]
            while len(group) < GROUP_MAX:
                try:
                    op = self._queue.get_nowait()
                except queue.Empty:
                    break
                if op is None:
                    stop = True
                    break
                group.append(op)
            self._run_group(group)
        self._conn.close()

    def _run_group(self, group: list[_Op]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        conn = self._conn
        try:
            # A group that writes takes the write lock at once, so it cannot fail half-way
            # on a lock; a group of reads takes none and never waits for a writer.
            conn.execute("BEGIN" if all(op.read for op in group) else "BEGIN IMMEDIATE")
            for op in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = op.fn(*op.args)
                except Exception as err:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((False, _store_error(err)))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((True, value))
            conn.execute("COMMIT")
        except Exception as err:  # BEGIN, a savepoint or the COMMIT itself failed
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            failure = _store_error(err)
            outcomes = [(False, failure)] * len(group)
        for op, (ok, value) in zip(group, outcomes, strict=True):
            op.reply(ok, value)

    async def _run(self, fn: Callable[..., T], *args: Any, read: bool = False) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def reply(ok: bool, value: Any) -> None:
            loop.call_soon_threadsafe(_settle, future, ok, value)

        self._queue.put(_Op(fn, args, reply, read))
        return await future

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_run` for an operation that only reads."""
        return await self._run(fn, *args, read=True)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> Self:
        """``with open_store(cfg) as store:``, closed however the block ends (the
        ``certifica`` commands)."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run_sync(self, fn: Callable[[sqlite_utils.Database], T], *, read: bool = False) -> T:
        """Run ``fn(db)`` as one operation from synchronous code: the methods of this
        package that ``certifica`` commands call, and tests. ``read``: it only reads, and
        takes no write lock (a long search leaves the gateway's writers alone)."""
        future: Future[T] = Future()

        def reply(ok: bool, value: Any) -> None:
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

        self._queue.put(_Op(lambda: fn(self._db), (), reply, read))
        return future.result()
