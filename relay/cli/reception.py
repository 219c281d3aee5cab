"""``certifica reception``: certified reception for mailbox owners (enable, disable, list)."""

from __future__ import annotations

import argparse
import time

from relay.cli.common import EXIT_OK, UserError, config_of, open_store
from relay.config import Config


def _forwarding_address(cfg: Config, token: str) -> str:
    from relay.addresses import reception_address

    return reception_address(cfg.reception.prefix, token, cfg.gateway.domain)


def cmd_reception_enable(args: argparse.Namespace) -> int:
    import base64
    import secrets

    from certifier.message import parse_single_mailbox
    from relay.smtpd.users import normalise_address

    address = parse_single_mailbox(args.email)
    if address is None or address != args.email.strip():
        raise UserError(f"{args.email!r} is not a single e-mail address")
    owner = normalise_address(address)
    cfg = config_of(args)
    # 130 bits, lower-case letters and digits only: forwarders may lower-case addresses.
    token = base64.b32encode(secrets.token_bytes(17)).decode().rstrip("=").lower()
    with open_store(cfg, writes=True) as store:
        token, ack = store.reception_enable(owner, token, args.ack_sender, time.time())
    forward = _forwarding_address(cfg, token)
    print(f"Certified reception is on for {owner}" + (
        " (ack-sender: yes, the original sender also gets a proof of receipt; "
        "--no-ack-sender turns it off)."
        if ack
        else " (ack-sender: no, the original sender gets no proof of receipt; "
        "--ack-sender turns it on)."
    ))  # fmt: skip
    print(f"Forward (a copy of) the mail {owner} receives to:\n\n    {forward}\n")
    print(_RECIPES.format(owner=owner, forward=forward, local=owner.split("@")[0]))
    return EXIT_OK


_RECIPES = """\
Ways to forward, keeping a copy in the mailbox:

  Sieve (Dovecot, Fastmail, ...), at the top of the owner's script:
      require ["copy"];
      redirect :copy "{forward}";

  Postfix, on the server that delivers {owner}: in main.cf
      recipient_bcc_maps = hash:/etc/postfix/recipient_bcc
  and in /etc/postfix/recipient_bcc (then: postmap /etc/postfix/recipient_bcc)
      {owner}    {forward}

  Gmail: Settings > See all settings > Forwarding and POP/IMAP > Add a forwarding
  address: {forward}; Gmail mails a confirmation code to that address: it arrives
  as a reception certificate, which holds the code. Choose "keep Gmail's copy in the
  Inbox".

  Microsoft 365: Outlook on the web > Settings > Mail > Forwarding > Enable forwarding,
  forward to {forward}, tick "Keep a copy of forwarded messages". (An administrator
  may have to allow automatic external forwarding in the outbound spam policy.)

The mailbox must forward without rewriting the message, so that the original DKIM
signatures still verify when they arrive here."""


def cmd_reception_disable(args: argparse.Namespace) -> int:
    from relay.smtpd.users import normalise_address

    owner = normalise_address(args.email)
    with open_store(config_of(args), writes=True) as store:
        changed = store.reception_disable(owner)
    if not changed:
        raise UserError(f"certified reception is not on for {owner}")
    print(f"certified reception off for {owner}; mail to its forwarding address is refused")
    return EXIT_OK


def cmd_reception_list(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    with open_store(cfg) as store:
        rows = store.reception_list()
    if not rows:
        print("no mailbox has certified reception")
    for row in rows:
        state = "on" if row["enabled"] else "off"
        ack = "ack-sender: yes" if row["ack_sender"] else "ack-sender: no"
        print(f"{row['owner']}\t{state}\t{_forwarding_address(cfg, row['token'])}\t{ack}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica reception`` to the subcommands."""
    reception = sub.add_parser(
        "reception",
        help="certified reception for mailbox owners",
        description="Certified reception: a mailbox forwards what it receives to the "
        "gateway, which certifies each arrival and mails the owner the certificate.",
    )
    rsub = reception.add_subparsers(dest="reception_command", metavar="ACTION", required=True)
    p = rsub.add_parser(
        "enable",
        help="turn it on for a mailbox and print the forwarding address",
        description="Turn certified reception on for OWNER (a mailbox address) and print "
        "the address to forward to, with recipes for Sieve, Postfix, Gmail and Microsoft "
        "365. Enabling again keeps the same address.",
    )
    p.add_argument("email", metavar="OWNER")
    p.add_argument(
        "--ack-sender",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--ack-sender: also mail the original sender a proof of receipt (never to "
        "bounces, lists, automatic or unauthenticated mail; at most one per sender per "
        "interval); --no-ack-sender: do not. Without either, enabling again keeps the "
        "current choice (off for a new mailbox).",
    )
    p.set_defaults(func=cmd_reception_enable)
    p = rsub.add_parser(
        "disable",
        help="turn it off (the forwarding address is then refused)",
        description="Turn certified reception off for OWNER; mail to its forwarding "
        "address gets 550 5.1.1.",
    )
    p.add_argument("email", metavar="OWNER")
    p.set_defaults(func=cmd_reception_disable)
    p = rsub.add_parser(
        "list",
        help="list the mailboxes and their forwarding addresses",
        description="List every mailbox with certified reception, on or off.",
    )
    p.set_defaults(func=cmd_reception_list)
