"""The jobs the queue manager hands out survive JSON, and a document job asked again
does nothing twice (its worker may have ended after its commit, before answering)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from certifier.pki import ensure_dev_pki
from certifier.pool import CertificatePool
from relay.certify.documents import DocumentMaker
from relay.config import load_config
from relay.process.gateway import PipelineCertifier, signing_settings, state_paths
from relay.queue.jobs import (
    DeliveryDone,
    DeliveryJob,
    DocumentDone,
    DocumentJob,
    DocumentKind,
)
from relay.queue.spool import Spool
from relay.queue.store import NewMessage, Store
from tests.conftest import CERT_ADDRESS, Sink, make_message, start_gateway, write_config
from tests.test_certified_sending import generated_for, submit


def test_delivery_rows_from_the_store_survive_json(tmp_path: Path) -> None:
    """Every column take_due gives a delivery agent reads back equal from JSON."""

    async def scenario() -> list[dict[str, object]]:
        store = Store(tmp_path / "queue.db", 3600.0)
        try:
            await store.enqueue(
                NewMessage(
                    qid="0123456789AB",
                    kind="mail",
                    sender="alice@example.com",
                    size=1234,
                    sha256=hashlib.sha256(b"m").hexdigest(),
                    recipients=("bob@example.org", "carol@example.org"),
                    certified=True,
                    method="submission",
                    cert_id="CF-0123456789ABCDEF",
                    auth_user="alice@example.com",
                    client_ip="192.0.2.1",
                    client_helo="client.test",
                    tls_version="TLSv1.3",
                    tls_cipher="TLS_AES_256_GCM_SHA384",
                    tracking=True,
                    header_from="Älice <alice@example.com>",
                    notify={"bob@example.org": "SUCCESS,FAILURE"},
                    orcpt={"bob@example.org": "rfc822;bob@example.org"},
                ),
                now=1_800_000_000.123456,
            )
            return await store.take_due(1_900_000_000.0, 10, 1_900_000_100.5)
        finally:
            store.close()

    rows = asyncio.run(scenario())
    assert len(rows) == 2
    job = DeliveryJob(rows)
    back = DeliveryJob.from_json(json.loads(json.dumps(job.to_json())))
    assert back == job
    assert back.qid == "0123456789AB" and back.domain == "example.org"
    assert isinstance(back.rows[0]["created"], float)


def test_a_value_json_would_change_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match="header_section"):
        DeliveryJob([{"qid": "A", "domain": "example.org", "header_section": b"X: y"}]).to_json()


def test_results_and_document_jobs_survive_json() -> None:
    for done in (
        DeliveryDone("A1", "example.org", None),
        DeliveryDone("A1", "example.org", False),
    ):
        assert DeliveryDone.from_json(json.loads(json.dumps(done.to_json()))) == done
    for kind in DocumentKind:
        job = DocumentJob(kind, "A1")
        assert DocumentJob.from_json(json.loads(json.dumps(job.to_json()))) == job
    assert DocumentJob(DocumentKind.FINISH, "A1").key != DocumentJob(DocumentKind.NOTICE, "A1").key
    done2 = DocumentDone(("A1",))
    assert DocumentDone.from_json(json.loads(json.dumps(done2.to_json()))) == done2


def test_finish_asked_again_after_the_certificate_does_nothing(tmp_path: Path, mx: Sink) -> None:
    """A certificate worker killed after its commit, before answering, is asked again:
    the second finish (and notice) of the certified message makes no second certificate."""
    config = write_config(tmp_path, {"example.org": mx.port, "example.com": mx.port})
    gw = start_gateway(config)
    try:
        qid = submit(gw, make_message(subject="Asked twice"), ["bob@example.org", CERT_ADDRESS])
        generated_for(mx, qid, "certificate")
    finally:
        gw.stop()

    cfg = load_config(config)
    paths = state_paths(cfg)

    async def again() -> tuple[list[DocumentDone], int, bool]:
        store = Store(paths["db"], cfg.queue.lifetime)
        pool = CertificatePool(
            signing_settings(cfg, ensure_dev_pki(paths["keys"], cfg.gateway.hostname)), workers=1
        )
        try:
            queued = await store.all_qids()
            maker = DocumentMaker(
                cfg,
                store,
                Spool(paths["spool"]),
                PipelineCertifier(pool),
                paths["certificates"],
                b"k" * 32,
            )
            results = [
                await maker.make(DocumentJob(kind, qid))
                for kind in (DocumentKind.FINISH, DocumentKind.NOTICE, DocumentKind.FINISH)
            ]
            issued = [e for e in await store.evidence_for(qid) if e.event == "CertificateIssued"]
            return results, len(issued), await store.all_qids() == queued
        finally:
            pool.close()
            store.close()

    results, issued, nothing_queued = asyncio.run(again())
    assert results == [DocumentDone(), DocumentDone(), DocumentDone()]
    assert issued == 1
    assert nothing_queued  # no second certificate (or notice) mail
