"""``certifica log QID``: every log line about one message, as ``grep QID`` on a Postfix
log answers "what happened to it?".

The lines are those naming the message's queue id or the queue id of a message the
gateway made about it (its notice, certificate mail, delivery reports, addenda: linked
in the queue database), so the certificate mail's own delivery shows too. They are read
from ``[log] file`` (and logrotate's previous file, ``<file>.1``, before it), or, with no
file, from the journal (``journalctl -t certifica``, the unit's ``SyslogIdentifier=``).
Lines are printed as written, text or JSON (``[log] format``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, config_of, open_store
from relay.config import Config, ConfigError

QID = re.compile(r"[0-9A-F]{12}")  # relay.queue.ids
JOURNAL_TIMEOUT = 120.0  # seconds; journalctl reads every entry of the identifier


def message_qids(cfg: Config, given: str) -> list[str]:
    """The queue id ``given`` (or the one it abbreviates) and those linked to it."""
    with open_store(cfg) as store:
        matches = store.find_qids(given)
        if len(matches) > 1:
            raise UserError(f"{given!r} matches {len(matches)} messages; give more of the id")
        if not matches:
            # A message no longer in the database (retention) may still be in the log.
            if QID.fullmatch(given.upper()):
                return [given.upper()]
            raise UserError(f"no message {given!r} in the queue; give its whole queue id")
        return [matches[0], *store.linked_qids(matches[0])]


def message_qids_keeping_root(cfg: Config, given: str) -> list[str]:
    """:func:`message_qids`, in a child process when run as root: opening the queue
    makes root the state directory's owner for good (``become_owner``), and reading the
    system journal takes root (or the systemd-journal group), which the certifica user
    does not have."""
    if os.geteuid() != 0:
        return message_qids(cfg, given)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no thread exists yet in the parent, the fork is safe
        os.close(read)
        try:
            answer: dict[str, Any] = {"qids": message_qids(cfg, given)}
        except (UserError, ConfigError) as err:
            answer = {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - one line for the parent, never a traceback
            answer = {"error": f"cannot read the queue ({err.__class__.__name__})"}
        with os.fdopen(write, "w") as out:
            json.dump(answer, out)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    answer = json.loads(text) if text else {"error": "cannot read the queue"}
    if "error" in answer:
        raise UserError(answer["error"])
    return [str(q) for q in answer["qids"]]


def file_lines(path: Path) -> Iterator[str]:
    """The lines of ``path``, after those of logrotate's previous file ``<path>.1``."""
    older = path.with_name(path.name + ".1")
    found = False
    for each in (older, path):
        try:
            with open(each, encoding="utf-8", errors="replace") as f:
                found = True
                yield from (line.rstrip("\n") for line in f)
        except FileNotFoundError:
            continue
        except OSError as err:
            raise UserError(f"cannot read the log file {each}: {err.strerror}") from None
    if not found:
        raise UserError(f"the log file {path} does not exist (log.file)")


def journal_lines(identifier: str, qids: list[str], namespace: str = "") -> Iterator[str]:
    """The journal's lines of ``identifier`` (in journal ``namespace``, if given) that
    name one of ``qids``."""
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise UserError(
            "no [log] file is set and journalctl is not installed: set log.file, or "
            "grep the queue id in the gateway's standard error"
        )
    command = [journalctl, "--no-pager", "--quiet", "-o", "short-iso", "-t", identifier]
    command += ["--grep", "|".join(qids)]
    if namespace:
        command.append(f"--namespace={namespace}")
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=JOURNAL_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"journalctl did not answer within {JOURNAL_TIMEOUT:.0f} s") from None
    # journalctl --grep exits 1 when nothing matched; anything else on stderr is a problem.
    if result.returncode not in (0, 1) or (result.returncode and result.stderr.strip()):
        why = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.returncode}"]
        raise UserError(f"journalctl failed: {why[0]}")
    yield from result.stdout.splitlines()


def cmd_log(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    file = Path(args.file) if args.file else cfg.log.file
    journal = file is None or args.journal
    qids = message_qids_keeping_root(cfg, args.id) if journal else message_qids(cfg, args.id)
    about = re.compile(r"\b(?:" + "|".join(qids) + r")\b")
    if file is not None and not journal:
        lines, source = file_lines(file), str(file)
    else:
        lines = journal_lines(args.identifier, qids, args.namespace)
        source = f"the journal (-t {args.identifier})"
    printed = 0
    for line in lines:
        if about.search(line):
            print(line)
            printed += 1
    if not printed:  # as grep: nothing found is exit status 1
        print(f"certifica: no line about {qids[0]} in {source}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica log`` to the subcommands."""
    p = sub.add_parser(
        "log",
        help="print every log line about a message (like grep QID on a Postfix log)",
        description=(
            "Print every log line about a message: those naming its queue id, and those of "
            "the mails the gateway made about it (notice, certificate, reports, addenda). "
            "Read from [log] file when it is set, else from the journal (journalctl)."
        ),
    )
    p.add_argument("id", metavar="QID", help="the queue id, or its first characters")
    p.add_argument("--file", help="read this log file instead of [log] file")
    p.add_argument(
        "--journal", action="store_true", help="read the journal even when [log] file is set"
    )
    p.add_argument(
        "-t",
        "--identifier",
        default="certifica",
        help="the journal's syslog identifier (the unit's SyslogIdentifier=; default certifica)",
    )
    p.add_argument(
        "--namespace",
        default="",
        help="the journal namespace the unit logs to (its LogNamespace=; default: none)",
    )
    p.set_defaults(func=cmd_log)
