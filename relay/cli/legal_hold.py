"""``certifica evidence legal-hold CERT-ID [--note TEXT] [--release]`` and ``certifica
evidence holds``: keep everything about a message, whatever the retention policy or an
erasure request says, while a dispute needs it (README "Retention", docs/retention.md).

Placing and releasing a hold are evidence entries of the message (``LegalHold``,
``LegalHoldReleased``), with the operator and the note.
"""

from __future__ import annotations

import argparse
import time

from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, config_of, open_store, operator_name
from relay.queue.ids import CERTIFICATE_ID


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def cmd_legal_hold(args: argparse.Namespace) -> int:
    """Place (or, ``--release``, release) a legal hold on the message of a certificate."""
    from relay.process.gateway import state_paths
    from relay.queue import holds, retention
    from relay.queue.archive import ArchiveBusy, archive_lock

    cert_id = str(args.certificate).upper()
    if not CERTIFICATE_ID.fullmatch(cert_id):
        raise UserError(f"{args.certificate!r} is not a certificate id (like CF-1CD0C29858F87AD3)")
    operator = operator_name()
    note = " ".join(str(args.note or "").split())
    now = time.time()
    cfg = config_of(args)
    with open_store(cfg, writes=True) as store:
        if args.release:
            released = store.run_sync(lambda d: holds.release(d.conn, cert_id, note, operator, now))
            if released is None:
                raise UserError(f"{cert_id} is not under legal hold (certifica evidence holds)")
            print(
                f"{cert_id}: legal hold on message {released.qid} released (placed "
                f"{_iso(released.since)}); the retention policy applies to it again"
            )
            return EXIT_OK
        try:
            # Under the archive lock: retention and an erasure read the holds again under
            # it right before deleting, so this hold comes wholly before or after that.
            with archive_lock(state_paths(cfg)["certificates"]):
                hold, new = store.run_sync(
                    lambda d: holds.place(d.conn, cert_id, note, operator, now)
                )
        except holds.NoSuchCertificate:
            raise UserError(f"no certificate {cert_id} was issued by this gateway") from None
        except ArchiveBusy:
            raise UserError(
                "the archive of certificates stayed busy (a renewal, retention or an "
                "erasure is writing it): nothing was placed, try again"
            ) from None
        removed = store.run_sync(lambda d: retention.content_removed(d.conn, hold.qid))
    if not new:
        print(
            f"{cert_id}: already under legal hold since {_iso(hold.since)}"
            + (f" ({hold.note})" if hold.note else "")
        )
        return EXIT_FAILED
    print(
        f"{cert_id}: legal hold placed on message {hold.qid}: retention and erasure keep its "
        "content, certificates and evidence until it is released"
    )
    if removed is not None:
        print(
            f"{cert_id}: note: its content was removed before the hold, after "
            f"{removed} days (retention); what is left is kept"
        )
    return EXIT_OK


def cmd_holds(args: argparse.Namespace) -> int:
    """List the legal holds in place."""
    from relay.queue import holds

    with open_store(config_of(args)) as store:
        found = store.run_sync(lambda d: holds.holds(d.conn))
    if not found:
        print("No legal holds")
        return EXIT_OK
    print(f"{'CERTIFICATE':<22}  {'QUEUE ID':<12}  {'SINCE':<23}  NOTE")
    for hold in found:
        print(f"{hold.cert_id:<22}  {hold.qid:<12}  {_iso(hold.since):<23}  {hold.note}")
    return EXIT_OK


def register(esub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``legal-hold`` and ``holds`` to ``certifica evidence``."""
    p = esub.add_parser(
        "legal-hold",
        help="keep everything about a certificate's message (or release it)",
        description="Place a legal hold on the message a certificate is about (a "
        "certificate of sending or reception, or an addendum): while it holds, neither "
        "the retention policy nor an erasure request removes its content, its "
        "certificates or the values of its evidence entries. Placing and releasing a "
        "hold are evidence entries (LegalHold, LegalHoldReleased) with the operator and "
        "the note. Exit 1 when the hold is there already.",
    )
    p.add_argument(
        "certificate", metavar="CERT-ID", help="a certificate id, like CF-1CD0C29858F87AD3"
    )
    p.add_argument(
        "--note", metavar="TEXT", default="", help="why (a case number, who asked); recorded"
    )
    p.add_argument(
        "--release",
        action="store_true",
        help="release the hold instead: the retention policy applies again",
    )
    p.set_defaults(func=cmd_legal_hold)
    p = esub.add_parser(
        "holds",
        help="list the legal holds in place",
        description="List the legal holds in place: certificate, queue id, since when, note.",
    )
    p.set_defaults(func=cmd_holds)
