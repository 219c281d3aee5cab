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
from relay.queue.states import PENDING, MessageState

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# verify: signature and evidence intact, but the certificate proves no message content
# (the gateway made it without the message: README, "Spool file missing").
EXIT_CONTENT_NOT_CERTIFIED = 3


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
    from relay.process.gateway import Gateway, StartupError

    _limit_malloc_arenas()
    cfg = _config(args)
    owner = _owner_of(cfg.state_dir) if os.geteuid() == 0 else None
    if owner is not None:
        raise UserError(
            f"the state directory {cfg.state_dir} belongs to {owner[1]}: run the gateway as "
            f"{owner[1]} (systemd: User={owner[1]}), not as root, so that no file in it "
            "becomes root's"
        )
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
    if report.ok and not report.content_certified:
        print(
            f"{path}: the signature and the evidence are intact, but the message content is "
            "NOT certified (the gateway could not read the message when it made this "
            "certificate)."
        )
        return EXIT_CONTENT_NOT_CERTIFIED
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
def _owner_of(path: Path) -> tuple[int, str] | None:
    """The uid and name of the user owning ``path`` (or, while it does not exist yet, its
    nearest existing parent, where it will be made) when that is not root.

    The path itself is looked at, not what it points to: a symbolic link another user
    made there is that user's, and root acts as that user or not at all."""
    import pwd

    probe = path.absolute()
    while True:
        try:
            uid = probe.lstat().st_uid
            break
        except FileNotFoundError:
            if probe.parent == probe:
                return None
            probe = probe.parent
    if uid == 0:
        return None
    try:
        return uid, pwd.getpwuid(uid).pw_name
    except KeyError:
        return uid, str(uid)


def _become_owner(path: Path) -> None:
    """Run as root against a state directory another user owns: become that user (its
    groups, then its uid) before touching anything, so no file in it is left owned by
    root, unreadable to the gateway. Anyone else is left as they are."""
    if os.geteuid() != 0:
        return
    owner = _owner_of(path)
    if owner is None:
        return
    import pwd

    uid, name = owner
    try:
        entry = pwd.getpwuid(uid)
        gid, groups = entry.pw_gid, os.getgrouplist(name, entry.pw_gid)
    except KeyError:
        gid = uid  # a user without an entry: its own number as its group, no others
        groups = [gid]
    advice = f"run the command as {name} (sudo -u {name} certifica ...)"
    unreadable = _unreadable_for(uid, gid, groups)
    if unreadable is not None:
        raise UserError(
            f"the state directory {path} belongs to {name}, who cannot read {unreadable} "
            f"(part of the Python this command runs on), so root will not act in its "
            f"place and leave files of root's there: {advice}, with a Python {name} can read"
        )
    # pluggy (sqlite-utils' plugins) imports it on first use, from the standard library.
    import importlib.metadata  # noqa: F401

    try:
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as err:
        raise UserError(
            f"the state directory {path} belongs to {name}, and root cannot become that "
            f"user here ({err.strerror}): {advice}"
        ) from None
    print(f"certifica: running as {name}, the owner of {path}", file=sys.stderr)


def _unreadable_for(uid: int, gid: int, groups: list[int]) -> str | None:
    """The first directory of the running Python (its standard library, the installed
    packages, this package) that user ``uid`` cannot read, else None. Checked with
    that user's effective ids, then root's are taken back (the real ids stay root's)."""
    import sqlite_utils

    wanted = [
        Path(os.__file__).parent,
        Path(sqlite_utils.__file__).parent,
        Path(__file__).resolve().parent,
    ]
    saved = os.getgroups()
    os.setgroups(groups)
    os.setegid(gid)
    os.seteuid(uid)
    try:
        for folder in wanted:
            if not os.access(folder, os.R_OK | os.X_OK, effective_ids=True):
                return str(folder)
        return None
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(saved)


def _state_dir(cfg: Config, *, writes: bool = False) -> Path:
    """The state directory, as its owner (see :func:`_become_owner`), created and made
    private (any path that was open to other users is said on stderr). A command that
    ``writes`` says which config and state directory it used, on one line on stderr."""
    from relay.private import secure_state_dir

    _become_owner(cfg.state_dir)
    try:
        problems = secure_state_dir(cfg.state_dir)
    except OSError as err:
        owner = _owner_of(cfg.state_dir)
        whose = f" (it belongs to {owner[1]}; run the command as that user)" if owner else ""
        raise UserError(
            f"cannot use the state directory {cfg.state_dir}: {err.strerror}{whose}"
        ) from None
    for problem in problems:
        print(f"certifica: warning: state directory: {problem}", file=sys.stderr)
    if writes:
        print(
            f"certifica: config {cfg.source.resolve() if cfg.source else '(embedded defaults)'}"
            f", state directory {cfg.state_dir}",
            file=sys.stderr,
        )
    return cfg.state_dir


def _open_store(cfg: Config, *, writes: bool = False) -> Any:
    from relay.queue.store import Store

    return Store(_state_dir(cfg, writes=writes) / "queue.db", cfg.queue.lifetime)


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
    from relay.smtpd.users import hash_password, normalise_address

    parsed = parse_single_mailbox(args.email)
    if parsed is None or parsed != args.email.strip():
        raise UserError(f"{args.email!r} is not a single e-mail address")
    address = normalise_address(parsed)
    _need_terminal(args, address)
    store = _open_store(_config(args), writes=True)
    try:
        if store.user_exists(address):
            raise UserError(
                f"user {address} exists already; to change it: certifica users set "
                f"{address} [--password-stdin]"
            )
        hashed = hash_password(_read_password(args, address))
        if not store.add_user(address, hashed, time.time()):  # added by someone else meanwhile
            raise UserError(f"user {address} exists already")
    finally:
        store.close()
    print(f"user {address} added")
    return EXIT_OK


def cmd_users_set(args: argparse.Namespace) -> int:
    """Change an existing user: its password (asked, or ``--password-stdin``) unless only
    other options are given, and ``--tracking on|off``."""
    from relay.smtpd.users import hash_password, normalise_address

    address = normalise_address(args.email)
    new_password = args.password_stdin or args.tracking is None
    if new_password:
        _need_terminal(args, address)
    store = _open_store(_config(args), writes=True)
    try:
        if not store.user_exists(address):
            raise UserError(
                f"there is no user {address}; to add it: certifica users add {address} "
                "[--password-stdin]"
            )
        hashed = hash_password(_read_password(args, address)) if new_password else None
        tracking = None if args.tracking is None else args.tracking == "on"
        if not store.set_user(address, password_hash=hashed, tracking=tracking):
            raise UserError(f"there is no user {address}")
    finally:
        store.close()
    changed = (["password changed"] if hashed is not None else []) + (
        [f"open and click tracking {args.tracking}"] if tracking is not None else []
    )
    print(f"user {address}: {', '.join(changed)}")
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    store = _open_store(_config(args))
    try:
        rows = store.list_users()
    finally:
        store.close()
    for row in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["created"]))
        print(f"{row['address']}\tadded {created} UTC")
    return EXIT_OK


def cmd_users_remove(args: argparse.Namespace) -> int:
    from relay.smtpd.users import normalise_address

    address = normalise_address(args.email)
    store = _open_store(_config(args), writes=True)
    try:
        removed = store.remove_user(address)
    finally:
        store.close()
    if not removed:
        raise UserError(f"there is no user {address}")
    print(f"user {address} removed")
    return EXIT_OK


# -- reception ------------------------------------------------------------------------
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
    cfg = _config(args)
    # 130 bits, lower-case letters and digits only: forwarders may lower-case addresses.
    token = base64.b32encode(secrets.token_bytes(17)).decode().rstrip("=").lower()
    store = _open_store(cfg, writes=True)
    try:
        token, ack = store.reception_enable(owner, token, args.ack_sender, time.time())
    finally:
        store.close()
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
    store = _open_store(_config(args), writes=True)
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
        ack = "ack-sender: yes" if row["ack_sender"] else "ack-sender: no"
        print(f"{row['owner']}\t{state}\t{_forwarding_address(cfg, row['token'])}\t{ack}")
    return EXIT_OK


# -- dkim -----------------------------------------------------------------------------
def _keyring(cfg: Config, *, writes: bool = False) -> Any:
    from relay.delivery.dkim_keys import DkimKeyring

    return DkimKeyring(_state_dir(cfg, writes=writes) / "keys")


def cmd_dkim_add(args: argparse.Namespace) -> int:
    cfg = _config(args)
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
        found = store.audit_evidence(roots)
        written = _export_checkpoints(store, Path(args.export)) if args.export else None
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


def _export_checkpoints(store: Any, target: Path) -> list[Path]:
    """Every checkpoint into ``target``, a new or empty directory, all at once: they are
    written into a temporary directory beside it, renamed into place when complete, so
    an error leaves nothing behind."""
    import shutil
    import tempfile

    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not an empty directory: give a new or empty one")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    try:
        written = store.export_checkpoints(partial)
        if target.exists():
            target.rmdir()
        os.replace(partial, target)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    return [target / p.name for p in written]


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
    print(f"{'QUEUE ID':<12}  {'FLAGS':<5}  {'SIZE':>9}  {'AGE':>5}  SENDER (KIND), RECIPIENTS")
    for row in rows:
        age = int(now - row["created"])
        flags = ("C" if row["certified"] else "-") + (
            "!" if row["state"] == MessageState.HELD else "-"
        )
        print(
            f"{row['qid']:<12}  {flags:<5}  {row['size'] or 0:>9}  {_age(age):>5}  "
            f"<{row['sender'] or ''}> ({row['kind']})"
        )
        for r in row["recipients"]:
            said = " ".join(
                str(part)
                for part in (r["reply_code"], r.get("reply_enhanced"), r["reply_text"])
                if part
            )
            reply = f" ({said})" if said else ""
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
    from relay.queue.spool import SPOOL_QUEUE, SPOOL_SUBDIR

    cfg = _config(args)
    store = _open_store(cfg)
    try:
        row = store.show(_one_qid(store, args.id))
    finally:
        store.close()
    spool_file = cfg.state_dir / SPOOL_SUBDIR / SPOOL_QUEUE / f"{row['qid']}.eml"
    if row["state"] != MessageState.DONE and not spool_file.exists():
        row["spool_file"] = f"spool file missing: {spool_file}"
    if args.json:
        print(json.dumps(row, indent=2, default=str))
        return EXIT_OK
    print(f"queue id:     {row['qid']} ({row['kind']}, {row['state']})")
    print(f"received:     {_iso(row['created'])}, {row['size']} bytes, sha256 {row['sha256']}")
    print(
        f"sender:       <{row['sender']}> (authenticated as {row['auth_user'] or '-'}, "
        f"client {row['client_ip'] or '-'})"
    )
    if row.get("spool_file"):
        print(f"problem:      {row['spool_file']} (the gateway's copy of the message is gone)")
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
        if r["status"] in PENDING:
            print(f"      next attempt {_iso(r['next_attempt'])}")
    print("evidence:")
    for e in row["evidence"]:
        who = f" <{e['recipient']}>" if e["recipient"] else ""
        print(f"  {_iso(e['time'])} {e['event']}{who} #{e['seq']} {e['hash'][:16]}")
    return EXIT_OK


def cmd_queue_flush(args: argparse.Namespace) -> int:
    store = _open_store(_config(args), writes=True)
    try:
        count = store.retry_now(None, time.time())
    finally:
        store.close()
    print(f"{count} recipient(s) will be tried again now")
    return EXIT_OK


def cmd_queue_retry(args: argparse.Namespace) -> int:
    store = _open_store(_config(args), writes=True)
    try:
        qid = _one_qid(store, args.id)
        count = store.retry_now(qid, time.time())
    finally:
        store.close()
    print(f"{qid}: {count} recipient(s) will be tried again now")
    return EXIT_OK


def _hold(args: argparse.Namespace, held: bool) -> int:
    store = _open_store(_config(args), writes=True)
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
    store = _open_store(_config(args), writes=True)
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
    from relay.process.gateway import signing_settings, state_paths
    from relay.queue.manager import QueueManager, new_certificate_id
    from relay.queue.spool import Spool, write_durably

    if not args.output and sys.stdout.isatty():
        raise UserError("the addendum is a PDF: give a file to write it to (-o addendum.pdf)")
    cfg = _config(args)
    paths = state_paths(cfg)
    store = _open_store(cfg)
    try:
        qid = store.certified_mail(args.certificate)
        if qid is None:
            raise UserError(f"no certificate {args.certificate!r} on this gateway")
        spool = Spool(paths["spool"])
        qmgr = QueueManager(cfg, store, spool, None, None, paths["certificates"])  # type: ignore[arg-type]

        async def _evidence() -> tuple[dict[str, Any], bytes]:
            row = await store.message(qid)
            return await qmgr.build_evidence(row), spool.read_any(qid)

        try:
            evidence, raw = asyncio.run(_evidence())
        except FileNotFoundError:
            raise UserError(
                f"the message of {args.certificate.upper()} is no longer in the spool "
                "(spool file missing): an addendum embeds it, so none can be made"
            ) from None
        cert_id = evidence["certificate_id"]
        evidence.update(kind="addendum", certificate_id=new_certificate_id(), addendum_of=cert_id)
    finally:
        store.close()
    pki = ensure_dev_pki(paths["keys"], cfg.gateway.hostname)
    pool.init_process(signing_settings(cfg, pki))
    pdf = pipeline.certify(evidence, raw)
    if not args.output:
        sys.stdout.buffer.write(pdf)
        sys.stdout.buffer.flush()
        return EXIT_OK
    output = Path(args.output)
    try:
        # A temporary file renamed into place: on any error, FILE is left as it was.
        write_durably(output, pdf)
    except OSError as err:
        raise UserError(f"{output}: cannot be written ({err.strerror})") from None
    print(f"addendum {evidence['certificate_id']} written to {output}", file=sys.stderr)
    return EXIT_OK


def cmd_users_tracking(args: argparse.Namespace) -> int:
    from relay.smtpd.users import normalise_address

    address = normalise_address(args.email)
    store = _open_store(_config(args), writes=True)
    try:
        changed = store.set_user(address, tracking=args.state == "on")
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
        "without the gateway's database. Exit 0 when valid, 1 when not, 3 when the "
        "signature and evidence are intact but the certificate proves no message content "
        "(the gateway could not read the message when it made it).",
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
        help="sign an addendum of a certificate now (PDF to -o FILE or stdout)",
        description="Render and sign, now, the addendum of certificate CERT-ID: every "
        "event recorded so far (opens, clicks, late bounces). Writes the PDF to FILE "
        "(-o), else to stdout when it is not a terminal.",
    )
    p.add_argument("certificate", metavar="CERT-ID")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the PDF to FILE (only once it is complete; nothing on error) instead of stdout",
    )
    p.set_defaults(func=cmd_addendum)

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
            "change an existing user (its password)",
            "Change an existing user: its password (asked on the terminal, or read with "
            "--password-stdin), and with --tracking its open and click tracking. The one "
            "command that changes a user.",
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
        if name == "set":
            p.add_argument(
                "--tracking",
                choices=["on", "off"],
                help="open and click tracking for the user's certified mail; given alone, "
                "the password is left as it is",
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
        "statement) and .tst (the DER token), for openssl ts -verify; DIR must be new or "
        "empty, and is filled only once every file is written",
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
            "FLAGS: C = certified, ! = on hold, - = neither.",
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
    from relay.private import restrict_umask

    # Whatever is created from here on is private, whatever umask the caller had.
    restrict_umask()
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
