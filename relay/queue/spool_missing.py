"""A spool file that is gone: when it was first found missing, and how that is said.

A lost spool file (a disk fault, an operator) is recorded once as the evidence event
``SpoolFileMissing``, so a restart does not start the grace
(``[queue] missing_spool_grace``) again. Delivery (:mod:`relay.delivery.agent`) defers
and then fails the recipients; the documents (:mod:`relay.certify.documents`) withhold
the notice and certify without the content.
"""

from __future__ import annotations

import logging
import time

from relay.config import Config
from relay.queue.spool import SpoolFileMissing
from relay.queue.store import Store

log = logging.getLogger("certifica/qmgr")

SPOOL_MISSING_TEXT = (
    "spool file missing: the gateway's copy of the message is gone (disk fault or operator error)"
)


def spool_name(missing: SpoolFileMissing) -> str:
    """The file as the spool names it; its full path is for the operator's log only."""
    return f"spool/{missing.path.parent.name}/{missing.path.name}"


async def missing_since(cfg: Config, store: Store, qid: str, missing: SpoolFileMissing) -> float:
    """When the spool file of ``qid`` was first found missing. The first time is an
    evidence event (``SpoolFileMissing``), so a restart does not start the grace
    again, and the one error line the operator gets about it."""
    for entry in await store.evidence_for(qid):
        if entry.event == "SpoolFileMissing":
            return entry.time
    now = time.time()
    await store.append_evidence(qid, "SpoolFileMissing", {"file": spool_name(missing)}, now)
    log.error(
        "%s: spool file missing (%s): the gateway's copy of the message is gone; "
        "it fails after queue.missing_spool_grace (%.0f s) unless the file is restored",
        qid,
        missing.path,
        cfg.queue.missing_spool_grace,
    )
    return now
