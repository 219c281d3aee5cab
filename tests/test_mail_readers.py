"""Each mail in its reader's language and time zone, through the real gateway.

Two users of one gateway: ana@example.com, added with ``certifica users add --language es
--timezone Atlantic/Canary``, and alice@example.com, who has neither and so reads the
``[gateway]`` defaults (English, UTC). They send the same message; each gets the
notice and the certificate mail in their own words and time. A plain message of ana's
that a recipient refuses comes back as a report whose first part is Spanish, while its
``message/delivery-status`` part is what Mailman's bounce reader and the gateway's own
read. The CLI refuses a language or time zone the gateway does not know, with a sentence
naming what it accepts.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from flufl.bounce import all_failures

from relay.cleanup.bounces import parse_dsn
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Received,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    run_cli,
    start_gateway,
    write_config,
)

ANA = "ana@example.com"
ALICE = "alice@example.com"


def _refuse(address: str) -> str | None:
    if address.startswith("reject"):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
    return None


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    """The recipients' and the senders' MX: refuses reject*@, takes the rest."""
    return sink_server.start(Sink(rcpt_reply=_refuse))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("readers")
    cfg = write_config(tmp, {"example.org": sink.port, "example.com": sink.port})
    added = run_cli(
        cfg, "users", "add", ANA, "--password-stdin", "--language", "es",
        "--timezone", "Atlantic/Canary", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "language es, time zone Atlantic/Canary" in added.stdout
    gw = start_gateway(cfg, {ALICE: PASSWORD})
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def send(gw: Gateway, sender: str, raw: bytes, rcpts: list[str]) -> str:
    with gw.smtp(sender) as c:
        c.mail(sender)
        for r in rcpts:
            code, text = c.rcpt(r)
            assert code == 250, text
        code, text = c.data(raw)
        assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


def mail_for(sink: Sink, qid: str, subject_start: str, timeout: float = 90.0) -> Received:
    def found(ms: list[Received]) -> list[Received]:
        return [
            m
            for m in ms
            if m.message["X-Certifica-Queue-Id"] == qid
            and str(m.message["Subject"] or "").startswith(subject_start)
        ]

    return found(sink.wait_for(lambda ms: bool(found(ms)), timeout))[0]


def text_of(mail: Received) -> str:
    body = mail.message.get_body(("plain",))
    assert body is not None
    return body.get_content()


def first_screen(text: str) -> str:
    return "\n".join(text.splitlines()[:15])


@pytest.fixture(scope="module")
def same_message(gateway: Gateway, sink: Sink) -> dict[str, dict[str, Received]]:
    """The same message certified once by ana (es, Atlantic/Canary) and once by alice."""
    mails: dict[str, dict[str, Received]] = {}
    for sender, notice, certificate in (
        (ANA, "En proceso de certificación", "Certificado de entrega"),
        (ALICE, "Being certified", "Certificate of delivery"),
    ):
        raw = make_message(subject="Contrato de arrendamiento", sender=sender)
        qid = send(gateway, sender, raw, ["bob@example.org", CERT_ADDRESS])
        mails[sender] = {
            "qid": qid,  # type: ignore[dict-item]
            "notice": mail_for(sink, qid, notice),
            "certificate": mail_for(sink, qid, certificate),
        }
    return mails


def test_a_spanish_user_reads_spanish_in_their_time_zone(
    same_message: dict[str, dict[str, Received]],
) -> None:
    mails = same_message[ANA]
    notice, certificate = mails["notice"], mails["certificate"]
    assert notice.rcpt_tos == [ANA] and certificate.rcpt_tos == [ANA]
    for mail in (notice, certificate):
        assert mail.message["Content-Language"] == "es"
        # The Canary Islands are on WET in December: local time, and UTC beside it.
        assert re.search(r"de 20\d\d, \d\d:\d\d:\d\d WES?T \(\d\d:\d\d:\d\d UTC\)",
                         " ".join(text_of(mail).split())), text_of(mail)  # fmt: skip
    assert str(notice.message["Subject"]) == (
        "En proceso de certificación: «Contrato de arrendamiento»"
    )
    assert str(certificate.message["Subject"]).startswith(
        "Certificado de entrega: «Contrato de arrendamiento» (CF-"
    )
    text = text_of(certificate)
    assert text.startswith("Su mensaje «Contrato de arrendamiento» se ha entregado:")
    assert "bob@example.org: aceptado por el servidor de correo del destinatario el" in text
    assert "Cómo verificarlo" in text and "Detalles técnicos" in text
    # Not publicly trusted (the default): no claim that any PDF reader validates it.
    said = " ".join(text.split())
    assert "certificado del prestador" in said and "sin conexión" not in said


def test_the_same_message_from_an_english_user_reads_english(
    same_message: dict[str, dict[str, Received]],
) -> None:
    mails = same_message[ALICE]
    certificate = mails["certificate"]
    assert certificate.message["Content-Language"] == "en"
    text = text_of(certificate)
    assert text.startswith("Your message “Contrato de arrendamiento” was delivered:")
    assert " UTC" in text and "(10:" not in text  # UTC readers get one time, not two
    assert "Technical details" in text and "Detalles" not in text
    assert mails["notice"].message["Content-Language"] == "en"


def test_the_first_screen_has_no_hash_queue_id_nor_reply(
    same_message: dict[str, dict[str, Received]],
) -> None:
    for sender, mails in same_message.items():
        qid = str(mails["qid"])
        for kind in ("notice", "certificate"):
            mail = mails[kind]
            text = text_of(mail)
            sha = re.search(r"\b[0-9a-f]{64}\b", text)
            assert sha, (sender, kind)  # the hash is there, further down
            first = first_screen(text)
            assert sha.group(0) not in first and qid not in first, (sender, kind, first)
            assert "250" not in first, (sender, kind, first)


def test_a_report_to_a_spanish_sender_is_spanish_and_still_machine_readable(
    gateway: Gateway, sink: Sink
) -> None:
    qid = send(
        gateway, ANA, make_message(subject="Aviso", sender=ANA, cc=""), ["reject@example.org"]
    )
    report = mail_for(sink, qid, "No se pudo entregar: «Aviso»")
    assert report.rcpt_tos == [ANA]
    msg = report.message
    assert msg.get_content_type() == "multipart/report"
    human, status, _ = msg.get_payload()  # type: ignore[misc]
    assert isinstance(human, EmailMessage)
    assert human["Content-Language"] == "es"
    said = human.get_content()
    assert "Su mensaje «Aviso» no se pudo entregar" in said
    assert "indica que esta dirección no existe" in said
    (block,) = status.get_payload()[1:]
    assert block["Final-Recipient"] == "rfc822; reject@example.org"
    assert block["Action"] == "failed" and block["Status"] == "5.1.1"
    temporary, permanent = all_failures(msg)
    assert not temporary and {a.decode() for a in permanent} == {"reject@example.org"}
    assert [(r.recipient, r.action) for r in parse_dsn(report.data)] == [
        ("reject@example.org", "failed")
    ]


# -- the CLI ----------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.toml"
    if not cfg.exists():
        cfg.write_text('[gateway]\nstate_dir = "s"\nlanguage = "it"\ntimezone = "Europe/Rome"\n')
    return run_cli(cfg, *args, stdin=stdin)


def test_users_language_and_time_zone_are_set_listed_and_reset(tmp_path: Path) -> None:
    added = _cli(
        tmp_path, "users", "add", "zoe@example.com", "--password-stdin",
        "--language", "ES", "--timezone", "Atlantic/Canary", stdin="longenough\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    plain = _cli(
        tmp_path, "users", "add", "amy@example.com", "--password-stdin", stdin="longenough\n"
    )
    assert plain.returncode == 0, plain.stderr
    listed = _cli(tmp_path, "users", "list").stdout.splitlines()
    assert listed[1].startswith("zoe@example.com\t")
    assert listed[1].endswith("\tlanguage es\ttime zone Atlantic/Canary")
    assert listed[0].endswith("\tlanguage it (default)\ttime zone Europe/Rome (default)")
    # Only --language or --timezone: no password is asked (there is no terminal here).
    changed = _cli(tmp_path, "users", "set", "amy@example.com", "--language", "ca")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == "user amy@example.com: language ca"
    reset = _cli(tmp_path, "users", "set", "zoe@example.com", "--language", "", "--timezone", "")
    assert reset.returncode == 0, reset.stderr
    listed = _cli(tmp_path, "users", "list").stdout.splitlines()
    assert listed[0].endswith("\tlanguage ca\ttime zone Europe/Rome (default)")
    assert listed[1].endswith("\tlanguage it (default)\ttime zone Europe/Rome (default)")


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--language", "fr", "use one of en, es, ca, it"),
        ("--language", "spanish", "use one of en, es, ca, it"),
        ("--timezone", "Mars/Olympus_Mons", "IANA time zone name (for example Europe/Madrid"),
        ("--timezone", "CET+1", "IANA time zone name"),
    ],
)
def test_a_language_or_time_zone_the_gateway_does_not_know_is_refused(
    tmp_path: Path, option: str, value: str, named: str
) -> None:
    added = _cli(
        tmp_path, "users", "add", "zoe@example.com", "--password-stdin", option, value,
        stdin="longenough\n",
    )  # fmt: skip
    assert added.returncode == 2 and named in added.stderr, added.stderr
    assert "Traceback" not in added.stderr
    assert "zoe@example.com" not in _cli(tmp_path, "users", "list").stdout  # nothing added
    assert _cli(tmp_path, "users", "add", "zoe@example.com", "--password-stdin",
                stdin="longenough\n").returncode == 0  # fmt: skip
    refused = _cli(tmp_path, "users", "set", "zoe@example.com", option, value)
    assert refused.returncode == 2 and named in refused.stderr, refused.stderr
    assert "(default)" in _cli(tmp_path, "users", "list").stdout  # unchanged


def test_gateway_defaults_and_a_publicly_trusted_signer(
    sink_server: SinkServer, tmp_path: Path
) -> None:
    """A user with no language of its own reads ``[gateway] language`` and ``timezone``;
    with ``[signing] publicly_trusted = true`` the certificate mail says that any PDF
    reader can check it offline (and no longer that the reader must trust the provider)."""
    sink = sink_server.start(Sink())
    cfg = write_config(tmp_path, {"example.org": sink.port, "example.com": sink.port})
    text = cfg.read_text().replace(
        'state_dir = "state"', 'state_dir = "state"\nlanguage = "it"\ntimezone = "Europe/Rome"'
    )
    cfg.write_text(text.replace("[signing]\n", "[signing]\npublicly_trusted = true\n"))
    gw = start_gateway(cfg, {ALICE: PASSWORD})
    try:
        qid = send(gw, ALICE, make_message(subject="Diffida"), ["bob@example.org", CERT_ADDRESS])
        mail = mail_for(sink, qid, "Certificato di consegna: «Diffida» (CF-")
        assert mail.message["Content-Language"] == "it"
        said = " ".join(text_of(mail).split())
        assert re.search(r"il \d+ \w+ 20\d\d, \d\d:\d\d:\d\d CES?T \(\d\d:\d\d:\d\d UTC\)", said)
        assert (
            "chiunque può verificarlo senza connessione con un lettore PDF che convalidi le firme"
            in said
        )
        assert "certificato del prestatore" not in said
    finally:
        gw.stop()
    assert_clean_log(gw.log())
