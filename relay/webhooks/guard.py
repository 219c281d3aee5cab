"""Which webhook URLs the gateway may POST to: no server-side request forgery.

An organisation's administrator chooses a webhook's URL, and the gateway then makes
requests to it from inside the operator's network. Unchecked, that URL could reach what
only the gateway can reach: a cloud's metadata service (``169.254.169.254``), the admin
listener on loopback, a database on a private address. So a URL is checked twice
(docs/webhooks.md, "Which URLs are refused"):

* when it is added (``certifica webhook add``, :func:`url_problem` and
  :func:`resolved_problem`): ``https`` (``http`` too in development mode), no user
  name or password in it, at most 2048 characters, and its host, a literal address or
  every address its name resolves to, is a public unicast one;
* at each send (:class:`CheckedResolver`): the name is resolved once, every address is
  checked, and the connection goes to one of those checked addresses, with the URL's
  host name as TLS SNI and ``Host``: a name that resolved to a public address when it
  was added and to ``10.0.0.1`` now (DNS rebinding) is refused at the send, and
  redirects are never followed (:mod:`relay.webhooks.sender`).

Refused: loopback, private (RFC 1918, RFC 4193), shared (RFC 6598), link-local,
multicast, reserved, unspecified and documentation addresses, IPv4 and IPv6, and the
IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:10.0.0.1``, NAT64
``64:ff9b::/96`` RFC 6052, 6to4 ``2002::/16`` RFC 3056, Teredo RFC 4380), whose IPv4
address is checked too. In development mode (``[gateway] mode``) loopback is allowed,
so that the tests and ``make run`` can run a receiver on this machine; nothing else is.

Exceptions::

    ForbiddenAddress  -- a host that resolves to an address the gateway will not reach
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from certifier.errors import PermanentError

MAX_URL = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")

_ONLY_PUBLIC = {
    False: "webhooks are only sent to public addresses",
    True: "webhooks are only sent to public addresses (and loopback, in development mode)",
}


class ForbiddenAddress(PermanentError):
    """A webhook's host is, or resolves to, an address the gateway does not POST to."""


def _embedded(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), or None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address
    return None


def why_forbidden(address: Address, *, allow_loopback: bool) -> str | None:
    """What kind of address ``address`` is, when the gateway will not POST to it, else None."""
    inner = _embedded(address)
    if inner is not None:
        reason = why_forbidden(inner, allow_loopback=allow_loopback)
        return f"an IPv6 form of {inner}, {reason}" if reason else None
    if address.is_loopback:
        return None if allow_loopback else "a loopback address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if not address.is_global:  # shared address space (RFC 6598), and the like
        return "a reserved address"
    return None


def literal_address(host: str) -> Address | None:
    """``host`` as an IP address in any spelling a resolver accepts (``127.1``,
    ``2130706433``, ``0x7f000001``, as ``inet_aton(3)`` reads them), else None (a name)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(c in "0123456789abcdefx." for c in host.lower()):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def url_problem(url: str, *, production: bool) -> str | None:
    """What is wrong with ``url`` as a webhook's URL, without resolving its host: a
    sentence, or None when its form is acceptable."""
    if len(url) > MAX_URL:
        return f"the URL is longer than {MAX_URL} characters"
    if any(c.isspace() or not c.isprintable() for c in url):
        return "the URL holds spaces or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL cannot be read (its host or port is malformed)"
    schemes = ("https",) if production else ("https", "http")
    if parts.scheme.lower() not in schemes:
        if production:
            return "the URL must start with https:// (production mode)"
        return "the URL must start with https:// or http://"
    if parts.username is not None or parts.password is not None:
        return "the URL must not hold a user name or password (the signature authenticates)"
    host = parts.hostname or ""
    if not host:
        return "the URL names no host"
    if port == 0:
        return "the URL's port must not be 0"
    address = literal_address(host)
    if address is not None:
        why = why_forbidden(address, allow_loopback=not production)
        if why:
            return f"{host} is {why}; {_ONLY_PUBLIC[not production]}"
    elif host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
        if production:
            return f"{host} is this machine; {_ONLY_PUBLIC[False]}"
    return None


def check_addresses(host: str, addresses: list[str], *, allow_loopback: bool) -> None:
    """Raise :class:`ForbiddenAddress` when any of ``addresses`` (what ``host`` resolved
    to) is one the gateway does not POST to: a name with one private address among
    public ones could be steered to it."""
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        why = why_forbidden(address, allow_loopback=allow_loopback)
        if why:
            raise ForbiddenAddress(
                f"{host} resolves to {address}, {why}; {_ONLY_PUBLIC[allow_loopback]}"
            )


def resolved_problem(url: str, *, production: bool) -> str | None:
    """Resolve the host of ``url`` (a form :func:`url_problem` accepted) and say what is
    wrong with its addresses, or None. A name that does not resolve is a problem too."""
    host = urlsplit(url).hostname or ""
    if literal_address(host) is not None:
        return None  # checked by url_problem
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as err:
        return f"{host} does not resolve ({getattr(err, 'strerror', None) or err})"
    try:
        check_addresses(host, [str(i[4][0]) for i in infos], allow_loopback=not production)
    except ForbiddenAddress as err:
        return str(err)
    return None


class CheckedResolver(ThreadedResolver):
    """aiohttp's resolver, checking every address before the connection is made.

    aiohttp connects only to the addresses its resolver returns, and keeps the URL's
    host for TLS SNI, certificate checking and ``Host``: resolving here, once, and
    refusing when any address is forbidden, is what defeats DNS rebinding (the address
    checked is the address connected to). A literal address in the URL never reaches
    a resolver; :func:`url_problem` checks it before each send."""

    def __init__(self, *, allow_loopback: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.allow_loopback = allow_loopback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await super().resolve(host, port, family)
        check_addresses(host, [r["host"] for r in found], allow_loopback=self.allow_loopback)
        return found
