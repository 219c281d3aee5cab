"""Logging helpers: one line per event, and no traceback on the operator's terminal.

An unexpected error is logged as one line naming the error and where it happened; the
traceback goes to the debug level, for a developer who turns ``[log] level = "debug"``.

Client text (EHLO names, addresses, AUTH user names, subjects, remote replies, user
agents) is escaped by :func:`printable` wherever it is written: in a log line, in the
database, in a reply that echoes it. The escape is one line of printable characters
and can be read back to the exact input:

* ``\\`` becomes ``\\\\``, so an escape sequence in the output always came from the
  escaper, never from the client (nobody can forge one);
* C0 controls and DEL (CR, LF, ESC, NUL...) become ``\\xNN``;
* bytes that were not UTF-8 (held by Python as surrogateescape code points
  U+DC80-U+DCFF) become ``\\xNN`` too, NN >= 80, so they do not collide with the C0 ones;
* every other non-printable code point (C1 controls, the bidi overrides U+202A-U+202E
  and isolates U+2066-U+2069, the line and paragraph separators U+2028/U+2029, other
  format characters, lone surrogates) becomes ``\\uNNNN`` (``\\UNNNNNNNN`` above U+FFFF).

:class:`OneLineFormatter` is the safety net under all of it: it escapes the whole
formatted message of every record (the backslash excepted, so text already escaped by
:func:`printable` passes unchanged), so a log call that forgot to escape still writes
one line that cannot colour the terminal.

Where the lines go (``[log]``, README "Logs"): stderr always, and ``[log] file`` as well
when set. ``format = "text"`` is Postfix's line, ``time process: [warning: ]message``;
under systemd, whose journal stamps each line itself, the time is left out and the line
starts with its syslog priority (``<4>``, sd-daemon(3)) so ``journalctl -p warning``
selects by level. ``format = "json"`` writes one object per line with the same fields,
for log shippers: ``time`` (RFC 3339, UTC), ``level``, ``process``, ``qid`` when the line
is about a message, ``message``. :func:`configure` installs both.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import logging.handlers
import os
import re
import ssl
import sys
import traceback
from pathlib import Path
from typing import IO, Any


def log_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled as one error line; the traceback only at debug."""
    err = sys.exc_info()[1]
    where = ""
    if err is not None and err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    name = err.__class__.__name__ if err is not None else "error"
    log.error(message + " (%s%s)", *args, name, where)
    log.debug("traceback", exc_info=err)


def peer_text(peer: Any) -> str:
    """A client's address as log lines write it: ``[192.0.2.1]:52100``, else ``unknown``."""
    if isinstance(peer, tuple) and peer:
        return f"[{peer[0]}]:{peer[1]}" if len(peer) > 1 else str(peer[0])
    return "unknown"


_loop_log = logging.getLogger("certifica/loop")


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's last resort, one line instead of asyncio's traceback.

    A connection that breaks (a reset, a TLS alert: OSError) is the peer's doing and an
    ``info`` line; anything else is an error line naming the exception; the traceback
    goes to the debug level, like :func:`log_failure`.
    """
    err = context.get("exception")
    message = str(context.get("message") or "unexpected error in the event loop")
    if isinstance(err, OSError | ssl.SSLError):
        reason = getattr(err, "reason", None) or err.__class__.__name__
        _loop_log.info("%s: %s", printable(message, 200), printable(str(reason), 120))
        return
    name = err.__class__.__name__ if err is not None else "no exception"
    _loop_log.error("%s (%s)", printable(message, 200), name)
    if err is not None:
        _loop_log.debug("traceback", exc_info=err)


def _escape_char(c: str) -> str:
    n = ord(c)
    if n < 0x80:
        return f"\\x{n:02x}"
    if 0xDC80 <= n <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{n - 0xDC00:02x}"
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def _escape(text: str, backslash: bool) -> str:
    if text.isprintable() and (not backslash or "\\" not in text):
        return text  # the common case, at C speed
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\" if backslash else c)
        elif c.isprintable():
            out.append(c)
        else:
            out.append(_escape_char(c))
    return "".join(out)


def printable(text: str | bytes, limit: int | None = 320) -> str:
    """Untrusted text for a log line, the database or a reply: one line of printable
    characters, reversible (see the module docstring), cut to ``limit`` characters of
    input (``None``: no cut) with ``...`` marking the cut. Bytes are read as UTF-8,
    the bytes that are not shown as ``\\xNN``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    cut = limit is not None and len(text) > limit
    shown = _escape(text[:limit] if cut else text, backslash=True)
    return shown + "..." if cut else shown


def one_line(text: str) -> str:
    """``text`` with every non-printable character escaped as :func:`printable` does,
    the backslash left alone: idempotent on :func:`printable`'s output."""
    return _escape(text, backslash=False)


class OneLineFormatter(logging.Formatter):
    """A formatter whose message part is always one printable line (the traceback, only
    logged at debug level, keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = one_line(record.message)
        return super().formatMessage(record)


class PostfixFormatter(OneLineFormatter):
    """``[time ]process: [warning: |error: ]message``, as Postfix writes its log; the
    message always one line. ``journal``: no time (the journal has it) and the syslog
    priority first, ``<3>`` to ``<7>``, which journald reads and strips (sd-daemon(3))."""

    def __init__(self, journal: bool = False) -> None:
        if journal:
            super().__init__("%(name)s: %(message)s")
        else:
            super().__init__("%(asctime)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.ERROR:
            head, _, tail = line.partition(": ")
            line = f"{head}: error: {tail}"
        elif record.levelno >= logging.WARNING:
            head, _, tail = line.partition(": ")
            line = f"{head}: warning: {tail}"
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journal else line


def syslog_priority(levelno: int) -> int:
    """RFC 5424 severity of a logging level: 3 error, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


QID_FIRST = re.compile(r"([0-9A-F]{12}): ")
"""A line about a message starts with its queue id (``relay.queue.ids``), as Postfix's do."""


def qid_of(message: str) -> str | None:
    """The queue id a log line is about, or None."""
    found = QID_FIRST.match(message)
    return found.group(1) if found else None


class JSONFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``process``, ``qid`` (when the line
    is about a message), ``message``; the fields of the text line, for log shippers. The
    message is escaped as in the text line; a traceback (debug only) is ``traceback``."""

    def format(self, record: logging.LogRecord) -> str:
        message = one_line(record.getMessage())
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, str] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "process": record.name,
        }
        qid = qid_of(message)
        if qid:
            entry["qid"] = qid
        entry["message"] = message
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def under_journal(stream: IO[str]) -> bool:
    """True when ``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM``
    to the device and inode of the stdout/stderr it gave the service (systemd.exec(5));
    a stream that was redirected elsewhere has others, so the variable alone is not
    trusted."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def formatter(kind: str, journal: bool) -> logging.Formatter:
    """The formatter of ``[log] format`` (``text`` or ``json``)."""
    return JSONFormatter() if kind == "json" else PostfixFormatter(journal=journal)


def configure(level: str, kind: str = "text", file: Path | None = None) -> None:
    """Log at ``level`` to stderr and, when given, to ``file`` as well, in ``kind``
    (``[log] format``). The file is reopened when logrotate moved it away
    (:class:`logging.handlers.WatchedFileHandler`, in every process). Raises
    :class:`OSError` when the file cannot be opened for appending, and then leaves the
    logging as it was.

    Called again on a reload (README "Reloading"): the new handlers replace the old
    ones, which are closed (so ``[log] file`` is opened anew), and keep their filters
    (a child's process tag, :mod:`relay.process.child`)."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter(kind, journal=under_journal(sys.stderr)))
    handlers: list[logging.Handler] = [console]
    if file is not None:
        written = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        written.setFormatter(formatter(kind, journal=False))
        handlers.append(written)
    kept = [f for h in logging.getLogger().handlers for f in h.filters]
    for handler in handlers:
        for kept_filter in dict.fromkeys(kept):
            handler.addFilter(kept_filter)
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=handlers, force=True)
    # aiosmtpd logs every command line at INFO; the gateway logs what matters itself.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
