"""Keeping the gettext catalogs of :mod:`certifier.i18n` whole: extract, update, compile,
check. Run from the repository root::

    python -m certifier.catalogs update    # new strings into every .po (English filled in)
    python -m certifier.catalogs compile   # .po -> .mo (make install does this)
    python -m certifier.catalogs check     # what is missing, untranslated or fuzzy

Strings are found with Babel's extractors (Python, and Jinja2 templates through Jinja2's
own ``babel_extract``) under the folders :data:`certifier.i18n.DOMAINS` gives each
domain. The marking functions are ``_``, ``N_`` (a constant marked for later
translation), ``ngettext`` and ``pgettext``.

A translator edits the ``.po`` files by hand or with any PO editor (Poedit, Lokalize);
``check`` is what ``tests/test_catalogs.py`` runs.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po, write_po

from certifier.i18n import DOMAINS, LANGUAGES, LOCALE_DIR

ROOT = Path(__file__).resolve().parent.parent

KEYWORDS = {
    "_": None,
    "N_": None,
    "gettext": None,
    "ngettext": (1, 2),
    "pgettext": ((1, "c"), 2),
    "npgettext": ((1, "c"), 2, 3),
}
_METHODS = [
    ("**.py", "python"),
    ("**.html", "jinja2.ext:babel_extract"),
    ("**.txt", "jinja2.ext:babel_extract"),
]
_OPTIONS = {
    "**.html": {"trimmed": "true"},
    "**.txt": {"trimmed": "true"},
}


def po_path(language: str, domain: str) -> Path:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{domain}.po"


def extract(domain: str, root: Path = ROOT) -> Catalog:
    """Every string the code of ``domain`` marks, as a template catalog."""
    template = Catalog(project="Certifica", domain=domain, fuzzy=False)
    for folder in DOMAINS[domain]:
        base = root / folder
        if not base.is_dir():
            continue
        for filename, lineno, message, comments, context in extract_from_dir(
            str(base), _METHODS, _OPTIONS, KEYWORDS, comment_tags=("Translators:",)
        ):
            template.add(
                message,
                None,
                [(f"{folder}/{filename}", lineno)],
                auto_comments=comments,
                context=context,
            )
    return template


def _read(path: Path, language: str, domain: str) -> Catalog:
    if path.is_file():
        with path.open("rb") as f:
            return read_po(f, locale=language, domain=domain)
    return Catalog(locale=language, domain=domain, project="Certifica", fuzzy=False)


def update(domains: Iterable[str] = DOMAINS, languages: Iterable[str] = LANGUAGES) -> None:
    """Bring every catalog in line with the code: new strings added (in English filled
    in with the id itself), removed ones marked obsolete."""
    for domain in domains:
        template = extract(domain)
        for language in languages:
            path = po_path(language, domain)
            catalog = _read(path, language, domain)
            # Catalog.update takes the template's message objects: each language gets its
            # own copy, or English filled in below would stand in every later language.
            catalog.update(copy.deepcopy(template), no_fuzzy_matching=True)
            catalog.obsolete.clear()
            if language == "en":
                for message in catalog:
                    string = message.string
                    filled = all(string) if isinstance(string, tuple | list) else bool(string)
                    if message.id and not filled:
                        message.string = message.id
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("wb") as f:
                write_po(f, catalog, width=0, include_previous=False)


def compile_all() -> int:
    """Compile every ``.po`` to its ``.mo``; returns how many."""
    count = 0
    for po in sorted(LOCALE_DIR.glob("*/LC_MESSAGES/*.po")):
        with po.open("rb") as f:
            catalog = read_po(f)
        with po.with_suffix(".mo").open("wb") as f:
            write_mo(f, catalog)
        count += 1
    return count


def problems(root: Path = ROOT) -> list[str]:
    """What keeps the catalogs from being whole, one sentence each; empty when whole."""
    out: list[str] = []
    for domain in DOMAINS:
        template = extract(domain, root)
        for language in LANGUAGES:
            path = po_path(language, domain)
            if not path.is_file():
                out.append(f"{path.relative_to(ROOT)}: missing")
                continue
            catalog = _read(path, language, domain)
            for message in template:
                if not message.id:
                    continue
                have = catalog.get(message.id, message.context)
                where = f"{path.relative_to(ROOT)}: {_short(message.id)!r}"
                if have is None:
                    out.append(f"{where} is not in the catalog")
                elif not have.string or (isinstance(have.string, tuple) and not all(have.string)):
                    out.append(f"{where} is not translated")
                elif have.fuzzy:
                    out.append(f"{where} is marked fuzzy")
                elif language != "en" and _english_left(have.id, have.string):
                    out.append(f"{where} is the English text, not a translation")
            for message, errors in catalog.check():
                for error in errors:
                    out.append(f"{path.relative_to(ROOT)}: {_short(message.id)!r}: {error}")
    return out


def _english_left(message_id: object, string: object) -> bool:
    """A sentence (three words or more) whose "translation" is the English itself: a
    string copied over untranslated. Names and codes ("SHA-256", "PDF") are shorter."""
    ids = message_id if isinstance(message_id, tuple) else (message_id,)
    strings = string if isinstance(string, tuple) else (string,)
    return any(
        s == i and len(re.findall(r"[A-Za-z]{3,}", re.sub(r"%\(\w+\)[sdif]", "", str(i)))) >= 3
        for i, s in zip(ids, strings, strict=False)
    )


def _short(message_id: object) -> str:
    text = message_id[0] if isinstance(message_id, tuple) else str(message_id)
    return text if len(text) <= 60 else text[:57] + "..."


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "update":
        update()
        return 0
    if command == "compile":
        print(f"compiled {compile_all()} catalogs")
        return 0
    if command == "check":
        found = problems()
        for line in found:
            print(line)
        return 1 if found else 0
    print("usage: python -m certifier.catalogs update|compile|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
