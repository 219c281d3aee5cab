"""The console's administration pages: an organisation's admins add, disable, enable and
reset its users, and bind and unbind its domains (docs/console.md; who may is
:mod:`relay.roles`: ``manage-users``, ``bind-domains``).

A domain is bound only with a proof of control: asking makes a pending claim, the page
shows the DNS TXT record to publish, and "Verify" looks it up and binds the domain
(:mod:`relay.web.org_admin`). Users are added only at the organisation's bound domains,
never at the gateway's own addresses.

A new user's password, and a reset one, is made here (random, 120 bits) and shown once;
a reset ends the user's console sessions (``credentials_changed``), and so does
disabling. An admin acts only on the users of its own organisation: any other address
is answered as one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time

from aiohttp import web

from certifier.message import parse_single_mailbox
from relay.addresses import GatewayAddresses
from relay.logs import printable
from relay.queue.orgs import DomainClaim
from relay.queue.states import Role
from relay.roles import Action
from relay.smtpd.users import hash_password, normalise_address
from relay.web.console.base import N_, Console, Visit
from relay.web.org_admin import (
    Proof,
    claim_refusal,
    look_up,
    new_token,
    record_name,
    record_value,
    report_strangers,
    user_refusal,
)

log = logging.getLogger("certifica/console")

ROLES = {
    Role.ADMIN: N_("Administrator"),
    Role.SENDER: N_("Sender"),
    Role.AUDITOR: N_("Auditor"),
}
NO_USER = N_("There is no such user in your organisation.")
TAKEN = N_(
    "This domain belongs to another organisation. If it is yours, please ask the "
    "service's operator."
)


def new_password() -> str:
    """A password to hand over once: 120 random bits in 20 URL-safe characters."""
    return secrets.token_urlsafe(15)


def _domain(text: str) -> str | None:
    """A domain name as ``org_domains`` keeps it (lower case, A-labels), or None."""
    name = text.strip().rstrip(".").lower()
    if not name or "." not in name or len(name) > 253:
        return None
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = ascii_name.split(".")
    if any(
        not label or len(label) > 63 or not all(ch.isalnum() or ch == "-" for ch in label)
        for label in labels
    ):
        return None
    return ascii_name


class Admin:
    """Users and domains of the admin's organisation."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.addresses = GatewayAddresses.from_config(console.cfg)

    def add_routes(self, app: web.Application) -> None:
        c = self.console
        users, domains = Action.MANAGE_USERS, Action.BIND_DOMAINS
        app.router.add_get("/app/users", c.guarded(self.users, action=users))
        app.router.add_post("/app/users", c.guarded(self.add_user, action=users))
        app.router.add_post("/app/users/disable", c.guarded(self.disable, action=users))
        app.router.add_post("/app/users/enable", c.guarded(self.enable, action=users))
        app.router.add_post("/app/users/reset", c.guarded(self.reset, action=users))
        app.router.add_get("/app/domains", c.guarded(self.domains, action=domains))
        app.router.add_post("/app/domains", c.guarded(self.bind, action=domains))
        app.router.add_post("/app/domains/verify", c.guarded(self.verify, action=domains))
        app.router.add_post("/app/domains/unbind", c.guarded(self.unbind, action=domains))

    # --- users --------------------------------------------------------------------------

    async def users(
        self, request: web.Request, visit: Visit, status: int = 200, error: str = ""
    ) -> web.Response:
        c = self.console
        org = visit.account.org
        members = await c.store.org_accounts(org)
        done = {
            "disabled": N_("The user is disabled: it can no longer send nor log in."),
            "enabled": N_("The user is enabled again."),
        }.get(request.query.get("done", ""), "")
        return c.page(
            visit,
            "users.html",
            status,
            members=members,
            roles=[(str(r), visit.gettext(label)) for r, label in ROLES.items()],
            role_names={str(r): visit.gettext(label) for r, label in ROLES.items()},
            org_name=visit.account.org_name,
            error=visit.gettext(error) if error else "",
            note=visit.gettext(done) if done else "",
        )

    async def member(self, visit: Visit, form: object) -> str | None:
        """The address the form names, when it is a user of the admin's organisation."""
        address = normalise_address(str(getattr(form, "get", lambda *_: "")("address", "")))
        found = await self.console.store.account(address) if address else None
        return address if found is not None and found.org == visit.account.org else None

    async def add_user(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        form = await request.post()
        text = str(form.get("address", "")).strip()
        parsed = parse_single_mailbox(text)
        if parsed is None or parsed != text:
            return await self.users(request, visit, 400, N_("That is not a single e-mail address."))
        try:
            role = Role(str(form.get("role", "")))
        except ValueError:
            return await self.users(request, visit, 400, N_("Choose a role."))
        address = normalise_address(parsed)
        org = visit.account.org
        refusal = user_refusal(self.addresses, await c.store.org_domains(org), address)
        if refusal is not None:
            log.info(
                "console: <%s> may not add <%s> to %s (%s)",
                visit.account.address,
                printable(address, 200),
                org,
                "the gateway's own" if self.addresses.is_reserved(address) else "not its domain",
            )
            return await self.users(request, visit, 422, refusal)
        password = new_password()
        hashed = await asyncio.to_thread(hash_password, password)
        added = await asyncio.to_thread(
            c.store.add_user, address, hashed, time.time(), org=org, role=str(role)
        )
        if not added:
            return await self.users(
                request, visit, 409, N_("This address is already a user of the service.")
            )
        log.info("console: <%s> added <%s> to %s as %s", visit.account.address, address, org, role)
        return c.page(
            visit,
            "password.html",
            title=visit.gettext(N_("User added")),
            address=address,
            password=password,
        )

    async def set_disabled(
        self, request: web.Request, visit: Visit, disabled: bool
    ) -> web.StreamResponse:
        c = self.console
        address = await self.member(visit, await request.post())
        if address is None:
            return await self.users(request, visit, 404, NO_USER)
        if disabled and address == visit.account.address:
            return await self.users(request, visit, 409, N_("You cannot disable your own account."))
        await asyncio.to_thread(c.store.set_membership, address, disabled=disabled, now=time.time())
        log.info(
            "console: <%s> %s <%s>",
            visit.account.address,
            "disabled" if disabled else "enabled",
            address,
        )
        return c.redirect(visit, "users?done=" + ("disabled" if disabled else "enabled"))

    async def disable(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return await self.set_disabled(request, visit, True)

    async def enable(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        return await self.set_disabled(request, visit, False)

    async def reset(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        address = await self.member(visit, await request.post())
        if address is None:
            return await self.users(request, visit, 404, NO_USER)
        password = new_password()
        hashed = await asyncio.to_thread(hash_password, password)
        await c.store.replace_password(address, hashed, time.time())
        log.info("console: <%s> reset the password of <%s>", visit.account.address, address)
        return c.page(
            visit,
            "password.html",
            title=visit.gettext(N_("Password reset")),
            address=address,
            password=password,
        )

    # --- domains ------------------------------------------------------------------------

    async def domains(
        self, request: web.Request, visit: Visit, status: int = 200, error: str = ""
    ) -> web.Response:
        c = self.console
        org = visit.account.org
        bound = await c.store.org_domains(org)
        pending = [
            {"domain": p.domain, "name": record_name(p.domain), "value": record_value(p.token)}
            for p in await c.store.domain_claims(org)
        ]
        done = {
            "bound": N_("The domain is bound to your organisation."),
            "claimed": N_(
                "Publish the DNS record shown for the domain, then press Verify. A new "
                "record may take a few minutes to be seen."
            ),
        }.get(request.query.get("done", ""), "")
        return c.page(
            visit,
            "domains.html",
            status,
            domains=bound,
            pending=pending,
            org_name=visit.account.org_name,
            error=visit.gettext(error) if error else "",
            note=visit.gettext(done) if done and not error else "",
        )

    async def bind(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        form = await request.post()
        domain = _domain(str(form.get("domain", "")))
        if domain is None:
            return await self.domains(request, visit, 400, N_("That is not a domain name."))
        refusal = claim_refusal(self.addresses, domain)
        if refusal is not None:
            return await self.domains(request, visit, 422, refusal)
        org = visit.account.org
        claimed = await asyncio.to_thread(
            c.store.claim_domain, org, domain, new_token(), time.time(), visit.account.address
        )
        if isinstance(claimed, str):
            return await self.domains(request, visit, 409, TAKEN)
        if claimed is None:  # bound to this organisation already
            return c.redirect(visit, "domains")
        log.info("console: <%s> asked to bind %s to %s", visit.account.address, domain, org)
        return c.redirect(visit, "domains?done=claimed")

    async def verify(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        c = self.console
        form = await request.post()
        domain = _domain(str(form.get("domain", "")))
        org = visit.account.org
        claim: DomainClaim | None = None
        if domain is not None:
            claim = next((p for p in await c.store.domain_claims(org) if p.domain == domain), None)
        if claim is None:
            return await self.domains(
                request, visit, 404, N_("Your organisation has not asked to bind that domain.")
            )
        dns = c.cfg.dns
        proof = await look_up(dns.nameservers, dns.timeout, claim.domain, claim.token)
        if proof is Proof.UNKNOWN:
            return await self.domains(
                request,
                visit,
                503,
                N_("The DNS did not answer. Please try again in a few minutes."),
            )
        if proof is Proof.MISSING:
            return await self.domains(
                request,
                visit,
                409,
                N_(
                    "The DNS record was not found yet. Check its name and text; a new "
                    "record may take a few minutes to be seen, then try again."
                ),
            )
        why = await asyncio.to_thread(
            c.store.confirm_claim, org, claim.domain, claim.token, time.time()
        )
        if why == "claim":
            return await self.domains(
                request, visit, 404, N_("Your organisation has not asked to bind that domain.")
            )
        if why is not None:
            return await self.domains(request, visit, 409, TAKEN)
        log.info(
            "console: <%s> bound %s to %s (DNS record %s found)",
            visit.account.address,
            claim.domain,
            org,
            record_name(claim.domain),
        )
        await report_strangers(c.store, org, claim.domain)
        return c.redirect(visit, "domains?done=bound")

    async def unbind(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """Unbind a bound domain, or withdraw a pending request for one."""
        c = self.console
        form = await request.post()
        domain = _domain(str(form.get("domain", "")))
        org = visit.account.org
        if domain is not None and await asyncio.to_thread(c.store.withdraw_claim, org, domain):
            log.info("console: <%s> withdrew the claim of %s", visit.account.address, domain)
            return c.redirect(visit, "domains")
        if domain is None or not await asyncio.to_thread(c.store.unbind_domain, org, domain):
            return await self.domains(
                request, visit, 404, N_("That domain is not bound to your organisation.")
            )
        log.info("console: <%s> unbound %s from %s", visit.account.address, domain, org)
        return c.redirect(visit, "domains")
