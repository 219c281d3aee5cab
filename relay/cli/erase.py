"""``certifica erase --subject ADDRESS [--yes]``: erase what the gateway holds about one
e-mail address or phone number (GDPR art. 17), keeping what proves the evidence
(docs/erasure.md; a number's opt-outs are kept, and the command says so).
``--commitment HEX`` instead names the address by the commitment an earlier erasure
recorded: the way to erase it again in a backup restored from before that erasure.

Without ``--yes`` it says what would be erased and asks (and refuses when its input is
not a terminal); the work is :func:`relay.queue.erasure.erase`. It refuses, changing
nothing, while a message about the address is still in the queue.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    config_of,
    open_store,
    operator_name,
)
from relay.cli.export import subject_address, subject_key


def cmd_erase(args: argparse.Namespace) -> int:
    from relay.process.gateway import SUBJECT_KEY, state_paths
    from relay.queue import erasure, subjects

    cfg = config_of(args)
    address = subject_address(args.subject, cfg) if args.subject else None
    wanted = _commitment(args.commitment) if args.commitment else ""
    paths = state_paths(cfg)
    with open_store(cfg, writes=True) as store:
        key = subject_key(cfg, store)
        if address is None:
            found = store.run_sync(
                lambda db: subjects.address_committed_to(db.conn, key, wanted), read=True
            )
            if found is None:
                print(
                    f"Nothing to erase: no address held here has the commitment {wanted} "
                    f"under {paths['keys'] / SUBJECT_KEY} (erased already, or never held)."
                )
                return EXIT_OK
            address = subject_address(found, cfg)
            print(f"{wanted} is the commitment of {address}.")
        plan = erasure.plan(store, address, key, paths["spool"], paths["certificates"])
        if plan.active:
            raise UserError(str(erasure.StillActive(address, plan.active)))
        if plan.nothing:
            print(f"Nothing to erase: the gateway holds no personal data of {address}.")
            kept = erasure.kept_optouts(plan)
            if kept:
                print(f"{kept}.")
            if plan.held:
                print(
                    f"{len(plan.held)} message(s) about it are under legal hold and kept as "
                    "they are; run again once the hold is released."
                )
            return EXIT_OK
        print(f"Erasing {address} would do this:")
        for line in erasure.describe(plan):
            print(f"  - {line}")
        print(
            "  What proves the certificates stays: hashes, commitments, the evidence chain; "
            "copies the senders hold still verify."
        )
        if erasure.kept_optouts(plan):
            print(f"  {erasure.kept_optouts(plan)}.")
        if not args.yes:
            if not sys.stdin.isatty():
                raise UserError("refusing to erase without confirmation; add --yes")
            answer = input(f"Erase {address}? This cannot be undone. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing done")
                return EXIT_FAILED
        try:
            done = erasure.erase(
                store,
                address,
                key,
                paths["spool"],
                paths["certificates"],
                operator=operator_name(),
                now=time.time(),
            )
        except erasure.StillActive as err:
            raise UserError(str(err)) from None
    print(
        f"{address} erased: {done.messages} message(s), {done.evidence_entries} evidence "
        f"entr{'y' if done.evidence_entries == 1 else 'ies'}, {len(done.files)} file(s); "
        f"recorded in the evidence log as Erasure of {done.committed}"
    )
    if not done.wal_cleared:
        print(
            "certifica: warning: a reader kept the checkpoint from finishing: the "
            "database's write-ahead log (queue.db-wal) still holds old pages naming the "
            "address until the gateway's later writes overwrite them or it stops (SQLite "
            "then empties the log)",
            file=sys.stderr,
        )
    if done.users:
        print(f"The user account {address} was removed.")
    kept = erasure.kept_optouts(done)
    if kept:
        print(f"{kept}.")
    if done.held:
        print(
            f"{len(done.held)} message(s) under legal hold were kept; run again once the "
            "hold is released."
        )
    return EXIT_OK


def _commitment(text: str) -> str:
    """``--commitment``: ``erased:`` and 64 hex digits (the prefix may be left out)."""
    from relay.queue.subjects import COMMITMENT_PREFIX

    digits = text.strip().lower().removeprefix(COMMITMENT_PREFIX)
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise UserError(
            f"{text!r} is not a commitment (erased: and 64 hex digits, as an Erasure entry "
            "names it)"
        )
    return COMMITMENT_PREFIX + digits


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica erase`` to the subcommands."""
    p = sub.add_parser(
        "erase",
        help="erase an e-mail address's or phone number's data, keeping the proof (GDPR "
        "erasure request)",
        description="Erase what the gateway holds about an e-mail address or a phone number "
        "(certified SMS: its contacts, the texts sent to and by it; its opt-outs are kept, "
        "or organisations could not stop sending to it): its messages' "
        "content, the texts and evidence values naming it, its opens and clicks' IP "
        "addresses and user agents, the archived certificates and spool copies about it, "
        "its user account and reception settings. The address becomes a keyed commitment; "
        "hashes and the evidence chain stay, so every certificate issued still verifies. "
        "Messages under legal hold are kept. Refuses while messages about the address are "
        "still in the queue. Asks first unless --yes. With --commitment instead of "
        "--subject it erases again the address an earlier erasure recorded by its "
        "commitment, in a backup restored from before it; see docs/erasure.md.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--subject",
        metavar="ADDRESS",
        help="the e-mail address, or a phone number (+34600111222, national in [sms] "
        "default_region, or its address at sms.<gateway domain>)",
    )
    which.add_argument(
        "--commitment",
        metavar="HEX",
        help="erase again the address an earlier erasure recorded as erased:HEX (after "
        "restoring a backup made before it; docs/erasure.md)",
    )
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_erase)
