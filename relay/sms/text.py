"""The text of an SMS, taken from a mail message by a documented rule.

The message is read by the gateway's own MIME reader, :func:`certifier.message.summarise`
(RFC 2045-2049 over :mod:`certifier.mime`), which gives the body a certificate shows:
the first inline ``text/plain`` part, else the first inline ``text/html`` part turned
into text with the standard library's :mod:`html.parser` (block elements become line
breaks, ``<script>``/``<style>``/``<head>`` are dropped, entities decoded). Reusing it
means the SMS and an e-mail certificate read the same body the same way, with no second
HTML converter to keep safe (that one is bounded and never raises on hostile markup).

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
4. **White space**: no-break and other Unicode spaces become a space, zero-width
   characters and controls other than the line break are removed, runs of spaces and tabs
   become one space, lines are trimmed, more than one empty line becomes one, and empty
   lines at the start and end go.

Nothing else is changed: typographic quotes or accents are not replaced by look-alikes
(the certified text is exactly what is sent, even when it costs UCS-2 segments).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from certifier.message import summarise

__all__ = ["NoText", "SmsText", "normalise_whitespace", "sms_text", "sms_text_of_body"]

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
_REMOVED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")


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
    return sms_text_of_body(summary.text)


def sms_text_of_body(body: str) -> SmsText | NoText:
    """Apply the rule to a body already read as text."""
    lines = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
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
    """Step 4 of the rule: spaces, zero-width characters, empty lines."""
    text = _REMOVED.sub("", text)
    out: list[str] = []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip(" ")
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)
