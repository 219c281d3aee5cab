"""The mail the gateway writes: well-formed MIME, header fields that cannot be injected,
and exactly the PDF it carries; read back with the stdlib's parser."""

from __future__ import annotations

import email
import email.header
import email.policy
import os
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from certifier.i18n import LANGUAGES, Reader
from relay.certify import notices

HOSTILE = "Re: <b>x</b>\r\nBcc: victim@example.org =?utf-8?b?Zm9v?= {{ 7*7 }} Straße 日本"


def _parse(data: bytes) -> email.message.EmailMessage:
    assert b"\n" not in data.replace(b"\r\n", b""), "a bare LF"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert not msg.defects
    return msg  # type: ignore[return-value]


def _original(subject: str) -> notices.OriginalHeaders:
    return notices.OriginalHeaders(notices.one_line(subject), "<orig@example.com>")


@settings(max_examples=60, deadline=None)
@given(subject=st.text(max_size=300), pdf=st.binary(max_size=5000))
@example(subject="0\x850", pdf=b"")  # NEL: the stdlib refused the header, the mail never left
@example(subject="a\u2028Bcc: x@example.org", pdf=b"%PDF")
def test_certificate_mail_round_trips(subject: str, pdf: bytes) -> None:
    data = notices.build_certificate_mail(
        gateway_name="Certifica (certifica.test)",
        from_address="certifica@certifica.test",
        hostname="certifica.test",
        to="alice@example.com",
        qid="0123456789AB",
        cert_id="CF-0123456789ABCDEF",
        sha256="ab" * 32,
        recipients=[{"address": "bob@example.org", "status": "delivered", "reply": subject}],
        original=_original(subject),
        pdf=pdf,
    )
    msg = _parse(data)
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/pdf",
    ]  # fmt: skip
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Certifica-Queue-Id"] == "0123456789AB"
    assert msg.get_all("Bcc") is None and len(msg.get_all("To")) == 1
    shown = notices.one_line(notices.one_line(subject), 120)
    expected = notices.one_line(f"Certificate of delivery: “{shown}” (CF-0123456789ABCDEF)")
    # RFC 2047 decoding may drop the space between two encoded words: compare the rest.
    assert "".join(str(msg["Subject"]).split()) == "".join(expected.split())
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == "CF-0123456789ABCDEF.pdf"
    assert attachment.get_payload(decode=True) == pdf


def test_hostile_subject_stays_text_in_every_part() -> None:
    data = notices.build_certificate_mail(
        gateway_name="Certifica", from_address="certifica@certifica.test",
        hostname="certifica.test", to="alice@example.com", qid="Q", cert_id="CF-1",
        sha256="0" * 64, recipients=[], original=_original(HOSTILE), pdf=os.urandom(100),
    )  # fmt: skip
    msg = _parse(data)
    assert msg.get_all("Bcc") is None  # the CR LF in the subject started no field
    assert "日本" in str(msg["Subject"])
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html  # autoescaped
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "{{ 7*7 }}" in " ".join(text.split())  # shown (maybe wrapped), never evaluated


def test_notice_is_multipart_alternative() -> None:
    data = notices.build_notice(
        gateway_name="Certifica", from_address="certifica@certifica.test",
        hostname="certifica.test", to="alice@example.com", qid="Q", accepted_at="now",
        sha256="0" * 64, recipients=["bob@example.org"], original=_original("Contract"),
    )  # fmt: skip
    msg = _parse(data)
    assert [p.get_content_type() for p in msg.walk()] == [
        "multipart/alternative", "text/plain", "text/html",
    ]  # fmt: skip
    assert "bob@example.org" in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert msg["In-Reply-To"] == "<orig@example.com>"


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(["Subject", "To"]),
    value=st.text(min_size=1, max_size=400),
)
def test_header_section_never_lets_a_value_start_a_field(name: str, value: str) -> None:
    """Any text is either refused (a control character) or one field that the stdlib
    reads back as the same text, with no other field."""
    fields = [("From", "Certifica <certifica@certifica.test>"), (name, value)]
    try:
        data = notices._header_section(fields)
    except ValueError:
        # Refused: a control character, or text in To that is no address at all (the
        # gateway only ever puts a validated address there).
        assert notices._CONTROL.search(value) or (name == "To" and not value.isascii())
        return
    msg = email.message_from_bytes(data + b"\r\n", policy=email.policy.default)
    assert [k for k in msg.keys()] == ["From", name]
    if name == "Subject":
        assert "".join(str(msg["Subject"]).split()) == "".join(value.split())


def test_non_ascii_recipient_address_is_written_by_the_stdlib() -> None:
    data = notices._header_section([("To", "josé@exämple.es"), ("Subject", "ok")])
    assert "josé@exämple.es".encode() in data  # SMTPUTF8: never as encoded words


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@settings(deadline=None)  # its first example imports relay.delivery.outbound
@given(st.text(alphabet=st.sampled_from(BIDI + "ab\r\n\x1b\u2028"), max_size=40))
def test_one_line_keeps_no_bidi_override_nor_control(text: str) -> None:
    cleaned = notices.one_line(text)
    assert not set(cleaned) & set(BIDI + "\r\n\x1b\u2028")
    # the same set makes a From display name safe (relay/delivery/outbound.py)
    from relay.delivery.outbound import rewrite_from

    raw = f"From: {text.replace(chr(13), '').replace(chr(10), '')} <a@example.com>\r\n\r\n"
    out = rewrite_from(raw.encode(), text, "c@example.org", "Certifica").decode()
    new_from = out.split("\r\n", 1)[0]  # Reply-To keeps the original From as it was
    decoded = str(email.header.make_header(email.header.decode_header(new_from[6:])))
    assert new_from.startswith("From: ") and not set(decoded) & set(BIDI)


# -- the reader's language, plain words first, how to verify ---------------------------------
SHA = "5d41402abc4b2a76b9719d911017c592" * 2
QID = "0A1B2C3D4E5F"
REPLY = "250 2.0.0 Ok: queued as SINK0001"
DELIVERED = {
    "address": "bob@example.org",
    "status": "delivered",
    "reply": REPLY,
    "at": "2026-12-03T10:42:05Z",
}
REFUSED = {"address": "carol@example.org", "status": "failed", "reply": "550 5.1.1 unknown"}


def _certificate(reader: Reader, recipients: list[dict[str, str]], **options: Any) -> bytes:
    return notices.build_certificate_mail(
        gateway_name="Certifica (certifica.test)", from_address="certifica@certifica.test",
        hostname="certifica.test", to="alice@example.com", qid=QID, cert_id="CF-0123456789ABCDEF",
        sha256=SHA, recipients=recipients, original=_original("Contrato"), pdf=b"%PDF-1.7",
        reader=reader, **options,
    )  # fmt: skip


def _every_mail(reader: Reader) -> dict[str, bytes]:
    """Each kind of mail a person reads, for ``reader``."""
    common: dict[str, Any] = {
        "gateway_name": "Certifica (certifica.test)",
        "from_address": "certifica@certifica.test",
        "hostname": "certifica.test",
        "to": "alice@example.com",
        "qid": QID,
        "sha256": SHA,
        "reader": reader,
    }
    certified = {"cert_id": "CF-0123456789ABCDEF", "pdf": b"%PDF-1.7"}
    return {
        "notice": notices.build_notice(
            **common, accepted_at="2026-12-03T10:42:01Z",
            recipients=["bob@example.org", "carol@example.org"], original=_original("Contrato"),
        ),
        "certificate": notices.build_certificate_mail(
            **common, **certified, recipients=[DELIVERED, REFUSED], original=_original("Contrato"),
        ),
        "addendum": notices.build_certificate_mail(
            **common, **certified, recipients=[{**DELIVERED, "status": "bounced"}],
            original=_original("Contrato"), label="Addendum",
        ),
        "content lost": notices.build_content_lost(
            **common, **certified, received_at="2026-12-03T10:42:01Z", size=12345,
            recipients=[DELIVERED, REFUSED],
        ),
        "reception": notices.build_reception_mail(
            **common, **certified, owner="owner@example.com", original_from="bob@partner.test",
            original=_original("Contrato"), receipt=False, received_at=1796294525.0,
        ),
        "proof of receipt": notices.build_reception_mail(
            **common, **certified, owner="owner@example.com", original_from="bob@partner.test",
            original=_original("Contrato"), receipt=True, received_at=1796294525.0,
        ),
    }  # fmt: skip


def _text(msg: email.message.EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_first_screen_says_what_happened_without_technical_detail(language: str) -> None:
    """The first 15 lines of every mail's text hold no SHA-256, queue id nor SMTP reply;
    they are further down, under "Technical details" in the reader's language."""
    reader = Reader(language, "Europe/Madrid")
    heading = reader.gettext("mail", "Technical details")
    for kind, data in _every_mail(reader).items():
        msg = _parse(data)
        text = _text(msg)
        first = "\n".join(text.splitlines()[:15])
        assert SHA not in first and QID not in first and "250" not in first, (kind, first)
        assert heading in text and SHA in text.split(heading, 1)[1], kind
        html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
        assert html.index(SHA) > html.index(heading), kind
        assert msg["Content-Language"] == language, kind


SUBJECTS = {
    "en": ("Certificate of partial delivery: “Contrato”", "Being certified: “Contrato”"),
    "es": ("Certificado de entrega parcial: «Contrato»", "En proceso de certificación: «Contrato»"),
    "ca": ("Certificat de lliurament parcial: «Contrato»", "En procés de certificació: «Contrato»"),
    "it": (
        "Certificato di consegna parziale: «Contrato»",
        "In corso di certificazione: «Contrato»",
    ),
}


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_mail_is_in_the_readers_language(language: str) -> None:
    """Subjects (RFC 2047 where not ASCII, the plain words left readable) and text come
    from the reader's catalog; no English sentence is left in another language's mail."""
    mails = _every_mail(Reader(language, "Europe/Madrid"))
    certificate, notice = (_parse(mails[k]) for k in ("certificate", "notice"))
    assert str(certificate["Subject"]) == f"{SUBJECTS[language][0]} (CF-0123456789ABCDEF)"
    assert str(notice["Subject"]) == SUBJECTS[language][1]
    raw_subject = mails["certificate"].split(b"\r\nSubject: ", 1)[1].split(b"\r\n", 1)[0]
    assert raw_subject.isascii() and raw_subject.startswith(
        SUBJECTS[language][0].split(":")[0].split(" ")[0].encode()
    )
    if language == "en":
        return
    english = _every_mail(Reader("en", "Europe/Madrid"))
    for kind, data in mails.items():
        theirs = set(_text(_parse(data)).splitlines())
        ours = set(_text(_parse(english[kind])).splitlines())
        shared = {line for line in theirs & ours if re.search(r"[a-z]{4,} [a-z]{3,}", line)}
        assert not shared, (kind, shared)  # whole sentences left in English


def test_times_are_the_readers_with_utc_beside() -> None:
    text = _text(_parse(_certificate(Reader("es", "Europe/Madrid"), [DELIVERED])))
    unwrapped = " ".join(text.split())
    assert "el 3 de diciembre de 2026, 11:42:05 CET (10:42:05 UTC)" in unwrapped
    notice = _text(_parse(_every_mail(Reader("it", "Europe/Rome"))["notice"]))
    assert "il 3 dicembre 2026, 11:42:01 CET (10:42:01 UTC)" in " ".join(notice.split())


@pytest.mark.parametrize(
    ("statuses", "subject", "first"),
    [
        (["delivered"], "Certificate of delivery", "was delivered: the mail server of every"),
        (["failed", "bounced"], "Certificate of non-delivery", "was not delivered to a0@x.test, a1@x.test."),
        (["delivered", "withdrawn"], "Certificate of partial delivery", "but not to a1@x.test."),
        (["withdrawn"], "Certificate of withdrawal", "was withdrawn before delivery"),
    ],
)  # fmt: skip
def test_subject_and_first_sentence_name_the_outcome(
    statuses: list[str], subject: str, first: str
) -> None:
    recipients = [{"address": f"a{i}@x.test", "status": s} for i, s in enumerate(statuses)]
    msg = _parse(_certificate(Reader(), recipients))
    assert str(msg["Subject"]).startswith(f"{subject}: “Contrato”")
    assert first in " ".join(_text(msg).split("\n\n", 1)[0].split())


def test_the_outcome_given_by_the_caller_is_the_one_stated() -> None:
    msg = _parse(_certificate(Reader("es"), [DELIVERED], outcome="withdrawal"))
    assert str(msg["Subject"]).startswith("Certificado de retirada del envío: «Contrato»")


def test_the_verification_url_is_shown_and_linked() -> None:
    url = "https://certifica.test/v/ab2cd3ef4gh5ij6kl7mn2op3qr4st5uv"
    msg = _parse(_certificate(Reader(), [DELIVERED], verify_url=url))
    text = _text(msg)
    assert f"\n  {url}\n" in text
    assert "\n".join(text.splitlines()[:15]).count(url) == 1  # on the first screen
    html = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert f'<a href="{url}">{url}</a>' in html
    without = _text(_parse(_certificate(Reader(), [DELIVERED])))
    assert "/v/" not in without
    assert "certifica verify CF-0123456789ABCDEF.pdf" in " ".join(without.split())


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_offline_claim_is_made_only_for_a_publicly_trusted_signer(language: str) -> None:
    reader = Reader(language)
    claim = reader.gettext(
        "mail",
        "Anyone can also check it offline with a PDF reader that validates signatures (such "
        "as Adobe Acrobat Reader): its signature panel shows who signed it and that it has "
        "not been changed since.",
    )
    caveat = reader.gettext(
        "mail",
        "A PDF reader's signature panel shows who signed it, but reports the signature as "
        "valid only on a computer that trusts the provider's certificate.",
    )
    for kind in ("text", "html"):
        trusted = _parse(_certificate(reader, [DELIVERED], publicly_trusted=True))
        private = _parse(_certificate(reader, [DELIVERED]))
        read = _text if kind == "text" else lambda m: m.get_body(("html",)).get_content()  # type: ignore[union-attr]
        said, not_said = " ".join(read(trusted).split()), " ".join(read(private).split())
        assert claim in said and caveat not in said
        assert claim not in not_said and caveat in not_said


def test_each_recipient_is_told_in_words() -> None:
    unreachable = {"address": "dave@example.org", "status": "failed", "reply": ""}
    bounced = {**DELIVERED, "address": "erin@example.org", "status": "bounced"}
    text = _text(_parse(_certificate(Reader(), [DELIVERED, REFUSED, unreachable, bounced])))
    said = " ".join(text.split(Reader().gettext("mail", "Technical details"))[0].split())
    assert "bob@example.org: accepted by the recipient's mail server on 3 December 2026" in said
    assert "carol@example.org: not delivered: the recipient's mail server refused it -" in said
    assert (
        "dave@example.org: not delivered: the recipient's mail server refused it, or could not be reached"
        in said
    )
    assert (
        "erin@example.org: accepted by the recipient's mail server on 3 December 2026, 10:42:05 UTC, which reported later"
        in said
    )
