"""A recording SMTP sink: the sender's mail server in the benchmark.

The gateway mails its notices and certificates back to the sender's domain; bench/run.py
routes that domain here, and everything else to Postfix's ``smtp-sink``. This sink
answers every transaction 250 and prints one line per message it receives::

    <arrival time> <kind> <X-Certifica-Queue-Id or -> <size>

``kind`` is ``certificate``, ``notice``, ``addendum`` or ``other`` (from the Subject the
gateway writes). Arrival time is the wall clock when the final dot arrived, so it
compares with the load generator's reply times.

A bare protocol handler rather than aiosmtpd: it has to stay cheaper than what it
measures. It speaks enough SMTP for the gateway's client (EHLO, MAIL, RCPT, DATA, RSET,
NOOP, QUIT, with pipelining) and no STARTTLS, as smtp-sink is configured for Postfix.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

_EHLO = (
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-SIZE 104857600\r\n250 ENHANCEDSTATUSCODES\r\n"
)
_KINDS = (
    (b"Certificate ", "certificate"),
    (b"Being certified", "notice"),
    (b"Addendum ", "addendum"),
)


def describe(data: bytes) -> tuple[str, str]:
    """The kind of a message and its X-Certifica-Queue-Id, from the header section."""
    end = data.find(b"\r\n\r\n")
    kind, qid = "other", "-"
    for line in (data if end < 0 else data[:end]).split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"x-certifica-queue-id":
            qid = value.strip().decode("ascii", "replace") or "-"
        elif name == b"subject":
            value = value.strip()
            for prefix, label in _KINDS:
                if value.startswith(prefix):
                    kind = label
    return kind, qid


class Output:
    """Buffers result lines and flushes them a few times a second."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, line: str) -> None:
        self.lines.append(line)

    def flush(self) -> None:
        if self.lines:
            sys.stdout.write("".join(self.lines))
            sys.stdout.flush()
            self.lines.clear()


class SinkProtocol(asyncio.Protocol):
    def __init__(self, out: Output) -> None:
        self.out = out
        self.buf = bytearray()
        self.in_data = False
        self.scanned = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.reply(b"220 sink.bench ESMTP\r\n")

    def reply(self, text: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(text)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                if not self.take_message():
                    return
            else:
                end = self.buf.find(b"\r\n")
                if end < 0:
                    if len(self.buf) > 4096:
                        self.reply(b"500 5.5.2 line too long\r\n")
                        self.transport.close()
                    return
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                self.command(line)

    def take_message(self) -> bool:
        if self.buf.startswith(b".\r\n"):
            end = 0
        else:
            end = self.buf.find(b"\r\n.\r\n", max(0, self.scanned - 4))
            if end < 0:
                self.scanned = len(self.buf)
                return False
            end += 2
        data = bytes(self.buf[:end])
        del self.buf[: end + 3]
        self.in_data = False
        self.scanned = 0
        kind, qid = describe(data)
        self.out.add(f"{time.time():.6f} {kind} {qid} {len(data)}\n")
        self.reply(b"250 2.0.0 Ok: queued\r\n")
        return True

    def command(self, line: bytes) -> None:
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.reply(_EHLO)
        elif verb in (b"HELO", b"MAIL", b"RSET", b"NOOP"):
            self.reply(b"250 2.0.0 Ok\r\n")
        elif verb == b"RCPT":
            self.reply(b"250 2.1.5 Ok\r\n")
        elif verb == b"DATA":
            self.in_data = True
            self.reply(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.reply(b"221 2.0.0 Bye\r\n")
            assert self.transport is not None
            self.transport.close()
        else:
            self.reply(b"502 5.5.2 Command not recognized\r\n")


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    out = Output()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: SinkProtocol(out), "127.0.0.1", port)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), 0.1)
        except TimeoutError:
            pass
        out.flush()
    server.close()
    out.flush()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
