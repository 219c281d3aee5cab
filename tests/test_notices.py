"""The mail the gateway writes: well-formed MIME, header fields that cannot be injected,
and exactly the PDF it carries; read back with the stdlib's parser."""

from __future__ import annotations

import email
import email.header
import email.policy
import os

from hypothesis import example, given, settings
from hypothesis import strategies as st

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
