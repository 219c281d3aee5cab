"""What each recipient received can be rebuilt from the certificate (certifier/copies.py).

Through the running gateway, with tracking on: a certified message to two recipients
gets a tracked copy each (links and the open pixel spliced in, Received, Date and
Message-ID added on submission, the gateway's DKIM signature); the copy the recipient's
server received, byte for byte, is ``rebuild(message.eml, copy)`` from the PDF, its
SHA-256 is the certificate's ``delivered_sha256``, and ``certifica verify`` checks it
(``delivered-copies``). A changed recipe fails that check, naming the recipient.
"""

from __future__ import annotations

import base64
import copy as copying
import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from certifier import copies
from certifier.verify import copies_check
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_tracking_e2e import SIGN_URL, TERMS_URL, copy_for, free_port

RECIPIENTS = ["bob@example.org", "carol@example.org"]


def tracked_message() -> bytes:
    """HTML and text with two links; no Date and no Message-ID (the gateway adds them)."""
    return (
        "From: Alice <alice@example.com>\r\n"
        f"To: {', '.join(RECIPIENTS)}\r\nCc: {CERT_ADDRESS}\r\nSubject: Please sign\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Sign here: {SIGN_URL}\r\nTerms: {TERMS_URL}\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: "
        "quoted-printable\r\n\r\n"
        f'<html><body><p>Please <a href=3D"{SIGN_URL.replace("&", "&amp;")}">sign here</a>'
        f' and read <a href=3D"{TERMS_URL}">the terms</a>.</p></body></html>\r\n'
        "--b1--\r\n"
    ).encode()


@pytest.fixture(scope="module")
def tracked(sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("copies")
    port = free_port()
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += (
        f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n[tracking]\nenabled = true\n'
        "addendum_interval = 0.0\nfast_seconds = 0.0\n"
    )
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw, sink
    gw.stop()
    assert_clean_log(gw.log())


def certified(gw: Gateway, sink: Sink, raw: bytes, tmp: Path) -> dict[str, Any]:
    """Send ``raw`` certified; the certificate, its message.eml and evidence.json."""
    qid = submit(gw, raw, [*RECIPIENTS, CERT_ADDRESS])
    pdf = certificate_pdf(generated_for(sink, qid, "certificate"), tmp / "certificate.pdf")
    subprocess.run(["pdfdetach", "-saveall", "-o", str(tmp), str(pdf)], check=True)
    return {
        "qid": qid,
        "pdf": pdf,
        "eml": (tmp / "message.eml").read_bytes(),
        "evidence": json.loads((tmp / "evidence.json").read_text()),
    }


@pytest.fixture(scope="module")
def run(tracked: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gw, sink = tracked
    return certified(gw, sink, tracked_message(), tmp_path_factory.mktemp("tracked"))


def test_each_tracked_copy_is_rebuilt_from_the_certificate(
    run: dict[str, Any], tracked: Any
) -> None:
    _, sink = tracked
    assert run["eml"] == tracked_message()
    by_address = {r["address"]: r for r in run["evidence"]["recipients"]}
    assert set(by_address) == set(RECIPIENTS)
    received = {}
    for address in RECIPIENTS:
        got = copy_for(sink, address, run["qid"]).data
        recipient = by_address[address]
        assert copies.rebuild(run["eml"], recipient["copy"]) == got
        assert hashlib.sha256(got).hexdigest() == recipient["delivered_sha256"]
        received[address] = got
        changes = recipient["copy"]["changes"]
        added = [c["field"] for c in changes if c["change"] == "header_added"]
        assert added == ["DKIM-Signature", "Received", "Date", "Message-ID"]
        assert {"change": "link_tracked", "link": 1, "url": SIGN_URL} in changes
        assert {"change": "link_tracked", "link": 2, "url": TERMS_URL} in changes
        assert {"change": "open_pixel_added"} in changes
        # The recipe holds what changed, not the copy again.
        inserted = sum(len(e["insert"]) for e in recipient["copy"]["edits"])
        assert inserted < len(got) // 2
    # Each recipient has tokens of their own: two copies, two recipes.
    assert received[RECIPIENTS[0]] != received[RECIPIENTS[1]]


def test_verify_rebuilds_every_delivered_copy(run: dict[str, Any], tracked: Any) -> None:
    gw, _ = tracked
    result = gw.cli("verify", str(run["pdf"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   delivered-copies: 2 delivered copies rebuilt from message.eml" in result.stdout


def test_a_changed_recipe_fails_the_check_naming_the_recipient(run: dict[str, Any]) -> None:
    evidence = run["evidence"]
    assert copies_check(evidence, run["eml"]).ok
    for change in ("insert", "offset", "prefix"):
        tampered = copying.deepcopy(evidence)
        recipe = tampered["recipients"][1]["copy"]
        if change == "insert":
            edit = recipe["edits"][0]
            edit["insert"] = base64_flip(edit["insert"])
        elif change == "offset":
            recipe["edits"][-1]["offset"] += 1
        else:
            recipe["prefix"] = recipe["prefix"].replace("Received", "Rec3ived", 1)
        check = copies_check(tampered, run["eml"])
        assert not check.ok, change
        assert f"<{RECIPIENTS[1]}>" in check.detail and RECIPIENTS[0] not in check.detail
    broken = copying.deepcopy(evidence)
    broken["recipients"][0]["copy"]["edits"][0]["offset"] = len(run["eml"]) + 5
    check = copies_check(broken, run["eml"])
    assert not check.ok and "cannot be rebuilt" in check.detail and RECIPIENTS[0] in check.detail
    # A record made before copies were recorded: nothing to rebuild, said so.
    old = copying.deepcopy(evidence)
    for recipient in old["recipients"]:
        del recipient["copy"]
    check = copies_check(old, run["eml"])
    assert check.ok and check.detail.startswith("Not recorded")


def base64_flip(text: str) -> str:
    data = bytearray(base64.b64decode(text))
    data[0] ^= 0x01
    return base64.b64encode(bytes(data)).decode()


def test_a_copy_without_links_is_rebuilt_from_the_fields_put_in_front(
    tracked: Any, tmp_path: Path
) -> None:
    gw, sink = tracked
    raw = (
        "From: Alice <alice@example.com>\r\n"
        f"To: {', '.join(RECIPIENTS)}\r\nCc: {CERT_ADDRESS}\r\nSubject: No links\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <no-links@example.com>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "Hi Bob,\r\nthe contract is attached.\r\n"
    ).encode()
    result = certified(gw, sink, raw, tmp_path)
    for recipient in result["evidence"]["recipients"]:
        recipe = recipient["copy"]
        got = copy_for(sink, recipient["address"], result["qid"]).data
        assert recipe["edits"] == []
        assert got == recipe["prefix"].encode("ascii") + raw
        assert copies.rebuild(result["eml"], recipe) == got
        assert hashlib.sha256(got).hexdigest() == recipient["delivered_sha256"]
        assert [c["field"] for c in recipe["changes"]] == ["DKIM-Signature", "Received"]
    assert copies_check(result["evidence"], result["eml"]).ok
