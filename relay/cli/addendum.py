"""``certifica addendum``: render and sign, now, the addendum of a certificate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from relay.cli.common import EXIT_OK, UserError, config_of, open_store


def cmd_addendum(args: argparse.Namespace) -> int:
    """Render and sign, now, the addendum of a certificate: every event up to this moment."""
    from certifier import pipeline, pool
    from certifier.pki import ensure_dev_pki
    from relay.certify.evidence_record import build_evidence
    from relay.certify.retention import content_removed_reason
    from relay.process.gateway import signing_settings, state_paths
    from relay.queue.ids import new_certificate_id
    from relay.queue.spool import Spool, write_durably

    if not args.output and sys.stdout.isatty():
        raise UserError("the addendum is a PDF: give a file to write it to (-o addendum.pdf)")
    cfg = config_of(args)
    paths = state_paths(cfg)
    with open_store(cfg) as store:
        qid = store.certified_mail(args.certificate)
        if qid is None:
            raise UserError(f"no certificate {args.certificate!r} on this gateway")
        spool = Spool(paths["spool"])

        async def _evidence() -> tuple[dict[str, Any], bytes | None]:
            row = await store.message(qid)
            if row is None:  # withdrawn from the database since it was found
                raise UserError(f"no certificate {args.certificate!r} on this gateway")
            evidence = await build_evidence(cfg, store, row)
            try:
                return evidence, spool.read_any(qid)
            except FileNotFoundError:
                # Removed by the retention policy: the addendum is made without it and
                # says why (README, "Retention"); lost otherwise: none is made.
                removed = content_removed_reason(await store.evidence_for(qid))
                if removed is None:
                    raise
                evidence["message"]["content_unavailable"] = removed
                return evidence, None

        try:
            evidence, raw = asyncio.run(_evidence())
        except FileNotFoundError:
            raise UserError(
                f"the message of {args.certificate.upper()} is no longer in the spool "
                "(spool file missing): an addendum embeds it, so none can be made"
            ) from None
        cert_id = evidence["certificate_id"]
        evidence.update(kind="addendum", certificate_id=new_certificate_id(), addendum_of=cert_id)
    pki = ensure_dev_pki(paths["keys"], cfg.gateway.hostname, public_url=cfg.web.public_url)
    pool.init_process(signing_settings(cfg, pki))
    pdf = pipeline.certify(evidence, raw)
    if not args.output:
        sys.stdout.buffer.write(pdf)
        sys.stdout.buffer.flush()
        return EXIT_OK
    output = Path(args.output)
    try:
        # A temporary file renamed into place: on any error, FILE is left as it was.
        write_durably(output, pdf)
    except OSError as err:
        raise UserError(f"{output}: cannot be written ({err.strerror})") from None
    print(f"addendum {evidence['certificate_id']} written to {output}", file=sys.stderr)
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica addendum`` to the subcommands."""
    p = sub.add_parser(
        "addendum",
        help="sign an addendum of a certificate now (PDF to -o FILE or stdout)",
        description="Render and sign, now, the addendum of certificate CERT-ID: every "
        "event recorded so far (opens, clicks, late bounces). Writes the PDF to FILE "
        "(-o), else to stdout when it is not a terminal.",
    )
    p.add_argument("certificate", metavar="CERT-ID")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the PDF to FILE (only once it is complete; nothing on error) instead of stdout",
    )
    p.set_defaults(func=cmd_addendum)
