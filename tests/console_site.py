"""What the console's tests share: a gateway with an organisation whose users sent
certified mail, and a plain HTTP client of the console (the standard library's, with
its own cookie and an optional source address on loopback).

The organisation and its users are written with the store's own methods (the same the
``certifica org`` and ``users`` commands call), then mail is sent through the real
submission port and the test waits for the certificates in the archive.
"""

from __future__ import annotations

import html
import http.client
import re
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

from relay.queue.store import Store
from relay.smtpd.users import hash_password
from tests.conftest import CERT_ADDRESS, PASSWORD, Gateway, make_message

ORG = "ACME"
ADMIN = "admin@example.com"
SENDER = "sender@example.com"
OTHER_SENDER = "other@example.com"
AUDITOR = "auditor@example.com"
OUTSIDER = "alice@example.com"  # the fixture's user, in the organisation "default"
MEMBERS = {ADMIN: "admin", SENDER: "sender", OTHER_SENDER: "sender", AUDITOR: "auditor"}
SUBJECTS = {SENDER: "Contract for Bob", OTHER_SENDER: "Invoice for Carol", OUTSIDER: "Outside"}
RECIPIENTS = {
    SENDER: "bob@example.org",
    OTHER_SENDER: "carol@example.net",
    OUTSIDER: "dan@example.org",
}
COOKIE = "__Host-certifica"  # also on http://127.0.0.1 (relay/web/console/base.py)


def add_organisation(gw: Gateway, org: str = ORG, members: dict[str, str] = MEMBERS) -> None:
    """The organisation (if new) and its ``members`` (address: role), password PASSWORD."""
    now = time.time()
    with Store(gw.state / "queue.db", 30.0) as store:
        store.add_organisation(org, "Acme S.L.", "B12345678", now)  # False when it exists
        for address, role in members.items():
            store.add_user(address, hash_password(PASSWORD), now, org=org, role=role)


def bind_domain(gw: Gateway, domain: str = "example.com", org: str = ORG) -> None:
    """Bind ``domain`` to ``org`` as the operator does (``certifica org domain add``):
    the organisation's admins may then add users at it."""
    with Store(gw.state / "queue.db", 30.0) as store:
        assert store.bind_domain(org, domain, time.time()) is None


def add_credits(gw: Gateway, amount: int, note: str, org: str = ORG) -> None:
    with Store(gw.state / "queue.db", 30.0) as store:
        store.add_credits(org, amount, note=note, actor="operator")


def send_and_wait(gw: Gateway, senders: list[str], timeout: float = 90.0) -> list[Path]:
    """Certified mail from each of ``senders``; the archive's PDFs once all are issued."""
    archive = gw.state / "certificates"
    before = set(archive.glob("*.pdf")) if archive.exists() else set()
    for sender in senders:
        with gw.smtp(sender) as client:
            client.sendmail(
                sender,
                [RECIPIENTS[sender], CERT_ADDRESS],
                make_message(subject=SUBJECTS[sender], sender=sender, to=RECIPIENTS[sender]),
            )
    deadline = time.monotonic() + timeout
    while True:
        issued = set(archive.glob("*.pdf")) - before if archive.exists() else set()
        if len(issued) >= len(senders):
            return sorted(issued)
        if time.monotonic() > deadline:
            raise AssertionError(f"certificates not issued within {timeout}s: {gw.log()[-3000:]}")
        time.sleep(0.2)


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        if found is None:
            raise AssertionError(f"no CSRF token on the page: {self.text[:2000]}")
        return html.unescape(found.group(1))

    def cookie(self, name: str = COOKIE) -> str | None:
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        return jar[name].value if name in jar else None


@dataclass
class ConsoleClient:
    """One browser's worth of the console over plain HTTP: its cookie, its origin."""

    gw: Gateway
    source: str = "127.0.0.1"
    language: str = "en"
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.gw.port('http')}"

    def request(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.gw.port("http"), timeout=60, source_address=(self.source, 0)
        )
        sent = {"Accept-Language": self.language, **(headers or {})}
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
            sent.setdefault("Origin", self.origin)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            answer = Answer(response.status, response.headers, response.read())
        finally:
            conn.close()
        jar: SimpleCookie = SimpleCookie()
        for value in answer.headers.get_all("Set-Cookie") or []:
            jar.load(value)
        for name, morsel in jar.items():
            if morsel["max-age"] == "0":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
        return answer

    def get(self, path: str) -> Answer:
        return self.request("GET", path)

    def post(self, path: str, form: dict[str, str], **headers: str) -> Answer:
        return self.request("POST", path, form, headers)

    def login(self, address: str, password: str = PASSWORD) -> Answer:
        return self.post("/app/login", {"address": address, "password": password})

    def token(self, path: str = "/app/account") -> str:
        return self.get(path).csrf()

    def cert_ids(self) -> dict[str, str]:
        """The certificates the list shows: recipients -> certificate id."""
        page = self.get("/app/certificates")
        assert page.status == 200, page.text
        rows = re.findall(
            r'certificates/([A-Za-z0-9_-]+)">[^<]+</a></td><td>[^<]*</td><td>([^<]*)</td>',
            page.text,
        )
        return {recipients: cert for cert, recipients in rows}
