"""An organisation's admin binds a domain only with a proof of control, and adds users
only at its organisation's bound domains (docs/accounts.md, "Domains" and "Users and
roles"; the security review's findings 1 and 2).

One real gateway for the module, whose resolver is the tests' own DNS server
(tests/dnsserver.py): a test publishes a claim's TXT record there, as the domain's owner
would. VICTIM holds victim.test, bound by the operator's ``certifica org domain add``;
EVIL's admin (mallory) tries what the review reproduced, through the API (a token) and
through the console (a session).
"""

from __future__ import annotations

import json
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from relay.queue.states import Role
from relay.queue.store import Store
from relay.smtpd.users import hash_password
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    assert_clean_log,
    start_gateway,
    write_config,
)
from tests.console_site import ConsoleClient
from tests.dnsserver import DNSServer
from tests.test_api import DocumentClient

MALLORY = "mallory@evil.test"  # EVIL's admin
VICTOR = "victor@victim.test"  # VICTIM's admin
GATEWAY_DOMAIN = CERT_ADDRESS.rpartition("@")[2]


@dataclass
class Site:
    gw: Gateway
    dns: DNSServer
    api: DocumentClient
    tokens: dict[str, str]

    def store(self) -> Store:
        return Store(self.gw.state / "queue.db", 30.0)

    def bound(self, org: str) -> list[str]:
        with self.store() as store:
            return store.org_domains_now(org)

    def console(self, address: str = MALLORY, language: str = "en") -> ConsoleClient:
        client = ConsoleClient(self.gw, language=language)
        assert client.login(address).status == 303
        return client


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("claims")
    with DNSServer() as dns:
        cfg = write_config(
            tmp,
            {"example.org": mx.port},
            extra="[processes]\nacceptors = 1\n" + dns.config_toml(),
        )
        gw = start_gateway(cfg)
        try:
            now = time.time()
            with Store(gw.state / "queue.db", 30.0) as store:
                for code in ("EVIL", "VICTIM"):
                    assert store.add_organisation(code, f"{code} S.L.", "B00000000", now)
                for address, org in ((MALLORY, "EVIL"), (VICTOR, "VICTIM")):
                    hashed = hash_password(PASSWORD)
                    assert store.add_user(address, hashed, now, org=org, role=str(Role.ADMIN))
            added = gw.cli("org", "domain", "add", "VICTIM", "victim.test")
            assert added.returncode == 0, added.stderr
            host, port = gw.listen["http"].rsplit(":", 1)
            tokens = {"mallory": api_token(gw, MALLORY), "victor": api_token(gw, VICTOR)}
            yield Site(gw, dns, DocumentClient(host, int(port)), tokens)
        finally:
            gw.stop()
    assert_clean_log(gw.log())


def api_token(gw: Gateway, address: str) -> str:
    added = gw.cli("token", "add", address, "--name", "erp")
    assert added.returncode == 0, added.stderr
    return added.stdout.splitlines()[-1]


def claim(site: Site, who: str, domain: str) -> dict[str, Any]:
    reply = site.api.call("bindDomain", site.tokens[who], domain=domain)
    assert reply.status == 202, reply.body
    assert reply.json["state"] == "pending"
    return dict(reply.json)


def publish(site: Site, claimed: dict[str, Any]) -> None:
    site.dns.add(claimed["record"]["name"], "TXT", claimed["record"]["value"])


# --- finding 2: binding a domain needs its DNS -----------------------------------------


def test_a_claim_without_the_record_is_not_bound(site: Site) -> None:
    claimed = claim(site, "mallory", "prospect.test")
    assert claimed["record"]["name"] == "_certifica.prospect.test"
    assert claimed["record"]["value"].startswith("certifica-domain=")
    assert "prospect.test" not in site.bound("EVIL")
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert claimed in listed["pending"] and "prospect.test" not in listed["domains"]

    missing = site.api.call("verifyDomain", site.tokens["mallory"], domain="prospect.test")
    assert missing.status == 409
    assert missing.json["detail"].startswith("No TXT record certifica-domain=")
    # a record with another token (a guess, another claim's) proves nothing
    site.dns.add("_certifica.prospect.test", "TXT", "certifica-domain=" + "0" * 32)
    guessed = site.api.call("verifyDomain", site.tokens["mallory"], domain="prospect.test")
    assert guessed.status == 409
    assert "prospect.test" not in site.bound("EVIL")
    # the operator sees it, as not bound
    listed_by_operator = site.gw.cli("org", "domain", "list", "EVIL").stdout
    assert "prospect.test\tpending: asked by mallory@evil.test" in listed_by_operator
    # asked again: the same claim, the same token, still pending
    again = site.api.call("bindDomain", site.tokens["mallory"], domain="prospect.test")
    assert again.status == 202 and again.json["record"] == claimed["record"]


def test_the_published_record_binds_the_domain(site: Site) -> None:
    claimed = claim(site, "mallory", "proof.evil.test")
    publish(site, claimed)
    bound = site.api.call("verifyDomain", site.tokens["mallory"], domain="proof.evil.test")
    assert bound.status == 200
    assert bound.json == {"organisation": "EVIL", "domain": "proof.evil.test", "state": "bound"}
    assert "proof.evil.test" in site.bound("EVIL")
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert "proof.evil.test" not in [p["domain"] for p in listed["pending"]]
    assert ("_certifica.proof.evil.test", "TXT") in site.dns.queries
    # the PUT again does the same: the record is looked up and the domain bound
    other = claim(site, "mallory", "sub.evil.test")
    publish(site, other)
    retried = site.api.call("bindDomain", site.tokens["mallory"], domain="sub.evil.test")
    assert retried.status == 200 and retried.json["state"] == "bound"
    assert "sub.evil.test" in site.bound("EVIL")


def test_a_domain_bound_elsewhere_is_409_naming_no_one(site: Site) -> None:
    taken = site.api.call("bindDomain", site.tokens["mallory"], domain="victim.test")
    assert taken.status == 409
    assert "VICTIM" not in taken.json["detail"]
    assert site.bound("VICTIM") == ["victim.test"]
    # two organisations claim one unbound domain: the one whose record is published
    # binds it, and the other's claim ends
    squatted = claim(site, "mallory", "rival.test")
    rightful = claim(site, "victor", "rival.test")
    assert squatted["record"]["value"] != rightful["record"]["value"]
    publish(site, rightful)
    assert site.api.call("verifyDomain", site.tokens["mallory"], domain="rival.test").status == 409
    assert site.api.call("verifyDomain", site.tokens["victor"], domain="rival.test").status == 200
    assert "rival.test" in site.bound("VICTIM") and "rival.test" not in site.bound("EVIL")
    late = site.api.call("verifyDomain", site.tokens["mallory"], domain="rival.test")
    assert late.status == 404
    assert site.api.call("bindDomain", site.tokens["mallory"], domain="rival.test").status == 409


def test_the_gateways_own_domain_cannot_be_claimed(site: Site) -> None:
    for domain in (GATEWAY_DOMAIN, "mail." + GATEWAY_DOMAIN):
        refused = site.api.call("bindDomain", site.tokens["mallory"], domain=domain)
        assert refused.status == 422
        assert refused.json["detail"] == (
            "This domain is the service's own: it cannot be bound to an organisation."
        )
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert GATEWAY_DOMAIN not in json.dumps(listed)


def test_a_dns_failure_is_503_and_binds_nothing(site: Site) -> None:
    claim(site, "mallory", "down.test")
    site.dns.servfail("down.test")
    failed = site.api.call("verifyDomain", site.tokens["mallory"], domain="down.test")
    assert failed.status == 503 and int(failed.headers["Retry-After"]) > 0
    assert "down.test" not in site.bound("EVIL")
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert "down.test" in [p["domain"] for p in listed["pending"]]  # still pending


def test_a_withdrawn_claim_cannot_be_verified(site: Site) -> None:
    claimed = claim(site, "mallory", "changed-mind.test")
    withdrawn = site.api.call("unbindDomain", site.tokens["mallory"], domain="changed-mind.test")
    assert withdrawn.status == 204
    publish(site, claimed)
    gone = site.api.call("verifyDomain", site.tokens["mallory"], domain="changed-mind.test")
    assert gone.status == 404
    assert "changed-mind.test" not in site.bound("EVIL")


def test_the_console_binds_only_with_the_record(site: Site) -> None:
    client = site.console(language="es")
    token = client.token("/app/domains")
    assert client.post("/app/domains", {"csrf": token, "domain": "console.test"}).status == 303
    page = client.get("/app/domains?done=claimed").text
    assert 'data-domain="console.test"' in page and "Pendientes de verificación" in page
    value = page.split('class="record-value">')[1].split("<")[0]
    assert value.startswith("certifica-domain=")
    early = client.post("/app/domains/verify", {"csrf": token, "domain": "console.test"})
    assert early.status == 409
    assert "Todavía no se encuentra el registro DNS." in early.text
    assert "console.test" not in site.bound("EVIL")

    site.dns.add("_certifica.console.test", "TXT", value)
    verified = client.post("/app/domains/verify", {"csrf": token, "domain": "console.test"})
    assert verified.status == 303
    assert "console.test" in site.bound("EVIL")
    assert (
        "El dominio ya está asociado a su organización."
        in client.get("/app/domains?done=bound").text
    )

    taken = client.post("/app/domains", {"csrf": token, "domain": "victim.test"})
    assert taken.status == 409
    assert "VICTIM" not in taken.text.split("<main>")[1]
    own = client.post("/app/domains", {"csrf": token, "domain": GATEWAY_DOMAIN})
    assert own.status == 422
    assert "Este dominio es del propio servicio" in own.text


# --- finding 1: users only at the organisation's domains --------------------------------


def test_the_reviews_reproduction_now_fails(site: Site) -> None:
    """EVIL's admin creating ceo@victim.test (victim.test bound to VICTIM), by the API
    and by the console: refused, no account, so nothing is sent as the CEO."""
    api = site.api.call(
        "addUser", site.tokens["mallory"], body={"address": "ceo@victim.test", "role": "sender"}
    )
    assert api.status == 422
    assert api.json["detail"].startswith("You can add users only at the domains bound to")
    client = site.console(language="ca")
    form = {"csrf": client.token("/app/users"), "address": "ceo@victim.test", "role": "sender"}
    page = client.post("/app/users", form)
    assert page.status == 422
    assert "Només pot afegir usuaris als dominis associats a la seva organització." in page.text
    with site.store() as store:
        assert store.account_now("ceo@victim.test") is None
    smtp = site.gw.smtp(None)
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("ceo@victim.test", PASSWORD)
    finally:
        smtp.close()


def test_an_admin_adds_users_only_at_its_bound_domains(site: Site) -> None:
    mallory = site.tokens["mallory"]
    for address in ("someone@gmail.com", "a@unclaimed.test", "b@prospect.test"):
        refused = site.api.call("addUser", mallory, body={"address": address, "role": "sender"})
        assert refused.status == 422, address
    if "evil.test" not in site.bound("EVIL"):
        publish(site, claim(site, "mallory", "evil.test"))
        assert site.api.call("verifyDomain", mallory, domain="evil.test").status == 200
    added = site.api.call("addUser", mallory, body={"address": "Eve@Evil.test", "role": "sender"})
    assert added.status == 201 and added.json["address"] == "eve@evil.test"


OWN_ADDRESSES = [
    CERT_ADDRESS,
    f"certifica+hosted@{GATEWAY_DOMAIN}",
    f"postmaster@{GATEWAY_DOMAIN}",
    f"Abuse@{GATEWAY_DOMAIN}",
    f"mailer-daemon@{GATEWAY_DOMAIN}",
    f"bounces+ABC.def@{GATEWAY_DOMAIN}",
    f"recepcion+token1@{GATEWAY_DOMAIN}",
]


@pytest.mark.parametrize("address", OWN_ADDRESSES)
def test_the_gateways_own_addresses_are_refused_to_admins(site: Site, address: str) -> None:
    refused = site.api.call(
        "addUser", site.tokens["mallory"], body={"address": address, "role": "sender"}
    )
    assert refused.status == 422
    assert refused.json["detail"] == (
        "This address is one of the service's own addresses: it cannot be a user."
    )
    client = site.console(language="it")
    form = {"csrf": client.token("/app/users"), "address": address, "role": "sender"}
    page = client.post("/app/users", form)
    assert page.status == 422
    assert "Questo indirizzo è uno di quelli del servizio stesso" in page.text


def test_the_operator_adds_any_address_but_the_gateways_own(site: Site) -> None:
    for address in (CERT_ADDRESS, f"postmaster@{GATEWAY_DOMAIN}"):
        refused = site.gw.cli(
            "users", "add", address, "--org", "EVIL", "--password-stdin", stdin=PASSWORD + "\n"
        )
        assert refused.returncode != 0
        assert refused.stderr.strip().count("\n") == 0, refused.stderr
        assert "one of the gateway's own addresses" in refused.stderr
        assert "Traceback" not in refused.stderr
    # the operator's choice: a user of EVIL at VICTIM's domain (a consultant, say)
    added = site.gw.cli(
        "users",
        "add",
        "consultant@victim.test",
        "--org",
        "EVIL",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    with site.store() as store:
        account = store.account_now("consultant@victim.test")
    assert account is not None and account.org == "EVIL"


def test_users_of_others_at_a_proven_domain_stay_theirs_and_are_logged(site: Site) -> None:
    """The attribution rule (docs/accounts.md): a user is its own organisation's, even
    at a domain another organisation then proves; the operator is told in the log."""
    added = site.gw.cli(
        "users",
        "add",
        "early@stranger.test",
        "--org",
        "VICTIM",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    publish(site, claim(site, "mallory", "stranger.test"))
    assert (
        site.api.call("verifyDomain", site.tokens["mallory"], domain="stranger.test").status == 200
    )
    with site.store() as store:
        account = store.account_now("early@stranger.test")
    assert account is not None and account.org == "VICTIM"
    line = next(x for x in site.gw.log().splitlines() if "domain stranger.test now bound" in x)
    assert "to EVIL has users of other organisations" in line and "early@stranger.test" in line


def test_a_removed_admins_requests_end_with_it(site: Site) -> None:
    added = site.gw.cli(
        "users",
        "add",
        "leaving@evil.test",
        "--org",
        "EVIL",
        "--role",
        "admin",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    claimed = site.api.call(
        "bindDomain", api_token(site.gw, "leaving@evil.test"), domain="leaving.test"
    )
    assert claimed.status == 202 and claimed.json["requested_by"] == "leaving@evil.test"
    removed = site.gw.cli("users", "remove", "leaving@evil.test")
    assert removed.returncode == 0, removed.stderr
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert "leaving.test" not in [p["domain"] for p in listed["pending"]]


def test_the_operator_binds_at_once_and_ends_admins_requests(site: Site) -> None:
    claimed = claim(site, "mallory", "operator.test")
    bound = site.gw.cli("org", "domain", "add", "VICTIM", "operator.test")
    assert bound.returncode == 0 and bound.stdout == "domain operator.test bound to VICTIM\n"
    assert "operator.test" in site.bound("VICTIM")
    listed = site.api.call("listDomains", site.tokens["mallory"]).json
    assert "operator.test" not in [p["domain"] for p in listed["pending"]]
    publish(site, claimed)  # too late: the request ended
    assert (
        site.api.call("verifyDomain", site.tokens["mallory"], domain="operator.test").status == 404
    )
    assert "operator.test" not in site.bound("EVIL")
