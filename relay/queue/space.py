"""Free space on the spool's file system, against ``[limits] min_free``.

Postfix refuses MAIL with ``452 4.3.1 Insufficient system storage`` when its queue file
system has less than ``queue_minfree`` bytes free; the listeners here do the same
(``relay.smtpd.replies.LOW_ON_SPACE``) and ``/readyz`` reports it (README, "Metrics and
health"). A full disk is found anyway when a write fails (``StoreFullError``, 452); this
refuses earlier, while there is still room for the mail already accepted to move on
and for its certificates.

:meth:`FreeSpace.low` is called at every MAIL: it asks the kernel (``statvfs``) at most
once per ``every`` seconds and answers from that figure in between, so a busy listener
pays one system call a second, not one per transaction.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

MEGABYTE = 1024 * 1024


class FreeSpace:
    """The free megabytes of the file system holding ``path``, cached ``every`` seconds."""

    def __init__(self, path: Path, min_free: int, every: float = 1.0) -> None:
        self.path = path
        self.min_free = min_free  # megabytes; 0: never low
        self.every = every
        self._checked = -every
        self._free = 0.0

    def free(self) -> float:
        """Megabytes available to the gateway (``f_bavail``: what root keeps is not
        counted); infinite when the file system cannot be asked."""
        now = time.monotonic()
        if now - self._checked >= self.every:
            self._checked = now
            try:
                st = os.statvfs(self.path)
            except OSError:
                self._free = float("inf")  # a missing spool is the database's to report
            else:
                self._free = st.f_bavail * st.f_frsize / MEGABYTE
        return self._free

    def low(self) -> bool:
        """True when less than ``min_free`` megabytes are free."""
        return self.min_free > 0 and self.free() < self.min_free
