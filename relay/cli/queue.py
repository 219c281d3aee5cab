"""``certifica queue``: look at the mail queue and act on it (list, show, flush, retry,
hold, release, delete), as Postfix's mailq and postsuper do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, config_of, open_store, operator_name
from relay.queue.states import PENDING, MessageState


async def _listing(store: Any) -> list[dict[str, Any]]:
    return await store.queue_listing()  # type: ignore[no-any-return]


def cmd_queue_list(args: argparse.Namespace) -> int:
    with open_store(config_of(args)) as store:
        rows = asyncio.run(_listing(store))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not rows:
        print("Mail queue is empty")
        return EXIT_OK
    now = time.time()
    print(f"{'QUEUE ID':<12}  {'FLAGS':<5}  {'SIZE':>9}  {'AGE':>5}  SENDER (KIND), RECIPIENTS")
    for row in rows:
        age = int(now - row["created"])
        flags = ("C" if row["certified"] else "-") + (
            "!" if row["state"] == MessageState.HELD else "-"
        )
        print(
            f"{row['qid']:<12}  {flags:<5}  {row['size'] or 0:>9}  {_age(age):>5}  "
            f"<{row['sender'] or ''}> ({row['kind']})"
        )
        for r in row["recipients"]:
            said = " ".join(
                str(part)
                for part in (r["reply_code"], r.get("reply_enhanced"), r["reply_text"])
                if part
            )
            reply = f" ({said})" if said else ""
            print(f"{'':>14}{r['status']:<10} <{r['address']}>{reply}")
    return EXIT_OK


def _one_qid(store: Any, prefix: str) -> str:
    matches = store.find_qids(prefix)
    if not matches:
        raise UserError(f"no message {prefix!r} in the queue")
    if len(matches) > 1:
        raise UserError(f"{prefix!r} matches {len(matches)} messages; give more of the id")
    return str(matches[0])


def _iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "-"


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def cmd_queue_show(args: argparse.Namespace) -> int:
    from relay.queue.spool import SPOOL_QUEUE, SPOOL_SUBDIR

    cfg = config_of(args)
    with open_store(cfg) as store:
        row = store.show(_one_qid(store, args.id))
    spool_file = cfg.state_dir / SPOOL_SUBDIR / SPOOL_QUEUE / f"{row['qid']}.eml"
    if row["state"] != MessageState.DONE and not spool_file.exists():
        row["spool_file"] = f"spool file missing: {spool_file}"
    if args.json:
        print(json.dumps(row, indent=2, default=str))
        return EXIT_OK
    print(f"queue id:     {row['qid']} ({row['kind']}, {row['state']})")
    print(f"received:     {_iso(row['created'])}, {row['size']} bytes, sha256 {row['sha256']}")
    print(
        f"sender:       <{row['sender']}> (authenticated as {row['auth_user'] or '-'}, "
        f"client {row['client_ip'] or '-'})"
    )
    if row.get("spool_file"):
        print(f"problem:      {row['spool_file']} (the gateway's copy of the message is gone)")
    if row["certified"]:
        print(f"certificate:  {row['cert_id']} ({row['cert_state']})")
    print("recipients:")
    for r in row["recipients"]:
        reply = (
            f"{r['reply_code'] or ''} {r['reply_enhanced'] or ''} {r['reply_text'] or ''}".strip()
        )
        print(
            f"  <{r['address']}> {r['status']}, {r['attempts']} attempts, last {_iso(r['last_attempt'])}"
        )
        if reply:
            print(f"      {reply}")
        if r["status"] in PENDING:
            print(f"      next attempt {_iso(r['next_attempt'])}")
    print("evidence:")
    for e in row["evidence"]:
        who = f" <{e['recipient']}>" if e["recipient"] else ""
        print(f"  {_iso(e['time'])} {e['event']}{who} #{e['seq']} {e['hash'][:16]}")
    return EXIT_OK


def cmd_queue_flush(args: argparse.Namespace) -> int:
    with open_store(config_of(args), writes=True) as store:
        count = store.retry_now(None, time.time())
    print(f"{count} recipient(s) will be tried again now")
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace) -> int:
    with open_store(config_of(args), writes=True) as store:
        qid = _one_qid(store, args.id)
        count = store.retry_now(qid, time.time())
    print(f"{qid}: {count} recipient(s) will be tried again now")
    return EXIT_OK


def _hold(args: argparse.Namespace, held: bool) -> int:
    with open_store(config_of(args), writes=True) as store:
        qid = _one_qid(store, args.id)
        changed = store.set_held(qid, held, time.time())
    word = "on hold" if held else "released"
    print(f"{qid}: {word}" if changed else f"{qid}: already {word} or finished")
    return EXIT_OK if changed else EXIT_FAILED


def cmd_queue_hold(args: argparse.Namespace) -> int:
    return _hold(args, True)


def cmd_queue_release(args: argparse.Namespace) -> int:
    return _hold(args, False)


def cmd_queue_delete(args: argparse.Namespace) -> int:
    with open_store(config_of(args), writes=True) as store:
        qid = _one_qid(store, args.id)
        if not args.yes:
            if not sys.stdin.isatty():
                raise UserError("refusing to delete without confirmation; add --yes")
            answer = input(f"Withdraw {qid}? Undelivered recipients will not get it. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing done")
                return EXIT_FAILED
        operator = operator_name()
        count = store.withdraw(qid, operator, time.time())
    print(
        f"{qid}: {count} recipient(s) withdrawn; a certified message gets a certificate "
        "that says so"
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica queue`` to the subcommands."""
    queue = sub.add_parser("queue", help="look at the queue", description="Look at the mail queue.")
    qsub = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for name, func, short, long, with_id, with_json in (
        (
            "list",
            cmd_queue_list,
            "list queued messages (like mailq)",
            "List the messages still in the queue with each recipient's state and last reply. "
            "FLAGS: C = certified, ! = on hold, - = neither.",
            False,
            True,
        ),
        (
            "show",
            cmd_queue_show,
            "everything about one message",
            "Show one message: recipients, replies, evidence events.",
            True,
            True,
        ),
        (
            "flush",
            cmd_queue_flush,
            "retry every deferred recipient now",
            "Make every deferred recipient due now (like postqueue -f).",
            False,
            False,
        ),
        (
            "retry",
            cmd_queue_retry,
            "retry one message now",
            "Make the deferred recipients of one message due now.",
            True,
            False,
        ),
        (
            "hold",
            cmd_queue_hold,
            "stop delivery attempts for a message",
            "Put a message on hold: no delivery attempts until released.",
            True,
            False,
        ),
        (
            "release",
            cmd_queue_release,
            "release a held message",
            "Release a message from hold; it is tried at once.",
            True,
            False,
        ),
        (
            "delete",
            cmd_queue_delete,
            "withdraw a message (recorded as evidence)",
            "Withdraw a message: its undelivered recipients become 'withdrawn', the deletion "
            "is an evidence event, and a certified message is certified as withdrawn by the "
            "operator. Asks first.",
            True,
            False,
        ),
    ):
        p = qsub.add_parser(name, help=short, description=long)
        if with_id:
            p.add_argument("id", help="queue id; its first characters are enough")
        if with_json:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
