"""The benchmark's SMTP client: N concurrent sessions sending a fixed number of messages.

Run by bench/run.py as a separate process (so the orchestrator's threads do not share its
event loop), it prints one JSON object on stdout::

    {"start": t0, "end": t1, "sent": [[t_reply, qid], ...], "errors": {"text": count}}

``t_reply`` is when the reply to the final dot arrived (wall clock, like the sink's
arrival times); ``qid`` comes from "queued as QID" in that reply. Each session opens one
connection (EHLO, optionally STARTTLS and AUTH PLAIN) and sends message after message
on it, as ``smtp-source -d`` does.

All sessions connect and log in first; ``t0`` is taken once they have, so the figures
are about messages, not logins (``setup_s`` says what the logins took). With ``--wait-go``
it prints ``ready N`` and waits for a line on stdin before sending, so the caller can
start its measurements at that moment. Every loop is bounded: by the message count, by
``--deadline`` seconds, and by a cap on reconnections.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import json
import re
import ssl
import sys
import time

import aiosmtplib

SENDER = "alice@example.com"
RECIPIENT = "bob@example.org"
_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_FILLER = b"The quick brown fox jumps over the lazy dog; certified mail benchmark 0123456789.\n"


def message(size: int, seq: int, certify: str = "", newline: bytes = b"\r\n") -> bytes:
    """A plain-text message of about ``size`` bytes, headers included (76-octet lines)."""
    cc = f"Cc: {certify}\n" if certify else ""
    head = (
        f"From: Alice <{SENDER}>\nTo: {RECIPIENT}\n{cc}Subject: benchmark message {seq}\n"
        f"Date: {email.utils.formatdate(usegmt=True)}\n"
        f"Message-ID: <bench.{seq}.{time.time_ns()}@example.com>\n"
        f"X-Bench-Seq: {seq}\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n"
    ).encode()
    body = bytearray()
    want = max(0, size - len(head))
    while len(body) < want:
        body += _FILLER
    data = head + bytes(body[:want]).rstrip(b"\n") + b"\n"
    return data.replace(b"\n", newline)


class Load:
    """Shared state of one run: the next message number, the results, the schedule."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.next = 0
        self.sent: list[tuple[float, str]] = []
        self.errors: dict[str, int] = {}
        self.start = time.time()
        self.deadline = time.monotonic() + args.deadline + args.timeout
        self.context: ssl.SSLContext | None = None
        if args.tls:
            self.context = ssl.create_default_context(cafile=args.tls)
            self.context.check_hostname = False  # the certificate names a host, we dial 127.0.0.1

    def take(self) -> int | None:
        if self.next >= self.args.count or time.monotonic() >= self.deadline:
            return None
        self.next += 1
        return self.next - 1

    def error(self, text: str) -> None:
        key = text[:120]
        self.errors[key] = self.errors.get(key, 0) + 1


async def _connect(load: Load) -> aiosmtplib.SMTP:
    args = load.args
    client = aiosmtplib.SMTP(
        hostname=args.host,
        port=args.port,
        timeout=args.timeout,
        start_tls=bool(args.tls),
        tls_context=load.context,
        local_hostname="loadgen.bench",
    )
    await client.connect()
    if client.is_ehlo_or_helo_needed:  # after STARTTLS the server forgot the EHLO (RFC 3207)
        await client.ehlo()
    if args.user:
        await client.auth_plain(args.user, args.password)
    return client


async def first_connect(load: Load) -> aiosmtplib.SMTP | None:
    try:
        return await _connect(load)
    except (aiosmtplib.SMTPException, OSError) as err:
        load.error(f"connect: {type(err).__name__}: {err}")
        return None


async def session(load: Load, client: aiosmtplib.SMTP | None) -> None:
    args = load.args
    rcpts = [RECIPIENT] + ([args.certify] if args.certify else [])
    reconnects = 0
    try:
        while (seq := load.take()) is not None:
            if args.rate:
                delay = load.start + seq / args.rate - time.time()
                if delay > 0:
                    await asyncio.sleep(min(delay, max(0.0, load.deadline - time.monotonic())))
            data = message(args.size, seq, args.certify)
            try:
                if client is None:
                    if reconnects > args.reconnects:
                        load.error("gave up: too many reconnections")
                        return
                    reconnects += 1
                    client = await _connect(load)
                _, reply = await client.sendmail(SENDER, rcpts, data)
                now = time.time()
                match = _QUEUED_AS.search(reply)
                load.sent.append((now, match.group(1) if match else ""))
            except aiosmtplib.SMTPException as err:
                load.error(f"{type(err).__name__}: {err}")
                if client is not None:
                    client.close()
                client = None
    finally:
        if client is not None:
            try:
                await asyncio.wait_for(client.quit(), 5)
            except (aiosmtplib.SMTPException, TimeoutError, OSError):
                client.close()


async def main(args: argparse.Namespace) -> dict[str, object]:
    load = Load(args)
    setup = time.monotonic()
    clients = await asyncio.wait_for(
        asyncio.gather(*(first_connect(load) for _ in range(args.sessions))),
        args.timeout + args.sessions,
    )
    setup_s = time.monotonic() - setup
    if args.wait_go:
        print(f"ready {sum(c is not None for c in clients)}", flush=True)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), 300)
    load.start = time.time()
    load.deadline = time.monotonic() + args.deadline
    tasks = [asyncio.create_task(session(load, client)) for client in clients]
    # The sessions end on their own (count or deadline); the extra time covers the last reply.
    done, pending = await asyncio.wait(tasks, timeout=args.deadline + args.timeout + 10)
    for task in pending:
        task.cancel()
        load.error("session cancelled at the deadline")
    for task in done:
        if task.exception() is not None:
            load.error(f"session crashed: {type(task.exception()).__name__}")
    return {
        "start": load.start,
        "end": max((t for t, _ in load.sent), default=time.time()),
        "setup_s": setup_s,
        "sent": load.sent,
        "errors": load.errors,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=20)
    p.add_argument("--count", type=int, required=True, help="messages in all")
    p.add_argument("--size", type=int, default=4096, help="bytes per message, headers included")
    p.add_argument("--tls", metavar="CAFILE", help="STARTTLS, trusting this CA")
    p.add_argument("--user", help="AUTH PLAIN as this user (password on stdin)")
    p.add_argument("--certify", default="", help="certification address to add as Cc")
    p.add_argument(
        "--rate", type=float, default=0.0, help="messages per second; 0 = as fast as possible"
    )
    p.add_argument("--deadline", type=float, default=120.0, help="seconds; no new message after")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per SMTP command")
    p.add_argument("--reconnects", type=int, default=3, help="per session")
    p.add_argument("--wait-go", action="store_true", help="print 'ready', wait for a line on stdin")
    args = p.parse_args(argv)
    args.password = sys.stdin.readline().rstrip("\n") if args.user else ""
    return args


if __name__ == "__main__":
    json.dump(asyncio.run(main(parse_args())), sys.stdout)
