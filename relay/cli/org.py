"""``certifica org``: organisations, and the domains bound to them (docs/accounts.md).

An organisation is what buys credits and what its users' certified mail is attributed
to: ``org add ACME --name "Acme S.L." --legal-id B12345678``, then ``certifica users
add ADDR --org ACME --role admin|sender|auditor``. ``org domain add ACME acme.example``
binds a domain: mail from that domain certified through the MX, and certified
reception for its mailboxes, are attributed to ACME even when the address is no user.
A domain is bound to one organisation at most.
"""

from __future__ import annotations

import argparse
import re
import time

from relay.cli.common import EXIT_OK, UserError, config_of, open_store, operator_name
from relay.config import sms_sender_ok
from relay.queue.contacts import Taken


def _code(text: str) -> str:
    from relay.queue.orgs import ORG_CODE

    code = text.strip()
    if not ORG_CODE.fullmatch(code):
        raise UserError(
            f"{text!r} is not an organisation code: use 1 to 32 letters, digits, - and _, "
            "starting with a letter or digit (e.g. ACME)"
        )
    return code


def _domain(text: str) -> str:
    from relay.queue.orgs import normalise_domain

    try:
        return normalise_domain(text)
    except ValueError as err:
        raise UserError(str(err)) from None


def sms_sender_option(text: str) -> str:
    """``--sms-sender``: a sender ID an SMSC takes (:func:`relay.config.sms_sender_ok`),
    or "" to clear it."""
    text = text.strip()
    if text and not sms_sender_ok(text):
        raise UserError(
            f"{text!r} is not an SMS sender ID: 1 to 11 letters and digits (not only "
            "digits), or an international number such as +34600111222; '' clears it"
        )
    return text


def _sms_number(text: str) -> str:
    """``--sms-number``: the organisation's own number in E.164 ("" clears it), where
    replies (STOP) come. Any international number: it may be a virtual or fixed line
    the operator routes SMS to, which a handset check would refuse."""
    digits = re.sub(r"[ .()\-]", "", text.strip())
    if digits and not re.fullmatch(r"\+[1-9][0-9]{6,14}", digits):
        raise UserError(
            f"{text!r} is not an international number: write + and the country code, "
            "such as +34600111222; '' clears it"
        )
    return digits


def taken_sentence(taken: Taken) -> str:
    """The refusal of a sender ID or number another organisation already uses."""
    whose = f"organisation {taken.org} ({taken.name})"
    if taken.user is not None:
        whose = f"{taken.user} of {whose}"
    if taken.what == "number":
        return (
            f"the SMS number {taken.value} is already that of {whose}: a reply to it could "
            "only reach one of them; give --force to share it anyway"
        )
    return (
        f"the SMS sender ID {taken.value} is already used by {whose}: phones and the "
        "opt-out page could not tell them apart; give --force to share it anyway"
    )


def _no_such(code: str) -> UserError:
    return UserError(f"there is no organisation {code}; 'certifica org list' lists them")


def cmd_org_add(args: argparse.Namespace) -> int:
    code = _code(args.code)
    name = args.name.strip()
    if not name:
        raise UserError("the organisation needs a name: --name 'Acme S.L.'")
    with open_store(config_of(args), writes=True) as store:
        same = [o.code for o in store.organisations_now() if o.code.lower() == code.lower()]
        if same:
            raise UserError(
                f"organisation {same[0]} exists already; to change it: certifica org set {same[0]}"
            )
        if not store.add_organisation(code, name, (args.legal_id or "").strip(), time.time()):
            raise UserError(f"organisation {code} exists already")
    print(f"organisation {code} added ({name})")
    return EXIT_OK


def cmd_org_list(args: argparse.Namespace) -> int:
    """One line per organisation: code, name, legal id, users, balance, disabled."""
    with open_store(config_of(args)) as store:
        orgs = store.organisations_now()
        users = {o.code: len(store.org_accounts_now(o.code)) for o in orgs}
    for org in orgs:
        print(
            f"{org.code}\t{org.name}\tlegal id {org.legal_id or '-'}\tusers {users[org.code]}"
            f"\tbalance {org.balance}" + ("\tdisabled" if org.disabled else "")
        )
    return EXIT_OK


def cmd_org_show(args: argparse.Namespace) -> int:
    """The organisation, its users with their roles, its domains and its balance."""
    code = _code(args.code)
    with open_store(config_of(args)) as store:
        org = store.organisation_now(code)
        if org is None:
            raise _no_such(code)
        accounts = store.org_accounts_now(code)
        domains = store.org_domains_now(code)
        store_sms = store.org_sms_now(code)
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(org.created))
    print(f"organisation {org.code}: {org.name}")
    print(f"legal id: {org.legal_id or '-'}")
    print(f"added: {created} UTC")
    print(f"state: {'disabled (its users send nothing)' if org.disabled else 'enabled'}")
    print(f"balance: {org.balance} credits")
    print(f"users ({len(accounts)}):")
    for account in accounts:
        flags = (", disabled" if account.user_disabled else "") + (
            ", second factor" if account.totp else ""
        )
        print(f"  {account.address}\t{account.role}{flags}")
    print(f"domains ({len(domains)}):")
    for domain in domains:
        print(f"  {domain}")
    sender, number = store_sms
    print(f"SMS sender ID: {sender or '- ([sms] source)'}; SMS number: {number or '-'}")
    return EXIT_OK


def cmd_org_set(args: argparse.Namespace) -> int:
    code = _code(args.code)
    if (args.name, args.legal_id, args.sms_sender, args.sms_number) == (None,) * 4:
        raise UserError("nothing to change: give --name, --legal-id, --sms-sender or --sms-number")
    name = None if args.name is None else args.name.strip()
    if name == "":
        raise UserError("the organisation's name cannot be empty")
    legal_id = None if args.legal_id is None else args.legal_id.strip()
    sender = None if args.sms_sender is None else sms_sender_option(args.sms_sender)
    number = None if args.sms_number is None else _sms_number(args.sms_number)
    with open_store(config_of(args), writes=True) as store:
        if (sender, number) != (None, None):
            taken = store.sms_identity_taken(code, sender=sender, number=number)
            if taken is not None and not args.force:
                raise UserError(taken_sentence(taken))
            if not store.set_org_sms(
                code,
                sender=sender,
                number=number,
                actor=f"operator:{operator_name()}",
                now=time.time(),
                forced=taken is not None,
            ):
                raise _no_such(code)
        if not store.set_organisation(code, name=name, legal_id=legal_id):
            raise _no_such(code)
    said = (
        ([f"name {name}"] if name is not None else [])
        + ([f"legal id {legal_id or '-'}"] if legal_id is not None else [])
        + ([f"SMS sender ID {sender or '- ([sms] source)'}"] if sender is not None else [])
        + ([f"SMS number {number or '-'}"] if number is not None else [])
    )
    print(f"organisation {code}: {', '.join(said)}")
    return EXIT_OK


def cmd_org_disable(args: argparse.Namespace) -> int:
    code = _code(args.code)
    disabled = args.org_command == "disable"
    with open_store(config_of(args), writes=True) as store:
        if not store.set_organisation(code, disabled=disabled):
            raise _no_such(code)
    print(
        f"organisation {code} disabled: its users can neither send nor log in"
        if disabled
        else f"organisation {code} enabled"
    )
    return EXIT_OK


def cmd_org_domain(args: argparse.Namespace) -> int:
    code = _code(args.code)
    action = args.domain_action
    if action != "list" and not args.domain:
        raise UserError(f"which domain? certifica org domain {action} {code} DOMAIN")
    domain = _domain(args.domain) if action != "list" else ""
    with open_store(config_of(args), writes=action != "list") as store:
        if store.organisation_now(code) is None:
            raise _no_such(code)
        if action == "list":
            for bound in store.org_domains_now(code):
                print(bound)
            # an admin's requests, bound once their DNS record is seen (docs/accounts.md)
            for pending in store.domain_claims_now(code):
                asked = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(pending.requested))
                print(
                    f"{pending.domain}\tpending: asked by {pending.requested_by} {asked}; "
                    "not bound until its DNS proof is seen (or: certifica org domain add)"
                )
            return EXIT_OK
        if action == "add":
            holder = store.bind_domain(code, domain, time.time())
            if holder is not None:
                raise UserError(
                    f"the domain {domain} is bound to the organisation {holder} already; "
                    f"unbind it first: certifica org domain remove {holder} {domain}"
                )
            print(f"domain {domain} bound to {code}")
            return EXIT_OK
        if not store.unbind_domain(code, domain):
            raise UserError(f"the domain {domain} is not bound to {code}")
    print(f"domain {domain} unbound from {code}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certifica org`` to the subcommands."""
    org = sub.add_parser(
        "org",
        help="manage organisations and their domains",
        description="Manage organisations (what buys credits and what users' mail is "
        "attributed to) and the domains bound to them (docs/accounts.md).",
    )
    osub = org.add_subparsers(dest="org_command", metavar="ACTION", required=True)
    p = osub.add_parser(
        "add",
        help="add an organisation",
        description="Add an organisation. CODE is the short name you type (ACME); --name "
        "its legal name. An existing code (in any case) is refused.",
    )
    p.add_argument("code", metavar="CODE", help="the organisation's code (ACME)")
    p.add_argument("--name", required=True, help="the legal name, e.g. 'Acme S.L.'")
    p.add_argument("--legal-id", help="tax or registration number (NIF, partita IVA, VAT)")
    p.set_defaults(func=cmd_org_add)
    p = osub.add_parser(
        "list",
        help="list organisations",
        description="List the organisations: code, name, legal id, users, balance.",
    )
    p.set_defaults(func=cmd_org_list)
    p = osub.add_parser(
        "show",
        help="show one organisation",
        description="Show an organisation: its users with their roles, its domains, its balance.",
    )
    p.add_argument("code", metavar="CODE", help="the organisation's code (ACME)")
    p.set_defaults(func=cmd_org_show)
    p = osub.add_parser(
        "set",
        help="change an organisation's name or legal id",
        description="Change an organisation's name or legal id; what is not given stays.",
    )
    p.add_argument("code", metavar="CODE", help="the organisation's code (ACME)")
    p.add_argument("--name", help="the new legal name")
    p.add_argument("--legal-id", help="the new tax or registration number ('' for none)")
    p.add_argument(
        "--sms-sender",
        metavar="ID",
        help="the sender ID its SMS show: up to 11 letters and digits (ACME) or an "
        "international number; '' for [sms] source (docs/sms.md)",
    )
    p.add_argument(
        "--sms-number",
        metavar="NUMBER",
        help="its own number (E.164, +34...), where replies such as STOP reach it; '' for none",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="set --sms-sender or --sms-number even when another organisation already "
        "uses it (docs/sms.md)",
    )
    p.set_defaults(func=cmd_org_set)
    for name, short, long in (
        (
            "disable",
            "disable an organisation: its users send nothing and cannot log in",
            "Disable an organisation: none of its users can send (SMTP AUTH fails as with "
            "a wrong password), log in to the console or use the API, and MX-mode mail of "
            "its bound domains is refused. Its certificates and credits are kept.",
        ),
        ("enable", "enable a disabled organisation", "Enable a disabled organisation again."),
    ):
        p = osub.add_parser(name, help=short, description=long)
        p.add_argument("code", metavar="CODE", help="the organisation's code (ACME)")
        p.set_defaults(func=cmd_org_disable)
    p = osub.add_parser(
        "domain",
        help="bind, unbind or list an organisation's domains",
        description="Bind a domain to an organisation (add), unbind it (remove), or list "
        "them. MX-mode and certified-reception mail of a bound domain is attributed to "
        "the organisation. Domains are stored in lower case, internationalised ones in "
        "their ASCII (xn--) form; a domain bound to another organisation is refused.",
    )
    p.add_argument("domain_action", choices=["add", "remove", "list"], metavar="add|remove|list")
    p.add_argument("code", metavar="CODE", help="the organisation's code (ACME)")
    p.add_argument("domain", metavar="DOMAIN", nargs="?", help="the domain (add, remove)")
    p.set_defaults(func=cmd_org_domain)
