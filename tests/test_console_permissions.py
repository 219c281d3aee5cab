"""The permission matrix of :mod:`relay.roles` through the web console, cell by cell:
for each role (admin, sender, auditor), each "see" and "manage" action the console
offers is tried over real HTTP against a real gateway, and must be allowed exactly when
:func:`relay.roles.allowed` says so. (``send`` is SMTP's, not the console's;
webhooks are the operator's, not a role's.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.queue.states import Role
from relay.queue.store import Store
from relay.roles import Action, allowed
from tests.conftest import Gateway, Sink, start_gateway, write_config
from tests.console_site import (
    ADMIN,
    AUDITOR,
    ORG,
    OTHER_SENDER,
    OUTSIDER,
    RECIPIENTS,
    SENDER,
    ConsoleClient,
    add_credits,
    add_organisation,
    bind_domain,
    send_and_wait,
)

USER_OF = {Role.ADMIN: ADMIN, Role.SENDER: SENDER, Role.AUDITOR: AUDITOR}


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, mx: Sink
) -> Iterator[tuple[Gateway, list[Path]]]:
    tmp = tmp_path_factory.mktemp("perm")
    cfg = write_config(
        tmp, {"example.org": mx.port, "example.net": mx.port, "example.com": mx.port}
    )
    gw = start_gateway(cfg)
    try:
        add_organisation(gw)
        bind_domain(gw)  # its admin adds users at example.com
        add_credits(gw, 100, "invoice 2026-117")
        pdfs = send_and_wait(gw, [SENDER, OTHER_SENDER, OUTSIDER])
        yield gw, pdfs
    finally:
        gw.stop()


def logged_in(gw: Gateway, role: Role) -> ConsoleClient:
    client = ConsoleClient(gw)
    assert client.login(USER_OF[role]).status == 303
    return client


def cert_ids(client: ConsoleClient) -> dict[str, str]:
    return client.cert_ids()


@pytest.mark.parametrize("role", list(Role))
def test_see_own_and_organisation_certificates(
    site: tuple[Gateway, list[Path]], role: Role
) -> None:
    gw, _ = site
    client = logged_in(gw, role)
    seen = cert_ids(client)
    # its own: the sender's own message; an admin or an auditor sends none here, so
    # "own" is checked for the sender and "the organisation's" for every role
    assert RECIPIENTS[OUTSIDER] not in seen  # another organisation's: nobody here
    if allowed(role, Action.SEE_ORG_CERTIFICATES):
        assert {RECIPIENTS[SENDER], RECIPIENTS[OTHER_SENDER]} <= set(seen)
    else:
        assert allowed(role, Action.SEE_OWN_CERTIFICATES)
        assert set(seen) == {RECIPIENTS[SENDER]}
        # the other sender's, by its address: the same 404 as no document at all
        other = cert_ids(logged_in(gw, Role.ADMIN))[RECIPIENTS[OTHER_SENDER]]
        hidden = client.get(f"/app/certificates/{other}")
        missing = client.get("/app/certificates/CF-NOSUCHTHING0")
        assert hidden.status == missing.status == 404
        assert hidden.body == missing.body
        assert client.get(f"/app/certificates/{other}/pdf").status == 404


@pytest.mark.parametrize("role", list(Role))
def test_see_balance_and_statement(site: tuple[Gateway, list[Path]], role: Role) -> None:
    gw, _ = site
    client = logged_in(gw, role)
    balance = client.get("/app/balance")
    assert (balance.status == 200) == allowed(role, Action.SEE_BALANCE)
    assert 'id="balance">100<' in balance.text
    statement = client.get("/app/statement")
    csv = client.get("/app/statement.csv")
    may = allowed(role, Action.SEE_STATEMENT)
    assert statement.status == csv.status == (200 if may else 403)
    if may:
        assert "invoice 2026-117" in statement.text
        assert csv.headers["Content-Type"].startswith("text/csv")
        assert "purchase,,,,,100,100,invoice 2026-117," in csv.text
    else:
        assert "Your role in your organisation does not allow this." in statement.text


@pytest.mark.parametrize("role", list(Role))
def test_manage_users(site: tuple[Gateway, list[Path]], role: Role) -> None:
    gw, _ = site
    client = logged_in(gw, role)
    may = allowed(role, Action.MANAGE_USERS)
    assert client.get("/app/users").status == (200 if may else 403)
    token = client.token()
    new = f"new-{role}@example.com"
    added = client.post("/app/users", {"csrf": token, "address": new, "role": "sender"})
    assert added.status == (200 if may else 403)
    target = new if may else OTHER_SENDER
    reset = client.post("/app/users/reset", {"csrf": token, "address": target})
    assert reset.status == (200 if may else 403)
    disabled = client.post("/app/users/disable", {"csrf": token, "address": new})
    assert disabled.status == (303 if may else 403)
    if not may:
        assert ConsoleClient(gw).login(OTHER_SENDER).status == 303  # its password unchanged


@pytest.mark.parametrize("role", list(Role))
def test_bind_domains(site: tuple[Gateway, list[Path]], role: Role) -> None:
    gw, _ = site
    client = logged_in(gw, role)
    may = allowed(role, Action.BIND_DOMAINS)
    assert client.get("/app/domains").status == (200 if may else 403)
    token = client.token()
    domain = f"{role}.acme.example"
    claimed = client.post("/app/domains", {"csrf": token, "domain": domain})
    assert claimed.status == (303 if may else 403)
    with Store(gw.state / "queue.db", 30.0) as store:
        assert domain not in store.org_domains_now(ORG)  # asked for, not bound without proof
    if may:
        page = client.get("/app/domains").text
        assert f'data-domain="{domain}"' in page and f"_certifica.{domain}" in page
        withdrawn = client.post("/app/domains/unbind", {"csrf": token, "domain": domain})
        assert withdrawn.status == 303
        assert domain not in client.get("/app/domains").text
        # a domain another organisation holds: refused with a sentence naming no one
        with Store(gw.state / "queue.db", 30.0) as store:
            assert store.bind_domain("default", "taken.example", time.time()) is None
        taken = client.post("/app/domains", {"csrf": token, "domain": "taken.example"})
        assert taken.status == 409
        assert "This domain belongs to another organisation." in taken.text
        assert "default" not in taken.text.split("<main>")[1]
        assert (
            client.post("/app/domains/unbind", {"csrf": token, "domain": "taken.example"}).status
            == 404
        )
