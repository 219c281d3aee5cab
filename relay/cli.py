"""The ``certifica`` command: ``serve``, ``verify``, ``users``, ``reception``, ``dkim``,
``queue``, ``addendum``, ``evidence``.

Every subcommand has ``--help``. Errors an operator can fix (a bad config key, an
unreadable file, an unknown user) are one line on stderr and exit status 2; no
traceback reaches the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from relay.config import Config, ConfigError, load_config
from relay.logs import OneLineFormatter

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


def _config(args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(Path(args.config))
    default = Path("config.toml")
    return load_config(default if default.exists() else None)


class _PostfixFormatter(OneLineFormatter):
    """``time program: [warning: |error: ]message``, as Postfix writes its log; the
    message always one line (client text escaped, :mod:`relay.logs`)."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        if record.levelno >= logging.ERROR:
            head, _, tail = line.partition(": ")
            return f"{head}: error: {tail}"
        if record.levelno >= logging.WARNING:
            head, _, tail = line.partition(": ")
            return f"{head}: warning: {tail}"
        return line


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _PostfixFormatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    # aiosmtpd logs every command line at INFO; the gateway logs what matters itself.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


# -- serve ----------------------------------------------------------------------------
def _limit_malloc_arenas() -> None:
    """Two glibc malloc arenas instead of one per thread and core.

    The store's thread and the worker threads that write the spool and sign with DKIM
    each got an arena of their own, and large message buffers left them fragmented:
    the gateway's RSS halves with two (measured with ``make bench``). The certificate
    workers inherit the setting through the environment (glibc reads it at start).
    """
    import ctypes
    import ctypes.util

    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-8, int(os.environ["MALLOC_ARENA_MAX"]))  # M_ARENA_MAX
    except (OSError, AttributeError, ValueError):
        pass  # not glibc: its own allocator decides


def cmd_serve(args: argparse.Namespace) -> int:
    from relay.server import Gateway, StartupError

    _limit_malloc_arenas()
    cfg = _config(args)
    _setup_logging(cfg.log.level)
    try:
        asyncio.run(Gateway(cfg).run_forever())
    except StartupError as err:
        raise UserError(str(err)) from None
    return EXIT_OK


# -- verify ---------------------------------------------------------------------------
def cmd_verify(args: argparse.Namespace) -> int:
    from certifier.verify import verify_certificate

    # pyHanko logs validation trouble with tracebacks; the checks below say it in one line.
    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    roots = [Path(p) for p in args.trust]
    if not roots:
        roots = _default_trust_roots(args)
    report = verify_certificate(data, roots)
    for check in report.checks:
        print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if report.ok:
        print(f"{path}: the certificate is intact and its evidence matches.")
        return EXIT_OK
    print(f"{path}: NOT VALID.", file=sys.stderr)
    return EXIT_FAILED


def _default_trust_roots(args: argparse.Namespace) -> list[Path]:
    """The configured trust roots, else this gateway's own CA if it has one."""
    try:
        cfg = _config(args)
    except ConfigError:
        return []
    if cfg.signing.trust_roots:
        return list(cfg.signing.trust_roots)
    ca = cfg.state_dir / "keys" / "ca.pem"
    return [ca] if ca.exists() else []


# -- users ----------------------------------------------------------------------------
def _open_store(cfg: Config) -> Any:
    from relay.store import Store

    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(cfg.state_dir / "queue.db", cfg.queue.lifetime)


def cmd_users_add(args: argparse.Namespace) -> int:
    from certifier.message import parse_single_mailbox
    from relay.users import hash_password, normalise_address

    address = parse_single_mailbox(args.email)
    if address is None or address != args.email.strip():
        raise UserError(f"{args.email!r} is not a single e-mail address")
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass(f"Password for {address}: ")
        if password != getpass.getpass("Again: "):
            raise UserError("the two passwords differ")
    if len(password) < 8:
        raise UserError("the password must have at least 8 characters")
    hashed = hash_password(password)
    store = _open_store(_config(args))
    try:
        store.run_sync(
            lambda db: db.conn.execute(
                "INSERT INTO users (address, password_hash, created) VALUES (?, ?, ?)"
                " ON CONFLICT(address) DO UPDATE SET password_hash = excluded.password_hash",
                (normalise_address(address), hashed, time.time()),
            )
        )
    finally:
        store.close()
    print(f"user {normalise_address(address)} saved")
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        rows = store.run_sync(
            lambda db: list(db.query("SELECT address, created FROM users ORDER BY address"))
        )
    finally:
        store.close()
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created"]))
        print(f"{row['address']}\tadded {created} UTC")
    return EXIT_OK


def cmd_users_remove(args: argparse.Namespace) -> int:
    from relay.users import normalise_address

    address = normalise_address(args.email)
    store = _open_store(_config(args))
    try:
        removed = store.run_sync(
            lambda db: db.conn.execute("DELETE FROM users WHERE address = ?", (address,)).rowcount
        )
    finally:
        store.close()
    if not removed:
        raise UserError(f"there is no user {address}")
    print(f"user {address} removed")
    return EXIT_OK


# -- reception ------------------------------------------------------------------------
def _forwarding_address(cfg: Config, token: str) -> str:
    return f"{cfg.reception.prefix}+{token}@{cfg.gateway.domain}"


def cmd_reception_enable(args: argparse.Namespace) -> int:
    import base64
    import secrets

    from certifier.message import parse_single_mailbox
    from relay.users import normalise_address

    address = parse_single_mailbox(args.email)
    if address is None or address != args.email.strip():
        raise UserError(f"{args.email!r} is not a single e-mail address")
    owner = normalise_address(address)
    cfg = _config(args)
    # 130 bits, lower-case letters and digits only: forwarders may lower-case addresses.
    token = base64.b32encode(secrets.token_bytes(17)).decode().rstrip("=").lower()
    store = _open_store(cfg)
    try:
        token = store.reception_enable(owner, token, args.ack_sender, time.time())
    finally:
        store.close()
    forward = _forwarding_address(cfg, token)
    print(f"Certified reception is on for {owner}" + (
        " (the original sender also gets a proof of receipt)." if args.ack_sender else "."
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
    from relay.users import normalise_address

    owner = normalise_address(args.email)
    store = _open_store(_config(args))
    try:
        changed = store.reception_disable(owner)
    finally:
        store.close()
    if not changed:
        raise UserError(f"certified reception is not on for {owner}")
    print(f"certified reception off for {owner}; mail to its forwarding address is refused")
    return EXIT_OK


def cmd_reception_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    store = _open_store(cfg)
    try:
        rows = store.reception_list()
    finally:
        store.close()
    if not rows:
        print("no mailbox has certified reception")
    for row in rows:
        state = "on" if row["enabled"] else "off"
        ack = ", proof of receipt to senders" if row["ack_sender"] else ""
        print(f"{row['owner']}\t{state}{ack}\t{_forwarding_address(cfg, row['token'])}")
    return EXIT_OK


# -- dkim -----------------------------------------------------------------------------
def _keyring(cfg: Config) -> Any:
    from relay.dkim_keys import DkimKeyring

    cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return DkimKeyring(cfg.state_dir / "keys")


def cmd_dkim_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        key = _keyring(cfg).add(args.domain, args.selector, args.algorithm)
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
    cfg = _config(args)
    keys = _keyring(cfg).list()
    if not keys:
        print("no DKIM keys yet (the gateway makes its own on first start)")
    for key in keys:
        own = " (the gateway's own domain)" if key.domain == cfg.gateway.domain else ""
        print(f"{key.domain}\t{key.selector}\t{key.algorithm}{own}")
        print(f'\t{key.dns_name}. IN TXT "{_txt_chunks(key.dns_txt)}"')
    return EXIT_OK


# -- evidence -------------------------------------------------------------------------
def cmd_evidence_verify(args: argparse.Namespace) -> int:
    """Recompute the evidence chain and check every RFC 3161 checkpoint; exit 1 on a problem."""
    from pyhanko.keys import load_certs_from_pemder

    from certifier import checkpoints

    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    paths = [Path(p) for p in args.trust] or _default_trust_roots(args)
    try:
        roots = list(load_certs_from_pemder([str(p) for p in paths]))
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read the trust roots {', '.join(map(str, paths))}: {err}"
        ) from None
    store = _open_store(_config(args))
    try:
        found = store.run_sync(lambda db: checkpoints.audit(db.conn, roots))
        written = (
            store.run_sync(lambda db: checkpoints.export(db.conn, Path(args.export)))
            if args.export
            else None
        )
    finally:
        store.close()
    for problem in found.problems:
        print(f"FAIL {problem}")
    if found.more_problems:
        print(f"FAIL and {found.more_problems} more problems")
    if written is not None:
        print(
            f"{len(written) // 2} checkpoint(s) written to {args.export}: check one with "
            "openssl ts -verify -data checkpoint-N.dat -in checkpoint-N.tst -token_in "
            "-CAfile TSA-ROOT.pem"
        )
    print(found.summary())
    return EXIT_OK if found.ok else EXIT_FAILED


# -- queue ----------------------------------------------------------------------------
def cmd_queue_list(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        rows = asyncio.run(_listing(store))
    finally:
        store.close()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    if not rows:
        print("Mail queue is empty")
        return EXIT_OK
    now = time.time()
    for row in rows:
        age = int(now - row["created"])
        flags = ("C" if row["certified"] else " ") + ("!" if row["state"] == "held" else " ")
        print(
            f"{row['qid']}{flags} {row['size']:>9} {_age(age):>7}  <{row['sender']}>  {row['kind']}"
        )
        for r in row["recipients"]:
            reply = (
                f" ({r['reply_code']} {r['reply_text']})"
                if r["reply_code"] or r["reply_text"]
                else ""
            )
            print(f"{'':>14}{r['status']:<10} <{r['address']}>{reply}")
    return EXIT_OK


def _one_qid(store: Any, prefix: str) -> str:
    matches = store.find_qids(prefix)
    if not matches:
        raise UserError(f"no message {prefix!r} in the queue")
    if len(matches) > 1:
        raise UserError(f"{prefix!r} matches {len(matches)} messages; give more of the id")
    return str(matches[0])


def _iso(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC" if ts else "-"


def cmd_queue_show(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        row = store.show(_one_qid(store, args.id))
    finally:
        store.close()
    if args.json:
        print(json.dumps(row, indent=2, default=str))
        return EXIT_OK
    print(f"queue id:     {row['qid']} ({row['kind']}, {row['state']})")
    print(f"received:     {_iso(row['created'])}, {row['size']} bytes, sha256 {row['sha256']}")
    print(
        f"sender:       <{row['sender']}> (authenticated as {row['auth_user'] or '-'}, "
        f"client {row['client_ip'] or '-'})"
    )
    if row["certified"]:
        print(f"certificate:  {row['cert_id']} ({row['cert_state']})")
    print("recipients:")
    for r in row["recipients"]:
        reply = (
            f"{r['reply_code'] or ''} {r['reply_enhanced'] or ''} {r['reply_text'] or ''}".strip()
        )
        print(
            f"  <{r['address']}> {r['status']}, {r['attempts']} attempts, last {_iso(r['last_attempt'])}"
        )
        if reply:
            print(f"      {reply}")
        if r["status"] in ("queued", "deferred"):
            print(f"      next attempt {_iso(r['next_attempt'])}")
    print("evidence:")
    for e in row["evidence"]:
        who = f" <{e['recipient']}>" if e["recipient"] else ""
        print(f"  {_iso(e['time'])} {e['event']}{who} #{e['seq']} {e['hash'][:16]}")
    return EXIT_OK


def cmd_queue_flush(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        count = store.retry_now(None, time.time())
    finally:
        store.close()
    print(f"{count} recipient(s) will be tried again now")
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        qid = _one_qid(store, args.id)
        count = store.retry_now(qid, time.time())
    finally:
        store.close()
    print(f"{qid}: {count} recipient(s) will be tried again now")
    return EXIT_OK


def _hold(args: argparse.Namespace, held: bool) -> int:
    store = _open_store(_config(args))
    try:
        qid = _one_qid(store, args.id)
        changed = store.set_held(qid, held, time.time())
    finally:
        store.close()
    word = "on hold" if held else "released"
    print(f"{qid}: {word}" if changed else f"{qid}: already {word} or finished")
    return EXIT_OK if changed else EXIT_FAILED


def cmd_queue_hold(args: argparse.Namespace) -> int:
    return _hold(args, True)


def cmd_queue_release(args: argparse.Namespace) -> int:
    return _hold(args, False)


def cmd_queue_delete(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        qid = _one_qid(store, args.id)
        if not args.yes:
            if not sys.stdin.isatty():
                raise UserError("refusing to delete without confirmation; add --yes")
            answer = input(f"Withdraw {qid}? Undelivered recipients will not get it. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing done")
                return EXIT_FAILED
        operator = os.environ.get("SUDO_USER") or os.environ.get("USER") or "operator"
        count = store.withdraw(qid, operator, time.time())
    finally:
        store.close()
    print(
        f"{qid}: {count} recipient(s) withdrawn; a certified message gets a certificate "
        "that says so"
    )
    return EXIT_OK


# -- addendum -------------------------------------------------------------------------
def cmd_addendum(args: argparse.Namespace) -> int:
    """Render and sign, now, the addendum of a certificate: every event up to this moment."""
    from certifier import pipeline, pool
    from certifier.pki import ensure_dev_pki
    from relay.qmgr import QueueManager, new_certificate_id
    from relay.server import signing_settings, state_paths
    from relay.spool import Spool

    if sys.stdout.isatty():
        raise UserError("the addendum is a PDF: redirect it to a file (> addendum.pdf)")
    cfg = _config(args)
    paths = state_paths(cfg)
    store = _open_store(cfg)
    try:
        qid = store.run_sync(
            lambda db: next(
                (
                    r["qid"]
                    for r in db.query(
                        "SELECT qid FROM messages WHERE cert_id = ? AND kind = 'mail'",
                        (args.certificate.upper(),),
                    )
                ),
                None,
            )
        )
        if qid is None:
            raise UserError(f"no certificate {args.certificate!r} on this gateway")
        spool = Spool(paths["spool"])
        qmgr = QueueManager(cfg, store, spool, None, None, paths["certificates"])  # type: ignore[arg-type]

        async def _evidence() -> tuple[dict[str, Any], bytes]:
            row = await store.message(qid)
            return await qmgr.build_evidence(row), spool.read_any(qid)

        evidence, raw = asyncio.run(_evidence())
        cert_id = evidence["certificate_id"]
        evidence.update(kind="addendum", certificate_id=new_certificate_id(), addendum_of=cert_id)
    finally:
        store.close()
    pki = ensure_dev_pki(paths["keys"], cfg.gateway.hostname)
    pool.init_process(signing_settings(cfg, pki))
    sys.stdout.buffer.write(pipeline.certify(evidence, raw))
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_users_tracking(args: argparse.Namespace) -> int:
    from relay.users import normalise_address

    address = normalise_address(args.email)
    store = _open_store(_config(args))
    try:
        changed = store.run_sync(
            lambda db: (
                db.conn.execute(
                    "UPDATE users SET tracking = ? WHERE address = ?",
                    (int(args.state == "on"), address),
                ).rowcount
            )
        )
    finally:
        store.close()
    if not changed:
        raise UserError(f"there is no user {address}")
    print(f"open and click tracking {args.state} for mail certified by {address}")
    return EXIT_OK


async def _listing(store: Any) -> list[dict[str, Any]]:
    return await store.queue_listing()  # type: ignore[no-any-return]


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


# -- parser ---------------------------------------------------------------------------
class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: it takes -c/--config too, so ``certifica serve -c FILE`` works."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SUPPRESS: given here it wins, absent it leaves the top-level value alone.
        self.add_argument(
            "-c",
            "--config",
            default=argparse.SUPPRESS,
            help="config file (default: ./config.toml if present, else embedded defaults)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certifica",
        description="Certifica: an SMTP relay that certifies e-mail with signed PDF certificates.",
    )
    parser.add_argument(
        "-c",
        "--config",
        help="config file (default: ./config.toml if present, else embedded defaults)",
    )
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_CommandParser
    )

    p = sub.add_parser(
        "serve",
        help="run the gateway (listeners, queue, certificates)",
        description="Run the gateway until SIGTERM or SIGINT.",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "verify",
        help="check a certificate PDF offline",
        description="Check a certificate's signature, timestamp and embedded message, "
        "without the gateway's database. Exit 0 when valid, 1 when not.",
    )
    p.add_argument("file", help="the certificate PDF")
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="a trusted root certificate (repeatable; default: the configured "
        "signing.trust_roots, else this gateway's own CA)",
    )
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "addendum",
        help="sign an addendum of a certificate now (PDF on stdout)",
        description="Render and sign, now, the addendum of certificate CERT-ID: every "
        "event recorded so far (opens, clicks, late bounces). Writes the PDF to stdout.",
    )
    p.add_argument("certificate", metavar="CERT-ID")
    p.set_defaults(func=cmd_addendum)

    users = sub.add_parser(
        "users",
        help="manage the users who may send",
        description="Manage submission users (one e-mail address each).",
    )
    usub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    p = usub.add_parser(
        "add",
        help="add a user or change its password",
        description="Add a user, or change the password of an existing one.",
    )
    p.add_argument("email")
    p.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    p.set_defaults(func=cmd_users_add)
    p = usub.add_parser(
        "tracking",
        help="turn open and click tracking on or off for a user",
        description="Opt a user's certified mail in or out of open and click tracking.",
    )
    p.add_argument("email")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(func=cmd_users_tracking)
    p = usub.add_parser("list", help="list users", description="List the users.")
    p.set_defaults(func=cmd_users_list)
    p = usub.add_parser("remove", help="remove a user", description="Remove a user.")
    p.add_argument("email")
    p.set_defaults(func=cmd_users_remove)

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
        action="store_true",
        help="also mail the original sender a proof of receipt (never to bounces, lists, "
        "automatic or unauthenticated mail; at most one per sender per interval)",
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

    evidence = sub.add_parser(
        "evidence",
        help="the hash-chained evidence log and its timestamped checkpoints",
        description="Check the gateway's evidence log, in its database.",
    )
    esub = evidence.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    p = esub.add_parser(
        "verify",
        help="recompute the whole chain and check every checkpoint",
        description="Recompute the hash of every evidence entry and its link to the one "
        "before, and check every RFC 3161 checkpoint: its entry's hash is the timestamped "
        "head, and its token is intact and issued by a trusted TSA. Prints one line per "
        "problem, then a summary. Exit 0 when all holds, 1 when not.",
    )
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="a trusted root of the timestamp authority (repeatable; default: the "
        "configured signing.trust_roots, else this gateway's own CA)",
    )
    p.add_argument(
        "--export",
        metavar="DIR",
        help="also write each checkpoint as DIR/checkpoint-<seq>.dat (the timestamped "
        "statement) and .tst (the DER token), for openssl ts -verify",
    )
    p.set_defaults(func=cmd_evidence_verify)

    queue = sub.add_parser("queue", help="look at the queue", description="Look at the mail queue.")
    qsub = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for name, func, short, long, with_id, with_json in (
        (
            "list",
            cmd_queue_list,
            "list queued messages (like mailq)",
            "List the messages still in the queue with each recipient's state and last reply. "
            "C = certified, ! = on hold.",
            False,
            True,
        ),
        (
            "show",
            cmd_queue_show,
            "everything about one message",
            "Show one message: recipients, replies, evidence events.",
            True,
            True,
        ),
        (
            "flush",
            cmd_queue_flush,
            "retry every deferred recipient now",
            "Make every deferred recipient due now (like postqueue -f).",
            False,
            False,
        ),
        (
            "retry",
            cmd_queue_retry,
            "retry one message now",
            "Make the deferred recipients of one message due now.",
            True,
            False,
        ),
        (
            "hold",
            cmd_queue_hold,
            "stop delivery attempts for a message",
            "Put a message on hold: no delivery attempts until released.",
            True,
            False,
        ),
        (
            "release",
            cmd_queue_release,
            "release a held message",
            "Release a message from hold; it is tried at once.",
            True,
            False,
        ),
        (
            "delete",
            cmd_queue_delete,
            "withdraw a message (recorded as evidence)",
            "Withdraw a message: its undelivered recipients become 'withdrawn', the deletion "
            "is an evidence event, and a certified message is certified as withdrawn by the "
            "operator. Asks first.",
            True,
            False,
        ),
    ):
        p = qsub.add_parser(name, help=short, description=long)
        if with_id:
            p.add_argument("id", help="queue id; its first characters are enough")
        if with_json:
            p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=func)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, UserError) as err:
        print(f"certifica: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as err:  # the last line of defence: one line, never a traceback
        if os.environ.get("CERTIFICA_DEBUG"):
            raise
        print(
            f"certifica: unexpected error ({err.__class__.__name__}: {err}); "
            "run again with CERTIFICA_DEBUG=1 for details",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
