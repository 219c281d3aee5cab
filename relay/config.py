"""Load ``config.toml`` into frozen dataclasses.

Every key the gateway understands is declared here with its type and default, so
that an unknown key or a value of the wrong type is an error naming the key and
the file, like pyHanko's config loader. Paths are relative to the config file.
Secrets (passwords for a TSA, key passphrases) may come from ``*_file`` keys or
the environment, never only inline.

Exceptions::

    ConfigError          -- a key is unknown, missing, of the wrong type or value
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certifier.errors import ConfigError


@dataclass(frozen=True)
class Endpoint:
    """A listening or connecting address, ``host:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str, key: str, where: str) -> Endpoint:
    """Parse ``host:port`` or ``[v6]:port``; port 0 means "let the OS choose"."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{where}: {key} = {text!r} is not host:port")
    host = host.strip("[]")
    if any(c.isspace() for c in host):
        raise ConfigError(f"{where}: {key} = {text!r} has spaces in the host")
    return Endpoint(host, int(port))


@dataclass(frozen=True)
class GatewayConfig:
    hostname: str = "certifica.localhost"
    domain: str = "certifica.localhost"
    certification_address: str = "certifica@certifica.localhost"
    state_dir: Path = Path("var")
    relay_uncertified: bool = True
    bounce_prefix: str = "bounces"
    mode: str = "development"
    postmaster: str = ""
    language: str = "en"  # of every document, mail and page, unless the user has one
    timezone: str = "UTC"  # IANA name; dates are shown in it, with the UTC time beside


DEVELOPMENT_PROVIDER = "Certifica development provider (not a trust service provider)"


@dataclass(frozen=True)
class ProviderConfig:
    """``[provider]``: who issues the certificates, as page 1 of each one states it."""

    name: str = DEVELOPMENT_PROVIDER
    legal_id: str = ""  # NIF, VAT number, codice fiscale
    address: str = ""
    website: str = ""
    contact: str = ""
    policy_id: str = "urn:oid:2.999.1"  # a URI; an OID as urn:oid:... (RFC 3061)
    policy_url: str = ""


@dataclass(frozen=True)
class WebConfig:
    """``[web]``: every public page (tracking, verification, and later ones)."""

    public_url: str = "http://127.0.0.1:8080"
    trusted_proxies: tuple[str, ...] = ()
    rate_limit: int = 60  # requests per minute per client address
    max_upload: int = 25 * 1024 * 1024  # bytes of a PDF dropped on the verification page


@dataclass(frozen=True)
class ListenConfig:
    submission: str = "127.0.0.1:1587"
    submission_tls: str = ""
    mx: str = "127.0.0.1:1025"
    http: str = "127.0.0.1:8080"
    # Metrics and health for the operator (relay/process/admin.py); loopback only by
    # default, never the public pages' listener. Empty: off.
    admin: str = "127.0.0.1:9725"


@dataclass(frozen=True)
class TLSConfig:
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class LimitsConfig:
    message_size: int = 25 * 1024 * 1024
    header_size: int = 256 * 1024
    recipients: int = 100
    timeout: float = 300.0
    min_data_rate: float = 4096.0
    auth_failures: int = 3
    auth_delay: float = 1.0
    auth_block: int = 20
    auth_block_window: float = 900.0
    # Megabytes the spool's file system must keep free: below it MAIL gets 452 4.3.1
    # (Postfix's queue_minfree) and /readyz says so. 0: no check.
    min_free: int = 100


@dataclass(frozen=True)
class DeliveryConfig:
    routes: dict[str, str] = field(default_factory=dict)
    require_tls: bool = False
    connect_timeout: float = 30.0
    greeting_timeout: float = 300.0
    command_timeout: float = 300.0
    data_init_timeout: float = 120.0
    data_timeout: float = 600.0
    concurrency: int = 100
    per_destination: int = 20
    smtp_port: int = 25
    connection_reuse: float = 10.0


@dataclass(frozen=True)
class QueueConfig:
    first_retry: float = 300.0
    max_retry: float = 4000.0
    lifetime: float = 5 * 24 * 3600.0
    scan_interval: float = 1.0
    delay_warning: float = 0.0  # seconds before a "still trying" report (0: none)
    dsn_full_limit: int = 50_000  # bytes of a message returned whole (RET=FULL), at most
    missing_spool_grace: float = 300.0


@dataclass(frozen=True)
class SigningConfig:
    cert: Path | None = None
    key: Path | None = None
    pkcs12: Path | None = None
    password_file: Path | None = None
    chain: tuple[Path, ...] = ()
    tsa_url: str = ""
    tsa_timeout: float = 10.0
    publicly_trusted: bool = False
    trust_roots: tuple[Path, ...] = ()
    workers: int = 0
    # A signing key in a PKCS#11 token (an HSM): the module (the vendor's .so), the
    # token's label, the key's label (CKA_LABEL), the PIN's file (else the environment
    # variable CERTIFICA_PKCS11_PIN) and the key's certificate (PEM: read from this file,
    # not from the token).
    pkcs11_module: Path | None = None
    pkcs11_token: str = ""
    pkcs11_key_label: str = ""
    pkcs11_pin_file: Path | None = None
    pkcs11_cert: Path | None = None
    # The development TSA's own key in the same token (its label); empty: a key file
    # under <state_dir>/keys, as without a token.
    pkcs11_tsa_key_label: str = ""


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    timeout: float = 5.0


@dataclass(frozen=True)
class SinkConfig:
    listen: str = ""
    dir: Path = Path("var/mailbox")


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = False
    public_url: str | None = None  # deprecated: [web] public_url
    rewrite_text: bool = True
    never_domains: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] | None = None  # deprecated: [web] trusted_proxies
    addendum_interval: float = 3600.0
    fast_seconds: float = 10.0


@dataclass(frozen=True)
class EvidenceConfig:
    checkpoint_interval: float = 300.0
    # Seconds between issue and the document timestamp that makes a certificate PAdES
    # B-LTA (certifier.lta): 0 at issue; more lets the renewal job add it later.
    lta_delay: float = 0.0
    # Where every issued PDF is kept for renewal and the verification page; None:
    # <state_dir>/certificates.
    archive_dir: Path | None = None
    # Days: a certificate whose newest timestamp's TSA certificate expires within this
    # many days gets a new document timestamp (certifica evidence renew, and daily).
    renew_before: int = 365


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: how long personal data is kept (GDPR art. 5(1)(e); docs/retention.md)."""

    content_days: int = 30  # message bodies and attachments of finished messages
    evidence_years: int = 5  # certificates, the evidence log's values, the XML evidence
    tracking_days: int = 90  # raw IP addresses and user agents of opens and clicks


@dataclass(frozen=True)
class MXConfig:
    require: str = "dkim-or-spf"


@dataclass(frozen=True)
class ReceptionConfig:
    prefix: str = "recepcion"
    ack_interval: float = 86400.0
    ack_requires_authentication: bool = True
    duplicate_window: float = 7 * 86400.0


@dataclass(frozen=True)
class DkimConfig:
    sign: bool = True
    from_handling: str = "keep"


@dataclass(frozen=True)
class CreditsConfig:
    """``[credits]``: what each certified product costs an organisation (docs/accounts.md).
    Prices are whole credits; 0 is free (the shipped config: ``make run`` needs none)."""

    email_recipient: int = 0  # per recipient of a certified message, reserved with the 250
    addendum: int = 0  # per addendum document (opens, clicks, a late bounce)
    reception: int = 0  # per certificate of certified reception
    sms_segment: int = 0  # per segment of a certified SMS
    # Per SMS segment to numbers with these prefixes ("+1" = 3): longest prefix wins.
    sms_prefix: dict[str, int] = field(default_factory=dict)
    warn_below: int = 0  # the organisation's admins are told when the balance falls below
    # Not enough credits for a certified message: "refuse" (550 5.7.1) or "defer"
    # (452 4.7.1, so a relaying MTA tries again after a top-up).
    when_short: str = "refuse"


@dataclass(frozen=True)
class ConsoleConfig:
    """``[console]``: the web console (``/app/``) and the JSON API (``/api/v1/``)."""

    enabled: bool = True
    session_idle: float = 1800.0  # seconds without a request before a session ends
    session_max: float = 12 * 3600.0  # seconds after login a session ends regardless
    totp_issuer: str = "Certifica"  # the name authenticator apps show (RFC 6238)


@dataclass(frozen=True)
class WebhooksConfig:
    """``[webhooks]``: organisations' event notifications over HTTP (docs/webhooks.md)."""

    timeout: float = 10.0  # seconds for one POST, connection included
    retry_for: float = 86400.0  # seconds an event is retried, with backoff, before it fails
    first_retry: float = 30.0  # seconds before the second attempt; doubles after each failure
    max_retry: float = 3600.0  # the longest wait between two attempts


@dataclass(frozen=True)
class ProcessesConfig:
    """``[processes]``: how many of each child the master runs (ARCHITECTURE.md §1);
    0 means the default. Certificate workers are ``[signing] workers``."""

    acceptors: int = 0  # default: one per core
    delivery_agents: int = 0  # default: 1


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: what the gateway writes about each event (README, "Logs")."""

    level: str = "info"
    format: str = "text"  # "text": Postfix's one line; "json": one object per line
    file: Path | None = None  # also written there (relative: next to the config file)


@dataclass(frozen=True)
class SmsConfig:
    """``[sms]``: certified SMS through an SMSC over SMPP 3.4 (README, "Certified SMS";
    docs/sms.md). Off by default; on, the ``sms`` process (``relay/sms/agent.py``) holds
    the SMPP session and the submission port takes mail to ``sms.<gateway domain>``."""

    enabled: bool = False
    smsc: str = ""  # host:port of the operator's SMSC
    system_id: str = ""  # the ESME's login (SMPP 3.4 section 4.1.1)
    password_file: Path | None = None  # else the environment variable CERTIFICA_SMSC_PASSWORD
    system_type: str = ""
    tls: bool = False
    source: str = ""  # default sender ID: alphanumeric (11 at most) or an E.164 number
    default_region: str = "ES"  # ISO 3166 region of national numbers (+34 for ES)
    roles: tuple[str, ...] = ("admin",)
    max_segments: int = 6
    gsm_data_coding: int = 0  # SMPP 3.4 section 5.2.19: 0 is the SMSC default alphabet
    receipt_timeout: float = 172800.0  # seconds to wait for the operator's receipt
    optout_text: str = "STOP: {optout_url}"
    optout_keywords: tuple[str, ...] = ("STOP", "BAJA", "BAIXA", "ALT")
    optout_scope: str = "marketing"  # "marketing" or "all"
    # A regular expression (Python's re, searched, any case): a message whose Subject
    # matches is marketing without X-Certifica-SMS; "": only that header field says so.
    marketing_subject: str = ""
    submit_window: int = 10  # submit_sm sent before their responses come back
    enquire_link_interval: float = 30.0  # seconds of silence before an enquire_link
    response_timeout: float = 30.0  # seconds to wait for a response PDU


@dataclass(frozen=True)
class InvoicesConfig:
    """``[invoices]``: attachments read as invoices, their essentials certified (README,
    "Invoices"; docs/invoices.md)."""

    enabled: bool = True
    max_size: int = 10_000_000  # bytes of one attachment examined; larger ones are not read
    trust_roots: Path | None = None  # PEM roots a Facturae signer must chain to; None: not checked


@dataclass(frozen=True)
class HostedConfig:
    """``[hosted]``: hosted content and acceptance (docs/hosted.md)."""

    expiry_days: int = 14  # a link not opened in this many days is certified as expired
    code_minutes: int = 15  # a one-time code (+hosted-code) is valid this long
    code_tries: int = 5  # wrong codes before the link needs a new code
    codes_per_day: int = 5  # codes mailed for one link in 24 hours, at most
    code_failures: int = 10  # wrong codes per link (any code) before its codes are refused
    code_lock_minutes: int = 120  # how long they are refused then


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    provider: ProviderConfig = field(default_factory=ProviderConfig)
    web: WebConfig = field(default_factory=WebConfig)
    listen: ListenConfig = field(default_factory=ListenConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    mx: MXConfig = field(default_factory=MXConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    reception: ReceptionConfig = field(default_factory=ReceptionConfig)
    log: LogConfig = field(default_factory=LogConfig)
    processes: ProcessesConfig = field(default_factory=ProcessesConfig)
    credits: CreditsConfig = field(default_factory=CreditsConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    sms: SmsConfig = field(default_factory=SmsConfig)
    invoices: InvoicesConfig = field(default_factory=InvoicesConfig)
    hosted: HostedConfig = field(default_factory=HostedConfig)
    source: Path | None = None
    deprecations: tuple[str, ...] = ()  # one sentence per deprecated key in use, logged at start

    @property
    def state_dir(self) -> Path:
        return self.gateway.state_dir

    def endpoint(self, name: str) -> Endpoint | None:
        """The ``[listen]`` address called ``name``, or None when it is empty (off)."""
        text = getattr(self.listen, name)
        return parse_endpoint(text, f"listen.{name}", str(self.source)) if text else None


def _convert(value: Any, hint: Any, key: str, where: str, base: Path) -> Any:
    """Check ``value`` against the dataclass type ``hint``; resolve paths against ``base``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None or value == "":
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key, where, base)
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: {key} must be a path (a non-empty string)")
        path = Path(value)
        return path if path.is_absolute() else (base / path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where}: {key} must be a whole number >= 0, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, not {value!r}")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{where}: {key} must not contain line breaks or NUL")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list")
        return tuple(_convert(v, args[0], f"{key}[{i}]", where, base) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{key}] must be a table")
        return {str(k): _convert(v, args[1], f"{key}.{k}", where, base) for k, v in value.items()}
    raise ConfigError(f"{where}: {key} has an unsupported type")  # pragma: no cover


def _build(cls: Any, data: Any, prefix: str, where: str, base: Path) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: [{prefix}] must be a table")
    hints = typing.get_type_hints(cls)
    # Config.source and Config.deprecations are set by the loader, not by the file
    # ([sms] source is a key of its own).
    internal = ("source", "deprecations") if cls is Config else ()
    known = {f.name for f in dataclasses.fields(cls) if f.name not in internal}
    values: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in known:
            raise ConfigError(f"{where}: unknown key {full!r}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, value, full, where, base)
        else:
            values[key] = _convert(value, hint, full, where, base)
    return cls(**values)


def _validate(cfg: Config, where: str) -> None:
    for name in ("submission", "submission_tls", "mx", "http", "admin"):
        cfg.endpoint(name)
    if cfg.sink.listen:
        parse_endpoint(cfg.sink.listen, "sink.listen", where)
    for domain, target in cfg.delivery.routes.items():
        parse_endpoint(target, f"delivery.routes.{domain}", where)
    for i, server in enumerate(cfg.dns.nameservers):
        host = server.rsplit(":", 1)[0] if server.count(":") == 1 else server
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(
                f"{where}: dns.nameservers[{i}] = {server!r} is not an IP address"
            ) from None
    if "@" not in cfg.gateway.certification_address:
        raise ConfigError(f"{where}: gateway.certification_address must be an e-mail address")
    _validate_gateway_addresses(cfg, where)
    if cfg.limits.min_free < 0:
        raise ConfigError(f"{where}: limits.min_free must be 0 (no check) or more megabytes")
    if cfg.limits.auth_block < 1:
        raise ConfigError(f"{where}: limits.auth_block must be at least 1")
    if cfg.limits.min_data_rate <= 0:
        raise ConfigError(f"{where}: limits.min_data_rate must be more than 0")
    if cfg.limits.recipients < 1 or cfg.limits.message_size < 1024:
        raise ConfigError(
            f"{where}: limits.recipients must be >= 1 and limits.message_size >= 1024"
        )
    _validate_web(cfg, where)
    _validate_reader(cfg, where)
    if cfg.evidence.checkpoint_interval <= 0:
        raise ConfigError(f"{where}: evidence.checkpoint_interval must be more than 0 seconds")
    if not 0 <= cfg.evidence.lta_delay <= 30 * 86400:
        raise ConfigError(f"{where}: evidence.lta_delay must be 0 to 2592000 seconds (30 days)")
    if cfg.evidence.renew_before < 1:
        raise ConfigError(f"{where}: evidence.renew_before must be at least 1 day")
    for name in ("content_days", "evidence_years", "tracking_days"):
        if getattr(cfg.retention, name) < 1:
            raise ConfigError(f"{where}: retention.{name} must be at least 1")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{0,30}", cfg.reception.prefix):
        raise ConfigError(
            f"{where}: reception.prefix must be a short lower-case local part "
            "(letters, digits, dots, hyphens)"
        )
    if cfg.credits.when_short not in ("refuse", "defer"):
        raise ConfigError(
            f'{where}: credits.when_short must be "refuse" or "defer", not {cfg.credits.when_short!r}'
        )
    for prefix in cfg.credits.sms_prefix:
        if not re.fullmatch(r"\+[0-9]{1,6}", prefix):
            raise ConfigError(
                f'{where}: credits.sms_prefix.{prefix} must be a + and up to 6 digits, like "+1"'
            )
    if cfg.console.session_idle <= 0 or cfg.console.session_max <= 0:
        raise ConfigError(
            f"{where}: console.session_idle and console.session_max must be more than 0"
        )
    if not 0 < cfg.webhooks.timeout <= 60:
        raise ConfigError(f"{where}: webhooks.timeout must be more than 0 and at most 60 seconds")
    if not 0 < cfg.webhooks.first_retry <= cfg.webhooks.max_retry:
        raise ConfigError(
            f"{where}: webhooks.first_retry must be more than 0 and at most webhooks.max_retry"
        )
    if cfg.webhooks.retry_for <= 0:
        raise ConfigError(f"{where}: webhooks.retry_for must be more than 0")
    if cfg.mx.require not in ("dkim-or-spf", "dkim"):
        raise ConfigError(f'{where}: mx.require must be "dkim-or-spf" or "dkim"')
    if cfg.dkim.from_handling not in ("keep", "rewrite"):
        raise ConfigError(f'{where}: dkim.from_handling must be "keep" or "rewrite"')
    if cfg.log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: log.level must be debug, info, warning or error")
    if cfg.log.format not in ("text", "json"):
        raise ConfigError(f'{where}: log.format must be "text" or "json", not {cfg.log.format!r}')
    if bool(cfg.signing.cert) != bool(cfg.signing.key):
        raise ConfigError(f"{where}: signing.cert and signing.key go together")
    if cfg.signing.pkcs12 and cfg.signing.cert:
        raise ConfigError(f"{where}: signing.pkcs12 replaces signing.cert and signing.key: set one")
    if bool(cfg.tls.cert) != bool(cfg.tls.key):
        raise ConfigError(f"{where}: tls.cert and tls.key go together")
    _validate_pkcs11(cfg, where)
    _validate_sms(cfg, where)
    _validate_invoices(cfg, where)
    if not 1 <= cfg.hosted.expiry_days <= 3650:
        raise ConfigError(f"{where}: hosted.expiry_days must be 1 to 3650 days")
    if cfg.hosted.code_minutes < 1 or cfg.hosted.code_tries < 1:
        raise ConfigError(f"{where}: hosted.code_minutes and hosted.code_tries must be at least 1")
    if min(cfg.hosted.codes_per_day, cfg.hosted.code_failures, cfg.hosted.code_lock_minutes) < 1:
        raise ConfigError(
            f"{where}: hosted.codes_per_day, hosted.code_failures and"
            " hosted.code_lock_minutes must be at least 1"
        )


SMSC_PASSWORD_ENV = "CERTIFICA_SMSC_PASSWORD"  # noqa: S105 - a variable name
_SMS_SENDER_ALPHANUMERIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .&-]{0,10}")
_SMS_SENDER_NUMBER = re.compile(r"\+[1-9][0-9]{6,14}")


def sms_sender_ok(text: str) -> bool:
    """A sender ID an SMSC takes: an international number (E.164, ``+`` and up to 15
    digits) or 1 to 11 letters, digits and a few marks (3GPP TS 23.040 section 9.1.2.5:
    an alphanumeric address is 11 GSM characters at most), not only digits."""
    if _SMS_SENDER_NUMBER.fullmatch(text):
        return True
    return bool(_SMS_SENDER_ALPHANUMERIC.fullmatch(text)) and not text.isdigit()


def _validate_sms(cfg: Config, where: str) -> None:
    import os

    import phonenumbers

    sms = cfg.sms
    if sms.smsc:
        parse_endpoint(sms.smsc, "sms.smsc", where)
    if sms.default_region and sms.default_region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(
            f"{where}: sms.default_region = {sms.default_region!r} is not a region code "
            "(ISO 3166-1 alpha-2, upper case: ES, IT, US)"
        )
    if sms.source and not sms_sender_ok(sms.source):
        raise ConfigError(
            f"{where}: sms.source = {sms.source!r} is not a sender ID: 1 to 11 letters and "
            "digits, or an international number such as +34600111222"
        )
    if not 1 <= sms.max_segments <= 255:
        raise ConfigError(f"{where}: sms.max_segments must be 1 to 255 (the UDH counts to 255)")
    if sms.gsm_data_coding > 255 or sms.gsm_data_coding == 8:
        raise ConfigError(
            f"{where}: sms.gsm_data_coding must be a data_coding for the GSM alphabet "
            "(0 to 255, not 8, which is UCS-2)"
        )
    if sms.optout_scope not in ("marketing", "all"):
        raise ConfigError(f'{where}: sms.optout_scope must be "marketing" or "all"')
    if sms.marketing_subject:
        try:
            re.compile(sms.marketing_subject)
        except re.error as err:
            raise ConfigError(
                f"{where}: sms.marketing_subject is not a regular expression ({err})"
            ) from None
    known_roles = ("admin", "sender", "auditor")  # relay.queue.states.Role
    for i, role in enumerate(sms.roles):
        if role not in known_roles:
            raise ConfigError(
                f"{where}: sms.roles[{i}] = {role!r} is not a role: admin, sender or auditor"
            )
    try:
        sms.optout_text.format(optout_url="")
    except (KeyError, IndexError, ValueError):
        raise ConfigError(
            f"{where}: sms.optout_text may use only the placeholder {{optout_url}}"
        ) from None
    for i, word in enumerate(sms.optout_keywords):
        if not word.strip() or any(c.isspace() for c in word):
            raise ConfigError(f"{where}: sms.optout_keywords[{i}] must be one word")
    for name in ("submit_window",):
        if getattr(sms, name) < 1:
            raise ConfigError(f"{where}: sms.{name} must be at least 1")
    for name in ("enquire_link_interval", "response_timeout", "receipt_timeout"):
        if getattr(sms, name) <= 0:
            raise ConfigError(f"{where}: sms.{name} must be more than 0 seconds")
    if not sms.enabled:
        return
    for name in ("smsc", "system_id", "source"):
        if not getattr(sms, name):
            raise ConfigError(f"{where}: sms.enabled needs sms.{name}")
    if not sms.password_file and SMSC_PASSWORD_ENV not in os.environ:
        raise ConfigError(
            f"{where}: sms.enabled needs sms.password_file "
            f"(or the environment variable {SMSC_PASSWORD_ENV})"
        )


def smsc_password(cfg: Config) -> str:
    """The password the gateway binds to the SMSC with: the first line of ``[sms]
    password_file``, else the environment variable ``CERTIFICA_SMSC_PASSWORD``, else
    empty. Never inline in the config file. Raises :class:`ConfigError` naming the key."""
    return _secret(cfg, "sms", "password_file", SMSC_PASSWORD_ENV) or ""


def _validate_pkcs11(cfg: Config, where: str) -> None:
    import os

    signing = cfg.signing
    if not signing.pkcs11_module:
        for name in (
            "pkcs11_token",
            "pkcs11_key_label",
            "pkcs11_pin_file",
            "pkcs11_cert",
            "pkcs11_tsa_key_label",
        ):
            if getattr(signing, name):
                raise ConfigError(f"{where}: signing.{name} needs signing.pkcs11_module")
        return
    if not signing.pkcs11_module.is_file():
        raise ConfigError(f"{where}: signing.pkcs11_module = {signing.pkcs11_module}: no such file")
    if signing.cert or signing.key or signing.pkcs12:
        raise ConfigError(
            f"{where}: signing.pkcs11_module replaces signing.cert, signing.key and "
            "signing.pkcs12: set one"
        )
    for name in ("pkcs11_token", "pkcs11_key_label", "pkcs11_cert"):
        if not getattr(signing, name):
            raise ConfigError(f"{where}: signing.pkcs11_module needs signing.{name}")
    if not signing.pkcs11_pin_file and PKCS11_PIN_ENV not in os.environ:
        raise ConfigError(
            f"{where}: signing.pkcs11_module needs signing.pkcs11_pin_file "
            f"(or the environment variable {PKCS11_PIN_ENV})"
        )
    tsa_label = signing.pkcs11_tsa_key_label
    if tsa_label and tsa_label == signing.pkcs11_key_label:
        # RFC 3161 section 2.3: a TSA's certificate carries the timeStamping usage
        # only, so its key cannot be the one whose certificate signs documents.
        raise ConfigError(
            f"{where}: signing.pkcs11_tsa_key_label = {tsa_label!r} is the signing key's "
            "label: the timestamp authority needs a key of its own"
        )
    if tsa_label and signing.tsa_url:
        raise ConfigError(
            f"{where}: signing.pkcs11_tsa_key_label is the development timestamp "
            "authority's key, and signing.tsa_url replaces that authority: set one"
        )


def _validate_web(cfg: Config, where: str) -> None:
    # The key a value came from: [tracking] when only the deprecated key was set.
    url_key = "web.public_url"
    if any("tracking.public_url" in d for d in cfg.deprecations):
        url_key = "tracking.public_url"
    url = cfg.web.public_url
    if not re.fullmatch(
        r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?", url
    ) or url.endswith("/"):
        raise ConfigError(f"{where}: {url_key} must be an http(s) URL without a trailing slash")
    proxies_key = "web.trusted_proxies"
    if any("tracking.trusted_proxies" in d for d in cfg.deprecations):
        proxies_key = "tracking.trusted_proxies"
    for i, net in enumerate(cfg.web.trusted_proxies):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: {proxies_key}[{i}] = {net!r} is not a network") from None
    if cfg.web.rate_limit < 1:
        raise ConfigError(f"{where}: web.rate_limit must be at least 1 request per minute")
    if cfg.web.max_upload < 1024:
        raise ConfigError(f"{where}: web.max_upload must be at least 1024 bytes")


def _validate_reader(cfg: Config, where: str) -> None:
    from certifier.i18n import check_language, check_timezone

    for key, check in (("language", check_language), ("timezone", check_timezone)):
        try:
            check(getattr(cfg.gateway, key))
        except ValueError as err:
            raise ConfigError(f"{where}: gateway.{key}: {err}") from None
    policy = cfg.provider.policy_id
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+", policy):
        raise ConfigError(
            f"{where}: provider.policy_id = {policy!r} is not a URI "
            "(an OID is written urn:oid:1.2.3, RFC 3061)"
        )
    if policy.lower().startswith("urn:oid:") and not re.fullmatch(
        r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+", policy, re.IGNORECASE
    ):
        raise ConfigError(f"{where}: provider.policy_id = {policy!r} is not a valid urn:oid: URI")
    if not cfg.provider.name.strip():
        raise ConfigError(f"{where}: provider.name must name the provider")


def _moved_to_web(cfg: Config, data: dict[str, Any], where: str) -> Config:
    """``[tracking] public_url`` and ``trusted_proxies`` moved to ``[web]``: a config that
    still sets them keeps working, with one deprecation sentence each (logged at start)."""
    section = data.get("web")
    web_data: dict[str, Any] = section if isinstance(section, dict) else {}
    notes: list[str] = []
    web = cfg.web
    for key in ("public_url", "trusted_proxies"):
        old = getattr(cfg.tracking, key)
        if old is None:
            continue
        if key in web_data:
            notes.append(
                f"{where}: tracking.{key} is deprecated and ignored: web.{key} is set; "
                f"remove tracking.{key}"
            )
        else:
            web = dataclasses.replace(web, **{key: old})
            notes.append(f"{where}: tracking.{key} is deprecated: rename it web.{key}")
    return dataclasses.replace(cfg, web=web, deprecations=tuple(notes))


def _validate_gateway_addresses(cfg: Config, where: str) -> None:
    """``[gateway] mode`` and ``postmaster``: the production checks proper are
    :func:`relay.production.check_production`, run when the gateway starts."""
    from relay.addresses import local_domains, postmaster_address

    if cfg.gateway.mode not in ("development", "production"):
        raise ConfigError(f'{where}: gateway.mode must be "development" or "production"')
    postmaster = postmaster_address(cfg)
    local, at, domain = postmaster.rpartition("@")
    if postmaster and (
        not at or not local or "." not in domain or any(c.isspace() for c in postmaster)
    ):
        raise ConfigError(f"{where}: gateway.postmaster = {postmaster!r} is not an e-mail address")
    if postmaster and domain.lower().rstrip(".") in local_domains(cfg):
        raise ConfigError(
            f"{where}: gateway.postmaster = {postmaster!r} is an address of the gateway itself; "
            "name a mailbox elsewhere that a person reads (mail to it would loop)"
        )


SIGNING_PASSWORD_ENV = "CERTIFICA_SIGNING_PASSWORD"  # noqa: S105 - a variable name


def signing_password(cfg: Config) -> bytes | None:
    """The password of the signing key (an encrypted PEM key, or the PKCS#12 file): the
    first line of ``[signing] password_file``, else the environment variable
    ``CERTIFICA_SIGNING_PASSWORD`` (systemd: ``LoadCredential=``/``Environment=``), else
    none. Never inline in the config file. Raises :class:`ConfigError` naming the key."""
    value = _secret(cfg, "signing", "password_file", SIGNING_PASSWORD_ENV)
    return value.encode("utf-8") if value is not None else None


PKCS11_PIN_ENV = "CERTIFICA_PKCS11_PIN"


def pkcs11_pin(cfg: Config) -> str | None:
    """The PIN of the PKCS#11 token: the first line of ``[signing] pkcs11_pin_file``,
    else the environment variable ``CERTIFICA_PKCS11_PIN``. Never inline in the config
    file. Raises :class:`ConfigError` naming the key."""
    return _secret(cfg, "signing", "pkcs11_pin_file", PKCS11_PIN_ENV)


def _secret(cfg: Config, section: str, key: str, env: str) -> str | None:
    """The first line of the file ``[section] key`` names, else the variable ``env``."""
    import os

    path: Path | None = getattr(getattr(cfg, section), key)
    if path:
        where = f"{cfg.source or '(embedded defaults)'}: {section}.{key}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"{where} = {path}: cannot be read ({err.__class__.__name__})"
            ) from None
        return text.splitlines()[0] if text else ""
    return os.environ.get(env)


def read_config_text(path: Path) -> str:
    """The text of the config file ``path``; raises :class:`ConfigError` naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err.__class__.__name__})") from None


def load_config(path: Path | None, text: str | None = None) -> Config:
    """Read ``path`` (or the embedded defaults when None) into a :class:`Config`.

    ``text``: the file's content read before (a reload hands every process the text
    the master checked, README "Reloading"); paths in it are still relative to
    ``path``."""
    if path is None:
        cfg = _build(Config, {}, "", "(embedded defaults)", Path.cwd())
        return dataclasses.replace(cfg, source=None)
    where = str(path)
    if text is None:
        text = read_config_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{where}: not valid TOML ({err})") from None
    cfg = _build(Config, data, "", where, path.resolve().parent)
    cfg = dataclasses.replace(cfg, source=path)
    cfg = _moved_to_web(cfg, data, where)
    _validate(cfg, where)
    return cfg


def _validate_invoices(cfg: Config, where: str) -> None:
    """``[invoices]``: a sensible size, and trust roots that are PEM certificates."""
    from cryptography import x509

    if cfg.invoices.max_size < 1024:
        raise ConfigError(f"{where}: invoices.max_size must be at least 1024 bytes")
    roots = cfg.invoices.trust_roots
    if roots is None:
        return
    try:
        certificates = x509.load_pem_x509_certificates(roots.read_bytes())
    except OSError as err:
        raise ConfigError(
            f"{where}: invoices.trust_roots: cannot read {roots} ({err.strerror})"
        ) from None
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"{where}: invoices.trust_roots: {roots} holds no PEM certificate")
