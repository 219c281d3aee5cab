"""Taking ownership of a message: the one way mail enters the queue from SMTP.

Both listeners that accept mail for delivery (submission, and the MX for Cc copies)
end their DATA the same way: the bytes go to the spool, fsynced with their directory,
then the row goes to the store in one transaction, and only then is the client told
250 (RFC 5321 §6.1: once the server says 250 it owns the message). If either step
fails, for any reason, the spool file is removed before the client is told 451 or 452,
so nothing half accepted is left behind (the one exception: the client leaving while
the row is written, when the row may yet commit; the next start sweeps such files).
A certified message its organisation has not the credits for (or any message with SMS
recipients: they cost credits certified or not, and the reply says so in words of SMS)
is refused the same way (550 5.7.1, or 452 4.7.1 with ``[credits] when_short =
"defer"``; docs/credits.md):
the reservation is in the row's transaction, so nothing of it was written, and it is
never sent uncertified instead.

Also here: the checks an envelope or header recipient must pass before the gateway
will deliver to it (no source routes, no % hacks, a real domain).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.policy
import hashlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from typing import Any

from relay.logs import log_failure, printable
from relay.queue.credits import InsufficientCredits
from relay.queue.spool import Spool, is_disk_full
from relay.queue.store import NewMessage, Store, StoreError, StoreFullError
from relay.smtpd import replies

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
        sha256, subject = await loop.run_in_executor(_INTAKE, _spool, spool, qid, raw)
    except OSError as err:
        log.error("%s: could not store the message: %s", qid, err.strerror or err)
        # The rename may have happened before the directory's fsync failed.
        await loop.run_in_executor(_INTAKE, _remove_quietly, spool, qid)
        return replies.DISK_FULL if is_disk_full(err) else replies.STORE_FAILED
    record = message(sha256)
    if record.certified and record.subject is None:
        # kept to find the certificate again (the console, the API); cleared with the
        # content by retention and erasure. Plain mail's subject is not kept.
        record = dataclasses.replace(record, subject=subject)
    try:
        await store.enqueue(record, time.time())
    except asyncio.CancelledError:
        # The client left while the row was being written: the store may still commit
        # it, so the file stays (a file without a row is removed at the next start).
        raise
    except Exception as err:
        # Nothing was recorded (the store's transaction rolled back): the file goes now,
        # before the answer, whatever the error was.
        await loop.run_in_executor(_INTAKE, _remove_quietly, spool, qid)
        if isinstance(err, InsufficientCredits):
            log.info(
                "%s: refused: organisation %s has %d credits, the message needs %d",
                qid, printable(err.org), err.balance, err.needed,
            )  # fmt: skip
            return credits_short_reply(err, sms=record.sms is not None)
        if not isinstance(err, StoreError | OSError):
            log_failure(log, "%s: could not record the message; nothing was kept", qid)
            return replies.INTERNAL_ERROR
        log.error("%s: could not record the message: %s", qid, err)
        full = isinstance(err, StoreFullError) or is_disk_full(err)
        return replies.DISK_FULL if full else replies.STORE_FAILED
    return None


def credits_short_reply(short: InsufficientCredits, *, sms: bool = False) -> str:
    """The reply to a message its organisation cannot pay for: the balance, what it
    needed and how to top up (``[provider] contact``, when it fits in a reply). ``sms``:
    the message has SMS recipients, which cost credits certified or not (docs/sms.md
    "Credits"), so the reply speaks of its SMS, not of certifying it."""
    contact = " ".join(short.contact.split())
    fits = contact and contact.isascii() and contact.isprintable() and len(contact) <= 200
    top_up = (
        replies.CREDITS_TOP_UP.format(contact=contact) if fits else replies.CREDITS_TOP_UP_OPERATOR
    )
    if sms:
        reply = replies.CREDITS_SHORT_SMS_DEFER if short.defer else replies.CREDITS_SHORT_SMS
    else:
        reply = replies.CREDITS_SHORT_DEFER if short.defer else replies.CREDITS_SHORT
    return reply.format(balance=short.balance, needed=short.needed, top_up=top_up)


def _remove_quietly(spool: Spool, qid: str) -> None:
    try:
        spool.remove(qid)
    except OSError as err:  # the next start removes a file without a row
        log.warning("%s: could not remove the unrecorded spool file: %s", qid, err)


def _spool(spool: Spool, qid: str, raw: bytes) -> tuple[str, str | None]:
    spool.store(qid, raw)
    return hashlib.sha256(raw).hexdigest(), subject_of(raw)


SUBJECT_MAX = 998
"""The most characters of a Subject kept (RFC 5322 §2.1.1's line limit)."""


def subject_of(raw: bytes) -> str | None:
    """The Subject of the message ``raw``, decoded (RFC 2047), unfolded onto one line of
    printable characters, at most :data:`SUBJECT_MAX` of them; None when there is none
    or it cannot be read. Never raises on the bytes (a property test holds it)."""
    end = raw.find(b"\r\n\r\n")
    header = raw if end < 0 else raw[: end + 2]
    try:
        value = BytesHeaderParser(policy=email.policy.default).parsebytes(header).get("subject")
        text = None if value is None else str(value)
    except Exception:  # noqa: BLE001 - hostile bytes: the message is kept, without a subject
        return None
    if text is None:
        return None
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line[:SUBJECT_MAX]


def client_ip(session: Any) -> str:
    """The SMTP client's IP address, as the evidence and the log name it."""
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)


def reverse_path(envelope: Any) -> str:
    """The MAIL FROM address, '' for the null reverse-path (RFC 5321 §4.5.5)."""
    return "" if envelope.mail_from == "<>" else str(envelope.mail_from)


def session_tls(server: Any) -> tuple[str | None, str | None]:
    """TLS version and cipher of an SMTP session, for STARTTLS and implicit TLS alike."""
    transport = getattr(server, "transport", None)
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None, None
    cipher = ssl_object.cipher()
    return ssl_object.version(), cipher[0] if cipher else None
