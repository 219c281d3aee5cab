"""``certifica contacts``: an organisation's SMS contacts (docs/sms.md, "Contacts,
consent and opt-out"): add one, import a CSV file, list, remove, and record an opt-out
(or its withdrawal) for a number.

A contact has a number (E.164, checked as mail to it would be; a contact without one
is listed as skipped when its group is sent to), a name, groups, and, when the person
agreed to marketing, the consent: when and where it was given (GDPR art. 7(1): the
organisation must be able to show it). Recording a consent or an opt-out writes an
entry of the evidence log (``SmsConsentRecorded``, ``SmsOptOut``, ``SmsOptIn``).

The CSV file (RFC 4180, UTF-8) has the header ``number,name,groups,consent,
consent_source,consent_date``: ``groups`` separated by ``;``, ``consent`` empty or
``marketing``, ``consent_date`` ``YYYY-MM-DD`` (or with a time, UTC; empty: now).
Rows that cannot be read are reported with their line number and left out; the others
are imported together. What is printed back of a file or a contact is made safe for
spreadsheets (:func:`relay.statements.spreadsheet_safe`) and for terminals.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    config_of,
    open_store,
    operator_name,
    organisation_of,
)
from relay.config import Config
from relay.logs import one_line, printable
from relay.queue.contacts import NewContact
from relay.statements import spreadsheet_safe

if TYPE_CHECKING:
    pass

CSV_FIELDS = ("number", "name", "groups", "consent", "consent_source", "consent_date")
"""The columns of an import file and of ``contacts list --csv``, in this order."""

MAX_IMPORT_ROWS = 100_000
MAX_NAME = 200


@dataclass(frozen=True)
class BadRow:
    """A row of an import file that was left out: its line and why."""

    line: int
    why: str


def _number(text: str, cfg: Config) -> str:
    from relay.sms.numbers import NumberRefused, parse_number

    text = text.strip().removeprefix("'")  # as `contacts list --csv` writes it
    found = parse_number(text, cfg.sms.default_region)
    if isinstance(found, NumberRefused):
        raise ValueError(found.sentence)
    return found.e164


def _group(text: str) -> str:
    from relay.sms.numbers import SmsGroup, parse_sms_address

    name = text.strip()
    if isinstance(parse_sms_address(f"{name}@sms.x", "x", ""), SmsGroup):
        return name.lower()
    raise ValueError(
        f"{printable(name[:64])!r} is not a group name: letters, digits, dots, hyphens and "
        "underscores, starting with a letter or digit and not only digits"
    )


def _when(text: str) -> float:
    text = text.strip()
    if not text:
        return time.time()
    for fmt in ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    raise ValueError(f"{printable(text[:40])!r} is not a date such as 2026-11-30")


def _plain(text: str, what: str) -> str:
    """``text`` with its white space made single spaces; ValueError when it is longer
    than :data:`MAX_NAME` or holds a control or invisible format character (an escape
    sequence or a right-to-left override would act on the operator's terminal or on a
    spreadsheet when the contact is listed; it is shown in evidence too)."""
    text = " ".join(text.split())
    if len(text) > MAX_NAME:
        raise ValueError(f"{what} is longer than {MAX_NAME} characters")
    if any(not c.isprintable() for c in text):
        raise ValueError(f"{what} holds control characters")
    return text


def new_contact(
    cfg: Config,
    number: str,
    name: str,
    groups: list[str],
    consent: str,
    source: str,
    date: str,
) -> NewContact:
    """A contact from what a user typed or a file holds; ValueError with a sentence."""
    name = _plain(name, "the name")
    e164 = _number(number, cfg) if number.strip() else None
    if e164 is None and not name:
        raise ValueError("a contact needs a number or a name")
    consent = consent.strip().lower()
    if consent not in ("", "marketing"):
        raise ValueError(f"consent is empty or marketing, not {printable(consent[:40])!r}")
    source = _plain(source, "the consent source")
    if consent and not source:
        raise ValueError("a consent needs its source (where it was given: a form, a contract)")
    if not consent and (source or date.strip()):
        raise ValueError("consent_source and consent_date go with consent = marketing")
    return NewContact(
        number=e164,
        name=name or None,
        groups=tuple(dict.fromkeys(_group(g) for g in groups if g.strip())),
        consent_marketing=_when(date) if consent else None,
        consent_source=source or None,
    )


def read_import(cfg: Config, text: str) -> tuple[list[NewContact], list[BadRow]]:
    """The contacts of a CSV file's ``text`` and the rows left out (module docstring)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    wanted = list(CSV_FIELDS)
    if header is None or [h.strip().lower() for h in header] != wanted:
        raise UserError(f"the first line of the file must be the header {','.join(CSV_FIELDS)}")
    good: list[NewContact] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    for row in _rows(reader):
        line = reader.line_num
        if len(good) + len(bad) >= MAX_IMPORT_ROWS:
            raise UserError(f"the file has more than {MAX_IMPORT_ROWS} rows; split it")
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(CSV_FIELDS):
            bad.append(BadRow(line, f"{len(row)} fields, not {len(CSV_FIELDS)}"))
            continue
        number, name, groups, consent, source, date = row
        try:
            contact = new_contact(cfg, number, name, groups.split(";"), consent, source, date)
        except ValueError as err:
            bad.append(BadRow(line, str(err)))
            continue
        if contact.number is not None:
            if contact.number in seen:
                bad.append(BadRow(line, f"{contact.number} is on line {seen[contact.number]} too"))
                continue
            seen[contact.number] = line
        good.append(contact)
    return good, bad


def _rows(reader: Any) -> Iterator[list[str]]:
    """The rows of ``reader``; a row the csv module cannot read (a field over its limit
    of :func:`csv.field_size_limit` characters) ends the import with a sentence naming
    the line it starts on."""
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "field larger than field limit" in str(err):
                why = (
                    f"a field is longer than {csv.field_size_limit():,} characters "
                    "(a quote left open makes the rest of the file one field)"
                )
            else:
                why = f"it is not CSV ({printable(str(err), 120)})"
            raise UserError(f"line {start} of the file cannot be read: {why}") from None
        yield row
        start = reader.line_num + 1


def cmd_contacts_add(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    if args.consent is None and (args.consent_source or args.consent_date):
        raise UserError("--consent-source and --consent-date go with --consent marketing")
    try:
        contact = new_contact(
            cfg,
            args.number or "",
            args.name or "",
            args.group or [],
            args.consent or "",
            args.consent_source or "",
            args.consent_date or "",
        )
    except ValueError as err:
        raise UserError(str(err)) from None
    with open_store(cfg, writes=True) as store:
        organisation_of(store, args.org)
        taken = store.add_contacts(args.org, [contact], time.time(), f"operator:{operator_name()}")
    if taken:
        raise UserError(
            f"{contact.number} is already a contact of {args.org}; remove it first to change it"
        )
    print(f"{args.org}: contact {contact.number or '(no number)'} added")
    return EXIT_OK


def cmd_contacts_import(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as err:
        raise UserError(f"cannot read {args.file}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise UserError(f"{args.file} is not UTF-8 text") from None
    good, bad = read_import(cfg, text)
    with open_store(cfg, writes=True) as store:
        organisation_of(store, args.org)
        taken = store.add_contacts(args.org, good, time.time(), f"operator:{operator_name()}")
    for row in bad:
        print(f"line {row.line}: left out: {printable(row.why)}", file=sys.stderr)
    for number in taken:
        print(f"{number}: left out: already a contact of {args.org}", file=sys.stderr)
    print(
        f"{args.org}: {len(good) - len(taken)} contacts imported, {len(bad) + len(taken)} left out"
    )
    return EXIT_FAILED if bad or taken else EXIT_OK


def _day(ts: float | None) -> str:
    return "" if ts is None else time.strftime("%Y-%m-%d", time.gmtime(ts))


def cmd_contacts_list(args: argparse.Namespace) -> int:
    group = None
    if args.group is not None:
        try:
            group = _group(args.group)
        except ValueError as err:
            raise UserError(str(err)) from None
    with open_store(config_of(args)) as store:
        organisation_of(store, args.org)
        contacts = store.contacts_now(args.org, group)
        optouts = store.optouts_now(args.org)
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\r\n")
        out.writerow([*CSV_FIELDS, "opted_out"])
        for c in contacts:
            opted = optouts.get(c.number or "")
            out.writerow(
                [
                    spreadsheet_safe(one_line(cell))  # stored before they were refused
                    for cell in (
                        c.number or "",
                        c.name or "",
                        ";".join(c.groups),
                        "marketing" if c.consent_marketing is not None else "",
                        c.consent_source or "",
                        _day(c.consent_marketing),
                        _day(opted.time) if opted else "",
                    )
                ]
            )
        return EXIT_OK
    for c in contacts:
        opted = optouts.get(c.number or "")
        consent = (
            f"marketing consent {_day(c.consent_marketing)} "
            f"({printable(c.consent_source or '', None)})"
            if c.consent_marketing is not None
            else "no marketing consent"
        )
        print(
            f"{printable(c.number or '(no number)')}\t{printable(c.name or '-', None)}\t"
            f"groups {printable(','.join(c.groups), None) or '-'}\t{consent}"
            + (f"\topted out {_day(opted.time)} ({printable(opted.how)})" if opted else "")
        )
    print(f"{len(contacts)} contacts")
    return EXIT_OK


def _number_arg(args: argparse.Namespace) -> str:
    try:
        return _number(args.number, config_of(args))
    except ValueError as err:
        raise UserError(str(err)) from None


def cmd_contacts_remove(args: argparse.Namespace) -> int:
    if (args.number is None) == (args.name is None):
        raise UserError("give the contact's NUMBER, or --name for a contact without a number")
    if args.name is not None:
        with open_store(config_of(args), writes=True) as store:
            organisation_of(store, args.org)
            removed = store.remove_numberless_contacts(args.org, args.name)
        if not removed:
            raise UserError(
                f"{args.org} has no contact without a number named {printable(args.name)}"
            )
        print(
            f"{args.org}: {removed} contact(s) without a number named {printable(args.name)} removed"
        )
        return EXIT_OK
    number = _number_arg(args)
    with open_store(config_of(args), writes=True) as store:
        organisation_of(store, args.org)
        if not store.remove_contact(args.org, number):
            raise UserError(f"{number} is not a contact of {args.org}")
    print(f"{args.org}: contact {number} removed (an opt-out, if any, stays)")
    return EXIT_OK


def cmd_contacts_optout(args: argparse.Namespace) -> int:
    number = _number_arg(args)
    actor = f"operator:{operator_name()}"
    with open_store(config_of(args), writes=True) as store:
        organisation_of(store, args.org)
        if args.contacts_command == "optout":
            done = store.optout_now(args.org, number, time.time(), "operator", {"actor": actor})
            said = "opted out" if done else "was opted out already"
        else:
            done = store.optin_now(args.org, number, time.time(), actor)
            said = "opted in again" if done else "was not opted out"
    print(f"{args.org}: {number} {said}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica contacts`` to the subcommands."""
    contacts = sub.add_parser(
        "contacts",
        help="organisations' SMS contacts: add, import, list, remove, optout, optin",
        description="An organisation's SMS contacts (docs/sms.md): numbers with names, "
        "groups (mail to GROUP@sms.<domain> reaches them) and the consent to marketing "
        "each gave; and the numbers that opted out.",
    )
    csub = contacts.add_subparsers(dest="contacts_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "add",
        help="add one contact",
        description="Add a contact to ORG: its number (a mobile number, + and the "
        "country code or national in [sms] default_region), a name, groups, and the "
        "consent to marketing with where and when it was given.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("number", metavar="NUMBER", nargs="?", help="the mobile number (+34600111222)")
    p.add_argument("--name", help="the contact's name")
    p.add_argument(
        "--group", action="append", metavar="GROUP", help="a group it is in (repeat for more)"
    )
    p.add_argument(
        "--consent",
        choices=["marketing"],
        help="it agreed to marketing messages (needs --consent-source)",
    )
    p.add_argument("--consent-source", metavar="TEXT", help='where it agreed: "web form 2026-11"')
    p.add_argument(
        "--consent-date", metavar="DATE", help="when it agreed, YYYY-MM-DD (UTC; default: now)"
    )
    p.set_defaults(func=cmd_contacts_add)
    p = csub.add_parser(
        "import",
        help="import contacts from a CSV file",
        description="Import ORG's contacts from FILE (CSV, UTF-8) with the header "
        f"{','.join(CSV_FIELDS)}; groups separated by ';'. Rows that cannot be read are "
        "reported with their line number and left out (exit 1); the others are imported.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("file", metavar="FILE", help="the CSV file")
    p.set_defaults(func=cmd_contacts_import)
    p = csub.add_parser(
        "list",
        help="list an organisation's contacts",
        description="List ORG's contacts (of GROUP only, with --group): number, name, "
        "groups, consent and opt-out; with --csv in the import's columns plus opted_out.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("--group", metavar="GROUP", help="only the contacts of this group")
    p.add_argument("--csv", action="store_true", help="CSV (RFC 4180), safe for spreadsheets")
    p.set_defaults(func=cmd_contacts_list)
    p = csub.add_parser(
        "remove",
        help="remove a contact",
        description="Remove ORG's contact NUMBER and its groups (or, with --name, the "
        "contacts of that name that have no number). An opt-out of the number stays.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("number", metavar="NUMBER", nargs="?", help="the contact's number")
    p.add_argument("--name", metavar="NAME", help="a contact without a number, by its name")
    p.set_defaults(func=cmd_contacts_remove)
    for name, short, long in (
        (
            "optout",
            "record that a number wants no more SMS from an organisation",
            "Record that NUMBER asked ORG for no more SMS (by letter, by phone): marketing "
            "is no longer sent to it (with [sms] optout_scope = all, nothing is). An "
            "evidence entry records it.",
        ),
        (
            "optin",
            "withdraw a number's opt-out (it asked again)",
            "Withdraw NUMBER's opt-out of ORG, when the person asked to receive SMS again. "
            "An evidence entry records it.",
        ),
    ):
        p = csub.add_parser(name, help=short, description=long)
        p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
        p.add_argument("number", metavar="NUMBER", help="the number")
        p.set_defaults(func=cmd_contacts_optout)
