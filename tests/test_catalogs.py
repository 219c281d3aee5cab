"""Every text a person reads exists in es, ca, it and en (README, "Languages and readers").

The strings are extracted from the code with Babel, as ``python -m certifier.catalogs
check`` does; a catalog that lacks one, leaves it untranslated or fuzzy, or translates it
with other placeholders fails here.
"""

from __future__ import annotations

import gettext
from pathlib import Path

import pytest

from certifier import catalogs
from certifier.i18n import DOMAINS, LANGUAGES, Reader, translations


def test_every_catalog_has_every_string_translated() -> None:
    found = catalogs.problems()
    assert not found, "\n".join(found[:50]) + (
        f"\n... and {len(found) - 50} more" if len(found) > 50 else ""
    )


def test_a_missing_string_is_found(tmp_path: Path) -> None:
    """The check itself can fail: a marked string no catalog has is reported for each
    language."""
    domain = next(iter(DOMAINS))
    folder = tmp_path / DOMAINS[domain][0]
    folder.mkdir(parents=True)
    (folder / "new.py").write_text('_("A sentence nobody translated yet")\n')
    found = [p for p in catalogs.problems(root=tmp_path) if "nobody translated" in p]
    # problems() reads the repository's catalogs, so the new string is missing from each.
    assert len(found) == len(LANGUAGES), found


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("domain", DOMAINS)
def test_catalogs_load(language: str, domain: str) -> None:
    assert isinstance(translations(language, domain), gettext.NullTranslations)


def test_dates_are_written_for_the_reader_with_utc_beside() -> None:
    when = "2026-12-03T10:42:05.123Z"
    assert Reader("es", "Europe/Madrid").moment(when) == (
        "3 de diciembre de 2026, 11:42:05 CET (10:42:05 UTC)"
    )
    assert (
        Reader("it", "Europe/Rome").moment(when) == "3 dicembre 2026, 11:42:05 CET (10:42:05 UTC)"
    )
    assert Reader("en", "UTC").moment(when) == "3 December 2026, 10:42:05 UTC"
    canary = Reader("ca", "Atlantic/Canary").moment(when)
    assert canary.startswith("3 de desembre") and canary.endswith("(10:42:05 UTC)"), canary
    assert Reader("es").number(1234567) == "1.234.567"
    assert Reader("en").size(12_345) == "12.3 kB"
