"""The gateway's own addresses: one list, and the one decision on what an address is.

Every address the gateway receives mail at is an entry of :data:`ADDRESS_FORMS`; a
later kind of address (an SMS subdomain, say) is one more entry there and one more
:class:`AddressKind`, and a tag of the certification address (``certifica+hosted@``)
is one more entry of :data:`CERTIFICATION_TAGS`. Both listeners (the MX, port 25, and
submission, 587/465) ask :meth:`GatewayAddresses.classify` at RCPT, so they agree on
what is ours:

===============  ==============================================  =======================
kind             form                                            what it is for
===============  ==============================================  =======================
``certify``      ``certifica@<domain>`` (+ a documented tag)     asks for certification
``bounce``       ``bounces+<id>.<mac>@<domain>`` (VERP)          late delivery reports
``reception``    ``recepcion+<token>@<domain>``                  certified reception
``postmaster``   ``postmaster@<domain>``, bare ``<Postmaster>``  the operator (RFC 5321)
``abuse``        ``abuse@<domain>``                              the operator (RFC 2142)
``postmaster``   ``mailer-daemon@<domain>``                      replies to reports
===============  ==============================================  =======================

Any other address at one of the gateway's domains (:func:`local_domains`: the mail
domain, the host name, the certification address's domain) is refused at RCPT with
``550 5.1.1`` and a sentence: an unknown ``+tag`` of the certification address lists
the valid forms, a near miss of it (``certifca@``, ``certifica.@``; see
:func:`edit_distance`) says which address was meant, anything else names the addresses
that exist. ``postmaster`` is matched case-insensitively and also without a domain
(RFC 5321 §4.5.1); it and ``abuse`` are relayed to ``[gateway] postmaster``
(:func:`postmaster_address`), an address outside the gateway. The gateway never looks
its own domains up in the DNS: :mod:`relay.delivery.routing` hands their mail to its own MX.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.cleanup.bounces import parse_return_path
from relay.hosted.modes import TAGS as HOSTED_TAGS
from relay.smtpd import replies

if TYPE_CHECKING:  # relay.config validates [gateway] postmaster with this module
    from relay.config import Config

DEVELOPMENT_POSTMASTER = "postmaster@example.org"
"""``[gateway] postmaster`` when unset in development: the shipped config.toml routes
example.org to the local mailbox (``[sink]``), so it lands in var/mailbox/."""

CERTIFICATION_TAGS: dict[str, str] = dict(HOSTED_TAGS)
"""The documented ``+tag`` forms of the certification address, tag -> what it asks for:
the hosted modes (docs/hosted.md; :mod:`relay.hosted.modes`). Any other
``certifica+anything@`` is refused with the list of the valid forms."""


class AddressKind(enum.StrEnum):
    """What an address of the gateway is for."""

    CERTIFY = "certify"
    BOUNCE = "bounce"
    RECEPTION = "reception"
    POSTMASTER = "postmaster"
    ABUSE = "abuse"


@dataclass(frozen=True)
class AddressForm:
    """One entry of the list: a kind, its form as the README writes it, its purpose."""

    kind: AddressKind
    form: str  # {certification}, {domain}, {bounce_prefix}, {reception_prefix} filled in
    purpose: str
    public: bool  # named to a client whose address was refused (secret ones are not)


ADDRESS_FORMS: tuple[AddressForm, ...] = (
    AddressForm(
        AddressKind.CERTIFY,
        "{certification}",
        "Cc it to have a message certified",
        public=True,
    ),
    AddressForm(
        AddressKind.BOUNCE,
        "{bounce_prefix}+<id>.<mac>@{domain}",
        "the return path of relayed mail (VERP): delivery reports come back here",
        public=False,
    ),
    AddressForm(
        AddressKind.RECEPTION,
        "{reception_prefix}+<token>@{domain}",
        "certified reception: a mailbox owner forwards what they receive here",
        public=False,
    ),
    AddressForm(
        AddressKind.POSTMASTER,
        "postmaster@{domain}",
        "the operator, relayed to [gateway] postmaster (RFC 5321 §4.5.1)",
        public=True,
    ),
    AddressForm(
        AddressKind.POSTMASTER,
        "mailer-daemon@{domain}",
        "the sender of non-delivery reports (relay.certify.dsn): a reply reaches the operator",
        public=False,
    ),
    AddressForm(
        AddressKind.ABUSE,
        "abuse@{domain}",
        "reports of abuse, relayed to [gateway] postmaster (RFC 2142)",
        public=True,
    ),
)

# Local parts that are the same mailbox at every domain of the gateway.
# MAILER-DAEMON signs the non-delivery reports (relay.certify.dsn); a person who answers one
# reaches the operator, as Postfix's default alias sends it to postmaster.
_ROLE_ACCOUNTS = {
    "postmaster": AddressKind.POSTMASTER,
    "mailer-daemon": AddressKind.POSTMASTER,
    "abuse": AddressKind.ABUSE,
}
# Characters that route mail onward when they appear in a local part (RFC 5321 Appendix
# C source routes, the % hack, UUCP bang paths): such an address is never ours.
_ROUTING = frozenset("@%!:")
MAX_NEAR_MISS = 2
"""Edits (see :func:`edit_distance`) that still make a near miss of the certification
address; 1 for a local part of 5 characters or fewer, where 2 would match real names."""


@dataclass(frozen=True)
class Decision:
    """What an RCPT address is: one of ours (``kind``), refused (``refusal``), or
    neither, an address elsewhere that the listener judges itself (relay rules)."""

    kind: AddressKind | None = None
    address: str = ""  # as it should be delivered: ``postmaster@<domain>`` for <Postmaster>
    detail: str = ""  # the tag, the queue id or the token
    refusal: str | None = None


def local_domains(cfg: Config) -> frozenset[str]:
    """The domains whose mail the gateway takes itself, lower case, no final dot."""
    return GatewayAddresses.from_config(cfg).domains


def postmaster_address(cfg: Config) -> str:
    """Where mail to postmaster@ and abuse@ goes: ``[gateway] postmaster``, or in
    development when unset :data:`DEVELOPMENT_POSTMASTER`; empty in production when
    unset (:func:`relay.production.check_production` refuses to start then)."""
    if cfg.gateway.postmaster:
        return cfg.gateway.postmaster
    return DEVELOPMENT_POSTMASTER if cfg.gateway.mode == "development" else ""


def reception_address(prefix: str, token: str, domain: str) -> str:
    """The forwarding address of a reception token: ``<prefix>+<token>@<domain>``."""
    return f"{prefix}+{token}@{domain}"


def reception_token(address: str, prefix: str, domain: str) -> str | None:
    """The token of ``<prefix>+<token>@<domain>``, or None if ``address`` is not one."""
    local, at, dom = address.strip().rpartition("@")
    if not at or dom.lower().rstrip(".") != domain.lower().rstrip("."):
        return None
    head, plus, token = local.partition("+")
    if not plus or head.lower() != prefix or not token.isalnum() or len(token) > 64:
        return None
    return token.lower()


def edit_distance(a: str, b: str, limit: int) -> int:
    """The optimal string alignment distance of ``a`` and ``b``, at most ``limit + 1``.

    Damerau's typing errors each cost one edit: a letter left out, one too many, one
    wrong, two neighbours swapped (``certifcia``). difflib's ratio would not do: it
    scores similarity by matching blocks, with no bound a reader can state. The
    computation stops as soon as the distance must exceed ``limit``, so a long address
    from a client costs no more than a short one.
    """
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before: list[int] = []
    previous = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        current = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                current[j] = min(current[j], before[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        before, previous = previous, current
    return min(previous[-1], limit + 1)


class GatewayAddresses:
    """The gateway's addresses for one configuration: :meth:`classify` decides."""

    def __init__(
        self,
        *,
        domain: str,
        certification_address: str,
        hostname: str = "",
        verp_key: bytes = b"",
        verp_prefix: str = "bounces",
        reception_prefix: str = "recepcion",
        tags: dict[str, str] | None = None,
    ) -> None:
        self.domain = domain.lower().rstrip(".")
        self.certification = certification_address.strip().lower()
        self.cert_local, _, self.cert_domain = self.certification.rpartition("@")
        self.domains = frozenset(
            d for d in (self.domain, hostname.lower().rstrip("."), self.cert_domain) if d
        )
        self.verp_key = verp_key
        self.verp_prefix = verp_prefix.lower()
        self.reception_prefix = reception_prefix.lower()
        self.tags = dict(CERTIFICATION_TAGS if tags is None else tags)

    @classmethod
    def from_config(cls, cfg: Config, verp_key: bytes = b"") -> GatewayAddresses:
        """The addresses ``cfg`` gives the gateway; without ``verp_key`` no return path
        is recognised (a listener that never receives delivery reports)."""
        return cls(
            domain=cfg.gateway.domain,
            certification_address=cfg.gateway.certification_address,
            hostname=cfg.gateway.hostname,
            verp_key=verp_key,
            verp_prefix=cfg.gateway.bounce_prefix,
            reception_prefix=cfg.reception.prefix,
        )

    # -- the list, as written for people ---------------------------------------------
    def forms(self, public_only: bool = False) -> list[tuple[AddressKind, str, str]]:
        """Every entry of :data:`ADDRESS_FORMS` with this gateway's names filled in,
        the certification address's tagged forms after it."""
        names = {
            "certification": self.certification,
            "domain": self.domain,
            "bounce_prefix": self.verp_prefix,
            "reception_prefix": self.reception_prefix,
        }
        listed: list[tuple[AddressKind, str, str]] = []
        for entry in ADDRESS_FORMS:
            if (
                public_only
                and not entry.public
                or entry.kind is AddressKind.CERTIFY
                and not self.certification
            ):
                continue
            listed.append((entry.kind, entry.form.format(**names), entry.purpose))
            if entry.kind is AddressKind.CERTIFY:
                listed.extend(
                    (entry.kind, self._tagged(tag), what) for tag, what in self.tags.items()
                )
        return listed

    def _tagged(self, tag: str) -> str:
        return f"{self.cert_local}+{tag}@{self.cert_domain}"

    # -- the decision ------------------------------------------------------------------
    def is_local(self, domain: str) -> bool:
        """True for a domain whose mail the gateway takes itself."""
        return domain.lower().rstrip(".") in self.domains

    def is_reserved(self, address: str) -> bool:
        """True for an address that is the gateway's own, so never a user's: at one of
        its domains, the certification address (any ``+tag``), postmaster, abuse,
        mailer-daemon, and the bounce and reception prefixes (any ``+tag``). A user at
        such an address would send, signed with the gateway's DKIM key, as the gateway
        itself (docs/accounts.md, "Users and roles")."""
        local, at, domain = address.strip().lower().rpartition("@")
        if not at or domain.rstrip(".") not in self.domains:
            return False
        head = local.partition("+")[0]
        own = {self.verp_prefix, self.reception_prefix, *_ROLE_ACCOUNTS}
        return head in own or bool(self.cert_local) and head == self.cert_local

    def is_certification(self, address: str) -> bool:
        """True for the certification address and its documented tagged forms."""
        return self.classify(address).kind is AddressKind.CERTIFY

    def classify(self, address: str) -> Decision:
        """What ``address`` (an RCPT forward-path, without its angle brackets) is."""
        local, at, domain = address.strip().rpartition("@")
        if not at:
            # An unqualified name is local (RFC 5321 §4.1.1.3); only Postmaster is one.
            local, domain = address.strip(), self.domain
            if local.lower() == "postmaster":
                return Decision(AddressKind.POSTMASTER, f"postmaster@{self.domain}")
            return Decision(refusal=self._no_such_address())
        domain = domain.lower().rstrip(".")
        if domain not in self.domains:
            # Another domain's address, even one a letter away from ours: a real address
            # there (certifica@certifica.eu beside certifica.es) must stay sendable.
            return Decision()
        if _ROUTING.intersection(local):
            # A source route, the % hack or a quoted "x@elsewhere" at our domain: not an
            # address of ours, and never relayed on (RFC 5321 Appendix C).
            return Decision(refusal=self._no_such_address())
        lower = local.lower()
        head, plus, tag = lower.partition("+")
        if self.certification and domain == self.cert_domain and head == self.cert_local:
            if not plus:
                return Decision(AddressKind.CERTIFY, address.strip())
            if tag in self.tags:
                return Decision(AddressKind.CERTIFY, address.strip(), detail=tag)
            return Decision(refusal=self._unknown_tag())
        if domain == self.domain:
            if self.verp_key and head == self.verp_prefix and plus:
                qid = parse_return_path(address, self.domain, self.verp_key, self.verp_prefix)
                if qid is None:
                    return Decision(refusal=replies.NO_SUCH_USER)  # forged or mangled
                return Decision(AddressKind.BOUNCE, address.strip(), detail=qid)
            if head == self.reception_prefix and plus:
                token = reception_token(address, self.reception_prefix, self.domain)
                if token is None:
                    return Decision(refusal=replies.NO_SUCH_USER)
                return Decision(AddressKind.RECEPTION, address.strip(), detail=token)
        role = _ROLE_ACCOUNTS.get(lower)
        if role is not None:
            return Decision(role, f"{lower}@{domain}")
        if self.certification and (
            head == self.cert_local or self._near_miss(head, self.cert_local)
        ):
            return Decision(refusal=self._did_you_mean())
        return Decision(refusal=self._no_such_address())

    @staticmethod
    def _near_miss(text: str, target: str) -> bool:
        limit = 1 if len(target) <= 5 else MAX_NEAR_MISS
        return text != target and edit_distance(text, target, limit) <= limit

    # -- the sentences -----------------------------------------------------------------
    def _no_such_address(self) -> str:
        public = ", ".join(form for _, form, _ in self.forms(public_only=True))
        return replies.NO_SUCH_ADDRESS.format(domain=self.domain, addresses=public)

    def _unknown_tag(self) -> str:
        if not self.tags:
            return replies.CERTIFICATION_TAG_NONE.format(address=self.certification)
        valid = ", ".join([self.certification] + [self._tagged(t) for t in self.tags])
        return replies.CERTIFICATION_TAG_UNKNOWN.format(valid=valid)

    def _did_you_mean(self) -> str:
        return replies.CERTIFICATION_NEAR_MISS.format(address=self.certification)
