"""Taking ownership of a message: the one way mail enters the queue from SMTP.

Both listeners that accept mail for delivery (submission, and the MX for Cc copies)
end their DATA the same way: the bytes go to the spool, fsynced with their directory,
then the row goes to the store in one transaction, and only then is the client told
250 (RFC 5321 §6.1: once the server says 250 it owns the message). If either step
fails the client is told 451 or 452 and the spool file is removed, so nothing half
accepted is left behind.

Also here: the checks an envelope or header recipient must pass before the gateway
will deliver to it (no source routes, no % hacks, a real domain).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from relay import replies
from relay.spool import Spool, is_disk_full
from relay.store import NewMessage, Store, StoreError, StoreFullError

log = logging.getLogger("certifica/intake")

# Acceptance writes the spool on threads of its own: behind the default executor it
# would wait for the deliveries' spool reads and DKIM signatures, and a backlog of
# outgoing mail would slow every SMTP client down (measured with `make bench`).
_INTAKE = ThreadPoolExecutor(max_workers=4, thread_name_prefix="intake")


def address_problem(address: str) -> str | None:
    """Why ``address`` is not one the gateway delivers to, or None when it is fine."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return "it needs a local part and a domain"
    if len(address) > 254 or len(local) > 64:
        return "it is too long"
    if domain.startswith("[") or "." not in domain and domain != "localhost":
        return "the domain must be a host name"
    if "%" in local or "!" in local:
        return "source routes and % hacks are not accepted"
    return None


async def accept(
    store: Store, spool: Spool, qid: str, raw: bytes, message: Callable[[str], NewMessage]
) -> str | None:
    """Spool ``raw`` and record ``message(sha256)``; None when owned, else the reply.

    ``message`` builds the row from the received hash, which is computed while the
    bytes are written (off the event loop).
    """
    loop = asyncio.get_running_loop()
    try:
        sha256 = await loop.run_in_executor(_INTAKE, _spool, spool, qid, raw)
    except OSError as err:
        log.error("%s: could not store the message: %s", qid, err.strerror or err)
        return replies.DISK_FULL if is_disk_full(err) else replies.STORE_FAILED
    try:
        await store.enqueue(message(sha256), time.time())
    except (StoreError, OSError) as err:
        await loop.run_in_executor(_INTAKE, spool.remove, qid)
        log.error("%s: could not record the message: %s", qid, err)
        full = isinstance(err, StoreFullError) or is_disk_full(err)
        return replies.DISK_FULL if full else replies.STORE_FAILED
    except Exception:
        # Not recorded (the row could not be built or written: a fault of ours, which
        # the caller reports), so not owned: the spool file goes now, not at the next
        # start. Cancellation is not caught: the commit may still have happened.
        await loop.run_in_executor(_INTAKE, spool.remove, qid)
        raise
    return None


def _spool(spool: Spool, qid: str, raw: bytes) -> str:
    spool.store(qid, raw)
    return hashlib.sha256(raw).hexdigest()


def session_tls(server: Any) -> tuple[str | None, str | None]:
    """TLS version and cipher of an SMTP session, for STARTTLS and implicit TLS alike."""
    transport = getattr(server, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None
