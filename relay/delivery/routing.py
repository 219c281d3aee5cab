"""Where mail for a domain goes: a fixed route from config, or the domain's MX (RFC 5321 §5.1).

The gateway's own domains (:func:`relay.addresses.local_domains`) go to its own MX
listener, whatever the DNS or the routes say: it never looks itself up (a submitted
message to ``postmaster@<domain>`` or a reception address is handed to the MX, which
decides on it as on any other). Otherwise two implementations behind one interface:
:class:`Router` asks
``[delivery.routes]`` first (``"*"`` matches any other domain) and otherwise looks the
domain up in the DNS with dnspython's asynchronous resolver, through ``[dns]
nameservers`` when set and within ``[dns] timeout``:

* MX records by preference, equal preferences in random order (RFC 5321 §5.1), each
  MX host's A then AAAA records, every hop on ``[delivery] smtp_port``;
* no MX records: the domain's own A/AAAA records (the implicit MX);
* a null MX, the single record ``0 .``: the domain accepts no mail (RFC 7505);
* MX targets that are IP literals or have no address are skipped and logged;
* at most ``address_limit`` hops (Postfix's ``smtp_mx_address_limit``, 5).

Exceptions::

    RouteError(temporary=True)   -- SERVFAIL, timeout, unreachable resolver: defer, retry
    RouteError(temporary=False)  -- NXDOMAIN, null MX, no usable mail server: fail now
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from certifier.errors import DeliveryError, TemporaryError
from relay.addresses import local_domains
from relay.config import Config, Endpoint, parse_endpoint
from relay.logs import printable

log = logging.getLogger("certifica/dns")

MX_ADDRESS_LIMIT = 5
"""Hops tried per attempt at most, like Postfix's ``smtp_mx_address_limit``."""


class RouteError(DeliveryError):
    """No hop to try now: ``temporary`` says whether trying later may help."""

    def __init__(self, text: str, temporary: bool) -> None:
        super().__init__(text)
        self.text = text
        self.temporary = temporary


@dataclass(frozen=True)
class Hop:
    """One server to try: the name it is known by, an IP address, a port."""

    host: str
    ip: str
    port: int


class _Temporary(TemporaryError):
    """A lookup that may work later (SERVFAIL, timeout); carries the reason."""


# Lookups whose answer is final: the name does not exist, or has no such record.
_ABSENT = (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)
# A name that cannot be looked up at all (label too long, bad IDNA, ...): permanent.
_BAD_NAME = (
    dns.name.EmptyLabel,
    dns.name.LabelTooLong,
    dns.name.NameTooLong,
    dns.name.IDNAException,
)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reason(err: BaseException) -> str:
    """A short, stable description of a DNS failure, for logs and certificates."""
    if isinstance(err, dns.exception.Timeout):
        return "timed out"
    if isinstance(err, dns.resolver.NoNameservers):
        return "SERVFAIL or no usable name server"
    return err.__class__.__name__


def parse_nameservers(servers: tuple[str, ...]) -> list[dns.nameserver.Nameserver]:
    """``[dns] nameservers`` entries: ``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``."""
    result: list[dns.nameserver.Nameserver] = []
    for server in servers:
        host, port = server, 53
        if server.startswith("["):
            host, _, rest = server[1:].partition("]")
            if rest.startswith(":"):
                port = int(rest[1:])
        elif server.count(":") == 1:
            host, text = server.split(":")
            port = int(text)
        result.append(dns.nameserver.Do53Nameserver(host, port))
    return result


def by_preference(records: list[tuple[int, str]]) -> list[str]:
    """MX hosts, lowest preference first, equal preferences shuffled (RFC 5321 §5.1)."""
    shuffled = list(records)
    random.shuffle(shuffled)
    return [host for _, host in sorted(shuffled, key=lambda r: r[0])]


class Router:
    """Resolve a recipient domain to the ordered list of hops to try."""

    def __init__(self, cfg: Config, *, address_limit: int = MX_ADDRESS_LIMIT) -> None:
        where = str(cfg.source)
        self._routes: dict[str, Endpoint] = {
            domain.lower(): parse_endpoint(target, f"delivery.routes.{domain}", where)
            for domain, target in cfg.delivery.routes.items()
        }
        self._local = local_domains(cfg)
        self._local_mx: Endpoint | None = None
        self._smtp_port = cfg.delivery.smtp_port
        self._limit = max(1, address_limit)
        self._resolver = dns.asyncresolver.Resolver(configure=not cfg.dns.nameservers)
        if cfg.dns.nameservers:
            self._resolver.nameservers = parse_nameservers(cfg.dns.nameservers)
        # One query's whole life (all servers, retries) stays within [dns] timeout.
        self._resolver.lifetime = cfg.dns.timeout
        self._resolver.timeout = min(self._resolver.timeout, cfg.dns.timeout)

    def route_local(self, mx: Endpoint) -> None:
        """Hand the gateway's own domains to its MX listener, bound at ``mx``."""
        # A wildcard bind is reached on the loopback address of its family.
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
        host = wildcard.get(mx.host, mx.host)
        self._local_mx = Endpoint(host, mx.port)

    def fixed_route(self, domain: str) -> Endpoint | None:
        if domain.lower().rstrip(".") in self._local:
            return self._local_mx
        return self._routes.get(domain.lower()) or self._routes.get("*")

    async def resolve(self, domain: str) -> list[Hop]:
        """The hops to try for ``domain``, in order; raises :class:`RouteError`."""
        if domain.lower().rstrip(".") in self._local and self._local_mx is None:
            raise RouteError(
                f"{domain} is the gateway's own domain and its MX listener ([listen] mx) "
                "is off: it receives no mail",
                temporary=False,
            )
        route = self.fixed_route(domain)
        if route is not None:
            # At debug level ([log] level, which a reload changes): which route a domain
            # took, when a changed [delivery.routes] seems not to be used.
            log.debug("%s: fixed route %s", printable(domain, 200), route)
            return (await self._addresses(route.host, route.port))[: self._limit]
        domain = domain.lower().rstrip(".")
        if domain.startswith("[") and domain.endswith("]"):
            return self._literal(domain)
        return await self._mx(domain)

    # -- fixed routes ------------------------------------------------------------------
    async def _addresses(self, host: str, port: int) -> list[Hop]:
        if _is_ip(host):
            return [Hop(host, host, port)]
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise RouteError(f"cannot resolve {host}: {err.strerror}", temporary=True) from None
        seen: list[str] = []
        for info in infos:
            ip = str(info[4][0])
            if ip not in seen:
                seen.append(ip)
        return [Hop(host, ip, port) for ip in seen]

    def _literal(self, domain: str) -> list[Hop]:
        """An address literal such as ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (§4.1.3)."""
        text = domain[1:-1]
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        if not _is_ip(text):
            raise RouteError(f"{domain} is not a valid address literal", temporary=False)
        return [Hop(domain, text, self._smtp_port)]

    # -- the DNS -----------------------------------------------------------------------
    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        """One lookup; an error that trying later may cure becomes :class:`_Temporary`."""
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except (*_ABSENT, *_BAD_NAME):
            raise
        except dns.exception.DNSException as err:
            raise _Temporary(f"lookup of {name}/{rdtype} failed ({_reason(err)})") from None

    async def _mx(self, domain: str) -> list[Hop]:
        try:
            answer = await self._query(domain, "MX")
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"the domain {domain} does not exist (NXDOMAIN)", False) from None
        except _BAD_NAME:
            raise RouteError(f"{domain} is not a valid domain name", temporary=False) from None
        except _Temporary as err:
            raise RouteError(f"DNS {err}; will retry", temporary=True) from None
        except dns.resolver.NoAnswer:
            # RFC 5321 §5.1: no MX records, the domain itself is the implicit MX.
            return await self._implicit_mx(domain)
        records = [(r.preference, str(r.exchange).lower()) for r in answer]
        if len(records) == 1 and records[0][1] == ".":
            raise RouteError(f"{domain} does not accept mail (null MX, RFC 7505)", temporary=False)
        hosts: list[str] = []
        for host in by_preference(records):
            host = host.rstrip(".")
            if not host:
                log.info("%s: a null MX among other MX records (RFC 7505 §3); skipped", domain)
            elif _is_ip(host):
                log.info("%s: MX host %s is an IP address, not a name; skipped", domain, host)
            elif host not in hosts:
                hosts.append(host)
        hops, temporary = await self._hops_for(domain, hosts)
        if hops:
            return hops
        if temporary:
            raise RouteError(
                f"no address found for the mail servers of {domain}: "
                f"DNS {temporary[0]}; will retry",
                temporary=True,
            )
        raise RouteError(
            f"none of the MX hosts of {domain} has an address "
            f"({', '.join(hosts) or 'no usable MX host'})",
            temporary=False,
        )

    async def _implicit_mx(self, domain: str) -> list[Hop]:
        hops, temporary = await self._hops_for(domain, [domain])
        if hops:
            return hops
        if temporary:
            raise RouteError(f"DNS {temporary[0]}; will retry", temporary=True)
        raise RouteError(
            f"{domain} has no MX record and no address record: it does not accept mail",
            temporary=False,
        )

    async def _hops_for(self, domain: str, hosts: list[str]) -> tuple[list[Hop], list[str]]:
        """Hops for ``hosts`` in order, up to the limit, and the temporary lookup errors."""
        looked_up = await asyncio.gather(*(self._host_addresses(h) for h in hosts))
        hops: list[Hop] = []
        temporary: list[str] = []
        seen: set[str] = set()
        for host, (addresses, problem) in zip(hosts, looked_up, strict=True):
            if problem:
                temporary.append(problem)
                log.info("%s: MX host %s skipped: DNS %s", domain, host, problem)
            elif not addresses:
                log.info("%s: MX host %s has no A or AAAA record; skipped", domain, host)
            for ip in addresses:
                if ip not in seen and len(hops) < self._limit:
                    seen.add(ip)
                    hops.append(Hop(host, ip, self._smtp_port))
        return hops, temporary

    async def _host_addresses(self, host: str) -> tuple[list[str], str | None]:
        """A then AAAA addresses of ``host``; a temporary problem only if none was found."""
        answers = await asyncio.gather(
            self._query(host, "A"), self._query(host, "AAAA"), return_exceptions=True
        )
        addresses: list[str] = []
        problem: str | None = None
        for answer in answers:
            if isinstance(answer, _Temporary):
                problem = problem or str(answer)
            elif isinstance(answer, (*_ABSENT, *_BAD_NAME)):
                continue
            elif isinstance(answer, BaseException):
                raise answer
            else:
                addresses.extend(str(r.address) for r in answer)
        return addresses, (problem if not addresses else None)
