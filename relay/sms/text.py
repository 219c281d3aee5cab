"""The text of an SMS, taken from a mail message by a documented rule.

The message is read by the gateway's own MIME reader, :func:`certifier.message.summarise`
(RFC 2045-2049 over :mod:`certifier.mime`), which gives the body a certificate shows:
the first inline ``text/plain`` part, else the first inline ``text/html`` part turned
into text with the standard library's :mod:`html.parser` (block elements become line
breaks, ``<script>``/``<style>``/``<head>`` are dropped, entities decoded). Reusing it
means the SMS and an e-mail certificate read the same body the same way, with no second
HTML converter to keep safe (that one is bounded and never raises on hostile markup).

A ``text/plain`` part sent ``format=flowed`` (RFC 3676 section 4.2, as Thunderbird
sends) is first unwrapped: a line ending in a space goes on with the next one (the space
removed when ``DelSp=yes``, section 4.3 space-stuffing undone), so the SMS does not pay a
line break every 72 characters.

Then the rule, applied in this order (docs/sms.md repeats it for senders):

1. **Signature**: everything from the first line that is ``-- `` (RFC 3676 section 4.3,
   the signature separator) or ``--`` (the same after a mailer stripped the space) is cut.
2. **Quoted reply**: everything from the first attribution line is cut. An attribution
   is a line (or two lines, as mailers wrap it) starting with ``On``, ``El``, ``Il``,
   ``Le`` or ``Am`` and ending in ``wrote:``, ``escribió:``, ``ha scritto:``, ``va
   escriure:``, ``a écrit :`` or ``schrieb:``; or an Outlook separator line
   (``-----Original Message-----``, ``-----Mensaje original-----``, ``-----Missatge
   original-----``, ``-----Messaggio originale-----``); or an Outlook header block, a
   line ``From:``/``De:``/``Da:`` followed by ``Sent:``/``Enviado:``/``Enviat:``/
   ``Inviato:``/``Date:``/``Fecha:``/``Data:`` on the next line.
3. **Quoted lines**: every remaining line starting with ``>`` (RFC 3676 section 4.5) is
   dropped.
4. **White space**: no-break and other Unicode spaces become a space, the line and
   paragraph separators (U+2028, U+2029, NEL) a line break; controls other than the
   line break and the invisible format characters are removed: zero-width ones, the
   soft hyphen, and the bidirectional marks, embeddings, overrides and isolates
   (U+200E, U+200F, U+061C, U+202A-U+202E, U+2066-U+2069: a right-to-left override
   would show the phone "Pay to SPAN" for "Pay to NAPS"); runs of spaces and tabs
   become one space, lines are trimmed, more than one empty line becomes one, and empty
   lines at the start and end go.

Nothing else is changed: typographic quotes or accents are not replaced by look-alikes
(the certified text is exactly what is sent, even when it costs UCS-2 segments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certifier.message import summarise
from certifier.mime import (
    PART_FIELDS,
    Defects,
    part_headers,
    read_headers,
    split_multipart,
)

__all__ = ["NoText", "SmsText", "normalise_whitespace", "sms_text", "sms_text_of_body", "unflow"]

MAX_SOURCE_CHARS = 20000  # of the body examined; a longer text is refused as too long anyway

_SIGNATURE = re.compile(r"--[ ]?")
_ATTRIBUTION_START = re.compile(r"(On|El|Il|Le|Am)\s", re.IGNORECASE)
_ATTRIBUTION_END = re.compile(
    r"(wrote|escribi[oó]|ha scritto|va escriure|a [ée]crit|schrieb)\s*:$", re.IGNORECASE
)
_OUTLOOK_SEPARATOR = re.compile(
    r"-{2,}\s*(Original Message|Mensaje original|Missatge original|Messaggio originale)\s*-{2,}",
    re.IGNORECASE,
)
_OUTLOOK_FROM = re.compile(r"(From|De|Da):\s", re.IGNORECASE)
_OUTLOOK_NEXT = re.compile(r"(Sent|Enviado|Enviat|Inviato|Date|Fecha|Data):\s", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
# Controls (C0 but the line feed, DEL, C1), and the invisible format characters that
# would act on the text on the phone rather than be read: zero-width ones, the soft
# hyphen, and the bidirectional marks, embeddings, overrides and isolates of Unicode
# Standard Annex #9 (U+061C, U+200E-U+200F, U+202A-U+202E, U+2066-U+2069; "Pay to
# U+202E NAPS" shows as "Pay to SPAN"), with the invisible operators, the deprecated
# format characters and the interlinear annotation marks.
_REMOVED = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)
_LINE_SEPARATORS = re.compile("[\u2028\u2029\x85]")  # Unicode's line and paragraph ends


@dataclass(frozen=True)
class SmsText:
    """The text to send, and which cuts of the rule applied (for the certificate)."""

    text: str
    signature_cut: bool
    reply_cut: bool
    quoted_lines: int


@dataclass(frozen=True)
class NoText:
    """The message has nothing to send: the refusal's sentence."""

    sentence: str


def sms_text(raw: bytes) -> SmsText | NoText:
    """The SMS text of the mail message ``raw`` (module docstring)."""
    summary = summarise(raw, max_text=MAX_SOURCE_CHARS)
    body = summary.text
    params = _plain_part_params(raw)
    if params is not None and params.get("format", "").lower() == "flowed":
        body = unflow(body, params.get("delsp", "").lower() == "yes")
    return sms_text_of_body(body)


MAX_PARTS = 1000  # entities looked at to find the text/plain part


def _plain_part_params(raw: bytes) -> dict[str, str] | None:
    """The Content-Type parameters of the part :func:`summarise` takes its text from when
    that is a ``text/plain`` one: the first inline ``text/plain`` leaf, in the same order
    (depth first, document order, no recursion), or None."""
    defects = Defects()  # what summarise reports already; not needed twice
    stack: list[tuple[int, int]] = [(0, len(raw))]
    examined = 0
    while stack and examined < MAX_PARTS:
        start, end = stack.pop()
        examined += 1
        fields, body_start = read_headers(raw, start, end, PART_FIELDS, "", defects)
        headers = part_headers(fields, "text/plain", "", defects)
        boundary = headers.params.get("boundary", "")
        if headers.content_type.startswith("multipart/") and 0 < len(boundary) <= 200:
            split = split_multipart(
                raw, body_start, end, boundary.encode("utf-8", "surrogatepass"), MAX_PARTS
            )
            stack.extend(reversed(split.children))
            continue
        named = headers.disposition_params.get("filename") or headers.params.get("name")
        if (
            headers.content_type == "text/plain"
            and headers.disposition in ("", "inline")
            and not named
        ):
            return headers.params
    return None


def unflow(text: str, delsp: bool) -> str:
    """Join the soft line breaks of ``format=flowed`` text (RFC 3676 section 4.2); quoted
    lines and the signature separator ``-- `` are left as they are."""
    out: list[str] = []
    current: str | None = None
    for line in text.split("\n"):
        if line.startswith(">"):
            if current is not None:
                out.append(current)
                current = None
            out.append(line)
            continue
        if line.startswith(" "):  # section 4.4: space-stuffed
            line = line[1:]
        flowed = line.endswith(" ") and line != "-- "
        piece = line[:-1] if flowed and delsp else line
        current = piece if current is None else current + piece
        if not flowed:
            out.append(current)
            current = None
    if current is not None:
        out.append(current)
    return "\n".join(out)


def sms_text_of_body(body: str) -> SmsText | NoText:
    """Apply the rule to a body already read as text."""
    body = _LINE_SEPARATORS.sub("\n", body.replace("\r\n", "\n").replace("\r", "\n"))
    lines = body.split("\n")
    signature_cut = reply_cut = False
    for i, line in enumerate(lines):
        if _SIGNATURE.fullmatch(line):
            lines, signature_cut = lines[:i], True
            break
    for i in range(len(lines)):
        if _is_reply_start(lines, i):
            lines, reply_cut = lines[:i], True
            break
    kept = [line for line in lines if not line.lstrip(" ").startswith(">")]
    quoted = len(lines) - len(kept)
    text = normalise_whitespace("\n".join(kept))
    if not text:
        return NoText("The message has no text to send as an SMS (its body is empty once "
                      "quoted replies and the signature are taken out).")  # fmt: skip
    return SmsText(text, signature_cut, reply_cut, quoted)


def _is_reply_start(lines: list[str], i: int) -> bool:
    line = lines[i].strip()
    nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if _OUTLOOK_SEPARATOR.fullmatch(line):
        return True
    if _OUTLOOK_FROM.match(line) and _OUTLOOK_NEXT.match(nxt):
        return True
    if not _ATTRIBUTION_START.match(line):
        return False
    return bool(_ATTRIBUTION_END.search(line) or (nxt and _ATTRIBUTION_END.search(nxt)))


def normalise_whitespace(text: str) -> str:
    """Step 4 of the rule: spaces, invisible characters, empty lines."""
    text = _REMOVED.sub("", _LINE_SEPARATORS.sub("\n", text))
    out: list[str] = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip(" ")
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)
