"""The web console names an SMS certificate as its PDF does (docs/sms.md, "The
certificate"): the list's result and the document's page in the words of SMS, each
phone's result from its SMS outcome, never a mail server's.

The certificates are those of tests/test_sms_certificate.py (made by the certify stage
from a real store); the console is the gateway's own HTTP application on a port of its
own, logged in to over HTTP as the sender, and its pages are read as served (HTML).
"""

from __future__ import annotations

import asyncio
import html
import re
import time

import aiohttp
from aiohttp import web

from relay.smtpd.users import hash_password
from relay.web.tracking import StoreBackend, make_http_runner
from tests.conftest import PASSWORD
from tests.console_site import COOKIE
from tests.test_sms_certificate import SENDER, Made, made

__all__ = ["made"]  # the certificates, made once for this module


def text_of(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


async def console_pages(m: Made, language: str, *paths: str) -> list[str]:
    """``paths`` of the console as the sender of the certificates reads them."""
    runner = await make_http_runner(m.cfg, b"k" * 32, StoreBackend(m.cfg, m.store, lambda: None))
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        origin = f"http://127.0.0.1:{runner.addresses[0][1]}"
        jar = aiohttp.DummyCookieJar()  # the __Host- cookie is sent by hand, as a browser does
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.post(
                f"{origin}/app/login",
                data={"address": SENDER, "password": PASSWORD},
                headers={"Origin": origin, "Accept-Language": language},
                allow_redirects=False,
            ) as login:
                assert login.status == 303, await login.text()
                cookie = login.cookies[COOKIE].value
            out = []
            for path in paths:
                async with session.get(
                    f"{origin}{path}",
                    headers={"Cookie": f"{COOKIE}={cookie}", "Accept-Language": language},
                ) as page:
                    assert page.status == 200, await page.text()
                    out.append(text_of(await page.text()))
            return out
    finally:
        await runner.cleanup()


def as_sender(m: Made) -> None:
    """The sender as a console user (password PASSWORD) of the organisation its
    messages are attributed to."""
    m.store.add_user(SENDER, hash_password(PASSWORD), time.time())  # False: it exists
    m.store.run_sync(lambda db: db.execute("UPDATE messages SET org = 'default'"))


def test_an_sms_certificate_is_listed_and_shown_in_the_words_of_sms(made: dict[str, Made]) -> None:
    m = made["sms"]
    as_sender(m)
    cert_id = m.evidence["certificate_id"]
    mixed_id = made["mixed"].evidence["certificate_id"]
    listed, shown, mixed = asyncio.run(
        console_pages(
            m, "en", "/app/certificates", f"/app/certificates/{cert_id}",
            f"/app/certificates/{mixed_id}",
        )
    )  # fmt: skip
    row = listed.partition(cert_id)[2].partition("CF-")[0]
    assert "SMS partly delivered" in row, listed
    assert "Certificate of partial delivery of a certified SMS" in shown  # the PDF's title
    assert "SMS partly delivered" in shown
    assert "SMS delivered to the phone (operator's receipt)" in shown
    assert "SMS refused by the operator's SMS centre" in shown
    assert "SMS not sent: the operator's SMS centre did not take it in time" in shown
    assert "e-mail" not in shown and "mail server" not in shown
    # A message to e-mail and phones keeps the e-mail title; each phone is still a phone.
    assert "Certificate of delivery of a certified e-mail" in mixed
    assert "Accepted by the recipient's mail server" in mixed
    assert "SMS delivered to the phone (operator's receipt)" in mixed
    (es,) = asyncio.run(console_pages(m, "es", "/app/certificates"))
    assert "SMS entregado en parte" in es.partition(cert_id)[2].partition("CF-")[0]
