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
"""

from __future__ import annotations

import email.header
import email.utils
import re
from collections.abc import Sequence

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
    end = header_end(raw)
    fields = header_fields(raw[:end])
    original = next((f for f in fields if field_name(f) == b"from"), None)
    if original is None:
        return raw
    name = _UNSAFE_NAME.sub(" ", display_name).strip()[:200] or "the sender"
    new_from = email.utils.formataddr((f"{name} via {via}", address), charset="utf-8")
    result = []
    for field in fields:
        if field_name(field) == b"from":
            if field is original:
                result.append(b"From: " + new_from.encode("ascii") + b"\r\n")
            continue  # a second From would make the message ambiguous again
        result.append(field)
    if not any(field_name(f) == b"reply-to" for f in fields):
        result.append(b"Reply-To:" + original.split(b":", 1)[1])
    return b"".join(result) + raw[end:]


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
