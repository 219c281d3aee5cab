"""The console's reading pages: certificates (search, detail, the PDF again), the
balance and the statement (docs/console.md).

Who sees which document is decided by :mod:`relay.queue.certificates` in its query (a
sender its own, admins and auditors the organisation's); a document the viewer may not
see answers exactly as one that does not exist. The PDF comes from the archive
(``certificates/<id>.pdf``, README "Renewal": the current, possibly renewed, copy).
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from certifier.outcome import SMS_TITLES, TITLES, Outcome
from relay.queue.certificates import CertificateInfo, CertificateQuery
from relay.queue.states import CreditKind
from relay.roles import Action
from relay.statements import statement_csv
from relay.web.console.base import N_, PAGE_HEADERS, Console, Visit
from relay.web.verification import OTHER_RESULT, RESULTS, SMS_RESULTS

PAGE_SIZE = 25
CERT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")

STATUSES = {
    Outcome.DELIVERY: N_("Delivered"),
    Outcome.NON_DELIVERY: N_("Not delivered"),
    Outcome.PARTIAL: N_("Partly delivered"),
    Outcome.WITHDRAWAL: N_("Withdrawn"),
    Outcome.PENDING: N_("Sent"),
    Outcome.RECEPTION: N_("Received"),
    Outcome.ADDENDUM: N_("Addendum"),
}
"""What a document's outcome is called in the list (``verifications.outcome``)."""
SMS_STATUSES = {
    Outcome.DELIVERY: N_("SMS delivered"),
    Outcome.NON_DELIVERY: N_("SMS not delivered"),
    Outcome.PARTIAL: N_("SMS partly delivered"),
    Outcome.WITHDRAWAL: N_("SMS withdrawn"),
    Outcome.PENDING: N_("SMS sent"),
}
"""The same, for a certificate whose every recipient is a phone: titled as a certified
SMS, as its PDF is (:data:`certifier.outcome.SMS_TITLES`, docs/sms.md)."""
SEARCHABLE = (Outcome.DELIVERY, Outcome.NON_DELIVERY, Outcome.PARTIAL, Outcome.WITHDRAWAL)

MOVEMENTS = {
    CreditKind.PURCHASE: N_("Credits bought"),
    CreditKind.RESERVE: N_("Reserved for a message"),
    CreditKind.REFUND: N_("Returned"),
    CreditKind.CHARGE: N_("Spent"),
    CreditKind.ADJUST: N_("Correction"),
}

NO_DOCUMENT = N_("There is no such document, or it is not one you may see.")
NOT_KEPT = N_("The provider no longer keeps the PDF of this document.")


def _outcome(info: CertificateInfo) -> Outcome:
    try:
        return Outcome(info.outcome.replace("-", "_"))
    except ValueError:
        return Outcome.PENDING


def _sms_only(info: CertificateInfo) -> bool:
    """Whether every recipient of a certificate of sending is a phone (its PDF is then
    titled as a certified SMS: :func:`certifier.outcome.title_id`)."""
    return (
        info.kind == "sending"
        and bool(info.recipients)
        and all(r.sms is not None for r in info.recipients)
    )


def _status(info: CertificateInfo) -> str:
    """The message id (``web`` catalog) of a document's outcome in the list."""
    outcome = _outcome(info)
    if _sms_only(info) and outcome in SMS_STATUSES:
        return SMS_STATUSES[outcome]
    return STATUSES[outcome]


def _title(info: CertificateInfo) -> str:
    """The message id (``certificate`` catalog) of the document's title, as its PDF has it."""
    outcome = _outcome(info)
    if _sms_only(info) and outcome in SMS_TITLES:
        return SMS_TITLES[outcome]
    return TITLES[outcome]


def _result(status: str, sms: str | None) -> str:
    """A recipient's result: a phone's from its SMS outcome (no mail server took it)."""
    if sms is not None:
        return SMS_RESULTS.get(sms, OTHER_RESULT)
    return RESULTS.get(status, OTHER_RESULT)


def _day(text: str) -> date | None:
    try:
        return date.fromisoformat(text) if text else None
    except ValueError:
        return None


class Views:
    """Certificates, balance and statement."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def add_routes(self, app: web.Application) -> None:
        c = self.console
        app.router.add_get("/app/", c.guarded(self.home, public=True))
        app.router.add_get("/app", c.guarded(self.home, public=True))
        app.router.add_get("/app/certificates", c.guarded(self.certificates))
        app.router.add_get("/app/certificates/{cert_id}", c.guarded(self.certificate))
        app.router.add_get("/app/certificates/{cert_id}/pdf", c.guarded(self.download))
        app.router.add_get("/app/balance", c.guarded(self.balance, action=Action.SEE_BALANCE))
        app.router.add_get("/app/statement", c.guarded(self.statement, action=Action.SEE_STATEMENT))
        app.router.add_get(
            "/app/statement.csv", c.guarded(self.statement_csv, action=Action.SEE_STATEMENT)
        )

    async def home(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        if request.path == "/app":
            return web.Response(status=308, headers={**PAGE_HEADERS, "Location": "app/"})
        full = visit.session is not None and visit.session.stage == "full"
        return self.console.redirect(visit, "certificates" if full else "login")

    # --- certificates -------------------------------------------------------------------

    async def certificates(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        q = request.query
        reader = visit.reader
        since, until = _day(q.get("since", "")), _day(q.get("until", ""))
        status = q.get("status", "")
        try:
            page = max(1, min(int(q.get("page", "1")), 10_000))
        except ValueError:
            page = 1

        def start_of(day: date) -> float:
            return datetime(day.year, day.month, day.day, tzinfo=reader.zone).timestamp()

        query = CertificateQuery(
            since=start_of(since) if since else None,
            until=start_of(until + timedelta(days=1)) if until else None,
            recipient=q.get("recipient", "").strip()[:200] or None,
            subject=q.get("subject", "").strip()[:200] or None,
            status=status if status in SEARCHABLE else None,
            limit=PAGE_SIZE + 1,
            offset=(page - 1) * PAGE_SIZE,
        )
        found = await self.console.store.find_certificates(visit.account, query)
        rows = [self.row(visit, info) for info in found[:PAGE_SIZE]]
        kept = {
            k: v
            for k, v in q.items()
            if k in ("since", "until", "recipient", "subject", "status") and v
        }

        def link(to_page: int) -> str:
            return "certificates?" + urlencode({**kept, "page": str(to_page)})

        return self.console.page(
            visit,
            "certificates.html",
            rows=rows,
            form={k: q.get(k, "") for k in ("since", "until", "recipient", "subject", "status")},
            statuses=[(str(s), visit.gettext(STATUSES[s])) for s in SEARCHABLE],
            page=page,
            previous=link(page - 1) if page > 1 else "",
            next=link(page + 1) if len(found) > PAGE_SIZE else "",
            searched=bool(kept),
        )

    def row(self, visit: Visit, info: CertificateInfo) -> dict[str, Any]:
        return {
            "cert_id": info.cert_id,
            "issued": visit.reader.short_moment(info.issued_at),
            "status": visit.gettext(_status(info)),
            "sender": info.sender,
            "subject": info.subject,
            "recipients": ", ".join(r.address for r in info.recipients),
        }

    async def visible(self, request: web.Request, visit: Visit) -> CertificateInfo | None:
        cert_id = request.match_info["cert_id"]
        if not CERT_ID.fullmatch(cert_id):
            return None
        return await self.console.store.certificate_for(visit.account, cert_id)

    async def certificate(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        info = await self.visible(request, visit)
        if info is None:
            return self.console.refusal(visit, 404, NO_DOCUMENT, N_("No such document"))
        reader = visit.reader
        return self.console.page(
            visit,
            "certificate.html",
            info=info,
            title=reader.catalog("certificate").gettext(_title(info)),
            issued=reader.moment(info.issued_at),
            result=visit.gettext(_status(info)),
            recipients=[
                {"address": r.address, "result": visit.gettext(_result(r.status, r.sms))}
                for r in info.recipients
            ],
        )

    async def download(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        info = await self.visible(request, visit)
        if info is None:
            return self.console.refusal(visit, 404, NO_DOCUMENT, N_("No such document"))
        path = self.console.archive / f"{info.cert_id}.pdf"
        try:
            pdf = await asyncio.to_thread(path.read_bytes)
        except OSError:
            return self.console.refusal(visit, 404, NOT_KEPT, N_("No longer kept"))
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={
                **PAGE_HEADERS,
                "Content-Disposition": f'attachment; filename="{info.cert_id}.pdf"',
            },
        )

    # --- balance and statement ----------------------------------------------------------

    async def balance(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        account = visit.account
        balance = await self.console.store.balance_of(account.org)
        return self.console.page(
            visit, "balance.html", balance=visit.reader.number(balance), org_name=account.org_name
        )

    def month_of(self, request: web.Request) -> str:
        month = request.query.get("month", "")
        return month if MONTH.fullmatch(month) else datetime.now(UTC).strftime("%Y-%m")

    async def statement(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        account = visit.account
        month = self.month_of(request)
        found = await self.console.store.statement_of(account.org, month)
        number = visit.reader.number
        rows = [
            {
                "time": visit.reader.short_moment(m.time),
                "kind": visit.gettext(MOVEMENTS.get(m.kind, N_("Correction"))),
                "amount": ("+" if m.amount > 0 else "") + number(m.amount),
                "balance": number(m.balance),
                "about": m.note or m.qid or "",
                "actor": m.actor,
            }
            for m in found.movements
        ]
        return self.console.page(
            visit,
            "statement.html",
            month=month,
            org_name=account.org_name,
            opening=number(found.opening),
            closing=number(found.closing),
            rows=rows,
            balances=found.balances,
        )

    async def statement_csv(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """The month's movements as CSV (RFC 4180), one row each, in UTC: what an
        accountant reconciles; the opening and the closing balance are the first and
        the last rows. The same document as ``certifica credits statement --csv``
        (:mod:`relay.statements`)."""
        account = visit.account
        month = self.month_of(request)
        found = await self.console.store.statement_of(account.org, month)
        return web.Response(
            text=statement_csv(found),
            content_type="text/csv",
            charset="utf-8",
            headers={
                **PAGE_HEADERS,
                "Content-Disposition": (
                    f'attachment; filename="statement-{account.org}-{month}.csv"'
                ),
            },
        )
