"""Hosted content (docs/hosted.md) on a real gateway, with a real browser: the notification
instead of the content, the landing page a GET never hands over, the handover on the
POST with its evidence, downloads, the one-time code, the expiry, identical 404s, the
page's security headers.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright import sync_api

from tests.conftest import (
    CERT_ADDRESS,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    free_port,
    start_gateway,
    write_config,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"
LINK = re.compile(rb"http://127\.0\.0\.1:\d+/h/[A-Za-z0-9_-]{43}")


@pytest.fixture(scope="module")
def hosted(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Sink, int]]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("hosted")
    port = free_port()
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\nrate_limit = 600\n'
    text += "[hosted]\nexpiry_days = 7\n"
    cfg.write_text(text)
    gw = start_gateway(cfg)
    yield gw, sink, port
    gw.stop()
    assert_clean_log(gw.log())


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    """A tab that fails the test on a console error (something the policy refused)."""
    context = browser.new_context(locale="en-GB", viewport={"width": 900, "height": 1200})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    yield tab
    context.close()
    # The remote image of a test message is blocked on purpose (and asserted there).
    assert not [e for e in errors if "tracker.example" not in e], errors


def message(
    subject: str,
    to: str,
    cc: str = CERT_ADDRESS,
    extra: str = "",
    html: str | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> bytes:
    head = (
        f"From: Alice <alice@example.com>\r\nTo: {to}\r\nCc: {cc}\r\nSubject: {subject}\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <{time.monotonic_ns()}@example.com>\r\n"
        f"{extra}MIME-Version: 1.0\r\n"
    )
    text = "Dear Bob,\r\nthe contract of the sale of the boat.\r\n"
    if html is None and attachment is None:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    parts = [f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"]
    if html is not None:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    if attachment is not None:
        import base64

        name, data = attachment
        parts.append(
            f'Content-Type: application/pdf\r\nContent-Disposition: attachment; filename="{name}"'
            "\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(data).decode().replace("\n", "\r\n")
        )
    body = "".join(f"--BOUNDARY\r\n{p}\r\n" for p in parts) + "--BOUNDARY--\r\n"
    return (head + 'Content-Type: multipart/mixed; boundary="BOUNDARY"\r\n\r\n' + body).encode()


def send(gw: Gateway, raw: bytes, rcpts: list[str]) -> str:
    with gw.smtp() as client:
        client.mail("alice@example.com")
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            assert code == 250, text
        code, reply = client.data(raw)
        assert code == 250, reply
    return reply.decode().split("queued as ")[1].split()[0].rstrip(")")


def notification(sink: Sink, rcpt: str, subject: str) -> Received:
    found = sink.wait_for(
        lambda ms: any(rcpt in m.rcpt_tos and subject.encode() in _subject(m) for m in ms)
    )
    return next(m for m in found if rcpt in m.rcpt_tos and subject.encode() in _subject(m))


def _subject(m: Received) -> bytes:
    return str(m.message["Subject"] or "").encode()


def link_of(mail: Received) -> str:
    text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    found = LINK.search(text.encode())
    assert found, text
    return found.group().decode()


def db(gw: Gateway) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def evidence(gw: Gateway, qid: str, event: str) -> list[dict[str, Any]]:
    with db(gw) as conn:
        rows = conn.execute(
            "SELECT recipient, detail, time FROM evidence WHERE qid = ? AND event = ? ORDER BY seq",
            (qid, event),
        ).fetchall()
    return [{"recipient": r[0], "time": r[2], **json.loads(r[1])} for r in rows]


def wait_evidence(gw: Gateway, qid: str, event: str, count: int = 1) -> list[dict[str, Any]]:
    """The entries once there are ``count`` (an attempt is recorded after the 250)."""
    deadline = time.monotonic() + 30
    while len(found := evidence(gw, qid, event)) < count:
        assert time.monotonic() < deadline, f"no {event} for {qid}"
        time.sleep(0.05)
    return found


def certificate_of(gw: Gateway, sink: Sink, subject: str, tmp: Path) -> tuple[Path, str]:
    """The PDF of the message's certificate mailed to the sender, and its page 1 as text."""
    found = sink.wait_for(
        lambda ms: any(
            f"“{subject}”" in str(m.message["Subject"])
            and "alice@example.com" in m.rcpt_tos
            and str(m.message["Subject"]).startswith("Certificate of d")
            for m in ms
        )  # fmt: skip
    )
    mail = next(
        m for m in found
        if f"“{subject}”" in str(m.message["Subject"])
        and str(m.message["Subject"]).startswith("Certificate of d")
    )  # fmt: skip
    pdfs = [a for a in mail.message.iter_attachments() if a.get_content_type() == "application/pdf"]
    path = tmp / "certificate.pdf"
    path.write_bytes(pdfs[0].get_payload(decode=True))
    signed = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    assert "Signature is Valid" in signed.stdout, signed.stdout + signed.stderr
    verified = gw.cli("verify", str(path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    first = subprocess.run(["pdftotext", "-l", "1", str(path), "-"], capture_output=True, text=True)
    return path, " ".join(first.stdout.split())


def etsi_schema() -> Any:
    """The published ETSI EN 319 522-3 schema, as tests/test_etsi_evidence.py loads it."""
    import saml2
    import xmlschema

    from tests.test_etsi_evidence import XSD, XSD_PLACES

    if XSD is None:  # as tests/test_etsi_evidence.py: the published schema is not ours to ship
        pytest.skip(f"the ETSI EN 319 522-3 schema is in none of {XSD_PLACES}")
    bundled = Path(xmlschema.__file__).parent / "schemas"
    saml = Path(saml2.__file__).parent / "data" / "schemas" / "saml-schema-assertion-2.0.xsd"
    return xmlschema.XMLSchema(
        str(XSD),
        locations=[
            ("http://www.w3.org/XML/1998/namespace", str(bundled / "XML" / "xml_minimal.xsd")),
            (
                "http://www.w3.org/2000/09/xmldsig#",
                str(bundled / "DSIG" / "xmldsig-core-schema.xsd"),
            ),
            ("urn:oasis:names:tc:SAML:2.0:assertion", str(saml)),
        ],
    )


def etsi_documents(gw: Gateway, pdf: Path, out: Path) -> dict[str, bytes]:
    """The ETSI evidence of a certificate (certifica evidence export), each valid."""
    from certifier.verify import embedded_evidence

    evidence = embedded_evidence(pdf.read_bytes())
    assert evidence is not None
    done = gw.cli("evidence", "export", evidence["certificate_id"], str(out))
    assert done.returncode == 0, done.stderr
    schema = etsi_schema()
    files = {p.name: p.read_bytes() for p in sorted((out / "evidence").iterdir())}
    for xml in files.values():
        schema.validate(xml.decode())
    return files


def fetch(url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=data, headers={"Accept-Language": "en"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_a_hosted_cc_sends_a_notification_not_the_content(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    gw, sink, _ = hosted
    qid = send(gw, message("Boat sale", "bob@example.org"), ["bob@example.org",
               "certifica+hosted@certifica.localhost"])  # fmt: skip
    mail = notification(sink, "bob@example.org", "Boat sale")
    assert b"the contract of the sale of the boat" not in mail.data
    assert mail.message["Reply-To"] == "alice@example.com"
    assert "Alice" in str(mail.message["From"])
    link = link_of(mail)
    text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Boat sale" in text and "alice@example.com" in text
    # the evidence of relay is about the notification's bytes
    relayed = wait_evidence(gw, qid, "RelayToNonERDS")
    assert relayed and relayed[0]["recipient"] == "bob@example.org"
    # the database keeps only the token's hash
    token = link.rsplit("/", 1)[1]
    with db(gw) as conn:
        row = conn.execute("SELECT * FROM hosted_links").fetchall()
    assert row and all(token not in json.dumps(dict(r)) for r in row)
    # the sender's processing notice says when the certificate comes
    notice = notification(sink, "alice@example.com", "Being certified: “Boat sale”")
    text = notice.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "once each of them has opened it, or when the link expires" in " ".join(text.split())


def test_get_alone_never_hands_over_and_the_post_does(
    hosted: tuple[Gateway, Sink, int], page: Any, tmp_path: Path
) -> None:
    gw, sink, _ = hosted
    raw = message("Open me", "carol@example.org", cc="certifica+hosted@certifica.localhost",
                  html='<p>Hello <b>Carol</b><img src="https://tracker.example/p.gif"></p>')  # fmt: skip
    qid = send(gw, raw, ["carol@example.org", "certifica+hosted@certifica.localhost"])
    link = link_of(notification(sink, "carol@example.org", "Open me"))
    for _ in range(3):  # a scanner, a preview, the person: GET only
        status, headers, body = fetch(link)
        assert status == 200 and b"Open the message" in body
        assert b"Hello" not in body
    assert evidence(gw, qid, "ContentHandover") == []
    assert "script-src" not in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Content-Type-Options"] == "nosniff"

    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "tracker.example" in m.text else None)
    page.goto(link)
    page.click("#open")
    frame = page.frame_locator("iframe.body")
    assert "Carol" in frame.locator("body").inner_text()
    sandbox = page.locator("iframe.body").get_attribute("sandbox")
    assert sandbox is not None and "allow-scripts" not in sandbox
    assert blocked and "Content Security Policy" in blocked[0]  # remote images wait
    handed = evidence(gw, qid, "ContentHandover")
    assert len(handed) == 1
    assert handed[0]["recipient"] == "carol@example.org"
    assert handed[0]["what"] == "page" and "HeadlessChrome" in handed[0]["user_agent"]
    assert handed[0]["ip"] == "127.0.0.1" and len(handed[0]["page_sha256"]) == 64
    with db(gw) as conn:
        state = conn.execute("SELECT state, handed_over_at FROM hosted_links WHERE qid = ?",
                             (qid,)).fetchone()  # fmt: skip
    assert state["state"] == "handed_over" and state["handed_over_at"]
    # the message's certificate, issued once the content was handed over, says so
    pdf, page1 = certificate_of(gw, sink, "Open me", tmp_path)
    assert "notification with the link" in page1
    # finding 3: the link was used, not "the recipient"; person or machine, no code
    assert "opened on the gateway's page" in page1 and "through the link sent to" in page1
    assert "handed over to the recipient" not in page1
    assert "No code was asked for" in page1 and "Classified as" in page1
    files = etsi_documents(gw, pdf, tmp_path / "etsi")
    handover = [x for n, x in files.items() if n.endswith("-ContentHandover.xml")]
    assert handover and b"http://uri.etsi.org/19522/Event/ContentHandover" in handover[0]


def test_attachments_download_as_certified_events(
    hosted: tuple[Gateway, Sink, int], page: Any
) -> None:
    gw, sink, port = hosted
    pdf = b"%PDF-1.4\n% a contract\n" + os.urandom(2000)
    raw = message("With a file", "dave@example.org", cc="certifica+hosted@certifica.localhost",
                  attachment=("contract.pdf", pdf))  # fmt: skip
    qid = send(gw, raw, ["dave@example.org", "certifica+hosted@certifica.localhost"])
    link = link_of(notification(sink, "dave@example.org", "With a file"))
    page.goto(link)
    page.click("#open")
    assert "contract.pdf" in page.locator(".attachments").inner_text()
    with page.expect_download() as info:
        page.click("#attachment-1")
    download = info.value
    assert Path(download.path()).read_bytes() == pdf
    assert download.suggested_filename == "contract.pdf"
    events = evidence(gw, qid, "ContentHandover")
    assert [e["what"] for e in events] == ["page", "download"]
    import hashlib

    assert events[1]["sha256"] == hashlib.sha256(pdf).hexdigest()
    # the download's own headers
    form = page.locator("input[name=form]").first.get_attribute("value")
    status, headers, body = fetch(f"{link}/a/1", f"form={form}".encode())
    assert status == 200 and body == pdf
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Type"] == "application/octet-stream"
    # without the page's form key: nothing
    status, _, _ = fetch(f"{link}/a/1", b"form=1.abc")
    assert status == 404
    _, _, landing = fetch(link)  # the landing page's key opens, it does not download
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    assert fetch(f"{link}/a/1", f"form={key}".encode())[0] == 404


def test_unknown_links_get_one_identical_404(hosted: tuple[Gateway, Sink, int]) -> None:
    gw, sink, port = hosted
    base = f"http://127.0.0.1:{port}/h/"
    answers = [
        fetch(base + "A" * 43),
        fetch(base + "short"),
        fetch(base + "A" * 43 + "/open", b"form=x"),
        fetch(base + "A" * 43 + "/a/1", b"form=x"),
        fetch(base + "whatever/else"),
    ]
    assert {a[0] for a in answers} == {404}
    assert len({a[2] for a in answers}) == 1
    assert answers[0][1]["Content-Security-Policy"] == answers[1][1]["Content-Security-Policy"]


def test_the_header_field_asks_for_hosted_and_never_reaches_the_recipient(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    gw, sink, _ = hosted
    raw = message("By field", "erin@example.org", cc="erin2@example.org",
                  extra="X-Certifica-Mode: hosted\r\n")  # fmt: skip
    send(gw, raw, ["erin@example.org"])
    mail = notification(sink, "erin@example.org", "By field")
    assert b"X-Certifica-Mode" not in mail.data
    assert b"the contract of the sale" not in mail.data
    link_of(mail)


def test_a_header_field_naming_no_mode_is_refused_not_delivered(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    """A sender who wrote X-Certifica-Mode meant a mode: a value naming none is refused
    with a sentence rather than delivered plainly with the field in it."""
    gw, sink, _ = hosted
    raw = message("Misspelt mode", "gina@example.org", extra="X-Certifica-Mode: hostde\r\n")
    with gw.smtp() as client:
        client.mail("alice@example.com")
        assert client.rcpt("gina@example.org")[0] == 250
        code, reply = client.data(raw)
    assert code == 550 and reply.decode().startswith("5.6.0 X-Certifica-Mode: hostde names no mode")
    assert not [m for m in sink.messages if b"Misspelt mode" in m.data]


def test_a_users_default_mode(hosted: tuple[Gateway, Sink, int]) -> None:
    gw, sink, _ = hosted
    done = gw.cli("users", "set", "alice@example.com", "--mode", "hosted")
    assert done.returncode == 0, done.stderr
    assert "mode hosted" in done.stdout
    try:
        send(gw, message("By default", "frank@example.org"), ["frank@example.org", CERT_ADDRESS])
        link_of(notification(sink, "frank@example.org", "By default"))
    finally:
        assert gw.cli("users", "set", "alice@example.com", "--mode", "plain").returncode == 0
    send(gw, message("Plain again", "frank@example.org"), ["frank@example.org", CERT_ADDRESS])
    mail = notification(sink, "frank@example.org", "Plain again")
    assert b"the contract of the sale of the boat" in mail.data


def test_a_tagged_cc_on_the_mx_port_is_refused(hosted: tuple[Gateway, Sink, int]) -> None:
    gw, _, _ = hosted
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo("mx.example.com")
        client.mail("alice@example.com")
        code, text = client.rcpt("certifica+hosted@certifica.localhost")
    assert code == 550 and text.startswith(b"5.7.1 "), text
    assert b"through the gateway" in text


def test_a_one_time_code_before_anything_is_shown(
    hosted: tuple[Gateway, Sink, int], page: Any
) -> None:
    gw, sink, _ = hosted
    raw = message("Coded", "grace@example.org", cc="certifica+hosted-code@certifica.localhost")
    qid = send(gw, raw, ["grace@example.org", "certifica+hosted-code@certifica.localhost"])
    link = link_of(notification(sink, "grace@example.org", "Coded"))
    page.goto(link)
    assert page.locator("#open").count() == 0
    page.click("#send-code")
    code_mail = notification(sink, "grace@example.org", "Your code")
    code = re.search(r"\b(\d{6})\b", str(code_mail.message["Subject"])).group(1)  # type: ignore[union-attr]
    page.fill("#code", "000000" if code != "000000" else "111111")
    page.click("#open")
    assert page.locator("[role=alert]").count() == 1
    assert evidence(gw, qid, "ContentHandover") == []
    page.fill("#code", code)
    page.click("#open")
    assert "sale of the boat" in page.locator("pre.body").inner_text()
    (handed,) = evidence(gw, qid, "ContentHandover")
    assert handed["code_checked"] is True
    # whoever holds only the link gets nothing, even now: no open without a new code,
    # and the landing page's form key downloads and decides nothing
    _, _, landing = fetch(link)
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    status, _, body = fetch(f"{link}/open", f"form={key}&code={code}".encode())
    assert b"sale of the boat" not in body and b'role="alert"' in body
    assert fetch(f"{link}/a/1", f"form={key}".encode())[0] == 404
    assert len(evidence(gw, qid, "ContentHandover")) == 1


def test_links_not_opened_expire_with_evidence(
    hosted: tuple[Gateway, Sink, int], browser: Any, tmp_path: Path
) -> None:
    gw, sink, _ = hosted
    qid = send(gw, message("Never opened", "heidi@example.org"),
               ["heidi@example.org", "certifica+hosted@certifica.localhost"])  # fmt: skip
    link = link_of(notification(sink, "heidi@example.org", "Never opened"))
    assert fetch(link)[0] == 200
    # In the browser, before the expiry: the landing page and its button, nothing handed
    # over. (A tab of its own: the `page` fixture fails on the 404 this test asks for.)
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    assert page.goto(link).status == 200 and page.locator("#open").count() == 1
    early = gw.cli("hosted", "expire", "--at", "2026-01-01T00:00:00+00:00")
    assert early.returncode == 0 and "expired: 0" in early.stdout
    later = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 8 * 86400))
    done = gw.cli("hosted", "expire", "--at", later)
    assert done.returncode == 0, done.stderr
    expired = evidence(gw, qid, "ContentHandoverFailure")
    assert len(expired) == 1 and expired[0]["recipient"] == "heidi@example.org"
    assert "expiry" in expired[0]["reason"]
    status, _, body = fetch(link)
    assert status == 404 and body == fetch(link[:-5] + "AAAAA")[2]
    # In the browser, after it: the unknown link's page, no button, no content.
    assert page.goto(link).status == 404 and page.locator("#open").count() == 0
    assert "Never opened" not in page.content()
    context.close()
    assert not evidence(gw, qid, "ContentHandover")
    _pdf, page1 = certificate_of(gw, sink, "Never opened", tmp_path)
    assert "was not opened before it expired" in page1 and "not handed over" in page1
    files = etsi_documents(gw, _pdf, tmp_path / "etsi")
    failure = [x for n, x in files.items() if n.endswith("-ContentHandoverFailure.xml")]
    assert failure and b"http://uri.etsi.org/19522/Event/ContentHandoverFailure" in failure[0]
    bad = gw.cli("hosted", "expire", "--at", "yesterday")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("choice", ["accept", "reject"])
def test_a_decision_is_recorded_once_with_what_was_shown(
    hosted: tuple[Gateway, Sink, int], page: Any, choice: str, tmp_path: Path
) -> None:
    gw, sink, _ = hosted
    rcpt = f"ivan-{choice}@example.org"
    pdf = b"%PDF-1.4\n% terms\n" + os.urandom(500)
    raw = message(f"Terms {choice}", rcpt, cc="certifica+accept@certifica.localhost",
                  attachment=("terms.pdf", pdf))  # fmt: skip
    qid = send(gw, raw, [rcpt, "certifica+accept@certifica.localhost"])
    mail = notification(sink, rcpt, f"Terms {choice}")
    assert "accept or reject" in str(mail.message["Subject"])
    link = link_of(mail)
    page.goto(link)
    page.click("#open")
    assert "simple electronic signature" in page.locator("form.decide").inner_text()
    page.fill("#name", "Ivan Petrov")
    page.fill("#comment", "Read and understood.")
    page.click(f"#{choice}")
    verdict = "accepted" if choice == "accept" else "rejected"
    assert verdict in page.locator("#decision").inner_text()
    event = "ContentAccepted" if choice == "accept" else "ContentRejected"
    decided = evidence(gw, qid, event)
    assert len(decided) == 1
    shown = evidence(gw, qid, "ContentHandover")[0]
    assert decided[0]["page_sha256"] == shown["page_sha256"]
    assert decided[0]["name"] == "Ivan Petrov" and decided[0]["comment"] == "Read and understood."
    import hashlib

    assert decided[0]["attachments"] == [
        {"name": "terms.pdf", "sha256": hashlib.sha256(pdf).hexdigest()}
    ]
    # the sender's signed certificate of the decision, at once
    title = "acceptance" if choice == "accept" else "rejection"
    certificate = sink.wait_for(
        lambda ms: any(
            f"Certificate of {title}: “Terms {choice}”" in str(m.message["Subject"]) for m in ms
        )  # fmt: skip
    )
    mail = next(m for m in certificate if f"Certificate of {title}" in str(m.message["Subject"]))
    assert mail.rcpt_tos == ["alice@example.com"]
    pdfs = [a for a in mail.message.iter_attachments() if a.get_content_type() == "application/pdf"]
    path = tmp_path / "decision.pdf"
    path.write_bytes(pdfs[0].get_payload(decode=True))
    signed = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
    assert "Signature is Valid" in signed.stdout, signed.stdout + signed.stderr
    verified = gw.cli("verify", str(path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    first = subprocess.run(["pdftotext", "-l", "1", str(path), "-"], capture_output=True, text=True)
    page1 = " ".join(first.stdout.split())
    assert f"Certificate of {title} of a certified e-mail" in page1
    assert "simple electronic signature" in page1 and "3(10)" in page1
    # finding 3: the decision was made through the link, by whoever held it
    assert f"through the link sent to {rcpt}" in page1 and f"{rcpt} {verdict}" not in page1
    assert "No code was asked for" in page1 and "Classified as" in page1, page1
    body_text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    url = re.search(r"http://127\.0\.0\.1:\d+/v/[A-Za-z0-9_-]+", body_text)
    assert url, body_text
    status, _, body = fetch(url.group())  # the verification page knows it
    assert status == 200 and f"Certificate of {title} of a certified e-mail".encode() in body
    files = etsi_documents(gw, path, tmp_path / "etsi")  # the decision as an extension
    (xml,) = [x for n, x in files.items() if n.endswith(f"-{event}.xml")]
    assert f"urn:certifica:event:{event}".encode() in xml and b"Ivan Petrov" in xml
    assert "Ivan Petrov" in page1
    assert hashlib.sha256(pdf).hexdigest()[:8] in page1.replace(" ", "")
    if os.environ.get("CERTIFICA_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["pdftoppm", "-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile", str(path),
             str(SCREENSHOTS / f"{title}-certificate-page1")],
            check=True,
        )  # fmt: skip
    # final: a second visit shows the decision, a second POST changes nothing
    page.goto(link)
    assert verdict in page.locator(".decision").inner_text()
    page.click("#open")
    assert page.locator("form.decide").count() == 0
    form = page.locator("input[name=form]").first.get_attribute("value")
    other = "rejected" if verdict == "accepted" else "accepted"
    fetch(f"{link}/decide", f"form={form}&decision={other}".encode())
    assert len(evidence(gw, qid, event)) == 1
    assert evidence(gw, qid, "ContentAccepted" if other == "accepted" else "ContentRejected") == []


@pytest.mark.parametrize("language", ["es-ES", "it-IT"])
def test_the_page_speaks_the_readers_language(
    hosted: tuple[Gateway, Sink, int], browser: Any, language: str
) -> None:
    gw, sink, _ = hosted
    rcpt = f"judy-{language.lower()}@example.org"
    raw = message(f"Contrato {language}", rcpt, cc="certifica+accept@certifica.localhost",
                  html="<p>Estimada Judy,</p><p>el contrato de compraventa.</p>",
                  attachment=("contrato.pdf", b"%PDF-1.4\n"))  # fmt: skip
    send(gw, raw, [rcpt, "certifica+accept@certifica.localhost"])
    link = link_of(notification(sink, rcpt, f"Contrato {language}"))
    context = browser.new_context(locale=language, viewport={"width": 900, "height": 1100})
    tab = context.new_page()
    try:
        tab.goto(link)
        words = {
            "es-ES": ("Abrir el mensaje", "Aceptar"),
            "it-IT": ("Apri il messaggio", "Accetto"),
        }
        assert tab.locator("#open").inner_text() == words[language][0]
        if os.environ.get("CERTIFICA_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(SCREENSHOTS / f"hosted-landing-{language[:2]}.png"))
        tab.click("#open")
        assert tab.locator("#accept").inner_text() == words[language][1]
        if os.environ.get("CERTIFICA_SCREENSHOTS") == "1":
            tab.screenshot(
                path=str(SCREENSHOTS / f"hosted-content-{language[:2]}.png"), full_page=True
            )
    finally:
        context.close()


def test_the_notification_speaks_the_senders_language_when_the_recipients_is_unknown(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    gw, sink, _ = hosted
    assert gw.cli("users", "set", "alice@example.com", "--language", "es").returncode == 0
    try:
        send(gw, message("Aviso", "kim@example.org"),
             ["kim@example.org", "certifica+hosted@certifica.localhost"])  # fmt: skip
        mail = notification(sink, "kim@example.org", "Aviso")
    finally:
        assert gw.cli("users", "set", "alice@example.com", "--language", "").returncode == 0
    assert mail.message["Content-Language"] == "es"
    assert "le ha enviado un mensaje certificado" in str(mail.message["Subject"])
    text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "El enlace funciona hasta el" in text


def test_a_decision_certifies_the_page_it_was_made_on_and_embeds_it(
    hosted: tuple[Gateway, Sink, int], tmp_path: Path
) -> None:
    """Review finding 1: two tabs, the decision posted from the first one; the page of
    that tab is certified and embedded, whatever was opened after it."""
    import hashlib

    gw, sink, _ = hosted
    rcpt = "judy@example.org"
    raw = message("Two tabs", rcpt, cc="certifica+accept@certifica.localhost")
    qid = send(gw, raw, [rcpt, "certifica+accept@certifica.localhost"])
    link = link_of(notification(sink, rcpt, "Two tabs"))
    _, _, landing = fetch(link)
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    status, _, tab_a = fetch(f"{link}/open", f"form={key}".encode())
    assert status == 200 and b"sale of the boat" in tab_a
    status, _, tab_b = fetch(f"{link}/open", f"form={key}&images=1".encode())
    assert status == 200 and tab_b != tab_a
    a_sha = hashlib.sha256(tab_a).hexdigest()
    first, second = evidence(gw, qid, "ContentHandover")
    assert first["page_sha256"] == a_sha
    assert second["page_sha256"] == hashlib.sha256(tab_b).hexdigest()
    key_a = re.search(rb'name="form" value="([^"]+)"', tab_a).group(1).decode()  # type: ignore[union-attr]
    status, _, _ = fetch(f"{link}/decide", f"form={key_a}&decision=accepted".encode())
    assert status == 200
    (decided,) = evidence(gw, qid, "ContentAccepted")
    assert decided["page_sha256"] == a_sha
    found = sink.wait_for(
        lambda ms: any(
            "Certificate of acceptance: “Two tabs”" in str(m.message["Subject"]) for m in ms
        )  # fmt: skip
    )
    mail = next(
        m for m in found if "Certificate of acceptance: “Two tabs”" in str(m.message["Subject"])
    )
    (pdf,) = [
        a for a in mail.message.iter_attachments() if a.get_content_type() == "application/pdf"
    ]
    path = tmp_path / "decision.pdf"
    path.write_bytes(pdf.get_payload(decode=True))
    verified = gw.cli("verify", str(path))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    out = tmp_path / "files"
    out.mkdir()
    subprocess.run(["pdfdetach", "-saveall", "-o", str(out), str(path)], check=True)
    assert (out / "shown-page.html").read_bytes() == tab_a  # anyone can recompute the hash
    from certifier.verify import embedded_evidence

    record = embedded_evidence(path.read_bytes())
    assert record is not None and record["decision"]["page_sha256"] == a_sha
    assert record["decision"]["page_file"] == "shown-page.html"


def _codes(sink: Sink, rcpt: str, count: int) -> list[str]:
    """The codes mailed to ``rcpt`` once there are ``count``, in order."""
    found = sink.wait_for(
        lambda ms: sum(rcpt in m.rcpt_tos and b"Your code" in _subject(m) for m in ms) >= count
    )
    mails = [m for m in found if rcpt in m.rcpt_tos and b"Your code" in _subject(m)]
    return [re.search(r"\b(\d{6})\b", str(m.message["Subject"])).group(1) for m in mails]  # type: ignore[union-attr]


def _wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


def test_one_time_codes_are_limited_per_link_not_per_code(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    """Review finding 2: a new code resets neither the wrong guesses nor the codes sent."""
    gw, sink, _ = hosted
    rcpt = "ken@example.org"
    qid = send(gw, message("Guarded", rcpt, cc="certifica+hosted-code@certifica.localhost"),
               [rcpt, "certifica+hosted-code@certifica.localhost"])  # fmt: skip
    link = link_of(notification(sink, rcpt, "Guarded"))
    _, _, landing = fetch(link)
    assert b'id="code-limits"' in landing and b"at most 5 codes a day" in landing
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]

    def guess(code: str) -> bytes:
        return fetch(f"{link}/open", f"form={key}&code={code}".encode())[2]

    assert fetch(f"{link}/code", f"form={key}".encode())[0] == 200
    (first,) = _codes(sink, rcpt, 1)
    for _ in range(4):
        assert b'role="alert"' in guess(_wrong(first))
    assert fetch(f"{link}/code", f"form={key}".encode())[0] == 200
    second = _codes(sink, rcpt, 2)[1]
    for _ in range(4):
        guess(_wrong(second))
    assert fetch(f"{link}/code", f"form={key}".encode())[0] == 200
    third = _codes(sink, rcpt, 3)[2]
    guess(_wrong(third))
    locked = guess(_wrong(third))  # the 10th wrong code of the link
    assert b'id="code-refused"' in locked and b"Too many wrong codes" in locked
    assert b"sale of the boat" not in guess(third)  # even the right one, while locked
    refused = fetch(f"{link}/code", f"form={key}".encode())[2]
    assert b'id="code-refused"' in refused
    assert evidence(gw, qid, "ContentHandover") == []
    with db(gw) as conn:
        (sent,) = conn.execute(
            "SELECT codes_sent FROM hosted_links h JOIN recipients r ON r.id = h.recipient_id"
            " WHERE r.address = ? AND h.qid = ?",
            (rcpt, qid),
        ).fetchone()
    assert sent == 3 and len(_codes(sink, rcpt, 3)) == 3  # no mail while locked


def test_no_more_than_the_days_codes_are_mailed_for_a_link(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    gw, sink, _ = hosted
    rcpt = "leo@example.org"
    send(gw, message("Mail bomb", rcpt, cc="certifica+hosted-code@certifica.localhost"),
         [rcpt, "certifica+hosted-code@certifica.localhost"])  # fmt: skip
    link = link_of(notification(sink, rcpt, "Mail bomb"))
    _, _, landing = fetch(link)
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    for _ in range(5):
        assert b'id="code-refused"' not in fetch(f"{link}/code", f"form={key}".encode())[2]
    for _ in range(3):
        refused = fetch(f"{link}/code", f"form={key}".encode())[2]
        assert b"No more codes can be sent" in refused
    codes = _codes(sink, rcpt, 5)
    assert b"sale of the boat" in fetch(f"{link}/open", f"form={key}&code={codes[-1]}".encode())[2]
    assert len([m for m in sink.messages if rcpt in m.rcpt_tos
                and b"Your code" in _subject(m)]) == 5  # fmt: skip


def test_after_its_expiry_an_opened_link_neither_opens_nor_decides(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    """Review finding 4: an opened link past its expiry gets the unknown link's 404; no
    handover and no decision is recorded after it."""
    gw, sink, _ = hosted
    rcpt = "mallory@example.org"
    qid = send(gw, message("Late offer", rcpt, cc="certifica+accept@certifica.localhost"),
               [rcpt, "certifica+accept@certifica.localhost"])  # fmt: skip
    link = link_of(notification(sink, rcpt, "Late offer"))
    _, _, landing = fetch(link)
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    status, _, content = fetch(f"{link}/open", f"form={key}".encode())
    assert status == 200 and b"sale of the boat" in content
    content_key = re.search(rb'name="form" value="([^"]+)"', content).group(1).decode()  # type: ignore[union-attr]
    with sqlite3.connect(gw.state / "queue.db", timeout=30) as conn:  # the offer's end passes
        conn.execute("UPDATE hosted_links SET expires = ? WHERE qid = ?", (time.time() - 1, qid))
    unknown = fetch(link[:-5] + "AAAAA")
    status, _, body = fetch(link)
    assert status == 404 and body == unknown[2]
    assert fetch(f"{link}/open", f"form={key}".encode())[0] == 404
    status, _, body = fetch(f"{link}/decide", f"form={content_key}&decision=accepted".encode())
    assert status == 404 and body == unknown[2]
    assert fetch(f"{link}/a/1", f"form={content_key}".encode())[0] == 404
    assert len(evidence(gw, qid, "ContentHandover")) == 1
    assert evidence(gw, qid, "ContentAccepted") == []


def test_the_html_notification_shows_the_senders_address_as_text(
    hosted: tuple[Gateway, Sink, int],
) -> None:
    """Review finding 5: the address is escaped text, not a tag that hides it."""
    from html.parser import HTMLParser

    gw, sink, _ = hosted
    rcpt = "nina@example.org"
    send(gw, message("Who sent it", rcpt, cc="certifica+accept@certifica.localhost"),
         [rcpt, "certifica+accept@certifica.localhost"])  # fmt: skip
    mail = notification(sink, rcpt, "Who sent it")
    html = mail.message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert "&lt;alice@example.com&gt;" in html

    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: list[str] = []
            self.text = ""

        def handle_starttag(self, tag: str, attrs: Any) -> None:
            self.tags.append(tag)

        def handle_data(self, data: str) -> None:
            self.text += data

    parsed = Text()
    parsed.feed(html)
    assert "Alice <alice@example.com> sent you a certified message" in " ".join(parsed.text.split())
    assert not [t for t in parsed.tags if "@" in t]
    text = mail.message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "Alice <alice@example.com> sent you a certified message" in " ".join(text.split())


def _decision_mail(gw: Gateway, sink: Sink, rcpt: str, subject: str, decision: str) -> str:
    """Decide on a fresh ``+accept`` message by POSTs; the plain text of the sender's mail."""
    send(gw, message(subject, rcpt, cc="certifica+accept@certifica.localhost"),
         [rcpt, "certifica+accept@certifica.localhost"])  # fmt: skip
    link = link_of(notification(sink, rcpt, subject))
    _, _, landing = fetch(link)
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    _, _, content = fetch(f"{link}/open", f"form={key}".encode())
    key = re.search(rb'name="form" value="([^"]+)"', content).group(1).decode()  # type: ignore[union-attr]
    assert fetch(f"{link}/decide", f"form={key}&decision={decision}".encode())[0] == 200
    title = "acceptance" if decision == "accepted" else "rejection"
    wanted = f"Certificate of {title}: “{subject}”"
    found = sink.wait_for(lambda ms: any(wanted in str(m.message["Subject"]) for m in ms))
    mail = next(m for m in found if wanted in str(m.message["Subject"]))
    return str(mail.message.get_body(preferencelist=("plain",)).get_content())  # type: ignore[union-attr]


def test_the_mail_of_a_rejection_never_says_delivered(hosted: tuple[Gateway, Sink, int]) -> None:
    """Review finding 6: the decision, in words and in the details, not a server's 250."""
    gw, sink, _ = hosted
    text = " ".join(_decision_mail(gw, sink, "olga@example.org", "No deal", "rejected").split())
    assert "olga@example.org: rejected on the gateway's page, through the link" in text
    assert "delivered" not in text and "recipient's mail server" not in text, text
    assert "olga@example.org: rejected on the gateway's page" in text


def test_accept_with_a_code_keeps_both(hosted: tuple[Gateway, Sink, int]) -> None:
    """Review finding 3: +accept and +hosted-code together ask for the code, then the
    decision; the certificate says the access was bound to the mailbox."""
    from relay.hosted.modes import chosen_mode

    assert chosen_mode(["accept", "hosted-code"], b"Subject: x\r\n\r\n", None) == "accept-code"
    gw, sink, _ = hosted
    rcpt = "pat@example.org"
    tags = ["certifica+accept@certifica.localhost", "certifica+hosted-code@certifica.localhost"]
    qid = send(gw, message("Coded terms", rcpt, cc=", ".join(tags)), [rcpt, *tags])
    link = link_of(notification(sink, rcpt, "Coded terms"))
    _, _, landing = fetch(link)
    assert b'id="send-code"' in landing and b'id="open"' not in landing
    key = re.search(rb'name="form" value="([^"]+)"', landing).group(1).decode()  # type: ignore[union-attr]
    status, _, content = fetch(f"{link}/open", f"form={key}".encode())
    assert b"sale of the boat" not in content  # no code, nothing shown
    assert fetch(f"{link}/code", f"form={key}".encode())[0] == 200
    (code,) = _codes(sink, rcpt, 1)
    status, _, content = fetch(f"{link}/open", f"form={key}&code={code}".encode())
    assert b"sale of the boat" in content and b'id="accept"' in content
    key = re.search(rb'name="form" value="([^"]+)"', content).group(1).decode()  # type: ignore[union-attr]
    assert fetch(f"{link}/decide", f"form={key}&decision=accepted".encode())[0] == 200
    (decided,) = evidence(gw, qid, "ContentAccepted")
    assert decided["code_checked"] is True
    wanted = "Certificate of acceptance: “Coded terms”"
    found = sink.wait_for(lambda ms: any(wanted in str(m.message["Subject"]) for m in ms))
    mail = next(m for m in found if wanted in str(m.message["Subject"]))
    (pdf,) = [
        a for a in mail.message.iter_attachments() if a.get_content_type() == "application/pdf"
    ]
    from certifier.verify import embedded_evidence

    record = embedded_evidence(pdf.get_payload(decode=True))
    assert record is not None and record["decision"]["code_checked"] is True
