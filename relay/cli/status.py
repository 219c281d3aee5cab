"""``certifica status``: the gateway's processes and what each is doing
(:mod:`relay.process.status`; README, "Processes").
"""

from __future__ import annotations

import argparse
import sys

from relay.cli.common import EXIT_FAILED, EXIT_OK, config_of


def cmd_status(args: argparse.Namespace) -> int:
    from relay.process.status import NotRunning, lines, processes

    cfg = config_of(args)
    try:
        records = processes(cfg.state_dir)
    except NotRunning as err:
        print(f"certifica: {err}", file=sys.stderr)
        return EXIT_FAILED
    for line in lines(records):
        print(line)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica status`` to the subcommands."""
    p = sub.add_parser(
        "status",
        help="list the gateway's processes and what each is doing",
        description="List the running gateway's processes (the master, the queue manager, "
        "the acceptors, the delivery agents and certificate workers) with their pids, "
        "uptimes and what each is doing. Exit 1 when the gateway is not running.",
    )
    p.set_defaults(func=cmd_status)
