"""The evidence log (``certifica-evidence/1``, :mod:`certifier.evidence`) and its RFC 3161
timestamped checkpoints (:mod:`certifier.checkpoints`), as the gateway reads and writes
them in its database.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asn1crypto import x509 as asn1_x509

from certifier import checkpoints, evidence
from relay.queue.db import Database


class EvidenceLog(Database):
    """Appending to the hash-chained evidence log, reading it, and its checkpoints."""

    async def evidence_for(self, qid: str) -> list[evidence.Entry]:
        return await self._read(lambda: evidence.entries_for(self._conn, qid))

    async def append_evidence(
        self, qid: str, event: str, detail: dict[str, Any], now: float, recipient: str | None = None
    ) -> None:
        await self._run(lambda: evidence.append(self._conn, now, qid, event, detail, recipient))

    async def evidence_head(self) -> tuple[int, str] | None:
        return await self._read(lambda: evidence.head(self._conn))

    async def evidence_excerpt(self, seqs: list[int]) -> list[dict[str, Any]]:
        """Entries as a certificate embeds them (every hashed field, as hashed)."""
        return await self._read(lambda: evidence.excerpt(self._conn, seqs))

    async def add_checkpoint(self, checkpoint: checkpoints.Checkpoint) -> None:
        await self._run(lambda: checkpoints.record(self._conn, checkpoint))

    async def latest_checkpoint(self) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: checkpoints.latest(self._conn))

    async def checkpoint_covering(self, seq: int) -> checkpoints.Checkpoint | None:
        return await self._read(lambda: checkpoints.covering(self._conn, seq))

    def audit_evidence(self, roots: list[asn1_x509.Certificate]) -> checkpoints.Audit:
        """Recompute the whole chain and check every checkpoint against it and its TSA
        (``certifica evidence verify``)."""
        return self.run_sync(lambda db: checkpoints.audit(db.conn, roots))

    def export_checkpoints(self, directory: Path) -> list[Path]:
        """Write every checkpoint into ``directory`` as files ``openssl ts -verify`` reads."""
        return self.run_sync(lambda db: checkpoints.export(db.conn, directory))
