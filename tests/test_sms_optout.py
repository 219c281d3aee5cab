"""Opting out of SMS (docs/sms.md, "Contacts, consent and opt-out"): a reply STOP
(any case, punctuation around it) to an organisation's number (written in any form), or
to a shared number (the organisation that last sent to the phone from that number,
never one that wrote under a name; nobody when none did), opts the number out at once with the MO
as evidence and queues one confirming SMS; the opt-out page in a real browser (headless
Chromium) opts a number out of the organisations sending under the name typed, in the
reader's language, refuses a POST from elsewhere, and says nothing of who is a
contact; marketing to an opted-out number is then skipped with the reason.

One real gateway with ``[sms] enabled`` (its SMSC a test SMSC on loopback). The MO is
given to :func:`relay.sms.optout.handle_mo` on the gateway's own store, as the ``sms``
process does for every MO the SMSC delivers.
"""

from __future__ import annotations

import asyncio
import html
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright import sync_api

from relay.config import Config, load_config
from relay.queue.contacts import OptOut, optout_stops
from relay.queue.evidence_log import entries_for
from relay.queue.states import Role
from relay.queue.store import Store
from relay.sms.inbound import MobileOriginated
from relay.sms.optout import (
    TON_INTERNATIONAL,
    TON_NATIONAL,
    destination_numbers,
    destination_ton,
    handle_mo,
    optout_keyword,
)
from relay.web.sms_optout import PER_NUMBER
from tests.conftest import (
    PASSWORD,
    Gateway,
    Sink,
    assert_clean_log,
    free_port,
    start_gateway,
    write_config,
)
from tests.smsc import SmscThread
from tests.test_sms_intake import DOMAIN, accepted, addresses_of, sms_config, sms_row
from tests.test_verification_browser import CHROMIUM, CHROMIUM_ARGS

ACME_NUMBER = "+34600999888"
SHARED_NUMBER = "+34611000000"  # GAMMA's users send from this number (a phone can reply)
USERS = {
    "alice@example.com": ("ACME", Role.ADMIN),
    "bea@example.com": ("BETA", Role.ADMIN),
    "carl@example.com": ("GAMMA", Role.ADMIN),
    "dora@example.com": ("DELTA", Role.ADMIN),
    "eve@example.com": ("EPSILON", Role.ADMIN),
}


def open_db(gw: Gateway) -> Store:
    return Store(gw.state / "queue.db", 3600.0)


def query(gw: Gateway, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with open_db(gw) as store:
        return store.run_sync(lambda db: db.conn.execute(sql, args).fetchall(), read=True)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, mx: Sink) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("sms-optout")
    routes = {"example.org": mx.port, "example.com": mx.port, DOMAIN: free_port()}
    with SmscThread() as smsc:
        extra = sms_config(smsc.port, tmp).replace("[web]\n", "[web]\nrate_limit = 600\n")
        # one acceptor: the per-number limit is counted per acceptor process
        extra += "[processes]\nacceptors = 1\n"
        cfg = write_config(tmp, routes, extra)
        gateway = start_gateway(cfg, {address: PASSWORD for address in USERS})
        for org in ("ACME", "BETA", "GAMMA", "DELTA", "EPSILON"):
            assert gateway.cli("org", "add", org, "--name", f"{org} S.L.").returncode == 0
            assert gateway.cli("credits", "add", org, "100000", "--note", "t").returncode == 0
        for address, (org, role) in USERS.items():
            result = gateway.cli("users", "set", address, "--org", org, "--role", str(role))
            assert result.returncode == 0, result.stderr
        result = gateway.cli(
            "org", "set", "ACME", "--sms-sender", "ACME", "--sms-number", ACME_NUMBER
        )
        assert result.returncode == 0, result.stderr
        result = gateway.cli("users", "set", "carl@example.com", "--sms-sender", SHARED_NUMBER)
        assert result.returncode == 0, result.stderr
        result = gateway.cli(
            "users", "set", "eve@example.com", "--sms-sender", SHARED_NUMBER, "--force"
        )  # two organisations sending from one number, as from the shared [sms] source
        assert result.returncode == 0, result.stderr
        result = gateway.cli("users", "set", "dora@example.com", "--sms-sender", "DeltaOld")
        assert result.returncode == 0, result.stderr
        for number in ("+34600000011", "+34600000013", "+34600000014", "+34600000019"):
            result = gateway.cli(
                "contacts", "add", "ACME", number, "--consent", "marketing",
                "--consent-source", "shop", "--group", "fans",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        yield gateway
        gateway.stop()
    assert_clean_log(gateway.log())


@pytest.fixture(scope="module")
def cfg(gw: Gateway) -> Config:
    return load_config(gw.config)


def mo(source: str, destination: str, text: str) -> MobileOriginated:
    body = text.encode()
    return MobileOriginated(source, destination, text, b"", 0, body)


def reply(gw: Gateway, cfg: Config, message: MobileOriginated) -> None:
    async def run() -> None:
        with open_db(gw) as store:
            await handle_mo(cfg, store, message, b"\x00raw" + message.short_message)

    asyncio.run(run())


def optouts(gw: Gateway, number: str) -> list[tuple[str, str]]:
    return query(gw, "SELECT org, how FROM sms_optouts WHERE number = ? ORDER BY org", number)


def confirmations(gw: Gateway, number: str) -> list[str]:
    return [
        r[0]
        for r in query(
            gw,
            "SELECT s.text FROM sms_messages s JOIN recipients r ON r.qid = s.qid"
            " JOIN messages m ON m.qid = s.qid WHERE r.address = ? AND m.kind = 'notice'",
            f"{number}@{DOMAIN}",
        )
    ]


def test_keywords_any_case_and_punctuation(cfg: Config) -> None:
    assert optout_keyword(cfg, " Stop. ") == "STOP"
    assert optout_keyword(cfg, "¡baja!") == "BAJA"
    assert optout_keyword(cfg, "Baixa") == "BAIXA"
    assert optout_keyword(cfg, "stop it") is None
    assert optout_keyword(cfg, "") is None


def test_stop_to_the_organisations_number(gw: Gateway, cfg: Config) -> None:
    reply(gw, cfg, mo("+34600000011", ACME_NUMBER[1:], " Stop. "))
    assert optouts(gw, "+34600000011") == [("ACME", "mo")]
    assert confirmations(gw, "+34600000011") == [
        "ACME S.L.: you will receive no more marketing SMS from us."
    ]
    sender = query(
        gw,
        "SELECT s.sender_id FROM sms_messages s JOIN recipients r ON r.qid = s.qid"
        " WHERE r.address = ?",
        f"+34600000011@{DOMAIN}",
    )
    assert sender == [("ACME",)]
    with open_db(gw) as store:
        entries = store.run_sync(lambda db: entries_for(db.conn, "contacts"), read=True)
    found = [
        e.detail for e in entries if e.event == "SmsOptOut" and e.detail["number"] == "+34600000011"
    ]
    assert len(found) == 1
    assert found[0]["how"] == "mo" and found[0]["keyword"] == "STOP"
    assert found[0]["mo"]["text"] == " Stop. " and found[0]["mo"]["destination"] == "34600999888"
    assert found[0]["mo"]["raw"] == (b"\x00raw" + b" Stop. ").hex()
    # a second STOP is kept, and confirmed no more
    reply(gw, cfg, mo("+34600000011", ACME_NUMBER, "STOP"))
    assert len(confirmations(gw, "+34600000011")) == 1
    kept = query(
        gw, "SELECT text, org, action FROM sms_inbound WHERE source = ? ORDER BY id", "+34600000011"
    )
    assert kept == [(" Stop. ", "ACME", "optout"), ("STOP", "ACME", "optout")]


def test_reply_to_a_number_goes_to_its_last_sender_not_to_a_name(gw: Gateway, cfg: Config) -> None:
    # GAMMA wrote from a number, then BETA under the name "Certifica" (nobody can reply
    # to a name): a STOP to GAMMA's number is GAMMA's, whoever wrote last.
    accepted(gw, [f"+34600000012@{DOMAIN}"], user="carl@example.com")
    accepted(gw, [f"+34600000012@{DOMAIN}"], user="bea@example.com")
    reply(gw, cfg, mo("+34600000012", SHARED_NUMBER[1:], "baja"))
    assert optouts(gw, "+34600000012") == [("GAMMA", "mo")]
    assert confirmations(gw, "+34600000012") == [
        "GAMMA S.L.: you will receive no more marketing SMS from us."
    ]


def test_reply_to_a_shared_number_goes_to_the_last_that_sent_from_it(
    gw: Gateway, cfg: Config
) -> None:
    for phone, users in (
        ("+34600000027", ("eve@example.com", "carl@example.com")),
        ("+34600000028", ("carl@example.com", "eve@example.com")),
    ):
        for user in users:
            accepted(gw, [f"{phone}@{DOMAIN}"], user=user)
        accepted(gw, [f"{phone}@{DOMAIN}"], user="alice@example.com")  # as ACME, a name
        reply(gw, cfg, mo(phone, SHARED_NUMBER, "STOP"))
    assert optouts(gw, "+34600000027") == [("GAMMA", "mo")]
    assert optouts(gw, "+34600000028") == [("EPSILON", "mo")]


def test_reply_to_a_number_nobody_sent_from_opts_nobody_out(gw: Gateway, cfg: Config) -> None:
    accepted(gw, [f"+34600000021@{DOMAIN}"], user="bea@example.com")
    reply(gw, cfg, mo("+34600000021", "+34611000099", "STOP"))
    assert optouts(gw, "+34600000021") == []
    assert confirmations(gw, "+34600000021") == []
    assert query(gw, "SELECT org, action FROM sms_inbound WHERE source = ?", "+34600000021") == [
        (None, "none")
    ]


def test_reply_to_the_organisations_number_written_nationally(gw: Gateway, cfg: Config) -> None:
    accepted(gw, [f"+34600000022@{DOMAIN}"], user="alice@example.com")
    accepted(gw, [f"+34600000022@{DOMAIN}"], user="bea@example.com")
    reply(gw, cfg, mo("+34600000022", ACME_NUMBER[3:], "STOP"))  # 600999888
    assert optouts(gw, "+34600000022") == [("ACME", "mo")]


def test_the_destination_read_in_e164() -> None:
    assert destination_numbers("600999888", TON_NATIONAL, "ES") == ["+34600999888"]
    assert destination_numbers("34600999888", TON_INTERNATIONAL, "ES") == ["+34600999888"]
    assert destination_numbers("0034600999888", None, "ES") == ["+34600999888"]
    assert destination_numbers("+34 600 999 888", None, "ES") == ["+34600999888"]
    assert "+34600999888" in destination_numbers("600999888", 0, "ES")
    assert destination_numbers("34600999888", 0, "ES") == ["+34600999888"]
    assert destination_numbers("ACME", None, "ES") == []
    # deliver_sm (SMPP 3.4 section 4.6.1): header, service_type, source TON/NPI/address,
    # destination TON/NPI/address
    body = b"\x00" + b"\x01\x01" + b"34600000022\x00" + b"\x02\x09" + b"600999888\x00"
    pdu = (16 + len(body)).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(8) + body
    assert destination_ton(pdu) == TON_NATIONAL
    assert destination_ton(b"\x00raw") is None


def test_other_texts_are_kept_only(gw: Gateway, cfg: Config) -> None:
    reply(gw, cfg, mo("+34600000020", ACME_NUMBER, "Thanks, see you tomorrow"))
    assert optouts(gw, "+34600000020") == []
    assert query(gw, "SELECT org, action FROM sms_inbound WHERE source = ?", "+34600000020") == [
        ("ACME", "none")
    ]
    # from an unknown phone to an unknown number: kept, for nobody
    reply(gw, cfg, mo("+34600777666", "+34611000001", "STOP"))
    assert query(gw, "SELECT org, action FROM sms_inbound WHERE source = ?", "+34600777666") == [
        (None, "none")
    ]


def test_marketing_skips_the_opted_out(gw: Gateway, cfg: Config) -> None:
    reply(gw, cfg, mo("+34600000014", ACME_NUMBER, "STOP"))
    qid = accepted(gw, [f"fans@{DOMAIN}"], headers="X-Certifica-SMS: marketing\r\n")
    day = time.strftime("%Y-%m-%d", time.gmtime())
    skipped = {s["address"]: s["reason"] for s in sms_row(gw, qid)["skipped"]}
    assert skipped["+34600000014"] == f"opted out on {day} (reply STOP)"
    assert f"+34600000014@{DOMAIN}" not in addresses_of(gw, qid)
    assert f"+34600000019@{DOMAIN}" in addresses_of(gw, qid)


# -- the page -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(locale="es-ES")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    yield tab
    context.close()
    # a 4xx answer is logged by Chromium as a failed resource; nothing else may be
    assert all("status of 4" in e for e in errors), errors


def url(gw: Gateway) -> str:
    return f"http://{gw.listen['http']}/sms/optout"


def test_page_opts_out_in_the_readers_language(gw: Gateway, page: Any) -> None:
    accepted(gw, [f"+34600000013@{DOMAIN}"], user="alice@example.com")  # sent as ACME
    page.goto(url(gw))
    assert page.locator("html").get_attribute("lang") == "es"
    page.fill("#number", "600 000 013")
    page.fill("#sender", "acme")
    page.click("#optout")
    done = page.locator("#done").inner_text()
    assert done == (
        "Solicitud registrada: el número +34600000013 no recibirá más SMS comerciales "
        "enviados como acme a través de este servicio."
    )
    assert optouts(gw, "+34600000013") == [("ACME", "web")]
    qid = accepted(gw, [f"fans@{DOMAIN}"], headers="X-Certifica-SMS: marketing\r\n")
    assert f"+34600000013@{DOMAIN}" not in addresses_of(gw, qid)
    reasons = {s["address"]: s["reason"] for s in sms_row(gw, qid)["skipped"]}
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert reasons["+34600000013"] == f"opted out on {day} (on the opt-out page)"


def test_page_the_shared_sender_and_no_contact_revealed(gw: Gateway, page: Any) -> None:
    # The shared [sms] source: only those that sent to the number under it (BETA did).
    accepted(gw, [f"+34600000017@{DOMAIN}"], user="bea@example.com")
    page.goto(url(gw) + "?lang=en")
    page.fill("#number", "+34 600 000 017")
    page.fill("#sender", "Certifica")
    page.click("#optout")
    shown_sent = page.locator("#done").inner_text()
    assert optouts(gw, "+34600000017") == [("BETA", "web")]
    # A number nobody wrote to: the same answer, nothing recorded.
    page.goto(url(gw) + "?lang=en")
    page.fill("#number", "+34600123123")
    page.fill("#sender", "Certifica")
    page.click("#optout")
    shown_unknown = page.locator("#done").inner_text()
    assert shown_sent.replace("+34600000017", "N") == shown_unknown.replace("+34600123123", "N")
    assert shown_sent == (
        "Done: +34600000017 will receive no more marketing SMS sent as Certifica through this "
        "service."
    )
    assert optouts(gw, "+34600123123") == []


def test_page_unknown_sender_and_bad_number(gw: Gateway, page: Any) -> None:
    page.goto(url(gw) + "?lang=en")
    page.fill("#number", "+34600000015")
    page.fill("#sender", "NoSuchCo")
    page.click("#optout")
    assert page.locator("#error").inner_text() == (
        "No sender of this service is called NoSuchCo. Please check the name as your phone "
        "shows it (capitals do not matter)."
    )
    page.fill("#number", "+34912345678")
    page.fill("#sender", "ACME")
    page.click("#optout")
    assert page.locator("#error").inner_text().startswith("That is not a mobile number.")
    assert optouts(gw, "+34600000015") == []


def test_page_refuses_a_post_from_elsewhere(gw: Gateway) -> None:
    with urllib.request.urlopen(url(gw) + "?lang=en", timeout=10) as response:
        html = response.read().decode()
    token = html.split('name="form" value="', 1)[1].split('"', 1)[0]
    data = urllib.parse.urlencode(
        {"form": token, "number": "+34600000016", "sender": "ACME"}
    ).encode()
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}, {}):
        request = urllib.request.Request(url(gw), data=data, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        refused.value.close()
        assert refused.value.code == 403
    request = urllib.request.Request(
        url(gw),
        data=urllib.parse.urlencode(
            {"form": "1.x", "number": "+34600000016", "sender": "ACME"}
        ).encode(),
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 403
    assert optouts(gw, "+34600000016") == []


def form_token(gw: Gateway) -> str:
    with urllib.request.urlopen(url(gw) + "?lang=en", timeout=10) as response:
        html = response.read().decode()
    return html.split('name="form" value="', 1)[1].split('"', 1)[0]


def post(gw: Gateway, number: str, sender: str, token: str | None = None) -> tuple[int, str]:
    """POST the form as the page does; the status and what the page says."""
    data = {"form": token or form_token(gw), "number": number, "sender": sender}
    request = urllib.request.Request(
        url(gw) + "?lang=en",
        data=urllib.parse.urlencode(data).encode(),
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, page = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, page = err.code, err.read().decode()
        err.close()
    said = re.search(r'id="(?:done|error)">(.*?)</p>', page, re.S)
    return status, html.unescape(said.group(1)) if said else ""


def test_page_token_is_single_use(gw: Gateway) -> None:
    token = form_token(gw)
    assert post(gw, "+34600000030", "ACME", token)[0] == 200
    status, said = post(gw, "+34600000031", "ACME", token)
    assert status == 403 and said.startswith("This form has expired")


def test_page_records_only_where_an_sms_went_and_says_the_same(gw: Gateway) -> None:
    # ACME (its sender ID "ACME") wrote to one number only; a sweep of the numbers
    # around it under "ACME" records nothing, and every answer is the same.
    accepted(gw, [f"+34600000032@{DOMAIN}"], user="alice@example.com")
    answers = {}
    for number in ("+34600000032", "+34600000033", "+34600000034", "+34600000035"):
        status, said = post(gw, number, "acme")
        assert status == 200
        answers[number] = said.replace(number, "N")
    assert len(set(answers.values())) == 1, answers
    assert optouts(gw, "+34600000032") == [("ACME", "web")]
    for number in ("+34600000033", "+34600000034", "+34600000035"):
        assert optouts(gw, number) == []
    detail = query(gw, "SELECT detail FROM sms_optouts WHERE number = ?", "+34600000032")
    assert '"stops": "marketing"' in detail[0][0]


def test_page_a_former_sender_id_reveals_nothing(gw: Gateway) -> None:
    # DELTA's user sent as DeltaOld, then changed it: the name is still known, for any
    # number, and the number it wrote to is opted out of DELTA.
    accepted(gw, [f"+34600000036@{DOMAIN}"], user="dora@example.com")
    result = gw.cli("users", "set", "dora@example.com", "--sms-sender", "DeltaNew")
    assert result.returncode == 0, result.stderr
    sent = post(gw, "+34600000036", "DELTAOLD")
    other = post(gw, "+34600000037", "DELTAOLD")
    assert sent[0] == other[0] == 200
    assert sent[1].replace("+34600000036", "N") == other[1].replace("+34600000037", "N")
    assert optouts(gw, "+34600000036") == [("DELTA", "web")]
    assert optouts(gw, "+34600000037") == []
    status, said = post(gw, "+34600000037", "NeverUsed")
    assert status == 404 and said.startswith("No sender of this service is called NeverUsed.")


def test_page_limits_the_opt_outs_of_one_number(gw: Gateway) -> None:
    statuses = [post(gw, "+34600000038", "ACME")[0] for _ in range(PER_NUMBER + 1)]
    assert statuses == [200] * PER_NUMBER + [429]
    assert post(gw, "+34600000039", "ACME")[0] == 200


def test_a_web_opt_out_stops_marketing_only() -> None:
    web = OptOut("ACME", "+34600000040", 0.0, "web")
    reply_stop = OptOut("ACME", "+34600000040", 0.0, "mo")
    operator = OptOut("ACME", "+34600000040", 0.0, "operator")
    assert optout_stops(web, True, "all") and optout_stops(web, True, "marketing")
    assert not optout_stops(web, False, "all")
    assert optout_stops(reply_stop, False, "all") and optout_stops(operator, False, "all")
    assert not optout_stops(reply_stop, False, "marketing")
