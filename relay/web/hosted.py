"""The hosted content's page (docs/hosted.md): ``/h/<token>``, where a recipient of a hosted
message comes to get it, and where the content is handed over with evidence.

- ``GET /h/<token>``: the landing page (who sent what, until when) with one button,
  "Open the message". Nothing is handed over by a GET: mail scanners and link previews
  fetch every link they see, and a fetch by a machine must not count as the recipient's.
- ``POST /h/<token>/open``: the handover. ``ContentHandover`` (ETSI EN 319 522-2) is
  recorded with the time, the client's address and user agent, classified as tracking
  classifies (:func:`addendum.classify.classify`), and the SHA-256 of the exact page
  sent; only then is the page sent: the header fields, the text, the HTML body in a
  sandboxed ``iframe`` (``sandbox`` without scripts; remote images blocked by the page's
  Content-Security-Policy until the reader asks for them), the attachments.
- ``POST /h/<token>/a/<n>``: one attachment, ``Content-Disposition: attachment`` and
  ``X-Content-Type-Options: nosniff``; each download is one more ``ContentHandover``.
- ``POST /h/<token>/code`` (``+hosted-code``): a one-time code mailed to the recipient;
  the open then needs it, so the access is bound to the mailbox.
- ``POST /h/<token>/decide`` (``+accept``): the recipient's acceptance or rejection, with
  an optional typed name and comment, recorded once (:mod:`relay.certify.acceptance`
  makes the sender's certificate).

Every POST carries a per-page token (an HMAC of the link and the time under the
gateway's key, valid :data:`FORM_SECONDS`), so another site cannot make a browser open,
download or decide. An unknown, malformed or expired link (past its expiry, opened or not), and every
other path under ``/h/``, gets one identical 404 page (it depends only on the request's language).
Requests are counted per client (:mod:`relay.web.ratelimit`, ``[web] rate_limit``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web

from addendum.classify import classify
from addendum.http import client_ip, reader_language, trusted_networks
from certifier.i18n import Reader, translations
from relay.certify.hosted_notification import build_code_mail
from relay.certify.notices import N_, original_headers
from relay.config import Config
from relay.hosted.content import Content, read_content
from relay.hosted.modes import CODE_MODES, DECISION_MODES, TOKEN, token_hash
from relay.logs import printable
from relay.queue.hosted import EXPIRED, WAITING
from relay.queue.ids import new_certificate_id, new_queue_id
from relay.queue.records import NewMessage
from relay.queue.spool import Spool, SpoolFileMissing
from relay.queue.states import MessageKind
from relay.web.pages import LANGUAGE_NAMES, render
from relay.web.ratelimit import RateLimiter
from relay.web.ratelimit import limited as rate_limited

__all__ = ["CONTENT_SECURITY_POLICY", "HostedPage", "install"]

log = logging.getLogger("certifica/hosted")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
"""The pages' policy: nothing but the gateway's own style sheet; forms post back here.
The HTML body's ``srcdoc`` frame inherits it (no remote image, no script)."""
IMAGES_POLICY = CONTENT_SECURITY_POLICY.replace("img-src 'self'", "img-src 'self' data: https:")
"""The same after the reader asked for the message's images (https only)."""
DOWNLOAD_POLICY = "default-src 'none'; sandbox"
"""An attachment's: were a browser to show it anyway, it runs nothing."""

PAGE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "Cache-Control": "no-store",
    "Vary": "Accept-Language",
}

FORM_SECONDS = 3600.0
"""How long a page's forms stay valid."""
CODE_DIGITS = 6
LOOKUP_TIMEOUT = 5.0


_INVISIBLE = frozenset(("Cc", "Cf", "Co", "Cs", "Cn"))
"""Unicode categories never kept in a typed text: controls (NUL, BEL), format characters
(the bidirectional overrides such as U+202E that reorder what a reader sees), private
use, surrogates and unassigned code points."""


def typed_text(text: str, limit: int, *, lines: bool) -> str:
    """What a recipient typed (a name, a comment), as the evidence keeps it: without
    control, format or bidi characters, spaces runs made one, at most ``limit``
    characters; a comment keeps its line breaks (``lines``), a name is one line. The
    certificate prints these values and a court reads them: what is kept is what the
    recipient saw themselves type, with nothing that could make it read otherwise."""
    kept_lines = []
    for line in text.splitlines() if lines else [text]:
        visible = "".join(c if unicodedata.category(c) not in _INVISIBLE else " " for c in line)
        kept_lines.append(" ".join(visible.split()))
    joined = "\n".join(kept_lines) if lines else kept_lines[0]
    return joined.strip()[:limit]


class HostedRecords(Protocol):
    """What the page reads and writes (the queue's store, :mod:`relay.queue.hosted`)."""

    async def hosted_by_token(self, token_sha256: str) -> dict[str, Any] | None: ...

    async def record_handover(
        self,
        recipient_id: int,
        detail: dict[str, Any],
        now: float,
        page_sha256: str | None = None,
        page: tuple[str, bytes] | None = None,
    ) -> dict[str, Any] | None: ...

    async def shown_page(self, recipient_id: int, nonce: str) -> tuple[str, bytes] | None: ...

    async def set_hosted_code(
        self,
        recipient_id: int,
        code_sha256: str,
        expires: float,
        now: float = 0.0,
        per_day: int = 0,
    ) -> str | None: ...

    async def code_locked(self, recipient_id: int, now: float) -> bool: ...

    async def check_hosted_code(
        self,
        recipient_id: int,
        code_sha256: str,
        now: float,
        tries: int,
        failures: int = 0,
        lock_seconds: float = 0.0,
    ) -> bool: ...

    async def record_decision(
        self,
        recipient_id: int,
        decision: str,
        detail: dict[str, Any],
        cert_id: str,
        now: float,
        page: bytes | None = None,
    ) -> bool: ...

    async def user_reading(self, address: str) -> tuple[str | None, str | None]: ...


class Mailer(Protocol):
    """Queues a mail the gateway wrote (the one-time code) durably before it returns."""

    async def __call__(self, parent_qid: str, to: str, data: bytes) -> None: ...


def install(
    app: web.Application,
    cfg: Config,
    records: HostedRecords,
    spool: Spool,
    key: bytes,
    mailer: Mailer | None = None,
    wake: Callable[[], None] | None = None,
) -> None:
    """Add the ``/h/`` routes to ``app`` (the public HTTP listener's); ``wake`` tells the
    queue manager a decision's certificate is owed."""
    HostedPage(cfg, records, spool, key, mailer, wake).add_routes(app)


def code_hash(token_sha256: str, code: str) -> str:
    """What the database keeps of a one-time code (bound to its link)."""
    return hashlib.sha256(f"{token_sha256}|{code}".encode()).hexdigest()


class HostedPage:
    """The handlers of the ``/h/`` routes, sharing one rate limiter."""

    def __init__(
        self,
        cfg: Config,
        records: HostedRecords,
        spool: Spool,
        key: bytes,
        mailer: Mailer | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.wake = wake
        self.cfg = cfg
        self.records = records
        self.spool = spool
        self.key = key
        self.mailer = mailer
        self.limiter = RateLimiter(cfg.web.rate_limit)
        self.trusted = trusted_networks(cfg.web.trusted_proxies)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/h/{token}", self.limited(self.landing))
        app.router.add_post("/h/{token}/open", self.limited(self.open))
        app.router.add_post("/h/{token}/code", self.limited(self.send_code))
        app.router.add_post("/h/{token}/decide", self.limited(self.decide))
        app.router.add_post("/h/{token}/a/{number}", self.limited(self.download))
        app.router.add_route("*", "/h/{rest:.*}", self.limited(self.not_found))

    # --- shared ---------------------------------------------------------------------

    def limited(self, handler: Any) -> Any:
        return rate_limited(
            self.limiter, self.ip, handler, self.refusal, log, "hosted page: records not read"
        )

    def refusal(self, request: web.Request, status: int) -> web.Response:
        """The page of a request refused: too many (429), or the records out of reach (503)."""
        if status == 429:
            return self.message(
                request,
                429,
                N_("Too many requests"),
                N_("Too many requests from your network address. Please try again in a minute."),
            )
        return self.message(
            request,
            503,
            N_("Temporarily unavailable"),
            N_("Temporarily unavailable, please try again in a minute."),
        )

    def ip(self, request: web.Request) -> str:
        return client_ip(request, self.trusted)

    def language(self, request: web.Request, fallback: str | None = None) -> str:
        chosen = request.query.get("lang") or request.headers.get("Accept-Language")
        if not chosen and fallback:
            return fallback
        return reader_language(request, fallback or self.cfg.gateway.language)

    def page(
        self, body: str, status: int = 200, policy: str = CONTENT_SECURITY_POLICY
    ) -> web.Response:
        return web.Response(
            status=status,
            body=body.encode("utf-8"),
            content_type="text/html",
            charset="utf-8",
            headers={**PAGE_HEADERS, "Content-Security-Policy": policy},
        )

    def message(
        self, request: web.Request, status: int, title: str, text: str, language: str | None = None
    ) -> web.Response:
        language = language or self.language(request)
        gettext = translations(language, "web").gettext
        body = render(
            "message.html",
            language,
            title=gettext(title),
            text=gettext(text),
            static="/v/static",
            languages=[],
        )
        return self.page(body, status)

    async def not_found(self, request: web.Request) -> web.Response:
        return self.message(
            request,
            404,
            N_("No such message"),
            N_(
                "There is no message at this address, or it is no longer kept here. Please "
                "check that the link was copied in full; the sender can tell you more."
            ),
        )

    async def link(self, request: web.Request) -> dict[str, Any] | None:
        """The link of the request's token; None when unknown, malformed or expired."""
        token = request.match_info.get("token", "")
        if not TOKEN.fullmatch(token):
            return None
        row = await asyncio.wait_for(
            self.records.hosted_by_token(token_hash(token)), LOOKUP_TIMEOUT
        )
        if row is None or row["state"] == EXPIRED:
            return None
        if row["expires"] <= time.time():
            # Past the link's expiry nothing is opened, downloaded or decided, whether it
            # was opened before or not (docs/hosted.md, "Expiry and retention"); a waiting
            # link the hourly task has not certified yet is already gone for the page.
            return None
        return row

    def form_key(
        self, row: dict[str, Any], scope: str, issued: int | None = None, nonce: str = ""
    ) -> str:
        """The forms' key of a page: ``landing`` (open, ask for a code) or ``content``
        (also download and decide: given only with the content, so with ``+hosted-code``
        only after the code). A content page's key carries its ``nonce``, which names
        that rendering: a decision certifies the page it was posted from."""
        issued = int(time.time()) if issued is None else issued
        text = f"hosted-form|{scope}|{row['token_sha256']}|{issued}|{nonce}"
        mac = hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{issued}.{nonce}.{mac}" if nonce else f"{issued}.{mac}"

    def form_ok(self, row: dict[str, Any], value: str, *scopes: str) -> bool:
        issued = value.split(".")[0]
        if not issued.isdigit() or time.time() - int(issued) > FORM_SECONDS:
            return False
        nonce = form_nonce(value)
        return any(
            hmac.compare_digest(self.form_key(row, scope, int(issued), nonce), value)
            for scope in scopes
        )

    async def reader(self, request: web.Request, row: dict[str, Any]) -> Reader:
        """The recipient's language (the page's choice, the browser's, the user's)."""
        language, timezone = await self.records.user_reading(str(row["address"]))
        return Reader(self.language(request, language), timezone or self.cfg.gateway.timezone)

    def languages(self, current: str) -> list[dict[str, Any]]:
        return [
            {"code": code, "name": name, "current": code == current}
            for code, name in LANGUAGE_NAMES.items()
        ]

    async def raw(self, row: dict[str, Any]) -> bytes | None:
        try:
            return await asyncio.to_thread(self.spool.read_any, str(row["qid"]))
        except SpoolFileMissing:
            log.error("%s: hosted content missing from the spool archive", row["qid"])
            return None

    def context(
        self,
        request: web.Request,
        row: dict[str, Any],
        reader: Reader,
        scope: str = "landing",
        nonce: str = "",
    ) -> dict[str, Any]:
        return {
            "sender": str(row.get("auth_user") or row["sender"]),
            "expires": reader.moment(row["expires"]),
            "mode": str(row["mode"]),
            "code_mode": row["mode"] in CODE_MODES,
            "decides": row["mode"] in DECISION_MODES,
            "form": self.form_key(row, scope, nonce=nonce),
            "base": f"/h/{request.match_info['token']}",
            "lang": reader.language,
            "decision": row.get("decision"),
            "decided_at": reader.moment(row["decided_at"]) if row.get("decided_at") else "",
            "static": "/v/static",
        }

    def event(self, request: web.Request, row: dict[str, Any], what: str) -> dict[str, Any]:
        """The context of one handover, as tracking records a hit."""
        ip, agent = self.ip(request), request.headers.get("User-Agent", "")[:500]
        since = time.time() - row["last_attempt"] if row.get("last_attempt") else None
        verdict = classify(
            "open",
            agent,
            ip,
            since,
            method=request.method,
            fast_seconds=self.cfg.tracking.fast_seconds,
        )
        return {
            "what": what,
            "mode": str(row["mode"]),
            "ip": ip,
            "user_agent": agent,
            "automatic": verdict.automatic,
            "reason": verdict.reason,
        }

    # --- the routes -------------------------------------------------------------------

    async def landing(self, request: web.Request) -> web.Response:
        row = await self.link(request)
        if row is None:
            return await self.not_found(request)
        reader = await self.reader(request, row)
        raw = await self.raw(row)
        if raw is None:
            return await self.not_found(request)
        return self.landing_page(request, row, reader, raw, self.languages(reader.language))

    async def send_code(self, request: web.Request) -> web.Response:
        row = await self.link(request)
        if row is None:
            return await self.not_found(request)
        form = await request.post()
        reader = await self.reader(request, row)
        key = str(form.get("form", ""))
        if row["mode"] not in CODE_MODES or not self.form_ok(row, key, "landing", "content"):
            return await self.not_found(request)
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        now = time.time()
        expires = now + self.cfg.hosted.code_minutes * 60
        refused = await self.records.set_hosted_code(
            int(row["recipient_id"]),
            code_hash(str(row["token_sha256"]), code),
            expires,
            now,
            self.cfg.hosted.codes_per_day,
        )
        if refused is not None:  # per link, whoever asks (docs/hosted.md)
            log.info("%s: one-time code refused for a link (%s)", row["qid"], refused)
            raw = await self.raw(row)
            return self.landing_page(request, row, reader, raw, code_refused=refused)
        if self.mailer is not None:
            data = build_code_mail(self.cfg, str(row["address"]), code, reader, str(row["qid"]))
            await self.mailer(str(row["qid"]), str(row["address"]), data)
        log.info("%s: one-time code sent to <%s>", row["qid"], printable(str(row["address"])))
        raw = await self.raw(row)
        return self.landing_page(request, row, reader, raw, code_sent=True)

    def landing_page(
        self,
        request: web.Request,
        row: dict[str, Any],
        reader: Reader,
        raw: bytes | None,
        languages: Sequence[dict[str, Any]] = (),
        *,
        code_sent: bool = False,
        code_wrong: bool = False,
        code_refused: str | None = None,
    ) -> web.Response:
        """The landing page (the "open the message" button, or the one-time code's form
        and what became of the last code): the one rendering of every route that shows it."""
        body = render(
            "hosted/landing.html",
            reader.language,
            title=translations(reader.language, "web").gettext("A certified message for you"),
            subject=original_headers(raw or b"").subject,
            languages=list(languages),
            code_sent=code_sent,
            code_wrong=code_wrong,
            code_refused=code_refused,
            **self.code_limits(),
            **self.context(request, row, reader),
        )
        return self.page(body)

    def code_limits(self) -> dict[str, Any]:
        """The one-time code's limits, as the landing page states them."""
        return {
            "codes_per_day": self.cfg.hosted.codes_per_day,
            "code_failures": self.cfg.hosted.code_failures,
            "code_lock_hours": max(1, round(self.cfg.hosted.code_lock_minutes / 60)),
        }

    async def open(self, request: web.Request) -> web.Response:
        row = await self.link(request)
        if row is None:
            return await self.not_found(request)
        form = await request.post()
        if not self.form_ok(row, str(form.get("form", "")), "landing", "content"):
            return await self.not_found(request)
        reader = await self.reader(request, row)
        raw = await self.raw(row)
        if raw is None:
            return await self.not_found(request)
        if row["mode"] in CODE_MODES:
            code = "".join(str(form.get("code", "")).split())[:CODE_DIGITS]
            good = code.isdigit() and await self.records.check_hosted_code(
                int(row["recipient_id"]),
                code_hash(str(row["token_sha256"]), code),
                time.time(),
                self.cfg.hosted.code_tries,
                self.cfg.hosted.code_failures,
                self.cfg.hosted.code_lock_minutes * 60.0,
            )
            if not good:
                locked = await self.records.code_locked(int(row["recipient_id"]), time.time())
                return self.landing_page(  # the form again, with the sentence
                    request,
                    row,
                    reader,
                    raw,
                    code_sent=not locked,
                    code_wrong=not locked,
                    code_refused="locked" if locked else None,
                )
        images = form.get("images") == "1"
        content = await asyncio.to_thread(read_content, raw)
        nonce = secrets.token_hex(16)
        body = self.content_page(request, row, reader, content, images, nonce)
        sent = body.encode("utf-8")  # the exact bytes of the response's body
        page_sha256 = hashlib.sha256(sent).hexdigest()
        detail = {
            **self.event(request, row, "page"),
            "page_sha256": page_sha256,
            "page_nonce": nonce,
            "attachments": [{"name": a.name, "sha256": a.sha256} for a in content.attachments],
            "images": images,
            "code_checked": row["mode"] in CODE_MODES,  # bound to the mailbox
        }
        kept = (nonce, sent) if row["mode"] in DECISION_MODES and not row.get("decision") else None
        done = await self.records.record_handover(
            int(row["recipient_id"]), detail, time.time(), page_sha256, kept
        )
        if done is None:
            return await self.not_found(request)
        if done["first"] and self.wake is not None:
            self.wake()  # the message's certificate may be due now
        log.info(
            "%s: content handed over to <%s> from %s",
            row["qid"],
            printable(str(row["address"])),
            detail["ip"],
        )
        return web.Response(
            status=200,
            body=sent,
            content_type="text/html",
            charset="utf-8",
            headers={
                **PAGE_HEADERS,
                "Content-Security-Policy": IMAGES_POLICY if images else CONTENT_SECURITY_POLICY,
            },
        )

    def content_page(
        self,
        request: web.Request,
        row: dict[str, Any],
        reader: Reader,
        content: Content,
        images: bool,
        nonce: str,
    ) -> str:
        return render(
            "hosted/content.html",
            reader.language,
            title=content.subject or "—",
            content=content,
            html=_framed(content.html) if content.html is not None else None,
            images=images,
            languages=[],
            **self.context(request, row, reader, "content", nonce),
        )

    async def download(self, request: web.Request) -> web.StreamResponse:
        row = await self.link(request)
        if row is None:
            return await self.not_found(request)
        form = await request.post()
        if not self.form_ok(row, str(form.get("form", "")), "content") or row["state"] == WAITING:
            return await self.not_found(request)  # the page was opened first
        number = request.match_info["number"]
        raw = await self.raw(row)
        if raw is None or not number.isdigit():
            return await self.not_found(request)
        content = await asyncio.to_thread(read_content, raw)
        found = next((a for a in content.attachments if a.number == int(number)), None)
        if found is None:
            return await self.not_found(request)
        detail = {
            **self.event(request, row, "download"),
            "attachment": found.number,
            "name": found.name,
            "sha256": found.sha256,
        }
        if (
            await self.records.record_handover(int(row["recipient_id"]), detail, time.time())
            is None
        ):
            return await self.not_found(request)
        ascii_name = "".join(
            c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in found.name
        )
        # RFC 6266 section 4.3: an ASCII name for old clients, the exact one in filename*.
        utf8_name = quote(found.name, safe="")
        disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{utf8_name}"
        return web.Response(
            body=found.data,
            headers={
                **PAGE_HEADERS,
                "Content-Type": "application/octet-stream",
                "Content-Disposition": disposition,
                "Content-Security-Policy": DOWNLOAD_POLICY,
            },
        )

    async def decide(self, request: web.Request) -> web.Response:
        row = await self.link(request)
        if row is None or row["mode"] not in DECISION_MODES:
            return await self.not_found(request)
        form = await request.post()
        decision = str(form.get("decision", ""))
        key = str(form.get("form", ""))
        if (
            not self.form_ok(row, key, "content")
            or decision not in ("accepted", "rejected")
            or row["state"] == WAITING
        ):
            return await self.not_found(request)
        # The page this form came from (its nonce): its hash is what is certified.
        shown = await self.records.shown_page(int(row["recipient_id"]), form_nonce(key))
        if shown is None and not row.get("decision"):
            return await self.not_found(request)
        page_sha256, page = shown if shown is not None else ("", b"")
        reader = await self.reader(request, row)
        raw = await self.raw(row)
        if raw is None:
            return await self.not_found(request)
        content = await asyncio.to_thread(read_content, raw)
        detail = {
            **self.event(request, row, "decision"),
            "decision": decision,
            "name": typed_text(str(form.get("name", "")), 200, lines=False),
            "comment": typed_text(str(form.get("comment", "")), 2000, lines=True),
            "page_sha256": page_sha256,
            "page_nonce": form_nonce(key),
            "attachments": [{"name": a.name, "sha256": a.sha256} for a in content.attachments],
            "message_sha256": str(row["message_sha256"]),
            "code_checked": row["mode"] in CODE_MODES,  # access bound to the mailbox
        }
        now = time.time()
        recorded = await self.records.record_decision(
            int(row["recipient_id"]), decision, detail, new_certificate_id(), now, page
        )
        if recorded:
            log.info(
                "%s: <%s> %s the content",
                row["qid"],
                printable(str(row["address"])),
                decision,
            )
            row = {**row, "decision": decision, "decided_at": now}
            if self.wake is not None:
                self.wake()  # the sender's certificate is made at once
        else:  # decided already: the page shows the first decision (or it just expired)
            again = await self.link(request)
            if again is None or not again.get("decision"):
                return await self.not_found(request)
            row = again
        body = render(
            "hosted/decided.html",
            reader.language,
            title=translations(reader.language, "web").gettext("Your decision is recorded"),
            languages=[],
            **self.context(request, row, reader),
        )
        return self.page(body)


def form_nonce(key: str) -> str:
    """The nonce of a content page's form key (empty for a landing page's)."""
    parts = key.split(".")
    return parts[1] if len(parts) == 3 else ""


def _framed(html: str) -> str:
    """The message's HTML as the frame's document: links open outside the frame."""
    return '<!doctype html><meta charset="utf-8"><base target="_blank">' + html


class SpoolMailer:
    """:class:`Mailer` on the gateway's spool and store: the mail is written durably and
    queued (a generated mail, null sender) before the page answers."""

    def __init__(self, store: Any, spool: Spool, wake: Any) -> None:
        self.store = store
        self.spool = spool
        self.wake = wake

    async def __call__(self, parent_qid: str, to: str, data: bytes) -> None:
        qid = new_queue_id()
        await asyncio.to_thread(self.spool.store, qid, data)
        msg = NewMessage(
            qid=qid,
            kind=MessageKind.NOTICE,
            sender="",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            recipients=(to,),
            parent_qid=parent_qid,
            method="generated",
        )
        try:
            await self.store.enqueue(msg)
        except Exception:
            await asyncio.to_thread(self.spool.remove, qid)
            raise
        self.wake()


def install_on_gateway(
    app: web.Application, cfg: Config, store: Any, key: bytes, wake: Any
) -> None:
    """:func:`install` with the gateway's own spool, store and wake-up (the acceptor's)."""
    from relay.process.gateway import state_paths

    spool = Spool(state_paths(cfg)["spool"])
    install(app, cfg, store, spool, key, SpoolMailer(store, spool, wake), wake)
