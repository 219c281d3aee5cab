"""What ``[gateway] mode = "production"`` demands of the config before the gateway starts.

Development (the shipped config.toml, the tests) runs on one machine with names that
never reach the Internet. Production must not: a gateway whose domain is a reserved
name, whose postmaster is nobody, or whose public URL points at itself, loses mail or
evidence quietly. :func:`check_production` is the one place such checks live; a later
requirement of production is one more function in :data:`CHECKS`.

Reserved names (RFC 2606 §2-3, RFC 6761 §6): the top-level domains ``.test``,
``.example``, ``.invalid``, ``.localhost`` and the second-level ``example.com``,
``example.net``, ``example.org``; and names that only resolve inside a site: ``.local``
(RFC 6762, mDNS), ``home.arpa`` (RFC 8375) and ``.internal`` (reserved by ICANN in 2024
for private use).

A public URL must name a host recipients can reach: not a loopback, private,
link-local or unspecified address in any of its spellings (``127.1``, ``2130706433``,
``0x7f000001``, ``[::ffff:127.0.0.1]`` all are 127.0.0.1 to the resolver, as
``inet_aton(3)`` reads them).

Evidence must be signed by the operator's own certificate and timestamped by a real
timestamp authority: the development CA and the in-process TSA that a first start makes
prove nothing to a court, whether the TSA's key is a file or in the operator's token;
nor does a server certificate made by that CA prove the host's name to a client or a
sending MTA that checks it (RFC 7672, MTA-STS RFC 8461). A local mailbox (``[sink]``)
that catches the example domains has no place on a production host.

Exceptions::

    ConfigError  -- one line naming the first key to fix and the file, then the others
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

from relay.config import DEVELOPMENT_PROVIDER, Config, ConfigError

RESERVED_TLDS = ("test", "example", "invalid", "localhost", "local", "internal")
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "home.arpa")


def is_reserved(domain: str) -> bool:
    """True for a domain that never receives real mail (RFC 2606, RFC 6761)."""
    name = domain.lower().rstrip(".")
    labels = name.split(".")
    return labels[-1] in RESERVED_TLDS or any(
        name == d or name.endswith("." + d) for d in RESERVED_DOMAINS
    )


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as an IP address, in every spelling a resolver accepts (``127.1``,
    ``2130706433``, ``0x7f000001``: ``inet_aton(3)``), an IPv4-mapped IPv6 address as its
    IPv4 address; None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host or not all(c in "0123456789abcdefx." for c in host):
            return None
        try:
            address = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_unreachable_host(host: str) -> bool:
    """True for ``localhost``, a ``.localhost`` name, or an IP address that is not
    global (loopback, private, link-local, unspecified, reserved), however spelled."""
    host = host.lower().strip("[]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip_address(host)
    return address is not None and not address.is_global


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
    """Every certificate prints its verification URL, and tracked copies carry links:
    both under ``[web] public_url`` (``[tracking] public_url`` while deprecated)."""
    host = urlsplit(cfg.web.public_url).hostname or ""
    if is_unreachable_host(host) or is_reserved(host):
        key = "web.public_url"
        if any("tracking.public_url" in d for d in cfg.deprecations):
            key = "tracking.public_url"
        yield (
            key,
            f"= {cfg.web.public_url!r} cannot be reached by recipients or readers of a "
            "certificate; give the https:// address of your proxy",
        )


def _provider(cfg: Config) -> Iterator[Problem]:
    if cfg.provider.name == DEVELOPMENT_PROVIDER:
        yield (
            "provider.name",
            "is the development provider's; give the legal name of the provider that "
            "issues the certificates (and provider.legal_id)",
        )


def _evidence_keys(cfg: Config) -> Iterator[Problem]:
    signing = cfg.signing
    # A key in an HSM (signing.pkcs11_*) is the operator's own as much as a key file.
    own = signing.pkcs12 or (signing.cert and signing.key) or signing.pkcs11_module
    if not own:
        yield (
            "signing.cert",
            "is not set: certificates would be signed by the development CA, which no "
            "one trusts; give your signing certificate and key (or signing.pkcs12, or "
            "a key in an HSM: signing.pkcs11_module)",
        )
    if not signing.tsa_url:
        # Its key in the token (signing.pkcs11_tsa_key_label) changes nothing: its
        # certificate is still the development CA's.
        in_token = (
            " (its key in the token or not: the development CA certifies it)"
            if signing.pkcs11_tsa_key_label
            else ""
        )
        yield (
            "signing.tsa_url",
            "is not set: certificates would be timestamped by the development timestamp "
            f"authority{in_token}; give a qualified or trusted RFC 3161 TSA's URL",
        )


def _sink(cfg: Config) -> Iterator[Problem]:
    if cfg.sink.listen:
        yield (
            "sink.listen",
            f"= {cfg.sink.listen!r} starts the development mailbox; leave it empty",
        )


def _tls(cfg: Config) -> Iterator[Problem]:
    if not (cfg.tls.cert and cfg.tls.key):
        yield (
            "tls.cert" if not cfg.tls.cert else "tls.key",
            "is not set: the server certificate would be made by the development CA, "
            "which no client trusts; give the certificate and key for gateway.hostname "
            "(e.g. from ACME)",
        )


CHECKS: tuple[Callable[[Config], Iterator[Problem]], ...] = (
    _postmaster,
    _names,
    _public_url,
    _provider,
    _evidence_keys,
    _sink,
    _tls,
)
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
