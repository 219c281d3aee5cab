"""``certifica token``: the JSON API's tokens of a user (add, list, remove; docs/api.md).

``token add ADDR --name erp`` prints the new token on its last line, once: the gateway
keeps only its SHA-256 (:mod:`relay.queue.tokens`), so a lost token is removed and a new
one made. A token acts as its user, with its user's role, until it is removed, its
user's credentials change (the user is disabled) or the user is removed.
"""

from __future__ import annotations

import argparse
import time

from relay.cli.common import EXIT_OK, UserError, config_of, open_store


def _address(text: str) -> str:
    from relay.smtpd.users import normalise_address

    return normalise_address(text)


def _name(text: str) -> str:
    from relay.queue.tokens import TOKEN_NAME

    if not TOKEN_NAME.fullmatch(text):
        raise UserError(
            f"{text!r} is not a token name: use up to 64 letters, digits, '.', '_' and '-', "
            "starting with a letter or a digit (e.g. --name erp)"
        )
    return text


def _when(moment: float | None) -> str:
    if moment is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(moment))


def cmd_token_add(args: argparse.Namespace) -> int:
    from relay.queue.tokens import new_token

    address, name = _address(args.email), _name(args.name)
    token = new_token()
    with open_store(config_of(args), writes=True) as store:
        if not store.user_exists(address):
            raise UserError(f"there is no user {address}; to add it: certifica users add {address}")
        if not store.add_token(address, name, token, time.time()):
            raise UserError(
                f"user {address} has a token named {name} already; to replace it: "
                f"certifica token remove {address} --name {name}, then add it again"
            )
    print(f"token {name} added for {address}; it is shown only now, keep it secret:")
    print(token)
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    address = _address(args.email)
    with open_store(config_of(args)) as store:
        if not store.user_exists(address):
            raise UserError(f"there is no user {address}")
        tokens = store.tokens_of(address)
    for token in tokens:
        print(f"{token.name}\tcreated {_when(token.created)}\tlast used {_when(token.last_used)}")
    return EXIT_OK


def cmd_token_remove(args: argparse.Namespace) -> int:
    address, name = _address(args.email), _name(args.name)
    with open_store(config_of(args), writes=True) as store:
        removed = store.remove_token(address, name)
    if not removed:
        raise UserError(f"user {address} has no token named {name} (see certifica token list)")
    print(f"token {name} of {address} removed")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica token`` to the subcommands."""
    token = sub.add_parser(
        "token",
        help="manage a user's JSON API tokens",
        description="Manage the tokens with which a user's programs call the JSON API "
        "(/api/v1/, docs/api.md). A token acts as its user, with its user's role.",
    )
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    p = tsub.add_parser(
        "add",
        help="make a new token for a user (printed once, on the last line)",
        description="Make a new API token for a user and print it on the last line. It "
        "is shown only this once: the gateway keeps only its SHA-256.",
    )
    p.add_argument("email", help="the user the token acts for")
    p.add_argument("--name", required=True, help="a name for the token, e.g. erp")
    p.set_defaults(func=cmd_token_add)
    p = tsub.add_parser(
        "list",
        help="list a user's tokens (names and dates, never the tokens)",
        description="List a user's tokens: name, when made, when last used (to the "
        "minute). The tokens themselves are not kept, so never shown.",
    )
    p.add_argument("email", metavar="ADDR", help="the user the token acts for")
    p.set_defaults(func=cmd_token_list)
    p = tsub.add_parser(
        "remove",
        help="remove a user's token (calls with it are refused at once)",
        description="Remove a user's token: calls with it are answered 401 from now on.",
    )
    p.add_argument("email", metavar="ADDR", help="the user the token acts for")
    p.add_argument("--name", required=True, help="the token's name (see token list)")
    p.set_defaults(func=cmd_token_remove)
