"""The exceptions of the queue's database, raised by every :mod:`relay.queue` module.

::

    StoreError             -- the database could not do what was asked
      StoreFullError       -- out of disk space (452 to an SMTP client)

An intake that gets either answers the client 4xx (RFC 5321 4.2.5: nothing was stored,
the client keeps the message and tries again); see :mod:`relay.cleanup.intake`.
"""

from __future__ import annotations

from certifier.errors import StorageError


class StoreError(StorageError):
    """The database could not record what was asked."""


class StoreFullError(StoreError):
    """The disk holding the database is full."""
