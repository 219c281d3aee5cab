"""Open and click tracking through the running gateway: the recipient's copy, the HTTP
endpoint, and the signed addendum that reaches the sender."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit

BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
SIGN_URL = "https://contract.example/sign?id=42&lang=en"
TERMS_URL = "http://terms.example/v2"


def html_message(to: str) -> bytes:
    return (
        "From: Alice <alice@example.com>\r\n"
        f"To: {to}\r\nCc: {CERT_ADDRESS}\r\nSubject: Please sign\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <track-1@example.com>\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary="b1"\r\n\r\n'
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Sign here: {SIGN_URL}\r\nTerms: {TERMS_URL}\r\n"
        "--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        f'<html><body><p>Please <a href="{SIGN_URL.replace("&", "&amp;")}">sign here</a>'
        f' and read <a href="{TERMS_URL}">the terms</a>.</p></body></html>\r\n'
        "--b1--\r\n"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def fetch(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, method=method, headers={"User-Agent": BROWSER_UA})
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


@pytest.fixture(scope="module")
def tracked(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Sink, int]]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("track")
    port = free_port()
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += (
        f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n[tracking]\nenabled = true\n'
        "addendum_interval = 0.0\nfast_seconds = 0.0\n"
    )
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw, sink, port
    gw.stop()
    assert_clean_log(gw.log())


def copy_for(sink: Sink, rcpt: str, qid: str) -> Received:
    return [m for m in sink.to(rcpt) if qid.encode() in m.data[:3000]][0]


def addenda(sink: Sink, qid: str) -> list[Received]:
    return [
        m
        for m in sink.messages
        if m.message["X-Certifica-Queue-Id"] == qid
        and (m.message["Subject"] or "").startswith("Addendum")
    ]


def test_recipient_copy_is_rewritten_and_clicks_redirect_exactly(
    tracked: tuple[Gateway, Sink, int], tmp_path: Path
) -> None:
    gw, sink, port = tracked
    raw = html_message("reader@example.org")
    qid = submit(gw, raw, ["reader@example.org", CERT_ADDRESS])
    cert = generated_for(sink, qid, "certificate")
    got = copy_for(sink, "reader@example.org", qid)
    html = got.message.get_body(("html",)).get_content()
    plain = got.message.get_body(("plain",)).get_content()
    clicks = re.findall(rf'href="(http://127\.0\.0\.1:{port}/c/[A-Za-z0-9_-]+)"', html)
    pixels = re.findall(rf'src="(http://127\.0\.0\.1:{port}/o/[A-Za-z0-9_-]+)"', html)
    assert len(clicks) == 2 and len(pixels) == 1
    assert SIGN_URL not in html and SIGN_URL not in plain and f"127.0.0.1:{port}/c/" in plain

    subprocess.run(
        [
            "pdfdetach",
            "-saveall",
            "-o",
            str(tmp_path),
            str(certificate_pdf(cert, tmp_path / "c.pdf")),
        ],
        check=True,
    )
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert evidence["tracking"]["enabled"] is True
    assert evidence["message"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert evidence["recipients"][0]["delivered_sha256"] == hashlib.sha256(got.data).hexdigest()
    assert (tmp_path / "message.eml").read_bytes() == raw  # the sender's bytes, untracked

    status, headers, _ = fetch(clicks[0])
    assert status == 302 and headers["Location"] == SIGN_URL
    status, headers, _ = fetch(clicks[1], method="HEAD")
    assert status == 302 and headers["Location"] == TERMS_URL
    status, headers, body = fetch(pixels[0])
    assert status == 200 and headers["Content-Type"] == "image/gif" and body.startswith(b"GIF")

    # a token that was not made by the gateway, or for a link that does not exist
    status_missing, _, body_missing = fetch(f"http://127.0.0.1:{port}/nothing")
    forged = clicks[0][:-3] + ("AAA" if not clicks[0].endswith("AAA") else "BBB")
    assert fetch(forged)[0] == status_missing == 404
    assert fetch(forged)[2] == body_missing

    # With addendum_interval = 0 each addendum lists what is new since the last one:
    # together they hold every event, each once.
    def reported(ms: list[Received]) -> list[tuple[str, str | None]]:
        seen = []
        for n, mail in enumerate(addenda(sink, qid)):
            out = tmp_path / f"add{n}"
            out.mkdir(exist_ok=True)
            pdf = certificate_pdf(mail, out / "addendum.pdf")
            subprocess.run(["pdfdetach", "-saveall", "-o", str(out), str(pdf)], check=True)
            add_ev = json.loads((out / "evidence.json").read_text())
            assert add_ev["kind"] == "addendum"
            assert add_ev["addendum_of"] == evidence["certificate_id"]
            assert all(
                e["recipient"] == "reader@example.org" and e["reason"]
                for e in add_ev["tracking"]["events"]
            )
            seen += [(e["kind"], e["url"]) for e in add_ev["tracking"]["events"]]
        return seen

    expected = sorted([("click", SIGN_URL), ("click", TERMS_URL), ("open", None)], key=str)
    sink.wait_for(lambda ms: sorted(reported(ms), key=str) == expected, timeout=60)
    pdf = tmp_path / "add0" / "addendum.pdf"
    assert (
        "Signature is Valid"
        in subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout
    )
    assert gw.cli("verify", str(pdf)).returncode == 0
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout
    assert "Opens and clicks" in text and evidence["certificate_id"] in text


def test_headless_chromium_opening_the_mail_records_an_open(
    tracked: tuple[Gateway, Sink, int], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed (.ci/run installs it)")
    gw, sink, port = tracked
    qid = submit(gw, html_message("viewer@example.org"), ["viewer@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    html = copy_for(sink, "viewer@example.org", qid).message.get_body(("html",)).get_content()
    page = tmp_path / "mail.html"
    page.write_text(html)
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    sink.wait_for(lambda ms: bool(addenda(sink, qid)), timeout=60)
    pdf = certificate_pdf(addenda(sink, qid)[-1], tmp_path / "a.pdf")
    assert (
        "Signature is Valid"
        in subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True).stdout
    )
    assert f"{qid}: open by <viewer@example.org>" in gw.log()
    line = [x for x in gw.log().splitlines() if f"{qid}: open by <viewer@example.org>" in x][0]
    assert "HeadlessChrome" in line or "automatic" in line  # a headless browser is not a person


def test_addendum_on_demand(tracked: tuple[Gateway, Sink, int], tmp_path: Path) -> None:
    gw, sink, _ = tracked
    qid = submit(gw, html_message("ondemand@example.org"), ["ondemand@example.org", CERT_ADDRESS])
    cert = generated_for(sink, qid, "certificate")
    cert_id = re.search(r"CF-[0-9A-F]{16}", cert.message["Subject"]).group(0)  # type: ignore[union-attr]
    out = tmp_path / "addendum.pdf"
    with open(out, "wb") as f:
        result = subprocess.run(
            [CERTIFICA, "-c", str(gw.config), "addendum", cert_id],
            stdout=f,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    assert gw.cli("verify", str(out)).returncode == 0
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True).stdout
    assert cert_id in text and "Addendum" in text
    missing = gw.cli("addendum", "CF-0000000000000000")
    assert missing.returncode == 2 and "no certificate" in missing.stderr


def test_user_opt_out_gets_untracked_copies(tracked: tuple[Gateway, Sink, int]) -> None:
    gw, sink, port = tracked
    assert gw.cli("users", "tracking", "alice@example.com", "off").returncode == 0
    try:
        raw = html_message("optout@example.org")
        qid = submit(gw, raw, ["optout@example.org", CERT_ADDRESS])
        generated_for(sink, qid, "certificate")
        got = copy_for(sink, "optout@example.org", qid)
        assert got.data.endswith(raw) and f"127.0.0.1:{port}" not in got.data.decode()
    finally:
        assert gw.cli("users", "tracking", "alice@example.com", "on").returncode == 0
