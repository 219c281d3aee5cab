"""The JSON API (docs/api.md) through a client that knows only docs/openapi.yaml.

:class:`DocumentClient` builds every request from the document: the server's path from
``servers`` and ``paths``, each parameter by its name where the document puts it (path
or query), the body checked against the document's request schema, the credentials as
its security scheme says; and it checks every answer against the document: the status
is one the operation declares, the media type one that status declares, the JSON body
valid against its schema (jsonschema, draft 2020-12), the headers it requires present.

It runs against the real gateway: an organisation ACME (example.com bound to it by the
operator) with an admin (alice), a sender (bob) and an auditor (carol) added through the
API itself, another organisation's admin (dave), and real certified mail from alice and
from bob, so there are certificates. The gateway's resolver is the tests' own DNS server
(tests/dnsserver.py), where a test publishes a domain's proof record.
The permission matrix's cells for the API are the tests named in docs/api.md.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from relay.queue.states import Role
from relay.queue.store import Store
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    ROOT,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)
from tests.dnsserver import DNSServer
from tests.test_verification_record import certificate_of

DOCUMENT = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
DOCUMENT_URI = "urn:certifica:openapi"
REGISTRY = Registry().with_resource(DOCUMENT_URI, DRAFT202012.create_resource(DOCUMENT))
METHODS = ("get", "put", "post", "delete", "patch")
RATE_LIMIT = 600  # the gateway's [web] rate_limit here: far above what the tests send


def _pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to ``parts`` in the document."""
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _at(pointer: str) -> Any:
    node: Any = DOCUMENT
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def _followed(pointer: str) -> tuple[str, Any]:
    """The node at ``pointer`` and where it really is, ``$ref`` followed."""
    node = _at(pointer)
    while isinstance(node, dict) and "$ref" in node:
        pointer = node["$ref"].removeprefix("#")
        node = _at(pointer)
    return pointer, node


def _valid(instance: Any, schema_pointer: str) -> None:
    """``instance`` is valid against the schema at ``schema_pointer`` of the document."""
    validator = Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#{schema_pointer}"},
        registry=REGISTRY,
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    errors = sorted(validator.iter_errors(instance), key=str)
    assert not errors, f"{schema_pointer}: {errors[0].message} in {instance!r}"


OPERATIONS: dict[str, tuple[str, str]] = {
    op["operationId"]: (method, path)
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if method in METHODS
}


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class DocumentClient:
    """Calls operations by ``operationId``, knowing nothing but the document."""

    host: str
    port: int
    source: str = "127.0.0.1"  # the client's address (the rate limit counts per address)
    covered: set[str] = field(default_factory=set)

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes | None = None
    ) -> Reply:
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=30, source_address=(self.source, 0)
        )
        try:
            conn.request(method, target, body=body, headers=headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def call(
        self,
        operation: str,
        token: str | None,
        body: Any = None,
        authorization: str | None = None,
        **values: Any,
    ) -> Reply:
        method, path = OPERATIONS[operation]
        op_pointer = _pointer("paths", path, method)
        op = _at(op_pointer)
        declared = {}
        for i, _ in enumerate(op.get("parameters", [])):
            _, parameter = _followed(f"{op_pointer}/parameters/{i}")
            declared[parameter["name"]] = parameter
        unknown = set(values) - set(declared)
        assert not unknown, f"{operation} has no parameters {unknown} in the document"
        query = {}
        for name, parameter in declared.items():
            if name not in values:
                assert not parameter.get("required"), f"{operation} needs {name}"
                continue
            if parameter["in"] == "path":
                path = path.replace("{" + name + "}", quote(str(values[name]), safe=""))
            else:
                assert parameter["in"] == "query"
                query[name] = str(values[name])
        target = DOCUMENT["servers"][0]["url"] + path + ("?" + urlencode(query) if query else "")
        headers = {"Accept": "application/json, application/pdf, application/problem+json"}
        for requirement in op.get("security", DOCUMENT["security"]):
            for scheme_name in requirement:
                scheme = DOCUMENT["components"]["securitySchemes"][scheme_name]
                assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
                if token is not None:
                    headers["Authorization"] = f"Bearer {token}"
        if authorization is not None:
            headers["Authorization"] = authorization
        data = None
        if body is not None:
            assert "requestBody" in op, f"{operation} takes no body"
            media = "application/json"
            _valid(body, op_pointer + _pointer("requestBody", "content", media, "schema"))
            data = json.dumps(body).encode()
            headers["Content-Type"] = media
        reply = self.send(method.upper(), target, headers, data)
        self.check(operation, op_pointer, reply)
        if reply.status < 400:
            self.covered.add(operation)
        return reply

    def check(self, operation: str, op_pointer: str, reply: Reply) -> None:
        """The answer is one the document describes for ``operation``."""
        responses = _at(op_pointer)["responses"]
        code = str(reply.status) if str(reply.status) in responses else "default"
        assert code in responses, f"{operation}: {reply.status} is not in the document"
        where, response = _followed(op_pointer + _pointer("responses", code))
        for name, header in response.get("headers", {}).items():
            if header.get("required"):
                assert reply.headers.get(name), f"{operation} {reply.status}: no {name}"
        content = response.get("content")
        if not content:
            assert reply.body == b"", f"{operation} {reply.status}: a body not documented"
            return
        media = (reply.headers.get("Content-Type") or "").split(";")[0].strip()
        assert media in content, f"{operation} {reply.status}: {media} is not documented"
        if media.endswith("json"):
            _valid(json.loads(reply.body), where + _pointer("content", media, "schema"))
        else:
            assert reply.body, f"{operation} {reply.status}: empty {media}"


@dataclass
class Site:
    gw: Gateway
    sink: Sink
    client: DocumentClient
    tokens: dict[str, str]
    passwords: dict[str, str]
    certs: dict[str, str]  # sender's name -> certificate id
    pdfs: dict[str, bytes]  # sender's name -> the PDF mailed to it
    dns: DNSServer


def _token(gw: Gateway, address: str, name: str = "erp") -> str:
    added = gw.cli("token", "add", address, "--name", name)
    assert added.returncode == 0, added.stderr
    return added.stdout.splitlines()[-1]


def _send(gw: Gateway, user: str, password: str, subject: str) -> str:
    """A certified message from ``user`` to bob@example.org; its queue id."""
    raw = make_message(subject=subject, sender=user, to="bob@example.org", cc=CERT_ADDRESS)
    with gw.smtp(user, password) as c:
        c.mail(user)
        for rcpt in ("bob@example.org", CERT_ADDRESS):
            assert c.rcpt(rcpt)[0] == 250
        code, text = c.data(raw)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[1]


@pytest.fixture(scope="module")
def site(sink_server: SinkServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    sink = sink_server.start(Sink())
    tmp = tmp_path_factory.mktemp("api")
    dns = DNSServer().__enter__()
    cfg = write_config(
        tmp,
        {"example.org": sink.port, "example.com": sink.port, "example.net": sink.port},
        extra=f"[web]\nrate_limit = {RATE_LIMIT}\n[processes]\nacceptors = 1\n" + dns.config_toml(),
    )
    gw = start_gateway(cfg, {"alice@example.com": PASSWORD, "dave@example.net": PASSWORD})
    try:
        with Store(gw.state / "queue.db", 30.0) as store:
            now = time.time()
            assert store.add_organisation("ACME", "Acme S.L.", "B12345678", now)
            assert store.add_organisation("OTHER", "Other S.A.", "A87654321", now)
            assert store.set_membership("alice@example.com", org="ACME", role=Role.ADMIN)
            assert store.set_membership("dave@example.net", org="OTHER", role=Role.ADMIN)
            assert store.bind_domain("ACME", "example.com", now) is None
            store.add_credits("ACME", 100, note="invoice 2026-117", actor="operator")
        host, port = gw.listen["http"].rsplit(":", 1)
        client = DocumentClient(host, int(port))
        tokens = {
            "alice": _token(gw, "alice@example.com"),
            "dave": _token(gw, "dave@example.net"),
        }
        passwords = {"alice": PASSWORD}
        for name, role in (("bob", "sender"), ("carol", "auditor")):
            added = client.call(
                "addUser", tokens["alice"], body={"address": f"{name}@example.com", "role": role}
            )
            assert added.status == 201, added.body
            passwords[name] = added.json["password"]
            tokens[name] = _token(gw, f"{name}@example.com")
        qids = {
            "alice": _send(gw, "alice@example.com", PASSWORD, "Alice's contract"),
            "bob": _send(gw, "bob@example.com", passwords["bob"], "Bob's offer"),
        }
        pdfs = {name: certificate_of(sink, qid) for name, qid in qids.items()}
        listed = client.call("listCertificates", tokens["alice"]).json["certificates"]
        certs = {
            name: next(c["id"] for c in listed if c["queue_id"] == qid and c["kind"] == "sending")
            for name, qid in qids.items()
        }
        yield Site(gw, sink, client, tokens, passwords, certs, pdfs, dns)
    finally:
        gw.stop()
        dns.__exit__(None, None, None)
    # the one error line test_a_failure_of_ours_is_a_500_problem_and_one_log_line causes
    assert_clean_log("\n".join(x for x in gw.log().splitlines() if "(IsADirectoryError)" not in x))


def test_the_document_is_valid_openapi_3_1() -> None:
    validate_spec(DOCUMENT)
    assert DOCUMENT["openapi"].startswith("3.1.")
    problem = DOCUMENT["components"]["schemas"]["Problem"]
    assert problem["required"] == ["type", "title", "status", "detail"]
    # every operation says what a missing token gets
    for operation, (method, path) in OPERATIONS.items():
        assert "401" in DOCUMENT["paths"][path][method]["responses"], operation


def test_every_operation_answers_as_the_document_says(site: Site) -> None:
    client, alice = site.client, site.tokens["alice"]
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    me = client.call("getMe", alice).json
    assert (me["address"], me["organisation"], me["role"]) == ("alice@example.com", "ACME", "admin")
    assert "manage-users" in me["actions"]

    found = client.call(
        "listCertificates",
        alice,
        since=today,
        until=today,
        recipient="BOB@example",
        status="delivery",
        kind="sending",
        limit=10,
        offset=0,
    ).json
    assert site.certs["alice"] in [c["id"] for c in found["certificates"]]
    assert site.certs["bob"] in [c["id"] for c in found["certificates"]]
    assert found["next_offset"] is None
    mine = client.call("listCertificates", alice, sender="alice@example.com").json
    assert [c["id"] for c in mine["certificates"]] == [site.certs["alice"]]
    none = client.call("listCertificates", alice, recipient="carol@", status="partial").json
    assert none == {"certificates": [], "limit": 50, "offset": 0, "next_offset": None}
    one = client.call("listCertificates", alice, limit=1).json
    assert len(one["certificates"]) == 1 and one["next_offset"] == 1

    cert = client.call("getCertificate", alice, id=site.certs["alice"]).json
    assert (cert["id"], cert["sender"], cert["organisation"]) == (
        site.certs["alice"],
        "alice@example.com",
        "ACME",
    )
    assert cert["recipients"] == [{"address": "bob@example.org", "status": "delivered"}]
    pdf = client.call("getCertificatePdf", alice, id=site.certs["alice"])
    assert pdf.status == 200 and pdf.body.startswith(b"%PDF-")

    # The config's prices are 0 ([credits]): whatever the sending moved, the statement
    # adds up from the bundle bought to the balance.
    balance = client.call("getBalance", alice).json
    assert balance["organisation"] == "ACME"
    statement = client.call("getStatement", alice, month=today[:7]).json
    assert statement["balances"] and statement["opening"] == 0
    assert statement["closing"] == balance["balance"]
    first = statement["movements"][0]
    assert (first["kind"], first["amount"], first["note"]) == ("purchase", 100, "invoice 2026-117")
    assert first["balance"] == 100 and first["actor"] == "operator"
    assert client.call("getStatement", alice).json["movements"][0] == first

    users = client.call("listUsers", alice).json["users"]
    assert {
        ("alice@example.com", "admin"),
        ("bob@example.com", "sender"),
        ("carol@example.com", "auditor"),
    } <= {(u["address"], u["role"]) for u in users}
    erin = client.call(
        "addUser", alice, body={"address": "erin@example.com", "role": "sender"}
    ).json
    assert erin["role"] == "sender" and len(erin["password"]) >= 16
    assert client.call("disableUser", alice, address="erin@example.com").json["disabled"]
    assert not client.call("enableUser", alice, address="ERIN@example.com").json["disabled"]
    reset = client.call("resetUser", alice, address="erin@example.com").json
    assert reset["password"] != erin["password"]
    # the new password is the one SMTP takes
    with site.gw.smtp("erin@example.com", reset["password"]):
        pass

    listed = client.call("listDomains", alice).json
    assert listed == {"organisation": "ACME", "domains": ["example.com"], "pending": []}
    claimed = client.call("bindDomain", alice, domain="Acme.Example.")
    assert claimed.status == 202  # pending until the DNS proves it
    record = claimed.json["record"]
    assert (record["name"], record["type"]) == ("_certifica.acme.example", "TXT")
    assert claimed.json["requested_by"] == "alice@example.com"
    assert client.call("listDomains", alice).json["pending"] == [claimed.json]
    assert client.call("listDomains", alice).json["domains"] == ["example.com"]
    site.dns.add(record["name"], "TXT", record["value"])
    bound = client.call("verifyDomain", alice, domain="acme.example").json
    assert bound == {"organisation": "ACME", "domain": "acme.example", "state": "bound"}
    listed = client.call("listDomains", alice).json
    assert (listed["domains"], listed["pending"]) == (["acme.example", "example.com"], [])
    assert client.call("unbindDomain", alice, domain="acme.example").status == 204
    assert client.call("listDomains", alice).json["domains"] == ["example.com"]

    assert client.covered == set(OPERATIONS), set(OPERATIONS) - client.covered


def test_the_subject_is_listed_and_searched(site: Site) -> None:
    alice = site.tokens["alice"]
    cert = site.client.call("getCertificate", alice, id=site.certs["alice"]).json
    assert cert["subject"] == "Alice's contract"
    found = site.client.call("listCertificates", alice, subject="ALICE'S").json
    assert [c["id"] for c in found["certificates"]] == [site.certs["alice"]]


def test_no_token_a_wrong_one_or_another_scheme_is_401(site: Site) -> None:
    client = site.client
    none = client.call("listCertificates", None)
    assert none.status == 401
    assert none.headers["WWW-Authenticate"] == 'Bearer realm="certifica"'
    assert none.json["detail"].startswith("This API needs a token")
    assert none.headers["Content-Language"] == "en"
    wrong = client.call("listCertificates", "cfk_" + "x" * 43)
    assert wrong.status == 401
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="certifica", error="invalid_token"'
    basic = client.call("getMe", None, authorization="Basic YWxpY2U6cGFzc3dvcmQ=")
    assert basic.status == 401
    assert client.call("getMe", "").status == 401


def test_a_removed_token_is_401(site: Site) -> None:
    token = _token(site.gw, "carol@example.com", "short-lived")
    assert site.client.call("getMe", token).status == 200
    listed = site.gw.cli("token", "list", "carol@example.com").stdout
    line = next(x for x in listed.splitlines() if x.startswith("short-lived\tcreated "))
    assert not line.endswith("last used never"), line  # the gateway recorded the use
    assert token not in listed
    removed = site.gw.cli("token", "remove", "carol@example.com", "--name", "short-lived")
    assert removed.returncode == 0, removed.stderr
    assert site.client.call("getMe", token).status == 401


def test_a_disabled_users_token_is_401_and_stays_void(site: Site) -> None:
    client, alice = site.client, site.tokens["alice"]
    added = client.call("addUser", alice, body={"address": "frank@example.com", "role": "sender"})
    assert added.status == 201
    token = _token(site.gw, "frank@example.com")
    assert client.call("getMe", token).status == 200
    assert client.call("disableUser", alice, address="frank@example.com").status == 200
    assert client.call("getMe", token).status == 401
    assert client.call("enableUser", alice, address="frank@example.com").status == 200
    assert client.call("getMe", token).status == 401  # made before the change: void
    assert client.call("getMe", _token(site.gw, "frank@example.com", "new")).status == 200


def test_a_sender_cannot_read_another_senders_certificate(site: Site) -> None:
    client, bob = site.client, site.tokens["bob"]
    listed = client.call("listCertificates", bob).json["certificates"]
    assert [c["id"] for c in listed if c["kind"] == "sending"] == [site.certs["bob"]]
    assert client.call("getCertificate", bob, id=site.certs["bob"]).status == 200
    theirs = client.call("getCertificate", bob, id=site.certs["alice"])
    nobodys = client.call("getCertificate", bob, id="CF-0000000000000000")
    assert theirs.status == nobodys.status == 404
    assert theirs.body == nobodys.body
    assert client.call("getCertificatePdf", bob, id=site.certs["alice"]).body == nobodys.body


def test_an_auditor_reads_the_organisations_certificates(site: Site) -> None:
    client, carol = site.client, site.tokens["carol"]
    listed = {c["id"] for c in client.call("listCertificates", carol).json["certificates"]}
    assert {site.certs["alice"], site.certs["bob"]} <= listed
    for name in ("alice", "bob"):
        assert client.call("getCertificate", carol, id=site.certs[name]).status == 200
        pdf = client.call("getCertificatePdf", carol, id=site.certs[name])
        assert pdf.body == site.pdfs[name]
    statement = client.call("getStatement", carol).json
    assert statement["balances"] and statement["organisation"] == "ACME"
    assert client.call("getBalance", carol).json["balance"] == statement["closing"]


def test_another_organisations_admin_sees_nothing_of_it(site: Site) -> None:
    client, dave = site.client, site.tokens["dave"]
    assert client.call("listCertificates", dave).json["certificates"] == []
    theirs = client.call("getCertificate", dave, id=site.certs["alice"])
    assert theirs.status == 404
    nobody = client.call("disableUser", dave, address="nobody@example.com")
    acme_user = client.call("disableUser", dave, address="bob@example.com")
    assert acme_user.status == nobody.status == 404 and acme_user.body == nobody.body
    assert client.call("resetUser", dave, address="bob@example.com").status == 404
    users = client.call("listUsers", dave).json["users"]
    assert [u["address"] for u in users] == ["dave@example.net"]
    assert client.call("getBalance", dave).json == {"organisation": "OTHER", "balance": 0}
    # a domain bound to ACME is not dave's to take nor to unbind
    with Store(site.gw.state / "queue.db", 30.0) as store:
        assert store.bind_domain("ACME", "acme.test", time.time()) is None
    try:
        taken = client.call("bindDomain", dave, domain="acme.test")
        assert taken.status == 409
        assert "ACME" not in taken.json["detail"]
        assert client.call("unbindDomain", dave, domain="acme.test").status == 404
    finally:
        client.call("unbindDomain", site.tokens["alice"], domain="acme.test")
    # bob still works
    assert client.call("getMe", site.tokens["bob"]).status == 200


ADMIN_ONLY: list[tuple[str, dict[str, Any]]] = [
    ("listUsers", {}),
    ("addUser", {"body": {"address": "mallory@example.com", "role": "admin"}}),
    ("disableUser", {"address": "alice@example.com"}),
    ("enableUser", {"address": "alice@example.com"}),
    ("resetUser", {"address": "alice@example.com"}),
    ("listDomains", {}),
    ("bindDomain", {"domain": "mallory.example"}),
    ("verifyDomain", {"domain": "mallory.example"}),
    ("unbindDomain", {"domain": "mallory.example"}),
]


@pytest.mark.parametrize("who", ["bob", "carol"])
@pytest.mark.parametrize(("operation", "values"), ADMIN_ONLY, ids=[o for o, _ in ADMIN_ONLY])
def test_admin_only_operations_are_403_for_senders_and_auditors(
    site: Site, who: str, operation: str, values: dict[str, Any]
) -> None:
    reply = site.client.call(operation, site.tokens[who], **values)
    assert reply.status == 403
    assert reply.json["detail"].startswith("The role ")
    # and nothing changed
    alice = site.tokens["alice"]
    users = site.client.call("listUsers", alice).json["users"]
    assert "mallory@example.com" not in [u["address"] for u in users]
    assert not next(u for u in users if u["address"] == "alice@example.com")["disabled"]
    assert "mallory.example" not in json.dumps(site.client.call("listDomains", alice).json)


def test_a_sender_may_not_read_the_statement(site: Site) -> None:
    assert site.client.call("getStatement", site.tokens["bob"]).status == 403
    assert site.client.call("getBalance", site.tokens["bob"]).status == 200


def test_the_pdf_is_the_archived_one_and_verifies(site: Site, tmp_path: Path) -> None:
    cert_id = site.certs["alice"]
    reply = site.client.call("getCertificatePdf", site.tokens["alice"], id=cert_id)
    assert reply.headers["Content-Type"] == "application/pdf"
    assert reply.headers["Content-Disposition"] == f'attachment; filename="{cert_id}.pdf"'
    assert reply.body == (site.gw.state / "certificates" / f"{cert_id}.pdf").read_bytes()
    assert reply.body == site.pdfs["alice"]
    saved = tmp_path / f"{cert_id}.pdf"
    saved.write_bytes(reply.body)
    verified = site.gw.cli("verify", str(saved))
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.parametrize(
    ("operation", "values", "detail"),
    [
        ("listCertificates", {"since": "2026-13-45"}, "The parameter 'since' is not a date"),
        ("listCertificates", {"until": "yesterday"}, "The parameter 'until' must be an RFC 3339"),
        ("listCertificates", {"since": "2026-11-01T10:00:00"}, "The parameter 'since' must be"),
        ("listCertificates", {"limit": 0}, "The parameter 'limit' must be a whole number"),
        ("listCertificates", {"limit": 201}, "The parameter 'limit' must be a whole number"),
        ("listCertificates", {"offset": -1}, "The parameter 'offset' must be a whole number"),
        ("listCertificates", {"status": "lost"}, "The parameter 'status' must be one of"),
        ("listCertificates", {"kind": "sms"}, "The parameter 'kind' must be one of"),
        ("getStatement", {"month": "2026-13"}, "The parameter 'month' must be a month"),
        (
            "addUser",
            {"body": {"address": "a@example.com, b@example.com", "role": "sender"}},
            "The field 'address' must be a single e-mail address",
        ),
        (
            "addUser",
            {"body": {"address": "x@example.com", "role": "root"}},
            "The field 'role' must be one of: admin, sender, auditor",
        ),
        ("bindDomain", {"domain": "localhost"}, "'localhost' is not a domain name"),
        ("bindDomain", {"domain": "-bad-.example"}, "'-bad-.example' is not a domain name"),
    ],
)
def test_bad_parameters_are_400_with_a_sentence(
    site: Site, operation: str, values: dict[str, Any], detail: str
) -> None:
    if "body" in values and values["body"]["role"] == "root":
        # the document's own schema refuses the role: sent raw, past the client's check
        reply = site.client.send(
            "POST",
            "/api/v1/users",
            {"Authorization": f"Bearer {site.tokens['alice']}"},
            json.dumps(values["body"]).encode(),
        )
        site.client.check(operation, _pointer("paths", "/users", "post"), reply)
    else:
        reply = site.client.call(operation, site.tokens["alice"], **values)
    assert reply.status == 400, reply.body
    assert reply.json["detail"].startswith(detail), reply.json["detail"]
    assert "Traceback" not in reply.body.decode()


def test_an_unknown_parameter_is_400_not_ignored(site: Site) -> None:
    reply = site.client.send(
        "GET",
        "/api/v1/certificates?sinse=2026-11-01",
        {"Authorization": f"Bearer {site.tokens['alice']}"},
    )
    site.client.check("listCertificates", _pointer("paths", "/certificates", "get"), reply)
    assert reply.status == 400
    assert reply.json["detail"].startswith("Unknown parameter 'sinse'")


def test_paths_and_methods_outside_the_document_are_problems(site: Site) -> None:
    auth = {"Authorization": f"Bearer {site.tokens['alice']}"}
    missing = site.client.send("GET", "/api/v1/invoices", auth)
    assert missing.status == 404
    assert missing.headers["Content-Type"].startswith("application/problem+json")
    assert missing.json["status"] == 404
    wrong = site.client.send("DELETE", "/api/v1/certificates", auth)
    assert wrong.status == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    assert wrong.json["title"] == "Method Not Allowed"
    # not a browser API: no CORS answer
    preflight = site.client.send("OPTIONS", "/api/v1/me", {"Origin": "https://evil.example"})
    assert preflight.status == 405
    assert "Access-Control-Allow-Origin" not in preflight.headers


def test_over_the_rate_limit_is_429_with_retry_after(site: Site) -> None:
    # Another loopback address than the other tests', so their counts are their own.
    # The bucket refills while the requests are made (RATE_LIMIT / 60 a second), so the
    # first 429 comes after at least RATE_LIMIT answers, and within twice as many.
    # Sent 32 at a time, so the bucket empties faster than it refills however slow the
    # machine is (one by one, a loaded machine's answers can come slower than 10 a second).
    client = DocumentClient(site.client.host, site.client.port, source="127.0.0.9")
    statuses: list[int] = []
    with ThreadPoolExecutor(max_workers=32) as pool:
        while 429 not in statuses and len(statuses) <= 4 * RATE_LIMIT:
            batch = pool.map(lambda _: client.call("getMe", None).status, range(64))
            statuses.extend(batch)
    assert 429 in statuses
    assert set(statuses) == {401, 429}
    assert statuses.count(401) >= RATE_LIMIT  # the bucket's size was answered first
    # A valid token does not lift the address's limit: of a burst with carol's token, at
    # most the tokens refilled meanwhile are answered (a loaded machine may refill one
    # between two requests, so a single request could pass), the others are 429.
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda _: client.call("getMe", site.tokens["carol"]), range(32)))
    limited = [r for r in replies if r.status == 429]
    assert limited and {r.status for r in replies} <= {200, 429}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in limited)
    assert limited[0].json["detail"].startswith("Too many requests")


def test_a_pdf_no_longer_kept_is_410_and_a_failure_of_ours_500_with_one_log_line(
    site: Site,
) -> None:
    cert_id, bob = site.certs["bob"], site.tokens["bob"]
    archived = site.gw.state / "certificates" / f"{cert_id}.pdf"
    kept = archived.read_bytes()
    archived.unlink()  # as retention removes it after [retention] evidence_years
    try:
        gone = site.client.call("getCertificatePdf", bob, id=cert_id)
        archived.mkdir()  # reading it now fails: a fault of the gateway, not of the caller
        failed = site.client.call("getCertificatePdf", bob, id=cert_id)
    finally:
        if archived.is_dir():
            archived.rmdir()
        archived.write_bytes(kept)
    assert gone.status == 410
    assert gone.json["detail"].startswith("The PDF of this certificate is no longer kept")
    assert failed.status == 500
    assert failed.json["detail"] == "The request could not be carried out."
    assert "IsADirectory" not in failed.body.decode()
    logged = [x for x in site.gw.log().splitlines() if "(IsADirectoryError)" in x]
    assert len(logged) == 1, logged
    assert logged[0].endswith(
        f"api: GET /api/v1/certificates/{cert_id}.pdf failed (IsADirectoryError)"
    )
    assert "Traceback" not in site.gw.log()
    assert site.client.call("getCertificatePdf", bob, id=cert_id).body == kept


def test_a_body_over_the_limit_is_413(site: Site) -> None:
    body = json.dumps({"address": "x" * (1024 * 1024 + 1000) + "@example.com", "role": "sender"})
    reply = site.client.send(
        "POST",
        "/api/v1/users",
        {"Authorization": f"Bearer {site.tokens['alice']}", "Content-Type": "application/json"},
        body.encode(),
    )
    site.client.check("addUser", _pointer("paths", "/users", "post"), reply)
    assert reply.status == 413
    assert reply.json["detail"] == "The request body is too large."
