"""``certifica evidence verify``: recompute the hash-chained evidence log and check every
RFC 3161 checkpoint, in the gateway's database.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from relay.cli import evidence_export, evidence_renew, legal_hold
from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    config_of,
    default_trust_roots,
    open_store,
    written_at_once,
)


def cmd_evidence_verify(args: argparse.Namespace) -> int:
    """Recompute the evidence chain and check every RFC 3161 checkpoint; exit 1 on a problem."""
    from pyhanko.keys import load_certs_from_pemder

    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    paths = [Path(p) for p in args.trust] or default_trust_roots(args)
    try:
        roots = list(load_certs_from_pemder([str(p) for p in paths]))
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read the trust roots {', '.join(map(str, paths))}: {err}"
        ) from None
    with open_store(config_of(args)) as store:
        found = store.audit_evidence(roots)
        written = _export_checkpoints(store, Path(args.export)) if args.export else None
    for problem in found.problems:
        print(f"FAIL {problem}")
    if found.more_problems:
        print(f"FAIL and {found.more_problems} more problems")
    if written is not None:
        print(
            f"{len(written) // 2} checkpoint(s) written to {args.export}: check one with "
            "openssl ts -verify -data checkpoint-N.dat -in checkpoint-N.tst -token_in "
            "-CAfile TSA-ROOT.pem"
        )
    for line in found.restores:
        print(f"RESTORED {line}")
    print(found.summary())
    return EXIT_OK if found.ok else EXIT_FAILED


def _export_checkpoints(store: Any, target: Path) -> list[Path]:
    """Every checkpoint into ``target``, a new or empty directory, all at once: they are
    written into a temporary directory beside it, renamed into place when complete, so
    an error leaves nothing behind."""
    with written_at_once(target) as partial:
        written = store.export_checkpoints(partial)
    return [target / p.name for p in written]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica evidence`` to the subcommands."""
    evidence = sub.add_parser(
        "evidence",
        help="the hash-chained evidence log and its timestamped checkpoints",
        description="Check the gateway's evidence log, in its database.",
    )
    esub = evidence.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    p = esub.add_parser(
        "verify",
        help="recompute the whole chain and check every checkpoint",
        description="Recompute the hash of every evidence entry and its link to the one "
        "before, and check every RFC 3161 checkpoint: its entry's hash is the timestamped "
        "head, and its token is intact and issued by a trusted TSA. Prints one line per "
        "problem, one line per restore from a backup (its Restored entry: the backup's "
        "time and MANIFEST SHA-256, the numbers not in this log), then a summary. Exit 0 "
        "when all holds, 1 when not.",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="a trusted root of the timestamp authority (repeatable; default: the "
        "configured signing.trust_roots, else this gateway's own CA)",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="also write each checkpoint as DIR/checkpoint-<seq>.dat (the timestamped "
        "statement) and .tst (the DER token), for openssl ts -verify; DIR must be new or "
        "empty, and is filled only once every file is written",
    )
    p.set_defaults(func=cmd_evidence_verify)
    evidence_export.register(esub)
    evidence_renew.register(esub)
    legal_hold.register(esub)
