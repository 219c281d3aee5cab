"""Who may do what: the permission matrix of the organisations' roles (docs/accounts.md).

Every place that lets a user act (SMTP submission, the web console, the JSON API, the
``certifica`` command on a user's behalf) asks :func:`allowed` rather than comparing
role names, so the matrix below is the one place a reader checks, and the one table
``tests/test_permissions.py`` holds the code to, cell by cell.

==========================  =====  ======  =======
action                      admin  sender  auditor
==========================  =====  ======  =======
send certified mail          yes    yes     no
see its own certificates     yes    yes     yes
see the organisation's       yes    no      yes
see the balance              yes    yes     yes
see the statement            yes    no      yes
manage users                 yes    no      no
bind domains                 yes    no      no
==========================  =====  ======  =======

Webhooks are registered by the operator (``certifica webhook add``, docs/webhooks.md), not
by a role. A user's own credentials (password, second factor, app passwords, API tokens) are its
own to manage whatever its role. A disabled user, or a user of a disabled organisation,
may do nothing at all.
"""

from __future__ import annotations

from enum import StrEnum

from relay.queue.states import Role

__all__ = ["PERMISSIONS", "Action", "Role", "allowed"]


class Action(StrEnum):
    """What a user may be allowed to do (a row of the matrix above)."""

    SEND = "send"
    SEE_OWN_CERTIFICATES = "see-own-certificates"
    SEE_ORG_CERTIFICATES = "see-org-certificates"
    SEE_BALANCE = "see-balance"
    SEE_STATEMENT = "see-statement"
    MANAGE_USERS = "manage-users"
    BIND_DOMAINS = "bind-domains"


PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.ADMIN: frozenset(Action),
    Role.SENDER: frozenset({Action.SEND, Action.SEE_OWN_CERTIFICATES, Action.SEE_BALANCE}),
    Role.AUDITOR: frozenset(
        {
            Action.SEE_OWN_CERTIFICATES,
            Action.SEE_ORG_CERTIFICATES,
            Action.SEE_BALANCE,
            Action.SEE_STATEMENT,
        }
    ),
}
"""Each role's actions: the matrix of the module docstring."""


def allowed(role: str, action: Action) -> bool:
    """Whether a user of ``role`` may do ``action``; an unknown role may do nothing."""
    try:
        return action in PERMISSIONS[Role(role)]
    except ValueError:
        return False
