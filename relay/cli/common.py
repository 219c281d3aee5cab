"""What every ``certifica`` command shares: exit statuses, the one-line error, the config,
the state directory (acted on as its owner) and the queue's store.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from certifier.errors import UsageError
from relay.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from relay.queue.orgs import Organisation
    from relay.queue.store import Store

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# verify: signature and evidence intact, but the certificate proves no message content
# (the gateway made it without the message: README, "Spool file missing").
EXIT_CONTENT_NOT_CERTIFIED = 3


class UserError(UsageError):
    """A problem the user can fix; printed as one line."""


def operator_name() -> str:
    """Who runs the command, as evidence entries record the operator (an ``Erasure``, a
    legal hold, a withdrawal): the user who ran ``sudo`` (``SUDO_USER``) rather than
    root, else the login name (:func:`getpass.getuser`), else ``operator``."""
    sudo = os.environ.get("SUDO_USER", "").strip()
    if sudo:
        return sudo
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name in the environment nor in the password database
        return "operator"


def config_of(args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(Path(args.config))
    default = Path("config.toml")
    return load_config(default if default.exists() else None)


def setup_logging(cfg: Config) -> None:
    """Logging as ``[log]`` says (:func:`relay.logs.configure`); a log file that cannot
    be written stops the start with one line naming the key."""
    from relay.logs import configure

    try:
        configure(cfg.log.level, cfg.log.format, cfg.log.file)
    except OSError as err:
        where = cfg.source or "(embedded defaults)"
        raise UserError(
            f"{where}: log.file {cfg.log.file} cannot be written ({err.strerror})"
        ) from None


def owner_of(path: Path) -> tuple[int, str] | None:
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


def become_owner(path: Path) -> None:
    """Run as root against a state directory another user owns: become that user (its
    groups, then its uid) before touching anything, so no file in it is left owned by
    root, unreadable to the gateway. Anyone else is left as they are."""
    if os.geteuid() != 0:
        return
    owner = owner_of(path)
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
    unreadable = unreadable_for(uid, gid, groups)
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


def unreadable_for(uid: int, gid: int, groups: list[int]) -> str | None:
    """The first directory of the running Python (its standard library, the installed
    packages, this package) that user ``uid`` cannot read, else None. Checked with
    that user's effective ids, then root's are taken back (the real ids stay root's)."""
    import sqlite_utils

    wanted = [
        Path(os.__file__).parent,
        Path(sqlite_utils.__file__).parent,
        Path(__file__).resolve().parent.parent,  # the relay package
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


def state_dir(cfg: Config, *, writes: bool = False) -> Path:
    """The state directory, as its owner (see :func:`become_owner`), created and made
    private (any path that was open to other users is said on stderr). A command that
    ``writes`` says which config and state directory it used, on one line on stderr."""
    from relay.private import secure_state_dir

    become_owner(cfg.state_dir)
    try:
        problems = secure_state_dir(cfg.state_dir)
    except OSError as err:
        owner = owner_of(cfg.state_dir)
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


def open_store(cfg: Config, *, writes: bool = False) -> Store:
    from relay.queue.credits import CreditTerms
    from relay.queue.store import Store

    return Store(
        state_dir(cfg, writes=writes) / "queue.db", cfg.queue.lifetime, CreditTerms.of(cfg)
    )


def organisation_of(store: Store, code: str) -> Organisation:
    """The organisation ``code``, or the one-line refusal naming it."""
    org = store.organisation_now(code)
    if org is None:
        raise UserError(f"there is no organisation {code!r}")
    return org


def default_trust_roots(args: argparse.Namespace) -> list[Path]:
    """The configured trust roots, else this gateway's own CA if it has one."""
    try:
        cfg = config_of(args)
    except ConfigError:
        return []
    if cfg.signing.trust_roots:
        return list(cfg.signing.trust_roots)
    ca = cfg.state_dir / "keys" / "ca.pem"
    return [ca] if ca.exists() else []


def refuse_unless_empty(target: Path) -> None:
    """An export goes into a new or empty directory, never over files already there."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"{target} is not an empty directory: give a new or empty one")


@contextlib.contextmanager
def written_at_once(target: Path) -> Iterator[Path]:
    """A temporary directory beside ``target`` (a new or empty directory) to write into,
    renamed into place when the block ends: an error leaves nothing behind
    (``certifica export``, ``certifica evidence verify --export``)."""
    refuse_unless_empty(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as err:
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    try:
        yield partial
        if target.exists():
            target.rmdir()
        os.replace(partial, target)
    except OSError as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
