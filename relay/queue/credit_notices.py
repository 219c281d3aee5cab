"""What an organisation's admins are owed about its credits, and queueing it once
(docs/credits.md): the low-balance notice (a movement took the balance below ``[credits]
warn_below``: ``organisations.low_owed``) and the notice that documents wait for credits
(``messages.cert_state`` waiting, ``organisations.waiting_notice`` not yet set).

The queue manager finds the organisations owed one (:meth:`CreditNotices.credit_notices_due`)
and a certificate worker makes the mails (:mod:`relay.certify.credit_notices`); they are
queued, and the organisation marked told, in one transaction on condition that it was
not told meanwhile, so a job run twice mails once (ARCHITECTURE.md §1, Hand-offs).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from relay.queue.messages import Messages
from relay.queue.orgs import Account, admins, organisation
from relay.queue.records import NewMessage
from relay.queue.states import DocumentState, MessageKind


class CreditNotice(StrEnum):
    """Which notice about credits an organisation's admins get."""

    LOW = "low"  # the balance fell below [credits] warn_below
    WAITING = "waiting"  # certificates of reception or addenda wait for credits


@dataclass(frozen=True)
class CreditFacts:
    """What the notices about one organisation's credits say, and to whom."""

    org: str
    name: str
    balance: int
    owed: tuple[CreditNotice, ...]
    receptions_waiting: int
    addenda_waiting: int
    admins: tuple[Account, ...]


_DUE = (
    "SELECT code FROM organisations WHERE low_owed = 1"
    " UNION SELECT m.org FROM messages m JOIN organisations o ON o.code = m.org"
    " WHERE m.cert_state = 'waiting' AND o.waiting_notice IS NULL"
)


class CreditNotices(Messages):
    """The notices owed to organisations' admins about their credits."""

    async def credit_notices_due(self) -> list[str]:
        """The organisations whose admins are owed a notice about credits."""
        return await self._read(lambda: [str(r[0]) for r in self._conn.execute(_DUE)])

    async def credit_facts(self, org: str) -> CreditFacts | None:
        return await self._read(self._credit_facts, org)

    def _credit_facts(self, org: str) -> CreditFacts | None:
        found = organisation(self._conn, org)
        if found is None:
            return None
        low_owed, waiting_told = self._conn.execute(
            "SELECT low_owed, waiting_notice FROM organisations WHERE code = ?", (org,)
        ).fetchone()
        counts = dict(
            self._conn.execute(
                "SELECT kind, COUNT(*) FROM messages WHERE org = ? AND cert_state = ?"
                " GROUP BY kind",
                (org, str(DocumentState.WAITING)),
            ).fetchall()
        )
        receptions = int(counts.get(str(MessageKind.RECEPTION), 0))
        addenda = sum(int(n) for kind, n in counts.items() if kind != MessageKind.RECEPTION)
        owed = []
        if low_owed:
            owed.append(CreditNotice.LOW)
        if (receptions or addenda) and waiting_told is None:
            owed.append(CreditNotice.WAITING)
        return CreditFacts(
            org,
            found.name,
            found.balance,
            tuple(owed),
            receptions,
            addenda,
            tuple(admins(self._conn, org)),
        )

    async def queue_credit_notice(
        self, org: str, notice: CreditNotice, mails: list[NewMessage], now: float
    ) -> bool:
        """Queue ``mails`` (one per admin; none when the organisation has no active
        admin) and mark ``org`` told, in one transaction, on condition that it was not
        told meanwhile: False, and nothing queued, when it was."""
        return await self._run(self._queue_credit_notice, org, notice, mails, now)

    def _queue_credit_notice(
        self, org: str, notice: CreditNotice, mails: list[NewMessage], now: float
    ) -> bool:
        if notice == CreditNotice.LOW:
            sql = (
                "UPDATE organisations SET low_owed = 0, low_notice = ?"
                " WHERE code = ? AND low_owed = 1"
            )
        else:
            sql = (
                "UPDATE organisations SET waiting_notice = ?"
                " WHERE code = ? AND waiting_notice IS NULL"
            )
        if self._conn.execute(sql, (now, org)).rowcount != 1:
            return False
        for mail in mails:
            self._enqueue(mail, now)
        return True
