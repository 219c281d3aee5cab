"""``certifica evidence renew [--before DAYS] [--dry-run]``: add a new document timestamp
to every archived certificate whose newest timestamp's authority certificate expires
within DAYS (README, "Renewal"; :mod:`relay.certify.renewal`).

It runs with the gateway running or stopped: each file is replaced atomically, the
versions are recorded through the queue's database, and one renewal pass runs at a time
(the gateway's daily task waits for the next day when this one holds the archive).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging

from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, config_of, open_store, state_dir


def cmd_evidence_renew(args: argparse.Namespace) -> int:
    """Renew the due certificates of the archive; exit 1 when one could not be renewed."""
    from certifier.pki import ensure_dev_pki
    from certifier.pool import build_archiver, build_signer
    from relay.certify.renewal import RenewalBusy, renew_archive_sync
    from relay.process.gateway import signing_settings, state_paths

    # pyHanko logs each path it could not validate with a traceback; the line per file
    # below says what matters.
    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    cfg = config_of(args)
    state_dir(cfg, writes=not args.dry_run)
    days = cfg.evidence.renew_before if args.before is None else args.before
    if days < 0:
        raise UserError(f"--before must be a number of days, 0 or more, not {days}")
    paths = state_paths(cfg)
    archive = paths["certificates"]
    if not archive.is_dir():
        raise UserError(f"no archive of certificates at {archive} ([evidence] archive_dir)")
    archiver = None
    if not args.dry_run:
        pki = ensure_dev_pki(paths["keys"], cfg.gateway.hostname, public_url=cfg.web.public_url)
        settings = signing_settings(cfg, pki)
        archiver = build_archiver(settings, build_signer(settings))
        if archiver is None:
            raise UserError("long-term validation is turned off: nothing can be renewed")
    with open_store(cfg, writes=not args.dry_run) as store:
        try:
            report = renew_archive_sync(
                archive,
                archiver,
                store.record_certificate_version_sync,
                store.forget_certificate_renewal_sync,
                before=dt.timedelta(days=days),
                dry_run=args.dry_run,
                echo=print,
            )
        except RenewalBusy:
            raise UserError(
                "another renewal is running (the gateway's daily task or another "
                "certifica evidence renew): try again when it has finished"
            ) from None
    print(report.summary(args.dry_run))
    return EXIT_FAILED if report.failed else EXIT_OK


def register(esub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``renew`` to the ``certifica evidence`` actions."""
    p = esub.add_parser(
        "renew",
        help="add a new document timestamp to the certificates whose timestamp expires soon",
        description="For every certificate, addendum and reception certificate in the "
        "archive ([evidence] archive_dir) whose newest timestamp's authority certificate "
        "expires within DAYS, or that has no document timestamp yet ([evidence] lta_delay), "
        "append the validation data of that timestamp and a new document timestamp "
        "(PAdES B-LTA renewal, an incremental update: every earlier copy stays valid). "
        "Prints one line per renewed file, then a summary. Exit 0 when every due file was "
        "renewed, 1 when one could not be.",
    )
    p.add_argument(
        "--before",
        type=int,
        metavar="DAYS",
        help="renew when the newest timestamp's authority certificate expires within "
        "DAYS days (default: [evidence] renew_before, 365)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the files that are due, change nothing",
    )
    p.set_defaults(func=cmd_evidence_renew)
