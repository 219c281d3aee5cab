"""The handlers of ``/api/v1/`` (docs/api.md; every path, parameter and answer is in
docs/openapi.yaml, which ``tests/test_api.py`` holds this module to).

Every request passes :meth:`JsonApi.endpoint` first: the client's rate (``[web]
rate_limit``, as the public pages count it), then its bearer token (RFC 6750), then the
role's permission for the operation (:func:`relay.roles.allowed`), and only then the
handler; whatever the handler raises becomes a problem details answer
(:mod:`relay.web.api.problems`), a failure of ours a 500 or 503 with one log line and
never its text. A document, a user or a domain the caller may not see is answered
exactly as one that does not exist (404).

Admins add users only at their organisation's bound domains, and bind a domain only
with a proof of control published in its DNS (:mod:`relay.web.org_admin`): ``PUT
/domains/{domain}`` makes a pending claim (202, with the TXT record to publish), and
``POST /domains/{domain}/verify`` (or the PUT again) looks the record up and binds it.

The operations are the web console's (docs/console.md), on the same functions of the
queue: :mod:`relay.queue.certificates`, :mod:`relay.queue.credits`,
:mod:`relay.queue.orgs`, :mod:`relay.queue.users`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from addendum.http import client_ip, trusted_networks
from certifier.message import parse_single_mailbox
from certifier.outcome import Outcome
from relay.addresses import GatewayAddresses
from relay.config import Config
from relay.logs import printable
from relay.queue.certificates import MAX_PAGE, CertificateInfo, CertificateQuery
from relay.queue.credits import Movement, Statement
from relay.queue.ids import CERTIFICATE_ID
from relay.queue.orgs import Account, DomainClaim
from relay.queue.states import Role
from relay.queue.store import Store
from relay.roles import Action, allowed
from relay.smtpd.users import hash_password, normalise_address
from relay.web.api import params
from relay.web.api.problems import Problem, problem_response
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
from relay.web.ratelimit import RateLimiter, client_key

log = logging.getLogger("certifica/api")

PREFIX = "/api/v1"
REALM = 'Bearer realm="certifica"'
LOOKUP_TIMEOUT = 5.0  # seconds for the database to answer a read, as the public pages wait
PASSWORD_BYTES = 15  # a generated password: 120 random bits, 20 characters of base64url
KINDS = ("sending", "reception", "addendum")
STATUSES = tuple(str(o) for o in Outcome)
USER_ACTIONS = ("disable", "enable", "reset")
CERTIFICATE_PARAMS = frozenset(
    {"since", "until", "recipient", "subject", "status", "kind", "sender", "limit", "offset"}
)

T = TypeVar("T")
Handler = Callable[[web.Request, Account], Awaitable[web.StreamResponse]]
RawHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def rfc3339(moment: float | None) -> str | None:
    """Unix time as an RFC 3339 date-time in UTC (``2026-11-23T10:00:00Z``)."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def answer(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def certificate_json(info: CertificateInfo) -> dict[str, Any]:
    return {
        "id": info.cert_id,
        "queue_id": info.qid,
        "kind": info.kind,
        "status": info.outcome,
        "issued_at": rfc3339(info.issued_at),
        "sender": info.sender,
        "subject": info.subject,
        "recipients": [{"address": r.address, "status": r.status} for r in info.recipients],
        "organisation": info.org,
        "pdf_sha256": info.pdf_sha256,
        "erased": info.erased,
        "pdf": f"{PREFIX}/certificates/{info.cert_id}.pdf",
    }


def account_json(account: Account) -> dict[str, Any]:
    return {
        "address": account.address,
        "role": str(account.role),
        "disabled": account.user_disabled,
        "second_factor": account.totp,
    }


def movement_json(movement: Movement) -> dict[str, Any]:
    return {
        "id": movement.id,
        "time": rfc3339(movement.time),
        "kind": str(movement.kind),
        "amount": movement.amount,
        "balance": movement.balance,
        "product": movement.product,
        "queue_id": movement.qid,
        "units": movement.units,
        "note": movement.note,
        "actor": movement.actor,
        "evidence_seq": movement.evidence_seq,
    }


def claim_json(claim: DomainClaim) -> dict[str, Any]:
    return {
        "organisation": claim.org,
        "domain": claim.domain,
        "state": "pending",
        "record": {
            "name": record_name(claim.domain),
            "type": "TXT",
            "value": record_value(claim.token),
        },
        "requested_at": rfc3339(claim.requested),
        "requested_by": claim.requested_by,
    }


def statement_json(statement: Statement) -> dict[str, Any]:
    return {
        "organisation": statement.org,
        "month": statement.period,
        "opening": statement.opening,
        "closing": statement.closing,
        "balances": statement.balances,
        "movements": [movement_json(m) for m in statement.movements],
    }


class JsonApi:
    """The ``/api/v1/`` routes of the public HTTP listener, sharing one rate limiter."""

    def __init__(self, cfg: Config, store: Store, archive: Path) -> None:
        self.cfg = cfg
        self.store = store
        self.archive = archive
        self.limiter = RateLimiter(cfg.web.rate_limit)
        self.trusted = trusted_networks(cfg.web.trusted_proxies)
        self.addresses = GatewayAddresses.from_config(cfg)

    def add_routes(self, app: web.Application) -> None:
        routes: list[tuple[str, dict[str, tuple[Handler, Action | None]]]] = [
            ("/me", {"GET": (self.me, None)}),
            ("/certificates", {"GET": (self.certificates, Action.SEE_OWN_CERTIFICATES)}),
            (
                "/certificates/{ref}",
                {"GET": (self.certificate, Action.SEE_OWN_CERTIFICATES)},
            ),
            ("/balance", {"GET": (self.balance, Action.SEE_BALANCE)}),
            ("/statement", {"GET": (self.statement, Action.SEE_STATEMENT)}),
            (
                "/users",
                {
                    "GET": (self.users, Action.MANAGE_USERS),
                    "POST": (self.add_user, Action.MANAGE_USERS),
                },
            ),
            ("/users/{address}/{action}", {"POST": (self.user_action, Action.MANAGE_USERS)}),
            ("/domains", {"GET": (self.domains, Action.BIND_DOMAINS)}),
            (
                "/domains/{domain}",
                {
                    "PUT": (self.bind_domain, Action.BIND_DOMAINS),
                    "DELETE": (self.unbind_domain, Action.BIND_DOMAINS),
                },
            ),
            ("/domains/{domain}/verify", {"POST": (self.verify_domain, Action.BIND_DOMAINS)}),
        ]
        for path, methods in routes:
            for method, (handler, action) in methods.items():
                app.router.add_route(method, PREFIX + path, self.endpoint(handler, action))
            allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
            app.router.add_route("*", PREFIX + path, self.limited(self.not_allowed(allow)))
        app.router.add_route("*", "/api/{rest:.*}", self.limited(self.no_such_path))

    # --- what every request passes ----------------------------------------------------

    def limited(self, handler: RawHandler) -> RawHandler:
        """``handler`` behind the client's rate (``[web] rate_limit``; 429 beyond it)."""

        async def counted(request: web.Request) -> web.StreamResponse:
            wait = self.limiter.hit(client_key(client_ip(request, self.trusted)), time.monotonic())
            if wait is not None:
                return problem_response(
                    429,
                    "Too many requests from your network address; try again in a minute.",
                    {"Retry-After": str(wait)},
                )
            return await handler(request)

        return counted

    def endpoint(self, handler: Handler, action: Action | None) -> RawHandler:
        """``handler`` behind the rate limit, the bearer token and ``action``'s
        permission, its failures answered as problems."""

        async def answered(request: web.Request) -> web.StreamResponse:
            try:
                viewer = await self.authenticated(request)
                if action is not None and not allowed(viewer.role, action):
                    raise Problem(403, f"The role {viewer.role} may not do this.")
                return await handler(request, viewer)
            except Problem as problem:
                return problem_response(problem.status, problem.detail, problem.headers)
            except web.HTTPRequestEntityTooLarge:
                return problem_response(413, "The request body is too large.")
            except TimeoutError:
                log.error(
                    "api: %s %s: the database did not answer",
                    request.method,
                    printable(request.path, 200),
                )
                return problem_response(
                    503, "Temporarily unavailable; try again in a minute.", {"Retry-After": "60"}
                )
            except Exception as exc:
                log.error(
                    "api: %s %s failed (%s)",
                    request.method,
                    printable(request.path, 200),
                    type(exc).__name__,
                )
                log.debug("traceback", exc_info=exc)
                return problem_response(500, "The request could not be carried out.")

        return self.limited(answered)

    async def authenticated(self, request: web.Request) -> Account:
        """The active user of the request's bearer token (RFC 6750 §2.1); 401 with
        ``WWW-Authenticate`` without one (§3) or with one that is not valid (§3.1:
        ``invalid_token``), whatever the reason, so a caller learns nothing of which."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if not header or scheme.lower() != "bearer":
            raise Problem(
                401,
                "This API needs a token: send Authorization: Bearer <token>.",
                {"WWW-Authenticate": REALM},
            )
        viewer = await self.read(self.store.token_user(token.strip(), time.time()))
        if viewer is None:
            raise Problem(
                401,
                "The token is not valid (unknown, removed, or its user is disabled).",
                {"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        return viewer

    @staticmethod
    async def read(pending: Awaitable[T]) -> T:
        return await asyncio.wait_for(pending, LOOKUP_TIMEOUT)

    @staticmethod
    def not_allowed(allow: str) -> RawHandler:
        async def refused(request: web.Request) -> web.StreamResponse:
            return problem_response(405, f"This path takes only: {allow}.", {"Allow": allow})

        return refused

    @staticmethod
    async def no_such_path(request: web.Request) -> web.StreamResponse:
        return problem_response(404, "There is no such path in this API (see docs/api.md).")

    # --- the caller ---------------------------------------------------------------------

    async def me(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        return answer(
            {
                **account_json(viewer),
                "organisation": viewer.org,
                "organisation_name": viewer.org_name,
                "language": viewer.language,
                "timezone": viewer.timezone,
                "actions": [str(a) for a in Action if allowed(viewer.role, a)],
            }
        )

    # --- certificates -------------------------------------------------------------------

    async def certificates(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        given = params.query(request.query, CERTIFICATE_PARAMS)
        found: dict[str, Any] = {}
        if "since" in given:
            found["since"] = params.moment("since", given["since"])
        if "until" in given:
            found["until"] = params.moment("until", given["until"], end_of_day=True)
        for name in ("recipient", "subject", "sender"):
            if name in given:
                found[name] = params.text(name, given[name])
        if "status" in given:
            found["status"] = params.choice("status", given["status"], STATUSES)
        if "kind" in given:
            found["kind"] = params.choice("kind", given["kind"], KINDS)
        limit = params.number("limit", given.get("limit", "50"), 1, MAX_PAGE)
        offset = params.number("offset", given.get("offset", "0"), 0, 10**9 - 1)
        query = CertificateQuery(**found, limit=limit, offset=offset)
        infos = await self.read(self.store.find_certificates(viewer, query))
        return answer(
            {
                "certificates": [certificate_json(i) for i in infos],
                "limit": limit,
                "offset": offset,
                "next_offset": offset + limit if len(infos) == limit else None,
            }
        )

    async def certificate(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        ref = request.match_info["ref"]
        cert_id, pdf = (ref[:-4], True) if ref.endswith(".pdf") else (ref, False)
        info = None
        if CERTIFICATE_ID.fullmatch(cert_id):
            info = await self.read(self.store.certificate_for(viewer, cert_id))
        if info is None:
            raise Problem(404, "There is no certificate with this id that you may see.")
        if not pdf:
            return answer(certificate_json(info))
        try:
            body = await asyncio.to_thread((self.archive / f"{cert_id}.pdf").read_bytes)
        except FileNotFoundError:
            raise Problem(
                410,
                "The PDF of this certificate is no longer kept (its retention period ended).",
            ) from None
        return web.Response(
            body=body,
            content_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{cert_id}.pdf"'},
        )

    # --- credits ------------------------------------------------------------------------

    async def balance(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        balance = await self.read(self.store.balance_of(viewer.org))
        return answer({"organisation": viewer.org, "balance": balance})

    async def statement(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        given = params.query(request.query, frozenset({"month"}))
        month = params.month(given["month"]) if "month" in given else None
        statement = await self.read(self.store.statement_of(viewer.org, month))
        return answer(statement_json(statement))

    # --- the organisation's users (admins) ----------------------------------------------

    async def users(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        accounts = await self.read(self.store.org_accounts(viewer.org))
        return answer({"users": [account_json(a) for a in accounts]})

    async def member(self, viewer: Account, address: str) -> Account:
        """The user ``address`` of the viewer's organisation; 404 for any other."""
        found = await self.read(self.store.account(normalise_address(address)))
        if found is None or found.org != viewer.org:
            raise Problem(404, "There is no user with this address in your organisation.")
        return found

    async def add_user(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        body = params.json_object(await request.text(), {"address": str, "role": str})
        if "address" not in body or "role" not in body:
            raise params.bad("The body must give 'address' and 'role'.")
        parsed = parse_single_mailbox(body["address"])
        if parsed is None or parsed != body["address"].strip():
            raise params.bad("The field 'address' must be a single e-mail address.")
        role = params.choice("role", body["role"], tuple(str(r) for r in Role), "field")
        address = normalise_address(parsed)
        refusal = user_refusal(
            self.addresses, await self.read(self.store.org_domains(viewer.org)), address
        )
        if refusal is not None:
            log.info("api: %s may not add user %s", viewer.address, printable(address))
            raise Problem(422, refusal)
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        hashed = await asyncio.to_thread(hash_password, password)
        added = await asyncio.to_thread(
            self.store.add_user, address, hashed, time.time(), org=viewer.org, role=role
        )
        if not added:
            raise Problem(409, "There is a user with this address already.")
        log.info("api: %s added user %s as %s", viewer.address, printable(address), role)
        created = await self.member(viewer, address)
        return answer({**account_json(created), "password": password}, status=201)

    async def user_action(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        action = request.match_info["action"]
        if action not in USER_ACTIONS:
            raise Problem(404, "There is no such path in this API (see docs/api.md).")
        target = await self.member(viewer, request.match_info["address"])
        if action == "reset":
            password = secrets.token_urlsafe(PASSWORD_BYTES)
            hashed = await asyncio.to_thread(hash_password, password)
            await asyncio.to_thread(self.store.set_user, target.address, password_hash=hashed)
            log.info("api: %s reset the password of %s", viewer.address, target.address)
            return answer({**account_json(target), "password": password})
        if target.address == viewer.address:
            raise Problem(409, "You cannot disable or enable yourself; ask another admin.")
        disabled = action == "disable"
        await asyncio.to_thread(
            self.store.set_membership, target.address, disabled=disabled, now=time.time()
        )
        log.info("api: %s %sd user %s", viewer.address, action, target.address)
        return answer(account_json(await self.member(viewer, target.address)))

    # --- the organisation's domains (admins) --------------------------------------------

    async def domains(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        found = await self.read(self.store.org_domains(viewer.org))
        pending = await self.read(self.store.domain_claims(viewer.org))
        return answer(
            {
                "organisation": viewer.org,
                "domains": found,
                "pending": [claim_json(c) for c in pending],
            }
        )

    @staticmethod
    def bound(viewer: Account, domain: str) -> web.Response:
        return answer({"organisation": viewer.org, "domain": domain, "state": "bound"})

    async def bind_domain(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        """Claim the domain (202 with the record to publish); the claim's record already
        published, or the domain bound to the organisation already: 200."""
        params.query(request.query, frozenset())
        domain = params.domain(request.match_info["domain"])
        refusal = claim_refusal(self.addresses, domain)
        if refusal is not None:
            raise Problem(422, refusal)
        token = new_token()
        claimed = await asyncio.to_thread(
            self.store.claim_domain, viewer.org, domain, token, time.time(), viewer.address
        )
        if isinstance(claimed, str):
            raise Problem(409, "This domain is bound to another organisation.")
        if claimed is None:
            return self.bound(viewer, domain)
        if claimed.token == token:
            log.info("api: %s asked to bind domain %s to %s", viewer.address, domain, viewer.org)
            return answer(claim_json(claimed), status=202)
        if await self.prove(viewer, claimed) is Proof.FOUND:  # asked again: tried again
            return self.bound(viewer, domain)
        return answer(claim_json(claimed), status=202)

    async def verify_domain(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        params.query(request.query, frozenset())
        domain = params.domain(request.match_info["domain"])
        pending = await self.read(self.store.domain_claims(viewer.org))
        claimed = next((c for c in pending if c.domain == domain), None)
        if claimed is None:
            if domain in await self.read(self.store.org_domains(viewer.org)):
                return self.bound(viewer, domain)
            raise Problem(404, "Your organisation has not asked to bind this domain.")
        proof = await self.prove(viewer, claimed)
        if proof is Proof.UNKNOWN:
            raise Problem(
                503,
                "The DNS did not answer the lookup of the record; try again in a few minutes.",
                {"Retry-After": "60"},
            )
        if proof is Proof.MISSING:
            raise Problem(
                409,
                f"No TXT record {record_value(claimed.token)} was found at "
                f"{record_name(domain)}. Publish it, then try again (a new record may take "
                "a few minutes to be seen).",
            )
        return self.bound(viewer, domain)

    async def prove(self, viewer: Account, claimed: DomainClaim) -> Proof:
        """Look the claim's record up; bind the domain when it is there (FOUND)."""
        dns = self.cfg.dns
        proof = await look_up(dns.nameservers, dns.timeout, claimed.domain, claimed.token)
        if proof is not Proof.FOUND:
            return proof
        why = await asyncio.to_thread(
            self.store.confirm_claim, viewer.org, claimed.domain, claimed.token, time.time()
        )
        if why == "claim":
            raise Problem(404, "Your organisation has not asked to bind this domain.")
        if why is not None:
            raise Problem(409, "This domain is bound to another organisation.")
        log.info(
            "api: %s bound domain %s to %s (DNS record %s found)",
            viewer.address,
            claimed.domain,
            viewer.org,
            record_name(claimed.domain),
        )
        await report_strangers(self.store, viewer.org, claimed.domain)
        return proof

    async def unbind_domain(self, request: web.Request, viewer: Account) -> web.StreamResponse:
        """Unbind the domain, or withdraw the organisation's pending claim of it."""
        params.query(request.query, frozenset())
        domain = params.domain(request.match_info["domain"])
        if await asyncio.to_thread(self.store.withdraw_claim, viewer.org, domain):
            log.info("api: %s withdrew the claim of domain %s", viewer.address, domain)
            return web.Response(status=204)
        if not await asyncio.to_thread(self.store.unbind_domain, viewer.org, domain):
            raise Problem(404, "This domain is not bound to your organisation.")
        log.info("api: %s unbound domain %s from %s", viewer.address, domain, viewer.org)
        return web.Response(status=204)
