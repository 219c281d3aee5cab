"""Every document the gateway issues has a verification code (README, "Verifying a
certificate"): the certificate's evidence names the provider, its verification URL and
the seal's holder, and the gateway records what the public page shows, found by the
code's hash, with the SHA-256 of the PDF exactly as mailed.

Real gateway, real SMTP client and sinks; the embedded evidence is read back with
poppler's ``pdfdetach``, not with our code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from relay.certify.verification import CODE_BITS, verification_code
from relay.queue.store import Store
from relay.queue.verifications import code_sha256
from tests.conftest import CERT_ADDRESS, Gateway, Sink, make_message
from tests.test_certified_sending import submit


def certificate_of(mx: Sink, qid: str) -> bytes:
    """The PDF of the mail carrying ``qid``'s certificate (whatever its subject says)."""

    def pdfs(ms: list) -> list[bytes]:
        out = []
        for m in ms:
            if m.message["X-Certifica-Queue-Id"] != qid:
                continue
            for part in m.message.iter_attachments():
                if part.get_content_type() == "application/pdf":
                    out.append(part.get_payload(decode=True))
        return out

    return pdfs(mx.wait_for(lambda ms: bool(pdfs(ms)), 90.0))[0]


def embedded_evidence(pdf: bytes, tmp: Path) -> dict:
    path = tmp / "certificate.pdf"
    path.write_bytes(pdf)
    listing = subprocess.run(["pdfdetach", "-list", str(path)], capture_output=True, text=True)
    names = [line.split(":", 1)[1].strip() for line in listing.stdout.splitlines()[1:]]
    number = names.index("evidence.json") + 1
    out = tmp / "evidence.json"
    subprocess.run(["pdfdetach", "-save", str(number), "-o", str(out), str(path)], check=True)
    return json.loads(out.read_text())


def test_a_certificate_carries_its_verification_url_and_the_page_record(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    raw = make_message(to="bob@example.org", cc=CERT_ADDRESS, subject="Verify me")
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    pdf = certificate_of(mx, qid)
    evidence = embedded_evidence(pdf, tmp_path)

    assert evidence["provider"]["name"].startswith("Certifica development provider")
    assert evidence["provider"]["policy_id"].startswith("urn:oid:")
    assert evidence["seal"]["signer"]  # the development signing certificate's CN
    url = evidence["verification"]["url"]
    base, _, code = url.rpartition("/v/")
    assert base.startswith("http://127.0.0.1:")
    key = (gateway.state / "keys" / "tracking.key").read_bytes()
    assert code == verification_code(key, evidence["certificate_id"])
    assert len(code) * 6 >= CODE_BITS  # base64url: 6 bits a character

    store = Store(gateway.state / "queue.db", 3600.0)
    try:
        row = asyncio.run(_lookup(store, code))
        missing = asyncio.run(_lookup(store, code[:-1] + ("A" if code[-1] != "A" else "B")))
    finally:
        store.close()
    assert missing is None
    assert row is not None
    assert row["cert_id"] == evidence["certificate_id"]
    assert row["qid"] == qid
    assert row["kind"] == "sending" and row["outcome"] == "delivery"
    assert row["pdf_sha256"] == hashlib.sha256(pdf).hexdigest()
    # The page states what the PDF states: its issue time and each recipient's time.
    issued = datetime.fromisoformat(evidence["issued_at"].replace("Z", "+00:00")).timestamp()
    assert row["issued_at"] == pytest.approx(issued, abs=0.001)
    bob = evidence["recipients"][0]
    assert bob["time"].endswith("Z")
    assert row["recipients"] == [
        {"address": "bob@example.org", "status": "delivered", "time": bob["time"]}
    ]
    # Only the code's hash is stored, never the code.
    with sqlite3.connect(gateway.state / "queue.db") as conn:
        stored = [r[0] for r in conn.execute("SELECT code_sha256 FROM verifications")]
    assert code_sha256(code) in stored and code not in stored


async def _lookup(store: Store, code: str) -> dict | None:
    return await store.verification(code)


def test_erasing_keeps_the_proof_and_drops_the_addresses(tmp_path: Path) -> None:
    store = Store(tmp_path / "queue.db", 3600.0)
    try:

        async def record() -> None:
            await store.record_verification(
                "c" * 27,
                cert_id="CERT1",
                qid="Q1",
                kind="sending",
                outcome="delivery",
                issued_at=1764758525.0,
                pdf_sha256="ab" * 32,
                recipients=[{"address": "bob@example.org", "status": "delivered", "time": None}],
            )

        asyncio.run(record())
        assert store.erase_verification("CERT1", 1764800000.0)
        assert not store.erase_verification("NO-SUCH", 1764800000.0)
        row = asyncio.run(_lookup(store, "c" * 27))
    finally:
        store.close()
    assert row is not None
    assert row["recipients"] is None and row["erased_at"] == 1764800000.0
    assert row["pdf_sha256"] == "ab" * 32 and row["issued_at"] == 1764758525.0
