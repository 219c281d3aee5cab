"""``certifica backup DIR`` and ``certifica restore DIR``: a consistent copy of a running
gateway's state, and its restore into an empty state directory (README, "Backups and
restore"; how the copy stays consistent: :mod:`relay.queue.backup`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from relay.cli.common import EXIT_OK, UserError, config_of, state_dir


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("certifica")
    except PackageNotFoundError:
        return "development"


def cmd_backup(args: argparse.Namespace) -> int:
    from relay.process.gateway import state_paths
    from relay.queue.backup import BackupError, backup

    cfg = config_of(args)
    root = state_dir(cfg)
    try:
        done = backup(root, state_paths(cfg)["certificates"], Path(args.directory), _version())
    except BackupError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"{err.filename or args.directory}: {err.strerror}") from None
    head = f"#{done.head[0]}" if done.head else "empty"
    print(
        f"backup of {root} written to {done.directory}: {done.files} files, "
        f"{done.size / 1e6:.1f} MB in {done.seconds:.2f} s (writers waited "
        f"{done.lock_seconds * 1000:.0f} ms); evidence log head {head}, highest issued "
        f"#{done.highest_seq}; {done.in_flight} messages still to be delivered"
    )
    for qid in done.missing:
        print(f"certifica: warning: {qid}: queued, but its spool file was already missing")
    print(f"check it with: cd {done.directory} && sha256sum -c --quiet MANIFEST")
    print(
        "keys/subject.key is not in the backup: keep it apart from it and put it back after "
        'a restore (docs/erasure.md, "The commitment key")'
    )
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from relay.process.gateway import state_paths
    from relay.queue.backup import RESTORE_GAP, BackupError, restore

    cfg = config_of(args)
    root = state_dir(cfg, writes=True)
    try:
        done = restore(
            Path(args.directory),
            root,
            state_paths(cfg)["certificates"],
            continue_after=args.continue_after,
            gap=RESTORE_GAP if args.gap is None else args.gap,
        )
    except BackupError as err:
        raise UserError(str(err)) from None
    except OSError as err:
        raise UserError(f"{err.filename or args.directory}: {err.strerror}") from None
    skipped = (
        f"; entries #{done.unlogged[0]} to #{done.unlogged[1]} are not in this log "
        "(made on the lost installation, or never)"
        if done.unlogged
        else ""
    )
    print(
        f"restored the backup of {done.backup_time} (MANIFEST SHA-256 "
        f"{done.manifest_sha256[:16]}...) into {done.state_dir}: {done.files} files; "
        f"evidence entry #{done.restored_seq} records it{skipped}; {done.in_flight} "
        "recipients still to be delivered (their certificates will say they may receive "
        "the message twice)"
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica backup`` and ``certifica restore`` to the subcommands."""
    p = sub.add_parser(
        "backup",
        help="copy the gateway's state into a new directory, while it runs",
        description="Copy the database (SQLite's online backup), the spool, the "
        "certificates and the keys into DIR, consistent with each other, while the gateway "
        "runs. DIR/MANIFEST lists the SHA-256 of every file (sha256sum -c reads it); "
        "DIR/backup.json says when, by which version, and the evidence log's head. DIR must "
        "be new or empty. The copy holds keys and mail: keep it as private as the state "
        "directory.",
    )
    p.add_argument("directory", metavar="DIR", help="where to write the backup (new or empty)")
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser(
        "restore",
        help="restore a backup into an empty state directory",
        description="Check every SHA-256 of DIR/MANIFEST, then copy the backup into "
        "[gateway] state_dir (and [evidence] archive_dir), which must hold no file, and "
        "record a Restored entry in the evidence log naming the backup. Its sequence "
        "number comes after every number the lost installation may have issued: the "
        "highest known (the backup's, or --continue-after) plus a margin (--gap), and at "
        "least the restore's time in milliseconds since the epoch, so that one backup "
        "restored twice never issues a number twice. Run it "
        "with the gateway stopped; start the gateway afterwards.",
    )
    p.add_argument("directory", metavar="DIR", help="a directory written by certifica backup")
    p.add_argument(
        "--continue-after",
        type=int,
        metavar="SEQ",
        help="the highest evidence sequence number known to have been issued (from a "
        "certificate or checkpoint made after the backup); default: the backup's",
    )
    p.add_argument(
        "--gap",
        type=int,
        default=None,
        metavar="N",
        help="sequence numbers left unused after the highest known one, for entries the "
        "lost installation made that nobody knows of (default: 1000000; 0 when the lost "
        "log's last entry is known)",
    )
    p.set_defaults(func=cmd_restore)
