"""No mail disappears silently: the sender of plain mail gets an RFC 3464 report.

The real gateway relays uncertified mail to a remote sink that refuses some recipients
(550), defers others (451) and accepts the rest; the sender's own domain is routed to a
second sink that records what the gateway sends back. Domains that do not exist and
null MX come from the local DNS server. Every report is read back with two parsers
that are not the one that wrote it: Python's ``email`` package and the gateway's own
bounce reader (:func:`relay.cleanup.bounces.parse_dsn`).
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import signal
import smtplib
import sqlite3
import string
import time
from collections.abc import Iterator
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from flufl.bounce import all_failures
from hypothesis import given
from hypothesis import strategies as st

from certifier.i18n import Reader
from relay.certify import dsn
from relay.cleanup.bounces import make_return_path, parse_dsn
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer
from tests.test_late_bounce import dsn_for

FULL_LIMIT = 3000


def _rcpt(address: str) -> str | None:
    if address.startswith("reject") or address.startswith("gone@"):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
    if address.startswith("slow"):
        return "451 4.3.0 Temporary local problem, try again"
    return None


@pytest.fixture(scope="module")
def remote(sink_server: SinkServer) -> Sink:
    """The recipients' MX (example.org): refuses reject*, defers slow*, takes the rest."""
    return sink_server.start(Sink(rcpt_reply=_rcpt))


@pytest.fixture(scope="module")
def home(sink_server: SinkServer) -> Sink:
    """The senders' MX (example.com): records the reports; refuses gone@example.com."""
    return sink_server.start(Sink(rcpt_reply=_rcpt))


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, remote: Sink, home: Sink
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("nondelivery")
    with DNSServer() as dns:
        dns.add("nullmx.test", "MX", "0 .")
        cfg = write_config(
            tmp, {"example.org": remote.port, "example.com": home.port}, dns.config_toml()
        )
        text = cfg.read_text().replace(
            "lifetime = 30.0",
            f"lifetime = 12.0\ndelay_warning = 2.0\ndsn_full_limit = {FULL_LIMIT}",
        )
        cfg.write_text(text)
        gw = start_gateway(cfg, {"alice@example.com": PASSWORD, "gone@example.com": PASSWORD})
        yield gw
        gw.stop()
    assert_clean_log(gw.log())


def send(
    gw: Gateway,
    raw: bytes,
    rcpts: list[str],
    mail_options: tuple[str, ...] = (),
    rcpt_options: dict[str, list[str]] | None = None,
    sender: str = "alice@example.com",
) -> str:
    with gw.smtp(sender) as c:
        code, text = c.mail(sender, list(mail_options))
        assert code == 250, text
        for r in rcpts:
            code, text = c.rcpt(r, (rcpt_options or {}).get(r, []))
            assert code == 250, text
        code, text = c.data(raw)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def reports_for(home: Sink, qid: str, count: int = 1, timeout: float = 60.0) -> list[Received]:
    def find(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and m.message.get_content_type() == "multipart/report"
        ]

    return find(home.wait_for(lambda ms: len(find(ms)) >= count, timeout))


def finished(gw: Gateway, qid: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while f"{qid}: removed" not in gw.log():
        assert time.monotonic() < deadline, gw.log()[-3000:]
        time.sleep(0.1)


def assert_no_report(gw: Gateway, home: Sink, qid: str) -> None:
    """No report was made about ``qid`` (the log line is written when one is queued,
    before the message can be finished) and none reached the sender."""
    assert not re.search(rf"{qid}: sender [a-z -]*notification", gw.log())
    assert not [
        m
        for m in home.messages
        if m.message["X-Certifica-Queue-Id"] == qid
        and m.message.get_content_type() == "multipart/report"
    ]


def parts(report: Received) -> tuple[EmailMessage, list[Message], Message]:
    """The human part, the delivery-status blocks and the returned original."""
    msg = report.message
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, original = msg.get_payload()  # type: ignore[misc]
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return human, blocks, original


def block_for(blocks: list[Message], address: str) -> Message:
    found = [b for b in blocks[1:] if b["Final-Recipient"] == f"rfc822; {address}"]
    assert len(found) == 1, [str(b) for b in blocks]
    return found[0]


def failures(report: Received) -> tuple[set[str], set[str]]:
    """(temporary, permanent) failures as Mailman's bounce reader finds them."""
    temporary, permanent = all_failures(report.message)
    return {a.decode() for a in temporary}, {a.decode() for a in permanent}


def assert_envelope_and_headers(report: Received, gw: Gateway) -> None:
    assert report.mail_from in ("", "<>")  # null return path: never bounced again
    msg = report.message
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@certifica.localhost"
    assert "DKIM-Signature" in msg  # signed like every mail of the gateway
    assert parse_dsn(report.data), "the gateway's own bounce reader finds nothing"


def test_refused_recipients_get_one_report_with_their_fields(
    gateway: Gateway, remote: Sink, home: Sink
) -> None:
    subject = "=?utf-8?q?Offer=0D=0ABcc:_evil@example.net?="  # an encoded CR LF
    raw = make_message(subject=subject, to="ok@example.org", cc="reject1@example.org")
    qid = send(
        gateway,
        raw,
        ["ok@example.org", "reject1@example.org", "reject2@example.org"],
        mail_options=("ENVID=QQ+2Benv+3D1",),
        rcpt_options={"reject1@example.org": ["ORCPT=rfc822;Reject1+2Bx@Example.org"]},
    )
    (report,) = reports_for(home, qid)
    assert report.rcpt_tos == ["alice@example.com"]
    assert_envelope_and_headers(report, gateway)
    msg = report.message
    assert "Bcc" not in msg and "\n" not in str(msg["Subject"])
    assert str(msg["Subject"]).startswith("Undelivered mail")
    human, blocks, original = parts(report)
    assert blocks[0]["Reporting-MTA"] == "dns; certifica.localhost"
    assert blocks[0]["Original-Envelope-Id"] == "QQ+env=1"
    assert blocks[0]["Arrival-Date"]
    assert len(blocks) == 3  # both refused recipients, in one report; not ok@
    for address in ("reject1@example.org", "reject2@example.org"):
        block = block_for(blocks, address)
        assert block["Action"] == "failed" and block["Status"] == "5.1.1"
        assert block["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
        assert block["Remote-MTA"].startswith("dns; ")
        assert block["Last-Attempt-Date"]
    assert block_for(blocks, "reject1@example.org")["Original-Recipient"] == (
        "rfc822; Reject1+x@Example.org"
    )
    assert "Original-Recipient" not in block_for(blocks, "reject2@example.org")
    text = human.get_content()
    assert "reject1@example.org" in text and "does not exist" in text
    assert original.get_content_type() == "text/rfc822-headers"
    returned = original.get_payload()
    assert "Message-ID:" in returned and "the contract is attached" not in returned
    # Mailman names a recipient by its ORCPT, the address the sender wrote
    assert failures(report) == (set(), {"Reject1+x@Example.org", "reject2@example.org"})
    found = {r.recipient: r for r in parse_dsn(report.data)}
    assert found["reject2@example.org"].action == "failed"
    assert found["reject2@example.org"].status == "5.1.1"
    finished(gateway, qid)
    assert len(reports_for(home, qid)) == 1
    assert re.search(rf"{qid}: sender non-delivery notification: [0-9A-F]{{12}}", gateway.log())


def test_domains_that_do_not_exist_or_take_no_mail(gateway: Gateway, home: Sink) -> None:
    qid = send(gateway, make_message(to="a@nowhere.test"), ["a@nowhere.test", "b@nullmx.test"])
    finished(gateway, qid)
    blocks = [b for r in reports_for(home, qid) for b in parts(r)[1][1:]]
    by = {b["Final-Recipient"]: b for b in blocks}
    assert by["rfc822; a@nowhere.test"]["Status"] == "5.1.2"
    assert "NXDOMAIN" in by["rfc822; a@nowhere.test"]["Diagnostic-Code"]
    assert by["rfc822; b@nullmx.test"]["Status"] == "5.1.10"
    assert all(b["Action"] == "failed" for b in blocks) and len(blocks) == 2
    human = "".join(parts(r)[0].get_content() for r in reports_for(home, qid))
    assert set().union(*(failures(r)[1] for r in reports_for(home, qid))) == {
        "a@nowhere.test",
        "b@nullmx.test",
    }
    assert "The domain nowhere.test does not exist" in human
    assert "nullmx.test says it accepts no mail" in human


def test_notify_never_suppresses_and_success_is_reported_as_relayed(
    gateway: Gateway, home: Sink
) -> None:
    never = send(
        gateway,
        make_message(to="reject-never@example.org"),
        ["reject-never@example.org"],
        rcpt_options={"reject-never@example.org": ["NOTIFY=NEVER"]},
    )
    success = send(
        gateway,
        make_message(to="fine@example.org"),
        ["fine@example.org", "plain@example.org"],
        rcpt_options={"fine@example.org": ["NOTIFY=SUCCESS,FAILURE"]},
    )
    (report,) = reports_for(home, success)
    assert_envelope_and_headers(report, gateway)
    _, blocks, _ = parts(report)
    assert len(blocks) == 2  # plain@ asked nothing: no news is good news
    block = block_for(blocks, "fine@example.org")
    assert block["Action"] == "relayed" and block["Status"].startswith("2.")
    assert f"{success}: sender delivery status notification:" in gateway.log()
    finished(gateway, never)
    finished(gateway, success)
    assert_no_report(gateway, home, never)


def test_ret_full_returns_the_message_up_to_the_configured_size(
    gateway: Gateway, home: Sink
) -> None:
    small = make_message(to="reject-full@example.org", body="Small body, returned whole.\r\n")
    qid = send(gateway, small, ["reject-full@example.org"], mail_options=("RET=FULL",))
    (report,) = reports_for(home, qid)
    _, _, original = parts(report)
    assert original.get_content_type() == "message/rfc822"
    assert small in report.data  # byte for byte

    big = make_message(to="reject-big@example.org", body=("y" * 70 + "\r\n") * 60)
    assert len(big) > FULL_LIMIT
    qid = send(gateway, big, ["reject-big@example.org"], mail_options=("RET=FULL",))
    (report,) = reports_for(home, qid)
    human, _, original = parts(report)
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"yyyy" not in report.data
    said = human.get_content()
    assert "RET=FULL" in said and f"{Reader().number(len(big))} bytes" in said  # "4,575 bytes"

    hdrs = send(gateway, small, ["reject-hdrs@example.org"], mail_options=("RET=HDRS",))
    (report,) = reports_for(home, hdrs)
    assert parts(report)[2].get_content_type() == "text/rfc822-headers"


def test_delay_warning_once_then_failure_when_the_lifetime_ends(
    gateway: Gateway, home: Sink
) -> None:
    qid = send(gateway, make_message(to="slow@example.org"), ["slow@example.org"])
    (delayed,) = reports_for(home, qid, timeout=30)
    assert_envelope_and_headers(delayed, gateway)
    assert str(delayed.message["Subject"]).startswith("Delivery delayed")
    human, blocks, _ = parts(delayed)
    block = block_for(blocks, "slow@example.org")
    assert block["Action"] == "delayed" and block["Status"] == "4.3.0"
    assert block["Will-Retry-Until"] and block["Diagnostic-Code"].startswith("smtp; 451")
    assert "keeps trying" in human.get_content()
    assert failures(delayed) == ({"slow@example.org"}, set())
    assert f"{qid}: sender delay notification:" in gateway.log()

    reports = reports_for(home, qid, count=2, timeout=60)
    assert len(reports) == 2  # the delay report came once
    failed = block_for(parts(reports[1])[1], "slow@example.org")
    assert failed["Action"] == "failed" and failed["Status"] == "5.4.7"
    assert failed["Diagnostic-Code"].startswith("smtp; 451 4.3.0")
    assert "could not deliver it before giving up" in parts(reports[1])[0].get_content()


def test_no_report_about_a_report_nor_about_the_gateways_own_mail(
    gateway: Gateway, home: Sink
) -> None:
    # gone@example.com's own mailbox refuses mail: the report to it fails, and the
    # failure of a null-sender mail is told to nobody.
    qid = send(
        gateway,
        make_message(sender="gone@example.com", to="reject-gone@example.org"),
        ["reject-gone@example.org"],
        sender="gone@example.com",
    )
    match = None
    deadline = time.monotonic() + 60
    while match is None:
        assert time.monotonic() < deadline
        match = re.search(
            rf"{qid}: sender non-delivery notification: ([0-9A-F]{{12}})", gateway.log()
        )
        time.sleep(0.1)
    report_qid = match.group(1)
    finished(gateway, report_qid)
    assert re.search(rf"{report_qid}: to=<gone@example.com>.*status=bounced", gateway.log())
    assert f"{report_qid}: sender non-delivery" not in gateway.log()
    # a certified message's certificate to a refusing mailbox: no report either
    cert = send(
        gateway,
        make_message(sender="gone@example.com", to="ok2@example.org"),
        ["ok2@example.org", CERT_ADDRESS],
        sender="gone@example.com",
    )
    finished(gateway, cert)
    generated = re.findall(
        rf"([0-9A-F]{{12}}): from=<>, size=\d+, nrcpt=1, \w+ for {cert}", gateway.log()
    )
    assert len(generated) == 2  # the notice and the certificate, both refused by gone@
    for gen in generated:
        finished(gateway, gen)
        assert_no_report(gateway, home, gen)
    assert_no_report(gateway, home, cert)
    # and a message that is itself a report is not answered with one
    own = make_message(sender="alice@example.com", to="reject-dsn@example.org").replace(
        b"Content-Type: text/plain; charset=utf-8",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
    )
    qid = send(gateway, own, ["reject-dsn@example.org"])
    finished(gateway, qid)
    assert f"{qid}: no delivery status notification: the message is itself" in gateway.log()
    assert_no_report(gateway, home, qid)


def test_a_late_bounce_for_plain_mail_is_passed_on(
    gateway: Gateway, remote: Sink, home: Sink
) -> None:
    raw = make_message(subject="late plain", to="vanish@example.org")
    qid = send(
        gateway,
        raw,
        ["vanish@example.org"],
        rcpt_options={"vanish@example.org": ["ORCPT=rfc822;vanish@example.org"]},
    )
    copy = [
        m
        for m in remote.wait_for(lambda ms: any(qid.encode() in m.data[:3000] for m in ms))
        if qid.encode() in m.data[:3000]
    ][0]
    finished(gateway, qid)
    with smtplib.SMTP("127.0.0.1", gateway.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        code, text = c.rcpt(copy.mail_from)
        assert code == 250, text
        code, text = c.data(dsn_for(copy.mail_from, "vanish@example.org", raw))
        assert code == 250, text
    (report,) = reports_for(home, qid)
    assert_envelope_and_headers(report, gateway)
    human, blocks, original = parts(report)
    block = block_for(blocks, "vanish@example.org")
    assert block["Action"] == "failed" and block["Status"] == "5.1.1"
    assert block["Original-Recipient"] == "rfc822; vanish@example.org"
    assert "mailbox unavailable" in block["Diagnostic-Code"]
    assert failures(report) == (set(), {"vanish@example.org"})
    assert "mx.example.org" in human.get_content()
    assert "Subject: late plain" in original.get_payload()
    assert f"{qid}: sender non-delivery notification:" in gateway.log()


def forged_dsn(return_path: str, said: list[tuple[str, str]], subject: str, text: str) -> bytes:
    """A DSN anyone who knows ``return_path`` could write: per recipient (address,
    action), attacker text in its own Subject, its human part and the returned headers."""
    boundary = "forged-boundary"
    blocks = "".join(
        f"\r\nFinal-Recipient: rfc822; {address}\r\nAction: {action}\r\nStatus: "
        f"{'5.1.1' if action == 'failed' else '2.0.0'}\r\n"
        f"Diagnostic-Code: smtp; 550 5.1.1 mailbox unavailable\r\n"
        for address, action in said
    )
    return (
        f"From: MAILER-DAEMON@mx.example.org\r\nTo: {return_path}\r\n"
        f"Subject: {subject}\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"'
        f"\r\n\r\n--{boundary}\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; mx.example.org\r\n{blocks}"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: alice@example.com\r\nSubject: {subject}\r\n\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def deliver_dsn(gw: Gateway, return_path: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        c.mail("<>")
        code, text = c.rcpt(return_path)
        assert code == 250, text
        code, text = c.data(data)
        assert code == 250, text


def spool_without_record(gw: Gateway) -> set[str]:
    """Spool files (queue and archive) whose message the database does not have."""
    spool = gw.state / "spool"
    files = {p.stem for d in ("queue", "archive") for p in (spool / d).glob("*.eml")}
    with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True) as db:
        rows = {r[0] for r in db.execute("SELECT qid FROM messages")}
    return files - rows


def test_a_late_report_quotes_our_copy_and_goes_once_per_recipient_and_action(
    gateway: Gateway, remote: Sink, home: Sink
) -> None:
    """Forged DSNs to a known return path: the report quotes the original's own Subject
    and header fields (the header section alone, though RET=FULL), only for the recipient
    the gateway delivered to, once; bidi overrides in the original's Subject are gone."""
    subject = "=?utf-8?b?" + base64.b64encode("genuine \u202egnp.exe".encode()).decode() + "?="
    raw = make_message(subject=subject, to="vanish2@example.org", cc="reject-late@example.org")
    qid = send(
        gateway,
        raw,
        ["vanish2@example.org", "reject-late@example.org"],
        mail_options=("RET=FULL",),
    )
    copy = [
        m
        for m in remote.wait_for(lambda ms: any(qid.encode() in m.data[:3000] for m in ms))
        if qid.encode() in m.data[:3000]
    ][0]
    finished(gateway, qid)
    (refused,) = reports_for(home, qid)  # reject-late@, refused at once
    attack = forged_dsn(
        copy.mail_from,
        [("vanish2@example.org", "failed"), ("reject-late@example.org", "failed")],
        "Your account is locked: visit evil.example",
        "Send your password to evil.example",
    )
    deliver_dsn(gateway, copy.mail_from, attack)
    late = [r for r in reports_for(home, qid, count=2) if r is not refused]
    assert len(late) == 1
    report = late[0]
    assert_envelope_and_headers(report, gateway)
    human, blocks, original = parts(report)
    assert str(report.message["Subject"]).startswith("Undelivered mail: “genuine ")
    assert len(blocks) == 2  # vanish2@ only: reject-late@ was never delivered
    assert block_for(blocks, "vanish2@example.org")["Action"] == "failed"
    assert b"evil.example" not in report.data
    # RET=FULL, but the message left the queue: only its header section is left
    assert original.get_content_type() == "text/rfc822-headers"
    message_id = re.search(rb"Message-ID: (<[^>]+>)", raw).group(1).decode()  # type: ignore[union-attr]
    assert f"Message-ID: {message_id}" in original.get_payload()
    assert "the contract is attached" not in original.get_payload()
    # again, other bytes, and a "delivered" once more: nothing more goes to the sender
    for again in (
        forged_dsn(copy.mail_from, [("vanish2@example.org", "failed")], "again", "again"),
        attack,  # the same bytes: not even recorded
    ):
        deliver_dsn(gateway, copy.mail_from, again)
    deadline = time.monotonic() + 30
    passed_over = f"no delivery status notification passed on for {qid}"
    while gateway.log().count(passed_over) < 1:
        assert time.monotonic() < deadline, gateway.log()[-3000:]
        time.sleep(0.1)
    assert "delivery report not kept: already recorded" in gateway.log()
    time.sleep(1.0)  # a scan or more: a second report would be queued by now
    assert len(reports_for(home, qid, count=2)) == 2
    assert spool_without_record(gateway) == set()
    for report in (refused, late[0]):  # no bidi override from the original's Subject
        assert "\u202e" not in str(report.message["Subject"])
        assert "\u202e" not in parts(report)[0].get_content()


def test_a_dsn_that_is_not_recorded_leaves_no_spool_file(gateway: Gateway) -> None:
    """The same DSN twice, and one about a message the gateway never had: every spool
    file still has its row."""
    key = (gateway.state / "keys" / "verp.key").read_bytes()
    unknown = make_return_path("0123456789AB", "certifica.localhost", key)
    data = forged_dsn(unknown, [("nobody@example.org", "failed")], "unknown", "unknown")
    before = {p.stem for p in (gateway.state / "spool" / "queue").glob("*.eml")}
    deliver_dsn(gateway, unknown, data)
    deliver_dsn(gateway, unknown, data)
    after = {p.stem for p in (gateway.state / "spool" / "queue").glob("*.eml")}
    assert spool_without_record(gateway) == set()
    assert after <= before
    assert gateway.log().count("0123456789AB: delivery report not kept") == 2


def test_certified_failure_says_not_delivered_in_the_certificate_mail(
    gateway: Gateway, home: Sink
) -> None:
    qid = send(
        gateway,
        make_message(to="reject-cert@example.org", subject="Notice to quit"),
        ["reject-cert@example.org", CERT_ADDRESS],
    )

    def certificate(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and str(m.message["Subject"]).startswith("Certificate")
        ]

    (mail,) = certificate(home.wait_for(lambda ms: bool(certificate(ms)), 90))
    assert str(mail.message["Subject"]).startswith("Certificate of non-delivery: “Notice to quit”")
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    first = " ".join(text.split("\n\n", 1)[0].split())  # the first paragraph, unwrapped
    assert first == "Your message “Notice to quit” was not delivered to reject-cert@example.org."
    finished(gateway, qid)
    assert_no_report(gateway, home, qid)  # the certificate is the notice


def test_a_report_survives_kill_9_and_is_sent_once(
    sink_server: SinkServer, remote: Sink, tmp_path: Path
) -> None:
    """The sender's MX is down when the report is made; the gateway is killed; after the
    restart (and the MX up) the report arrives once and the queue empties."""
    port = free_port()
    cfg = write_config(tmp_path, {"example.org": remote.port, "example.com": port})
    gw = start_gateway(cfg)
    qid = send(gw, make_message(to="reject-k1@example.org"), ["reject-k1@example.org"])
    made = rf"{qid}: sender non-delivery notification: ([0-9A-F]{{12}})"
    deadline = time.monotonic() + 30
    while not (found := re.search(rf"{made}[\s\S]*Connection refused", gw.log())):
        assert time.monotonic() < deadline, gw.log()
        time.sleep(0.05)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    home = sink_server.start(Sink(), port=port)
    gw2 = start_gateway(cfg, users={})
    try:
        (report,) = reports_for(home, qid)
        assert report.message["Message-ID"]
        deadline = time.monotonic() + 30
        while (listing := gw2.cli("queue", "list")).stdout.strip() != "Mail queue is empty":
            assert time.monotonic() < deadline, listing.stdout
            time.sleep(0.1)
        assert len(reports_for(home, qid)) == 1
        assert found.group(1) in gw2.log()  # the same report, from the spool
        assert not re.search(made, gw2.log())  # not made again
    finally:
        gw2.stop()
    assert_clean_log(gw2.log())


def test_dsn_parameters_are_read_strictly_and_advertised_where_honoured(
    gateway: Gateway,
) -> None:
    with gateway.smtp() as c:
        assert c.has_extn("dsn")
        for options, rcpt_options in (
            (["RET=ALL"], []),
            (["ENVID=bad+zz"], []),
            (["ENVID=a", "ENVID=b"], []),
            ([], ["NOTIFY=NEVER,SUCCESS"]),
            ([], ["NOTIFY=SOMETIMES"]),
            ([], ["ORCPT=bob@example.org"]),
            ([], ["ORCPT=rfc822;bob+0D+0ABcc:x@example.org"]),
        ):
            c.rset()
            code, text = c.mail("alice@example.com", options)
            if not rcpt_options:
                assert code == 501 and text.startswith(b"5.5.4 "), (options, text)
                continue
            assert code == 250, text
            code, text = c.rcpt("bob@example.org", rcpt_options)
            assert code == 501 and text.startswith(b"5.5.4 "), (rcpt_options, text)
        c.rset()
        code, _ = c.mail("alice@example.com", ["RET=hdrs", "ENVID=x", "SIZE=100"])
        assert code == 250
        code, _ = c.rcpt("bob@example.org", ["notify=failure,delay", "ORCPT=rfc822;b@x.org"])
        assert code == 250
    with smtplib.SMTP("127.0.0.1", gateway.port("mx"), timeout=30) as c:
        c.ehlo("mx.example.org")
        assert not c.has_extn("dsn")  # the MX takes certified copies: the certificate reports


_PRINTABLE = st.text(alphabet=string.printable[:95], max_size=80)


@given(
    st.sampled_from(["FULL", "HDRS", "full", "Hdrs"]),
    _PRINTABLE.filter(bool),
    st.sets(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1),
    _PRINTABLE.filter(bool),
)
def test_valid_parameters_are_accepted_as_sent(
    ret: str, envid: str, notify: set[str], address: str
) -> None:
    found, rest = dsn.split_parameters(
        f"SIZE=10 ret={ret} ENVID={dsn.xtext_encode(envid)} BODY=8BITMIME", dsn.MAIL_KEYWORDS
    )
    assert rest == ["SIZE=10", "BODY=8BITMIME"]
    mail = dsn.parse_mail_parameters(found)
    assert mail.ret == ret.upper() and mail.envid == envid
    rcpt = dsn.parse_rcpt_parameters(
        {"NOTIFY": ",".join(notify).lower(), "ORCPT": "RFC822;" + dsn.xtext_encode(address)}
    )
    assert rcpt.notify is not None and set(rcpt.notify.split(",")) == notify
    assert rcpt.orcpt == "rfc822;" + address


@given(_PRINTABLE)
def test_xtext_round_trips(text: str) -> None:
    encoded = dsn.xtext_encode(text)
    assert all(33 <= ord(c) <= 126 and c != "=" for c in encoded)
    assert dsn.xtext_decode(encoded) == text


@given(st.text(max_size=60), st.text(max_size=60), st.text(max_size=60), st.text(max_size=60))
def test_parameters_parse_or_refuse_with_a_sentence(
    ret: str, envid: str, notify: str, orcpt: str
) -> None:
    try:
        mail = dsn.parse_mail_parameters({"RET": ret, "ENVID": envid})
    except dsn.ParameterError as err:
        assert str(err)
    else:
        assert mail.ret in ("FULL", "HDRS")
        assert mail.envid is not None and re.fullmatch(r"[\x20-\x7e]{1,100}", mail.envid)
    try:
        rcpt = dsn.parse_rcpt_parameters({"NOTIFY": notify, "ORCPT": orcpt})
    except dsn.ParameterError as err:
        assert str(err)
    else:
        assert rcpt.orcpt is not None and re.fullmatch(r"[\x20-\x7e]+", rcpt.orcpt)


def _report(
    status: dsn.RecipientStatus, original: bytes, arrival: float = 0.0, return_full: bool = False
) -> bytes:
    """A report from gw.example to alice@example.com about ``original`` for one recipient."""
    return dsn.build_report(
        dsn.Report(
            hostname="gw.example",
            domain="gw.example",
            to="alice@example.com",
            queue_id="0123456789AB",
            arrival=arrival,
            recipients=(status,),
            original=original,
            return_full=return_full,
        )
    )


def test_report_headers_never_carry_a_line_break_from_the_original(tmp_path: Path) -> None:
    raw = (
        b"Subject: hi\r\n there =?utf-8?q?a=0D=0AX-Evil:_1?=\r\n"
        b"Message-ID: <a@b>\r\nX-Injected: no\r\n\r\nbody\r\n"
    )
    status = dsn.recipient_status(
        address="bob@example.org",
        action=dsn.Action.FAILED,
        reply_code=550,
        reply_enhanced="5.1.1",
        reply_text="no such user\r\nX-Evil: 2",
        mx_host="mx.example.org",
    )
    data = _report(status, raw, arrival=time.time())
    top = data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"\nX-Evil", top)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert "X-Evil: 1" in str(msg["Subject"]) and "X-Evil" not in msg  # text, not a field
    status_part = data.split(b"message/delivery-status", 1)[1].split(b"--=_certifica", 1)[0]
    assert not re.search(rb"\r\nX-Evil", status_part)
    assert not re.search(rb"(?<!\r)\n", data)  # CRLF throughout


_FIELD = re.compile(rb"^[!-9;-~]+:", re.M)


@given(
    st.binary(max_size=2000),
    st.text(max_size=300),
    st.text(max_size=80),
    st.booleans(),
    st.sampled_from(list(dsn.Action)),
)
def test_any_original_and_reply_make_a_report_that_parses(
    original: bytes, reply: str, subject: str, full: bool, action: dsn.Action
) -> None:
    raw = b"Subject: " + subject.encode("utf-8", "surrogatepass") + b"\r\n" + original
    status = dsn.recipient_status(
        address="bob@example.org",
        action=action,
        reply_code=550 if action == dsn.Action.FAILED else 451,
        reply_enhanced=None,
        reply_text=reply,
        mx_host="mx.example.org",
    )
    data = _report(status, raw, return_full=full)
    head, _, body = data.partition(b"\r\n\r\n")
    names = {m.group(0)[:-1].lower() for m in _FIELD.finditer(head)}
    assert names <= {
        b"from", b"to", b"subject", b"date", b"message-id", b"in-reply-to",
        b"references", b"auto-submitted", b"x-certifica-queue-id", b"mime-version",
        b"content-type",
    }  # fmt: skip
    status_part = body.split(b"Content-Type: message/delivery-status\r\n\r\n", 1)[1]
    status_part = status_part.split(b"\r\n--=_certifica_report_", 1)[0]
    fields = {m.group(0)[:-1] for m in _FIELD.finditer(status_part)}
    assert fields <= {
        b"Reporting-MTA", b"X-Certifica-Queue-Id", b"Arrival-Date", b"Final-Recipient",
        b"Action", b"Status", b"Remote-MTA", b"Diagnostic-Code",
    }  # fmt: skip
    (found,) = parse_dsn(data)
    assert found.recipient == "bob@example.org" and found.action == action.value


def test_an_smtputf8_recipient_is_written_as_rfc_6533_xtext() -> None:
    status = dsn.recipient_status(
        address="jösé+1@exämple.org",
        action=dsn.Action.FAILED,
        reply_code=550,
        reply_enhanced="5.1.1",
        reply_text="unknown",
    )
    data = _report(status, b"Subject: x\r\n\r\n")
    assert b"Final-Recipient: utf-8; j\\x{F6}s\\x{E9}\\x{2B}1@ex\\x{E4}mple.org\r\n" in data
    status_part = data.split(b"message/delivery-status", 1)[1].split(b"--=_certifica", 1)[0]
    assert status_part.isascii()


def _status_part(data: bytes) -> bytes:
    part = data.split(b"Content-Type: message/delivery-status\r\n\r\n", 1)[1]
    return part.split(b"\r\n--=_certifica_report_", 1)[0]


@pytest.mark.parametrize("language", ["es", "ca", "it"])
def test_the_first_part_is_in_the_senders_language_and_the_status_part_unchanged(
    language: str,
) -> None:
    """The same report for an English and another reader: the first part and the subject
    differ, the ``message/delivery-status`` part is the same bytes, and the parsers that
    read English reports read this one alike."""
    status = dsn.recipient_status(
        address="bob@example.org",
        action=dsn.Action.FAILED,
        reply_code=550,
        reply_enhanced="5.1.1",
        reply_text="<bob@example.org>: Recipient address rejected: User unknown",
        mx_host="mx.example.org",
        last_attempt=1796294525.0,
    )
    report = dsn.Report(
        hostname="gw.example", domain="gw.example", to="alice@example.com",
        queue_id="0123456789AB", arrival=1796294500.0, recipients=(status,),
        original=b"Subject: Contrato\r\nMessage-ID: <c@example.com>\r\n\r\nbody\r\n",
        now=1796294530.0,
    )  # fmt: skip
    english = dsn.build_report(report)
    theirs = dsn.build_report(report, reader=Reader(language, "Europe/Madrid"))
    assert _status_part(theirs) == _status_part(english)
    msg = email.message_from_bytes(theirs, policy=email.policy.default)
    human = msg.get_payload()[0]  # type: ignore[index]
    assert human["Content-Language"] == language
    said = human.get_content()
    expected = {
        "es": ("No se pudo entregar: «Contrato»", "indica que esta dirección no existe"),
        "ca": ("No s'ha pogut lliurar: «Contrato»", "indica que aquesta adreça no existeix"),
        "it": ("Mancata consegna: «Contrato»", "indica che questo indirizzo non esiste"),
    }[language]
    assert str(msg["Subject"]) == expected[0] and expected[1] in said
    assert "does not exist" not in said and "550 <bob@example.org>: Recipient" in said
    assert failures(Received("", ["alice@example.com"], theirs)) == (set(), {"bob@example.org"})
    assert [(r.recipient, r.action, r.status) for r in parse_dsn(theirs)] == [
        ("bob@example.org", "failed", "5.1.1")
    ]
