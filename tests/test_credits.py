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
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import generated_for, submit

CONTACT = "billing@provider.example"
PRICES = f"""
[provider]
contact = "{CONTACT}"
[credits]
email_recipient = 1
reception = 2
warn_below = 5
"""
USERS = {
    "alice@example.com": ("ACME", Role.ADMIN),
    "sam@example.com": ("SHORT", Role.SENDER),
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
    gateway = start_gateway(
        write_config(tmp, routes, PRICES), {address: PASSWORD for address in USERS}
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
    assert "balance is 1 credits and it needs 2" in reply and CONTACT in reply, reply
    assert queued_qids(gw) == before  # nothing queued
    assert org_balance(gw, "SHORT") == 1
    assert not list((gw.state / "spool" / "queue").glob("*.eml")) or all(
        p.stem in before for p in (gw.state / "spool" / "queue").glob("*.eml")
    )
    time.sleep(0.5)  # a scan or two: had anything been queued, it would leave now
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
        "balance", "note",
    ]  # fmt: skip
    opening, movements, closing = rows[1], rows[2:-1], rows[-1]
    assert opening[1] == "opening" and closing[1] == "closing"
    assert int(opening[7]) + sum(int(r[6]) for r in movements) == int(closing[7])
    assert int(closing[7]) == org_balance(gw, "ACME")
    assert [r[8] for r in movements if r[8].endswith("(evil)")] == ["'=HYPERLINK(evil)"]
    reserved = [r for r in movements if r[1] == "reserve"]
    assert reserved and all(r[3] and r[4] for r in reserved)  # the message, its certificate

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
        assert "balance is 0 credits and it needs 1" in text.decode()
        with pytest.raises(smtplib.SMTPDataError):  # the same through sendmail
            with gateway.smtp() as client:
                client.sendmail(
                    "alice@example.com", ["d1@example.org", CERT_ADDRESS], make_message()
                )
        assert queued_qids(gateway) == set()
    finally:
        gateway.stop()
    assert_clean_log(gateway.log())
