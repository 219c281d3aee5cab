"""``certifica users``: the users who may submit mail (add, set, tracking, list, remove,
app-password).

Each user belongs to one organisation (``--org``, default ``default``) with one role
(``--role admin|sender|auditor``, default ``sender``; what each may do is
:mod:`relay.roles`), and may be disabled. A user with a second factor (set up in the
web console) authenticates SMTP with app passwords only (``users app-password``);
``users set ADDR --no-totp`` is the operator's reset of a lost second factor
(docs/accounts.md).

A user may have a language and a time zone of its own (``--language``, ``--timezone``):
the mails the gateway writes to it (notice, certificate mail, reports) and its
certificates are in that language, with times in that zone (README, "Languages and
readers"); without them, ``[gateway] language`` and ``timezone`` apply."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import TYPE_CHECKING

from certifier.i18n import LANGUAGES, check_language, check_timezone
from relay.cli.common import EXIT_OK, UserError, config_of, open_store, operator_name
from relay.cli.org import sms_sender_option, taken_sentence
from relay.queue.states import Role

if TYPE_CHECKING:
    from relay.queue.store import Store


def _reading(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``--language`` and ``--timezone`` checked before anything is touched: None when not
    given, "" to go back to the ``[gateway]`` default, else a language of
    :data:`certifier.i18n.LANGUAGES` and an IANA time zone name; a wrong one is refused
    with a sentence naming what is allowed."""
    language, timezone = args.language, args.timezone
    try:
        if language:
            language = check_language(language.strip().lower())
        if timezone:
            timezone = check_timezone(timezone.strip())
    except ValueError as err:
        raise UserError(str(err)) from None
    return language, timezone


def _reading_changes(language: str | None, timezone: str | None) -> list[str]:
    """What ``users add``/``set`` says it set, one phrase each."""
    said = []
    if language is not None:
        said.append(f"language {language}" if language else "language: the [gateway] default")
    if timezone is not None:
        said.append(f"time zone {timezone}" if timezone else "time zone: the [gateway] default")
    return said


def _need_terminal(args: argparse.Namespace, address: str) -> None:
    """Without ``--password-stdin`` the password is asked on the terminal: say what to do
    when there is none (a script, ssh without -t), before anything is touched."""
    if args.password_stdin or (sys.stdin is not None and sys.stdin.isatty()):
        return
    raise UserError(
        "there is no terminal to ask for the password on: give it on standard input "
        f"with --password-stdin, e.g. certifica users {args.users_command} {address} "
        "--password-stdin < password-file"
    )


def _read_password(args: argparse.Namespace, address: str) -> str:
    """The new password: the first line of stdin with ``--password-stdin``, else asked
    twice on the terminal; without a terminal, a sentence that says what to do."""
    if args.password_stdin:
        line = sys.stdin.readline() if sys.stdin is not None else ""
        if not line:
            raise UserError("no password on standard input (--password-stdin reads its first line)")
        password = line.rstrip("\r\n")
    else:
        _need_terminal(args, address)
        try:
            password = getpass.getpass(f"Password for {address}: ")
            again = getpass.getpass("Again: ")
        except EOFError:
            raise UserError("no password given") from None
        if password != again:
            raise UserError("the two passwords differ")
    if len(password) < 8:
        raise UserError("the password must have at least 8 characters")
    return password


def cmd_users_add(args: argparse.Namespace) -> int:
    from certifier.message import parse_single_mailbox
    from relay.addresses import GatewayAddresses
    from relay.queue.orgs import DEFAULT_ORG
    from relay.smtpd.users import hash_password, normalise_address

    parsed = parse_single_mailbox(args.email)
    if parsed is None or parsed != args.email.strip():
        raise UserError(f"{args.email!r} is not a single e-mail address")
    address = normalise_address(parsed)
    language, timezone = _reading(args)
    org = (args.org or DEFAULT_ORG).strip()
    role = args.role or Role.SENDER
    cfg = config_of(args)
    if GatewayAddresses.from_config(cfg).is_reserved(address):
        # a user there would send, DKIM-signed by the gateway, as the gateway itself
        raise UserError(
            f"{address} is one of the gateway's own addresses (certification, postmaster, "
            "abuse, bounce or reception): it cannot be a user"
        )
    _need_terminal(args, address)
    with open_store(cfg, writes=True) as store:
        if store.user_exists(address):
            raise UserError(
                f"user {address} exists already; to change it: certifica users set "
                f"{address} [--password-stdin]"
            )
        _need_organisation(store, org)
        hashed = hash_password(_read_password(args, address))
        if not store.add_user(address, hashed, time.time(), org=org, role=str(role)):
            raise UserError(f"user {address} exists already")  # added by someone else meanwhile
        if language or timezone:
            store.set_user(address, language=language or None, timezone=timezone or None)
    print(
        f"user {address} added to organisation {org} as {role}"
        + "".join(f", {c}" for c in _reading_changes(language or None, timezone or None))
    )
    return EXIT_OK


def _need_organisation(store: Store, org: str) -> None:
    """Refuse, in one sentence, an organisation code that does not exist."""
    if store.organisation_now(org) is None:
        raise UserError(
            f"there is no organisation {org}; add it first: certifica org add {org} --name NAME"
        )


def cmd_users_set(args: argparse.Namespace) -> int:
    """Change an existing user: its password (asked, or ``--password-stdin``) unless only
    other options are given, ``--tracking on|off``, ``--language`` and ``--timezone``
    ("" for either: back to the ``[gateway]`` default)."""
    from relay.smtpd.users import hash_password, normalise_address

    address = normalise_address(args.email)
    language, timezone = _reading(args)
    org = None if args.org is None else args.org.strip()
    role = None if args.role is None else Role(args.role)
    disabled = args.disabled
    sms_sender = None if args.sms_sender is None else sms_sender_option(args.sms_sender)
    new_password = args.password_stdin or (
        args.tracking is None
        and language is None
        and timezone is None
        and org is None
        and role is None
        and disabled is None
        and not args.no_totp
        and args.mode is None
        and args.sms_sender is None
    )
    if new_password:
        _need_terminal(args, address)
    with open_store(config_of(args), writes=True) as store:
        if not store.user_exists(address):
            raise UserError(
                f"there is no user {address}; to add it: certifica users add {address} "
                "[--password-stdin]"
            )
        if org is not None:
            _need_organisation(store, org)
        if sms_sender:  # docs/sms.md: one organisation per sender ID, unless --force
            taken = store.sms_identity_taken(org or store.user_org_now(address), sender=sms_sender)
            if taken is not None and not args.force:
                raise UserError(taken_sentence(taken))
        hashed = hash_password(_read_password(args, address)) if new_password else None
        tracking = None if args.tracking is None else args.tracking == "on"
        now = time.time()
        if not store.set_user(
            address, password_hash=hashed, tracking=tracking, language=language, timezone=timezone
        ) or not store.set_membership(address, org=org, role=role, disabled=disabled, now=now):
            raise UserError(f"there is no user {address}")
        if args.no_totp:
            store.clear_totp(address, now)
        if args.mode is not None:  # docs/hosted.md
            store.set_user_hosted_mode(address, None if args.mode == "plain" else args.mode)
        if sms_sender is not None:  # docs/sms.md
            store.set_user_sms_sender(
                address,
                sms_sender,
                actor=f"operator:{operator_name()}",
                now=now,
                forced=bool(args.force),
            )
    changed = (
        (["password changed"] if hashed is not None else [])
        + ([f"open and click tracking {args.tracking}"] if tracking is not None else [])
        + _reading_changes(language, timezone)
        + ([f"organisation {org}"] if org is not None else [])
        + ([f"role {role}"] if role is not None else [])
        + ([("disabled" if disabled else "enabled")] if disabled is not None else [])
        + (
            ["second factor removed (the account password sends mail again)"]
            if args.no_totp
            else []
        )
        + ([f"mode {args.mode}"] if args.mode is not None else [])
        + (
            ["SMS sender ID " + (sms_sender or "- (its organisation's)")]
            if sms_sender is not None
            else []
        )
    )
    print(f"user {address}: {', '.join(changed)}")
    return EXIT_OK


def cmd_users_tracking(args: argparse.Namespace) -> int:
    from relay.smtpd.users import normalise_address

    address = normalise_address(args.email)
    with open_store(config_of(args), writes=True) as store:
        changed = store.set_user(address, tracking=args.state == "on")
    if not changed:
        raise UserError(f"there is no user {address}")
    print(f"open and click tracking {args.state} for mail certified by {address}")
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    """One line per user: address, organisation, role, whether disabled, whether it has a
    second factor (TOTP), when added, language and time zone (the ``[gateway]`` ones,
    said so, for a user without its own)."""
    cfg = config_of(args)
    with open_store(cfg) as store:
        rows = store.list_users()
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created"]))
        language = row.get("language") or f"{cfg.gateway.language} (default)"
        timezone = row.get("timezone") or f"{cfg.gateway.timezone} (default)"
        print(
            f"{row['address']}\torg {row['org']}\trole {row['role']}"
            f"\t{'disabled' if row['disabled'] else 'enabled'}"
            f"\tTOTP {'yes' if row['totp'] else 'no'}"
            f"\tadded {created} UTC\tlanguage {language}\ttime zone {timezone}"
        )
    return EXIT_OK


def cmd_users_remove(args: argparse.Namespace) -> int:
    from relay.smtpd.users import normalise_address

    address = normalise_address(args.email)
    with open_store(config_of(args), writes=True) as store:
        removed = store.remove_user(address)
    if not removed:
        raise UserError(f"there is no user {address}")
    print(f"user {address} removed")
    return EXIT_OK


def _existing_user(store: Store, email: str) -> str:
    from relay.smtpd.users import normalise_address

    address = normalise_address(email)
    if not store.user_exists(address):
        raise UserError(f"there is no user {address}")
    return address


def _device_name(text: str) -> str:
    name = text.strip()
    if not name or len(name) > 64 or any(not c.isprintable() for c in name):
        raise UserError("--name must be 1 to 64 printable characters, e.g. --name phone")
    return name


def cmd_app_password_add(args: argparse.Namespace) -> int:
    """Make an app password for one device; it is printed once, on the last line."""
    name = _device_name(args.name)
    with open_store(config_of(args), writes=True) as store:
        address = _existing_user(store, args.email)
        secret = store.add_app_password(address, name, time.time())
    if secret is None:
        raise UserError(
            f"user {address} has an app password named {name!r} already; remove it first "
            f"or choose another name"
        )
    print(
        f"App password {name!r} for {address}: give it to that one device as the SMTP "
        "password; it is shown only now, and works until removed "
        f"(certifica users app-password remove {address} --name {name!r})."
    )
    print(secret)
    return EXIT_OK


def cmd_app_password_list(args: argparse.Namespace) -> int:
    """One line per app password of the user: name, when made, when last used."""
    with open_store(config_of(args)) as store:
        address = _existing_user(store, args.email)
        found = store.app_passwords_now(address)

    def when(t: float | None) -> str:
        return "never" if t is None else time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))

    for entry in found:
        print(f"{entry.name}\tadded {when(entry.created)}\tlast used {when(entry.last_used)}")
    return EXIT_OK


def cmd_app_password_remove(args: argparse.Namespace) -> int:
    name = _device_name(args.name)
    with open_store(config_of(args), writes=True) as store:
        address = _existing_user(store, args.email)
        removed = store.remove_app_password(address, name)
    if not removed:
        raise UserError(f"user {address} has no app password named {name!r}")
    print(f"app password {name!r} of {address} removed: that device can no longer send")
    return EXIT_OK


def _register_app_passwords(usub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    apps = usub.add_parser(
        "app-password",
        help="manage a user's app passwords (SMTP AUTH for each device)",
        description="App passwords: one random password per device (a phone, a mail "
        "client) for SMTP AUTH. A user with a second factor (TOTP) authenticates SMTP "
        "only with these; others may use either. The password is printed once, on the "
        "last line of 'add'; only its hash is kept.",
    )
    asub = apps.add_subparsers(dest="app_password_command", metavar="ACTION", required=True)
    for name, func, short in (
        ("add", cmd_app_password_add, "make an app password (printed on the last line)"),
        ("list", cmd_app_password_list, "list a user's app passwords (never the passwords)"),
        ("remove", cmd_app_password_remove, "remove an app password: that device stops sending"),
    ):
        p = asub.add_parser(name, help=short, description=short[0].upper() + short[1:] + ".")
        p.add_argument("email")
        if name != "list":
            p.add_argument("--name", required=True, help="the device's name, e.g. phone")
        p.set_defaults(func=func)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica users`` to the subcommands."""
    users = sub.add_parser(
        "users",
        help="manage the users who may send",
        description="Manage submission users (one e-mail address each).",
    )
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    for name, func, short, long in (
        (
            "add",
            cmd_users_add,
            "add a user (refused if it exists: see set)",
            "Add a user who may send. An existing user is refused: change it with "
            "'certifica users set'.",
        ),
        (
            "set",
            cmd_users_set,
            "change an existing user (password, tracking, language, time zone)",
            "Change an existing user: its password (asked on the terminal, or read with "
            "--password-stdin), with --tracking its open and click tracking, with "
            "--language and --timezone the language and time zone of its mails and "
            "certificates. Given only those options, the password is left as it is. The "
            "one command that changes a user.",
        ),
    ):
        p = usub.add_parser(name, help=short, description=long)
        p.add_argument("email")
        p.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input (needed "
            "when there is no terminal to ask on)",
        )
        p.add_argument(
            "--language",
            metavar="LANG",
            help=f"the language of the user's mails and certificates: one of "
            f"{', '.join(LANGUAGES)}"
            + ("; '' for the [gateway] default" if name == "set" else "")
            + " (default: [gateway] language)",
        )
        p.add_argument(
            "--timezone",
            metavar="ZONE",
            help="the time zone the user reads times in, an IANA name such as "
            "Europe/Madrid or Atlantic/Canary"
            + ("; '' for the [gateway] default" if name == "set" else "")
            + " (default: [gateway] timezone)",
        )
        p.add_argument(
            "--org",
            metavar="CODE",
            help="the organisation the user belongs to"
            + (" (default: default)" if name == "add" else ""),
        )
        p.add_argument(
            "--role",
            choices=[str(r) for r in Role],
            help="admin (manages the organisation's users, sees all its certificates, "
            "sends), sender (sends, sees its own) or auditor (sees all, sends nothing)"
            + ("; default: sender" if name == "add" else ""),
        )
        if name == "set":
            state = p.add_mutually_exclusive_group()
            state.add_argument(
                "--disable",
                dest="disabled",
                action="store_const",
                const=True,
                help="disable the user: it can no longer send, log in or use the API",
            )
            state.add_argument(
                "--enable",
                dest="disabled",
                action="store_const",
                const=False,
                help="enable a disabled user again",
            )
            p.add_argument(
                "--no-totp",
                action="store_true",
                help="remove the user's second factor (a lost phone): its console "
                "sessions end, and its account password sends mail again",
            )
            p.add_argument(
                "--tracking",
                choices=["on", "off"],
                help="open and click tracking for the user's certified mail; given alone, "
                "the password is left as it is",
            )
            p.add_argument(
                "--mode",
                choices=["hosted", "hosted-code", "accept", "plain"],
                help="what the recipients of the user's certified mail get: a link to the "
                "content (hosted, hosted-code), the content to accept or reject (accept), "
                "or the content itself (plain); docs/hosted.md",
            )
            p.add_argument(
                "--sms-sender",
                metavar="ID",
                help="the sender ID of the user's SMS: up to 11 letters and digits or an "
                "international number; '' for its organisation's (docs/sms.md)",
            )
            p.add_argument(
                "--force",
                action="store_true",
                help="set --sms-sender even when another organisation already sends as it",
            )
        p.set_defaults(func=func)
    p = usub.add_parser(
        "tracking",
        help="turn open and click tracking on or off for a user (= set --tracking)",
        description="Opt a user's certified mail in or out of open and click tracking; "
        "the same as 'certifica users set EMAIL --tracking on|off'.",
    )
    p.add_argument("email")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(func=cmd_users_tracking)
    p = usub.add_parser("list", help="list users", description="List the users.")
    p.set_defaults(func=cmd_users_list)
    p = usub.add_parser(
        "remove",
        help="remove a user",
        description="Remove a user, with its app passwords, API tokens and console sessions.",
    )
    p.add_argument("email")
    p.set_defaults(func=cmd_users_remove)
    _register_app_passwords(usub)
