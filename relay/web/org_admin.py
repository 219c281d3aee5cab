"""What an organisation's admin may bind and whom it may add (docs/accounts.md, "Domains"
and "Users and roles"); the web console and the JSON API both ask here.

**Domains need a proof.** An admin's request to bind a domain is a pending claim
(:class:`relay.queue.orgs.DomainClaim`) with a random token. It binds the domain only once
the domain publishes the token in the DNS::

    _certifica.<domain>.  TXT  "certifica-domain=<token>"

the pattern of the ACME protocol's dns-01 challenge (RFC 8555 §8.4): a label of our own
under the domain, a random value only the claimant knows, looked up when the admin says
it is there. Whoever can publish it controls the domain's DNS, and so its mail. The
lookup goes through the gateway's resolver (``[dns] nameservers`` and ``timeout``, as
the MX's SPF and DKIM checks in :mod:`relay.smtpd.authn`), on a worker thread, so the
event loop never waits for the DNS. The gateway's own domains, and names below them,
are never bound by an admin.

**Users only at the organisation's domains.** An admin adds users only at a domain bound
to its organisation, and never at one of the gateway's own addresses
(:meth:`relay.addresses.GatewayAddresses.is_reserved`): otherwise it could send
certified mail as someone of another organisation, or as the gateway itself. The
operator's ``certifica users add`` may add any address but the gateway's own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Collection, Sequence

import dns.exception
import dns.name
import dns.resolver

from relay.addresses import GatewayAddresses
from relay.delivery.routing import parse_nameservers
from relay.logs import printable
from relay.queue.orgs import normalise_domain
from relay.queue.store import Store

log = logging.getLogger("certifica/web")

RECORD_LABEL = "_certifica"
RECORD_PREFIX = "certifica-domain="
TOKEN_BYTES = 16  # 128 random bits, 32 hex digits: case-proof, as DNS tools may fold case


def N_(message: str) -> str:
    """Marks a text of the ``web`` catalog; the console translates it, the API says it."""
    return message


OWN_DOMAIN = N_("This domain is the service's own: it cannot be bound to an organisation.")
OWN_ADDRESS = N_("This address is one of the service's own addresses: it cannot be a user.")
OUTSIDE_DOMAINS = N_(
    "You can add users only at the domains bound to your organisation. For any other "
    "address, please ask the service's operator."
)


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def record_name(domain: str) -> str:
    """Where the proof of ``domain`` is published: ``_certifica.<domain>``."""
    return f"{RECORD_LABEL}.{domain}"


def record_value(token: str) -> str:
    """The text of the TXT record that proves a claim: ``certifica-domain=<token>``."""
    return RECORD_PREFIX + token


class Proof(enum.StrEnum):
    """What the DNS said of a claim's record."""

    FOUND = "found"  # the TXT record with the claim's token is published
    MISSING = "missing"  # the name or the record does not exist, or has another value
    UNKNOWN = "unknown"  # the DNS did not answer (timeout, SERVFAIL): try again later


def claim_refusal(addresses: GatewayAddresses, domain: str) -> str | None:
    """Why an admin may not claim ``domain`` (normalised), or None."""
    if any(domain == own or domain.endswith("." + own) for own in addresses.domains):
        return OWN_DOMAIN
    return None


def user_refusal(addresses: GatewayAddresses, bound: Collection[str], address: str) -> str | None:
    """Why an admin whose organisation has the domains ``bound`` may not add ``address``
    (a single mailbox, normalised), or None."""
    if addresses.is_reserved(address):
        return OWN_ADDRESS
    try:
        domain = normalise_domain(address.rpartition("@")[2])
    except ValueError:
        return OUTSIDE_DOMAINS
    return None if domain in bound else OUTSIDE_DOMAINS


async def report_strangers(store: Store, org: str, domain: str) -> None:
    """Once ``org`` proved ``domain``: one line naming the users of other organisations
    at it. They stay theirs (docs/accounts.md, "Which organisation a message belongs
    to"); whether they should is the operator's to decide."""
    others = await store.domain_strangers(org, domain)
    if others:
        log.warning(
            "domain %s now bound to %s has users of other organisations, which keep "
            "them: %s (certifica users set ADDR --org, or remove them)",
            domain,
            org,
            printable(", ".join(others), 400),
        )


async def look_up(nameservers: Sequence[str], timeout: float, domain: str, token: str) -> Proof:
    """Whether ``domain`` publishes the proof of ``token`` (on a worker thread)."""
    return await asyncio.to_thread(_look_up, tuple(nameservers), timeout, domain, token)


def _look_up(nameservers: tuple[str, ...], timeout: float, domain: str, token: str) -> Proof:
    try:
        resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = parse_nameservers(nameservers)
        resolver.timeout = min(resolver.timeout, timeout)  # each try; lifetime: in all
        answer = resolver.resolve(
            dns.name.from_text(record_name(domain)), "TXT", search=False, lifetime=timeout
        )
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
        return Proof.MISSING
    except (dns.exception.DNSException, OSError, ValueError):
        return Proof.UNKNOWN
    wanted = record_value(token)
    for record in answer:
        # a TXT record is one or more strings, joined as one text (RFC 7208 §3.3 does so)
        text = b"".join(record.strings).decode("ascii", "replace").strip()
        if text == wanted:
            return Proof.FOUND
    return Proof.MISSING
