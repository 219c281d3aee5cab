"""``certifica webhook``: an organisation's webhooks (add, list, remove) and the log of
what was sent to them (docs/webhooks.md)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from relay.cli.common import EXIT_OK, UserError, config_of, open_store, organisation_of
from relay.config import Config
from relay.queue.webhooks import DeliveryState, WebhookEvent

EVENT_NAMES = ", ".join(str(e) for e in WebhookEvent)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _events(text: str) -> tuple[WebhookEvent, ...]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"--events names no event; give some of: {EVENT_NAMES}")
    unknown = [n for n in names if n not in {str(e) for e in WebhookEvent}]
    if unknown:
        raise UserError(f"--events: {', '.join(unknown)} is no event; the events are {EVENT_NAMES}")
    return tuple(e for e in WebhookEvent if str(e) in names)  # in the usual order, once each


def check_url(cfg: Config, url: str) -> None:
    """Refuse, with one sentence, a URL the gateway would not POST to (relay/webhooks/guard.py)."""
    from relay.webhooks.guard import resolved_problem, url_problem

    production = cfg.gateway.mode == "production"
    problem = url_problem(url, production=production)
    if problem is None:
        problem = resolved_problem(url, production=production)
    if problem is not None:
        rule = "production mode refuses it" if production else "refused"
        raise UserError(f"{url[:200]!r}: {problem}; {rule} (docs/webhooks.md)")


def cmd_webhook_add(args: argparse.Namespace) -> int:
    from relay.webhooks.signing import new_secret

    cfg = config_of(args)
    events = _events(args.events)
    with open_store(cfg) as store:
        organisation_of(store, args.org)  # an unknown organisation first, before any lookup
        org = args.org
    check_url(cfg, args.url)
    secret = new_secret()
    with open_store(cfg, writes=True) as store:
        webhook_id = store.add_webhook(org, args.url, events, secret)
    print(f"webhook {webhook_id} of {org}: {args.url} ({', '.join(events)})")
    print("Its secret signs every POST (Certifica-Signature); it is shown only now, keep it:")
    print(secret)
    return EXIT_OK


def cmd_webhook_list(args: argparse.Namespace) -> int:
    with open_store(config_of(args)) as store:
        organisation_of(store, args.org)
        org = args.org
        hooks = store.webhooks_now(org)
    if not hooks:
        print(f"{org} has no webhook")
    for hook in hooks:
        print(f"{hook.id}\t{hook.url}\t{','.join(hook.events)}\tadded {_when(hook.created)}")
    return EXIT_OK


def cmd_webhook_remove(args: argparse.Namespace) -> int:
    with open_store(config_of(args), writes=True) as store:
        organisation_of(store, args.org)
        org = args.org
        removed = store.remove_webhook(org, args.id, time.time())
    if not removed:
        raise UserError(f"{org} has no webhook {args.id} (certifica webhook list {org})")
    print(f"webhook {args.id} of {org} removed; what it was still owed is given up")
    return EXIT_OK


def cmd_webhook_log(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise UserError("--limit must be at least 1")
    with open_store(config_of(args)) as store:
        organisation_of(store, args.org)
        org = args.org
        deliveries = store.webhook_log_now(org, args.limit)
    if not deliveries:
        print(f"nothing was sent to the webhooks of {org}")
    for d in deliveries:
        if d.state == DeliveryState.DELIVERED:
            state = f"delivered {_when(d.done_at or d.created)}"
        elif d.state == DeliveryState.FAILED:
            why = " (webhook removed)" if d.removed else ""
            state = f"given up {_when(d.done_at or d.created)}{why}"
        else:
            state = f"next try {_when(d.next_attempt)}"
        about = f" queue_id={d.qid}" if d.qid else ""
        print(
            f"delivery {d.id}: event={d.event}{about} webhook={d.webhook_id} url=<{d.url}>: {state}"
        )
        for a in d.attempts:
            answer = f"HTTP {a.status}" if a.status is not None else (a.error or "no answer")
            print(f"    {_when(a.time)}  {answer}  ({a.seconds:.2f} s)")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica webhook`` to the subcommands."""
    webhook = sub.add_parser(
        "webhook",
        help="an organisation's webhooks: signed POSTs of its events",
        description="Webhooks: an organisation's events (delivered, failed, opened, "
        "certificate) POSTed as signed JSON to its URLs, retried for a day "
        "(docs/webhooks.md).",
    )
    wsub = webhook.add_subparsers(dest="webhook_command", metavar="ACTION", required=True)
    p = wsub.add_parser(
        "add",
        help="add a URL and print its secret (once)",
        description="Add a webhook: the events of ORG's messages are POSTed to URL, signed "
        "with a secret printed on the last line, only now. URL: https:// (http:// also in "
        "development mode), no user name or password, at most 2048 characters; a host that "
        "is or resolves to a loopback, private, link-local or otherwise non-public address "
        "is refused (development mode allows loopback).",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code")
    p.add_argument("url", metavar="URL", help="where the events are POSTed (https)")
    p.add_argument(
        "--events",
        default=",".join(str(e) for e in WebhookEvent),
        help=f"the events to send, separated by commas: {EVENT_NAMES} (default: all)",
    )
    p.set_defaults(func=cmd_webhook_add)
    p = wsub.add_parser(
        "list",
        help="list an organisation's webhooks",
        description="List ORG's webhooks: id, URL, events, when added.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.set_defaults(func=cmd_webhook_list)
    p = wsub.add_parser(
        "remove",
        help="remove a webhook",
        description="Remove ORG's webhook ID: nothing more is sent to it, and what it was "
        "still owed is given up. Its log stays.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("id", metavar="ID", type=int, help="the webhook's number (webhook list)")
    p.set_defaults(func=cmd_webhook_remove)
    p = wsub.add_parser(
        "log",
        help="what was sent to an organisation's webhooks, attempt by attempt",
        description="The newest deliveries to ORG's webhooks, newest first: the event, the "
        "message's queue id, the URL, and whether it was delivered, when it is tried next "
        "or when it was given up; under each, every attempt with its time and the HTTP "
        "status or the error.",
    )
    p.add_argument("org", metavar="ORG", help="the organisation's code (ACME)")
    p.add_argument("--limit", type=int, default=20, help="how many deliveries (default 20)")
    p.set_defaults(func=cmd_webhook_log)
