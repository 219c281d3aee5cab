"""``certifica verify``: check a certificate PDF offline, without the gateway's database."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from relay.cli.common import (
    EXIT_CONTENT_NOT_CERTIFIED,
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    default_trust_roots,
)


def cmd_verify(args: argparse.Namespace) -> int:
    from certifier.verify import verify_certificate

    # pyHanko logs validation trouble with tracebacks; the checks below say it in one line.
    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    roots = [Path(p) for p in args.trust]
    if not roots:
        roots = default_trust_roots(args)
    report = verify_certificate(data, roots)
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.ok and not report.content_certified:
        print(
            f"{path}: the signature and the evidence are intact, but the message content is "
            "NOT certified (the gateway could not read the message when it made this "
            "certificate)."
        )
        return EXIT_CONTENT_NOT_CERTIFIED
    if report.ok:
        print(f"{path}: the certificate is intact and its evidence matches.")
        return EXIT_OK
    print(f"{path}: NOT VALID.", file=sys.stderr)
    return EXIT_FAILED


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica verify`` to the subcommands."""
    p = sub.add_parser(
        "verify",
        help="check a certificate PDF offline",
        description="Check a certificate's signature, timestamp and embedded message, "
        "without the gateway's database. Exit 0 when valid, 1 when not, 3 when the "
        "signature and evidence are intact but the certificate proves no message content "
        "(the gateway could not read the message when it made it).",
    )
    p.add_argument("file", help="the certificate PDF")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="a trusted root certificate (repeatable; default: the configured "
        "signing.trust_roots, else this gateway's own CA)",
    )
    p.set_defaults(func=cmd_verify)
