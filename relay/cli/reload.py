"""``certifica reload``: have the running gateway read its configuration again and say
what came of it (README, "Reloading"; :meth:`relay.process.master.Master.reload`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, become_owner, config_of

EXIT_NOT_RUNNING = 3
"""The gateway is not running: nothing to reload (the LSB's status code for a program
that is not running); it reads the configuration when it starts. certbot's deploy hook
(``systemd/certbot-deploy-hook``) tells this apart from a refusal."""


def _outcome(path: Path) -> dict[str, Any]:
    """The master's last reload outcome (``run/reload.json``), or {} before the first."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def cmd_reload(args: argparse.Namespace) -> int:
    from relay.process.child import run_dir
    from relay.process.reload import RELOAD_RESULT
    from relay.process.status import NotRunning, master_pid

    cfg = config_of(args)
    become_owner(cfg.state_dir)  # the master's user: it may signal it and read run/
    try:
        pid = master_pid(cfg.state_dir)
    except NotRunning as err:
        print(f"certifica: {err}; it reads its configuration when it starts", file=sys.stderr)
        return EXIT_NOT_RUNNING
    path = run_dir(cfg.state_dir) / RELOAD_RESULT
    last = _outcome(path)
    before = last.get("serial", 0) if last.get("pid") == pid else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise UserError(
            f"cannot signal the gateway (pid {pid}): run this as its user or as root"
        ) from None
    except ProcessLookupError:
        raise UserError(f"the gateway (pid {pid}) ended before it could be signalled") from None
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        state = _outcome(path)
        if state.get("pid") == pid and int(state.get("serial", 0)) > int(before):
            if state.get("outcome") != "applied":
                print(
                    f"certifica: reload refused: {state.get('message')}; "
                    "the configuration in force stays",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            print(f"reload: {state.get('message')}")
            if state.get("needs_restart"):
                print(f"needs a restart: {', '.join(state['needs_restart'])} (left as they were)")
            return EXIT_OK
        time.sleep(0.05)
    raise UserError(
        f"sent the gateway (pid {pid}) SIGHUP, but it did not answer within {args.wait:.0f} s; "
        "its log says what came of it"
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica reload`` to the subcommands."""
    p = sub.add_parser(
        "reload",
        help="have the running gateway read its configuration again",
        description="Send SIGHUP to the running gateway's master (found through "
        "state_dir/run/master.pid), as `systemctl reload certifica` does, and print what "
        "came of it: the keys applied and the TLS certificate now served, the keys that "
        "need a restart, or why the new configuration was refused (exit 1; the "
        "configuration in force then stays). Exit 3 when the gateway is not running.",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=10.0,
        help="seconds to wait for the gateway's answer (default 10)",
    )
    p.set_defaults(func=cmd_reload)
