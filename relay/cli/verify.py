"""``certifica verify``: check a certificate PDF offline, without the gateway's database.

``--json`` prints the report as one JSON object instead of lines (the verification page
runs this command in a separate process and words the answer for its visitor)::

    {"ok": true, "content_certified": true, "timestamp": "2026-12-03T10:42:05+00:00",
     "checks": [{"name": "integrity", "ok": true, "detail": "..."}, ...]}

``timestamp`` is the time of the RFC 3161 signature timestamp (null when there is none or
it cannot be read). The exit status is the same with or without ``--json``.
"""

from __future__ import annotations

import argparse
import json
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
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "content_certified": report.content_certified,
                    "timestamp": timestamp_time(data),
                    "checks": [
                        {"name": c.name, "ok": c.ok, "detail": c.detail} for c in report.checks
                    ],
                }
            )
        )
        if not report.ok:
            return EXIT_FAILED
        return EXIT_OK if report.content_certified else EXIT_CONTENT_NOT_CERTIFIED
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


def timestamp_time(pdf: bytes) -> str | None:
    """The generation time of the PDF's RFC 3161 signature timestamp (RFC 3161 section
    2.4.2, ``genTime``) in ISO 8601, or None when there is none to read."""
    from asn1crypto import cms, tsp  # noqa: F401 - tsp registers TSTInfo for .parsed

    from certifier.verify import extract_timestamp_token

    try:
        token = cms.ContentInfo.load(extract_timestamp_token(pdf))
        info = token["content"]["encap_content_info"]["content"].parsed
        return str(info["gen_time"].native.isoformat())
    except Exception:  # a damaged token: the report already says so
        return None


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
        "--json",
        action="store_true",
        help="print the report as one JSON object (ok, content_certified, timestamp, checks)",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="a trusted root certificate (repeatable; default: the configured "
        "signing.trust_roots, else this gateway's own CA)",
    )
    p.set_defaults(func=cmd_verify)
