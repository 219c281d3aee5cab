"""An organisation's credit statement written out: as CSV (RFC 4180) for an accountant and
as text for a terminal, the same columns in the same order whoever asks for it (the
``certifica credits statement`` command and the web console's CSV download), so the
operator and the organisation's admin hand the same document to whoever reconciles it
(docs/credits.md, "The statement").

Every text cell is made safe for spreadsheets (:func:`spreadsheet_safe`); the amounts
and balances are the gateway's own integers.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator

from relay.queue.credits import CREDITS_QID, Movement, Statement

__all__ = ["CSV_HEADER", "spreadsheet_safe", "statement_csv", "statement_text"]

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
    "actor",
)
"""The statement's CSV columns: one row per movement, between an opening and a closing row."""

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell a spreadsheet shows and never runs: a cell starting with
    ``= + - @`` (or a tab or CR) gets a leading ``'`` (OWASP's CSV injection advice).
    Applied to every text cell; the numbers are the gateway's own integers."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def _movement_cells(m: Movement) -> list[str]:
    qid = "" if m.qid in (None, CREDITS_QID) else str(m.qid)
    return [
        _when(m.time),
        str(m.kind),
        m.product or "",
        qid,
        m.cert_id or "",
        "" if m.units is None else str(m.units),
        str(m.amount),
        str(m.balance),
        m.note or "",
        m.actor,
    ]


def _rows(st: Statement) -> Iterator[list[str]]:
    yield ["", "opening", "", "", "", "", "", str(st.opening), st.period or "all movements", ""]
    for m in st.movements:
        yield _movement_cells(m)
    total = sum(m.amount for m in st.movements)
    yield ["", "closing", "", "", "", "", str(total), str(st.closing), "", ""]


def statement_csv(st: Statement) -> str:
    """The statement as RFC 4180 CSV (CRLF line ends, a header row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_HEADER)
    for row in _rows(st):
        # Columns 6 and 7 (amount, balance) are integers; every other cell is text.
        writer.writerow(
            [cell if i in (6, 7) else spreadsheet_safe(cell) for i, cell in enumerate(row)]
        )
    return out.getvalue()


def statement_text(st: Statement, name: str) -> str:
    """The statement for a terminal: one line per movement, then whether it balances."""
    period = st.period or "all movements"
    lines = [f"Credits statement of {st.org} ({name}), {period}; dates in UTC", ""]
    widths = (19, 8, 15, 12, 19, 5, 7, 8)
    head = ("DATE", "KIND", "PRODUCT", "MESSAGE", "CERTIFICATE", "UNITS", "AMOUNT", "BALANCE")
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  NOTE / BY")
    for row in _rows(st):
        cells = [
            c.rjust(w) if i >= 5 else c.ljust(w)
            for i, (c, w) in enumerate(zip(row[:8], widths, strict=True))
        ]
        lines.append(("  ".join(cells) + "  " + " / ".join(c for c in row[8:] if c)).rstrip())
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
