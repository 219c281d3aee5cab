"""certifier.message: fixtures from real mailers, broken MIME, hostile text, strict From.

Expected hashes are computed here independently of the module: from the stdlib email
parser's decoded payloads, or by slicing the fixture bytes by hand for broken parts.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formataddr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from certifier.message import Attachment, MessageSummary, sha256_hex, summarise
from certifier.mime import addresses as addresses_module
from certifier.mime import header_from_addresses, parse_single_mailbox

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ALICE = "alice@example.com"
CERT = "certifica@certifica.localhost"
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def format_mailbox(name: str, addr: str) -> str:
    """formataddr, which refuses non-ASCII addresses; RFC 6532 ones are written plainly."""
    if addr.isascii():
        return formataddr((name, addr))
    return f"{formataddr((name, 'x@x'))[:-6]} <{addr}>" if name else addr


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def stdlib_attachments(raw: bytes) -> dict[str, bytes]:
    """Decoded payloads by file name, as the stdlib parser sees them (fixtures are shallow)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    found: dict[str, bytes] = {}
    for part in msg.walk():
        name = part.get_filename()
        if name:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            found[str(name)] = payload
    return found


def single_line_strings(s: MessageSummary) -> Iterator[str]:
    """Every output string that must stay on one line (all but the body text)."""
    yield from (s.sha256, s.subject, s.date, s.message_id, s.from_)
    yield from s.to + s.cc + s.from_addresses + s.defects
    for a in s.attachments:
        yield from (a.filename, a.content_type, a.sha256)


def check_invariants(s: MessageSummary, raw: bytes) -> None:
    assert s.sha256 == hashlib.sha256(raw).hexdigest()
    assert s.size == len(raw)
    evidence = s.as_evidence()
    json.dumps(evidence, ensure_ascii=False).encode("utf-8")  # no surrogates either
    assert set(evidence) == {
        "sha256", "size", "subject", "date", "message_id", "from", "to", "cc",
        "attachments", "text", "text_truncated", "defects",
    }  # fmt: skip
    for text in single_line_strings(s):
        assert isinstance(text, str)
        assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u2029]", text), text
    assert "\r" not in s.text and "\x00" not in s.text
    assert not any(d.startswith("internal error") for d in s.defects), s.defects
    for a in s.attachments:
        assert a.size >= 0 and re.fullmatch("[0-9a-f]{64}", a.sha256)
        assert a.filename


# ---------------------------------------------------------------------------
# Fixtures from real mailers


@dataclass
class Expected:
    subject: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    attachments: tuple[tuple[str, str], ...]
    text_contains: str
    from_: str = "Alice Example <alice@example.com>"
    defects: tuple[str, ...] = ()


EXPECTED = {
    "thunderbird_attachments.eml": Expected(
        subject="Contrato firmado – revisión",
        to=("Bob <bob@example.org>", "carol@example.net"),
        cc=(CERT,),
        attachments=(("contrato-revisión.pdf", "application/pdf"), ("firma.png", "image/png")),
        text_contains="te envío el contrato firmado y la revisión del anexo",
    ),
    "outlook_html.eml": Expected(
        subject="Propuesta trimestral",
        to=("Bob <bob@example.org>",),
        cc=(f'"{CERT}" <{CERT}>',),
        attachments=(("image001.png", "image/png"),),
        text_contains="La cifra final está en la página 2.",
    ),
    "gmail_plain.eml": Expected(
        subject="Re: Reunión del jueves",
        to=("Bob <bob@example.org>", "carol@example.net"),
        cc=(CERT,),
        attachments=(),
        text_contains="¿Nos vemos el jueves a las 10:00 en la oficina de Valladolid?",
    ),
    "broken_base64.eml": Expected(
        subject="Factura y datos",
        to=("Bob <bob@example.org>",),
        cc=(CERT,),
        attachments=(("factura.pdf", "application/pdf"), ("datos.bin", "application/octet-stream")),
        text_contains="the second one was damaged in transit",
        defects=("base64 in part 3 could not be decoded",),
    ),
    "missing_boundary.eml": Expected(
        subject="Informe (truncado)",
        to=("carol@example.net",),
        cc=(CERT,),
        attachments=(("grafico.png", "image/png"),),
        text_contains="Atención: el mensaje se cortó.",
        defects=("missing final MIME boundary", "missing final MIME boundary in part 1"),
    ),
    "hostile_subject.eml": Expected(
        subject='<b>Urgent</b> <font color="red">{{7*7}}</font> \'; DROP TABLE users;-- a  Bcc: x@y',
        from_='"<b>Alice</b> {{7*7}} \'; DROP TABLE users;-- a  Bcc: x@y" <alice@example.com>',
        to=(
            '"<font color=red>Bob</font>" <bob@example.org>',
            '"Carol  Bcc: evil@example.net" <carol@example.net>',
        ),
        cc=(CERT,),
        attachments=(("evil  Bcc: x@y.txt", "text/plain"),),
        text_contains="Hello {{7*7}} '; DROP TABLE users;--\n<para>reportlab</para>",
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_summary(name: str) -> None:
    raw = fixture(name)
    assert raw.count(b"\n") == raw.count(b"\r\n") and len(raw) < 50_000
    s = summarise(raw)
    want = EXPECTED[name]
    check_invariants(s, raw)
    assert s.sha256 == hashlib.sha256(raw).hexdigest() == sha256_hex(raw)
    assert (s.subject, s.from_, s.to, s.cc) == (want.subject, want.from_, want.to, want.cc)
    assert s.from_addresses == (ALICE,)
    assert header_from_addresses(raw) == [ALICE]
    assert [(a.filename, a.content_type) for a in s.attachments] == list(want.attachments)
    assert s.defects == want.defects
    assert want.text_contains in s.text
    assert not s.text_truncated
    assert s.date and s.message_id.startswith("<") and s.message_id.endswith(">")


@pytest.mark.parametrize(
    "name", ["thunderbird_attachments.eml", "outlook_html.eml", "hostile_subject.eml"]
)
def test_fixture_attachment_hashes_match_stdlib_decoding(name: str) -> None:
    raw = fixture(name)
    decoded = stdlib_attachments(raw)
    for a in summarise(raw).attachments:
        payload = decoded[a.filename.replace("  ", "\r\n")]  # hostile name had CR LF
        assert (a.size, a.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())


def test_thunderbird_attachments_are_the_real_files() -> None:
    s = summarise(fixture("thunderbird_attachments.eml"))
    pdf, png = s.attachments
    decoded = stdlib_attachments(fixture("thunderbird_attachments.eml"))
    assert decoded["contrato-revisión.pdf"].startswith(b"%PDF-1.4")
    assert decoded["firma.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert pdf == Attachment(
        "contrato-revisión.pdf",
        "application/pdf",
        len(decoded["contrato-revisión.pdf"]),
        hashlib.sha256(decoded["contrato-revisión.pdf"]).hexdigest(),
    )
    assert png.size == len(decoded["firma.png"])


def raw_part_body(raw: bytes, boundary: bytes, index: int) -> bytes:
    """Body of the index-th part (1-based) as sent, by plain splitting (RFC 2046)."""
    part = raw.split(b"\r\n--" + boundary)[index]
    part = part[part.index(b"\r\n") + 2 :]  # rest of the delimiter line
    return part[part.index(b"\r\n\r\n") + 4 :]


def test_broken_base64_hashes_the_body_as_sent() -> None:
    raw = fixture("broken_base64.eml")
    s = summarise(raw)
    good, bad = s.attachments
    pdf = base64.b64decode(raw_part_body(raw, b"==BOUNDARY-bb-01==", 2))
    assert (good.size, good.sha256) == (len(pdf), hashlib.sha256(pdf).hexdigest())
    sent = raw_part_body(raw, b"==BOUNDARY-bb-01==", 3)
    assert b"!!!not*base64***" in sent
    with pytest.raises(binascii.Error):
        binascii.a2b_base64(sent.replace(b"\r\n", b""), strict_mode=True)
    assert (bad.size, bad.sha256) == (len(sent), hashlib.sha256(sent).hexdigest())


def test_missing_boundary_still_hashes_the_truncated_attachment() -> None:
    raw = fixture("missing_boundary.eml")
    s = summarise(raw)
    png = base64.b64decode(raw[raw.rindex(b"\r\n\r\n") + 4 :])
    assert png.startswith(b"\x89PNG")
    assert s.attachments[0].sha256 == hashlib.sha256(png).hexdigest()
    assert s.attachments[0].size == len(png)
    # the unclosed inner alternative ended at the outer delimiter, not at end of file
    assert "informe" in s.text and "iVBOR" not in s.text


def test_hostile_fixture_has_no_line_breaks_outside_the_body() -> None:
    raw = fixture("hostile_subject.eml")
    s = summarise(raw)
    check_invariants(s, raw)
    for text in single_line_strings(s):
        assert "\r" not in text and "\n" not in text
    assert "\r" not in s.text
    assert "alert(1)" not in s.text and "color:red" not in s.text  # script, style dropped
    assert "<b>" not in s.text  # tags are markup, not text ...
    assert "<para>reportlab</para>" in s.text  # ... but escaped markup stays literal
    assert json.loads(json.dumps(s.as_evidence()))["subject"] == s.subject


def test_outlook_html_part_converts_to_readable_text() -> None:
    raw = fixture("outlook_html.eml")
    # drop the text/plain alternative so the HTML one is used
    start = raw.index(b"Content-Type: text/plain")
    end = raw.index(b"--_000_", start)
    s = summarise(raw[:start] + raw[end + 1 :].split(b"\r\n", 1)[1])
    assert s.text.startswith("Hola Bob,\n")
    assert "adjunto la propuesta trimestral. La cifra final está en la página 2." in s.text
    assert "font-family" not in s.text and "Calibri" not in s.text and "mso" not in s.text


# ---------------------------------------------------------------------------
# Strict From parsing

AMBIGUOUS = [
    "",
    "   ",
    "a@example.com, b@example.org",
    "a@example.com b@example.org",
    "a@example.com; b@example.org",
    "alice@example.com <bob@example.org>",
    "bob@example.org <alice@example.com>",
    '"alice@example.com" bob@example.org',
    '"Alice <bob@evil.example>" alice@example.com',
    "alice@example.com\t<bob@example.org>",
    "alice@example.com)<bob@example.org>",  # CVE-2023-27043 shape
    "Alice <alice@example.com",
    "Alice alice@example.com>",
    "<<alice@example.com>>",
    "<alice@example.com> <bob@example.org>",
    "Alice <alice@example.com> Bob <bob@example.org>",
    "Friends: alice@example.com;",
    "Friends: alice@example.com, bob@example.org;",
    "undisclosed-recipients:;",
    "alice@example.com,",
    ", alice@example.com",
    "Alice <alice@example.com>, ",
    "alice@example.com\r\nBcc: x@example.org",
    "alice@example.com\n",
    "alice@exa\x00mple.com",
    "alice@example.com\x07",
    "alice",
    "alice@",
    "@example.com",
    "<>",
    "alice@example.com <>",
    "alice@[127.0.0.1]",
    "Alice <alice@[IPv6:::1]>",
    '"alice@example.com"',
    '"bob"@example.com',
    '"bob@evil.example"@example.com',
    "alice@example..com",
    ".alice@example.com",
    "alice.@example.com",
    "alice@example.com.",
    "alice@-example.com",
    "alice@exa_mple.com",
    "alice @example.com",
    "alice@ example.com",
    "<@route.example:alice@example.com>",
    "alice@example.com (unclosed comment",
    "alice@example.com (a (b) c",
    "(" * 50 + "c" + ")" * 50 + " alice@example.com",
    "=?utf-8?q?bob=40evil.example?=@example.com",
    "alice\u200b@example.com",
    "alice@exam\u202eple.com",
    "al\udcffice@example.com",
    "alice\ufffd@example.com",
    "x" * 5000 + "@example.com",
    "a" * 65 + "@example.com",
    "Alice <alice@example.com> <bob@example.org>",
    "Alice <alice@example.com>>",
    "Alice <alice@example.com> bob@example.org",
]

CLEAN = [
    ("alice@example.com", ALICE),
    ("Alice <alice@example.com>", ALICE),
    ("Alice Example <alice@example.com>", ALICE),
    ("  Alice   <alice@example.com>  ", ALICE),
    ("Alice\t<alice@example.com>", ALICE),
    ('"bob@evil" <alice@example.com>', ALICE),
    ('"Example, Alice" <alice@example.com>', ALICE),
    ('"Alice \\"the boss\\"" <alice@example.com>', ALICE),
    ("<alice@example.com>", ALICE),
    ("< alice@example.com >", ALICE),
    ("alice@example.com (Alice)", ALICE),
    ("Alice <alice@example.com> (work)", ALICE),
    ("(comment (nested)) alice@example.com", ALICE),
    ("John Q. Public <alice@example.com>", ALICE),
    ("=?utf-8?q?Al=C3=ADce?= <alice@example.com>", ALICE),
    ("=?utf-8?b?YQ0KQmNjOiB4QHk=?= <alice@example.com>", ALICE),  # CR LF only in the name
    ("alice+tag@mail.example.com", "alice+tag@mail.example.com"),
    ("o'brien@example.ie", "o'brien@example.ie"),
    ("Alice <alice.smith@example.com>", "alice.smith@example.com"),
    ("José <josé@exämple.com>", "josé@exämple.com"),  # RFC 6532
    ("élodie@example.fr", "élodie@example.fr"),
    ("用户@例子.广告", "用户@例子.广告"),
    ("alice@localhost", "alice@localhost"),
]


@pytest.mark.parametrize("value", AMBIGUOUS)
def test_ambiguous_from_is_refused(value: str) -> None:
    assert parse_single_mailbox(value) is None


@pytest.mark.parametrize(("value", "addr"), CLEAN)
def test_clean_from_gives_the_address(value: str, addr: str) -> None:
    assert parse_single_mailbox(value) == addr
    assert parse_single_mailbox(format_mailbox("Some One", addr)) == addr


def test_header_from_addresses_lists_every_from() -> None:
    def msg(*headers: bytes) -> bytes:
        return b"".join(h + b"\r\n" for h in headers) + b"Subject: x\r\n\r\nbody\r\n"

    assert header_from_addresses(msg(b"From: Alice <alice@example.com>")) == [ALICE]
    assert header_from_addresses(msg(b"From: Alice\r\n <alice@example.com>")) == [ALICE]
    assert header_from_addresses(msg(b"From: =?utf-8?q?A?= <alice@example.com>")) == [ALICE]
    assert header_from_addresses(msg(b"From: alice@example.com", b"From: bob@example.org")) == [
        ALICE,
        "bob@example.org",
    ]
    assert header_from_addresses(msg(b"From: alice@example.com, bob@example.org")) == [
        ALICE,
        "bob@example.org",
    ]
    assert header_from_addresses(msg(b"fROM: alice@example.com")) == [ALICE]
    assert header_from_addresses(msg(b"To: alice@example.com")) == []
    assert header_from_addresses(msg(b"From: alice@example.com <bob@example.org>")) == []
    assert header_from_addresses(msg(b"From: alice@example.com", b"From: <<bad")) == []
    assert header_from_addresses(msg(b"From: J\xf6rg <alice@example.com>")) == []  # not UTF-8
    assert header_from_addresses(msg("From: Jörg <jörg@example.com>".encode())) == [
        "jörg@example.com"
    ]
    assert header_from_addresses(b"") == []
    assert header_from_addresses(b"\r\n\r\nFrom: alice@example.com\r\n") == []  # body, not header
    # a From inside an attachment or a later part is not a header of the message
    assert header_from_addresses(msg(b"Subject: y") + b"From: alice@example.com\r\n") == []


def test_summary_flags_an_ambiguous_from() -> None:
    s = summarise(b"From: alice@example.com <bob@example.org>\r\nDate: x\r\n\r\nhi\r\n")
    assert s.from_addresses == ()
    assert "the From header does not name its sender unambiguously" in s.defects
    s = summarise(b"From: a@example.com\r\nFrom: b@example.org\r\nDate: x\r\n\r\nhi\r\n")
    assert s.from_addresses == ("a@example.com", "b@example.org")
    assert "2 From headers" in s.defects and "From names 2 mailboxes" in s.defects


# ---------------------------------------------------------------------------
# Smaller behaviours


def message(headers: str, body: bytes = b"body\r\n") -> bytes:
    head = "From: Alice <alice@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    return (head + headers).encode("utf-8") + b"\r\n" + body


def test_empty_and_headerless_input() -> None:
    s = summarise(b"")
    check_invariants(s, b"")
    assert s.defects == ("no From header", "no Date header")
    s = summarise(b"just some text\r\n")
    assert s.text == "just some text" and "no header section in the message" in s.defects


def test_html_only_body_is_converted_without_scripts_or_styles() -> None:
    html = (
        "<html><head><title>T</title><style>p{x:y}</style></head><body>"
        "<script>var a = '<p>not text</p>';</script><h1>Title</h1>"
        "<p>caf&eacute; &amp; <b>bold</b>&nbsp;text</p><ul><li>one</li><li>two</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr></table>x &lt;y&gt; &#0; &#13;z</body></html>"
    )
    s = summarise(message("Content-Type: text/html; charset=utf-8\r\n", html.encode()))
    assert s.text == "Title\ncafé & bold\xa0text\n- one\n- two\na b\nx <y> \ufffd z"


def test_text_is_capped() -> None:
    s = summarise(message("", b"x" * 50 + b"\r\n"), max_text=10)
    assert (s.text, s.text_truncated) == ("x" * 10, True)
    s = summarise(message("Content-Type: text/html\r\n", b"<p>" + b"y " * 100_000), max_text=10)
    assert (s.text, s.text_truncated) == ("y y y y y ", True)
    s = summarise(message("", b"x" * 10), max_text=10)
    assert (s.text, s.text_truncated) == ("x" * 10, False)


def test_unknown_and_hostile_charsets_fall_back() -> None:
    for charset in ("x-no-such", "rot13", "zip", "idna", "unicode-escape", "base64", "\x00"):
        body = "caf\u00e9 \\u0041".encode()
        s = summarise(message(f"Content-Type: text/plain; charset={charset}\r\n", body))
        assert s.text == "café \\u0041", charset
        assert any(d.startswith("unknown charset") for d in s.defects)
    s = summarise(message("Content-Type: text/plain; charset=x-no-such\r\n", b"caf\xe9"))
    assert s.text == "café"
    latin1 = "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n"
    s = summarise(message(latin1, b"\x93hi\x94"))
    assert s.text == "\u201chi\u201d" and s.defects == ()  # Windows-1252, as mailers mean it
    s = summarise(message("", b"caf\xc3\xa9"))
    assert s.text == "café" and "undeclared 8-bit data in part 1" in s.defects
    s = summarise(message("", b"caf\xe9"))
    assert s.text == "café" and "undeclared 8-bit data in part 1" in s.defects


def test_encoded_words() -> None:
    split = "=?utf-8?b?" + base64.b64encode("é".encode()[:1]).decode() + "?="
    split += " =?utf-8?b?" + base64.b64encode("é".encode()[1:]).decode() + "?="
    cases = {
        "=?iso-8859-1?q?caf=E9?= =?utf-8?q?_ol=C3=A9?=": "café olé",
        split: "é",  # one character split across two words (RFC 2047 6.2)
        "a =?utf-8?q?b?=  c": "a b  c",
        "=?utf-8*es?q?hola?=": "hola",  # RFC 2231 language tag
        "=?utf-8?q?a=00b=0Dc=0Ad=1Be?=": "a b c d e",
        "=?utf-8?b?!!!?=": "=?utf-8?b?!!!?=",
        "=?x-none?q?abc?=": "abc",
        "=?utf-8?q?unterminated": "=?utf-8?q?unterminated",
        "=?utf-8?b?4oCu?=evil": "evil",  # U+202E RIGHT-TO-LEFT OVERRIDE, at the edge
    }
    for encoded, shown in cases.items():
        s = summarise(message(f"Subject: {encoded}\r\n"))
        assert s.subject == shown, encoded


def test_rfc2231_and_rfc2047_file_names() -> None:
    parts = [
        (
            "attachment; filename*0*=utf-8''r%C3%A9; filename*1=sum; filename*2*=%C3%A9.pdf",
            "résumé.pdf",
        ),
        ('attachment; filename="=?utf-8?b?w6lsYW4ucGRm?="', "élan.pdf"),
        ("attachment; filename*=iso-8859-1'es'%E1rbol.txt", "árbol.txt"),
        ('attachment; filename="a\\"b.txt"; filename="second.txt"', 'a"b.txt'),
        ('attachment; filename="semi;colon.txt"', "semi;colon.txt"),
        ('attachment; filename="unterminated; x=y.txt', '"unterminated; x=y.txt'),
        ("attachment; filename=a.txt; filename*1=b", "a.txt"),  # no segment 0: ignored
        ("attachment", "(unnamed)"),
        ("inline; filename=inline.png", "inline.png"),
    ]
    for disposition, name in parts:
        raw = message(
            "Content-Type: application/octet-stream\r\n"
            f"Content-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n",
            b"AAEC\r\n",
        )
        (a,) = summarise(raw).attachments
        assert (a.filename, a.size, a.sha256) == (name, 3, sha256_hex(b"\x00\x01\x02"))


def test_which_parts_are_attachments() -> None:
    def part(headers: str, body: str = "x") -> str:
        return f"--b\r\n{headers}\r\n\r\n{body}\r\n"

    body = (
        part("Content-Type: text/plain", "the body")
        + part("Content-Type: text/html", "<p>alt</p>")
        + part("Content-Type: text/plain\r\nContent-Disposition: attachment")
        + part("Content-Type: text/plain; name=notes.txt")
        + part("Content-Type: text/calendar; method=REQUEST")
        + part("Content-Type: image/png\r\nContent-Disposition: inline")
        + part("Content-Type: message/rfc822", "From: x@y\r\nContent-Type: image/png\r\n\r\nz")
        + part("Content-Type: text/plain\r\nContent-Disposition: x-unknown")
        + part("Content-Type: garbage", "unreadable type")
        + "--b--\r\n"
    )
    s = summarise(message('Content-Type: multipart/mixed; boundary="b"\r\n', body.encode()))
    assert [(a.filename, a.content_type) for a in s.attachments] == [
        ("(unnamed)", "text/plain"),
        ("notes.txt", "text/plain"),
        ("(unnamed)", "text/calendar"),
        ("(unnamed)", "image/png"),
        ("(unnamed)", "message/rfc822"),  # listed whole, not opened
        ("(unnamed)", "text/plain"),
    ]
    assert s.attachments[4].size == len(b"From: x@y\r\nContent-Type: image/png\r\n\r\nz")
    assert s.text == "the body"
    assert "unreadable Content-Type in part 9: taken as text/plain" in s.defects


def test_digest_parts_default_to_message_rfc822() -> None:
    body = b"--d\r\n\r\nFrom: a@b\r\n\r\nhi\r\n--d--\r\n"
    s = summarise(message('Content-Type: multipart/digest; boundary="d"\r\n', body))
    assert [a.content_type for a in s.attachments] == ["message/rfc822"]


def test_structural_defects() -> None:
    cases = {
        "Content-Type: multipart/mixed\r\n": "multipart without a boundary in the message",
        'Content-Type: multipart/mixed; boundary="zz"\r\n': "MIME boundary never found",
        "Content-Transfer-Encoding: x-uuencode\r\n": "unknown transfer encoding 'x-uuencode'",
        "Content-Transfer-Encoding: quoted-printable\r\n": "invalid quoted-printable escape",
    }
    for headers, defect in cases.items():
        s = summarise(message(headers, b"a=ZZ b\r\n"))
        assert any(d.startswith(defect) for d in s.defects), (headers, s.defects)
    s = summarise(b"From MAILER-DAEMON Mon Jan  1 00:00:00 2024\r\n" + message(""))
    assert s.from_addresses == (ALICE,)
    assert "mbox 'From ' line before the header section ignored" in s.defects
    s = summarise(b"From: alice@example.com\r\nnot a header\r\nDate: x\r\n\r\n")
    assert "header section in the message not ended by a blank line" in s.defects


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        summarise(b"", max_parts=0)
    with pytest.raises(ValueError):
        summarise(b"", max_text=-1)
    with pytest.raises(TypeError):
        summarise("From: a@b")  # type: ignore[arg-type]
    assert summarise(bytearray(b"x")).size == 1  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Deep, huge and long inputs (times printed, never asserted)


def nested(levels: int, inner: bytes = b"Content-Type: text/plain\r\n\r\ninnermost\r\n") -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(levels)))
    head = b"From: Alice <alice@example.com>\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    return head + opening + inner + closing


def timed(label: str, raw: bytes, **limits: int) -> MessageSummary:
    start = time.perf_counter()
    s = summarise(raw, **limits)
    print(f"{label}: {len(raw):,} bytes in {time.perf_counter() - start:.3f} s")
    check_invariants(s, raw)
    return s


def test_deep_nesting() -> None:
    raw = nested(1000)  # email.message_from_bytes raises RecursionError here (3.11)
    s = timed("1000-deep nesting", raw)
    assert "nesting deeper than 100 levels not examined" in s.defects
    s = timed("1000-deep nesting, max_depth=2000", raw, max_depth=2000)
    assert s.text == "innermost" and s.defects == ()
    timed("10000-deep nesting", nested(10_000))


def test_hundred_thousand_parts() -> None:
    parts = b"".join(
        b"--x\r\nContent-Type: application/octet-stream\r\n\r\n%d\r\n" % i for i in range(100_000)
    )
    raw = message('Content-Type: multipart/mixed; boundary="x"\r\n', parts + b"--x--\r\n")
    s = timed("100k parts", raw)
    assert "more than 10000 parts: the rest not examined" in s.defects
    assert len(s.attachments) == 9999  # the multipart container is part 1 of 10000
    assert s.attachments[-1].sha256 == sha256_hex(b"9998")


def test_megabyte_headers() -> None:
    folded = "Subject: " + "".join(f"word{i}\r\n " for i in range(100_000)) + "end\r\n"
    s = timed("1 MB folded Subject", message(folded))
    assert s.subject.startswith("word0 word1 ") and s.subject.endswith("\u2026")
    assert len(s.subject) == 4097 and "Subject longer than 4096 characters: cut" in s.defects
    timed("1 MB of encoded-word starts", message("Subject: " + "=?x?q?" * 170_000 + "\r\n"))
    timed("170k header fields", message("X-Junk: y\r\n" * 170_000))
    to = ",\r\n ".join(f"u{i}@example.org" for i in range(60_000))
    s = timed("1 MB To with 60k addresses", message(f"To: {to}\r\n"))
    assert len(s.to) == 1000 and "To lists 60000 addresses: only the first 1000 shown" in s.defects
    s = timed("1 MB of nested comments in From", b"From: " + b"(" * 1_000_000 + b"\r\n\r\n")
    assert s.from_addresses == ()
    param = 'Content-Type: text/plain; name="' + ";" * 1_000_000 + '"\r\n'
    timed("1 MB quoted parameter (quadratic in email.message)", message(param))
    escaped = "Content-Type: text/plain; name=" + '\\"' * 500_000 + "\r\n"
    timed("1 MB of escaped quotes in a parameter", message(escaped))
    boundary = 'Content-Type: multipart/mixed; boundary="' + "b" * 1_000_000 + '"\r\n'
    s = timed("1 MB boundary", message(boundary))
    assert any(d.startswith("MIME boundary longer than 200 characters") for d in s.defects)
    continuation = "".join(f"name*{i % 1000}*=%41;" for i in range(90_000))
    timed("1 MB of RFC 2231 continuations", message(f"Content-Type: a/b; {continuation}\r\n"))


def test_pathological_html_is_linear() -> None:
    for label, html, text in [
        ("'<a' * n (quadratic in html.parser)", b"<a" * 500_000, "<a<a<a"),
        ("'</' * n", b"</" * 500_000, "</</</"),
        ("quotes spanning tags", b"<a b='>" * 150_000, ""),
    ]:
        s = timed(f"HTML {label}", message("Content-Type: text/html\r\n", html))
        assert s.text.startswith(text)


# ---------------------------------------------------------------------------
# Properties


@PROPERTY
@given(st.binary(max_size=4000))
def test_summarise_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    check_invariants(summarise(raw), raw)
    header_from_addresses(raw)


@PROPERTY
@given(st.lists(st.sampled_from([
    b"From: ", b"To: ", b"Subject: ", b"Content-Type: ", b"multipart/mixed; boundary=b",
    b"text/html", b"Content-Transfer-Encoding: base64", b"quoted-printable", b"\r\n", b"\n",
    b"\r\n\r\n", b"--b", b"--b--", b"=?utf-8?b?", b"?=", b"=?x?q?", b"<", b">", b"@", b'"',
    b"(", b")", b",", b":", b";", b"=", b"\xff", b"\xc3\xa9", b"\x00", b"\r", b" ", b"AAAA",
    b"filename*0*=utf-8''%", b"<script>", b"</", b"&#", b"a@b.c",
]), max_size=80))  # fmt: skip
def test_summarise_never_raises_on_mime_like_soup(pieces: list[bytes]) -> None:
    raw = b"".join(pieces)
    check_invariants(summarise(raw), raw)
    header_from_addresses(raw)


# Structured random MIME: the generator knows each attachment's payload, so the
# expected size and hash come from the generator, not from any parser.

BOUNDARY_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'()+_,-./:=? "
NAME_CHARS = st.characters(codec="utf-8", categories=("L", "N"), include_characters="._- ")


@dataclass
class Leaf:
    content_type: str | None  # None: no Content-Type header, the default applies
    cte: str
    payload: bytes
    disposition: str | None
    filename: str | None
    name_style: str


@dataclass
class Multi:
    subtype: str
    boundary: str
    children: list[Leaf | Multi]
    preamble: bytes


leaves = st.builds(
    Leaf,
    content_type=st.sampled_from(
        [
            None,
            "text/plain",
            "text/html",
            "application/pdf",
            "image/png",
            "message/rfc822",
            "text/calendar",
            "application/octet-stream",
        ]
    ),  # fmt: skip
    cte=st.sampled_from(["", "7bit", "8bit", "base64", "quoted-printable"]),
    payload=st.binary(max_size=300),
    disposition=st.sampled_from([None, "inline", "attachment", "x-other"]),
    filename=st.none() | st.text(NAME_CHARS, min_size=1, max_size=30).map(str.strip).filter(bool),
    name_style=st.sampled_from(["quoted", "rfc2231", "rfc2047", "ctype-name"]),
)


def multis(children: st.SearchStrategy[Leaf | Multi]) -> st.SearchStrategy[Multi]:
    return st.builds(
        Multi,
        subtype=st.sampled_from(["mixed", "alternative", "related", "digest"]),
        boundary=st.text(BOUNDARY_CHARS, min_size=1, max_size=50).map(lambda b: b.strip() or "b"),
        children=st.lists(children, max_size=4),
        preamble=st.sampled_from([b"", b"This is a multi-part message in MIME format.\r\n"]),
    )


trees = st.recursive(leaves, multis, max_leaves=12)


def render(node: Leaf | Multi, path: str, digest: bool, out: list[Attachment]) -> bytes:
    """MIME bytes for ``node``; appends the attachments a reader must report to ``out``."""
    if isinstance(node, Multi):
        # The path makes each boundary unique; "=" never starts a QP or base64 line.
        boundary = f"{node.boundary}={path}"
        head = f'Content-Type: multipart/{node.subtype}; boundary="{boundary}"\r\n\r\n'
        body = node.preamble
        for i, child in enumerate(node.children, 1):
            child_bytes = render(child, f"{path}.{i}", node.subtype == "digest", out)
            body += f"--{boundary}\r\n".encode() + child_bytes + b"\r\n"
        return head.encode() + body + f"--{boundary}--".encode()
    payload = node.payload
    if node.cte in ("", "7bit", "8bit"):
        # identity encodings cannot carry line breaks faithfully; nor start like "--"
        payload = payload.replace(b"\r", b"").replace(b"\n", b"").lstrip(b"-")
        body = payload
    elif node.cte == "base64":
        encoded = base64.b64encode(payload)
        body = b"\r\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76))
    else:
        body = binascii.b2a_qp(payload, istext=False).replace(b"\n", b"\r\n")
    ctype = node.content_type or ("message/rfc822" if digest else "text/plain")
    headers = []
    ctype_header = node.content_type or ""
    name = node.filename
    if name and node.name_style == "ctype-name":
        ctype_header = (ctype_header or ctype) + f'; name="{name}"'
    if ctype_header:
        headers.append(f"Content-Type: {ctype_header}")
    if node.cte:
        headers.append(f"Content-Transfer-Encoding: {node.cte}")
    disposition_type = node.disposition
    if disposition_type or (name and node.name_style != "ctype-name"):
        disposition_type = disposition_type or "attachment"
        disposition = disposition_type
        if name and node.name_style == "quoted":
            disposition += f'; filename="{name}"'
        elif name and node.name_style == "rfc2231":
            quoted = "".join(f"%{b:02X}" for b in name.encode())
            disposition += f"; filename*=UTF-8''{quoted}"
        elif name and node.name_style == "rfc2047":
            disposition += f'; filename="=?utf-8?b?{base64.b64encode(name.encode()).decode()}?="'
        headers.append(f"Content-Disposition: {disposition}")
    text_body = ctype in ("text/plain", "text/html")
    if disposition_type not in (None, "inline") or name or not text_body:
        out.append(Attachment(name or "(unnamed)", ctype, len(payload), sha256_hex(payload)))
    return "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + body


@PROPERTY
@given(trees)
def test_structured_mime_attachments_match_the_generator(tree: Leaf | Multi) -> None:
    expected: list[Attachment] = []
    root = render(tree, "1", False, expected)
    raw = (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n"
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMIME-Version: 1.0\r\n" + root
    )
    s = summarise(raw)
    check_invariants(s, raw)
    assert list(s.attachments) == expected
    assert not any("could not be decoded" in d or "boundary" in d for d in s.defects), s.defects


@PROPERTY
@given(trees, st.data())
def test_structured_mime_mutated_never_raises(tree: Leaf | Multi, data: st.DataObject) -> None:
    raw = render(tree, "1", False, [])
    raw = b"From: Alice <alice@example.com>\r\nSubject: x\r\n" + raw
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw)))
        j = data.draw(st.integers(i, min(len(raw), i + 40)))
        edit = data.draw(st.sampled_from(["cut", "delete", "insert", "lf", "repeat"]))
        if edit == "cut":
            raw = raw[:i]
        elif edit == "delete":
            raw = raw[:i] + raw[j:]
        elif edit == "insert":
            raw = raw[:i] + data.draw(st.binary(max_size=20)) + raw[i:]
        elif edit == "lf":
            raw = raw.replace(b"\r\n", b"\n")
        else:
            raw = raw[:j] + raw[i:j] * 3 + raw[j:]
    check_invariants(summarise(raw, max_parts=20, max_depth=3), raw)


@PROPERTY
@given(st.text(max_size=200))
def test_parse_single_mailbox_never_raises_and_round_trips(value: str) -> None:
    addr = parse_single_mailbox(value)
    if addr is not None:
        assert parse_single_mailbox(addr) == addr
        assert parse_single_mailbox(format_mailbox("", addr)) == addr
        assert parse_single_mailbox(format_mailbox("Example, Name", addr)) == addr


ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atoms = st.text(ATEXT, min_size=1, max_size=10).filter(lambda a: "=?" not in a)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
display_names = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=30
)


@PROPERTY
@given(
    st.lists(atoms, min_size=1, max_size=3),
    st.lists(labels, min_size=1, max_size=4),
    display_names,
)
def test_well_formed_mailboxes_are_accepted(local: list[str], domain: list[str], name: str) -> None:
    addr = ".".join(local) + "@" + ".".join(domain)
    assert parse_single_mailbox(addr) == addr
    assert parse_single_mailbox(f"<{addr}>") == addr
    assert parse_single_mailbox(formataddr((name, addr))) == addr
    assert parse_single_mailbox(f"{addr}, {addr}") is None
    assert parse_single_mailbox(f"{addr} <{addr}>") is None
    assert parse_single_mailbox(f"g: {addr};") is None


@PROPERTY
@given(st.text(max_size=120), st.text(max_size=60))
def test_hostile_display_text_never_leaves_its_line(subject: str, name: str) -> None:
    def word(text: str) -> str:
        return (
            "=?utf-8?b?" + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode() + "?="
        )

    raw = (
        f"From: {word(name)} <alice@example.com>\r\nTo: {word(name)} <bob@example.org>\r\n"
        f"Subject: {word(subject)}\r\nDate: x\r\n\r\nbody\r\n"
    ).encode()
    s = summarise(raw)
    check_invariants(s, raw)
    assert s.from_addresses == (ALICE,)


@PROPERTY
@given(st.from_regex(addresses_module._PLAIN_MAILBOX, fullmatch=True))
def test_plain_from_shortcut_gives_the_stdlib_parsers_answer(value: str) -> None:
    """The From shortcut (no stdlib second opinion) only ever says what it would say."""
    plain = addresses_module._PLAIN_MAILBOX.fullmatch(value)
    assert plain is not None
    assume("=?" not in value)  # left to the full second opinion
    addr = plain.group("angle") or plain.group("bare")
    assert addresses_module._stdlib_parsers_agree(value, addr)
    got = parse_single_mailbox(value)
    assert got in (addr, None)
    if got is None:  # refused by our own strict checks (lengths), not by the shortcut
        local, _, domain = addr.partition("@")
        assert (
            len(local) > 64 or len(domain) > 253 or len(value) > addresses_module.MAX_MAILBOX_CHARS
        )
