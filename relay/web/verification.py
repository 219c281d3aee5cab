"""The public verification page (README, "Verifying a certificate"): anyone holding a
certificate opens ``<public_url>/v/<code>`` (printed on it, and in its QR code) and reads,
in their language, who issued it, when, its SHA-256, and the outcome per recipient.

Routes, on the gateway's public HTTP listener (:mod:`relay.web.tracking` assembles it):

- ``GET /v/<code>``: the page (``?lang=es|ca|it|en`` overrides ``Accept-Language``).
  Dropping the PDF on it computes its SHA-256 in the browser (WebCrypto; nothing is
  uploaded) and says whether it is exactly the file issued.
- ``POST /v/<code>/check``: the PDF as the body (at most ``[web] max_upload`` bytes, else
  ``413``); its seal and timestamp are checked by ``certifica verify`` in a child process
  (:mod:`relay.web.checker`), never on the event loop; the answer is JSON, in words:
  ``{"same_file": bool, "verdict": "valid"|"content_not_certified"|"not_valid",
  "message": str, "details": [str]}``, or ``{"message": str}`` with ``4xx``/``503``.
- ``POST /v/<code>/renewed``: the document as the archive holds it now (README,
  "Renewal"): after a renewal, a copy with a newer document timestamp than the one
  first issued. Handed out only in exchange for an earlier copy: the body (at most
  ``[web] max_upload`` bytes) must hash to one of the document's recorded versions
  before the current one (``certificate_versions``); anything else, the current copy
  included, gets ``403`` and JSON ``{"message": str}``, and ``404`` once the archive no
  longer holds the current version. The code alone (printed on page 1 and in its QR
  code, so seen by whoever sees a photo of that page) never gives the file: the renewed
  copy carries the message, its attachments, every recipient and the evidence. No hash
  is accepted in place of the file (the page shows the issued hash). The page offers
  it when the file dropped on it is an earlier version (the check's JSON then says
  ``"earlier_copy": true``); its script sends that same file.
- ``GET /v/static/<name>``: the page's script, style sheet and icon (the page runs no
  inline script: its Content-Security-Policy allows only these).

What the page never shows: the message (subject, body, attachments), full addresses (a
recipient is ``b**@example.org``, :func:`relay.web.pages.mask_address`), the queue id.
Once a person's data is erased (``store.erase_verification``) it still confirms the issue
time and the hash, without recipients.

Every ``/v/`` path that is not a document's page answers one 404 page: an unknown code, a
malformed one, another path or method; the body and the header fields depend only on the
request's language, never on what exists. Requests are counted per client
(:mod:`relay.web.ratelimit`, ``[web] rate_limit`` per minute; the static files are not
counted).

What goes wrong, as the visitor sees it (always a sentence in their language, never an
exception's text; one log line for the operator where the gateway is at fault):

- too many requests: ``429`` with ``Retry-After``;
- a file over ``[web] max_upload``: ``413``; an empty body: ``400``;
- the database does not answer within 5 s: ``503`` with ``Retry-After``, logged;
- a check that cannot be made (too many files at once, over its time, the command
  failed): ``503``, "please try again later", logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from markupsafe import Markup

from addendum.http import client_ip, reader_language, trusted_networks
from certifier.errors import TemporaryError
from certifier.i18n import LANGUAGES, Reader, translations
from certifier.outcome import SMS_TITLES, TITLES, Outcome
from relay.config import Config
from relay.queue.verifications import VersionKind
from relay.web.checker import CheckResult, PdfChecker
from relay.web.pages import LANGUAGE_NAMES, grouped, mask_address, qr_svg, render
from relay.web.ratelimit import RateLimiter, client_key

__all__ = ["CONTENT_SECURITY_POLICY", "VerificationRecords", "install"]

STATIC = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # the code is in the URL
    "Cache-Control": "no-store",
    "Vary": "Accept-Language",
}

_CODE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_HEX64 = re.compile(r"[0-9a-f]{64}")

LOOKUP_TIMEOUT = 5.0  # seconds for the database to answer, as the tracking endpoint waits
UPLOAD_SECONDS = 120.0  # seconds for a whole PDF to arrive (25 MB at ~200 kB/s), else 408

log = logging.getLogger("certifica/web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def N_(message: str) -> str:
    """Marks a text of the ``web`` catalog; translated when the page is rendered."""
    return message


RESULTS = {
    "delivered": N_("Accepted by the recipient's mail server"),
    "failed": N_("Not delivered"),
    "bounced": N_("Accepted, then reported undeliverable"),
    "withdrawn": N_("Withdrawn before delivery"),
    "queued": N_("Not yet delivered"),
    "deferred": N_("Not yet delivered"),
    "received": N_("Received"),
}
OTHER_RESULT = N_("As stated in the certificate")
SMS_RESULTS = {
    "delivered": N_("SMS delivered to the phone (operator's receipt)"),
    "no_receipt": N_("SMS sent; no delivery receipt from the operator"),
    "undelivered": N_("SMS not delivered (operator's receipt)"),
    "refused": N_("SMS refused by the operator's SMS centre"),
    "not_sent": N_("SMS not sent: the operator's SMS centre did not take it in time"),
}
"""A phone's result (the record's ``sms``, docs/sms.md): no mail server took it."""

# The checks of certifier.verify, in the four groups the page words for a visitor.
SEAL_CHECKS = frozenset({"pdf", "signature-count", "coverage", "container", "integrity"})


class Unavailable(TemporaryError):
    """The records could not be read: the visitor is asked to come back (503)."""


class VerificationRecords(Protocol):
    """Where the records come from (the queue's store, :mod:`relay.queue.verifications`)."""

    async def verification(self, code: str) -> dict[str, Any] | None: ...

    async def certificate_versions(self, cert_id: str) -> list[dict[str, Any]]: ...

    async def last_restore(self) -> tuple[float, str] | None: ...


def install(
    app: web.Application, cfg: Config, records: VerificationRecords, archive: Path | None = None
) -> None:
    """Add the verification routes to ``app`` (the public HTTP listener's); ``archive``:
    where the issued documents are kept (``[evidence] archive_dir``), for the renewed
    copy given in exchange for an earlier one (None: not offered)."""
    VerificationPage(cfg, records, archive).add_routes(app)


def _outcome(kind: str, value: str) -> Outcome:
    if kind in ("reception", "addendum"):
        return Outcome(kind)
    try:
        return Outcome(value.replace("-", "_"))
    except ValueError:
        return Outcome.PENDING


def _result(recipient: dict[str, Any]) -> str:
    """A recipient's result as the page words it: a phone's from its SMS outcome."""
    if "sms" in recipient:
        return SMS_RESULTS.get(str(recipient["sms"]), OTHER_RESULT)
    return RESULTS.get(str(recipient.get("status")), OTHER_RESULT)


def _title(record: dict[str, Any]) -> str:
    """The document's title, as its PDF has it: a certified SMS when every recipient is
    a phone (:func:`certifier.outcome.title_id`)."""
    said = _outcome(str(record["kind"]), str(record["outcome"]))
    recipients = record.get("recipients")
    phones = (
        isinstance(recipients, list)
        and bool(recipients)
        and all(isinstance(r, dict) and "sms" in r for r in recipients)
    )
    if record["kind"] == "sending" and phones and said in SMS_TITLES:
        return SMS_TITLES[said]
    return TITLES[said]


def _static_files() -> dict[str, tuple[bytes, str]]:
    return {
        path.name: (path.read_bytes(), STATIC_TYPES[path.suffix])
        for path in STATIC.iterdir()
        if path.suffix in STATIC_TYPES
    }


class VerificationPage:
    """The handlers of the ``/v/`` routes, sharing one rate limiter and one checker."""

    def __init__(
        self, cfg: Config, records: VerificationRecords, archive: Path | None = None
    ) -> None:
        self.cfg = cfg
        self.records = records
        self.archive = archive
        self.limiter = RateLimiter(cfg.web.rate_limit)
        self.checker = PdfChecker(cfg)
        self.trusted = trusted_networks(cfg.web.trusted_proxies)
        self.static = _static_files()
        self.base_url = cfg.web.public_url.rstrip("/")
        self._restore: tuple[tuple[float, str] | None] | None = None  # once read

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v/static/{name}", self.static_file)
        app.router.add_get("/v/{code}", self.limited(self.page))
        app.router.add_post("/v/{code}/check", self.limited(self.check))
        app.router.add_post("/v/{code}/renewed", self.limited(self.renewed))
        app.router.add_route("*", "/v/{rest:.*}", self.limited(self.not_found))

    # --- answers shared by every route --------------------------------------------------

    def language(self, request: web.Request) -> str:
        return reader_language(request, self.cfg.gateway.language)

    def reader(self, request: web.Request) -> Reader:
        return Reader(self.language(request), self.cfg.gateway.timezone)

    def message_page(
        self, request: web.Request, status: int, title: str, text: str, note: str = ""
    ) -> web.Response:
        language = self.language(request)
        gettext = translations(language, "web").gettext
        depth = max(0, request.path.count("/") - 2)
        body = render(
            "message.html",
            language,
            title=gettext(title),
            text=f"{gettext(text)} {note}".strip(),
            static="../" * depth + "static",
            languages=self.languages(language),
        )
        return web.Response(
            status=status, text=body, content_type="text/html", headers=PAGE_HEADERS
        )

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return self.message_page(
            request,
            404,
            N_("No such document"),
            N_(
                "There is no document with this verification code. Please check that the "
                "address was copied in full, as printed on the certificate."
            ),
            await self.restore_note(request),
        )

    async def restore_note(self, request: web.Request) -> str:
        """After a restore (README, "Backups and restore"), the one sentence saying that
        documents issued between the backup and the restore are not known here; the same
        for every code, so it reveals nothing about which codes exist. The restore is
        made with the gateway stopped: read once per process."""
        if self._restore is None:
            try:
                found = await asyncio.wait_for(self.records.last_restore(), LOOKUP_TIMEOUT)
            except Exception as exc:
                log.error("verification page: restore not read (%s)", type(exc).__name__)
                return ""
            self._restore = (found,)
        if self._restore[0] is None:
            return ""
        restored_at, backup_time = self._restore[0]
        reader = self.reader(request)
        return (
            reader.catalog("web")
            .gettext(
                N_(
                    "This service was restored on {restored} from a copy made on {backup}: "
                    "a document issued between those two times is not known here, and its "
                    "electronic signature can still be checked in a PDF reader."
                )
            )
            .format(restored=reader.moment(restored_at), backup=reader.moment(backup_time))
        )

    def limited(self, handler: Handler) -> Handler:
        async def counted(request: web.Request) -> web.StreamResponse:
            key = client_key(client_ip(request, self.trusted))
            wait = self.limiter.hit(key, time.monotonic())
            if wait is None:
                try:
                    return await handler(request)
                except Unavailable:
                    return self.unavailable(request)
            text = translations(self.language(request), "web").gettext(
                N_("Too many requests from your network address. Please try again in a minute.")
            )
            if request.method == "POST":
                response: web.Response = self.json(request, 429, message=text)
            else:
                response = self.message_page(
                    request,
                    429,
                    N_("Too many requests"),
                    N_(
                        "Too many requests from your network address. Please try again in a minute."
                    ),
                )
            response.headers["Retry-After"] = str(wait)
            return response

        return counted

    def unavailable(self, request: web.Request) -> web.Response:
        text = N_("Temporarily unavailable, please try again in a minute.")
        if request.method == "POST":
            gettext = translations(self.language(request), "web").gettext
            response = self.json(request, 503, message=gettext(text))
        else:
            response = self.message_page(request, 503, N_("Temporarily unavailable"), text)
        response.headers["Retry-After"] = "60"
        return response

    def json(self, request: web.Request, status: int, **body: Any) -> web.Response:
        return web.json_response(body, status=status, headers=PAGE_HEADERS)

    @staticmethod
    def languages(current: str) -> list[dict[str, Any]]:
        return [
            {"code": code, "name": LANGUAGE_NAMES[code], "current": code == current}
            for code in ("es", "ca", "it", "en")
            if code in LANGUAGES
        ]

    async def record_of(self, request: web.Request) -> dict[str, Any] | None:
        code = request.match_info["code"]
        if not _CODE.fullmatch(code):
            return None
        try:
            record = await asyncio.wait_for(self.records.verification(code), LOOKUP_TIMEOUT)
        except Exception as exc:
            log.error("verification page: record not read (%s)", type(exc).__name__)
            raise Unavailable from None
        if record is None or not _HEX64.fullmatch(str(record.get("pdf_sha256", ""))):
            return None
        return record

    async def versions_of(self, record: dict[str, Any]) -> tuple[str, list[str], float | None]:
        """The SHA-256 of the document's current version, of its earlier ones
        (``certificate_versions``; the issued one alone when it was never renewed), and
        when it was last renewed (None: never)."""
        try:
            rows = await asyncio.wait_for(
                self.records.certificate_versions(str(record["cert_id"])), LOOKUP_TIMEOUT
            )
        except Exception as exc:
            log.error("verification page: versions not read (%s)", type(exc).__name__)
            raise Unavailable from None
        rows = [r for r in rows if _HEX64.fullmatch(str(r["pdf_sha256"]))]
        known = [str(r["pdf_sha256"]) for r in rows]
        issued = str(record["pdf_sha256"])
        if issued not in known:
            known.insert(0, issued)
        renewed = [r for r in rows if r["kind"] == VersionKind.RENEWED]
        return known[-1], known[:-1], _as_time(renewed[-1]["made"]) if renewed else None

    # --- the routes --------------------------------------------------------------------

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        found = self.static.get(request.match_info["name"])
        if found is None:
            return await self.limited(self.not_found)(request)
        body, content_type = found
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=PAGE_HEADERS
        )

    async def page(self, request: web.Request) -> web.StreamResponse:
        record = await self.record_of(request)
        if record is None:
            return await self.not_found(request)
        reader = self.reader(request)
        gettext = reader.catalog("web").gettext
        code = request.match_info["code"]
        url = f"{self.base_url}/v/{code}"
        current, earlier, renewed_at = await self.versions_of(record)
        recipients = record["recipients"]
        shown = None
        if isinstance(recipients, list):
            shown = [
                {
                    "address": mask_address(str(r.get("address", ""))),
                    "result": gettext(_result(r)),
                    "time": reader.moment(r.get("time")),
                }
                for r in recipients
                if isinstance(r, dict)
            ]
        provider = self.cfg.provider
        body = render(
            "verification.html",
            reader.language,
            # The certificate's own catalog: the page names the document as the PDF does.
            title=reader.catalog("certificate").gettext(_title(record)),
            provider_name=provider.name,
            legal_id=provider.legal_id,
            issued_moment=reader.moment(_as_time(record["issued_at"])),
            sha256=record["pdf_sha256"],
            current_sha256=current,
            current_groups=grouped(current),
            renewed_moment=reader.moment(renewed_at) if renewed_at is not None else None,
            earlier=" ".join(earlier),
            renewed_url=f"{code}/renewed?lang={reader.language}",
            hash_groups=grouped(record["pdf_sha256"]),
            recipients=shown,
            # What a mail server's acceptance means: only where one took the message.
            accepted=any(
                r.get("status") == "delivered" and "sms" not in r for r in recipients or ()
            ),
            url=url,
            qr=Markup(qr_svg(url)),  # noqa: S704 - our own SVG: numbers only, no text of the record
            check_url=f"{code}/check?lang={reader.language}",
            max_upload=self.cfg.web.max_upload,
            max_upload_text=reader.size(self.cfg.web.max_upload),
            static="static",
            languages=self.languages(reader.language),
        )
        return web.Response(text=body, content_type="text/html", headers=PAGE_HEADERS)

    def too_large(self, request: web.Request, reader: Reader) -> web.Response:
        limit = self.cfg.web.max_upload
        gettext = reader.catalog("web").gettext
        return self.json(
            request,
            413,
            message=gettext(N_("The file is larger than %(size)s, the largest this page checks."))
            % {"size": reader.size(limit)},
        )

    def declared_too_large(self, request: web.Request, reader: Reader) -> web.Response | None:
        """413 at once for a body announced larger than ``[web] max_upload``."""
        length = request.content_length
        if length is not None and length > self.cfg.web.max_upload:
            return self.too_large(request, reader)
        return None

    async def receive(
        self, request: web.Request, reader: Reader, write: Callable[[bytes], Awaitable[None]]
    ) -> web.Response | None:
        """Pass the dropped file (the request's body) to ``write``, chunk by chunk; the
        answer to send instead when it is larger than ``[web] max_upload``, empty, or too
        slow, else None. A client that trickles its upload would hold one of the few upload
        slots for as long as it likes: the whole body must arrive within UPLOAD_SECONDS."""
        gettext = reader.catalog("web").gettext
        size = 0
        try:
            async with asyncio.timeout(UPLOAD_SECONDS):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > self.cfg.web.max_upload:
                        return self.too_large(request, reader)  # read no further
                    await write(chunk)
        except TimeoutError:
            return self.json(
                request,
                408,
                message=gettext(N_("The file took too long to arrive. Please try again.")),
            )
        if not size:
            return self.json(request, 400, message=gettext(N_("No file was sent.")))
        return None

    async def check(self, request: web.Request) -> web.StreamResponse:
        record = await self.record_of(request)
        if record is None:
            return await self.not_found(request)
        reader = self.reader(request)
        gettext = reader.catalog("web").gettext
        try_later = gettext(N_("The file could not be checked just now. Please try again later."))
        refused = self.declared_too_large(request, reader)
        if refused is not None:
            return refused
        if self.checker.full:
            return self.json(request, 503, message=try_later)
        async with self.checker.receiving() as upload:
            refused = await self.receive(request, reader, upload.write)
            if refused is not None:
                return refused
            await upload.finish()
            result = await self.checker.check(upload)
        if result is None:
            return self.json(request, 503, message=try_later)
        current, earlier, _ = await self.versions_of(record)
        same_file = upload.sha256 == current
        answer = _answer(reader, result, same_file, upload.sha256 in earlier)
        return self.json(request, 200, **answer)

    async def renewed(self, request: web.Request) -> web.StreamResponse:
        """The document as the archive holds it now, in exchange for an earlier copy of it
        (the request's body): never for the code alone, nor for the current copy."""
        record = await self.record_of(request)
        if record is None or self.archive is None:
            return await self.not_found(request)
        reader = self.reader(request)
        gettext = reader.catalog("web").gettext
        digest = hashlib.sha256()

        async def hash_chunk(chunk: bytes) -> None:
            digest.update(chunk)

        refused = self.declared_too_large(request, reader) or await self.receive(
            request, reader, hash_chunk
        )
        if refused is not None:
            return refused
        current, earlier, _ = await self.versions_of(record)
        if digest.hexdigest() not in earlier:
            return self.json(
                request,
                403,
                message=gettext(
                    N_(
                        "The renewed copy is given only in exchange for an earlier copy of "
                        "this document: drop the copy you hold on this page."
                    )
                ),
            )
        cert_id = str(record["cert_id"])
        try:
            pdf = await asyncio.to_thread((self.archive / f"{cert_id}.pdf").read_bytes)
        except OSError:
            pdf = b""
        # Only the current recorded version leaves (never whatever the file became by
        # other means): a renewal records its version before it replaces the file.
        if hashlib.sha256(pdf).hexdigest() != current:
            return self.json(
                request,
                404,
                message=gettext(
                    N_(
                        "The provider no longer keeps a copy of this document. The copy you "
                        "hold can still be checked on this page."
                    )
                ),
            )
        return web.Response(
            body=pdf,
            content_type="application/pdf",
            headers={
                **PAGE_HEADERS,
                "Content-Disposition": f'attachment; filename="{cert_id}.pdf"',
            },
        )


def _as_time(value: object) -> float | None:
    with suppress(TypeError, ValueError):
        return float(value)  # type: ignore[arg-type]
    return None


def _answer(
    reader: Reader, result: CheckResult, same_file: bool, earlier_copy: bool = False
) -> dict[str, Any]:
    """The check's JSON for the page: a verdict, a sentence and the details in words."""
    gettext = reader.catalog("web").gettext
    if result.ok and result.content_certified:
        verdict = "valid"
        message = N_(
            "The electronic seal and the timestamp of this file are valid: it has not been "
            "changed since it was sealed."
        )
    elif result.ok:
        verdict = "content_not_certified"
        message = N_(
            "The electronic seal and the timestamp of this file are valid, but this "
            "certificate does not prove the content of the message: the gateway could not "
            "read it when it made the certificate."
        )
    else:
        verdict = "not_valid"
        message = N_("This file does NOT pass the check: see below what failed.")
    sentences = [gettext(message)]
    if same_file:
        sentences.append(gettext(N_("It is exactly the document issued under this code.")))
    elif earlier_copy:
        sentences.append(
            gettext(
                N_(
                    "It is an earlier copy of the document issued under this code: genuine, "
                    "but the provider has since renewed its timestamp. Download the renewed "
                    "copy from this page and keep that one."
                )
            )
        )
    else:
        sentences.append(gettext(N_("It is not the document issued under this code.")))
    checks = result.checks
    seal = [ok for name, ok in checks.items() if name in SEAL_CHECKS]
    rest = [ok for name, ok in checks.items() if name not in SEAL_CHECKS | {"trust", "timestamp"}]
    details = [
        gettext(
            N_("The electronic seal is intact: the file has not been changed since it was sealed.")
            if seal and all(seal)
            else N_(
                "The electronic seal is missing or broken: the file was changed after it "
                "was sealed, or it is not a certificate."
            )
        ),
        gettext(
            N_("The seal was made with a certificate of the provider.")
            if checks.get("trust")
            else N_("The seal was not made with a certificate this provider recognises.")
        ),
    ]
    if checks.get("timestamp") and result.timestamp:
        details.append(
            gettext(N_("A timestamp authority attests that the file existed on %(moment)s."))
            % {"moment": reader.moment(result.timestamp)}
        )
    else:
        details.append(gettext(N_("The timestamp is missing or does not verify.")))
    details.append(
        gettext(
            N_("The evidence and the message embedded in the file match what was sealed.")
            if rest and all(rest)
            else N_("The evidence embedded in the file does not verify.")
        )
    )
    return {
        "same_file": same_file,
        "earlier_copy": earlier_copy,
        "verdict": verdict,
        "message": " ".join(sentences),
        "details": details,
    }
