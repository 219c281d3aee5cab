"""``certifica export --subject ADDRESS DIR`` on a real gateway (GDPR art. 15,
docs/erasure.md): what it writes about a recipient and about a sender, that its manifest
checks with ``sha256sum -c``, its refusals, and what it says once the address is erased;
how an address is found in the database's texts and what its commitment is.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest

from relay.cli.export import WITHHELD
from relay.queue.subjects import Matcher, commitment
from tests.conftest import Gateway, Sink
from tests.test_erasure import cert_id_of, certified, files_naming, query, settle


def exported(gw: Gateway, address: str, target: Path) -> dict[str, object]:
    done = gw.cli("export", "--subject", address, str(target))
    assert done.returncode == 0, done.stderr
    assert f"written to {target}" in done.stdout
    checked = subprocess.run(
        ["sha256sum", "--strict", "-c", "MANIFEST.sha256"],
        cwd=target,
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    listed = (target / "MANIFEST.sha256").read_text().splitlines()
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert sorted(line.split("  ", 1)[1] for line in listed) == [
        f for f in files if f != "MANIFEST.sha256"
    ]
    return {
        name: json.loads((target / name).read_text())
        for name in (
            "messages.json",
            "evidence.json",
            "tracking.json",
            "verification-pages.json",
            "account.json",
            "legal-holds.json",
            "erasures.json",
        )
    }


def test_an_export_holds_everything_about_an_address_and_nothing_else(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    about_bob, copy = certified(gateway, mx, ["bob@example.org", "carol@example.net"])
    not_bob, _ = certified(gateway, mx, ["carol@example.net"])
    settle(gateway)

    found = exported(gateway, "bob@example.org", tmp_path / "bob")
    messages = found["messages.json"]
    assert isinstance(messages, list)
    mails = [m for m in messages if m["kind"] == "mail"]
    assert [m["qid"] for m in mails] == [about_bob]
    (mail,) = mails
    assert mail["roles"] == ["recipient"]
    # Of a message bob received, his own recipient row only: carol's is her data.
    assert [r["address"] for r in mail["recipients"]] == ["bob@example.org"]
    assert mail["sha256"] and mail["cert_id"]
    assert not_bob not in json.dumps(messages)
    evidence = found["evidence.json"]
    assert isinstance(evidence, list) and evidence
    assert {e["qid"] for e in evidence} == {about_bob}
    assert {e["event"] for e in evidence} >= {"SubmissionAcceptance", "RelayToNonERDS"}
    assert found["account.json"] == {
        "users": [],
        "app_passwords": [],
        "api_tokens": [],
        "web_sessions": [],
        "reception_owners": [],
        "reception_acks": [],
    }
    assert found["erasures.json"] == []
    # Copies: the message as received (its stored hash) and the certificate as issued.
    eml = (tmp_path / "bob" / "messages" / f"{about_bob}.eml").read_bytes()
    ((sha256,),) = query(gateway, "SELECT sha256 FROM messages WHERE qid = ?", (about_bob,))
    assert hashlib.sha256(eml).hexdigest() == sha256
    # The certificate is the sender's (it names every recipient): not copied, said why.
    assert not (tmp_path / "bob" / "certificates").exists()
    readme = (tmp_path / "bob" / "README.txt").read_text()
    assert readme.startswith("What this mail gateway holds about bob@example.org")
    assert "sha256sum -c MANIFEST.sha256" in readme
    assert "the sender of each message holds its own" in " ".join(readme.split())

    # The sender: both messages, every recipient, its account without the password hash.
    found = exported(gateway, "alice@example.com", tmp_path / "alice")
    qids = {m["qid"] for m in found["messages.json"] if m["kind"] == "mail"}  # type: ignore[union-attr]
    assert {about_bob, not_bob} <= qids
    sent = next(m for m in found["messages.json"] if m["qid"] == about_bob)  # type: ignore[union-attr]
    assert "sender" in sent["roles"]
    assert {r["address"] for r in sent["recipients"]} == {"bob@example.org", "carol@example.net"}
    (user,) = found["account.json"]["users"]  # type: ignore[index]
    assert user["address"] == "alice@example.com" and "password_hash" not in user
    assert not files_naming(tmp_path / "alice", "scrypt")
    # Its certificates are its own: copied as issued.
    pdf = tmp_path / "alice" / "certificates" / f"{cert_id_of(gateway, about_bob)}.pdf"
    assert pdf.read_bytes() == copy


def test_a_recipient_export_names_no_other_recipient_nor_the_senders_connection(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    """To: bob, with secretbcc@example.net as a Bcc (an RCPT the headers do not name)."""
    qid, _ = certified(
        gateway, mx, ["bob@example.org", "secretbcc@example.net"], to_header="bob@example.org"
    )
    settle(gateway)
    assert "secretbcc@example.net" in json.dumps(
        exported(gateway, "alice@example.com", tmp_path / "alice")["evidence.json"]
    )  # the sender's own record names its Bcc recipient

    found = exported(gateway, "bob@example.org", tmp_path / "bob")
    assert files_naming(tmp_path / "bob", "secretbcc") == []
    ((ip, login),) = query(
        gateway, "SELECT client_ip, auth_user FROM messages WHERE qid = ?", (qid,)
    )
    assert ip and login == "alice@example.com"
    (mail,) = [m for m in found["messages.json"] if m["qid"] == qid]  # type: ignore[union-attr]
    for column in ("client_ip", "client_helo", "auth_user", "authentication"):
        assert column not in mail
    assert [r["address"] for r in mail["recipients"]] == ["bob@example.org"]
    assert "delivered_copy" in mail["recipients"][0]  # his own copy's trace, unchanged
    assert WITHHELD not in json.dumps(mail["recipients"][0]["delivered_copy"])
    entries = [e for e in found["evidence.json"] if e["qid"] == qid]  # type: ignore[union-attr]
    assert entries and all(e["recipient"] in (None, "bob@example.org") for e in entries)
    assert all("salt" not in e for e in entries)
    (accepted,) = [e for e in entries if e["event"] == "SubmissionAcceptance"]
    assert accepted["detail"]["recipients"] == ["bob@example.org"]
    assert accepted["detail"]["envelope_from"] == "alice@example.com"
    for key in ("client_ip", "authenticated_user"):
        assert key not in accepted["detail"]
    pages = [v for v in found["verification-pages.json"] if v["qid"] == qid]  # type: ignore[union-attr]
    assert pages
    for page in pages:
        assert [r["address"] for r in page["recipients"]] == ["bob@example.org"]
    # The copy he received is his; the certificate (naming secretbcc) is alice's.
    assert (tmp_path / "bob" / "messages" / f"{qid}.eml").exists()
    assert not (tmp_path / "bob" / "certificates").exists()


def test_an_export_refuses_a_directory_in_use_and_a_non_address(
    gateway: Gateway, tmp_path: Path
) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    refused = gateway.cli("export", "--subject", "bob@example.org", str(used))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"certifica: {used} is not an empty directory: give a new or empty one"
    )
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    bad = gateway.cli("export", "--subject", "bob", str(tmp_path / "new"))
    assert bad.returncode == 2
    assert "is not an e-mail address" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "new").exists()


def test_after_an_erasure_the_export_says_what_remains(
    gateway: Gateway, mx: Sink, tmp_path: Path
) -> None:
    qid, _ = certified(gateway, mx, ["hugo@example.org"])
    settle(gateway)
    assert exported(gateway, "hugo@example.org", tmp_path / "before")["messages.json"]
    erased = gateway.cli("erase", "--subject", "hugo@example.org", "--yes")
    assert erased.returncode == 0, erased.stderr

    found = exported(gateway, "hugo@example.org", tmp_path / "after")
    (erasure,) = found["erasures.json"]  # type: ignore[misc]
    committed = erasure["detail"]["subject"]
    assert committed.startswith("erased:")
    assert found["evidence.json"] == []  # its entries forgot their values
    mails = [m for m in found["messages.json"] if m["kind"] == "mail"]  # type: ignore[union-attr]
    assert [m["qid"] for m in mails] == [qid]
    assert [r["address"] for r in mails[0]["recipients"]] == [committed]
    assert not (tmp_path / "after" / "certificates").exists()
    assert not (tmp_path / "after" / "messages").exists()
    readme = (tmp_path / "after" / "README.txt").read_text()
    assert "This address was erased on" in readme and committed in readme
    spanish = gateway.cli(
        "export", "--subject", "hugo@example.org", "--language", "es", str(tmp_path / "es")
    )
    assert spanish.returncode == 0, spanish.stderr
    readme = (tmp_path / "es" / "README.txt").read_text()
    assert readme.startswith("Lo que este servicio de correo conserva sobre hugo@example.org")
    assert "Esta dirección se suprimió el" in readme
    # The address is only in the README's title: every record names the commitment.
    assert files_naming(tmp_path / "after", "hugo@example.org") == ["README.txt"]


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bob@example.org", True),
        ("To: Bob <Bob@Example.ORG>, carol@example.net", True),
        ("250 2.1.5 <bob@example.org>... Recipient ok.", True),
        ('{"recipients": ["bob@example.org"]}', True),
        ("xbob@example.org", False),
        ("bob@example.org.uk", False),
        ("bob@example.organic", False),
        ("rob.bob@example.org", False),
        ("bob@example-org.net", False),
        ("", False),
    ],
)
def test_the_address_is_found_as_a_whole_in_any_case(text: str, named: bool) -> None:
    match = Matcher("bob@example.org", commitment(b"k" * 32, "bob@example.org"))
    assert match.mentions(text) is named
    assert match.mentions(text.encode()) is named  # a BLOB (a kept header section)


def test_non_ascii_addresses_are_found_behind_json_escapes() -> None:
    address = "josé@exemple.cat"
    match = Matcher("JOSÉ@exemple.cat", commitment(b"k" * 32, address))
    assert match.mentions(json.dumps({"to": [address]}))  # \\u00e9, ensure_ascii
    assert not match.mentions(json.dumps({"to": ["josep@exemple.cat"]}))
    assert match.params()["needle"] == ""  # SQLite's lower() cannot find it: no prefilter


def test_the_commitment_is_keyed_and_ignores_case() -> None:
    one = commitment(b"a" * 32, "Bob@Example.org")
    assert one == commitment(b"a" * 32, " <bob@example.org> ")
    assert one != commitment(b"b" * 32, "bob@example.org")  # another installation
    bare = hashlib.sha256(b"bob@example.org").hexdigest()
    assert re.fullmatch(r"erased:[0-9a-f]{64}", one) and bare not in one
