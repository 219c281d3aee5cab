"""The reader's language and time zone: gettext catalogs, and dates and numbers as the
reader writes them.

Every text a person reads (certificates, the mails the gateway sends, the public pages)
comes from a GNU gettext catalog, one per *domain* and language, kept as ``.po`` files in
``certifier/locale/<language>/LC_MESSAGES/<domain>.po`` and compiled to ``.mo`` at install
(``make install`` runs ``python -m certifier.catalogs compile``). The domains are separate so
that the people working on the certificate, the mails and the pages each own a file:

- ``certificate``: the certificate, addendum and reception certificate PDFs;
- ``mail``: the notice, the certificate mail, the proof of receipt, non-delivery reports;
- ``web``: the verification page and the other public pages.

The message ids are the English text; the English catalog exists too, so its wording can
be tuned without touching code, and ``tests/test_catalogs.py`` fails when any catalog of
any language lacks a string the code uses (extracted with Babel, as
``python -m certifier.catalogs check`` does) or translates one with different placeholders.

Dates follow the Unicode CLDR patterns of the language (Babel), in the reader's IANA time
zone, with the UTC time beside them, so a reader in the Canary Islands and a court in
Madrid read the same instant. English uses the British forms (``en_GB``: "3 December
2026, 10:42:05"), as the gateway's market is European.

The evidence data (``evidence.json``, the evidence log) never goes through this module:
it stays language-neutral, in UTC, and a document is rendered from it in any language.
"""

from __future__ import annotations

import gettext
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale
from babel.dates import format_date, format_datetime, format_time
from babel.numbers import format_decimal

__all__ = [
    "DOMAINS",
    "LANGUAGES",
    "LOCALE_DIR",
    "Reader",
    "as_datetime",
    "check_language",
    "check_timezone",
    "translations",
]

LANGUAGES = ("en", "es", "ca", "it")
"""The languages every reader-facing text exists in (ISO 639-1)."""

DOMAINS: dict[str, tuple[str, ...]] = {
    "certificate": ("certifier",),
    "mail": ("relay/certify", "relay/cleanup", "relay/templates/mail", "relay/cli"),
    "web": ("relay/web", "addendum", "relay/templates/web"),
}
"""Each catalog domain and the source folders its strings are extracted from (relative
to the repository root). A string marked in a folder belongs to that folder's domain."""

LOCALE_DIR = Path(__file__).with_name("locale")

_BABEL_LOCALE = {"en": "en_GB", "es": "es_ES", "ca": "ca_ES", "it": "it_IT"}


def check_language(value: str) -> str:
    """``value`` if it is one of :data:`LANGUAGES`, else ValueError with a sentence."""
    if value not in LANGUAGES:
        raise ValueError(
            f"{value!r} is not a language of the gateway: use one of {', '.join(LANGUAGES)}"
        )
    return value


def check_timezone(value: str) -> str:
    """``value`` if it is an IANA time zone name (``Europe/Madrid``), else ValueError."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{value!r} is not an IANA time zone name (for example Europe/Madrid, "
            "Atlantic/Canary, Europe/Rome, UTC)"
        ) from None
    return value


@lru_cache(maxsize=64)
def translations(language: str, domain: str) -> gettext.NullTranslations:
    """The catalog of ``domain`` in ``language``: the compiled ``.mo`` when it is there and
    not older than its ``.po``, else the ``.po`` compiled in memory (a checkout edited
    since ``make install``). A language or domain without a catalog gets the message ids,
    which are English."""
    folder = LOCALE_DIR / language / "LC_MESSAGES"
    po, mo = folder / f"{domain}.po", folder / f"{domain}.mo"
    if mo.is_file() and (not po.is_file() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as f:
            return gettext.GNUTranslations(f)
    if po.is_file():
        return gettext.GNUTranslations(io.BytesIO(_compile(po)))
    return gettext.NullTranslations()


def _compile(po: Path) -> bytes:
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with po.open("rb") as f:
        catalog = read_po(f)
    out = io.BytesIO()
    write_mo(out, catalog)
    return out.getvalue()


@dataclass(frozen=True)
class Reader:
    """Who reads a document: its language and time zone (picklable, so it travels to the
    certificate workers with the evidence)."""

    language: str = "en"
    timezone: str = "UTC"

    @property
    def locale(self) -> Locale:
        return _locale(self.language)

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)

    def catalog(self, domain: str) -> gettext.NullTranslations:
        return translations(self.language, domain)

    def gettext(self, domain: str, message: str) -> str:
        return self.catalog(domain).gettext(message)

    def ngettext(self, domain: str, singular: str, plural: str, n: int) -> str:
        return self.catalog(domain).ngettext(singular, plural, n)

    def moment(self, when: datetime | float | str | None, *, utc_beside: bool = True) -> str:
        """A point in time for a reader: "3 de diciembre de 2026, 11:42:05 CET" and,
        unless the reader's zone is UTC, the UTC time beside it ("(10:42:05 UTC)").
        ``when`` is a datetime, a POSIX time or an ISO 8601 text (the evidence's form);
        "" when it is missing or unreadable."""
        moment = as_datetime(when)
        if moment is None:
            return ""
        local = moment.astimezone(self.zone)
        text = (
            f"{format_date(local, 'long', locale=self.locale)}, "
            f"{format_time(local, 'HH:mm:ss', locale=self.locale)} {_zone_label(local)}"
        )
        if utc_beside and _zone_label(local) != "UTC":
            text += f" ({format_time(moment.astimezone(UTC), 'HH:mm:ss', locale=self.locale)} UTC)"
        return text

    def short_moment(self, when: datetime | float | str | None) -> str:
        """A compact local time for tables: "03/12/2026 11:42:05" in the reader's zone."""
        moment = as_datetime(when)
        if moment is None:
            return ""
        return format_datetime(
            moment.astimezone(self.zone), "dd/MM/yyyy HH:mm:ss", locale=self.locale
        )

    def number(self, value: int | float) -> str:
        return format_decimal(value, locale=self.locale)

    def size(self, octets: int) -> str:
        """A size in bytes as the reader writes it: "1.234 bytes", "12,3 kB"."""
        if octets < 10_000:
            return f"{format_decimal(octets, locale=self.locale)} bytes"
        for unit, scale in (("MB", 1_000_000), ("kB", 1_000)):
            if octets >= scale:
                return f"{format_decimal(round(octets / scale, 1), locale=self.locale)} {unit}"
        return f"{octets} bytes"  # unreachable


def _zone_label(local: datetime) -> str:
    name = local.tzname() or ""
    # tzdata abbreviations such as "+01" are numbers, not names: write them as offsets.
    if not name or name[0] in "+-":
        offset = local.utcoffset()
        minutes = int(offset.total_seconds() // 60) if offset is not None else 0
        sign = "+" if minutes >= 0 else "-"
        name = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return name


def as_datetime(when: datetime | float | str | None) -> datetime | None:
    """``when`` as an aware datetime: a datetime (naive means UTC), a POSIX time, or an
    ISO 8601 text as the evidence writes times (``...Z``); None when missing or
    unreadable."""
    if when is None or when == "":
        return None
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    if isinstance(when, int | float):
        return datetime.fromtimestamp(float(when), UTC)
    try:
        parsed = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@lru_cache(maxsize=8)
def _locale(language: str) -> Locale:
    return Locale.parse(_BABEL_LOCALE.get(language, "en_GB"))


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
