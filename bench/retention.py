"""Benchmark: what one retention pass costs over a long history (README, "Retention").

    .venv/bin/python bench/retention.py [--messages N]

Makes, in a temporary directory, a queue database of N certified messages that left the
queue seven years ago (each with two recipients, an open, five evidence entries, an
archived ``.eml`` and a kept certificate PDF), then times :func:`relay.queue.retention.apply`
with the default periods three times: a dry run, the first pass (which removes
everything: past every period), and the next day's pass over the same history (which
finds nothing left: the cost the daily task pays for history it has already cleared).
Wall-clock seconds; nothing asserts on time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.queue import evidence_log, retention  # noqa: E402
from relay.queue.db import insert_row, update_message  # noqa: E402
from relay.queue.spool import Spool  # noqa: E402
from relay.queue.store import Store  # noqa: E402

YEAR = 365 * 86400.0
EVENTS = ("SubmissionAcceptance", "RelayToNonERDS", "RelayToNonERDS", "CertificateIssued")


def fill(store: Store, spool: Spool, certificates: Path, count: int, when: float) -> None:
    """``count`` certified messages, done at ``when``, with their files."""

    def write(db: Any, start: int, end: int) -> None:
        conn = db.conn
        for n in range(start, end):
            qid, cert_id = f"{n:012X}", f"CF-{n:016X}"
            insert_row(
                conn,
                "messages",
                {
                    "qid": qid,
                    "kind": "mail",
                    "created": when,
                    "expires": when + 5 * 86400,
                    "sender": f"sender{n}@example.com",
                    "size": 2048,
                    "sha256": "0" * 64,
                    "certified": 1,
                    "cert_id": cert_id,
                    "client_ip": "192.0.2.1",
                    "method": "submission",
                    "state": "done",
                    "notice_state": "done",
                    "cert_state": "done",
                    "done_at": when,
                },
            )
            for rcpt in (f"bob{n}@example.org", f"carol{n}@example.net"):
                insert_row(
                    conn,
                    "recipients",
                    {
                        "qid": qid,
                        "address": rcpt,
                        "domain": rcpt.split("@")[1],
                        "status": "delivered",
                        "next_attempt": when,
                        "delivered_copy": json.dumps({"prefix": "", "edits": []}),
                    },
                )
            for event in EVENTS:
                detail = {"certificate_id": cert_id} if event == "CertificateIssued" else {}
                evidence_log.append(conn, when, qid, event, detail, recipient=f"bob{n}@example.org")
            hit = {
                "link": 0,
                "url": None,
                "ip": "198.51.100.7",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0",
                "method": "GET",
                "automatic": 0,
                "reason": "likely by a person",
            }
            insert_row(
                conn,
                "tracking_events",
                {"qid": qid, "recipient_id": 0, "kind": "open", "time": when, **hit},
            )
            evidence_log.append(
                conn, when, qid, "ContentOpened", hit, recipient=f"bob{n}@example.org"
            )
            update_message(conn, qid, {"state": "done"})

    for start in range(0, count, 1000):
        store.run_sync(lambda db, s=start: write(db, s, min(s + 1000, count)))  # type: ignore[misc]
    for n in range(count):
        spool.archived(f"{n:012X}").write_bytes(b"Subject: x\r\n\r\nx\r\n")
        (certificates / f"CF-{n:016X}.pdf").write_bytes(b"%PDF-1.7\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000, help="history size (50000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spool = Spool(root / "spool")
        certificates = root / "certificates"
        certificates.mkdir()
        with Store(root / "queue.db", 3600.0) as store:
            fill(store, spool, certificates, args.messages, time.time() - 7 * YEAR)
            now = time.time()
            for label, dry_run in (("dry run", True), ("first pass", False), ("next day", False)):
                started = time.perf_counter()
                removed = retention.apply(
                    store,
                    spool,
                    certificates,
                    now,
                    content_days=30,
                    tracking_days=90,
                    evidence_years=5,
                    dry_run=dry_run,
                )
                took = time.perf_counter() - started
                print(f"{label:<10} {took:7.2f} s  {removed.summary()}")
                now += 86400.0


if __name__ == "__main__":
    main()
