"""Logging helpers: one line per event, and no traceback on the operator's terminal.

An unexpected error is logged as one line naming the error and where it happened; the
traceback goes to the debug level, for a developer who turns ``[log] level = "debug"``.
"""

from __future__ import annotations

import logging
import traceback


def log_failure(log: logging.Logger, message: str, *args: object) -> None:
    """Log the exception being handled as one error line; the traceback only at debug."""
    import sys

    err = sys.exc_info()[1]
    where = ""
    if err is not None and err.__traceback__ is not None:
        frame = traceback.extract_tb(err.__traceback__)[-1]
        where = f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    name = err.__class__.__name__ if err is not None else "error"
    log.error(message + " (%s%s)", *args, name, where)
    log.debug("traceback", exc_info=err)


def printable(text: str, limit: int = 320) -> str:
    """Untrusted text for a log line or a reply: at most ``limit`` characters, every
    non-printable one (terminal escapes, line breaks) shown as ``?``."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
