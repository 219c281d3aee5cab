"""A local mailbox for trying the gateway on one machine (``[sink]`` in config.toml).

It accepts any mail on a loopback port and files each message under
``<dir>/<recipient>/<time>-<pid>-<n>.eml`` (the pid: every acceptor process serves the
sink and counts its own messages); a PDF attachment (a certificate) is also saved beside
it as ``.pdf`` so a newcomer can open it at once. The default config routes the
reserved example domains (RFC 2606) here. It is a development aid: turn it off in
production by leaving ``[sink] listen`` empty.
"""

from __future__ import annotations

import asyncio
import email.policy
import itertools
import logging
import os
import re
import time
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from relay.queue.spool import write_durably

log = logging.getLogger("certifica/sink")
_UNSAFE = re.compile(r"[^A-Za-z0-9@._+\-]")
_counter = itertools.count(1)


class SinkHandler:
    def __init__(self, root: Path) -> None:
        self.root = root

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for rcpt in envelope.rcpt_tos:
            folder = self.root / (_UNSAFE.sub("_", rcpt.lower())[:200] or "unknown")
            name = f"{stamp}-{os.getpid()}-{next(_counter)}"
            await asyncio.to_thread(self._file, folder, name, data)
            log.info("delivered to <%s>: %s/%s.eml", rcpt, folder, name)
        return "250 2.0.0 OK: filed in the local mailbox"

    @staticmethod
    def _file(folder: Path, name: str, data: bytes) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(folder / f"{name}.eml", data)
        try:
            msg = BytesParser(policy=email.policy.default).parsebytes(data)
            for part in msg.iter_attachments():
                if part.get_content_type() == "application/pdf":
                    payload = part.get_payload(decode=True)
                    if isinstance(payload, bytes):
                        write_durably(folder / f"{name}.pdf", payload)
        except Exception:  # the .eml is filed; a PDF we cannot find is no error
            log.debug("no PDF extracted from %s", name)
