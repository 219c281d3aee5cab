"""``certifica contacts`` (docs/sms.md, "Contacts, consent and opt-out"), ``org set
--sms-sender/--sms-number`` and ``users set --sms-sender``: contacts added, imported
from CSV (bad rows reported with their line and left out, the rest imported), listed
(as CSV safe for spreadsheets, which imports again), removed; opt-outs and consents
recorded as evidence entries that ``certifica evidence verify`` checks.

The real command against a state directory of its own; no gateway needs to run.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from relay.queue.evidence_log import entries_for
from relay.queue.store import Store
from tests.conftest import PASSWORD, run_cli


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("contacts")
    cfg = tmp / "config.toml"
    cfg.write_text('[gateway]\nstate_dir = "state"\n[sms]\ndefault_region = "ES"\n')
    for org in ("ACME", "COPY", "SET"):
        result = run_cli(cfg, "org", "add", org, "--name", f"{org} S.L.")
        assert result.returncode == 0, result.stderr
    result = run_cli(
        cfg, "users", "add", "ann@acme.test", "--org", "SET", "--password-stdin", stdin=PASSWORD
    )
    assert result.returncode == 0, result.stderr
    return cfg


def ok(config: Path, *args: str) -> str:
    result = run_cli(config, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(config: Path, *args: str) -> str:
    result = run_cli(config, *args)
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "state directory" not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def events(config: Path) -> list[tuple[str, dict[str, object]]]:
    with Store(config.parent / "state" / "queue.db", 3600.0) as store:
        found = store.run_sync(lambda db: entries_for(db.conn, "contacts"), read=True)
    return [(e.event, e.detail) for e in found]


def test_add_list_remove(config: Path) -> None:
    out = ok(
        config,
        "contacts", "add", "ACME", "600 111 222", "--name", "Ana", "--group", "Clients",
        "--group", "vip", "--consent", "marketing", "--consent-source", "web form",
        "--consent-date", "2026-11-30",
    )  # fmt: skip
    assert out == "ACME: contact +34600111222 added\n"
    ok(config, "contacts", "add", "ACME", "--name", "Bea", "--group", "clients")
    ok(config, "contacts", "add", "ACME", "+393123456789", "--name", "Carlo")
    listed = ok(config, "contacts", "list", "ACME", "--group", "CLIENTS")
    assert listed.splitlines() == [
        "+34600111222\tAna\tgroups clients,vip\tmarketing consent 2026-11-30 (web form)",
        "(no number)\tBea\tgroups clients\tno marketing consent",
        "2 contacts",
    ]
    consent = [d for e, d in events(config) if e == "SmsConsentRecorded"]
    assert consent and consent[0]["number"] == "+34600111222"
    assert consent[0]["source"] == "web form" and consent[0]["organisation"] == "ACME"
    assert ok(config, "contacts", "remove", "ACME", "+39 312 345 6789").startswith(
        "ACME: contact +393123456789 removed"
    )
    assert "Carlo" not in ok(config, "contacts", "list", "ACME")
    # A contact without a number is removed by its name.
    assert "no contact without a number named Ana" in refused(
        config, "contacts", "remove", "ACME", "--name", "Ana"
    )
    assert "give the contact's NUMBER, or --name" in refused(config, "contacts", "remove", "ACME")
    assert ok(config, "contacts", "remove", "ACME", "--name", "Bea").startswith(
        "ACME: 1 contact(s) without a number named Bea removed"
    )
    assert ok(config, "contacts", "list", "ACME").splitlines()[-1] == "1 contacts"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (
            ["ACME", "+34912345678"],
            "+34912345678 is a fixed-line number, not a mobile: it cannot receive SMS.",
        ),
        (["ACME"], "a contact needs a number or a name"),
        (
            ["ACME", "+34600000009", "--consent", "marketing"],
            "a consent needs its source (where it was given: a form, a contract)",
        ),
        (
            ["ACME", "+34600000009", "--consent-source", "x"],
            "--consent-source and --consent-date go with --consent marketing",
        ),
        (
            ["ACME", "+34600000009", "--group", "12345"],
            "'12345' is not a group name: letters, digits, dots, hyphens and underscores, "
            "starting with a letter or digit and not only digits",
        ),
        (["NOPE", "+34600000009"], "there is no organisation 'NOPE'"),
    ],
)
def test_add_refusals(config: Path, args: list[str], sentence: str) -> None:
    assert refused(config, "contacts", "add", *args) == f"certifica: {sentence}"


def test_add_twice_refused(config: Path) -> None:
    ok(config, "contacts", "add", "ACME", "+34600222333")
    assert refused(config, "contacts", "add", "ACME", "600222333") == (
        "certifica: +34600222333 is already a contact of ACME; remove it first to change it"
    )


def test_import_reports_bad_rows_and_imports_the_rest(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "contacts.csv"
    path.write_text(
        "number,name,groups,consent,consent_source,consent_date\r\n"
        "+34600300001,Dora,team;Clients,marketing,fair 2026,2026-10-01\r\n"  # 2
        "+34912345678,Fixed,team,,,\r\n"  # 3: a fixed line
        '600300002,=HYPERLINK("http://evil"),team,,,\r\n'  # 4: imported, shown safely
        "+34600300003,Gus,team,yes,,\r\n"  # 5: consent is marketing or empty
        "+34600300001,Dora again,team,,,\r\n"  # 6: twice in the file
        "+34600300004,Hal,team,marketing,,\r\n"  # 7: no source
        "+34600300005,Ivy\r\n"  # 8: two fields
        "\r\n"
        "+34600300006,Jo,team,marketing,contract,30/11/2026\r\n",  # 10: not a date
        encoding="utf-8",
    )
    result = run_cli(config, "contacts", "import", "ACME", str(path))
    assert result.returncode == 1
    assert result.stdout == "ACME: 2 contacts imported, 6 left out\n"
    reported = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert reported == [
        "line 3: left out: +34912345678 is a fixed-line number, not a mobile: it cannot "
        "receive SMS.",
        "line 5: left out: consent is empty or marketing, not 'yes'",
        "line 6: left out: +34600300001 is on line 2 too",
        "line 7: left out: a consent needs its source (where it was given: a form, a contract)",
        "line 8: left out: 2 fields, not 6",
        "line 10: left out: '30/11/2026' is not a date such as 2026-11-30",
    ]
    rows = list(
        csv.reader(io.StringIO(ok(config, "contacts", "list", "ACME", "--group", "team", "--csv")))
    )
    assert rows == [
        ["number", "name", "groups", "consent", "consent_source", "consent_date", "opted_out"],
        ["'+34600300002", '\'=HYPERLINK("http://evil")', "team", "", "", "", ""],
        ["'+34600300001", "Dora", "clients;team", "marketing", "fair 2026", "2026-10-01", ""],
    ]
    # what list --csv wrote imports again (less its last column)
    again = tmp_path / "again.csv"
    again.write_text(
        "\r\n".join(",".join(f'"{c}"' for c in row[:6]) for row in rows) + "\r\n",
        encoding="utf-8",
    )
    ok(config, "contacts", "import", "COPY", str(again))
    assert "+34600300001\tDora\tgroups clients,team\tmarketing consent 2026-10-01 (fair 2026)" in (
        ok(config, "contacts", "list", "COPY")
    )


def test_import_needs_the_header(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("phone,name\r\n+34600300001,Dora\r\n")
    assert refused(config, "contacts", "import", "ACME", str(path)) == (
        "certifica: the first line of the file must be the header "
        "number,name,groups,consent,consent_source,consent_date"
    )


def test_optout_and_optin_are_evidence(config: Path) -> None:
    ok(config, "contacts", "add", "ACME", "+34600444555", "--name", "Opt")
    assert ok(config, "contacts", "optout", "ACME", "600444555") == (
        "ACME: +34600444555 opted out\n"
    )
    assert ok(config, "contacts", "optout", "ACME", "600444555") == (
        "ACME: +34600444555 was opted out already\n"
    )
    assert "\topted out " in ok(config, "contacts", "list", "ACME").split("Opt")[1]
    assert ok(config, "contacts", "optin", "ACME", "600444555") == (
        "ACME: +34600444555 opted in again\n"
    )
    found = [(e, d["number"], d.get("how")) for e, d in events(config) if e.startswith("SmsOpt")]
    assert found[-2:] == [
        ("SmsOptOut", "+34600444555", "operator"),
        ("SmsOptIn", "+34600444555", None),
    ]
    verify = run_cli(config, "evidence", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_sender_ids_and_number(config: Path) -> None:
    assert ok(
        config, "org", "set", "SET", "--sms-sender", "Set Co", "--sms-number", "+34 600 999 888"
    ) == ("organisation SET: SMS sender ID Set Co, SMS number +34600999888\n")
    assert "SMS sender ID: Set Co; SMS number: +34600999888" in ok(config, "org", "show", "SET")
    assert refused(config, "org", "set", "SET", "--sms-sender", "Much Too Long") == (
        "certifica: 'Much Too Long' is not an SMS sender ID: 1 to 11 letters and digits (not "
        "only digits), or an international number such as +34600111222; '' clears it"
    )
    assert refused(config, "org", "set", "SET", "--sms-number", "600999888") == (
        "certifica: '600999888' is not an international number: write + and the country "
        "code, such as +34600111222; '' clears it"
    )
    assert ok(config, "users", "set", "ann@acme.test", "--sms-sender", "+34600999888") == (
        "user ann@acme.test: SMS sender ID +34600999888\n"
    )
    with Store(config.parent / "state" / "queue.db", 3600.0) as store:
        import asyncio

        assert asyncio.run(store.sms_sender_of("ann@acme.test")) == "+34600999888"
        ok(config, "users", "set", "ann@acme.test", "--sms-sender", "")
        assert asyncio.run(store.sms_sender_of("ann@acme.test")) == "Set Co"


def test_sender_id_and_number_of_another_organisation_refused(config: Path) -> None:
    for org in ("UNIQA", "UNIQB"):
        ok(config, "org", "add", org, "--name", f"{org} S.L.")
    added = run_cli(
        config, "users", "add", "bo@uniqb.test", "--org", "UNIQB", "--password-stdin",
        stdin=PASSWORD,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    ok(config, "org", "set", "UNIQA", "--sms-sender", "UniqBank", "--sms-number", "+34600555444")
    assert refused(config, "org", "set", "UNIQB", "--sms-sender", "UNIQBANK") == (
        "certifica: the SMS sender ID UNIQBANK is already used by organisation UNIQA (UNIQA "
        "S.L.): phones and the opt-out page could not tell them apart; give --force to share "
        "it anyway"
    )
    assert refused(config, "users", "set", "bo@uniqb.test", "--sms-sender", "uniqbank") == (
        "certifica: the SMS sender ID uniqbank is already used by organisation UNIQA (UNIQA "
        "S.L.): phones and the opt-out page could not tell them apart; give --force to share "
        "it anyway"
    )
    assert refused(config, "org", "set", "UNIQB", "--sms-number", "+34 600 555 444") == (
        "certifica: the SMS number +34600555444 is already that of organisation UNIQA (UNIQA "
        "S.L.): a reply to it could only reach one of them; give --force to share it anyway"
    )
    # a user's sender ID counts as its organisation's; the same organisation may reuse it
    ok(config, "users", "set", "bo@uniqb.test", "--sms-sender", "BoSales")
    assert refused(config, "org", "set", "UNIQA", "--sms-sender", "bosales").startswith(
        "certifica: the SMS sender ID bosales is already used by bo@uniqb.test of "
        "organisation UNIQB (UNIQB S.L.)"
    )
    ok(config, "org", "set", "UNIQB", "--sms-sender", "BoSales")
    assert ok(config, "org", "show", "UNIQB").count("SMS sender ID: BoSales") == 1
    # nothing was changed by the refusals; --force shares, and says so in the evidence
    assert "SMS number: -" in ok(config, "org", "show", "UNIQB")
    ok(config, "org", "set", "UNIQB", "--sms-number", "+34600555444", "--force")
    changes = [d for e, d in events(config) if e == "SmsSenderChanged"]
    mine = [(d.get("user"), d["organisation"], d["field"], d["old"], d["new"], d["forced"])
            for d in changes if str(d["organisation"]).startswith("UNIQ")]  # fmt: skip
    assert mine == [
        (None, "UNIQA", "sms_sender", None, "UniqBank", False),
        (None, "UNIQA", "sms_number", None, "+34600555444", False),
        ("bo@uniqb.test", "UNIQB", "sms_sender", None, "BoSales", False),
        (None, "UNIQB", "sms_sender", None, "BoSales", False),
        (None, "UNIQB", "sms_number", None, "+34600555444", True),
    ]
    assert all(str(d["actor"]).startswith("operator:") for d in changes)
    verify = run_cli(config, "evidence", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- E2 (security review): consent sources and what `contacts list` writes ---------------


@pytest.mark.parametrize(
    "source",
    ["\x1b]0;pwned\x07form", "web\x1b[2Jform", "form\u202e", "a\tb\x7f", "web\u2066form\u2069"],
)
def test_a_consent_source_with_control_characters_is_refused(config: Path, source: str) -> None:
    args = ["contacts", "add", "ACME", "+34600400001", "--consent", "marketing"]
    assert refused(config, *args, "--consent-source", source) == (
        "certifica: the consent source holds control characters"
    )


def test_import_refuses_such_a_consent_source_and_the_list_writes_none(
    config: Path, tmp_path: Path
) -> None:
    path = tmp_path / "escapes.csv"
    path.write_text(
        "number,name,groups,consent,consent_source,consent_date\r\n"
        "+34600400002,Kim,esc,marketing,\x1b]0;pwned\x07form,2026-11-30\r\n"  # 2
        "+34600400003,Lou,esc,marketing,form \u202eright,2026-11-30\r\n"  # 3
        "+34600400004,Max,esc,marketing,fair 2026,2026-11-30\r\n",
        encoding="utf-8",
    )
    result = run_cli(config, "contacts", "import", "ACME", str(path))
    assert result.returncode == 1
    reported = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert reported == [
        "line 2: left out: the consent source holds control characters",
        "line 3: left out: the consent source holds control characters",
    ]
    # One stored before the check existed (written to the store directly) is listed
    # with its characters escaped, in text and in CSV alike.
    with Store(config.parent / "state" / "queue.db", 3600.0) as store:
        store.run_sync(
            lambda db: db.conn.execute(
                "UPDATE contacts SET consent_source = ?, name = ? WHERE number = ?",
                ("\x1b[31mform\u202e\x07", "M\x1bax", "+34600400004"),
            )
        )
    for args in (["--group", "esc"], ["--group", "esc", "--csv"]):
        out = ok(config, "contacts", "list", "ACME", *args)
        assert not any(c not in "\t\r\n" and not c.isprintable() for c in out), out
        assert "\\x1b[31mform\\u202e\\x07" in out and "M\\x1bax" in out


def test_a_field_over_the_csv_limit_is_named_with_its_line(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_text(
        "number,name,groups,consent,consent_source,consent_date\r\n"
        "+34600400005,Ned,big,,,\r\n"
        f'+34600400006,"{"x" * 200_000}",big,,,\r\n',
        encoding="utf-8",
    )
    limit = f"{csv.field_size_limit():,}"
    assert refused(config, "contacts", "import", "ACME", str(path)) == (
        f"certifica: line 3 of the file cannot be read: a field is longer than {limit} "
        "characters (a quote left open makes the rest of the file one field)"
    )
