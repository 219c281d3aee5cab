"""Where mail for a domain goes: a fixed route from config, or the domain's MX (RFC 5321 §5.1).

Two implementations behind one interface (STYLE.md, "Interfaces where the world
differs"): :class:`Router` asks ``[delivery.routes]`` first (``"*"`` matches any other
domain) and otherwise resolves MX records with dnspython, by preference, falling back
to the domain's A/AAAA records when it has no MX, and failing at once on a null MX
(RFC 7505).

Exceptions::

    RouteError(temporary=True)   -- DNS trouble (SERVFAIL, timeout): defer and retry
    RouteError(temporary=False)  -- no such domain, null MX: the recipient fails
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from relay.config import Config, Endpoint, parse_endpoint


class RouteError(Exception):
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


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class Router:
    """Resolve a recipient domain to the ordered list of hops to try."""

    def __init__(self, cfg: Config) -> None:
        where = str(cfg.source)
        self._routes: dict[str, Endpoint] = {
            domain.lower(): parse_endpoint(target, f"delivery.routes.{domain}", where)
            for domain, target in cfg.delivery.routes.items()
        }
        self._resolver = dns.asyncresolver.Resolver(configure=not cfg.dns.nameservers)
        if cfg.dns.nameservers:
            servers, ports = [], set()
            for server in cfg.dns.nameservers:
                if server.count(":") == 1:
                    host, port = server.split(":")
                    servers.append(host)
                    ports.add(int(port))
                else:
                    servers.append(server.strip("[]"))
            self._resolver.nameservers = servers
            if ports:
                self._resolver.port = ports.pop()
        self._resolver.lifetime = cfg.dns.timeout

    def fixed_route(self, domain: str) -> Endpoint | None:
        return self._routes.get(domain.lower()) or self._routes.get("*")

    async def resolve(self, domain: str) -> list[Hop]:
        route = self.fixed_route(domain)
        if route is not None:
            return await self._addresses(route.host, route.port)
        return await self._mx(domain.lower())

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

    async def _mx(self, domain: str) -> list[Hop]:
        try:
            answer = await self._resolver.resolve(domain, "MX")
            records = sorted(answer, key=lambda r: r.preference)
            if len(records) == 1 and str(records[0].exchange) == ".":
                raise RouteError(f"{domain} accepts no mail (null MX, RFC 7505)", temporary=False)
            hosts = [str(r.exchange).rstrip(".") for r in records]
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"the domain {domain} does not exist", temporary=False) from None
        except dns.resolver.NoAnswer:
            hosts = [domain]  # RFC 5321 §5.1: no MX, use the domain's address records
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            raise RouteError(
                f"DNS lookup for {domain} failed; will retry", temporary=True
            ) from None
        hops: list[Hop] = []
        for host in hosts:
            hops.extend(await self._host_addresses(host))
        if not hops:
            raise RouteError(f"no address found for the mail servers of {domain}", temporary=True)
        return hops

    async def _host_addresses(self, host: str) -> list[Hop]:
        hops: list[Hop] = []
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(host, rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout):
                continue
            hops.extend(Hop(host, r.address, 25) for r in answer)
        return hops
