"""SMS recipient addresses: a phone number or a group, written as a mail address.

Mail reaches a phone through an address of the gateway's SMS domain,
``sms.<gateway domain>`` (README, "Certified SMS"):

- ``+34600111222@sms.<domain>``: an international number (ITU-T E.164: ``+``, the country
  code, at most 15 digits). Spaces, dots, hyphens and parentheses between the digits are
  allowed and dropped; ``00`` or a national number (``600111222``) is read in ``[sms]
  default_region``. Numbers are parsed, checked and normalised to E.164 with
  ``phonenumbers`` (Google's libphonenumber metadata, so the numbering plans stay current
  with the package's version).
- ``group-name@sms.<domain>``: a group of the sending organisation's contacts (letters,
  digits, ``.``, ``_``, ``-``; compared in lower case), expanded by the step that sends.

A number is refused unless libphonenumber says it is valid and a mobile one: ``MOBILE``,
or ``FIXED_LINE_OR_MOBILE``, which is what it answers for the North American numbering
plan (US, Canada), where mobile and fixed numbers share the same ranges. A refusal is a
:class:`NumberRefused` holding one plain sentence; the SMTP listener answers RCPT with it
after ``550 5.1.3`` (RFC 3463: "bad destination mailbox address syntax").

Standards: ITU-T E.164 (international numbers), 3GPP TS 23.040 section 9.1.2.5 (the
address fields of an SMS: international numbers travel as TON 1 / NPI 1 without the
``+``, see :mod:`relay.sms.smpp`), RFC 5321 section 4.1.2 (the local part of the
address).

Errors: :func:`parse_sms_address` never raises on its input: what it cannot use is a
:class:`NumberRefused`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberType

__all__ = [
    "MAX_E164_DIGITS",
    "NumberRefused",
    "SmsGroup",
    "SmsNumber",
    "is_sms_address",
    "parse_number",
    "parse_sms_address",
    "sms_domain",
]

MAX_E164_DIGITS = 15  # ITU-T E.164 section 6.1
MAX_LOCAL_CHARS = 64  # RFC 5321 section 4.5.3.1.1

# Types a handset can have. FIXED_LINE_OR_MOBILE: NANP (US, Canada) ranges are shared.
_MOBILE_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
_TYPE_WORDS = {
    PhoneNumberType.FIXED_LINE: "a fixed-line number",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "an internet telephony (VoIP) number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal number (forwarded)",
    PhoneNumberType.PAGER: "a pager number",
    PhoneNumberType.UAN: "a company's universal access number",
    PhoneNumberType.VOICEMAIL: "a voicemail access number",
}
_NUMBER_CHARS = re.compile(r"\+?[0-9][0-9 .()\-]*")
_SEPARATORS = re.compile(r"[ .()\-]")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


@dataclass(frozen=True)
class SmsNumber:
    """A number that may receive SMS: E.164 (``+34600111222``) and its region (``ES``)."""

    e164: str
    region: str

    @property
    def digits(self) -> str:
        """The number as an SMPP ``destination_addr`` with TON 1 / NPI 1: no ``+``."""
        return self.e164[1:]


@dataclass(frozen=True)
class SmsGroup:
    """A group of contacts, by its name in lower case."""

    name: str


@dataclass(frozen=True)
class NumberRefused:
    """Why an address cannot receive SMS: one sentence, for ``550 5.1.3`` at RCPT."""

    sentence: str


def sms_domain(gateway_domain: str) -> str:
    """The domain whose addresses are phones: ``sms.<gateway domain>``, lower case."""
    return "sms." + gateway_domain.lower().rstrip(".")


def is_sms_address(address: str, gateway_domain: str) -> bool:
    """True when ``address`` is in the SMS domain (whether or not it is a valid number)."""
    _local, at, domain = address.rpartition("@")
    return bool(at) and domain.lower().rstrip(".") == sms_domain(gateway_domain)


def parse_sms_address(
    address: str, gateway_domain: str, default_region: str
) -> SmsNumber | SmsGroup | NumberRefused:
    """Read ``local@sms.<gateway domain>`` as a number or a group (module docstring)."""
    local, at, _domain = address.rpartition("@")
    if not is_sms_address(address, gateway_domain):
        return NumberRefused(
            f"{_shown(address)} is not an address of {sms_domain(gateway_domain)}."
        )
    if not at or not local:
        return NumberRefused("The address has no phone number or group before the @.")
    if len(local) > MAX_LOCAL_CHARS:
        return NumberRefused(f"The part before the @ is longer than {MAX_LOCAL_CHARS} characters.")
    if _NUMBER_CHARS.fullmatch(local):
        return parse_number(local, default_region)
    if _GROUP.fullmatch(local):
        return SmsGroup(local.lower())
    return NumberRefused(
        f"{_shown(local)} is neither a phone number (such as +34600111222) nor a group name "
        "(letters, digits, dots, hyphens)."
    )


def parse_number(text: str, default_region: str) -> SmsNumber | NumberRefused:
    """Check ``text`` (``+34 600 111 222``, ``0034…``, or national in ``default_region``)
    is a valid mobile number; return it in E.164, else the refusal."""
    shown = _shown(text)
    if not _NUMBER_CHARS.fullmatch(text):
        return NumberRefused(f"{shown} is not a phone number.")
    digits = _SEPARATORS.sub("", text)
    if len(digits.lstrip("+")) > MAX_E164_DIGITS + 2:  # room for a national "00" prefix
        return NumberRefused(f"{shown} has more digits than any phone number (15 at most).")
    try:
        number = phonenumbers.parse(digits, default_region or None)
    except NumberParseException as err:
        if not digits.startswith("+") and not default_region:
            return NumberRefused(
                f"{shown} is not an international number: write it with + and the country code."
            )
        if err.error_type == NumberParseException.INVALID_COUNTRY_CODE:
            return NumberRefused(
                f"{shown} does not start with a country code (such as +34, +39 or +1)."
            )
        return NumberRefused(f"{shown} is not a phone number.")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) - 1 > MAX_E164_DIGITS or not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_country_code(number.country_code or 0)
        where = f" in the numbering plan of {region}" if region not in ("ZZ", "001") else ""
        return NumberRefused(f"{shown} is not a valid phone number{where}.")
    kind = phonenumbers.number_type(number)
    if kind not in _MOBILE_TYPES:
        words = _TYPE_WORDS.get(kind, "not a mobile number")
        return NumberRefused(f"{e164} is {words}, not a mobile: it cannot receive SMS.")
    region = phonenumbers.region_code_for_number(number) or ""
    return SmsNumber(e164, region)


def _shown(text: str) -> str:
    """``text`` as a reply may quote it: printable ASCII only, 64 characters at most."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:MAX_LOCAL_CHARS])
    return cleaned + ("..." if len(text) > MAX_LOCAL_CHARS else "")
