"""Benchmark: what ``certifica backup`` and ``certifica restore`` cost over a history
(README, "Backups and restore").

    .venv/bin/python bench/backup.py [--messages N] [--queued Q]

Makes, in a temporary directory, a state directory of N certified messages that left the
queue (the history of bench/retention.py: five evidence entries each, an archived
``.eml`` and a certificate PDF) and Q messages still queued (one recipient delivered, one
deferred, a 4 KB spool file), then backs it up while a thread appends evidence entries
through the store (the gateway's writers), restores the backup into a second directory,
and counts the recipients the restored queue will deliver. Prints the backup's size and
wall-clock time, how long the writers waited (the lock held while the files are linked
aside: the longest single write during the backup), and the restore's time. Nothing
asserts on time.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from retention import fill  # noqa: E402

from relay.queue import backup, evidence_log  # noqa: E402
from relay.queue.db import insert_row  # noqa: E402
from relay.queue.spool import Spool  # noqa: E402
from relay.queue.store import Store  # noqa: E402


def queue(store: Store, spool: Spool, count: int, now: float) -> None:
    """``count`` messages still on their way: bob delivered, carol deferred."""

    def write(db: Any) -> None:
        for n in range(count):
            qid = f"Q{n:011X}"
            insert_row(
                db.conn,
                "messages",
                {
                    "qid": qid,
                    "kind": "mail",
                    "created": now,
                    "expires": now + 5 * 86400,
                    "sender": "alice@example.com",
                    "size": 4096,
                    "sha256": "0" * 64,
                    "certified": 1,
                    "method": "submission",
                    "state": "active",
                    "notice_state": "done",
                    "cert_state": "none",
                },
            )
            for rcpt, status in (
                ("bob@example.org", "delivered"),
                ("carol@example.net", "deferred"),
            ):
                insert_row(
                    db.conn,
                    "recipients",
                    {
                        "qid": qid,
                        "address": rcpt,
                        "domain": rcpt.split("@")[1],
                        "status": status,
                        "next_attempt": now + 60,
                    },
                )
            evidence_log.append(db.conn, now, qid, "SubmissionAcceptance", {})

    store.run_sync(write)
    for n in range(count):
        spool.store(f"Q{n:011X}", b"Subject: queued\r\n\r\n" + b"x" * 4070 + b"\r\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="history size (10000)")
    parser.add_argument("--queued", type=int, default=1_000, help="messages queued (1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state, target, restored = Path(tmp) / "state", Path(tmp) / "backup", Path(tmp) / "new"
        spool = Spool(state / "spool")
        certificates = state / "certificates"
        certificates.mkdir(parents=True)
        with Store(state / "queue.db", 3600.0) as store:
            fill(store, spool, certificates, args.messages, time.time() - 86400)
            queue(store, spool, args.queued, time.time())
            stop = threading.Event()
            waits: list[float] = []

            def writing() -> None:
                while not stop.is_set():
                    started = time.perf_counter()
                    store.run_sync(
                        lambda db: evidence_log.append(db.conn, time.time(), "W", "Bench", {})
                    )
                    waits.append(time.perf_counter() - started)

            writer = threading.Thread(target=writing)
            writer.start()
            try:
                done = backup.backup(state, certificates, target, "bench")
            finally:
                stop.set()
                writer.join()
        print(
            f"backup   {done.seconds:6.2f} s  {done.files} files, {done.size / 1e6:.1f} MB; "
            f"lock held {done.lock_seconds * 1000:.0f} ms; {len(waits)} writes meanwhile, the "
            f"longest {max(waits) * 1000:.0f} ms; head #{done.head[0] if done.head else 0}, "
            f"highest #{done.highest_seq}"
        )
        started = time.perf_counter()
        result = backup.restore(target, restored, restored / "certificates")
        took = time.perf_counter() - started
        conn = sqlite3.connect(restored / "queue.db")
        (recovered,) = conn.execute(
            "SELECT COUNT(DISTINCT qid) FROM recipients WHERE restored_from IS NOT NULL"
        ).fetchone()
        conn.close()
        print(
            f"restore  {took:6.2f} s  {result.files} files (hashes checked); Restored entry "
            f"#{result.restored_seq}; {recovered} of {args.queued} queued messages to deliver"
        )


if __name__ == "__main__":
    main()
