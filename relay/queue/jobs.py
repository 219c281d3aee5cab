"""The work the queue manager hands out, and what comes back: plain, JSON-able values.

The queue manager (:mod:`relay.queue.manager`) only schedules. Every delivery attempt
goes to a delivery agent (:mod:`relay.delivery.agent`) as a :class:`DeliveryJob`, every
notice, certificate, report and addendum to a document maker
(:mod:`relay.certify.documents`) as a :class:`DocumentJob`, through a
:class:`Dispatcher`. The scheduler learns what happened only from the values returned
(:class:`DeliveryDone`, :class:`DocumentDone`); everything else the executors record in
the store themselves. No Python object is shared, so a dispatcher may run the jobs in
this process (:class:`relay.queue.local.LocalDispatcher`) or in other processes, each
job and result one JSON object on a local socket (ARCHITECTURE.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Protocol

from certifier.errors import TemporaryError

Row = dict[str, Any]
"""A recipient due for delivery with its message's columns, as
:meth:`relay.queue.store.Store.take_due` returns it."""

_SCALARS = (str, int, float, bool, type(None))


def _plain(row: Row) -> Row:
    """``row`` itself, once every value is checked to survive JSON unchanged."""
    for column, value in row.items():
        if not isinstance(column, str) or not isinstance(value, _SCALARS):
            raise TypeError(f"column {column!r} holds a {type(value).__name__}, not a JSON value")
    return row


@dataclass(frozen=True)
class DeliveryJob:
    """One delivery attempt: recipients of one message to one domain (leased rows)."""

    rows: list[Row]

    @property
    def qid(self) -> str:
        return str(self.rows[0]["qid"])

    @property
    def domain(self) -> str:
        return str(self.rows[0]["domain"])

    def to_json(self) -> dict[str, Any]:
        return {"rows": [_plain(r) for r in self.rows]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryJob:
        return cls([_plain(dict(r)) for r in data["rows"]])


@dataclass(frozen=True)
class DeliveryDone:
    """An attempt ended and its outcome is recorded. ``reachable``: whether a server of
    the domain answered at all (False: none did, the scheduler then allows the domain
    one attempt at a time); None when the attempt was never made and says nothing
    about the destination (the spool file is gone, an internal error)."""

    qid: str
    domain: str
    reachable: bool | None

    def to_json(self) -> dict[str, Any]:
        return {"qid": self.qid, "domain": self.domain, "reachable": self.reachable}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeliveryDone:
        reachable = data["reachable"]
        if reachable is not None and not isinstance(reachable, bool):
            raise TypeError(f"reachable is {reachable!r}, not a bool or null")
        return cls(str(data["qid"]), str(data["domain"]), reachable)


class DocumentKind(enum.StrEnum):
    """What a document job makes for a message."""

    NOTICE = "notice"
    """The processing notice to the sender of certified mail."""
    FINISH = "finish"
    """Closing a message whose recipients all ended: its certificate (sending,
    reception, or content lost), the addendum a late bounce calls for, the report a
    late bounce passes on, or simply removing it from the queue."""
    REPORT = "report"
    """A delivery status notification to the sender of plain mail (RFC 3464)."""
    ADDENDUM = "addendum"
    """The addendum listing the opens and clicks since the last document."""
    CREDITS = "credits"
    """The notices to an organisation's admins about its credits (the balance fell
    below ``[credits] warn_below``, documents wait for credits); the job's ``qid`` is
    the organisation's code (docs/credits.md)."""
    ACCEPTANCE = "acceptance"
    """The certificates of the recipients' decisions on hosted content (docs/hosted.md)."""


@dataclass(frozen=True)
class DocumentJob:
    """Make the document ``kind`` for the message ``qid``. A job may run twice (its
    worker ended before answering): each kind reads the message's state first and
    does nothing when the work is done already."""

    kind: DocumentKind
    qid: str

    @property
    def key(self) -> str:
        """What tells this job apart from every other one in flight."""
        return self.qid if self.kind == DocumentKind.FINISH else f"{self.qid}:{self.kind}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "qid": self.qid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DocumentJob:
        return cls(DocumentKind(data["kind"]), str(data["qid"]))


@dataclass(frozen=True)
class DocumentDone:
    """A document job ended. ``changed``: messages whose state it changed, which may
    now be finished or need their next document (empty: nothing changed, so nothing
    is looked at again before the next scan)."""

    changed: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"changed": list(self.changed)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DocumentDone:
        return cls(tuple(str(q) for q in data["changed"]))


class JobLost(TemporaryError):
    """The process running a job ended before answering. What it did is in the store
    or not at all: the scheduler gives the job's leases back and looks at the message
    again."""


class Dispatcher(Protocol):
    """Runs the jobs of the queue manager, here or in other processes."""

    async def deliver(self, job: DeliveryJob) -> DeliveryDone:
        """Attempt the delivery and record its outcome; raises :class:`JobLost`."""
        ...

    async def document(self, job: DocumentJob) -> DocumentDone:
        """Make the document (or find it made already); raises :class:`JobLost`."""
        ...
