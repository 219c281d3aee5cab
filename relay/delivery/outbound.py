"""What the gateway adds to a message on its way out, after the received hash is taken.

The received hash covers the bytes the sender sent; everything here changes only the
copy that leaves, and each recipient's delivered hash covers that copy. In order:

1. the ``Received`` trace field (RFC 5321 §4.4); for mail submitted on 587/465 whose
   header has none, ``Date`` and ``Message-ID`` (RFC 6409 §8.2, §8.3:
   :func:`submission_fields`, the same at every attempt, named in the certificate
   as ``added_fields``); for a certified copy that came in
   through the MX (a Cc copy from the sender's provider), ``X-Certifica-Copy``, which
   tells the recipient that this is the gateway's certified copy of the sender's
   message (they may get the sender's own copy too);
2. when the From domain has not delegated a DKIM key to the gateway and
   ``[dkim] from_handling = "rewrite"``: ``From: "Alice via Certifica"
   <certification address>`` and ``Reply-To: Alice`` (unless the message has a
   Reply-To), so that the DKIM signature of the gateway's domain aligns with From
   (DMARC, RFC 7489 §3.1) and replies still reach Alice;
3. the DKIM signatures (:func:`relay.delivery.dkim_keys.sign`): with the From domain's own keys
   when it has delegated some (``certifica dkim add example.com``), otherwise with the
   gateway's domain key.

Header text built here is ASCII or RFC 2047 encoded words, never raw mail text with a
line break in it.

The certificate embeds the message as received, so each step also says how it changed
the copy (:class:`CopyRecipe`): fields put in front, edits on the message (tracking,
From), line ends made CRLF for the wire (:func:`wire_form`, what the SMTP client sends
and hashes). The recipe is checked by rebuilding the copy before it is recorded with
the delivery (:mod:`certifier.copies`), and building it never stops a delivery.
"""

from __future__ import annotations

import email.header
import email.utils
import re
from collections.abc import Sequence
from typing import Any

from certifier import copies
from certifier.copies import Edit
from certifier.errors import VerificationError
from certifier.mime import field_name, header_end, header_fields
from relay.certify.notices import UNSAFE_CHARACTERS
from relay.delivery.dkim_keys import DkimKey, DkimKeyring

_UNSAFE_NAME = re.compile(f'[{UNSAFE_CHARACTERS}"\\\\]')  # and what ends a quoted name


# RFC 6409 §8: fields a submission server may add when the message lacks them.
SUBMISSION_FIELDS = ("Date", "Message-ID")


def missing_submission_fields(raw: bytes) -> list[str]:
    """Which of :data:`SUBMISSION_FIELDS` the header of ``raw`` lacks, in that order."""
    present = {field_name(f) for f in header_fields(raw[: header_end(raw)])}
    return [name for name in SUBMISSION_FIELDS if name.lower().encode() not in present]


def submission_fields(raw: bytes, qid: str, created: float, hostname: str) -> bytes:
    """The ``Date`` and ``Message-ID`` fields a submitted message lacks, made from its
    acceptance (queue id, time): every delivery attempt adds the same ones."""
    values = {
        "Date": email.utils.formatdate(created, usegmt=True),
        "Message-ID": f"<{qid}.{int(created * 1000)}@{hostname}>",
    }
    return b"".join(
        f"{name}: {values[name]}\r\n".encode("ascii", "replace")
        for name in missing_submission_fields(raw)
    )


def certified_copy_header(sender: str, cert_id: str) -> bytes:
    """``X-Certifica-Copy`` for a Cc copy certified through the MX."""
    return (
        f"X-Certifica-Copy: certified copy of a message from <{sender}>,\r\n"
        f"\tcertificate {cert_id}\r\n"
    ).encode("ascii", "replace")


def rewrite_from(raw: bytes, display_name: str, address: str, via: str) -> bytes:
    """``raw`` with From ``"<display_name> via <via>" <address>``; the original From goes
    to Reply-To when the message has none. The body is untouched."""
    return copies.apply(raw, from_edits(raw, display_name, address, via))


def from_edits(raw: bytes, display_name: str, address: str, via: str) -> list[Edit]:
    """The edits of :func:`rewrite_from` (empty when ``raw`` has no From): the first From
    replaced, any other From removed, Reply-To added after the last field."""
    end = header_end(raw)
    fields = header_fields(raw[:end])
    original = next((f for f in fields if field_name(f) == b"from"), None)
    if original is None:
        return []
    name = _UNSAFE_NAME.sub(" ", display_name).strip()[:200] or "the sender"
    new_from = email.utils.formataddr((f"{name} via {via}", address), charset="utf-8")
    edits = []
    offset = 0
    for field in fields:
        if field_name(field) == b"from":
            # A second From would make the message ambiguous again: it goes.
            insert = b"From: " + new_from.encode("ascii") + b"\r\n" if field is original else b""
            edits.append(Edit(offset, len(field), insert))
        offset += len(field)
    if not any(field_name(f) == b"reply-to" for f in fields):
        edits.append(Edit(end, 0, b"Reply-To:" + original.split(b":", 1)[1]))
    return edits


# RFC 5321 §2.3.8: on the wire every line ends in CRLF; what the SMTP client hashes as
# delivered (relay.delivery.client) is the message in that form.
_LINE_END = re.compile(rb"\r\n|\r|\n")


def wire_form(message: bytes) -> tuple[bytes, list[Edit]]:
    """``message`` with every line ending CRLF and ending in one, and the edits that make
    it so (none when it already is: the usual case, as SMTP DATA arrives so)."""
    crlf = message.count(b"\r\n")
    edits: list[Edit] = []
    if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
        edits = [
            Edit(m.start(), m.end() - m.start(), b"\r\n")
            for m in _LINE_END.finditer(message)
            if m.group() != b"\r\n"
        ]
    if not message.endswith((b"\r", b"\n")):
        edits.append(Edit(len(message), 0, b"\r\n"))
    return (copies.apply(message, edits) if edits else message), edits


class CopyRecipe:
    """What the copy that leaves is made of, step by step: how to rebuild it from the
    message as received (:mod:`certifier.copies`), and what changed, in the words the
    certificate uses.

    The body's rewrites (tracking, From) are composed into one list of edits on the
    original bytes; fields put in front go to the prefix; :meth:`wire` gives the CRLF
    form the SMTP client sends and hashes, and brings the recipe to it. Building the
    recipe never stops a delivery: a step that does not fit marks it ``broken`` and
    :meth:`recipe` then records the difference itself.
    """

    def __init__(self, original: bytes) -> None:
        self.original = original
        self.prefix = b""
        self.edits: list[Edit] = []
        self.changes: list[dict[str, Any]] = []
        self.line_ends = False
        self.broken = False

    def rewritten(self, edits: Sequence[Edit], *changes: dict[str, Any]) -> None:
        """The body (the message without the prefix) was changed by ``edits``."""
        self.changes.extend(changes)
        if edits and not self.broken:
            try:
                self.edits = copies.compose(self.edits, edits, len(self.original))
            except VerificationError:
                self.broken = True

    def prepended(self, head: bytes) -> None:
        """Header fields were put in front of the copy."""
        self.prefix = head + self.prefix

    def wire(self, message: bytes) -> bytes:
        """``message`` (prefix then body) as the SMTP client sends it and hashes it
        (:func:`wire_form`), the recipe brought to match."""
        wired, _ = wire_form(message)
        if not self.broken:
            try:
                self._wire(message)
            except Exception:  # a fault here must not stop the mail; recipe() says so
                self.broken = True
        return wired

    def _wire(self, message: bytes) -> None:
        if not message.startswith(self.prefix) or (self.prefix and not self.prefix.endswith(b"\n")):
            self.broken = True
            return
        # The prefix ends a line, so no line end spans it and the body: each is put in
        # wire form on its own; an empty body after a prefix adds nothing.
        prefix, prefix_edits = wire_form(self.prefix) if self.prefix else (b"", [])
        body = message[len(self.prefix) :]
        body_edits = wire_form(body)[1] if body or not self.prefix else []
        self.line_ends = bool(prefix_edits or body_edits)
        self.prefix = prefix
        self.rewritten(body_edits)

    def recipe(self, copy: bytes) -> copies.Recipe:
        """The recipe of ``copy`` (what :meth:`wire` returned), checked by rebuilding it."""
        changes = [
            {"change": "header_added", "field": _field_name_as_written(f)}
            for f in header_fields(self.prefix)
        ]
        changes += self.changes
        if self.line_ends:
            changes.append({"change": "other", "detail": "line ends made CRLF (RFC 5321 2.3.8)"})
        made = copies.Recipe(self.prefix, tuple(self.edits), tuple(changes))
        if not self.broken and copies.rebuild(self.original, made) == copy:
            return made
        self.broken = True
        return copies.Recipe(b"", tuple(copies.diff(self.original, copy)), ({"change": "other"},))


def _field_name_as_written(field: bytes) -> str:
    return field.split(b":", 1)[0].strip().decode("ascii", "replace")


def display_name(raw: bytes) -> str:
    """The display name of the first From mailbox, decoded (RFC 2047), or ''."""
    end = header_end(raw)
    for field in header_fields(raw[:end]):
        if field_name(field) == b"from":
            value = field.split(b":", 1)[1].decode("utf-8", "replace")
            value = " ".join(value.split())
            try:
                decoded = str(email.header.make_header(email.header.decode_header(value)))
            except (ValueError, LookupError, UnicodeError):
                decoded = value
            return email.utils.parseaddr(decoded)[0]
    return ""


def signing_keys(keyring: DkimKeyring, from_domain: str, gateway_domain: str) -> list[DkimKey]:
    """The From domain's delegated keys, else the gateway domain's key."""
    own = keyring.for_domain(from_domain) if from_domain else []
    if own:
        return own
    gateway = keyring.for_domain(gateway_domain)
    return [next((k for k in gateway if k.algorithm == "rsa"), gateway[0])] if gateway else []


def needs_rewrite(keys: Sequence[DkimKey], from_domain: str) -> bool:
    """Whether the signature would not align with From (no key of the From domain)."""
    return not any(k.domain == from_domain.lower() for k in keys)
