"""``certifica credits``: an organisation's credits (docs/credits.md): add a bundle,
correct the balance, show balances, and print a statement that balances to the total,
as text or as CSV (RFC 4180).

Every movement is an entry of the evidence log too (:func:`relay.queue.credits.move`),
so ``certifica evidence verify`` covers the credits as it covers the mail.
"""

from __future__ import annotations

import argparse
import sys
import time

from certifier.errors import UsageError
from relay.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    UserError,
    config_of,
    open_store,
    operator_name,
    organisation_of,
)
from relay.queue.credits import NoSuchOrganisation
from relay.queue.states import CreditKind
from relay.statements import statement_csv, statement_text


def _amount(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of credits") from None


def _month(text: str) -> str:
    try:
        time.strptime(text, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month like 2026-11") from None
    return text


def _move(args: argparse.Namespace, kind: CreditKind) -> int:
    if kind == CreditKind.PURCHASE and args.amount <= 0:
        raise UserError("credits add takes a positive amount; use credits adjust to take away")
    if kind == CreditKind.ADJUST and args.amount == 0:
        raise UserError("credits adjust takes an amount other than 0")
    note = " ".join((args.note or "").split())
    if kind == CreditKind.ADJUST and not note:
        raise UserError("credits adjust needs --note saying why")
    with open_store(config_of(args), writes=True) as store:
        try:
            if args.amount < 0 and store.balance_now(args.org) + args.amount < 0:
                raise UserError(
                    f"organisation {args.org} has {store.balance_now(args.org)} credits; "
                    f"taking {-args.amount} would leave it below 0"
                )
            movement = store.add_credits(
                args.org,
                args.amount,
                note=note or None,
                actor=f"operator:{operator_name()}",
                kind=kind,
            )
        except NoSuchOrganisation as err:
            raise UserError(str(err)) from None
    print(f"{args.org}: {movement.amount:+d} credits; the balance is now {movement.balance}")
    return EXIT_OK


def cmd_credits_add(args: argparse.Namespace) -> int:
    return _move(args, CreditKind.PURCHASE)


def cmd_credits_adjust(args: argparse.Namespace) -> int:
    return _move(args, CreditKind.ADJUST)


def cmd_credits_balance(args: argparse.Namespace) -> int:
    with open_store(config_of(args)) as store:
        if args.org:
            shown = [organisation_of(store, args.org)]
        else:
            shown = store.organisations_now()
    for org in shown:
        print(f"{org.code:<20} {org.balance:>10}  {org.name}")
    return EXIT_OK


def cmd_credits_statement(args: argparse.Namespace) -> int:
    with open_store(config_of(args)) as store:
        org = organisation_of(store, args.org)
        try:
            st = store.statement_now(args.org, args.month)
        except UsageError as err:
            raise UserError(str(err)) from None
    if args.csv:
        sys.stdout.write(statement_csv(st))
    else:
        print(statement_text(st, org.name))
    return EXIT_OK if st.balances else EXIT_FAILED


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica credits`` to the subcommands."""
    credits = sub.add_parser(
        "credits",
        help="organisations' credits: add, adjust, balance, statement",
        description="Organisations' credits (docs/credits.md): bundles never expire; each "
        "certified product costs its [credits] price. Every movement is an entry of the "
        "evidence log.",
    )
    csub = credits.add_subparsers(dest="credits_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "add",
        help="add a bundle of credits to an organisation",
        description="Add AMOUNT credits (a bundle bought) to ORG's balance and print the new "
        "balance. Documents of ORG that waited for credits are made again.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("amount", metavar="AMOUNT", type=_amount, help="credits to add (> 0)")
    p.add_argument("--note", metavar="TEXT", help='what it is for: "invoice 2026-117"')
    p.set_defaults(func=cmd_credits_add)
    p = csub.add_parser(
        "adjust",
        help="correct an organisation's balance, with a note",
        description="Add AMOUNT (signed: -5 takes five away) to ORG's balance as an "
        "operator's correction; --note is required. The balance never goes below 0.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code")
    p.add_argument(
        "amount", metavar="AMOUNT", type=_amount, help="credits to add (negative: to take)"
    )
    p.add_argument("--note", metavar="TEXT", required=True, help="why (required)")
    p.set_defaults(func=cmd_credits_adjust)
    p = csub.add_parser(
        "balance",
        help="show the balance of one organisation or of all",
        description="Print each organisation's code, balance and name (or only ORG's).",
    )
    p.add_argument("org", metavar="ORG", nargs="?", help="one organisation (default: all)")
    p.set_defaults(func=cmd_credits_balance)
    p = csub.add_parser(
        "statement",
        help="list an organisation's movements; they balance to the total",
        description="List ORG's movements (date in UTC, kind, product, message, "
        "certificate, units, amount, balance, note) between an opening and a closing "
        "line, then say whether they add up from the opening to the closing balance "
        "(exit 1 when not).",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code")
    p.add_argument("--month", type=_month, metavar="YYYY-MM", help="one month (UTC): 2026-11")
    p.add_argument(
        "--csv",
        action="store_true",
        help="CSV (RFC 4180, a header row; text cells that start with = + - @ get a leading ')",
    )
    p.set_defaults(func=cmd_credits_statement)
