"""``certifica credits``: an organisation's credits (docs/credits.md): add a bundle,
correct the balance, show balances, and print a statement that balances to the total,
as text or as CSV (RFC 4180).

Every movement is an entry of the evidence log too (:func:`relay.queue.credits.move`),
so ``certifica evidence verify`` covers the credits as it covers the mail.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Iterator

from certifier.errors import UsageError
from relay.cli.common import EXIT_FAILED, EXIT_OK, UserError, config_of, open_store, operator_name
from relay.queue.credits import CREDITS_QID, Movement, NoSuchOrganisation, Statement
from relay.queue.states import CreditKind

CSV_HEADER = (
    "date_utc",
    "kind",
    "product",
    "message",
    "certificate",
    "units",
    "amount",
    "balance",
    "note",
)
"""The statement's CSV columns: one row per movement, between an opening and a closing row."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows and never runs: a cell starting with
    ``= + - @`` (or a tab or CR) gets a leading ``'`` (OWASP's CSV injection advice).
    Applied to every text cell; the numbers are the gateway's own integers."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _amount(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of credits") from None


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _month(text: str) -> str:
    try:
        time.strptime(text, "%Y-%m")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a month like 2026-11") from None
    return text


def _movement_cells(m: Movement, certificates: dict[str, str]) -> list[str]:
    qid = "" if m.qid in (None, CREDITS_QID) else str(m.qid)
    return [
        _when(m.time),
        str(m.kind),
        m.product or "",
        qid,
        certificates.get(qid, ""),
        "" if m.units is None else str(m.units),
        str(m.amount),
        str(m.balance),
        m.note or "",
    ]


def _rows(st: Statement, certificates: dict[str, str]) -> Iterator[list[str]]:
    yield ["", "opening", "", "", "", "", "", str(st.opening), st.period or "all movements"]
    for m in st.movements:
        yield _movement_cells(m, certificates)
    total = sum(m.amount for m in st.movements)
    yield ["", "closing", "", "", "", "", str(total), str(st.closing), ""]


def statement_csv(st: Statement, certificates: dict[str, str]) -> str:
    """The statement as RFC 4180 CSV (CRLF line ends, a header row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_HEADER)
    for row in _rows(st, certificates):
        # Columns 6 and 7 (amount, balance) are integers; every other cell is text.
        writer.writerow(
            [cell if i in (6, 7) else spreadsheet_safe(cell) for i, cell in enumerate(row)]
        )
    return out.getvalue()


def statement_text(st: Statement, name: str, certificates: dict[str, str]) -> str:
    """The statement for a terminal: one line per movement, then whether it balances."""
    period = st.period or "all movements"
    lines = [f"Credits statement of {st.org} ({name}), {period}; dates in UTC", ""]
    widths = (19, 8, 15, 12, 19, 5, 7, 8)
    head = ("DATE", "KIND", "PRODUCT", "MESSAGE", "CERTIFICATE", "UNITS", "AMOUNT", "BALANCE")
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  NOTE")
    for row in _rows(st, certificates):
        cells = [
            c.rjust(w) if i >= 5 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:8], widths, strict=True))
        ]
        lines.append(("  ".join(cells) + "  " + row[8]).rstrip())
    total = sum(m.amount for m in st.movements)
    sign = "+" if total >= 0 else "-"
    if st.balances:
        lines.append(
            f"Balances: opening {st.opening} {sign} {abs(total)} in {len(st.movements)} "
            f"movement(s) = closing {st.closing}."
        )
    else:
        lines.append(
            f"DOES NOT BALANCE: opening {st.opening} {sign} {abs(total)} is "
            f"{st.opening + total}, but the closing balance is {st.closing}."
        )
    return "\n".join(lines)


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
                args.org, args.amount, note=note or None, actor=operator_name(), kind=kind
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
            org = store.organisation_now(args.org)
            if org is None:
                raise UserError(f"there is no organisation {args.org!r}")
            shown = [org]
        else:
            shown = store.organisations_now()
    for org in shown:
        print(f"{org.code:<20} {org.balance:>10}  {org.name}")
    return EXIT_OK


def cmd_credits_statement(args: argparse.Namespace) -> int:
    with open_store(config_of(args)) as store:
        org = store.organisation_now(args.org)
        if org is None:
            raise UserError(f"there is no organisation {args.org!r}")
        try:
            st = store.statement_now(args.org, args.month)
        except UsageError as err:
            raise UserError(str(err)) from None
        certificates = store.certificate_ids_now({m.qid for m in st.movements if m.qid})
    if args.csv:
        sys.stdout.write(statement_csv(st, certificates))
    else:
        print(statement_text(st, org.name, certificates))
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
