"""``certifica hosted expire [--at TIME]``: certify now the hosted links not opened by
their expiry (docs/hosted.md), as the gateway does by itself every hour; ``--at`` runs
it as of another time (a test, or a backdated check of what would expire).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

from relay.cli.common import EXIT_OK, UserError, config_of, open_store


def cmd_hosted_expire(args: argparse.Namespace) -> int:
    """Expire the waiting links past their expiry; prints how many."""
    now = time.time()
    if args.at:
        try:
            moment = datetime.fromisoformat(args.at)
        except ValueError:
            raise UserError(
                f"--at {args.at!r} is not a date and time; write it as 2026-12-31T10:00:00+00:00"
            ) from None
        if moment.tzinfo is None:
            raise UserError("--at needs a time zone, such as +00:00 or Z")
        now = moment.timestamp()
    with open_store(config_of(args), writes=True) as store:
        expired = store.expire_hosted_now(now)
    print(f"hosted links expired: {expired}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica hosted`` to the subcommands."""
    hosted = sub.add_parser(
        "hosted",
        help="hosted content and acceptance (docs/hosted.md)",
        description="Hosted content: recipients get a link to the message, handed over "
        "on the gateway's page with evidence.",
    )
    hsub = hosted.add_subparsers(dest="hosted_command", metavar="ACTION", required=True)
    p = hsub.add_parser(
        "expire",
        help="certify now the links not opened by their expiry",
        description="Certify as not handed over (ContentHandoverFailure, a consignment "
        "expiry) every hosted link whose [hosted] expiry_days have passed without the "
        "recipient opening the message. The gateway does this every hour by itself.",
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="as of this ISO 8601 time with its zone (default: now)",
    )
    p.set_defaults(func=cmd_hosted_expire)
