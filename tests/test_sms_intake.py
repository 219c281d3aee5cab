"""Mail to a phone number through submission (docs/sms.md, "Sending", "Groups",
"Credits"): every RCPT refusal with its code and sentence, numbers written back in
E.164 once, the text and its segments at DATA (too many refused, the opt-out text of
marketing appended and counted), marketing only to contacts with a recorded consent
and no opt-out, groups expanded with the skipped listed and why, mail and SMS in one
message, and the credits each SMS recipient reserves per segment at its price.

One real gateway with ``[sms] enabled`` (its SMSC a test SMSC on loopback), real SMTP
clients over the submission port; contacts and opt-outs written in the gateway's store
as ``certifica contacts`` does; what was accepted read back from the store.
"""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.queue.contacts import NewContact
from relay.queue.credits import balance
from relay.queue.evidence_log import entries_for
from relay.queue.sms import sms_message_row
from relay.queue.states import Role
from relay.queue.store import Store
from relay.sms.encoding import GSM_PART
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.smsc import SmscThread

DOMAIN = "sms.certifica.localhost"
USERS = {
    "alice@example.com": ("ACME", Role.ADMIN),
    "sam@example.com": ("ACME", Role.SENDER),
    "pat@example.com": ("POOR", Role.ADMIN),
}
PUBLIC_URL = "https://certifica.example"


def sms_config(smsc_port: int, tmp: Path) -> str:
    (tmp / "smsc.password").write_text("secret\n")
    return f"""
[web]
public_url = "{PUBLIC_URL}"
[sms]
enabled = true
smsc = "127.0.0.1:{smsc_port}"
system_id = "certifica"
password_file = "{tmp / "smsc.password"}"
source = "Certifica"
default_region = "ES"
marketing_subject = '^\\[(promo|oferta)\\]'
[credits]
email_recipient = 1
sms_segment = 2
[credits.sms_prefix]
"+1" = 5
"+1650" = 7
"""


def open_db(gw: Gateway) -> Store:
    return Store(gw.state / "queue.db", 3600.0)


def query(gw: Gateway, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with open_db(gw) as store:
        return store.run_sync(lambda db: db.conn.execute(sql, args).fetchall(), read=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sms-intake")
    routes = {"example.org": mx.port, "example.com": mx.port, DOMAIN: free_port()}
    with SmscThread() as smsc:
        gateway = start_gateway(
            write_config(tmp, routes, sms_config(smsc.port, tmp)),
            {address: PASSWORD for address in USERS},
        )
        with open_db(gateway) as store:
            for org in ("ACME", "POOR"):
                store.add_organisation(org, f"{org} S.L.", "B12345678", time.time())
            for address, (org, role) in USERS.items():
                assert store.set_membership(address, org=org, role=role)
            now = time.time()
            store.add_contacts(
                "ACME",
                [
                    NewContact("+34600000001", "Ana", ("clients",), now - 86400, "web form"),
                    NewContact(None, "Bea", ("clients",)),
                    NewContact("+34600000003", "Carla", ("clients", "staff")),
                    NewContact("+34600000004", "Dani", ("clients",), now - 86400, "contract"),
                    NewContact("+34600000005", "Eva", ("staff",), now - 86400, "contract"),
                ],
                now,
                "test",
            )
            store.optout_now("ACME", "+34600000004", now, "mo", {"keyword": "BAJA"})
        for org, amount in (("ACME", "100000"), ("POOR", "3")):
            result = gateway.cli("credits", "add", org, amount, "--note", "test")
            assert result.returncode == 0, result.stderr
        yield gateway
        gateway.stop()
    assert_clean_log(gateway.log())


def rcpt(gw: Gateway, address: str, user: str = "alice@example.com") -> tuple[int, str]:
    with gw.smtp(user) as client:
        client.mail(user)
        code, text = client.rcpt(address)
    return code, text.decode()


def send(
    gw: Gateway,
    rcpts: list[str],
    body: str = "Your appointment is tomorrow at 10:00.\r\n",
    user: str = "alice@example.com",
    headers: str = "",
    to: str = "someone",
) -> tuple[int, str]:
    raw = make_message(sender=user, to=to, body=body)
    raw = raw.replace(b"Subject:", headers.encode() + b"Subject:") if headers else raw
    with gw.smtp(user) as client:
        client.mail(user)
        for r in rcpts:
            code, text = client.rcpt(r)
            assert code == 250, (r, text)
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as err:
            code, reply = err.smtp_code, err.smtp_error
    return code, reply.decode()


def accepted(gw: Gateway, *args: Any, **kwargs: Any) -> str:
    code, reply = send(gw, *args, **kwargs)
    assert code == 250, reply
    return reply.rsplit(" ", 1)[1]


def sms_row(gw: Gateway, qid: str) -> dict[str, Any]:
    with open_db(gw) as store:
        found = store.run_sync(lambda db: sms_message_row(db.conn, qid), read=True)
    assert found is not None
    return found


def addresses_of(gw: Gateway, qid: str) -> list[str]:
    return [
        r[0] for r in query(gw, "SELECT address FROM recipients WHERE qid = ? ORDER BY id", qid)
    ]


def acceptance(gw: Gateway, qid: str) -> dict[str, Any]:
    with open_db(gw) as store:
        entries = store.run_sync(lambda db: entries_for(db.conn, qid), read=True)
    first = [e for e in entries if e.event == "SubmissionAcceptance"]
    assert first, [e.event for e in entries]
    return first[0].detail


# -- RCPT ---------------------------------------------------------------------------


def test_sms_disabled_refused_at_rcpt(gateway: Gateway) -> None:
    code, text = rcpt(gateway, f"+34600111222@{DOMAIN}")
    assert code == 550
    assert text == (
        "5.1.2 This gateway does not send SMS: addresses at sms.certifica.localhost cannot "
        "receive mail"
    )


@pytest.mark.parametrize(
    ("address", "reply"),
    [
        (
            "+34912345678",
            "5.1.3 +34912345678 is a fixed-line number, not a mobile: it cannot receive SMS.",
        ),
        ("12345", "5.1.3 12345 is not a valid phone number in the numbering plan of ES."),
        (
            "+447700900123",
            "5.1.3 +447700900123 is not a valid phone number in the numbering plan of GB.",
        ),
        (
            "no+such",
            "5.1.3 no+such is neither a phone number (such as +34600111222) nor a group name "
            "(letters, digits, dots, hyphens).",
        ),
        (
            "nobody",
            "5.1.1 Your organisation has no contacts in the group nobody; its administrator "
            "adds them (certifica contacts add or import, with --group nobody)",
        ),
    ],
)
def test_rcpt_refusals(gw: Gateway, address: str, reply: str) -> None:
    assert rcpt(gw, f"{address}@{DOMAIN}") == (550, reply)


def test_role_not_in_sms_roles_refused(gw: Gateway) -> None:
    code, text = rcpt(gw, f"+34600111222@{DOMAIN}", user="sam@example.com")
    assert (code, text) == (
        550,
        "5.7.1 Your role (sender) may not send SMS on this gateway; the roles that may are: admin",
    )


def test_numbers_normalised_to_e164_once(gw: Gateway) -> None:
    qid = accepted(
        gw,
        [
            f"+34600111222@{DOMAIN}",
            f"600111222@{DOMAIN}",
            f"0034600111222@{DOMAIN}",
            f"+34.600.111.222@{DOMAIN.upper()}",
            f"+16502530000@{DOMAIN}",  # FIXED_LINE_OR_MOBILE (NANP): accepted
            f"+39-312-345-6789@{DOMAIN}",
        ],
    )
    assert addresses_of(gw, qid) == [
        f"+34600111222@{DOMAIN}",
        f"+16502530000@{DOMAIN}",
        f"+393123456789@{DOMAIN}",
    ]
    assert {r[0] for r in query(gw, "SELECT domain FROM recipients WHERE qid = ?", qid)} == {DOMAIN}


# -- DATA ---------------------------------------------------------------------------


def test_text_parts_and_acceptance_evidence(gw: Gateway) -> None:
    body = "Hello Ana,\r\nyour parcel is ready.\r\n-- \r\nACME S.L.\r\n"
    qid = accepted(gw, [f"+34600111222@{DOMAIN}", CERT_ADDRESS], body=body)
    row = sms_row(gw, qid)
    assert row["text"] == "Hello Ana,\nyour parcel is ready."
    assert row["alphabet"] == "gsm" and row["data_coding"] == 0 and row["esm_class"] == 0
    assert row["parts"] == [b"Hello Ana,\nyour parcel is ready.".hex()]
    assert row["sender_id"] == "Certifica" and row["marketing"] == 0 and row["skipped"] == []
    detail = acceptance(gw, qid)["sms"]
    assert detail["segments"] == 1 and detail["alphabet"] == "gsm"
    assert detail["text_sha256"] == row["text_sha256"]
    assert detail["recipients"] == [f"+34600111222@{DOMAIN}"] and detail["skipped"] == []


def test_too_many_segments_refused(gw: Gateway) -> None:
    code, reply = send(gw, [f"+34600111222@{DOMAIN}"], body="a" * (6 * GSM_PART + 1) + "\r\n")
    assert code == 552
    assert reply == (
        "5.3.4 The text needs 7 SMS segments and at most 6 are allowed: shorten it to 918 "
        "characters (the euro sign [ ] { } ~ ^ | \\ count twice)."
    )


def test_unknown_sms_kind_refused(gw: Gateway) -> None:
    code, reply = send(gw, [f"+34600111222@{DOMAIN}"], headers="X-Certifica-SMS: promo\r\n")
    assert (code, reply) == (
        550,
        "5.6.0 X-Certifica-SMS: promo names no kind of SMS; write marketing or transactional, "
        "or leave the field out (transactional)",
    )


def test_marketing_gets_the_optout_text_counted_in_segments(gw: Gateway) -> None:
    body = "b" * 140 + "\r\n"  # one segment alone; two with the opt-out line
    qid = accepted(
        gw,
        [f"+34600000001@{DOMAIN}"],
        body=body,
        headers="X-Certifica-SMS: MARKETING\r\n",
    )
    row = sms_row(gw, qid)
    assert row["text"] == "b" * 140 + f"\nSTOP: {PUBLIC_URL}/sms/optout"
    assert row["marketing"] == 1 and len(row["parts"]) == 2 and row["esm_class"] == 0x40
    assert addresses_of(gw, qid) == [f"+34600000001@{DOMAIN}"]


def test_marketing_without_consent_or_opted_out_skipped(gw: Gateway) -> None:
    qid = accepted(
        gw,
        [f"+34600000001@{DOMAIN}", f"+34600111333@{DOMAIN}", f"+34600000004@{DOMAIN}"],
        headers="X-Certifica-SMS: marketing\r\n",
    )
    assert addresses_of(gw, qid) == [f"+34600000001@{DOMAIN}"]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    reasons = {s["address"]: s["reason"] for s in sms_row(gw, qid)["skipped"]}
    assert reasons == {
        "+34600111333": "no recorded consent to marketing",
        "+34600000004": f"opted out on {day} (reply BAJA)",
    }


def test_a_subject_matching_the_configured_rule_is_marketing(gw: Gateway) -> None:
    """[sms] marketing_subject: the configured rule, besides X-Certifica-SMS."""
    numbers = [f"+34600000001@{DOMAIN}", f"+34600111333@{DOMAIN}"]
    raw = make_message(subject="[Oferta] 20% en diciembre", body="Todo al 20%.\r\n")
    with gw.smtp("alice@example.com") as client:
        client.mail("alice@example.com")
        for r in numbers:
            assert client.rcpt(r)[0] == 250
        code, reply = client.data(raw)
    assert code == 250, reply
    qid = reply.decode().rsplit(" ", 1)[1]
    row = sms_row(gw, qid)
    assert row["marketing"] == 1 and row["text"].endswith(f"STOP: {PUBLIC_URL}/sms/optout")
    assert addresses_of(gw, qid) == [f"+34600000001@{DOMAIN}"]  # the one with a consent
    # The header field wins over the rule.
    qid = accepted(gw, numbers, headers="X-Certifica-SMS: transactional\r\n",
                   body="[Oferta] no es publicidad.\r\n")  # fmt: skip
    assert sms_row(gw, qid)["marketing"] == 0 and addresses_of(gw, qid) == numbers


def test_a_users_sender_id_wins_over_the_organisations(gw: Gateway) -> None:
    assert gw.cli("org", "set", "ACME", "--sms-sender", "ACMEBANK").returncode == 0
    assert gw.cli("users", "set", "sam@example.com", "--sms-sender", "SamDesk").returncode == 0
    try:
        assert sms_row(gw, accepted(gw, [f"+34600111333@{DOMAIN}"]))["sender_id"] == "ACMEBANK"
        # sam is a sender, not in [sms] roles here: the sender ID is read for alice's
        # colleague through the same lookup, so give sam the admin role for the check.
        with open_db(gw) as store:
            assert store.set_membership("sam@example.com", org="ACME", role=Role.ADMIN)
        row = sms_row(gw, accepted(gw, [f"+34600111333@{DOMAIN}"], user="sam@example.com"))
        assert row["sender_id"] == "SamDesk"
    finally:
        with open_db(gw) as store:
            assert store.set_membership("sam@example.com", org="ACME", role=Role.SENDER)
        assert gw.cli("org", "set", "ACME", "--sms-sender", "").returncode == 0


def test_transactional_goes_to_opted_out_numbers(gw: Gateway) -> None:
    qid = accepted(gw, [f"+34600000004@{DOMAIN}", f"+34600111333@{DOMAIN}"])
    assert addresses_of(gw, qid) == [f"+34600000004@{DOMAIN}", f"+34600111333@{DOMAIN}"]


def test_group_expanded_with_skipped_reasons(gw: Gateway) -> None:
    day = time.strftime("%Y-%m-%d", time.gmtime())
    qid = accepted(
        gw,
        [f"Clients@{DOMAIN}", f"staff@{DOMAIN}", f"+34600000001@{DOMAIN}"],
        headers="X-Certifica-SMS: marketing\r\n",
    )
    assert addresses_of(gw, qid) == [f"+34600000001@{DOMAIN}", f"+34600000005@{DOMAIN}"]
    skipped = [(s["name"], s["group"], s["reason"]) for s in sms_row(gw, qid)["skipped"]]
    assert skipped == [
        ("Bea", "clients", "no phone number"),
        ("Carla", "clients", "no recorded consent to marketing"),
        ("Dani", "clients", f"opted out on {day} (reply BAJA)"),
    ]
    # transactional: everyone with a number
    qid = accepted(gw, [f"clients@{DOMAIN}"])
    assert addresses_of(gw, qid) == [
        f"+34600000001@{DOMAIN}",
        f"+34600000003@{DOMAIN}",
        f"+34600000004@{DOMAIN}",
    ]
    assert [s["reason"] for s in sms_row(gw, qid)["skipped"]] == ["no phone number"]


def test_nobody_left_refused(gw: Gateway) -> None:
    code, reply = send(gw, [f"+34600111333@{DOMAIN}"], headers="X-Certifica-SMS: marketing\r\n")
    assert (code, reply) == (
        550,
        "5.7.1 Nothing was sent: every SMS recipient was skipped (+34600111333: no recorded "
        "consent to marketing), and the message has no e-mail recipient",
    )


def test_mail_and_sms_in_one_message(gw: Gateway, mx: Sink) -> None:
    qid = accepted(
        gw,
        ["bob@example.org", f"+34600111222@{DOMAIN}", CERT_ADDRESS],
        to="bob@example.org",
    )
    assert addresses_of(gw, qid) == ["bob@example.org", f"+34600111222@{DOMAIN}"]
    assert query(gw, "SELECT certified FROM messages WHERE qid = ?", qid) == [(1,)]
    assert acceptance(gw, qid)["recipients"] == ["bob@example.org", f"+34600111222@{DOMAIN}"]
    deadline = time.monotonic() + 60
    while not mx.to("bob@example.org") or not any(
        m.message["X-Certifica-Queue-Id"] == qid or qid.encode() in m.data
        for m in mx.to("bob@example.org")
    ):
        assert time.monotonic() < deadline, "bob never got the mail"
        time.sleep(0.1)


# -- credits ------------------------------------------------------------------------


def test_credits_reserved_per_segment_at_the_prefix_price(gw: Gateway) -> None:
    before = org_balance(gw, "ACME")
    body = "c" * 200 + "\r\n"  # two segments
    qid = accepted(
        gw,
        [f"+34600111222@{DOMAIN}", f"+12025550123@{DOMAIN}", f"+16502530000@{DOMAIN}"],
        body=body,
    )  # not certified: SMS reserve all the same
    holds = query(
        gw,
        "SELECT r.address, h.product, h.amount FROM credit_holds h"
        " JOIN recipients r ON r.id = h.recipient_id WHERE h.qid = ? ORDER BY r.id",
        qid,
    )
    assert holds == [
        (f"+34600111222@{DOMAIN}", "sms_segment", 2 * 2),
        (f"+12025550123@{DOMAIN}", "sms_segment", 2 * 5),
        (f"+16502530000@{DOMAIN}", "sms_segment", 2 * 7),
    ]
    assert org_balance(gw, "ACME") == before - 28
    moves = query(
        gw, "SELECT kind, amount, product, units FROM credit_movements WHERE qid = ?", qid
    )
    assert moves == [("reserve", -28, "sms_segment", 6)]
    statement = gw.cli("credits", "statement", "ACME", "--csv")
    assert statement.returncode == 0, statement.stderr
    assert any(qid in line and "sms_segment" in line for line in statement.stdout.splitlines())


def test_short_of_credits_refused(gw: Gateway) -> None:
    code, reply = send(
        gw, [f"+34600111222@{DOMAIN}"], body="d" * 200 + "\r\n", user="pat@example.com"
    )
    assert code == 550
    # Said in words of SMS: an SMS costs credits whether it is certified or not.
    assert reply.startswith(
        "5.7.1 Not enough credits to send this message's SMS: your organisation's balance "
        "is 3 and it needs 4"
    )
    assert "certify" not in reply


def org_balance(gw: Gateway, org: str) -> int:
    with open_db(gw) as store:
        return store.run_sync(lambda db: balance(db.conn, org), read=True)


def test_optout_scope_all_stops_transactional_too() -> None:
    """``[sms] optout_scope = "all"``: a reply STOP (or the operator's opt-out) stops every
    SMS; one made on the web page stops marketing only, since a page cannot prove who
    owns the number (compose on its own)."""
    import dataclasses

    from relay.config import Config, SmsConfig
    from relay.queue.contacts import Audience, OptOut
    from relay.sms.compose import Composed, SmsKind, compose
    from relay.sms.numbers import SmsNumber

    raw = make_message(body="Your parcel is ready.\r\n")
    optouts = {
        "+34600000004": OptOut("ACME", "+34600000004", 0.0, "mo", {"keyword": "STOP"}),
        "+34600000005": OptOut("ACME", "+34600000005", 0.0, "web"),
    }
    audience = Audience({}, {}, optouts)
    targets = [SmsNumber(n, "ES") for n in ("+34600000004", "+34600000005", "+34600000006")]
    for scope, sent in (("marketing", 3), ("all", 2)):
        cfg = dataclasses.replace(Config(), sms=SmsConfig(optout_scope=scope))
        composed = compose(cfg, raw, targets, audience, "ACME", SmsKind.TRANSACTIONAL, 7)
        assert isinstance(composed, Composed)
        assert len(composed.addresses) == sent
        if scope == "all":
            assert [(s["address"], s["reason"]) for s in composed.content.skipped] == [
                ("+34600000004", "opted out on 1970-01-01 (reply STOP)")
            ]


# -- [limits] recipients counts the numbers a group expands to (limit 5 here) ---------


def test_a_group_over_the_recipient_limit_is_refused(gw: Gateway) -> None:
    now = time.time()
    with open_db(gw) as store:
        store.add_contacts(
            "ACME",
            [NewContact(f"+3460100001{i}", f"Crowd {i}", ("crowd",)) for i in range(6)]
            + [NewContact(f"+3460100002{i}", f"Five {i}", ("five",)) for i in range(5)]
            + [NewContact(None, "No number", ("five",))],
            now,
            "test",
        )
    # Alone over the limit: known at RCPT, refused there.
    code, text = rcpt(gw, f"crowd@{DOMAIN}")
    assert (code, text) == (
        552,
        "5.5.3 The group crowd has 6 contacts with a number, more than this gateway's "
        "limit of 5 recipients per message: split the group or the sending",
    )
    # Within it alone, over it with the other recipients: refused at DATA, nothing queued.
    before = query(gw, "SELECT count(*) FROM messages")[0][0]
    code, reply = send(gw, [f"five@{DOMAIN}", "bob@example.org", f"+34601000020@{DOMAIN}"])
    assert (code, reply) == (
        552,
        "5.5.3 With the group five, this message goes to 5 numbers; with the other "
        "recipients that is 6, more than this gateway's limit of 5 recipients per message: "
        "split the sending",
    )
    assert query(gw, "SELECT count(*) FROM messages")[0][0] == before
    # The group alone fits: one row per number (the contact without one skipped).
    qid = accepted(gw, [f"five@{DOMAIN}"])
    assert len(addresses_of(gw, qid)) == 5
