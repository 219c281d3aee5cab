"""Late bounces: the VERP return path, DSN parsing, and the MX listener that takes them.

DSN shapes are fixture files (``tests/fixtures/dsn_*.eml``, CRLF) written after real
ones from Postfix, Office 365, Gmail, qmail, Exim and Exchange 2003. The MX listener is
a real aiosmtpd server (``MXSMTP`` + ``MXHandler``) on a port the OS picks, on its own
event loop thread, spoken to with smtplib.
"""

from __future__ import annotations

import asyncio
import dataclasses
import smtplib
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.cleanup.bounces import (
    ACTIONS,
    MAX_DIAGNOSTIC,
    BounceReport,
    is_auto_reply,
    make_return_path,
    parse_dsn,
    parse_return_path,
)
from relay.smtpd import replies
from relay.smtpd.mx import (
    BOUNCE_NOT_RECORDED,
    BOUNCE_RECORDED,
    MXSMTP,
    NOT_A_BOUNCE,
    RELAY_DENIED,
    MXHandler,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DOMAIN = "certifica.localhost"
KEY = b"certifica-test-verp-key-32bytes!"
PREFIX = "bounces"
MAX_RECIPIENTS = 3

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def verp(qid: str) -> str:
    return make_return_path(qid, DOMAIN, KEY, PREFIX)


def assert_sane(report: BounceReport) -> None:
    """What every report promises, whatever the input was."""
    assert report.action in ACTIONS
    assert "@" in report.recipient and not any(c.isspace() for c in report.recipient)
    _, _, domain = report.recipient.rpartition("@")
    assert domain == domain.lower()
    assert report.status is None or report.status[0] in "245"
    for text in (report.diagnostic, report.remote_mta, report.reporting_mta, report.arrival_date):
        if text is not None:
            assert len(text) <= MAX_DIAGNOSTIC
            assert not any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text)
            assert text == text.strip()


# -- the fixtures -------------------------------------------------------------------------
# (file, [(recipient, action, status, diagnostic, remote_mta, reporting_mta)])
EXPECTED = [
    (
        "dsn_postfix_failed.eml",
        [
            (
                "bob@example.org",
                "failed",
                "5.1.1",
                "550 5.1.1 <bob@example.org>: Recipient address rejected: "
                "User unknown in virtual mailbox table",
                "mx1.example.org",
                "mail.example.org",
            ),
            # Original-Recipient (the alias the gateway relayed to), domain lower-cased
            (
                "Sales@example.org",
                "failed",
                "5.2.2",
                "552 5.2.2 <carol@example.org>: Mailbox full",
                "mx1.example.org",
                "mail.example.org",
            ),
        ],
    ),
    (
        "dsn_postfix_delayed.eml",
        [
            (
                "dave@example.net",
                "delayed",
                "4.4.1",
                "connect to mx.example.net[203.0.113.41]:25: Connection timed out",
                None,
                "mail.example.net",
            )
        ],
    ),
    (
        "dsn_office365.eml",
        [
            (
                "erin@example.net",
                "failed",
                "5.1.10",
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; "
                "Recipient not found by SMTP address lookup",
                None,
                "AM9PR01MB7123.eurprd01.prod.exchangelabs.com",
            )
        ],
    ),
    (
        "dsn_gmail.eml",
        [
            (
                "frank@example.com",
                "failed",
                "5.1.1",
                "550-5.1.1 The email account that you tried to reach does not exist. Please "
                "try 550-5.1.1 double-checking the recipient's email address for typos or "
                "550-5.1.1 unnecessary spaces. For more information, go to 550 5.1.1 "
                "https://support.google.com/mail/?p=NoSuchUser "
                "a640c23a62f3a-a1b2c3d4e5fsi123456766b.12 - gsmtp",
                "aspmx.l.google.com. (2a00:1450:400c:c0b::1a, the server for the domain "
                "example.com.)",
                "googlemail.com",
            )
        ],
    ),
    (
        "dsn_gmail_legacy.eml",
        [
            (
                "peggy@example.net",
                "failed",
                "5.2.1",
                "Google tried to deliver your message, but it was rejected by the server for "
                "the recipient domain example.net by mx.example.net. [203.0.113.120]. The "
                "error that the other server returned was: 550 5.2.1 Mailbox disabled for "
                "this recipient \u2014 peggy@example.net",
                None,
                None,
            )
        ],
    ),
    (
        "dsn_qmail.eml",
        [
            (
                "grace@example.com",
                "failed",
                "5.1.1",
                "Sorry, no mailbox here by that name. (#5.1.1)",
                None,
                "mail.example.com",
            ),
            (
                "heidi@example.com",
                "failed",
                "5.7.1",
                "203.0.113.61 does not like recipient. Remote host said: 550 5.7.1 "
                "<heidi@example.com>: Recipient address rejected: Access denied "
                "Giving up on 203.0.113.61.",
                "203.0.113.61",
                "mail.example.com",
            ),
        ],
    ),
    (
        "dsn_exim.eml",
        [
            (
                "judy@example.org",
                "failed",
                "5.1.1",
                "host mx2.example.org [203.0.113.82] SMTP error from remote mail server "
                "after RCPT TO:<judy@example.org>: 550 5.1.1 <judy@example.org>: Recipient "
                "address rejected: User unknown in local recipient table",
                "mx2.example.org",
                None,
            ),
            (
                "mallory@lists.example.org",
                "failed",
                "5.7.1",
                "host lists.example.org [203.0.113.90] SMTP error from remote mail server "
                "after end of data: 554 5.7.1 Message rejected: content policy",
                "lists.example.org",
                None,
            ),
        ],
    ),
    (
        "dsn_exchange_legacy.eml",
        [
            (
                "trent@example.org",
                "failed",
                "5.1.1",
                "550 5.1.1 <trent@example.org>... User unknown",
                None,
                "EXCH01.corp.example.org",
            ),
            (
                "victor@example.org",
                "failed",
                "5.2.2",
                "552 5.2.2 Mailbox size limit exceeded",
                None,
                "EXCH01.corp.example.org",
            ),
        ],
    ),
]


@pytest.mark.parametrize(("name", "expected"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_fixture_reports(name: str, expected: list[tuple[str, ...]]) -> None:
    raw = fixture(name)
    assert len(raw) < 30_000 and b"\n" not in raw.replace(b"\r\n", b"")
    reports = parse_dsn(raw)
    got = [
        (r.recipient, r.action, r.status, r.diagnostic, r.remote_mta, r.reporting_mta)
        for r in reports
    ]
    assert got == expected
    for report in reports:
        assert_sane(report)
    assert is_auto_reply(raw)


def test_rfc3464_reports_carry_the_arrival_date() -> None:
    (report,) = parse_dsn(fixture("dsn_office365.eml"))
    assert report.arrival_date == "Mon, 23 Nov 2026 10:00:03 +0000"
    assert parse_dsn(fixture("dsn_qmail.eml"))[0].arrival_date is None


def test_addresses_in_the_returned_original_are_not_reports() -> None:
    # qmail and Exim quote the original after a marker line; addresses in it (and in the
    # Cc of the original) are not recipients the report is about.
    for name in ("dsn_qmail.eml", "dsn_exim.eml"):
        recipients = {r.recipient for r in parse_dsn(fixture(name))}
        assert not recipients & {"ivan@example.com", "oscar@example.org", "alice@example.com"}


def test_postfix_text_alone_gives_the_same_recipients() -> None:
    """A relay that drops the machine-readable part: Postfix's own text still reads."""
    raw = fixture("dsn_postfix_failed.eml")
    boundary = b"--4BvQ2s0Z1Lz9sTq.1795428251/mail.example.org\r\n"
    start = raw.index(boundary + b"Content-Description: Delivery report")
    end = raw.index(boundary + b"Content-Description: Undelivered")
    reports = parse_dsn(raw[:start] + raw[end:])
    assert [(r.recipient, r.action, r.status, r.remote_mta) for r in reports] == [
        ("bob@example.org", "failed", "5.1.1", "mx1.example.org"),
        ("Sales@example.org", "failed", "5.2.2", "mx1.example.org"),
    ]
    assert reports[0].diagnostic.endswith("(in reply to RCPT TO command)")


def _without_part(raw: bytes, boundary: bytes, content_type: bytes) -> bytes:
    """``raw`` with the part of that content type taken out, as a stripping relay does."""
    delimiter = b"--" + boundary + b"\r\n"
    start = raw.index(delimiter + b"Content-Type: " + content_type)
    end = raw.index(b"--" + boundary, start + len(delimiter))
    return raw[:start] + raw[end:]


def test_text_only_delay_warning_stays_a_delay() -> None:
    raw = fixture("dsn_postfix_delayed.eml").replace(
        b"Content-Description: Delivery report\r\n", b""
    )
    raw = _without_part(
        raw, b"4Bw9kL3f2Qz1xYp.1795529549/mail.example.net", b"message/delivery-status"
    )
    (report,) = parse_dsn(raw)
    assert (report.recipient, report.action, report.status) == ("dave@example.net", "delayed", None)
    assert report.diagnostic.startswith("connect to mx.example.net[203.0.113.41]:25")


def test_office365_text_and_html_alone() -> None:
    raw = _without_part(
        fixture("dsn_office365.eml"),
        b"7d3c1e2a-5b4f-4e6a-9c8d-0f1e2d3c4b5a",
        b"message/delivery-status",
    )
    html_only = _without_part(raw, b"2f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f", b"text/plain")
    for variant in (raw, html_only):
        (report,) = parse_dsn(variant)  # not our own return path in "Sender Address:"
        assert (report.recipient, report.action, report.status) == (
            "erin@example.net",
            "failed",
            "5.1.10",
        )
        assert report.diagnostic == (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup"
        )
    assert parse_dsn(raw)[0].reporting_mta == "AM9PR01MB7123.eurprd01.prod.exchangelabs.com"


def test_exim_delay_warning() -> None:
    raw = (
        b"From: Mail Delivery System <Mailer-Daemon@mail.example.org>\r\n"
        b"Subject: Warning: message 1tE9xZ-0003Kq-7c delayed 24 hours\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\n"
        b"This message was created automatically by mail delivery software.\r\n"
        b"A message that you sent has not yet been delivered to one or more of its\r\n"
        b"recipients after more than 24 hours on the queue on mail.example.org.\r\n\r\n"
        b"The address to which the message has not yet been delivered is:\r\n\r\n"
        b"  judy@example.org\r\n"
        b"    host mx2.example.org [203.0.113.82]\r\n"
        b"    Delay reason: SMTP error from remote mail server after RCPT TO:<judy@example.org>:\r\n"
        b"    451 4.7.1 Greylisted, please try again later\r\n\r\n"
        b"No action is required on your part. Delivery attempts will continue for\r\n"
        b"some time, and this warning may be repeated at intervals if the message\r\n"
        b"remains undelivered. Eventually the mail delivery software will give up,\r\n"
        b"and when that happens, the message will be returned to you.\r\n"
    )
    (report,) = parse_dsn(raw)
    assert (report.recipient, report.action, report.status, report.remote_mta) == (
        "judy@example.org",
        "delayed",
        "4.7.1",
        "mx2.example.org",
    )


def test_out_of_office_is_not_a_dsn() -> None:
    raw = fixture("dsn_out_of_office.eml")
    assert parse_dsn(raw) == []
    assert is_auto_reply(raw)


def test_ordinary_mail_is_neither_dsn_nor_auto_reply() -> None:
    for name in ("gmail_plain.eml", "outlook_html.eml", "thunderbird_attachments.eml"):
        raw = fixture(name)
        assert parse_dsn(raw) == []
        assert not is_auto_reply(raw)


def _dsn(status_group: str, human: str = "The mail system\r\n") -> bytes:
    return (
        "From: MAILER-DAEMON@mail.example.org\r\n"
        "To: someone@certifica.localhost\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n--B\r\nContent-Type: text/plain\r\n\r\n" + human + "\r\n--B\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mail.example.org\r\n\r\n" + status_group + "\r\n--B--\r\n"
    ).encode("utf-8")


def test_hostile_diagnostic_is_one_clean_line() -> None:
    evil = (
        "smtp; 550 5.1.1 user\x1b[31m unknown\u202e<script>alert(1)</script>\u2028Bcc: x@y"
        + "A" * 2000
    )
    raw = _dsn(
        "Final-Recipient: rfc822; bob@EXAMPLE.org\r\nAction: FAILED\r\n"
        f"Status: 5.1.1 (bad mailbox)\r\nDiagnostic-Code: {evil}\r\n"
    )
    (report,) = parse_dsn(raw)
    assert_sane(report)
    assert report.recipient == "bob@example.org"
    assert report.action == "failed" and report.status == "5.1.1"
    assert report.diagnostic.startswith("550 5.1.1 user [31m unknown <script>alert(1)</script>")
    assert len(report.diagnostic) == MAX_DIAGNOSTIC


def test_missing_action_and_diagnostic_are_inferred() -> None:
    raw = _dsn(
        "Final-Recipient: rfc822;<bob@example.org>\r\nStatus: 4.2.2\r\n",
        human="<bob@example.org>: mailbox is over quota, will retry\r\n",
    )
    (report,) = parse_dsn(raw)
    assert (report.action, report.status) == ("delayed", "4.2.2")
    assert report.diagnostic == "<bob@example.org>: mailbox is over quota, will retry"


def test_global_delivery_status_with_utf8_address() -> None:
    raw = _dsn(
        "Final-Recipient: utf-8; j\\x{00FC}rgen@B\\x{00DC}RO.example\r\n"
        "Action: failed\r\nStatus: 5.1.1\r\n"
    ).replace(b"message/delivery-status", b"message/global-delivery-status")
    (report,) = parse_dsn(raw)
    assert report.recipient == "j\u00fcrgen@b\u00fcro.example"


def test_disposition_notification_is_not_a_dsn() -> None:
    raw = (
        b"From: bob@example.org\r\nSubject: Read: Contract\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=disposition-notification; boundary="B"'
        b"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nYour message was read.\r\n--B\r\n"
        b"Content-Type: message/disposition-notification\r\n\r\n"
        b"Final-Recipient: rfc822; bob@example.org\r\n"
        b"Disposition: manual-action/MDN-sent-manually; displayed\r\n--B--\r\n"
    )
    assert parse_dsn(raw) == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Auto-Submitted: auto-replied", True),
        ("Auto-Submitted: auto-generated (vacation)", True),
        ("Auto-Submitted: no", False),
        ("Auto-Submitted: No (a person wrote this)", False),
        ("Precedence: bulk", True),
        ("Precedence: junk", True),
        ("Precedence: list", True),
        ("Precedence: first-class", False),
        ("List-Id: Lawyers <lawyers.lists.example.org>", True),
        ("List-Unsubscribe: <mailto:leave@lists.example.org>", True),
        ("X-Autoreply: yes", True),
        ("X-Autorespond: Out of office", True),
        ("X-Auto-Response-Suppress: All", True),
        ("X-Auto-Response-Suppress: OOF, AutoReply", True),
        ("Return-Path: <>", True),
        ("X-Failed-Recipients: bob@example.org", True),
        ("X-Mailer: Thunderbird", False),
    ],
)
def test_is_auto_reply(header: str, expected: bool) -> None:
    raw = (
        f"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\n{header}\r\n"
        "Subject: Re: Contract\r\n\r\nThanks.\r\n"
    ).encode()
    assert is_auto_reply(raw) is expected


def test_mailer_daemon_sender_is_auto() -> None:
    raw = b"From: Mail Delivery System <MAILER-DAEMON@mail.example.org>\r\n\r\nx\r\n"
    assert is_auto_reply(raw)


# -- bounded time and memory --------------------------------------------------------------
def _timed(raw: bytes) -> tuple[list[BounceReport], float]:
    start = time.monotonic()
    result = parse_dsn(raw)
    return result, time.monotonic() - start


def test_deep_nesting_and_many_parts_are_bounded() -> None:
    deep = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(5000)
    )
    many = (
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="p"\r\n\r\n'
        + b"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 100_000
        + b"--p--\r\n"
    )
    for raw in (deep, many):
        result, elapsed = _timed(raw)
        assert result == []
        assert elapsed < 5, elapsed


@pytest.mark.parametrize(
    "body",
    [
        "<" * 200_000,
        "<" + " " * 200_000,
        "\n" * 200_000,
        "a" * 200_000,
        ("x@" * 100_000),
        ("<a@" * 60_000),
        ("host " * 50_000),
        (" 5.1.1" * 40_000),
        ('; a="' * 40_000),
    ],
    ids=["lt", "lt-spaces", "newlines", "run", "at-run", "angle-at", "host", "codes", "params"],
)
def test_pathological_text_is_linear(body: str) -> None:
    head = "Subject: Undeliverable: x\r\nFrom: MAILER-DAEMON@mail.example.org\r\n"
    markers = [
        "This is the qmail-send program at x.example.",
        "This message was created automatically by mail delivery software.",
        "Delivery to the following recipient failed permanently:",
        "Delivery has failed to these recipients or groups:",
        "",
    ]
    for ctype in ("text/plain", "text/html"):
        for marker in markers:
            raw = (
                f"{head}X-Failed-Recipients: bob@example.org\r\nContent-Type: {ctype}; "
                f"a={body[:900]}\r\n\r\n{marker}\r\n\r\n{body}"
            ).encode()
            _, elapsed = _timed(raw)
            assert elapsed < 2, (ctype, marker, elapsed)


def test_big_dsn_with_a_large_original_is_fast() -> None:
    raw = fixture("dsn_office365.eml")
    original = b"Content-Type: message/rfc822\r\n\r\n"
    big = raw.replace(original, original + b"X" * 70 + (b"Y" * 76 + b"\r\n") * 300_000)
    reports, elapsed = _timed(big)
    assert [r.recipient for r in reports] == ["erin@example.net"]
    assert elapsed < 5, elapsed


# -- properties ---------------------------------------------------------------------------
DSN_FIXTURES = sorted(p.name for p in FIXTURES.glob("dsn_*.eml"))


@PROPERTY
@given(st.binary(max_size=4096))
def test_parse_dsn_never_raises_on_bytes(raw: bytes) -> None:
    for report in parse_dsn(raw):
        assert_sane(report)
    is_auto_reply(raw)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> bytes:
    data = bytearray(fixture(draw(st.sampled_from(DSN_FIXTURES))))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        if op == "flip" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(
                st.sampled_from(
                    [b"\r\n", b"\r\n\r\n", b"--", b":", b";", b"<", b">", b"@", b"\x00", b"\xff"]
                )
                | st.binary(max_size=64)
            )
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            other = fixture(draw(st.sampled_from(DSN_FIXTURES)))
            data[pos:pos] = other[: draw(st.integers(0, len(other)))]
    return bytes(data)


@PROPERTY
@given(mutated_fixture())
def test_parse_dsn_never_raises_on_mutated_fixtures(raw: bytes) -> None:
    reports = parse_dsn(raw)
    assert len(reports) <= 500
    for report in reports:
        assert_sane(report)


CHARSETS = st.sampled_from(
    ["utf-8", "us-ascii", "iso-8859-1", "utf-16", "utf-7", "shift_jis", "iso-2022-jp",
     "unicode_escape", "raw_unicode_escape", "punycode", "idna", "rot13", "hex", "base64",
     "undefined", "x-unknown", "utf-8\x00", ""]
)  # fmt: skip


@PROPERTY
@given(
    CHARSETS,
    st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "x-uuencode"]),
    st.sampled_from(["text/plain", "text/html", "message/delivery-status"]),
    st.binary(max_size=512) | st.just(b"\\q \\N{x} \\x \\u12 =ZZ =\r\n <a@b>: 550 5.1.1"),
)
def test_parse_dsn_survives_any_charset_and_encoding(
    charset: str, cte: str, ctype: str, body: bytes
) -> None:
    raw = (
        b"From: MAILER-DAEMON@mail.example.org\r\nSubject: Undeliverable\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: " + ctype.encode() + b"; charset=" + charset.encode() + b"\r\n"
        b"Content-Transfer-Encoding: " + cte.encode() + b"\r\n\r\n"
        b"This is the qmail-send program at x.example.\r\n\r\n" + body + b"\r\n--B--\r\n"
    )
    for report in parse_dsn(raw):
        assert_sane(report)


QIDS = st.text(alphabet="0123456789ABCDEFabcdef_-xyzXYZ", min_size=1, max_size=64)
KEYS = st.binary(min_size=16, max_size=64)
DOMAINS = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,12}){1,3}", fullmatch=True)
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


@PROPERTY
@given(QIDS, KEYS, DOMAINS)
def test_return_path_round_trips(qid: str, key: bytes, domain: str) -> None:
    address = make_return_path(qid, domain, key)
    assert parse_return_path(address, domain, key) == qid
    assert parse_return_path(f"<{address}>", domain, key) == qid
    # Remote MTAs change case: prefix, tag and domain compare case-insensitively.
    assert parse_return_path(address.upper(), domain.upper(), key) == qid.upper()
    local, _, _ = address.rpartition("@")
    assert parse_return_path(f"{local}@{domain.upper()}", domain, key) == qid


@PROPERTY
@given(QIDS, KEYS, DOMAINS, st.data())
def test_return_path_rejects_forgeries(
    qid: str, key: bytes, domain: str, data: st.DataObject
) -> None:
    address = make_return_path(qid, domain, key)
    local, _, _ = address.rpartition("@")
    head, _, tag = local.rpartition(".")
    i = data.draw(st.integers(0, len(tag) - 1))
    other = data.draw(st.sampled_from([c for c in BASE32 if c != tag[i]]))
    forged = f"{head}.{tag[:i]}{other}{tag[i + 1 :]}@{domain}"
    assert parse_return_path(forged, domain, key) is None
    assert parse_return_path(f"{head}.{tag[:-1]}@{domain}", domain, key) is None
    assert parse_return_path(f"{head}.{tag}x@{domain}", domain, key) is None
    assert parse_return_path(address, "other." + domain, key) is None
    assert (
        parse_return_path(f"{local}@sub.{domain}", f"sub.{domain}", key) == qid
    )  # domain-free MAC
    other_key = data.draw(KEYS.filter(lambda k: k != key))
    assert parse_return_path(address, domain, other_key) is None
    assert parse_return_path(address, domain, key, prefix="return") is None
    other_qid = data.draw(QIDS.filter(lambda q: q.upper() != qid.upper()))
    assert parse_return_path(f"{PREFIX}+{other_qid}.{tag}@{domain}", domain, key) is None


def test_return_path_shape_and_errors() -> None:
    address = verp("4F2A1B3C9D0E")
    assert address == "bounces+4F2A1B3C9D0E.utp474xztg@certifica.localhost"
    assert make_return_path("4F2A1B3C9D0E", DOMAIN, KEY, prefix="rp").startswith("rp+4F2A")
    for bad_qid in ("", "a.b", "a@b", "a+b", "a b", "x" * 65, "caf\u00e9"):
        with pytest.raises(ValueError):
            make_return_path(bad_qid, DOMAIN, KEY)
    with pytest.raises(ValueError):
        make_return_path("ABC", DOMAIN, b"short")
    with pytest.raises(ValueError):
        parse_return_path(address, DOMAIN, b"")
    junk = [
        "",
        "@",
        "bounces@certifica.localhost",
        "bounces+@certifica.localhost",
        "bounces+.utp474xztg@certifica.localhost",
        '"' + address + '"',
        "x" * 400,
        address.replace("bounces+", "bounces-"),
    ]
    for not_ours in junk:
        assert parse_return_path(not_ours, DOMAIN, KEY) is None


# -- the MX listener ------------------------------------------------------------------------
class Recorder:
    """``on_bounce`` for the tests: records calls, or fails when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[BounceReport], bytes]] = []
        self.fail = False
        self.lock = threading.Lock()

    async def on_bounce(self, qid: str, reports: list[BounceReport], raw: bytes) -> None:
        if self.fail:
            raise RuntimeError("database is locked (secret detail)")
        with self.lock:
            self.calls.append((qid, reports, raw))

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()
        self.fail = False


class MXServer:
    def __init__(self, recorder: Recorder) -> None:
        self.handler = MXHandler(
            domain=DOMAIN,
            hostname="mx." + DOMAIN,
            verp_key=KEY,
            verp_prefix=PREFIX,
            on_bounce=recorder.on_bounce,
            max_recipients=MAX_RECIPIENTS,
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def start() -> asyncio.base_events.Server:
            return await self.loop.create_server(
                lambda: MXSMTP(
                    self.handler,
                    header_limit=64 * 1024,
                    data_size_limit=1024 * 1024,
                    enable_SMTPUTF8=True,
                    hostname="mx." + DOMAIN,
                    ident="Certifica ESMTP",
                    loop=self.loop,
                ),
                "127.0.0.1",
                0,
            )

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]

    def client(self) -> smtplib.SMTP:
        client = smtplib.SMTP("127.0.0.1", self.port, timeout=10)
        client.ehlo("mail.example.org")
        return client

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def mx_server(recorder: Recorder) -> Iterator[MXServer]:
    server = MXServer(recorder)
    yield server
    server.close()


@pytest.fixture
def mx(mx_server: MXServer, recorder: Recorder) -> Iterator[MXServer]:
    recorder.reset()
    yield mx_server
    recorder.reset()


def reply(result: tuple[int, bytes]) -> str:
    return f"{result[0]} {result[1].decode()}"


def test_dsn_from_null_sender_is_recorded(
    mx: MXServer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="certifica/mx")
    raw = fixture("dsn_postfix_failed.eml")
    with mx.client() as client:
        assert "auth" not in client.esmtp_features
        assert reply(client.mail("")) == replies.SENDER_OK
        assert reply(client.rcpt(verp("4F2A1B3C9D0E"))) == replies.RECIPIENT_OK
        assert reply(client.data(raw)) == BOUNCE_RECORDED
    ((qid, reports, got),) = recorder.calls
    assert qid == "4F2A1B3C9D0E"
    assert reports == parse_dsn(raw)
    assert [r.recipient for r in reports] == ["bob@example.org", "Sales@example.org"]
    assert got == raw
    assert (
        "4F2A1B3C9D0E: bounce: to=<bob@example.org>, action=failed, dsn=5.1.1, "
        "remote=mx1.example.org, reporting=mail.example.org (550 5.1.1" in caplog.text
    )


def test_null_sender_keeps_the_protocol_state(mx: MXServer) -> None:
    with mx.client() as client:
        assert client.docmd("RCPT TO:<" + verp("4F2A1B3C9D0E") + ">")[0] == 503
        assert client.docmd("MAIL FROM:<> SIZE=1000")[0] == 250
        assert client.docmd("MAIL FROM:<>")[0] == 503  # nested MAIL is still refused
        assert reply(client.rcpt("<>")).startswith("550 5.1.1 ")
        assert client.docmd("RSET")[0] == 250
        assert client.docmd("RCPT TO:<" + verp("4F2A1B3C9D0E") + ">")[0] == 503
        assert client.docmd("MAIL FROM:<postmaster@example.org>")[0] == 250


def test_handler_sees_the_empty_reverse_path(mx: MXServer) -> None:
    seen: list[str] = []
    original = mx.handler.handle_DATA

    async def spy(server: object, session: object, envelope: object) -> str:
        seen.append(envelope.mail_from)  # type: ignore[attr-defined]
        return await original(server, session, envelope)

    mx.handler.handle_DATA = spy  # type: ignore[method-assign]
    try:
        with mx.client() as client:
            client.sendmail("", [verp("4F2A1B3C9D0E")], fixture("dsn_qmail.eml"))
            client.sendmail("mailer-daemon@example.org", [verp("4F2A1B3C9D0E")], b"x\r\n")
    finally:
        del mx.handler.handle_DATA
    assert seen == ["", "mailer-daemon@example.org"]


def test_case_changed_return_path_is_accepted(mx: MXServer, recorder: Recorder) -> None:
    with mx.client() as client:
        client.sendmail("", [verp("4F2A1B3C9D0E").upper()], fixture("dsn_exim.eml"))
    assert [c[0] for c in recorder.calls] == ["4F2A1B3C9D0E"]


@pytest.mark.parametrize(
    "address",
    [
        "bounces+4F2A1B3C9D0E.aaaaaaaaaa@certifica.localhost",  # forged tag
        "bounces+4F2A1B3C9D0F.utp474xztg@certifica.localhost",  # another qid, same tag
        "bounces@certifica.localhost",
        "postmaster@certifica.localhost",  # this handler is built without on_postmaster
        "certifica@certifica.localhost",  # nor on_certify
        '"a b"@certifica.localhost',
        "postmaster",
    ],
)
def test_unknown_local_address_is_refused(mx: MXServer, recorder: Recorder, address: str) -> None:
    with mx.client() as client:
        client.mail("")
        assert reply(client.docmd(f"RCPT TO:<{address}>")).startswith("550 5.1.1 ")
        assert client.docmd("DATA")[0] == 503
    assert recorder.calls == []


@pytest.mark.parametrize(
    "address",
    [
        "victim@example.org",
        "bounces+4F2A1B3C9D0E.utp474xztg@example.org",
        "x@sub.certifica.localhost",
        "x@[127.0.0.1]",
        "u%ext.example@certifica.localhost",
        "u!ext.example!x@certifica.localhost",
        "@a.example:x@b.example",
        "@a.example,@b.example:x@c.example",
        "@a.example:bounces+4F2A1B3C9D0E.utp474xztg@certifica.localhost",
        '"x@ext.example"@certifica.localhost',
        '"u%ext.example"@certifica.localhost',
    ],
)
def test_relay_attempts_are_refused(
    mx: MXServer, recorder: Recorder, address: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="certifica/mx")
    with mx.client() as client:
        client.mail("spammer@example.net")
        code, text = client.docmd(f"RCPT TO:<{address}>")
        assert client.docmd("DATA")[0] == 503
    assert recorder.calls == []
    if address.endswith("@" + DOMAIN):
        # A route inside an address at our domain names no address of ours (relay.addresses).
        assert (code, text[:6]) == (550, b"5.1.1 ") and b"no such address" in text
        assert "NOQUEUE: reject: RCPT" in caplog.text
    else:
        assert (code, text) == (550, RELAY_DENIED.format(domain=DOMAIN)[4:].encode())
        assert "Relay access denied; from=<spammer@example.net>" in caplog.text


def test_recipient_limit(mx: MXServer, recorder: Recorder) -> None:
    qids = ["0B1C2D3E4F5A", "1E2F3A4B5C6D", "2A3B4C5D6E7F", "3C4D5E6F7A8B"]
    with mx.client() as client:
        client.mail("")
        for qid in qids[:MAX_RECIPIENTS]:
            assert reply(client.rcpt(verp(qid))) == replies.RECIPIENT_OK
        assert reply(client.rcpt(verp(qids[MAX_RECIPIENTS]))) == replies.TOO_MANY_RECIPIENTS
        assert reply(client.data(fixture("dsn_gmail.eml"))) == BOUNCE_RECORDED
    assert [c[0] for c in recorder.calls] == qids[:MAX_RECIPIENTS]


def test_reply_to_the_return_path_is_reported_without_reports(
    mx: MXServer, recorder: Recorder
) -> None:
    raw = fixture("dsn_out_of_office.eml")
    with mx.client() as client:
        client.mail("bob@example.org")
        client.rcpt(verp("4F2A1B3C9D0E"))
        assert reply(client.data(raw)) == NOT_A_BOUNCE
    assert recorder.calls == [("4F2A1B3C9D0E", [], raw)]


def test_on_bounce_failure_is_a_temporary_error(
    mx: MXServer, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.fail = True
    with mx.client() as client:
        client.mail("")
        client.rcpt(verp("4F2A1B3C9D0E"))
        answer = reply(client.data(fixture("dsn_office365.eml")))
        assert answer == BOUNCE_NOT_RECORDED
        assert answer.startswith("451 4.3.0") and "secret" not in answer
        recorder.fail = False
        client.mail("")  # the session goes on, the DSN can be sent again
        client.rcpt(verp("4F2A1B3C9D0E"))
        assert reply(client.data(fixture("dsn_office365.eml"))) == BOUNCE_RECORDED
    assert len(recorder.calls) == 1
    assert "4F2A1B3C9D0E: the delivery report could not be recorded" in caplog.text


def test_eight_bit_dsn_body_is_accepted(mx: MXServer, recorder: Recorder) -> None:
    raw = _dsn(
        "Final-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n",
        human="Die Nachricht konnte nicht zugestellt werden: Empf\u00e4nger unbekannt.\r\n",
    )
    assert not raw.isascii()
    with mx.client() as client:
        client.sendmail("", [verp("4F2A1B3C9D0E")], raw, mail_options=["BODY=8BITMIME"])
    ((_, reports, got),) = recorder.calls
    assert got == raw and reports[0].recipient == "bob@example.org"


def test_eight_bit_header_needs_smtputf8(mx: MXServer, recorder: Recorder) -> None:
    raw = "Subject: Unzustellbar: Vertr\u00e4ge\r\n".encode() + fixture("dsn_postfix_failed.eml")
    with mx.client() as client:
        client.mail("")
        client.rcpt(verp("4F2A1B3C9D0E"))
        assert reply(client.data(raw)) == replies.EIGHT_BIT_HEADERS
        client.mail("", ["SMTPUTF8"])
        client.rcpt(verp("4F2A1B3C9D0E"))
        assert reply(client.data(raw)) == BOUNCE_RECORDED
    assert len(recorder.calls) == 1


def test_bare_lf_dsn_is_refused_before_on_bounce(mx: MXServer, recorder: Recorder) -> None:
    raw = fixture("dsn_qmail.eml").replace(b"\r\n", b"\n")
    with mx.client() as client:
        client.mail("")
        client.rcpt(verp("9A8B7C6D5E4F"))
        # smtplib sends bytes as they are; the terminator it adds is CRLF.CRLF
        assert reply(client.data(raw)) == replies.BARE_LINE_ENDING
        assert client.noop()[0] == 250
    assert recorder.calls == []


def test_handler_validates_its_configuration() -> None:
    async def on_bounce(qid: str, reports: list[BounceReport], raw: bytes) -> None:
        return None

    with pytest.raises(ValueError):
        MXHandler(
            domain=DOMAIN, hostname="mx", verp_key=b"short", verp_prefix=PREFIX, on_bounce=on_bounce
        )
    handler = MXHandler(
        domain="Certifica.LOCALHOST.",
        hostname="mx",
        verp_key=KEY,
        verp_prefix=PREFIX,
        on_bounce=on_bounce,
    )
    assert handler.local_address_kind(verp("4F2A1B3C9D0E")) == "bounce"
    assert handler.local_address_kind("bob@" + DOMAIN) is None


def test_reports_are_plain_data() -> None:
    (report,) = parse_dsn(fixture("dsn_postfix_delayed.eml"))
    assert dataclasses.asdict(report) == {
        "recipient": "dave@example.net",
        "action": "delayed",
        "status": "4.4.1",
        "diagnostic": "connect to mx.example.net[203.0.113.41]:25: Connection timed out",
        "remote_mta": None,
        "reporting_mta": "mail.example.net",
        "arrival_date": "Tue, 24 Nov 2026 10:02:11 +0000 (UTC)",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.action = "failed"  # type: ignore[misc]
