"""``certifica retention run [--dry-run]``: apply the retention policy now (``[retention]``,
README "Retention", docs/retention.md), as the gateway does once a day by itself.
"""

from __future__ import annotations

import argparse
import time

from relay.cli.common import EXIT_OK, config_of, open_store


def cmd_retention_run(args: argparse.Namespace) -> int:
    """Remove what the policy no longer keeps (or, ``--dry-run``, say what that is)."""
    from relay.process.gateway import state_paths
    from relay.queue import retention
    from relay.queue.spool import Spool

    cfg = config_of(args)
    kept = cfg.retention
    with open_store(cfg, writes=not args.dry_run) as store:
        paths = state_paths(cfg)
        removed = retention.apply(
            store,
            Spool(paths["spool"]),
            paths["certificates"],
            time.time(),
            content_days=kept.content_days,
            tracking_days=kept.tracking_days,
            evidence_years=kept.evidence_years,
            dry_run=args.dry_run,
        )
    verb = "would remove" if args.dry_run else "removed"
    for kind, how_long, what in (
        ("content", retention.count(kept.content_days, "day"), removed.content),
        ("tracking", retention.count(kept.tracking_days, "day"), removed.tracking),
        ("evidence", retention.count(kept.evidence_years, "year"), removed.evidence),
    ):
        print(f"{kind} (kept {how_long}): {verb} the {what.summary()}")
    print(
        f"legal hold: {retention.count(removed.holds, 'message')} kept whole "
        "(certifica evidence holds)"
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica retention`` to the subcommands."""
    retention = sub.add_parser(
        "retention",
        help="apply the retention policy ([retention]) now",
        description="The retention policy of the [retention] section: what the gateway "
        "keeps and how long. The gateway applies it once a day by itself.",
    )
    rsub = retention.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    p = rsub.add_parser(
        "run",
        help="remove now what the policy no longer keeps",
        description="Remove what the retention policy no longer keeps, for messages that "
        "have left the queue: message content after [retention] content_days, the IP "
        "address and user agent of opens and clicks after tracking_days, and the kept "
        "certificates and the values of the evidence log after evidence_years (their "
        "hashes stay, so certificates already handed out still verify). Nothing of a "
        "message under legal hold is removed (certifica evidence legal-hold). Prints what "
        "was removed, per kind.",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="only say what would be removed; change nothing",
    )
    p.set_defaults(func=cmd_retention_run)
