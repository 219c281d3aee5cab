"""Taking ownership of a message (relay.cleanup.intake): spooled and recorded, or neither.

A real spool directory and a real store (SQLite): a row that cannot be written must not
leave its spool file behind, whatever the reason (issue 12 item 3: a failed transaction
leaves no spool file at once, not "removed at next start").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.cleanup.intake import accept
from relay.queue.spool import Spool
from relay.queue.store import NewMessage, Store
from relay.smtpd import replies


def _message(qid: str, helo: str) -> NewMessage:
    return NewMessage(
        qid=qid,
        kind="mail",
        sender="alice@example.com",
        size=10,
        sha256="0" * 64,
        recipients=("bob@example.org",),
        method="submission",
        client_helo=helo,
    )


def test_a_row_that_cannot_be_written_leaves_no_spool_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "queue.db", 3600.0)
    spool = Spool(tmp_path / "spool")
    try:
        # An EHLO name with a byte that is not UTF-8, as aiosmtpd decodes it
        # (surrogateescape): SQLite cannot encode it.
        # The client is told 451 (nothing was kept), never the exception.
        reply = asyncio.run(
            accept(
                store,
                spool,
                "A1",
                b"Subject: x\r\n\r\nx\r\n",
                lambda sha: _message("A1", "h\udcff"),
            )
        )
        assert reply == replies.INTERNAL_ERROR
        assert spool.queued_ids() == set()
        assert list(spool.queue_dir.iterdir()) == []
        # The same path with a row that can be written: owned, file and row.
        refused = asyncio.run(
            accept(
                store, spool, "A2", b"Subject: x\r\n\r\nx\r\n", lambda sha: _message("A2", "h.test")
            )
        )
        assert refused is None
        assert spool.queued_ids() == {"A2"}
        assert store.show("A2")["qid"] == "A2"
    finally:
        store.close()
