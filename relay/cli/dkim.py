"""``certifica dkim``: the DKIM keys outgoing mail is signed with (RFC 6376)."""

from __future__ import annotations

import argparse
from typing import Any

from relay.cli.common import EXIT_OK, UserError, config_of, state_dir
from relay.config import Config


def _keyring(cfg: Config, *, writes: bool = False) -> Any:
    from relay.delivery.dkim_keys import DkimKeyring

    return DkimKeyring(state_dir(cfg, writes=writes) / "keys")


def cmd_dkim_add(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    try:
        key = _keyring(cfg, writes=True).add(args.domain, args.selector, args.algorithm)
    except ValueError as err:
        raise UserError(str(err)) from None
    print(f"DKIM key made for {key.domain} (selector {key.selector}, {key.algorithm}).")
    print(f"Publish this TXT record in the DNS of {key.domain}:")
    print()
    print(f'{key.dns_name}. IN TXT "{_txt_chunks(key.dns_txt)}"')
    print()
    print(
        f"Mail From {key.domain} that leaves this gateway is signed with it from now on, "
        f"so DKIM aligns with From (DMARC). Until the record is published, receivers "
        f"see a failing signature: publish first, then send."
    )
    return EXIT_OK


def _txt_chunks(text: str) -> str:
    # A TXT string holds at most 255 octets (RFC 1035 §3.3.14): split, zone-file style.
    return '" "'.join(text[i : i + 255] for i in range(0, len(text), 255))


def cmd_dkim_list(args: argparse.Namespace) -> int:
    cfg = config_of(args)
    keys = _keyring(cfg).list()
    if not keys:
        print("no DKIM keys yet (the gateway makes its own on first start)")
    for key in keys:
        own = " (the gateway's own domain)" if key.domain == cfg.gateway.domain else ""
        print(f"{key.domain}\t{key.selector}\t{key.algorithm}{own}")
        print(f'\t{key.dns_name}. IN TXT "{_txt_chunks(key.dns_txt)}"')
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica dkim`` to the subcommands."""
    dkim = sub.add_parser(
        "dkim",
        help="DKIM keys for outgoing mail",
        description="Manage the DKIM keys the gateway signs outgoing mail with.",
    )
    dsub = dkim.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    p = dsub.add_parser(
        "add",
        help="make a key for a sender domain and print its DNS record",
        description="Make a DKIM key for DOMAIN (a domain whose users send through this "
        "gateway) and print the TXT record its owner publishes. Mail From that domain is "
        "then signed with it, so DKIM aligns with From.",
    )
    p.add_argument("domain")
    p.add_argument("--selector", help="DKIM selector (default: certificaYYYYMM)")
    p.add_argument(
        "--algorithm", choices=["rsa", "ed25519"], default="rsa", help="key type (default: rsa)"
    )
    p.set_defaults(func=cmd_dkim_add)
    p = dsub.add_parser(
        "list",
        help="list the keys and their DNS records",
        description="List every DKIM key with the TXT record to publish for it.",
    )
    p.set_defaults(func=cmd_dkim_list)
