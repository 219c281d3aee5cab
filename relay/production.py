"""What ``[gateway] mode = "production"`` demands of the config before the gateway starts.

Development (the shipped config.toml, the tests) runs on one machine with names that
never reach the Internet. Production must not: a gateway whose domain is a reserved
name, whose postmaster is nobody, or whose public URL points at itself, loses mail or
evidence quietly. :func:`check_production` is the one place such checks live; a later
requirement of production is one more function in :data:`CHECKS`.

Reserved names (RFC 2606 §2-3, RFC 6761 §6): the top-level domains ``.test``,
``.example``, ``.invalid``, ``.localhost`` and the second-level ``example.com``,
``example.net``, ``example.org``.

Exceptions::

    ConfigError  -- one line naming the first key to fix and the file, then the others
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from relay.config import Config, ConfigError

RESERVED_TLDS = ("test", "example", "invalid", "localhost")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")


def is_reserved(domain: str) -> bool:
    """True for a domain that never receives real mail (RFC 2606, RFC 6761)."""
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    return labels[-1] in RESERVED_TLDS or any(
        name == d or name.endswith("." + d) for d in RESERVED_DOMAINS
    )


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, a ``.localhost`` name or a loopback IP address."""
    host = host.lower().strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Problem = tuple[str, str]  # the key, what is wrong with it


def _postmaster(cfg: Config) -> Iterator[Problem]:
    postmaster = cfg.gateway.postmaster
    if not postmaster:
        yield (
            "gateway.postmaster",
            "is not set; mail to postmaster@ and abuse@ must reach a person",
        )
    elif is_reserved(postmaster.rpartition("@")[2]):
        yield (
            "gateway.postmaster",
            f"= {postmaster!r} is at a reserved domain that receives no mail",
        )


def _names(cfg: Config) -> Iterator[Problem]:
    for key, domain in (
        ("gateway.domain", cfg.gateway.domain),
        ("gateway.hostname", cfg.gateway.hostname),
        ("gateway.certification_address", cfg.gateway.certification_address.rpartition("@")[2]),
    ):
        if is_reserved(domain):
            value = getattr(cfg.gateway, key.partition(".")[2])
            yield key, f"= {value!r} is a reserved name (RFC 2606/6761) that receives no mail"


def _public_url(cfg: Config) -> Iterator[Problem]:
    if not cfg.tracking.enabled:
        return
    host = urlsplit(cfg.tracking.public_url).hostname or ""
    if is_loopback_host(host) or is_reserved(host):
        yield (
            "tracking.public_url",
            f"= {cfg.tracking.public_url!r} cannot be reached by recipients; "
            "give the https:// address of your proxy",
        )


CHECKS: tuple[Callable[[Config], Iterator[Problem]], ...] = (_postmaster, _names, _public_url)
"""Each yields (key, problem) for a production config that must not start."""


def check_production(cfg: Config) -> None:
    """Raise :class:`ConfigError` if ``cfg`` is in production mode and not fit for it."""
    if cfg.gateway.mode != "production":
        return
    problems = [problem for check in CHECKS for problem in check(cfg)]
    if not problems:
        return
    where = str(cfg.source or "(embedded defaults)")
    (key, why), rest = problems[0], problems[1:]
    more = f" (then also: {', '.join(k for k, _ in rest)})" if rest else ""
    raise ConfigError(f"{where}: {key} {why}; production mode refuses to start{more}")
