"""Certified reception end to end, through a real forwarding hop.

The owner's mailbox is an aiosmtpd server of this test: it keeps what it receives and
forwards a copy to the gateway's reception address, adding its Received field, the way
a Sieve ``redirect :copy`` or Postfix ``recipient_bcc_maps`` does (envelope sender
kept). Senders DKIM-sign with keys the test's DNS server publishes. The reception
certificate is checked with pdfsig and ``certifica verify``, and its hashes against the
bytes that arrived.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import re
import smtplib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim
import pytest
from aiosmtpd.smtp import SMTP

from relay.delivery.dkim_keys import DkimKey, DkimKeyring
from tests.conftest import (
    PASSWORD,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer

OWNER = "owner@owner.test"
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"content-type"]


class Mailbox:
    """The owner's mail server: keeps each message and forwards a copy to ``forward_to``."""

    def __init__(self, gateway_mx: int) -> None:
        self.gateway_mx = gateway_mx
        self.forward_to = ""
        self.kept: list[bytes] = []
        self.forwarded: list[tuple[bytes, str]] = []  # (bytes sent, gateway's reply)
        self._cond = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.kept.append(envelope.original_content)
        trace = (
            f"Received: from {session.host_name} ([{session.peer[0]}])\r\n"
            f"\tby mailbox.owner.test with ESMTP id {time.monotonic_ns()}\r\n"
            f"\tfor <{OWNER}>; {email.utils.formatdate(usegmt=True)}\r\n"
        ).encode()
        data = trace + envelope.original_content
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.gateway_mx, timeout=30, validate_certs=False
        )  # opportunistic TLS, as MTAs forward
        await client.connect()
        try:
            sender = "" if envelope.mail_from == "<>" else envelope.mail_from  # aiosmtpd's null
            errors, reply = await client.sendmail(sender, [self.forward_to], data)
        except aiosmtplib.SMTPResponseException as err:
            reply = f"{err.code} {err.message}"
        finally:
            await client.quit()
        with self._cond:
            self.forwarded.append((data, str(reply)))
            self._cond.notify_all()
        return "250 2.0.0 Ok: delivered to the mailbox"

    def wait(self, count: int, timeout: float = 60) -> list[tuple[bytes, str]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.forwarded) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"only {len(self.forwarded)} forwarded"
                self._cond.wait(left)
            return list(self.forwarded)


@pytest.fixture(scope="module")
def world(
    sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    ring = DkimKeyring(tmp_path_factory.mktemp("keys"))
    key = ring.add("partner.test", "sel")
    with DNSServer() as dns:
        dns.add(key.dns_name, "TXT", key.dns_txt)
        dns.add("partner.test", "TXT", "v=spf1 -all")
        dns.add("_dmarc.partner.test", "TXT", "v=DMARC1; p=reject")
        sink = sink_server.start(Sink())
        tmp = tmp_path_factory.mktemp("reception")
        routes = {"owner.test": sink.port, "partner.test": sink.port}
        extra = dns.config_toml() + "[reception]\nack_interval = 3600.0\n"
        gw = start_gateway(write_config(tmp, routes, extra), {"alice@example.com": PASSWORD})
        out = gw.cli("reception", "enable", OWNER, "--ack-sender")
        assert out.returncode == 0, out.stderr
        forward = re.search(r"recepcion\+[a-z2-7]+@certifica\.localhost", out.stdout)
        assert forward, out.stdout
        box = Mailbox(gw.port("mx"))
        box.forward_to = forward.group(0)

        async def _serve() -> Any:
            return await sink_server.loop.create_server(
                lambda: SMTP(box, hostname="mailbox.owner.test", loop=sink_server.loop),
                "127.0.0.1",
                0,
            )

        server = asyncio.run_coroutine_threadsafe(_serve(), sink_server.loop).result(10)
        sink_server.servers.append(server)
        yield {
            "gw": gw,
            "sink": sink,
            "box": box,
            "box_port": server.sockets[0].getsockname()[1],
            "key": key,
            "forward": forward.group(0),
            "recipes": out.stdout,
        }
        gw.stop()
        assert_clean_log(gw.log())


def message(subject: str, extra: str = "", sender: str = "Bob Partner <bob@partner.test>") -> bytes:
    boundary = "b1"
    return (
        f"From: {sender}\r\nTo: {OWNER}\r\nSubject: {subject}\r\n"
        f"Date: Tue, 01 Dec 2026 11:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@partner.test>\r\n{extra}"
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Please find the signed offer attached.\r\n"
        f"--{boundary}\r\nContent-Type: application/pdf; name=offer.pdf\r\n"
        f"Content-Disposition: attachment; filename=offer.pdf\r\n"
        f"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcfsj6IKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4K\r\n"
        f"--{boundary}--\r\n"
    ).encode()


def signed(raw: bytes, key: DkimKey) -> bytes:
    sig = dkim.sign(
        raw, b"sel", b"partner.test", key.private_pem, include_headers=SIGNED,
        canonicalize=(b"relaxed", b"relaxed"),
    )  # fmt: skip
    return sig + raw


def send_to_owner(world: dict[str, Any], raw: bytes, mail_from: str = "bob@partner.test") -> None:
    """The sender's server delivers to the owner's mailbox."""
    with smtplib.SMTP("127.0.0.1", world["box_port"], timeout=30) as client:
        client.ehlo("mail.partner.test")
        client.sendmail(mail_from, [OWNER], raw)


def documents(sink: Sink, to: str, subject_start: str) -> list[Received]:
    return [
        m
        for m in sink.messages
        if to in m.rcpt_tos and (m.message["Subject"] or "").startswith(subject_start)
    ]


def wait_document(sink: Sink, to: str, subject_start: str, marker: str) -> Received:
    def found(ms: list[Received]) -> list[Received]:
        return [m for m in documents(sink, to, subject_start) if marker in m.message["Subject"]]

    return found(sink.wait_for(lambda ms: bool(found(ms)), timeout=90))[0]


def pdf_and_evidence(mail: Received, dest: Path) -> tuple[Path, dict[str, Any]]:
    dest.mkdir(exist_ok=True)
    part = next(
        p for p in mail.message.iter_attachments() if p.get_content_type() == "application/pdf"
    )
    pdf = dest / "certificate.pdf"
    pdf.write_bytes(part.get_payload(decode=True))  # type: ignore[arg-type]
    subprocess.run(["pdfdetach", "-saveall", "-o", str(dest), str(pdf)], check=True)
    return pdf, json.loads((dest / "evidence.json").read_text())


@pytest.fixture(scope="module")
def certified(world: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    raw = signed(message("Signed offer"), world["key"])
    send_to_owner(world, raw)
    ((forwarded, reply),) = world["box"].wait(1)
    assert reply.startswith("2.0.0 Message received and its arrival certified"), reply
    mail = wait_document(world["sink"], OWNER, "Reception certificate", "Signed offer")
    pdf, evidence = pdf_and_evidence(mail, tmp_path_factory.mktemp("rc"))
    return {"raw": raw, "forwarded": forwarded, "mail": mail, "pdf": pdf, "evidence": evidence}


def test_recipes_name_the_forwarding_address(world: dict[str, Any]) -> None:
    text = world["recipes"]
    assert f'redirect :copy "{world["forward"]}";' in text
    assert f"{OWNER}    {world['forward']}" in text and "recipient_bcc_maps" in text
    assert "Gmail" in text and "Microsoft 365" in text
    listed = world["gw"].cli("reception", "list")
    assert OWNER in listed.stdout and world["forward"] in listed.stdout


def test_the_owner_gets_a_reception_certificate_that_verifies(
    world: dict[str, Any], certified: dict[str, Any]
) -> None:
    pdf = certified["pdf"]
    sig = subprocess.run(["pdfsig", str(pdf)], capture_output=True, text=True)
    assert "Signature is Valid" in sig.stdout, sig.stdout
    out = world["gw"].cli("verify", str(pdf))
    assert out.returncode == 0, out.stdout + out.stderr
    text = " ".join(
        subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True).stdout.split()
    )
    assert "Certificate of reception of a certified e-mail" in text
    assert OWNER in text and "mailbox.owner.test" in text


def test_hashes_match_the_bytes_that_arrived(certified: dict[str, Any], tmp_path: Path) -> None:
    ev, forwarded = certified["evidence"], certified["forwarded"]
    assert ev["kind"] == "reception"
    assert ev["message"]["sha256"] == hashlib.sha256(forwarded).hexdigest()
    assert forwarded.endswith(certified["raw"])  # the forwarder only prepended its trace
    assert (certified["pdf"].parent / "message.eml").read_bytes() == forwarded
    (attachment,) = ev["message"]["attachments"]
    pdf_bytes = b"%PDF-1.4\n%\xc7\xec\x8f\xa2\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n"
    assert attachment["filename"] == "offer.pdf"
    assert attachment["sha256"] == hashlib.sha256(pdf_bytes).hexdigest()


def test_the_forwarding_chain_and_the_original_dkim_are_evidence(certified: dict[str, Any]) -> None:
    ev = certified["evidence"]
    r = ev["reception"]
    assert r["owner"] == OWNER and r["original_from"] == "bob@partner.test"
    assert r["envelope"]["mail_from"] == "bob@partner.test"
    assert r["trace"]["received"][0].startswith("Received: from mail.partner.test")
    assert r["arc"]["result"] == "none"
    auth = ev["sender"]["authentication"]["header"]
    assert "dkim=pass header.d=partner.test header.s=sel" in auth and "dmarc=pass" in auth
    assert ev["message"]["subject"] == "Signed offer"
    assert [e["event"] for e in ev["timeline"]][0] == "ReceivedFromNonERDS"


def test_the_authenticated_sender_gets_a_proof_of_receipt(
    world: dict[str, Any], certified: dict[str, Any]
) -> None:
    receipt = wait_document(world["sink"], "bob@partner.test", "Proof of receipt", "Signed offer")
    assert receipt.mail_from == "" or receipt.mail_from == "<>"  # never answered itself
    assert receipt.message["Auto-Submitted"] == "auto-generated"
    assert certified["evidence"]["reception"]["receipt"]["to"] == "bob@partner.test"
    owner_pdf = certified["mail"].message.get_payload()[-1].get_payload(decode=True)
    sender_pdf = receipt.message.get_payload()[-1].get_payload(decode=True)
    assert owner_pdf == sender_pdf  # the same signed certificate


def test_forwarded_twice_is_certified_once(
    world: dict[str, Any], certified: dict[str, Any]
) -> None:
    before = len(documents(world["sink"], OWNER, "Reception certificate"))
    send_to_owner(world, certified["raw"])  # the same message again: a second Received
    forwarded = world["box"].wait(2)
    assert forwarded[1][1].startswith("2.0.0") and "already certified" in forwarded[1][1]
    time_limit = time.monotonic() + 5
    while time.monotonic() < time_limit and "DuplicateReception" not in world["gw"].log():
        time.sleep(0.05)
    assert "not certified twice" in world["gw"].log()
    assert len(documents(world["sink"], OWNER, "Reception certificate")) == before


@pytest.mark.parametrize(
    "subject, extra, mail_from, why",
    [
        ("List mail", "List-Id: <offers.partner.test>\r\nPrecedence: list\r\n", "bob@partner.test",
         "mailing-list"),
        ("Auto reply", "Auto-Submitted: auto-replied\r\n", "bob@partner.test", "automatic"),
        ("Bounce", "", "", "null sender"),
    ],
)  # fmt: skip
def test_no_proof_of_receipt_for_automatic_list_or_bounce_mail(
    world: dict[str, Any], tmp_path: Path, subject: str, extra: str, mail_from: str, why: str
) -> None:
    raw = signed(message(subject, extra), world["key"])
    send_to_owner(world, raw, mail_from=mail_from)
    mail = wait_document(world["sink"], OWNER, "Reception certificate", subject)
    _, ev = pdf_and_evidence(mail, tmp_path)
    assert ev["reception"]["receipt"]["to"] is None and why in ev["reception"]["receipt"]["why"]
    proofs = documents(world["sink"], "bob@partner.test", "Proof of receipt")
    assert not [m for m in proofs if subject in (m.message["Subject"] or "")]


def test_unauthenticated_and_repeated_senders_get_no_proof(
    world: dict[str, Any], tmp_path: Path
) -> None:
    raw = message("Unsigned claim")  # no DKIM signature, SPF -all: not authenticated
    send_to_owner(world, raw)
    mail = wait_document(world["sink"], OWNER, "Reception certificate", "Unsigned claim")
    _, ev = pdf_and_evidence(mail, tmp_path / "u")
    assert "not authenticated" in ev["reception"]["receipt"]["why"]
    # Authenticated, but bob@partner.test already had a proof within ack_interval.
    raw = signed(message("Second offer"), world["key"])
    send_to_owner(world, raw)
    mail = wait_document(world["sink"], OWNER, "Reception certificate", "Second offer")
    _, ev = pdf_and_evidence(mail, tmp_path / "s")
    assert ev["reception"]["receipt"]["to"] is None
    assert "within 3600 s" in ev["reception"]["receipt"]["why"]
    assert not [
        m for m in documents(world["sink"], "bob@partner.test", "Proof of receipt")
        if "Second offer" in m.message["Subject"] or "Unsigned" in m.message["Subject"]
    ]  # fmt: skip


def test_unknown_and_disabled_tokens_are_refused(world: dict[str, Any]) -> None:
    gw = world["gw"]

    def rcpt(address: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gw.port("mx"), timeout=30) as client:
            client.ehlo("forwarder.test")
            client.mail("bob@partner.test")
            return client.rcpt(address)

    code, text = rcpt("recepcion+aaaaaaaaaaaaaaaaaaaaaaaaaa@certifica.localhost")
    assert code == 550 and text.startswith(b"5.1.1")
    assert gw.cli("reception", "enable", "temp@owner.test").returncode == 0
    listed = gw.cli("reception", "list").stdout
    forward = re.search(r"temp@owner\.test\ton\t(\S+)", listed)
    assert forward, listed
    assert rcpt(forward.group(1))[0] == 250
    assert gw.cli("reception", "disable", "temp@owner.test").returncode == 0
    code, text = rcpt(forward.group(1))
    assert code == 550 and text.startswith(b"5.1.1")
