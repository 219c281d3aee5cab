"""The queue's state: the one database the SMTP side and the workers share.

The spool holds the bytes; this database holds who owns them and what happened (Postfix's
queue manager plays this role). :class:`Store` is the one object the stages use; it is put
together from one class per concern, each in its own module of :mod:`relay.queue`:

=============================  =============================================================
:mod:`relay.queue.db`          the connection, its thread, group commit (:class:`Database`)
:mod:`relay.queue.migrations`  the schema, as numbered transactional migrations
:mod:`relay.queue.states`      the states, kinds and row types, as enumerations
:mod:`relay.queue.records`     what callers hand in: :class:`NewMessage`, :class:`Outcome`
:mod:`relay.queue.messages`    queueing a message, reading it, the work it still needs
:mod:`relay.queue.leases`      leasing due recipients, recording attempts' outcomes
:mod:`relay.queue.reports`     DSNs to the sender of plain mail (RFC 3461)
:mod:`relay.queue.evidence_log`  the evidence log and its timestamped checkpoints
:mod:`relay.queue.tracking`    opens and clicks (the addendum)
:mod:`relay.queue.bounces`     late bounces (RFC 3464 DSNs to the VERP return path)
:mod:`relay.queue.operator`    ``certifica queue``: show, retry, hold, withdraw
:mod:`relay.queue.reception`   certified reception: owners, tokens, proofs of receipt
:mod:`relay.queue.users`       the users who may submit, their language and time zone
:mod:`relay.queue.orgs`        organisations, their users' roles, their domains
:mod:`relay.queue.app_passwords`  the users' app passwords for SMTP AUTH (one per device)
:mod:`relay.queue.credits`     organisations' balances and every movement of them
:mod:`relay.queue.credit_notices`  the notices owed to admins about credits (low, waiting)
:mod:`relay.queue.certificates`  finding documents again (the console, the API), by role
:mod:`relay.queue.tokens`      the JSON API's tokens (stored as SHA-256), whom each acts for
:mod:`relay.queue.sessions`    the web console's sessions, second factors (TOTP), resets
:mod:`relay.queue.webhooks`    organisations' webhooks, the deliveries owed, their attempts
:mod:`relay.queue.verifications`  the public verification page's record of each document
:mod:`relay.queue.holds`       legal holds (retention and erasure leave those messages alone)
:mod:`relay.queue.maintenance`  when each daily job (renewal, retention) last ran
:mod:`relay.queue.health`     what the admin listener reads: the queue by state, the write probe
:mod:`relay.queue.hosted`      hosted content: each recipient's link, handovers, decisions
:mod:`relay.queue.sms`         SMS: texts, each part's submit_sm, receipts, MO messages
:mod:`relay.queue.contacts`    SMS contacts, groups, consents, opt-outs, sender IDs
:mod:`relay.queue.errors`      :class:`StoreError` and :class:`StoreFullError`
=============================  =============================================================

Outside :class:`Store`, the operators' data-protection passes take a connection and run
their own transactions: :mod:`relay.queue.retention` (the retention periods),
:mod:`relay.queue.subjects` (everything held about an address) and
:mod:`relay.queue.erasure` (erasing it; docs/erasure.md).

No SQL is written anywhere else in the project (``tests/test_no_sql_outside_queue.py``).

Exceptions::

    StoreError             -- the database could not do what was asked
      StoreFullError       -- out of disk space (452 to an SMTP client)
"""

from __future__ import annotations

from relay.queue.app_passwords import AppPasswords
from relay.queue.bounces import LATE_ACTIONS, LateBounces
from relay.queue.certificates import Certificates
from relay.queue.contacts import Contacts
from relay.queue.credit_notices import CreditNotices
from relay.queue.credits import Credits
from relay.queue.db import GROUP_MAX, Database
from relay.queue.errors import StoreError, StoreFullError
from relay.queue.evidence_log import EvidenceLog
from relay.queue.health import QueueHealth
from relay.queue.hosted import Hosted, HostedDecisions
from relay.queue.leases import WITHDRAWN_TOO_LATE, Leases
from relay.queue.maintenance import MaintenanceRuns
from relay.queue.messages import Messages
from relay.queue.migrations import MIGRATIONS, migrate
from relay.queue.operator import OperatorActions
from relay.queue.orgs import Organisations
from relay.queue.reception import Reception
from relay.queue.records import NewMessage, Outcome
from relay.queue.reports import Reports
from relay.queue.sessions import WebSessions
from relay.queue.sms import SmsQueue
from relay.queue.states import FINAL
from relay.queue.tokens import Tokens
from relay.queue.tracking import Tracking
from relay.queue.users import Users
from relay.queue.verifications import Verifications
from relay.queue.webhooks import Webhooks

__all__ = [
    "FINAL",
    "GROUP_MAX",
    "LATE_ACTIONS",
    "MIGRATIONS",
    "WITHDRAWN_TOO_LATE",
    "Database",
    "NewMessage",
    "Outcome",
    "Store",
    "StoreError",
    "StoreFullError",
    "migrate",
]


class Store(
    CreditNotices,
    Reports,
    LateBounces,
    OperatorActions,
    Messages,
    Leases,
    EvidenceLog,
    Tracking,
    Reception,
    Users,
    Organisations,
    AppPasswords,
    Credits,
    Certificates,
    Tokens,
    WebSessions,
    Webhooks,
    Verifications,
    MaintenanceRuns,
    QueueHealth,
    Hosted,
    HostedDecisions,
    SmsQueue,
    Contacts,
    Database,
):
    """The queue's database: every operation the stages need, each one transaction.

    Composed of mixins: one class per concern (see the module docstring), each a subclass
    of :class:`~relay.queue.db.Database`, which owns the one connection and its thread;
    ``Store(path, lifetime)`` opens it and applies the migrations. The classes share no
    state but the connection; a concern that needs another's writes in the same
    transaction subclasses it (:class:`~relay.queue.bounces.LateBounces` queues the DSN it
    records through :class:`~relay.queue.messages.Messages`).

    Correctness rests on transactions and on conditional updates, not on SQLite being one
    writer nor on ``rowid`` order: a recipient is claimed by ``UPDATE ... SET lease_until,
    lease_owner WHERE id IN (candidates) AND <due, lease null or expired> RETURNING id``
    (:mod:`relay.queue.leases`), so of two claimers only one gets it; an outcome is
    recorded once (a repeat finds the state final) and, under a lease its owner lost,
    only if it delivered; a report or a certificate is recorded only if it was not yet.

    A PostgreSQL backend (a later issue, psycopg 3, several nodes sharing one queue)
    would provide the same methods and must give:

    - claiming with ``SELECT ... FOR UPDATE SKIP LOCKED`` inside the claiming
      ``UPDATE`` (or ``UPDATE ... RETURNING``), so two nodes never lease one recipient;
    - leases measured on the database's clock (``now()``) or on clocks kept in step, as
      expiry compares times written by different nodes;
    - the evidence chain's head locked for each append (``SELECT ... FOR UPDATE`` of the
      last entry, or an advisory lock), so entries form one chain whoever writes them;
    - the message row locked (``SELECT ... FOR UPDATE``) when an open or click is
      recorded and when events are marked reported: ``tracking_reported`` is a high-water
      mark over ``tracking_events.id``, and ids from a sequence can commit out of order;
    - ``INSERT ... ON CONFLICT DO NOTHING`` where SQLite says ``INSERT OR IGNORE``
      (``late_reports``, checkpoints) and ``ON CONFLICT DO UPDATE`` for ``OR REPLACE``;
    - the group commit of :class:`~relay.queue.db.Database` becomes a pool of
      connections, each operation still exactly one transaction; and
    - the numbered migrations of :mod:`relay.queue.migrations`, in its SQL dialect.
    """
