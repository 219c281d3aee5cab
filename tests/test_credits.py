"""Credits end to end (docs/credits.md): a certified message reserves its recipients'
credits with the 250, is refused with the balance when short (550 5.7.1, or 452 4.7.1
with ``when_short = "defer"``), and settles when its recipients end: withdrawn before
any attempt, refunded; attempted (delivered or failed), spent. Plain mail costs nothing.
A statement, as text and as CSV, balances to the total; every movement is an evidence
entry that ``certifica evidence verify`` checks.

One gateway with prices set in its config, real SMTP clients, the real sink as the
remote MX; organisations and memberships are set in the gateway's store, as
``certifica org`` does.
"""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import smtplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.process.status import processes
from relay.queue.credits import balance
from relay.queue.states import HoldState, Role
from relay.queue.store import Store
from tests.conftest import (
    CERT_ADDRESS,
    CERTIFICA,
    PASSWORD,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer
from tests.test_certified_sending import generated_for, submit
from tests.test_late_bounce import addendum_for, dsn_for

CONTACT = "billing@provider.example"
PRICES = f"""
[provider]
contact = "{CONTACT}"
[credits]
email_recipient = 1
reception = 2
addendum = 1
warn_below = 5
"""
USERS = {
    "alice@example.com": ("ACME", Role.ADMIN),
    "sam@example.com": ("SHORT", Role.SENDER),
    "lee@example.com": ("LOW", Role.ADMIN),
    "lou@example.com": ("LOW", Role.SENDER),
    "rita@example.com": ("RCPT", Role.ADMIN),
    "ada@example.com": ("ADD", Role.ADMIN),
}


def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def refuse_reject(address: str) -> str | None:
    if address.startswith("reject"):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
    return None


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink(rcpt_reply=refuse_reject))


def open_db(gw: Gateway) -> Store:
    return Store(gw.state / "queue.db", 3600.0)


def organise(gw: Gateway, users: dict[str, tuple[str, Role]]) -> None:
    """The organisations and memberships ``certifica org`` and ``users`` would make."""
    with open_db(gw) as store:
        for org in {o for o, _ in users.values()}:
            store.add_organisation(org, f"{org} S.L.", "B12345678", time.time())
        for address, (org, role) in users.items():
            assert store.set_membership(address, org=org, role=role)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("credits")
    routes = {"example.org": sink.port, "example.net": sink.port, "example.com": sink.port}
    with DNSServer() as dns:  # the reception sender's SPF and DMARC, answered here
        dns.add("partner.test", "TXT", "v=spf1 -all")
        gateway = start_gateway(
            write_config(tmp, routes, PRICES + dns.config_toml()),
            {address: PASSWORD for address in USERS},
        )
        organise(gateway, USERS)
        yield gateway
        gateway.stop()
    assert_clean_log(gateway.log())


def org_balance(gw: Gateway, org: str) -> int:
    with open_db(gw) as store:
        return store.run_sync(lambda db: balance(db.conn, org), read=True)


def holds(gw: Gateway, qid: str) -> list[str]:
    with open_db(gw) as store:
        return store.run_sync(
            lambda db: [
                str(r[0])
                for r in db.conn.execute(
                    "SELECT state FROM credit_holds WHERE qid = ? ORDER BY id", (qid,)
                )
            ],
            read=True,
        )


def queued_qids(gw: Gateway) -> set[str]:
    with open_db(gw) as store:
        return store.run_sync(
            lambda db: {str(r[0]) for r in db.conn.execute("SELECT qid FROM messages")},
            read=True,
        )


def add(gw: Gateway, org: str, amount: int, note: str) -> str:
    out = gw.cli("credits", "add", org, str(amount), "--note", note)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_reservation_with_the_250_and_spent_when_delivered(gw: Gateway, sink: Sink) -> None:
    assert "the balance is now 20" in add(gw, "ACME", 20, "invoice 2026-117")
    rcpts = ["r1@example.org", "r2@example.org", "r3@example.net"]
    raw = make_message(to=", ".join(rcpts), subject="Three recipients")
    qid = submit(gw, raw, [*rcpts, CERT_ADDRESS])
    # Reserved in the transaction that queued it: the balance moved by the 250.
    assert org_balance(gw, "ACME") == 17
    generated_for(sink, qid, "certificate")
    assert holds(gw, qid) == [HoldState.SPENT] * 3
    assert org_balance(gw, "ACME") == 17
    shown = gw.cli("credits", "balance", "ACME")
    assert shown.returncode == 0 and shown.stdout.split()[:2] == ["ACME", "17"]


def test_a_failed_recipient_is_spent(gw: Gateway, sink: Sink) -> None:
    before = org_balance(gw, "ACME")
    raw = make_message(to="reject-me@example.org", subject="Refused remotely")
    qid = submit(gw, raw, ["reject-me@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    assert holds(gw, qid) == [HoldState.SPENT]
    assert org_balance(gw, "ACME") == before - 1  # the evidence of the 5xx was produced


def test_withdrawn_before_any_attempt_is_refunded(gw: Gateway, sink: Sink) -> None:
    # The queue manager is stopped (SIGSTOP) so no attempt can start: the operator
    # withdraws a message nothing has tried yet.
    qmgr = next(p for p in processes(gw.state) if p["role"] == "qmgr")
    os.kill(int(qmgr["pid"]), signal.SIGSTOP)
    try:
        before = org_balance(gw, "ACME")
        raw = make_message(to="w1@example.org, w2@example.org", subject="Withdrawn")
        qid = submit(gw, raw, ["w1@example.org", "w2@example.org", CERT_ADDRESS])
        assert org_balance(gw, "ACME") == before - 2
        out = gw.cli("queue", "delete", qid, "--yes")
        assert out.returncode == 0, out.stderr
    finally:
        os.kill(int(qmgr["pid"]), signal.SIGCONT)
    assert holds(gw, qid) == [HoldState.REFUNDED] * 2
    assert org_balance(gw, "ACME") == before
    generated_for(sink, qid, "certificate")  # certified as withdrawn, never dropped
    assert sink.to("w1@example.org") == [] and sink.to("w2@example.org") == []
    # Settled once: a second delete finds nothing to withdraw and refunds nothing.
    gw.cli("queue", "delete", qid, "--yes")
    assert org_balance(gw, "ACME") == before


def test_short_of_credits_is_refused_with_the_balance(gw: Gateway, sink: Sink) -> None:
    add(gw, "SHORT", 1, "trial")
    before = queued_qids(gw)
    raw = make_message(sender="sam@example.com", to="x1@example.org, x2@example.org")
    with gw.smtp("sam@example.com") as client:
        client.mail("sam@example.com")
        for rcpt in ("x1@example.org", "x2@example.org", CERT_ADDRESS):
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(raw)
    reply = text.decode()
    assert code == 550 and reply.startswith("5.7.1 Not enough credits"), reply
    assert "balance is 1 and it needs 2" in reply and CONTACT in reply, reply
    assert queued_qids(gw) == before  # nothing queued: nothing can be sent
    assert org_balance(gw, "SHORT") == 1
    # The spool file went with the refusal: every file left has its row.
    assert {p.stem for p in (gw.state / "spool" / "queue").glob("*.eml")} <= queued_qids(gw)
    assert sink.to("x1@example.org") == [] and sink.to("x2@example.org") == []


def test_plain_mail_costs_nothing(gw: Gateway, sink: Sink) -> None:
    before = org_balance(gw, "ACME")
    qid = submit(gw, make_message(to="plain@example.org", cc=""), ["plain@example.org"])
    sink.wait_for(lambda ms: any("plain@example.org" in m.rcpt_tos for m in ms))
    assert holds(gw, qid) == []
    assert org_balance(gw, "ACME") == before


def test_statement_balances_as_text_and_csv(gw: Gateway, sink: Sink) -> None:
    add(gw, "ACME", 5, "=HYPERLINK(evil)")  # a note a spreadsheet must not run
    text = gw.cli("credits", "statement", "ACME")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[-1].startswith("Balances: opening 0 + ") and lines[-1].endswith(
        f"= closing {org_balance(gw, 'ACME')}."
    ), lines[-1]
    for kind in ("purchase", "reserve", "refund"):
        assert any(f" {kind} " in line for line in lines), (kind, text.stdout)
    print(text.stdout)  # the statement the session's note quotes

    out = gw.cli("credits", "statement", "ACME", "--csv")
    assert out.returncode == 0
    as_bytes = subprocess.run(
        [CERTIFICA, "-c", str(gw.config), "credits", "statement", "ACME", "--csv"],
        capture_output=True,
        check=True,
    ).stdout
    assert as_bytes.count(b"\r\n") == len(out.stdout.splitlines())  # RFC 4180 line ends
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == [
        "date_utc", "kind", "product", "message", "certificate", "units", "amount",
        "balance", "note", "actor",
    ]  # fmt: skip
    opening, movements, closing = rows[1], rows[2:-1], rows[-1]
    assert opening[1] == "opening" and closing[1] == "closing"
    assert int(opening[7]) + sum(int(r[6]) for r in movements) == int(closing[7])
    assert int(closing[7]) == org_balance(gw, "ACME")
    assert [r[8] for r in movements if r[8].endswith("(evil)")] == ["'=HYPERLINK(evil)"]
    reserved = [r for r in movements if r[1] == "reserve"]
    assert reserved and all(r[3] and r[4] for r in reserved)  # the message, its certificate
    purchases = [r for r in movements if r[1] == "purchase"]
    assert purchases and all(r[9].startswith("operator:") for r in purchases)  # who added them

    month = time.strftime("%Y-%m", time.gmtime())
    this = gw.cli("credits", "statement", "ACME", "--month", month, "--csv")
    assert this.stdout == out.stdout.replace("all movements", month)
    earlier = gw.cli("credits", "statement", "ACME", "--month", "2020-01")
    assert earlier.returncode == 0 and earlier.stdout.splitlines()[-1] == (
        "Balances: opening 0 + 0 in 0 movement(s) = closing 0."
    )


def test_every_movement_is_evidence_that_verifies(gw: Gateway) -> None:
    out = gw.cli("evidence", "verify")
    assert out.returncode == 0, out.stdout + out.stderr
    with open_db(gw) as store:
        events = store.run_sync(
            lambda db: [
                str(r[0])
                for r in db.conn.execute("SELECT event FROM evidence WHERE event LIKE 'Credits%'")
            ],
            read=True,
        )
    assert {"CreditsPurchased", "CreditsReserved", "CreditsRefunded"} <= set(events)


def test_cli_refusals_are_one_line(gw: Gateway) -> None:
    for args, words in (
        (("credits", "add", "NOPE", "5"), "no organisation"),
        (("credits", "add", "ACME", "-5"), "positive"),
        (("credits", "adjust", "ACME", "-5"), "--note"),
        (("credits", "adjust", "ACME", "-100000", "--note", "x"), "below 0"),
        (("credits", "statement", "ACME", "--month", "2026-13"), "not a month"),
    ):
        out = gw.cli(*args)
        assert out.returncode == 2 and words in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr
    assert (
        "the balance is now"
        in gw.cli("credits", "adjust", "ACME", "-1", "--note", "goodwill correction").stdout
    )


def test_defer_when_short_answers_452(sink_server: SinkServer, tmp_path: Path) -> None:
    sink = sink_server.start(Sink())
    cfg = write_config(
        tmp_path,
        {"example.org": sink.port, "example.com": sink.port},
        PRICES + 'when_short = "defer"\n',
    )
    gateway = start_gateway(cfg)
    try:
        organise(gateway, {"alice@example.com": ("ACME", Role.SENDER)})
        with gateway.smtp() as client:
            client.mail("alice@example.com")
            client.rcpt("d1@example.org")
            client.rcpt(CERT_ADDRESS)
            code, text = client.data(make_message(to="d1@example.org"))
        assert code == 452 and text.decode().startswith("4.7.1 Not enough credits"), text
        assert "balance is 0 and it needs 1" in text.decode()
        with pytest.raises(smtplib.SMTPDataError):  # the same through sendmail
            with gateway.smtp() as client:
                client.sendmail(
                    "alice@example.com", ["d1@example.org", CERT_ADDRESS], make_message()
                )
        assert queued_qids(gateway) == set()
    finally:
        gateway.stop()
    assert_clean_log(gateway.log())


def submit_as(gw: Gateway, user: str, raw: bytes, rcpts: list[str]) -> str:
    """Send one message as ``user``; the queue id from the 250 reply."""
    with gw.smtp(user) as client:
        client.mail(user)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(raw)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def mails_to(sink: Sink, address: str, subject_start: str) -> list[Received]:
    return [m for m in sink.to(address) if (m.message["Subject"] or "").startswith(subject_start)]


def org_row(gw: Gateway, org: str) -> tuple[int, float | None, float | None]:
    with open_db(gw) as store:
        return store.run_sync(
            lambda db: db.conn.execute(
                "SELECT low_owed, low_notice, waiting_notice FROM organisations WHERE code = ?",
                (org,),
            ).fetchone(),
            read=True,
        )


def test_low_balance_notice_once_in_the_admins_language(gw: Gateway, sink: Sink) -> None:
    assert gw.cli("users", "set", "lee@example.com", "--language", "es").returncode == 0
    add(gw, "LOW", 6, "bundle")
    # lou (a sender) takes the balance from 6 to 4, below warn_below = 5: lee, the
    # organisation's admin, is told once, in Spanish.
    first = submit_as(
        gw,
        "lou@example.com",
        make_message(sender="lou@example.com", to="l1@example.org, l2@example.org"),
        ["l1@example.org", "l2@example.org", CERT_ADDRESS],
    )
    notice = sink.wait_for(lambda ms: bool(mails_to(sink, "lee@example.com", "Créditos")))
    mail = mails_to(sink, "lee@example.com", "Créditos")[0]
    assert mail.message["Content-Language"] == "es"
    assert mail.message["Auto-Submitted"] == "auto-generated" and mail.mail_from == "<>"
    text = mail.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "4" in text and "5" in text and CONTACT in text, text
    assert mails_to(sink, "lou@example.com", "Créditos") == []  # a sender is not told
    assert notice
    # Below the threshold already, and told: another movement owes no second notice.
    second = submit_as(
        gw,
        "lou@example.com",
        make_message(sender="lou@example.com", to="l3@example.org"),
        ["l3@example.org", CERT_ADDRESS],
    )
    assert org_balance(gw, "LOW") == 3
    low_owed, low_notice, _ = org_row(gw, "LOW")
    assert low_owed == 0 and low_notice is not None
    generated_for(sink, first, "certificate")
    generated_for(sink, second, "certificate")
    # Back above the threshold: the next fall is told again.
    add(gw, "LOW", 10, "bundle")
    assert org_row(gw, "LOW")[:2] == (0, None)
    assert len(mails_to(sink, "lee@example.com", "Créditos")) == 1


def test_reception_without_credits_waits_then_is_made(gw: Gateway, sink: Sink) -> None:
    out = gw.cli("reception", "enable", "rita@example.com")
    assert out.returncode == 0, out.stderr
    forward = re.search(r"recepcion\+[a-z2-7]+@certifica\.localhost", out.stdout)
    assert forward, out.stdout
    raw = (
        "From: Bob Partner <bob@partner.test>\r\nTo: rita@example.com\r\n"
        "Subject: Signed offer for Rita\r\nDate: Tue, 01 Dec 2026 11:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@partner.test>\r\n\r\nThe offer.\r\n"
    ).encode()
    # Never refused for credits: RCPT has none, the mail is accepted and recorded.
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo("mail.partner.test")
        code, reply = client.docmd("MAIL FROM:<bob@partner.test>")
        assert code == 250, reply
        assert client.rcpt(forward.group(0))[0] == 250
        code, reply = client.data(raw)
    assert code == 250, reply
    waiting = sink.wait_for(
        lambda ms: bool(mails_to(sink, "rita@example.com", "Certificates wait for credits"))
    )
    assert waiting
    told = mails_to(sink, "rita@example.com", "Certificates wait for credits")[0]
    body = told.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Reception certificates waiting: 1" in body and CONTACT in body, body
    with open_db(gw) as store:
        states = store.run_sync(
            lambda db: db.conn.execute(
                "SELECT cert_state, state FROM messages WHERE kind = 'reception' AND org = 'RCPT'"
            ).fetchall(),
            read=True,
        )
    assert states == [("waiting", "active")]
    assert mails_to(sink, "rita@example.com", "Reception certificate") == []

    add(gw, "RCPT", 3, "first bundle")  # the certificate is made and charged now
    sink.wait_for(lambda ms: bool(mails_to(sink, "rita@example.com", "Reception certificate")))
    wait_until(lambda: org_balance(gw, "RCPT") == 1)
    kinds = [
        line.split()[2]
        for line in gw.cli("credits", "statement", "RCPT").stdout.splitlines()
        if line[:4].isdigit()
    ]
    assert kinds == ["purchase", "charge"]
    assert len(mails_to(sink, "rita@example.com", "Certificates wait for credits")) == 1


def test_a_late_bounce_addendum_waits_then_is_charged(gw: Gateway, sink: Sink) -> None:
    add(gw, "ADD", 1, "one message")
    raw = make_message(sender="ada@example.com", to="vanishing@example.org", subject="Late")
    qid = submit_as(gw, "ada@example.com", raw, ["vanishing@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    assert org_balance(gw, "ADD") == 0
    copy = [m for m in sink.to("vanishing@example.org") if qid.encode() in m.data[:3000]][0]
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo("mx.example.org")
        client.mail("<>")
        assert client.rcpt(copy.mail_from)[0] == 250
        code, text = client.data(dsn_for(copy.mail_from, "vanishing@example.org", raw))
    assert code == 250, text  # recorded; its addendum waits for ADD's credits
    sink.wait_for(
        lambda ms: bool(mails_to(sink, "ada@example.com", "Certificates wait for credits"))
    )
    told = mails_to(sink, "ada@example.com", "Certificates wait for credits")[0]
    body = told.message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Addenda waiting: 1" in body, body
    assert not [
        m for m in sink.to("ada@example.com") if (m.message["Subject"] or "").startswith("Addendum")
    ]
    add(gw, "ADD", 2, "top-up")
    addendum_for(sink, qid)
    wait_until(lambda: org_balance(gw, "ADD") == 1)
    kinds = [
        line.split()[2]
        for line in gw.cli("credits", "statement", "ADD").stdout.splitlines()
        if line[:4].isdigit()
    ]
    assert kinds == ["purchase", "reserve", "purchase", "charge"]
