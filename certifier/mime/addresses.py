"""E-mail addresses in header fields, read strictly and iteratively.

Standards: RFC 5322 section 3.4 (``address-list``, ``mailbox``, ``group``, comments,
quoted strings, domain literals), RFC 6532 (UTF-8 local parts and domains), RFC 2047
section 5 (no encoded words inside an address), RFC 5321 section 4.5.3.1 (64-octet
local parts, 253-octet domains).

Why not the stdlib alone: the address parsers in ``email.utils`` and
``email.headerregistry`` recurse once per nested comment, and ``getaddresses``
misparsed addresses (CVE-2023-27043, no ``strict=`` before 3.11.10). So addresses are
read here by a tokenizer and a reader without recursion, with comments nested at most
``MAX_COMMENT_DEPTH`` deep. The stdlib parsers are used only as a second opinion in
:func:`parse_single_mailbox`, after our own strict parser has accepted the value and
bounded its nesting: both must name the same single address.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
from dataclasses import dataclass, field
from email import errors as email_errors
from email import utils as email_utils
from email.headerregistry import HeaderRegistry

from certifier.mime.headers import read_headers
from certifier.mime.text import SURROGATE, Defects

__all__ = [
    "MAX_ADDRESSES",
    "MAX_COMMENT_DEPTH",
    "MAX_MAILBOX_CHARS",
    "PLAIN_ADDR_SPEC",
    "AddressList",
    "Mailbox",
    "from_addresses",
    "header_addresses",
    "header_from_addresses",
    "parse_address_list",
    "parse_single_mailbox",
    "strict_mailbox_ok",
]

MAX_ADDRESSES = 1000  # per header field (To, Cc, From)
MAX_MAILBOX_CHARS = 4096  # parse_single_mailbox refuses longer values
MAX_COMMENT_DEPTH = 8  # nested RFC 5322 comments; the stdlib recurses on each level

_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_SPECIALS = frozenset("<>@,;:.")


# RFC 5322 atext, qtext (without '"' and '\'), ctext (without '(', ')' and '\'), and
# dtext, each widened by RFC 6532 to non-ASCII; never controls (C0, DEL, C1) or
# surrogates. Runs are matched by regex so long values cost C time, not Python loops.
_NON_ASCII = "\u00a0-\ud7ff\ue000-\U0010ffff"
_ATOM_RUN = re.compile(f"[A-Za-z0-9!#$%&'*+\\-/=?^_`{{|}}~{_NON_ASCII}]+")
_QTEXT_RUN = re.compile(f"[\t !#-\\[\\]-~{_NON_ASCII}]+")
_CTEXT_RUN = re.compile(f"[\t -'*-\\[\\]-~{_NON_ASCII}]+")
_DTEXT_RUN = re.compile(f"[\t -Z^-~{_NON_ASCII}]*")
_PAIRABLE = re.compile(f"[\t -~{_NON_ASCII}]")


def _quoted_pair(value: str, i: int) -> str | None:
    """The character escaped by the backslash at ``i``, if it may be escaped."""
    if i + 1 < len(value) and _PAIRABLE.fullmatch(value[i + 1]):
        return value[i + 1]
    return None


# Token kinds: "atom", "qs" (quoted string, unescaped), "lit" (domain literal), or a
# special character itself. The flag says whether white space or a comment preceded it.
_Token = tuple[str, str, bool]


def _tokenize(value: str) -> list[_Token] | None:
    tokens: list[_Token] = []
    i, n, gap = 0, len(value), False
    while i < n:
        c = value[i]
        if c in " \t":
            gap = True
            i += 1
        elif c == "(":
            depth = 0
            while True:
                if i >= n:
                    return None
                c = value[i]
                if c == "(":
                    depth += 1
                    if depth > MAX_COMMENT_DEPTH:
                        return None
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                elif c == "\\":
                    if _quoted_pair(value, i) is None:
                        return None
                    i += 2
                    continue
                else:
                    m = _CTEXT_RUN.match(value, i)
                    if m is None:
                        return None
                    i = m.end()
                    continue
                i += 1
            gap = True
        elif c == '"':
            chars: list[str] = []
            i += 1
            while True:
                if i >= n:
                    return None
                c = value[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    escaped = _quoted_pair(value, i)
                    if escaped is None:
                        return None
                    chars.append(escaped)
                    i += 2
                    continue
                m = _QTEXT_RUN.match(value, i)
                if m is None:
                    return None
                chars.append(m.group(0))
                i = m.end()
            tokens.append(("qs", "".join(chars), gap))
            gap = False
        elif c == "[":
            close = _DTEXT_RUN.match(value, i + 1)
            if close is None or not value.startswith("]", close.end()):
                return None
            tokens.append(("lit", close.group(0), gap))
            gap = False
            i = close.end() + 1
        elif c in _SPECIALS:
            tokens.append((c, c, gap))
            gap = False
            i += 1
        else:
            m = _ATOM_RUN.match(value, i)
            if m is None:
                return None
            tokens.append(("atom", m.group(0), gap))
            gap = False
            i = m.end()
    return tokens


@dataclass(frozen=True)
class Mailbox:
    """One RFC 5322 mailbox: display name, local part and domain as written (unquoted)."""

    name: str
    local: str
    domain: str
    quoted_local: bool
    literal_domain: bool
    in_group: bool

    @property
    def addr(self) -> str:
        local = self.local
        if self.quoted_local:
            local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
        domain = f"[{self.domain}]" if self.literal_domain else self.domain
        return f"{local}@{domain}"


@dataclass
class AddressList:
    """The mailboxes of an address-list, group members included, and what else it held."""

    mailboxes: list[Mailbox] = field(default_factory=list)
    groups: int = 0
    empty_elements: int = 0


class _Reader:
    """Recursive-descent-free reader of an RFC 5322 address-list token stream."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> _Token | None:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else None

    def kind(self, offset: int = 0) -> str:
        tok = self.peek(offset)
        return tok[0] if tok else ""

    def phrase(self) -> str | None:
        words: list[str] = []
        while self.kind() in ("atom", "qs", "."):
            kind, text, gap = self.t[self.i]
            if words and gap:
                words.append(" ")
            words.append(text)
            self.i += 1
        return "".join(words) if words else None

    def dot_atoms(self) -> str | None:
        if self.kind() != "atom":
            return None
        parts = [self.t[self.i][1]]
        self.i += 1
        while self.kind() == "." and not self.t[self.i][2]:
            nxt = self.peek(1)
            if nxt is None or nxt[0] != "atom" or nxt[2]:
                return None
            parts.append(nxt[1])
            self.i += 2
        return ".".join(parts)

    def addr_spec(self, name: str, in_group: bool) -> Mailbox | None:
        quoted = self.kind() == "qs"
        if quoted:
            local: str | None = self.t[self.i][1]
            self.i += 1
        else:
            local = self.dot_atoms()
        if local is None or self.kind() != "@" or self.t[self.i][2]:
            return None
        self.i += 1
        tok = self.peek()
        if tok is None or tok[2]:
            return None
        literal = tok[0] == "lit"
        if literal:
            domain: str | None = tok[1]
            self.i += 1
        else:
            domain = self.dot_atoms()
        if domain is None:
            return None
        return Mailbox(name, local, domain, quoted, literal, in_group)

    def mailbox(self, in_group: bool) -> Mailbox | None:
        start = self.i
        name = self.phrase()
        if self.kind() == "<":
            self.i += 1
            box = self.addr_spec(name or "", in_group)
            if box is None or self.kind() != ">":
                return None
            self.i += 1
            return box
        self.i = start
        return self.addr_spec("", in_group)


def parse_address_list(value: str) -> AddressList | None:
    """Mailboxes named by an address-list, or None if any of it is not RFC 5322."""
    tokens = _tokenize(value)
    if tokens is None:
        return None
    r = _Reader(tokens)
    result = AddressList()
    expect_element = True
    while r.peek() is not None:
        if r.kind() == ",":
            if expect_element:
                result.empty_elements += 1
            r.i += 1
            expect_element = True
            continue
        if not expect_element:
            return None
        start = r.i
        r.phrase()
        if r.kind() == ":":  # group: display-name ":" [mailbox-list] ";"
            r.i += 1
            result.groups += 1
            need = True
            while r.kind() != ";":
                if r.peek() is None:
                    return None
                if r.kind() == ",":
                    r.i += 1
                    need = True
                    continue
                if not need:
                    return None
                box = r.mailbox(in_group=True)
                if box is None:
                    return None
                result.mailboxes.append(box)
                need = False
            r.i += 1
        else:
            r.i = start
            box = r.mailbox(in_group=False)
            if box is None:
                return None
            result.mailboxes.append(box)
        expect_element = False
    if expect_element and (result.mailboxes or result.groups):
        result.empty_elements += 1
    return result


_LDH = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ADDR_BAD_CATEGORIES = ("C", "Z")  # controls, formats (zero-width, bidi), separators


def strict_mailbox_ok(box: Mailbox) -> bool:
    """The extra rules a sender address must meet to be certified."""
    if box.quoted_local or box.literal_domain:
        return False
    if "=?" in box.local or "=?" in box.domain:  # RFC 2047 5: no encoded words here
        return False
    if len(box.local.encode("utf-8")) > 64 or len(box.domain.encode("utf-8")) > 253:
        return False
    for c in box.local:
        if c >= "\x80" and unicodedata.category(c)[0] in _ADDR_BAD_CATEGORIES:
            return False
    for label in box.domain.split("."):
        if label.isascii():
            if not _LDH.fullmatch(label):
                return False
        elif (
            len(label) > 63
            or label[0] == "-"
            or label[-1] == "-"
            or not all(c in "-" or c.isalnum() or unicodedata.category(c)[0] == "M" for c in label)
        ):
            return False
    return True


_GETADDRESSES_STRICT = "strict" in inspect.signature(email_utils.getaddresses).parameters
_REGISTRY = HeaderRegistry()
_TOLERATED_STDLIB_DEFECTS = (
    email_errors.NonASCIILocalPartDefect,
    email_errors.ObsoleteHeaderDefect,
)


# The From that nearly every client writes: "addr" or "Name Words <addr>", ASCII, with a
# dot-atom local part and a host name. Our parser and both stdlib parsers read it alike
# (a property test holds the shortcut to the full second opinion); asking them costs
# ~0.5 ms a message, a tenth of the gateway's CPU for a plain relay.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
PLAIN_ADDR_SPEC = rf"{_DOT_ATOM}@{_LDH.pattern}(?:\.{_LDH.pattern})*"
"""An ASCII addr-spec every parser reads alike: dot-atom local part, host-name domain
(a pattern, for the SMTP envelope's shortcut too)."""
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:(?:[A-Za-z0-9]+[ \t]+)*<(?P<angle>{PLAIN_ADDR_SPEC})>|(?P<bare>{PLAIN_ADDR_SPEC}))[ \t]*"
)


def _stdlib_agrees(value: str, addr: str) -> bool:
    """Second opinion from both stdlib address parsers (only called on bounded input)."""
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain and "=?" not in value:  # encoded-word syntax: the slow path decides
        return (plain.group("angle") or plain.group("bare")) == addr
    return _stdlib_parsers_agree(value, addr)


def _stdlib_parsers_agree(value: str, addr: str) -> bool:
    # HeaderRegistry decodes encoded words in the display name and raises if one carries
    # CR LF, which says nothing about the address. "=_" has the same syntax as "=?"
    # (atext, qtext and ctext alike), and encoded words are refused in the addr-spec.
    value = value.replace("=?", "=_")
    try:
        if _GETADDRESSES_STRICT:
            pairs = email_utils.getaddresses([value], strict=True)  # type: ignore[call-arg]
        else:
            pairs = email_utils.getaddresses([value])
        if len(pairs) != 1 or pairs[0][1] != addr:
            return False
        header = _REGISTRY("From", value)
        addresses = header.addresses  # type: ignore[attr-defined]
        if len(addresses) != 1 or addresses[0].addr_spec != addr:
            return False
        if any(not isinstance(d, _TOLERATED_STDLIB_DEFECTS) for d in header.defects):
            return False
        return all(g.display_name is None for g in header.groups)  # type: ignore[attr-defined]
    except Exception:  # any stdlib failure means "not unambiguous"
        return False


def parse_single_mailbox(value: str) -> str | None:
    """The addr-spec if ``value`` names exactly one mailbox unambiguously, else None.

    ``value`` is an unfolded header value (RFC 5322 ``mailbox``). Refused: empty values,
    groups, lists (even with an empty second element), unbalanced brackets or quotes,
    CR, LF, NUL or other controls, comments nested deeper than 8, quoted local parts,
    domain literals, encoded words inside the address, malformed domains, and non-ASCII
    that is not a printable character (RFC 6532 UTF-8 local parts and domains are
    accepted). Our parser and both stdlib parsers must agree on the answer.
    """
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MAILBOX_CHARS:
        return None
    if "\ufffd" in value or SURROGATE.search(value):
        return None  # bytes that were not UTF-8: not "clearly UTF-8" (RFC 6532)
    parsed = parse_address_list(value)
    if parsed is None or parsed.groups or parsed.empty_elements or len(parsed.mailboxes) != 1:
        return None
    box = parsed.mailboxes[0]
    if not strict_mailbox_ok(box):
        return None
    addr = box.addr
    return addr if _stdlib_agrees(value, addr) else None


def from_addresses(values: list[bytes]) -> list[str]:
    """Addr-specs of all mailboxes of all From fields; [] if any field is unparseable."""
    result: list[str] = []
    for raw_value in values:
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            return []
        parsed = parse_address_list(value)
        if parsed is None or not all(strict_mailbox_ok(box) for box in parsed.mailboxes):
            return []
        addrs = [box.addr for box in parsed.mailboxes]
        if len(addrs) == 1 and not parsed.groups and parse_single_mailbox(value) != addrs[0]:
            return []
        result.extend(addrs)
    return result


def header_from_addresses(raw: bytes) -> list[str]:
    """Addr-specs of the mailboxes of every From field of ``raw``, in order.

    A message with two From fields, or one From naming two mailboxes, yields two
    entries, so a caller certifies only when the list has exactly one. If any From
    field cannot be parsed strictly, the answer is [] (not the parseable rest).
    """
    raw = bytes(raw)
    fields, _ = read_headers(raw, 0, len(raw), frozenset({b"from"}), "", Defects())
    return from_addresses(fields.get("from", []))


def header_addresses(raw: bytes, names: tuple[str, ...] = ("to", "cc")) -> list[str] | None:
    """Addr-specs of every mailbox (group members included) of the ``names`` fields.

    None when any of those fields cannot be parsed strictly: a caller that delivers to
    these addresses must not guess at an address list it cannot read. Duplicates are
    kept, in header order.
    """
    raw = bytes(raw)
    wanted = frozenset(name.encode("ascii") for name in names)
    fields, _ = read_headers(raw, 0, len(raw), wanted, "", Defects())
    result: list[str] = []
    for name in names:
        for raw_value in fields.get(name, []):
            try:
                value = raw_value.decode("utf-8")
            except UnicodeDecodeError:
                return None
            parsed = parse_address_list(value)
            if parsed is None or len(result) + len(parsed.mailboxes) > MAX_ADDRESSES:
                return None
            result.extend(box.addr for box in parsed.mailboxes)
    return result
