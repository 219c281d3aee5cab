"""Taking ownership of a message (relay.cleanup.intake): spooled and recorded, or neither.

A real spool directory and a real store (SQLite): a row that cannot be written must not
leave its spool file behind, whatever the reason (issue 12 item 3: a failed transaction
leaves no spool file at once, not "removed at next start").
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.cleanup.intake import SUBJECT_MAX, accept, subject_of
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


# The Subject kept to find a certificate again (relay.cleanup.intake.subject_of).


def test_the_subject_is_decoded_unfolded_and_one_line() -> None:
    raw = (
        b"From: a@example.org\r\nSubject: =?utf-8?q?Contrato_de_alquiler_=E2=82=AC?=\r\n"
        b" 2026\r\nTo: b@example.org\r\n\r\nbody\r\n"
    )
    assert subject_of(raw) == "Contrato de alquiler \u20ac 2026"
    assert subject_of(b"From: a@example.org\r\n\r\nno subject\r\n") is None
    hostile = b"Subject: =?utf-8?b?" + base64.b64encode(b"a\r\nBcc: x@evil\x00") + b"?=\r\n\r\n"
    assert subject_of(hostile) == "a Bcc: x@evil"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_subject_of_never_raises_and_gives_one_printable_line(raw: bytes) -> None:
    subject = subject_of(b"Subject: " + raw + b"\r\n\r\n")
    assert subject is None or (subject.isprintable() and len(subject) <= SUBJECT_MAX)
