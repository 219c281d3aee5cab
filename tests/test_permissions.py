"""The permission matrix (relay/roles.py, docs/accounts.md): the code equals the
documented table, and the "send" row holds through real SMTP submission for each role,
for a disabled user and for a user of a disabled organisation.

The "see" and "manage" rows are checked through the web console and the JSON API by
their own tests (docs/accounts.md names them).
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.roles import PERMISSIONS, Action, Role
from relay.smtpd import replies
from tests.conftest import (
    CERT_ADDRESS,
    PASSWORD,
    Gateway,
    Sink,
    SinkServer,
    assert_clean_log,
    make_message,
    start_gateway,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent

ADMIN = "ada@acme.example"
SENDER = "sid@acme.example"
AUDITOR = "aud@acme.example"
DISABLED = "dan@acme.example"
OF_DISABLED_ORG = "olive@closed.example"
LATE = "lee@acme.example"  # disabled after it logged in
ROLE_OF = {ADMIN: "admin", SENDER: "sender", AUDITOR: "auditor"}


def documented_matrix() -> dict[Role, set[Action]]:
    """docs/accounts.md's table: each row names its action as `value`."""
    text = (ROOT / "docs" / "accounts.md").read_text(encoding="utf-8")
    found: dict[Role, set[Action]] = {role: set() for role in Role}
    rows = 0
    for line in text.splitlines():
        match = re.match(r"\| [^|]*\(`([a-z-]+)`\) \| (yes|no) \| (yes|no) \| (yes|no) \|", line)
        if not match:
            continue
        rows += 1
        action = Action(match.group(1))
        for role, cell in zip(
            (Role.ADMIN, Role.SENDER, Role.AUDITOR), match.groups()[1:], strict=True
        ):
            if cell == "yes":
                found[role].add(action)
    assert rows == len(Action), "docs/accounts.md must have one row per action"
    return found


def docstring_matrix() -> dict[Role, set[Action]]:
    """relay/roles.py's docstring table: the phrases in the order of :class:`Action`."""
    import relay.roles

    lines = [
        line
        for line in (relay.roles.__doc__ or "").splitlines()
        if re.search(r"\s(yes|no)\s+(yes|no)\s+(yes|no)\s*$", line)
    ]
    assert len(lines) == len(Action)
    found: dict[Role, set[Action]] = {role: set() for role in Role}
    for action, line in zip(Action, lines, strict=True):
        cells = line.split()[-3:]
        for role, cell in zip((Role.ADMIN, Role.SENDER, Role.AUDITOR), cells, strict=True):
            if cell == "yes":
                found[role].add(action)
    return found


def test_permissions_equal_the_documented_matrix() -> None:
    code = {role: set(actions) for role, actions in PERMISSIONS.items()}
    assert code == documented_matrix()
    assert code == docstring_matrix()


@pytest.fixture(scope="module")
def sink(sink_server: SinkServer) -> Sink:
    return sink_server.start(Sink())


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, sink: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("perm")
    cfg = write_config(tmp, {"example.org": sink.port, "acme.example": sink.port})
    # Failed logins are expected here: the delay after each need not grow to seconds.
    cfg.write_text(cfg.read_text().replace("auth_delay = 0.2", "auth_delay = 0.01"))
    users = [ADMIN, SENDER, AUDITOR, DISABLED, OF_DISABLED_ORG, LATE]
    gw = start_gateway(cfg, dict.fromkeys(users, PASSWORD))
    for args in (
        ("org", "add", "ACME", "--name", "Acme S.L."),
        ("org", "add", "CLOSED", "--name", "Closed S.L."),
        *(("users", "set", a, "--org", "ACME", "--role", r) for a, r in ROLE_OF.items()),
        ("users", "set", DISABLED, "--org", "ACME", "--disable"),
        ("users", "set", LATE, "--org", "ACME"),
        ("users", "set", OF_DISABLED_ORG, "--org", "CLOSED"),
        ("org", "disable", "CLOSED"),
    ):
        out = gw.cli(*args)
        assert out.returncode == 0, out.stderr
    yield gw
    gw.stop()
    assert_clean_log(gw.log())


def auth(gw: Gateway, user: str, password: str = PASSWORD) -> tuple[int, bytes]:
    """One AUTH PLAIN attempt on a new connection: the reply's code and text."""
    client = gw.smtp(None)
    try:
        client.user, client.password = user, password
        try:
            code, text = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as err:
            return err.smtp_code, err.smtp_error
        return code, text
    finally:
        client.close()


@pytest.mark.parametrize("user", [ADMIN, SENDER, AUDITOR], ids=lambda u: ROLE_OF[u])
def test_send_row_through_smtp(gateway: Gateway, sink: Sink, user: str) -> None:
    """Each role logs in; an admin and a sender send certified mail, an auditor's MAIL
    FROM is refused with a sentence naming its role."""
    role = ROLE_OF[user]
    client = gateway.smtp(user)
    try:
        if role == "auditor":
            code, text = client.mail(user)
            assert f"{code} {text.decode()}" == replies.ROLE_DOES_NOT_SEND.format(role="auditor")
            return
        raw = make_message(subject=f"from the {role}", sender=user)
        client.sendmail(user, ["bob@example.org", CERT_ADDRESS], raw)
    finally:
        client.quit()
    sink.wait_for(lambda got: any(f"from the {role}".encode() in m.data for m in got))


def test_a_disabled_account_fails_auth_like_a_wrong_password(gateway: Gateway) -> None:
    wrong = auth(gateway, SENDER, "not the password")
    unknown = auth(gateway, "nobody@acme.example")
    disabled = auth(gateway, DISABLED)
    closed = auth(gateway, OF_DISABLED_ORG)
    assert wrong == unknown == disabled == closed
    assert f"{wrong[0]} {wrong[1].decode()}" == replies.AUTH_FAILED


def test_a_user_disabled_after_login_sends_nothing(gateway: Gateway) -> None:
    client = gateway.smtp(LATE)
    try:
        out = gateway.cli("users", "set", LATE, "--disable")
        assert out.returncode == 0, out.stderr
        code, text = client.mail(LATE)
        assert f"{code} {text.decode()}" == replies.ACCOUNT_CANNOT_SEND
    finally:
        client.quit()
    assert auth(gateway, LATE)[0] == 535
    assert gateway.cli("users", "set", LATE, "--enable").returncode == 0
    assert auth(gateway, LATE)[0] == 235  # enabled again, it logs in


def test_the_tests_docs_accounts_names_exist() -> None:
    """Every ``tests/test_x.py::name`` docs/accounts.md cites is a test of that file (a
    file another part of the console or API adds is checked once it is there)."""
    text = (ROOT / "docs" / "accounts.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(tests/test_\w+\.py)::(\w+)`", text))
    assert cited
    for path, name in cited:
        source = ROOT / path
        if source.exists():
            assert re.search(rf"^def {name}\(", source.read_text(), re.M), f"{path}::{name}"
