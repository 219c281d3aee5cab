"""``certifica serve``: run the gateway until SIGTERM or SIGINT (see ARCHITECTURE.md for
the processes it starts).
"""

from __future__ import annotations

import argparse
import os

from relay.cli.common import UserError, config_of, owner_of, setup_logging


def _limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of one per thread and core.

    The store's thread and the worker threads that write the spool and sign with DKIM
    each got an arena of their own, and large message buffers left them fragmented:
    the gateway's RSS halves with two (measured with ``make bench``). The certificate
    workers inherit the setting through the environment (glibc reads it at start).
    """
    import ctypes
    import ctypes.util

    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, int(os.environ["MALLOC_ARENA_MAX"]))  # M_ARENA_MAX
    except (OSError, AttributeError, ValueError):
        pass  # not glibc: its own allocator decides


def cmd_serve(args: argparse.Namespace) -> int:
    from certifier.errors import StartupError
    from relay.process.master import Master

    _limit_malloc_arenas()
    cfg = config_of(args)
    owner = owner_of(cfg.state_dir) if os.geteuid() == 0 else None
    if owner is not None:
        raise UserError(
            f"the state directory {cfg.state_dir} belongs to {owner[1]}: run the gateway as "
            f"{owner[1]} (systemd: User={owner[1]}), not as root, so that no file in it "
            "becomes root's"
        )
    setup_logging(cfg)
    try:
        return Master(cfg).run()
    except StartupError as err:
        raise UserError(str(err)) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica serve`` to the subcommands."""
    p = sub.add_parser(
        "serve",
        help="run the gateway (listeners, queue, certificates)",
        description="Run the gateway until SIGTERM or SIGINT.",
    )
    p.set_defaults(func=cmd_serve)
