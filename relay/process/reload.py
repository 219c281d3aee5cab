"""Reloading the configuration without a restart: SIGHUP, ``systemctl reload certifica``.

README "Reloading", ARCHITECTURE.md §1 "Reload". The master reads ``config.toml`` again
and checks it (:meth:`relay.process.master.Master.reload`): a file that does not load
(bad TOML, an unknown key, a wrong value), a TLS certificate or key that cannot be read
or do not belong together (:func:`relay.process.gateway.tls_contexts`), a ``[log] file``
that cannot be opened: the reload is refused as a whole, with one line naming the key
and the file, and the configuration in force stays in every process. A file that passes
is written to ``run/reload.toml`` and every child is sent SIGHUP; each child reads that
text, the very bytes the master checked (not ``config.toml`` again, which the operator
may be editing meanwhile), merges it with its own settings (:func:`merge`, the same
function the master ran, so every process ends with the same configuration) and applies
it (:func:`listen_for_reload`). A child that cannot apply it (a file changed between the
master's check and its own reading) logs one line and keeps its old settings.

What a reload applies is :data:`RELOADABLE`; any other key that changed is reported in
one line, "needs a restart: listen.mx, ...", and left as it was until the next start:
the listening sockets are bound once by the master, the state directory and the process
counts shape the process tree, and the signing key is loaded once and checked before any
child exists. Whether or not their keys changed, a reload reads again the TLS
certificate and key (certbot replaces the files under the same names), the DKIM keys
under ``keys/dkim`` and ``[log] file`` (opened anew). Users' settings need no reload:
they are never cached, each session and each delivery reads them from the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certifier.errors import ConfigError
from relay.config import Config, load_config
from relay.logs import configure, log_failure
from relay.process.child import run_dir

RELOADABLE = (
    "tls.cert",
    "tls.key",
    "delivery.routes",
    "dkim.sign",
    "dkim.from_handling",
    "log.level",
    "log.format",
    "log.file",
)
"""The keys a reload applies; every other key needs a restart."""

RELOAD_TEXT = "reload.toml"
"""Under ``<state_dir>/run``: the configuration text the master checked last."""

RELOAD_RESULT = "reload.json"
"""Under ``<state_dir>/run``: the outcome of the master's last reload, for ``certifica
reload`` (``serial``, ``pid``, ``outcome``: applied or refused, ``message``)."""


@dataclass(frozen=True)
class Reload:
    """What a new configuration changes: the configuration in force after the reload,
    the keys it applied and the keys that changed but wait for a restart."""

    config: Config
    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]


def settings(cfg: Config) -> dict[str, Any]:
    """Every key of ``cfg`` as ``section.key`` (``delivery.routes`` is one key)."""
    flat: dict[str, Any] = {}
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(value):
            continue  # source, deprecations: not keys of the file
        for key in dataclasses.fields(value):
            flat[f"{section.name}.{key.name}"] = getattr(value, key.name)
    return flat


def merge(old: Config, new: Config) -> Reload:
    """``old`` with the :data:`RELOADABLE` keys of ``new``; the rest stays ``old``'s."""
    before, after = settings(old), settings(new)
    changed = [key for key in after if after[key] != before[key]]
    applied = tuple(key for key in changed if key in RELOADABLE)
    cfg = old
    for key in applied:
        section, name = key.split(".")
        part = dataclasses.replace(getattr(cfg, section), **{name: after[key]})
        cfg = dataclasses.replace(cfg, **{section: part})
    return Reload(cfg, applied, tuple(key for key in changed if key not in RELOADABLE))


def reload_path(run_dir: Path) -> Path:
    return run_dir / RELOAD_TEXT


def _unwritable(cfg: Config, err: OSError) -> ConfigError:
    where = cfg.source or "(embedded defaults)"
    return ConfigError(
        f"{where}: log.file = {cfg.log.file} cannot be written ({err.strerror or err})"
    )


def check_logging(cfg: Config) -> None:
    """Raises :class:`ConfigError` naming ``log.file`` when ``[log] file`` of ``cfg``
    cannot be opened for appending; changes no logging (the file is made when missing,
    as the logging would make it)."""
    if cfg.log.file is None:
        return
    try:
        with open(cfg.log.file, "a", encoding="utf-8"):
            pass
    except OSError as err:
        raise _unwritable(cfg, err) from None


def apply_logging(cfg: Config) -> None:
    """``[log]`` of ``cfg`` in this process; raises :class:`ConfigError` naming
    ``log.file`` when it cannot be opened (the logging in force then stays)."""
    try:
        configure(cfg.log.level, cfg.log.format, cfg.log.file)
    except OSError as err:
        raise _unwritable(cfg, err) from None


Apply = Callable[[Reload], Callable[[], None]]
"""A child's part of a reload: prepares what it needs (raising :class:`ConfigError` or
:class:`OSError` when it cannot) and returns what puts it in force (which cannot fail)."""


def listen_for_reload(
    run_dir: Path, current: Callable[[], Config], apply: Apply, log: logging.Logger
) -> None:
    """In a child's event loop: on SIGHUP, read the text the master checked, merge it
    with ``current()`` and ``apply`` it, the log settings last; one line either way.

    The child was started with SIGHUP blocked (:func:`relay.process.child.become_child`),
    so a reload sent while it was starting waits until this handler is in place."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, _reload, run_dir, current, apply, log)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def _reload(
    run_dir: Path, current: Callable[[], Config], apply: Apply, log: logging.Logger
) -> None:
    cfg = current()
    try:
        path = reload_path(run_dir)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            log.info("reload: the master checked no configuration; nothing to apply")
            return
        change = merge(cfg, load_config(cfg.source, text))
        commit = apply(change)
        apply_logging(change.config)
    except (ConfigError, OSError) as err:
        text = str(err) if isinstance(err, ConfigError) else (err.strerror or str(err))
        log.warning("reload not applied: %s; the settings in force stay", text)
        return
    except Exception:
        log_failure(log, "reload not applied; the settings in force stay")
        return
    commit()
    log.info("reload: applied (%s)", ", ".join(change.applied) or "no key changed")


def listen_for_log_reload(cfg: Config, log: logging.Logger) -> None:
    """:func:`listen_for_reload` for a process a reload changes only the logging of
    (the queue manager, the admin process)."""
    in_force = [cfg]

    def apply(change: Reload) -> Callable[[], None]:
        def commit() -> None:
            in_force[0] = change.config

        return commit

    listen_for_reload(run_dir(cfg.state_dir), lambda: in_force[0], apply, log)
