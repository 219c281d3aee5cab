"""Organisations' webhooks (docs/webhooks.md): which evidence entries are events
(:mod:`~relay.webhooks.events`), how a POST is signed (:mod:`~relay.webhooks.signing`),
which URLs may be reached (:mod:`~relay.webhooks.guard`: no server-side request forgery)
and how it is sent (:mod:`~relay.webhooks.sender`). The process that runs them is
:mod:`relay.process.webhooks`; the tables are :mod:`relay.queue.webhooks`.
"""
