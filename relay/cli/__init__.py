"""The ``certifica`` command: ``serve``, ``status``, ``reload``, ``verify``, ``users``,
``org``, ``contacts``, ``credits``, ``reception``, ``dkim``, ``queue``, ``addendum``, ``evidence``, ``log``,
``export``, ``erase``, ``retention``, ``backup``, ``restore``, ``token``, ``webhook``, ``hosted``.

Every subcommand has ``--help``. Errors an operator can fix (a bad config key, an
unreadable file, an unknown user) are one line on stderr and exit status 2; no
traceback reaches the terminal.

The parser is assembled here from one module per command (``relay/cli/<command>.py``,
each with its ``register``); the code they share is :mod:`relay.cli.common`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any


def _command(argv: list[str]) -> str | None:
    """The subcommand in ``argv`` (the first word that is not an option or -c's value)."""
    words = iter(argv)
    for word in words:
        if word in ("-c", "--config"):
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


# `certifica serve`: SIGHUP (a reload) is held from the first line of the command, not
# only once the master is listening for it: systemd may send one as soon as it has
# started the process (Type=simple), and SIGHUP's default action ends a process. Held, it
# is applied once the master waits for signals (Master.run); the children start with it
# held too (relay.process.child). The rest of the CLI is imported after this.
_HELD = _command(sys.argv[1:]) == "serve"
if _HELD:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

from relay.cli import (  # noqa: E402 - after SIGHUP is held
    addendum,
    backup,
    contacts,
    credits,
    dkim,
    erase,
    evidence,
    export,
    hosted,
    log,
    org,
    queue,
    reception,
    reload,
    retention,
    serve,
    status,
    token,
    users,
    verify,
    webhook,
)
from relay.cli.common import EXIT_FAILED, EXIT_USAGE, UserError  # noqa: E402
from relay.config import ConfigError  # noqa: E402

COMMANDS = (
    serve,
    status,
    reload,
    verify,
    addendum,
    users,
    org,
    contacts,
    credits,
    reception,
    dkim,
    evidence,
    queue,
    log,
    export,
    erase,
    retention,
    backup,
    token,
    webhook,
    hosted,
)
"""The command modules, in the order ``certifica --help`` lists them."""


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it takes -c/--config too, so ``certifica serve -c FILE`` works."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: given here it wins, absent it leaves the top-level value alone.
        self.add_argument(
            "-c",
            "--config",
            default=argparse.SUPPRESS,
            help="config file (default: ./config.toml if present, else embedded defaults)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certifica",
        description="Certifica: an SMTP relay that certifies e-mail (and SMS sent by mail) with signed PDF certificates.",
    )
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: ./config.toml if present, else embedded defaults)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from relay.private import restrict_umask

    # Whatever is created from here on is private, whatever umask the caller had.
    restrict_umask()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":  # main(argv) called from Python: hold it from here
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    elif _HELD:  # the import guessed serve, but argv was another command's
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    try:
        return int(args.func(args))
    except (ConfigError, UserError) as err:
        print(f"certifica: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as err:  # the last line of defence: one line, never a traceback
        if os.environ.get("CERTIFICA_DEBUG"):
            raise
        print(
            f"certifica: unexpected error ({err.__class__.__name__}: {err}); "
            "run again with CERTIFICA_DEBUG=1 for details",
            file=sys.stderr,
        )
        return EXIT_FAILED
