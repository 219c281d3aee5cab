"""``certifica erase --subject`` on a real gateway (docs/erasure.md): certified mail to
and from addresses, one erased, then the bytes of the database and of every file of the
state directory searched for the address; what proves the certificates still proves it
(``certifica evidence verify``, ``certifica verify`` of the sender's copy, the
verification page over real HTTP); a message under legal hold is kept; a message still
in the queue makes the command refuse; a second run changes nothing.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import http.client
import json
import re
import smtplib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relay.cli.common import operator_name
from relay.queue.erasure import StillActive
from tests import test_reception
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    free_port,
    make_message,
    start_gateway,
    write_config,
)
from tests.test_certified_sending import certificate_pdf, generated_for, submit
from tests.test_late_bounce import addendum_for, dsn_for
from tests.test_reception import OWNER, send_to_owner, signed, wait_document
from tests.test_reception import message as reception_message
from tests.test_tracking_e2e import addenda, copy_for, html_message
from tests.test_verification_http import fetch
from tests.test_verification_record import certificate_of, embedded_evidence

DAVE = "dave@example.com"
world = test_reception.world  # the gateway with a reception owner, its mailbox, DKIM in DNS


@pytest.fixture(scope="module")
def site(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Sink]]:
    """The gateway with its public listener on a known port (the verification page and
    tracking), two users who send, and an MX that defers gina (her message stays in the
    queue)."""
    sink = sink_server.start(
        Sink(rcpt_reply=lambda a: "450 4.2.0 Try later" if a.startswith("gina@") else None)
    )
    tmp = tmp_path_factory.mktemp("erase")
    port = free_port()
    cfg = write_config(
        tmp, {"example.org": sink.port, "example.net": sink.port, "example.com": sink.port}
    )
    text = cfg.read_text().replace('http = "127.0.0.1:0"', f'http = "127.0.0.1:{port}"')
    text += (
        f'\n[web]\npublic_url = "http://127.0.0.1:{port}"\n'
        "[tracking]\nenabled = true\naddendum_interval = 0.0\nfast_seconds = 0.0\n"
    )
    cfg.write_text(text)
    gw = start_gateway(cfg, users={"alice@example.com": PASSWORD, DAVE: PASSWORD})
    yield gw, sink
    gw.stop()
    assert_clean_log(gw.log())


def certified(
    gw: Gateway,
    sink: Sink,
    to: list[str],
    sender: str = "alice@example.com",
    to_header: str | None = None,
) -> tuple[str, bytes]:
    """Send a certified message (its To: header ``to_header``, by default every one of
    ``to``); its queue id and the certificate the sender received."""
    raw = make_message(
        sender=sender, to=to_header or ", ".join(to), subject=f"Contract {time.monotonic_ns()}"
    )
    with gw.smtp(user=sender) as client:
        client.mail(sender)
        for rcpt in [*to, CERT_ADDRESS]:
            code, reply = client.rcpt(rcpt)
            assert code == 250, reply
        code, reply = client.data(raw)
        assert code == 250, reply
    qid = reply.decode().rsplit(" ", 1)[1]
    return qid, certificate_of(sink, qid)


def settle(gw: Gateway, timeout: float = 60.0) -> None:
    """Wait until the queue is empty (certificate mails delivered, messages closed)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = gw.cli("queue", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        if not json.loads(listed.stdout):
            return
        assert time.monotonic() < deadline, listed.stdout
        time.sleep(0.2)


def checkpointed(gw: Gateway) -> None:
    """Fold the WAL into the database file, so its bytes are what the disk holds."""
    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def files_naming(root: Path, address: str) -> list[str]:
    """Every file under ``root`` whose bytes hold ``address`` (any case)."""
    pattern = re.compile(re.escape(address.encode()), re.IGNORECASE)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and pattern.search(p.read_bytes())
    )


def status_of(url: str, agent: str = "Mozilla/5.0") -> int:
    """The HTTP status of GET ``url`` (redirects not followed, body not decoded)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    try:
        conn.request("GET", parts.path, headers={"User-Agent": agent})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def query(gw: Gateway, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def cert_id_of(gw: Gateway, qid: str) -> str:
    ((cert_id,),) = query(gw, "SELECT cert_id FROM messages WHERE qid = ?", (qid,))
    return str(cert_id)


def test_erasing_a_recipient_removes_it_and_keeps_the_proof(
    site: tuple[Gateway, Sink], tmp_path: Path
) -> None:
    gw, sink = site
    about_bob, copy = certified(gw, sink, ["bob@example.org", "carol@example.net"])
    not_bob, _ = certified(gw, sink, ["carol@example.net"])
    settle(gw)
    certificates = gw.state / "certificates"
    bob_pdf = certificates / f"{cert_id_of(gw, about_bob)}.pdf"
    carol_pdf = certificates / f"{cert_id_of(gw, not_bob)}.pdf"
    assert bob_pdf.exists() and carol_pdf.exists()
    assert (gw.state / "spool" / "archive" / f"{about_bob}.eml").exists()
    checkpointed(gw)
    before = files_naming(gw.state, "bob@example.org")  # the search finds it before
    assert "queue.db" in before and f"spool/archive/{about_bob}.eml" in before, before

    # Without --yes and without a terminal: a refusal, nothing changed.
    asked = gw.cli("erase", "--subject", "bob@example.org", stdin="")
    assert asked.returncode == 2
    assert "refusing to erase without confirmation; add --yes" in asked.stderr
    assert "Traceback" not in asked.stderr
    assert asked.stdout.startswith("Erasing bob@example.org would do this:")
    assert "1 message(s) (0 sent by bob@example.org)" in asked.stdout
    assert bob_pdf.exists()

    done = gw.cli("erase", "--subject", "Bob@Example.ORG", "--yes")
    assert done.returncode == 0, done.stderr
    assert "bob@example.org erased" in done.stdout

    # The address is in no byte of the database nor of the state dir: the command's own
    # checkpoint emptied the WAL (and again after folding in what the gateway wrote since).
    assert files_naming(gw.state, "bob@example.org") == []
    checkpointed(gw)
    assert files_naming(gw.state, "bob@example.org") == []
    # Its messages' certificates and spool copies are gone; carol's other message stays.
    assert not bob_pdf.exists()
    assert not (gw.state / "spool" / "archive" / f"{about_bob}.eml").exists()
    assert carol_pdf.exists()
    assert (gw.state / "spool" / "archive" / f"{not_bob}.eml").exists()
    # Carol's row of the same message keeps its address; bob's is a commitment.
    rows = dict(query(gw, "SELECT address, status FROM recipients WHERE qid = ?", (about_bob,)))
    assert rows.get("carol@example.net") == "delivered"
    (committed,) = [a for a in rows if a != "carol@example.net"]
    # The commitment is an HMAC under the installation's key, made when the gateway started.
    key_file = gw.state / "keys" / "subject.key"
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    mac = hmac.new(key_file.read_bytes(), b"bob@example.org", hashlib.sha256).hexdigest()
    assert committed == f"erased:{mac}"

    # The Erasure entry: who, what scope, the commitment, never the address.
    ((detail,),) = query(gw, "SELECT detail FROM evidence WHERE event = 'Erasure'")
    erasure = json.loads(str(detail))
    assert erasure["operator"] == getpass.getuser()
    assert erasure["subject"] == committed
    assert erasure["scope"]["files"] >= 2 and erasure["scope"]["evidence_entries"] >= 2

    # The chain still verifies; the sender's copy still verifies, offline and on its page.
    audit = gw.cli("evidence", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    saved = tmp_path / "sender-copy.pdf"
    saved.write_bytes(copy)
    verified = gw.cli("verify", str(saved))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    url = embedded_evidence(copy, tmp_path)["verification"]["url"]
    page = fetch(url)
    assert page.status == 200
    assert "b**@example.org" not in page.text
    checked = fetch(url + "/check", "POST", data=copy)
    assert checked.status == 200, checked.text
    answer = checked.json()
    assert answer["same_file"] is True
    assert answer["verdict"] == "valid"

    # Running it again: nothing left, nothing recorded.
    again = gw.cli("erase", "--subject", "bob@example.org", "--yes")
    assert again.returncode == 0, again.stderr
    assert "Nothing to erase" in again.stdout
    assert len(query(gw, "SELECT seq FROM evidence WHERE event = 'Erasure'")) == 1


def test_erasing_a_sender_removes_its_account(site: tuple[Gateway, Sink], tmp_path: Path) -> None:
    gw, sink = site
    qid, copy = certified(gw, sink, ["erin@example.org"], sender=DAVE)
    settle(gw)
    pdf = gw.state / "certificates" / f"{cert_id_of(gw, qid)}.pdf"
    assert pdf.exists()
    done = gw.cli("erase", "--subject", DAVE, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"1 message(s) (1 sent by {DAVE})" in done.stdout
    assert f"The user account {DAVE} was removed." in done.stdout
    assert DAVE not in gw.cli("users", "list").stdout
    checkpointed(gw)
    assert files_naming(gw.state, DAVE) == []
    assert not pdf.exists()
    # The recipient's row stays, her address too: it is not dave's data.
    assert query(gw, "SELECT 1 FROM recipients WHERE address = 'erin@example.org'")
    saved = tmp_path / "dave-copy.pdf"
    saved.write_bytes(copy)
    assert gw.cli("verify", str(saved)).returncode == 0
    assert gw.cli("evidence", "verify").returncode == 0


def test_a_message_under_legal_hold_is_kept_until_released(site: tuple[Gateway, Sink]) -> None:
    gw, sink = site
    held, _ = certified(gw, sink, ["frank@example.org"])
    other, _ = certified(gw, sink, ["frank@example.org", "carol@example.net"])
    settle(gw)
    held_pdf = gw.state / "certificates" / f"{cert_id_of(gw, held)}.pdf"
    other_pdf = gw.state / "certificates" / f"{cert_id_of(gw, other)}.pdf"
    # What `certifica evidence legal-hold CERT-ID` records (relay.queue.holds).
    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    with conn:
        conn.execute(
            "INSERT INTO legal_holds (cert_id, qid, since, note) VALUES (?, ?, ?, 'claim 12/2026')",
            (cert_id_of(gw, held), held, time.time()),
        )
    conn.close()

    done = gw.cli("erase", "--subject", "frank@example.org", "--yes")
    assert done.returncode == 0, done.stderr
    assert "1 message(s) under legal hold were kept" in done.stdout
    assert held_pdf.exists() and (gw.state / "spool" / "archive" / f"{held}.eml").exists()
    assert not other_pdf.exists()
    assert query(
        gw, "SELECT 1 FROM recipients WHERE qid = ? AND address = ?", (held, "frank@example.org")
    )
    assert not query(
        gw, "SELECT 1 FROM recipients WHERE qid = ? AND address = ?", (other, "frank@example.org")
    )
    again = gw.cli("erase", "--subject", "frank@example.org", "--yes")
    assert "Nothing to erase" in again.stdout and "under legal hold" in again.stdout

    conn = sqlite3.connect(gw.state / "queue.db", timeout=10)
    with conn:
        conn.execute("DELETE FROM legal_holds WHERE qid = ?", (held,))
    conn.close()
    released = gw.cli("erase", "--subject", "frank@example.org", "--yes")
    assert released.returncode == 0, released.stderr
    assert not held_pdf.exists()
    checkpointed(gw)
    assert files_naming(gw.state, "frank@example.org") == []
    assert len(query(gw, "SELECT seq FROM evidence WHERE event = 'Erasure'")) >= 2
    assert gw.cli("evidence", "verify").returncode == 0


def test_a_message_still_in_the_queue_makes_it_refuse(site: tuple[Gateway, Sink]) -> None:
    gw, _ = site
    raw = make_message(to="gina@example.org", subject="Still trying")
    qid = submit(gw, raw, ["gina@example.org", CERT_ADDRESS])
    refused = gw.cli("erase", "--subject", "gina@example.org", "--yes")
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(
        "certifica: 1 message(s) to or from gina@example.org are still being delivered"
    )
    assert "certifica queue delete" in line and "Traceback" not in line
    assert query(
        gw, "SELECT 1 FROM recipients WHERE qid = ? AND address = 'gina@example.org'", (qid,)
    )
    assert not query(gw, "SELECT 1 FROM evidence WHERE event = 'Erasure' AND detail LIKE '%gina%'")
    # Withdrawn (the operator's way out), the message closes; then no refusal is left.
    assert gw.cli("queue", "delete", qid, "--yes").returncode == 0
    settle(gw)
    assert gw.cli("erase", "--subject", "gina@example.org", "--yes").returncode == 0


def test_refusals_are_one_sentence(site: tuple[Gateway, Sink]) -> None:
    gw, _ = site
    bad = gw.cli("erase", "--subject", "not an address", "--yes")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "certifica: 'not an address' is not an e-mail address (like bob@example.org)"
    )
    own = gw.cli("erase", "--subject", CERT_ADDRESS, "--yes")
    assert own.returncode == 2
    assert own.stderr.strip() == (
        f"certifica: {CERT_ADDRESS} is an address of the gateway itself, not of a person; "
        "give the address of the person who asked"
    )
    nobody = gw.cli("erase", "--subject", "nobody@example.org", "--yes")
    assert nobody.returncode == 0
    assert "Nothing to erase" in nobody.stdout


def test_erasing_a_tracked_recipient_keeps_only_the_classification_of_its_opens(
    site: tuple[Gateway, Sink],
) -> None:
    gw, sink = site
    qid = submit(gw, html_message("ivan@example.org"), ["ivan@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    html = copy_for(sink, "ivan@example.org", qid).message.get_body(("html",)).get_content()
    (pixel,) = re.findall(r'src="(http://127\.0\.0\.1:\d+/o/[A-Za-z0-9_-]+)"', html)
    clicks = re.findall(r'href="(http://127\.0\.0\.1:\d+/c/[A-Za-z0-9_-]+)"', html)
    assert clicks
    agent = "IvansBrowser/7.1 (X11; Linux)"
    assert status_of(pixel, agent) == 200
    sink.wait_for(lambda ms: bool(addenda(sink, qid)), timeout=90)
    settle(gw)
    checkpointed(gw)
    assert "queue.db" in files_naming(gw.state, agent)

    done = gw.cli("erase", "--subject", "ivan@example.org", "--yes")
    assert done.returncode == 0, done.stderr
    assert "1 open(s)/click(s) lose IP address and user agent" in done.stdout
    checkpointed(gw)
    assert files_naming(gw.state, agent) == []
    assert files_naming(gw.state, "ivan@example.org") == []
    # The open is still there, as what it was: kind, time, classification.
    ((kind, ip, user_agent, automatic, reason),) = query(
        gw,
        "SELECT kind, ip, user_agent, automatic, reason FROM tracking_events WHERE qid = ?",
        (qid,),
    )
    assert (kind, ip, user_agent, automatic) == ("open", "", "", 0)
    assert reason
    ((detail,),) = query(
        gw, "SELECT detail FROM evidence WHERE qid = ? AND event = 'ContentOpened'", (qid,)
    )
    assert json.loads(str(detail)) == {
        "erased": True,
        "automatic": False,
        "reason": reason,
        "link": 0,
        "method": "GET",
    }
    # No more opens recorded; its links lead nowhere now.
    assert status_of(pixel, agent) == 200
    assert status_of(clicks[0]) == 404
    assert len(query(gw, "SELECT id FROM tracking_events WHERE qid = ?", (qid,))) == 1
    assert gw.cli("evidence", "verify").returncode == 0


def test_erasing_a_reception_owner_removes_its_forwarding(site: tuple[Gateway, Sink]) -> None:
    gw, _ = site
    assert gw.cli("reception", "enable", "olga@example.org").returncode == 0
    assert "olga@example.org" in gw.cli("reception", "list").stdout
    done = gw.cli("erase", "--subject", "olga@example.org", "--yes")
    assert done.returncode == 0, done.stderr
    assert "its forwarding address stops working" in done.stdout
    assert "olga@example.org" not in gw.cli("reception", "list").stdout


def test_erasing_the_sender_of_a_certified_reception_and_its_owner(
    world: dict[str, Any], tmp_path: Path
) -> None:
    gw, sink = world["gw"], world["sink"]
    send_to_owner(world, signed(reception_message("Offer for erasure"), world["key"]))
    mail = wait_document(sink, OWNER, "Reception certificate", "Offer for erasure")
    wait_document(sink, "bob@partner.test", "Proof of receipt", "Offer for erasure")
    settle(gw)
    checkpointed(gw)
    assert "queue.db" in files_naming(gw.state, "bob@partner.test")

    done = gw.cli("erase", "--subject", "bob@partner.test", "--yes")
    assert done.returncode == 0, done.stderr
    checkpointed(gw)
    assert files_naming(gw.state, "bob@partner.test") == []
    assert not query(gw, "SELECT 1 FROM reception_acks")
    # The owner's certificate still verifies; the chain too.
    pdf = tmp_path / "reception.pdf"
    pdf.write_bytes(
        next(
            p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"
        ).get_payload(decode=True)
    )
    assert gw.cli("verify", str(pdf)).returncode == 0
    assert gw.cli("evidence", "verify").returncode == 0

    owner = gw.cli("erase", "--subject", OWNER, "--yes")
    assert owner.returncode == 0, owner.stderr
    assert "its forwarding address stops working" in owner.stdout
    assert OWNER not in gw.cli("reception", "list").stdout
    checkpointed(gw)
    assert files_naming(gw.state, OWNER) == []


def test_erasing_a_recipient_that_bounced_late_removes_the_report_and_the_addendum(
    site: tuple[Gateway, Sink], tmp_path: Path
) -> None:
    gw, sink = site
    raw = make_message(subject="late bounce", to="vera@example.org")
    qid = submit(gw, raw, ["vera@example.org", CERT_ADDRESS])
    generated_for(sink, qid, "certificate")
    return_path = [m for m in sink.to("vera@example.org") if qid.encode() in m.data[:3000]][0]
    with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
        client.ehlo("mx.example.org")
        client.mail("<>")
        assert client.rcpt(return_path.mail_from)[0] == 250
        assert client.data(dsn_for(return_path.mail_from, "vera@example.org", raw))[0] == 250
    addendum = certificate_pdf(addendum_for(sink, qid), tmp_path / "addendum.pdf")
    settle(gw)
    documents = [
        gw.state / "certificates" / f"{cert_id}.pdf"
        for (cert_id,) in query(gw, "SELECT cert_id FROM verifications WHERE qid = ?", (qid,))
    ]
    assert len(documents) == 2 and all(p.exists() for p in documents)
    ((dsn_qid,),) = query(
        gw, "SELECT qid FROM messages WHERE kind = 'dsn' AND parent_qid = ?", (qid,)
    )
    assert (gw.state / "spool" / "archive" / f"{dsn_qid}.eml").exists()

    done = gw.cli("erase", "--subject", "vera@example.org", "--yes")
    assert done.returncode == 0, done.stderr
    assert not any(p.exists() for p in documents)
    assert not (gw.state / "spool" / "archive" / f"{dsn_qid}.eml").exists()
    checkpointed(gw)
    assert files_naming(gw.state, "vera@example.org") == []
    assert gw.cli("verify", str(addendum)).returncode == 0
    assert gw.cli("evidence", "verify").returncode == 0


def test_the_erasure_records_who_ran_sudo_not_root(
    site: tuple[Gateway, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, sink = site
    certified(gw, sink, ["ivan@example.org"])
    settle(gw)
    monkeypatch.setenv("SUDO_USER", "maria")  # what sudo sets; USER is root's then
    monkeypatch.setenv("USER", "root")
    done = gw.cli("erase", "--subject", "ivan@example.org", "--yes")
    assert done.returncode == 0, done.stderr
    details = [
        json.loads(str(d))
        for (d,) in query(gw, "SELECT detail FROM evidence WHERE event = 'Erasure'")
    ]
    assert details[-1]["operator"] == "maria"
    assert operator_name() == "maria"
    monkeypatch.delenv("SUDO_USER")
    assert operator_name() == getpass.getuser()


def test_a_checkpoint_kept_from_finishing_is_said(site: tuple[Gateway, Sink]) -> None:
    gw, sink = site
    certified(gw, sink, ["judy@example.org"])
    settle(gw)
    reader = sqlite3.connect(gw.state / "queue.db", timeout=10, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages").fetchone()  # a snapshot held open
        done = gw.cli("erase", "--subject", "judy@example.org", "--yes")
    finally:
        reader.execute("COMMIT")
        reader.close()
    assert done.returncode == 0, done.stderr
    assert "judy@example.org erased" in done.stdout
    assert "warning: a reader kept the checkpoint from finishing" in done.stderr
    assert "Traceback" not in done.stderr


def test_files_deleted_before_a_new_message_arrived_are_said() -> None:
    # The window between the file deletions and the transaction cannot be timed from
    # outside: the sentence the command prints then is checked here.
    text = str(StillActive("kim@example.org", ["4F2A1B3C9D0E"], deleted=2))
    assert text.startswith("2 file(s) about kim@example.org were deleted, but the database")
    assert "unchanged" in text and text.endswith("run again when they are delivered")
    assert "Nothing" not in text


def test_a_lost_key_is_not_replaced_and_an_erasure_is_applied_again_to_a_restored_backup(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """A backup of the database made before an erasure, restored: the erasure is applied
    again by the commitment it recorded. A state directory restored without its
    subject.key (the database holds erasures) gets no new key: start and CLI refuse."""
    sink = sink_server.start(Sink())
    gw = start_gateway(write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port}))
    backup = tmp_path / "backup.db"
    try:
        qid, _ = certified(gw, sink, ["liam@example.org"])
        settle(gw)
        source = sqlite3.connect(gw.state / "queue.db", timeout=10)
        target = sqlite3.connect(backup)
        source.backup(target)  # the state backup, made before the erasure
        target.close()
        source.close()
        done = gw.cli("erase", "--subject", "liam@example.org", "--yes")
        assert done.returncode == 0, done.stderr
        (committed,) = re.findall(r"erased:[0-9a-f]{64}", done.stdout)  # kept off-site
    finally:
        gw.stop()
    # The older backup restored: liam is back in it.
    for name in ("queue.db", "queue.db-wal", "queue.db-shm"):
        (gw.state / name).unlink(missing_ok=True)
    (gw.state / "queue.db").write_bytes(backup.read_bytes())
    assert query(
        gw, "SELECT 1 FROM recipients WHERE qid = ? AND address = ?", (qid, "liam@example.org")
    )
    bad = gw.cli("erase", "--commitment", "erased:123", "--yes")
    assert bad.returncode == 2 and "is not a commitment" in bad.stderr
    again = gw.cli("erase", "--commitment", committed.removeprefix("erased:"), "--yes")
    assert again.returncode == 0, again.stderr
    assert f"{committed} is the commitment of liam@example.org." in again.stdout
    assert f"recorded in the evidence log as Erasure of {committed}" in again.stdout
    checkpointed(gw)
    assert files_naming(gw.state, "liam@example.org") == []
    nothing = gw.cli("erase", "--commitment", committed, "--yes")
    assert nothing.returncode == 0 and "Nothing to erase" in nothing.stdout

    # Restored without keys/subject.key: no new key, one sentence, from the CLI and serve.
    key = gw.state / "keys" / "subject.key"
    kept = key.read_bytes()
    key.unlink()
    for refused in (
        gw.cli("export", "--subject", "liam@example.org", str(tmp_path / "export")),
        gw.cli("erase", "--subject", "liam@example.org", "--yes"),
        gw.cli("serve"),
    ):
        assert refused.returncode != 0
        assert (
            f"{key} is missing, but the database holds addresses erased with it" in refused.stderr
        )
        assert "Traceback" not in refused.stderr
    assert not key.exists() and not (tmp_path / "export").exists()
    key.write_bytes(kept)
    key.chmod(0o600)
    restarted = start_gateway(gw.config, users={})
    restarted.stop()
    assert key.read_bytes() == kept


def test_an_erasure_gives_up_the_webhook_events_still_owed_that_name_the_address(
    tmp_path: Path,
) -> None:
    """A pending webhook delivery's body names its recipient (docs/webhooks.md): erasing
    the address gives it up, its body emptied; another recipient's event is still owed."""
    import sqlite3

    from relay.queue import subjects
    from relay.queue.migrations import migrate

    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    migrate(conn)
    conn.execute(
        "INSERT INTO webhooks (id, org, url, events, secret, created)"
        " VALUES (1, 'default', 'http://127.0.0.1:9/h', '[\"delivered\"]', 's', 0)"
    )
    for recipient in ("Bob@Example.org", "carol@example.org"):
        payload = json.dumps({"event": "delivered", "recipient": recipient.lower()})
        conn.execute(
            "INSERT INTO webhook_deliveries (webhook_id, event, payload, created, next_attempt,"
            " state) VALUES (1, 'delivered', ?, 0, 0, 'pending')",
            (payload,),
        )
    subjects.remove_accounts(conn, subjects.Matcher("bob@example.org", "c"))
    rows = conn.execute(
        "SELECT state, payload, last_error FROM webhook_deliveries ORDER BY id"
    ).fetchall()
    assert rows[0] == ("failed", "", subjects.WEBHOOK_ERASED)
    assert rows[1][0] == "pending" and "carol@example.org" in rows[1][1]


def test_an_erasure_keeps_a_hosted_decision_and_forgets_its_name_and_context(
    tmp_path: Path,
) -> None:
    """docs/erasure.md, "Hosted content's decisions": the decision and its time stay, the
    typed name, comment, IP address and user agent go; another recipient's stay."""
    import sqlite3

    from relay.queue import subjects
    from relay.queue.migrations import migrate

    conn = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    migrate(conn)
    for rid in (1, 2):
        conn.execute(
            "INSERT INTO hosted_links (recipient_id, qid, token_sha256, mode, created, expires,"
            " state, decision, decided_at, decision_detail) VALUES (?, 'Q', ?, 'accept', 0, 9,"
            " 'handed_over', 'accepted', 5, ?)",
            (rid, f"t{rid}", json.dumps({"name": f"Name {rid}", "ip": "192.0.2.7"})),
        )
    subjects.forget_hosted(conn, [1])
    rows = conn.execute(
        "SELECT decision, decided_at, decision_detail FROM hosted_links ORDER BY recipient_id"
    ).fetchall()
    assert rows[0] == ("accepted", 5.0, None)
    assert rows[1][2] is not None and "Name 2" in rows[1][2]
