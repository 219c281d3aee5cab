"""Renewal of archived certificates (README, "Renewal"), on the real gateway.

``certifica evidence renew`` runs beside the running gateway. A certificate renewed twice
keeps every earlier byte and still validates, checked by validators not ours: pyHanko's
AdES validator (``pyhanko sign adesverify``, and its API with the validation time moved
past the signing certificate's expiry), poppler's pdfsig (the signature and three
document timestamps). ``certifica verify`` and ``certifica evidence verify`` pass. The
selection follows ``--before``: the development TSA's certificate lasts ten years, so
``--before 30`` leaves the file alone and ``--before 4000`` makes it due (no clock is
faked). Whoever drops the copy they were mailed on the verification page is told it is
an earlier copy of a genuine document and gets the renewed one in exchange for it; the
code alone never gives it. With
``[evidence] lta_delay`` > 0 the certificate is mailed PAdES B-LT and the gateway's own
task adds the document timestamp.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyhanko.pdf_utils.reader import PdfFileReader

from certifier.pki import ensure_dev_pki
from certifier.pool import SigningSettings
from certifier.verify import embedded_evidence, verify_certificate
from relay.certify.renewal import RenewalReport
from relay.queue.store import Store
from relay.queue.verifications import versions_of
from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Sink,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_lta import adesverify, ca, future_validation, signing_cert


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def issue(gateway: Gateway, mx: Sink, dest: Path, subject: str) -> tuple[str, bytes]:
    """A certificate made by the gateway: its id and the PDF as the sender was mailed it."""
    qid = submit(gateway, make_message(subject), ["bob@example.org", CERT_ADDRESS])
    pdf = certificate_pdf(generated_for(mx, qid, "certificate"), dest).read_bytes()
    evidence = embedded_evidence(pdf)
    assert evidence is not None
    return str(evidence["certificate_id"]), pdf


def archived(gateway: Gateway, cert_id: str) -> Path:
    return gateway.state / "certificates" / f"{cert_id}.pdf"


def document_timestamps(pdf: bytes) -> int:
    return len(PdfFileReader(io.BytesIO(pdf)).embedded_timestamp_signatures)


def versions(gateway: Gateway, cert_id: str) -> list[dict]:
    with Store(gateway.state / "queue.db", 30.0) as store:
        return store.run_sync(lambda db: versions_of(db.conn, cert_id))


@pytest.fixture(scope="module")
def issued(
    gateway: Gateway, mx: Sink, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, bytes]:
    return issue(gateway, mx, tmp_path_factory.mktemp("renew") / "issued.pdf", "Renew me")


@pytest.fixture(scope="module")
def renewed(gateway: Gateway, issued: tuple[str, bytes]) -> tuple[str, bytes, list[str]]:
    """The issued certificate renewed twice by ``certifica evidence renew``."""
    cert_id, _ = issued
    outputs = []
    for _ in range(2):
        result = gateway.cli("evidence", "renew", "--before", "4000")
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    return cert_id, archived(gateway, cert_id).read_bytes(), outputs


def test_a_file_whose_authority_expires_later_is_untouched(
    gateway: Gateway, issued: tuple[str, bytes]
) -> None:
    cert_id, _ = issued
    before = archived(gateway, cert_id).read_bytes()
    result = gateway.cli("evidence", "renew", "--before", "30")
    assert result.returncode == 0, result.stdout + result.stderr
    assert cert_id not in result.stdout
    assert re.search(r"^0 renewed, \d+ not due, 0 failed", result.stdout, re.M), result.stdout
    assert archived(gateway, cert_id).read_bytes() == before
    # A dry run names it as due when its authority expires within DAYS, and changes nothing.
    result = gateway.cli("evidence", "renew", "--before", "4000", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{cert_id}: due (timestamp authority expires " in result.stdout
    assert archived(gateway, cert_id).read_bytes() == before


def test_renewal_appends_a_document_timestamp_each_time(
    gateway: Gateway,
    issued: tuple[str, bytes],
    renewed: tuple[str, bytes, list[str]],
) -> None:
    cert_id, mailed = issued
    _, pdf, outputs = renewed
    for out in outputs:
        assert f"{cert_id}: renewed (timestamp authority expires " in out
        assert re.search(r"^[1-9]\d* renewed, \d+ not due, 0 failed", out, re.M), out
    assert pdf.startswith(mailed)  # an incremental update: every earlier byte stays
    assert document_timestamps(mailed) == 1
    assert document_timestamps(pdf) == 3
    rows = versions(gateway, cert_id)
    assert [r["kind"] for r in rows] == ["issued", "renewed", "renewed"]
    assert rows[0]["pdf_sha256"] == sha256(mailed)
    assert rows[-1]["pdf_sha256"] == sha256(pdf)


def test_pyhanko_finds_the_renewed_certificate_trusted(
    gateway: Gateway, renewed: tuple[str, bytes, list[str]], tmp_path: Path
) -> None:
    _, pdf, _ = renewed
    path = tmp_path / "renewed.pdf"
    path.write_bytes(pdf)
    result = adesverify(path, ca(gateway))
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.strip().splitlines()[-1]
    assert ":INTACT:TRUSTED," in line, line
    assert "TIMESTAMP_TOKEN<INTACT:TRUSTED>" in line
    assert "EXTENDED_WITH_LTA_UPDATES" in line
    later = signing_cert(pdf).not_valid_after_utc + dt.timedelta(days=30)
    ok, summary = future_validation(pdf, ca(gateway), later)
    assert ok, summary
    assert summary.startswith("INTACT:TRUSTED,"), summary


def test_pdfsig_lists_the_signature_and_every_document_timestamp(
    renewed: tuple[str, bytes, list[str]], tmp_path: Path
) -> None:
    _, pdf, _ = renewed
    path = tmp_path / "renewed.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(  # noqa: S603
        ["pdfsig", str(path)],  # noqa: S607
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    parts = re.split(r"^Signature #\d+:$", out, flags=re.M)[1:]
    assert len(parts) == 4, out
    assert "document signing" in parts[0]
    assert "Signature Validation: Signature is Valid." in parts[0]
    assert all("timestamp authority" in p for p in parts[1:]), out
    assert "Total document signed" in parts[-1]


def test_certifica_verify_and_evidence_verify_pass_after_renewal(
    gateway: Gateway, renewed: tuple[str, bytes, list[str]], tmp_path: Path
) -> None:
    _, pdf, _ = renewed
    report = verify_certificate(pdf, [ca(gateway)])
    assert report.ok, [c for c in report.checks if not c.ok]
    details = {c.name: c.detail for c in report.checks}
    assert "then 3 document timestamp(s)" in details["signature-count"]
    path = tmp_path / "renewed.pdf"
    path.write_bytes(pdf)
    result = gateway.cli("verify", str(path), "--trust", str(ca(gateway)))
    assert result.returncode == 0, result.stdout + result.stderr
    result = gateway.cli("evidence", "verify")
    assert result.returncode == 0, result.stdout + result.stderr


def page_code(pdf: bytes) -> str:
    evidence = embedded_evidence(pdf)
    assert evidence is not None
    return str(evidence["verification"]["url"]).rsplit("/", 1)[1]


def http(gateway: Gateway, path: str, body: bytes | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(  # noqa: S310 - the test's own loopback listener
        f"http://{gateway.listen['http']}{path}",
        data=body,
        headers={"Content-Type": "application/pdf"} if body is not None else {},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:  # noqa: S310
            return reply.status, reply.read(), dict(reply.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def test_the_page_offers_the_renewed_copy_for_an_earlier_one(
    gateway: Gateway,
    issued: tuple[str, bytes],
    renewed: tuple[str, bytes, list[str]],
) -> None:
    _, mailed = issued
    _, pdf, _ = renewed
    code = page_code(mailed)
    status, page, _ = http(gateway, f"/v/{code}?lang=en")
    assert status == 200
    text = page.decode()
    assert f'data-current="{sha256(pdf)}"' in text
    assert sha256(mailed) in re.search(r'data-earlier="([0-9a-f ]*)"', text).group(1)  # type: ignore[union-attr]
    assert "renewed the timestamp of this document" in text
    # The copy the sender was mailed: genuine, earlier, with the way to the renewed one.
    status, body, _ = http(gateway, f"/v/{code}/check?lang=en", mailed)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["verdict"] == "valid", answer
    assert answer["same_file"] is False and answer["earlier_copy"] is True
    assert "earlier copy" in answer["message"]
    # In exchange for it (and only for it), the renewed copy.
    status, download, headers = http(gateway, f"/v/{code}/renewed?lang=en", mailed)
    assert status == 200
    assert headers["Content-Type"] == "application/pdf"
    assert download == pdf
    # The renewed copy is the document as it is now.
    status, body, _ = http(gateway, f"/v/{code}/check?lang=en", pdf)
    answer = json.loads(body)
    assert answer["verdict"] == "valid" and answer["same_file"] is True, answer
    assert answer["earlier_copy"] is False
    # Without the code, nothing is handed out.
    status, _, _ = http(gateway, "/v/" + "x" * 32 + "/renewed", mailed)
    assert status == 404


def test_the_code_alone_never_gives_the_document(
    gateway: Gateway,
    issued: tuple[str, bytes],
    renewed: tuple[str, bytes, list[str]],
) -> None:
    """The code is printed on page 1 and in its QR code: whoever sees a photo of that
    page has it. No request without an earlier copy of the document returns the PDF
    (it carries the message, its attachments, every recipient and the evidence): not
    a GET of any path, not the current copy, not the issued hash the page prints."""
    _, mailed = issued
    _, pdf, _ = renewed
    code = page_code(mailed)
    for path in (
        "pdf",
        "renewed",
        "download",
        "renewed?lang=en",
        f"renewed?sha256={sha256(mailed)}",
    ):
        status, body, headers = http(gateway, f"/v/{code}/{path}")
        assert status == 404, path
        assert b"%PDF" not in body and "pdf" not in headers.get("Content-Type", ""), path
    for sent in (
        b"",
        pdf,  # the current copy: its holder needs nothing
        sha256(mailed).encode(),
        sha256(pdf).encode(),
        mailed[:-1],
        b"%PDF-1.7\n",
    ):
        for path in ("renewed", f"renewed?sha256={sha256(mailed)}", "pdf"):
            status, body, headers = http(gateway, f"/v/{code}/{path}", sent)
            assert status in (400, 403, 404), (path, status)
            assert b"%PDF" not in body and "pdf" not in headers.get("Content-Type", ""), path


def test_renew_has_a_clear_refusal_for_a_wrong_before(gateway: Gateway) -> None:
    result = gateway.cli("evidence", "renew", "--before", "-1")
    assert result.returncode != 0
    assert "--before" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def delayed_gateway(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    """A gateway that issues PAdES B-LT and adds the document timestamp within 2 s."""
    tmp = tmp_path_factory.mktemp("lta-delay")
    cfg = write_config(
        tmp,
        {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port},
        "[evidence]\nlta_delay = 2.0\n",
    )
    gw = start_gateway(cfg)
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def test_with_lta_delay_the_gateway_adds_the_document_timestamp(
    delayed_gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    gw = delayed_gateway
    cert_id, mailed = issue(gw, mx, tmp_path / "mailed.pdf", "Later LTA")
    reader = PdfFileReader(io.BytesIO(mailed))
    assert "/DSS" in reader.root  # B-LT as mailed: the validation data, no timestamp yet
    assert document_timestamps(mailed) == 0
    deadline = time.monotonic() + 60
    while document_timestamps(archived(gw, cert_id).read_bytes()) == 0:
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.2)
    pdf = archived(gw, cert_id).read_bytes()
    assert pdf.startswith(mailed)
    assert document_timestamps(pdf) == 1
    path = tmp_path / "archived.pdf"
    path.write_bytes(pdf)
    result = adesverify(path, ca(gw))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "EXTENDED_WITH_LTA_UPDATES" in result.stdout
    assert verify_certificate(pdf, [ca(gw)]).ok
    assert [r["kind"] for r in versions(gw, cert_id)] == ["issued", "renewed"]
    assert "maintenance: lta: 1 renewed" in gw.log()


def test_the_daily_task_renews_only_what_a_new_timestamp_would_extend(tmp_path: Path) -> None:
    """The gateway's own pass (relay.certify.renewal.renew_archive), on the signing thread
    of a certificate worker: a B-LTA file whose newest timestamp is by the authority in
    use now is left alone (one more timestamp from it would not last longer), a B-LT file
    gets its first document timestamp, and both versions are recorded."""
    import asyncio

    from certifier import pool
    from relay.certify.renewal import renew_archive
    from relay.process.worker import InProcessCertifier
    from tests.verification_site import EML, evidence

    pki = ensure_dev_pki(tmp_path / "keys", "certifica.localhost")
    settings = SigningSettings.from_pki(pki)
    pool.init_process(settings)
    archive = tmp_path / "certificates"
    archive.mkdir()
    lta = pool.render_and_sign(evidence(), EML)
    signed = pool.render_and_sign(evidence(), EML, pool.build_signer(settings))  # B-T
    lt = pool.archiver().archive(signed, document_timestamp=False)
    assert document_timestamps(lta) == 1 and document_timestamps(lt) == 0
    (archive / "CF-LTA.pdf").write_bytes(lta)
    (archive / "CF-LT.pdf").write_bytes(lt)
    certifier = InProcessCertifier()

    async def run() -> RenewalReport:
        with Store(tmp_path / "queue.db", 30.0) as store:
            report = await renew_archive(archive, certifier, store, before=dt.timedelta(days=4000))
            rows = await store.certificate_versions("CF-LT")
        assert [r["kind"] for r in rows] == ["issued", "renewed"]
        return report

    try:
        report = asyncio.run(run())
    finally:
        certifier.close()
    assert report.looked_at == 2 and report.skipped_same_authority == 1
    assert [line.split(":")[0] for line in report.renewed] == ["CF-LT"]
    assert (archive / "CF-LTA.pdf").read_bytes() == lta
    renewed = (archive / "CF-LT.pdf").read_bytes()
    assert renewed.startswith(lt) and document_timestamps(renewed) == 1
    assert verify_certificate(renewed, [pki.ca_cert]).ok
    assert "timestamp authority's own certificate expires too soon" in report.summary()


@pytest.fixture(scope="module")
def renewable(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any]:
    """A signed certificate (B-LTA, as issued) and an archiver of the same development PKI."""
    from certifier.pool import build_archiver, build_signer
    from tests.verification_site import signed_certificate

    keys = tmp_path_factory.mktemp("keys")
    pdf, _ = signed_certificate(keys)
    settings = SigningSettings.from_pki(ensure_dev_pki(keys, "certifica.localhost"))
    archiver = build_archiver(settings, build_signer(settings))
    assert archiver is not None
    return pdf, archiver


@pytest.mark.parametrize("meanwhile", ["removed", "changed"])
def test_a_renewal_not_published_leaves_no_recorded_version(
    tmp_path: Path, renewable: tuple[bytes, Any], meanwhile: str
) -> None:
    """The file goes (retention, an erasure) or changes between the renewal's recording
    of the new version and its replacing the file: the file stays as it became, and the
    version that was never published is not recorded, so the verification page does
    not take it for the current document."""
    from relay.certify.renewal import renew_archive_sync
    from relay.queue.verifications import VersionKind

    pdf, archiver = renewable
    archive = tmp_path / "certificates"
    archive.mkdir()
    path = archive / "CF-GONE.pdf"
    path.write_bytes(pdf)
    with Store(tmp_path / "queue.db", 30.0) as store:

        def record(sha: str, cert_id: str, made: float, kind: VersionKind) -> None:
            store.record_certificate_version_sync(sha, cert_id, made, kind)
            if kind == VersionKind.RENEWED:  # what another process does meanwhile
                if meanwhile == "removed":
                    path.unlink()
                else:
                    path.write_bytes(pdf + b"\n% changed\n")

        report = renew_archive_sync(
            archive,
            archiver,
            record,
            store.forget_certificate_renewal_sync,
            before=dt.timedelta(days=4000),
        )
        rows = store.run_sync(lambda db: versions_of(db.conn, "CF-GONE"))
    assert report.renewed == [] and report.failed == []
    assert [(r["kind"], r["pdf_sha256"]) for r in rows] == [("issued", sha256(pdf))]
    if meanwhile == "removed":
        assert not path.exists()
    else:
        assert path.read_bytes() == pdf + b"\n% changed\n"
