"""Organisations (docs/accounts.md): ``certifica org`` and ``users --org/--role``
round trips and refusals; which organisation a certified message is attributed to
(submission, MX mode with a registered sender, MX mode through a bound domain,
certified reception); MX-mode refusals of senders who may not send; the migration of
the users of schema 14; export and erasure of the new per-user rows.

One gateway for the module, with a DNS server of the test publishing SPF for the
senders' domains (an SPF pass for an aligned MAIL FROM authenticates an MX copy, README
"Two ways to send certified mail").
"""

from __future__ import annotations

import json
import re
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.smtpd import replies
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer

ADMIN = "ann@acme.test"  # ACME admin: submission
SENDER = "sam@acme.test"  # ACME sender: MX mode, registered
AUDITOR = "aud@acme.test"
DISABLED = "dis@acme.test"
ELSEWHERE = "eve@acme.test"  # a user of OTHER, at ACME's domain
STRANGER = "stranger@acme.test"  # no user: ACME through its bound domain
DOMAINS = ("example.org", "example.net", "acme.test", "closed.test", "solo.test")


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    with DNSServer() as dns:
        for domain in ("acme.test", "closed.test", "solo.test"):
            dns.add(domain, "TXT", "v=spf1 ip4:127.0.0.1 -all")
            dns.add(f"_dmarc.{domain}", "TXT", "v=DMARC1; p=reject")
        tmp = tmp_path_factory.mktemp("orgs")
        cfg = write_config(tmp, dict.fromkeys(DOMAINS, sink.port), dns.config_toml())
        users = [ADMIN, SENDER, AUDITOR, DISABLED, ELSEWHERE]
        gw = start_gateway(cfg, dict.fromkeys(users, PASSWORD))
        for args in (
            ("org", "add", "ACME", "--name", "Acme S.L.", "--legal-id", "B12345678"),
            ("org", "add", "OTHER", "--name", "Other S.p.A."),
            ("org", "add", "CLOSED", "--name", "Closed S.L."),
            ("users", "set", ADMIN, "--org", "ACME", "--role", "admin"),
            ("users", "set", SENDER, "--org", "ACME"),
            ("users", "set", AUDITOR, "--org", "ACME", "--role", "auditor"),
            ("users", "set", DISABLED, "--org", "ACME", "--disable"),
            ("users", "set", ELSEWHERE, "--org", "OTHER"),
            ("org", "domain", "add", "ACME", "ACME.test."),
            ("org", "domain", "add", "CLOSED", "closed.test"),
            ("org", "disable", "CLOSED"),
        ):
            out = gw.cli(*args)
            assert out.returncode == 0, (args, out.stderr)
        yield gw
        gw.stop()
    assert_clean_log(gw.log())


def org_of(gw: Gateway, qid: str) -> str | None:
    with sqlite3.connect(f"file:{gw.state / 'queue.db'}?mode=ro", uri=True, timeout=10) as db:
        row = db.execute("SELECT org FROM messages WHERE qid = ?", (qid,)).fetchone()
    assert row is not None, qid
    return row[0]


def queued(reply: str) -> str:
    found = re.search(r"queued as (\S+)", reply)
    assert found, reply
    return found.group(1)


def send_mx(gw: Gateway, raw: bytes, mail_from: str, rcpt: str = CERT_ADDRESS) -> tuple[int, str]:
    """What the sender's provider does: deliver the Cc copy to the gateway's MX."""
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo("mail.acme.test")
        code, text = client.mail(mail_from)
        assert code == 250, text
        code, text = client.rcpt(rcpt)
        assert code == 250, text
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as err:
            code, reply = err.smtp_code, err.smtp_error
    return code, reply.decode()


def mx_message(sender: str, subject: str) -> bytes:
    return make_message(
        subject=subject,
        sender=sender,
        to="dave@example.org",
        cc=f"erin@example.net, {CERT_ADDRESS}",
    )


# -- the command line ---------------------------------------------------------------


def test_org_round_trip_on_the_command_line(gateway: Gateway) -> None:
    cli = gateway.cli
    listed = cli("org", "list")
    assert listed.returncode == 0, listed.stderr
    acme = next(line for line in listed.stdout.splitlines() if line.startswith("ACME\t"))
    assert acme.split("\t")[:3] == ["ACME", "Acme S.L.", "legal id B12345678"]
    assert re.search(r"\tusers [45]\tbalance 0$", acme)
    assert re.search(r"^CLOSED\t.*\tdisabled$", listed.stdout, re.M)
    shown = cli("org", "show", "ACME").stdout
    assert f"  {ADMIN}\tadmin\n" in shown and f"  {AUDITOR}\tauditor\n" in shown
    assert f"  {DISABLED}\tsender, disabled\n" in shown
    assert "domains (1):\n  acme.test\n" in shown and "balance: 0 credits" in shown
    assert cli("org", "domain", "list", "ACME").stdout == "acme.test\n"

    assert cli("org", "add", "Tmp-1", "--name", "Temporary").returncode == 0
    assert cli("org", "set", "Tmp-1", "--name", "Renamed", "--legal-id", "X1").returncode == 0
    assert "Tmp-1\tRenamed\tlegal id X1\tusers 0\tbalance 0" in cli("org", "list").stdout
    # an internationalised domain is stored in its ASCII form; both spellings find it
    assert cli("org", "domain", "add", "Tmp-1", "Bücher.example").returncode == 0
    assert cli("org", "domain", "list", "Tmp-1").stdout == "xn--bcher-kva.example\n"
    removed = cli("org", "domain", "remove", "Tmp-1", "xn--BCHER-kva.example")
    assert removed.returncode == 0, removed.stderr
    assert cli("org", "domain", "list", "Tmp-1").stdout == ""
    assert cli("org", "disable", "Tmp-1").returncode == 0
    assert "state: disabled" in cli("org", "show", "Tmp-1").stdout
    assert cli("org", "enable", "Tmp-1").returncode == 0
    assert "state: enabled" in cli("org", "show", "Tmp-1").stdout

    added = cli("users", "add", "new@acme.test", "--org", "Tmp-1", "--role", "auditor",
                "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "added to organisation Tmp-1 as auditor" in added.stdout
    line = next(x for x in cli("users", "list").stdout.splitlines() if x.startswith("new@"))
    assert line.split("\t")[1:5] == ["org Tmp-1", "role auditor", "enabled", "TOTP no"]
    moved = cli("users", "set", "new@acme.test", "--org", "default", "--role", "sender")
    assert moved.returncode == 0 and "organisation default, role sender" in moved.stdout
    plain = cli("users", "add", "plain@acme.test", "--password-stdin", stdin=PASSWORD + "\n")
    assert "added to organisation default as sender" in plain.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("org", "add", "acme", "--name", "x"), "organisation ACME exists already"),
        (("org", "add", "no spaces", "--name", "x"), "is not an organisation code"),
        (("org", "add", "NONAME", "--name", " "), "needs a name"),
        (("org", "show", "NOPE"), "there is no organisation NOPE"),
        (("org", "set", "NOPE", "--name", "x"), "there is no organisation NOPE"),
        (("org", "set", "ACME"), "nothing to change"),
        (("org", "disable", "NOPE"), "there is no organisation NOPE"),
        (("org", "domain", "add", "OTHER", "acme.test"), "bound to the organisation ACME"),
        (("org", "domain", "add", "ACME", "not a domain"), "is not a domain name"),
        (("org", "domain", "add", "ACME", "bad-.test"), "is not a valid domain name"),
        (("org", "domain", "add", "ACME"), "which domain?"),
        (("org", "domain", "remove", "OTHER", "acme.test"), "is not bound to OTHER"),
        (("org", "domain", "list", "NOPE"), "there is no organisation NOPE"),
        (("users", "set", SENDER, "--org", "NOPE"), "there is no organisation NOPE"),
        (("users", "set", "ghost@acme.test", "--role", "admin"), "there is no user"),
    ],
)
def test_org_refusals_are_one_sentence(
    gateway: Gateway, args: tuple[str, ...], fragment: str
) -> None:
    out = gateway.cli(*args)
    assert out.returncode == 2, out
    error = [line for line in out.stderr.splitlines() if not line.startswith("certifica: config ")]
    assert len(error) == 1 and fragment in error[0], out.stderr


def test_users_add_refuses_an_unknown_organisation_and_role(gateway: Gateway) -> None:
    out = gateway.cli("users", "add", "x@acme.test", "--org", "NOPE", "--password-stdin",
                      stdin=PASSWORD + "\n")  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "certifica: there is no organisation NOPE; add it first: certifica org add NOPE --name NAME"
    )
    assert "x@acme.test" not in gateway.cli("users", "list").stdout
    bad_role = gateway.cli("users", "add", "x@acme.test", "--role", "owner", "--password-stdin",
                           stdin=PASSWORD + "\n")  # fmt: skip
    assert bad_role.returncode == 2 and "invalid choice: 'owner'" in bad_role.stderr


# -- attribution --------------------------------------------------------------------


def test_submission_is_attributed_to_the_authenticated_user_s_organisation(
    gateway: Gateway,
) -> None:
    client = gateway.smtp(ADMIN)
    try:
        client.mail(ADMIN)
        client.rcpt("bob@example.org")
        client.rcpt(CERT_ADDRESS)
        code, reply = client.data(make_message(subject="by submission", sender=ADMIN))
    finally:
        client.quit()
    assert code == 250, reply
    assert org_of(gateway, queued(reply.decode())) == "ACME"


def test_mx_copy_of_a_registered_sender_is_attributed_to_its_organisation(
    gateway: Gateway,
) -> None:
    code, reply = send_mx(gateway, mx_message(ELSEWHERE, "registered elsewhere"), ELSEWHERE)
    assert code == 250, reply
    # eve is a user of OTHER: her own organisation wins over the one her domain is bound to
    assert org_of(gateway, queued(reply)) == "OTHER"
    code, reply = send_mx(gateway, mx_message(SENDER, "registered at acme"), SENDER)
    assert code == 250, reply
    assert org_of(gateway, queued(reply)) == "ACME"


def test_mx_copy_from_a_bound_domain_is_attributed_to_its_organisation(
    gateway: Gateway, sink: Sink
) -> None:
    code, reply = send_mx(gateway, mx_message(STRANGER, "from a bound domain"), STRANGER)
    assert code == 250, reply
    qid = queued(reply)
    assert org_of(gateway, qid) == "ACME"
    # its certificate goes to that From address
    got = sink.wait_for(
        lambda ms: any(STRANGER in m.rcpt_tos and b"application/pdf" in m.data for m in ms)
    )
    certificate = next(m for m in got if STRANGER in m.rcpt_tos and b"application/pdf" in m.data)
    assert qid.encode() in certificate.data


def test_mx_copy_of_an_unregistered_sender_of_an_unbound_domain_is_refused(
    gateway: Gateway,
) -> None:
    code, reply = send_mx(gateway, mx_message("who@solo.test", "unbound"), "who@solo.test")
    assert f"{code} {reply}" == replies.SENDER_NOT_REGISTERED.format(sender="who@solo.test")


def test_mx_copy_of_an_auditor_or_a_disabled_account_is_refused(gateway: Gateway) -> None:
    """The "send" row of the matrix in MX mode: an auditor, a disabled user and an
    address of a disabled organisation's bound domain are refused 5.7.1 at end of DATA,
    once the copy authenticated."""
    for sender in (AUDITOR, DISABLED, "someone@closed.test"):
        code, reply = send_mx(gateway, mx_message(sender, "may not send"), sender)
        assert f"{code} {reply}" == replies.SENDER_MAY_NOT_SEND.format(sender=sender)
    # not authenticated (SPF fails for this MAIL FROM): refused for that, not for the role
    code, reply = send_mx(gateway, mx_message(AUDITOR, "forged"), "x@example.net")
    assert code == 550 and "may not send" not in reply


def test_reception_is_attributed_to_the_owner_s_organisation_else_its_domain_s(
    gateway: Gateway,
) -> None:
    expected = {ELSEWHERE: "OTHER", "boss@acme.test": "ACME", "someone@solo.test": None}
    for owner, org in expected.items():
        out = gateway.cli("reception", "enable", owner, "--no-ack-sender")
        assert out.returncode == 0, out.stderr
        forward = re.search(r"recepcion\+[a-z2-7]+@certifica\.localhost", out.stdout)
        assert forward, out.stdout
        raw = make_message(subject=f"for {owner}", sender="partner@example.net", to=owner, cc="")
        code, reply = send_mx(gateway, raw, "partner@example.net", rcpt=forward.group(0))
        assert code == 250, reply
        assert org_of(gateway, queued(reply)) == org, owner


# -- migration ----------------------------------------------------------------------


def test_schema_14_users_migrate_into_default_as_senders(tmp_path: Path) -> None:
    """Migration 15: the users of a database at schema 14 join the organisation
    ``default`` as senders, enabled, without a second factor."""
    from relay.queue.migrations import MIGRATIONS, migrate, statements

    conn = sqlite3.connect(tmp_path / "queue.db", isolation_level=None)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY)")
    for number, script in enumerate(MIGRATIONS[:14], start=1):
        for statement in statements(script):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (?)", (number,))
    for address in ("old@example.com", "older@example.net"):
        conn.execute(
            "INSERT INTO users (address, password_hash, created) VALUES (?, 'scrypt$x', ?)",
            (address, time.time()),
        )
    assert migrate(conn) == len(MIGRATIONS)
    rows = conn.execute(
        "SELECT address, org, role, disabled, totp_secret FROM users ORDER BY address"
    ).fetchall()
    assert rows == [
        ("old@example.com", "default", "sender", 0, None),
        ("older@example.net", "default", "sender", 0, None),
    ]
    org = conn.execute("SELECT name, disabled, balance FROM organisations WHERE code = 'default'")
    assert org.fetchall() == [("Default organisation", 0, 0)]
    conn.close()
    from relay.queue.store import Store

    with Store(tmp_path / "queue.db", 60.0) as store:
        account = store.account_now("old@example.com")
    assert account is not None and account.active and not account.totp
    assert (account.org, account.role) == ("default", "sender")


# -- data protection ----------------------------------------------------------------


def test_export_lists_and_erasure_removes_the_user_s_own_rows(
    gateway: Gateway, tmp_path: Path
) -> None:
    user = "leaver@acme.test"
    added = gateway.cli("users", "add", user, "--org", "ACME", "--password-stdin",
                        stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    secret = gateway.cli("users", "app-password", "add", user, "--name", "phone")
    secret_text = secret.stdout.strip().splitlines()[-1]
    with sqlite3.connect(gateway.state / "queue.db", timeout=10) as db:  # as the console and API do
        db.execute(
            "INSERT INTO web_sessions (id_hash, address, created, last_seen, csrf, stage, ip,"
            " user_agent) VALUES ('feedface', ?, 1, 2, 'csrf-secret', 'full', '192.0.2.7', 'Firefox')",
            (user,),
        )
        db.execute(
            "INSERT INTO api_tokens (address, name, token_hash, created) VALUES (?, 'erp', 'cafe', 3)",
            (user,),
        )
    out = gateway.cli("export", "--subject", user, str(tmp_path / "export"))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "export" / "account.json").read_text()
    account = json.loads(text)
    assert [u["org"] for u in account["users"]] == ["ACME"]
    assert account["users"][0]["role"] == "sender" and account["users"][0]["second_factor"] == 0
    assert [a["name"] for a in account["app_passwords"]] == ["phone"]
    assert [t["name"] for t in account["api_tokens"]] == ["erp"]
    assert account["web_sessions"][0]["ip"] == "192.0.2.7"
    for secret_value in (secret_text, "feedface", "csrf-secret", "cafe", "scrypt$"):
        assert secret_value not in text
    erased = gateway.cli("erase", "--subject", user, "--yes")
    assert erased.returncode == 0, erased.stderr
    with sqlite3.connect(f"file:{gateway.state / 'queue.db'}?mode=ro", uri=True) as db:
        for table in ("users", "app_passwords", "api_tokens", "web_sessions"):
            left = db.execute(f"SELECT count(*) FROM {table} WHERE address = ?", (user,))  # noqa: S608
            assert left.fetchone() == (0,), table
