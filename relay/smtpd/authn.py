"""Is this message really from the registered user it claims? DKIM, SPF and DMARC.

The MX (port 25) accepts a message for certification only when its From domain
authenticates it, DMARC-style: a DKIM signature (:rfc:`6376`) whose ``d=`` aligns with
the From domain, or an SPF pass (:rfc:`7208`) for an aligned MAIL FROM domain
(:rfc:`7489` §3.1). :func:`authenticate` evaluates all three and returns
:class:`AuthResults`, which also writes the Authentication-Results header (:rfc:`8601`)
and the sentence for a refusal.

What counts (README, "Two ways to send certified mail"; RFC 7489 §3.1): a DKIM signature passes only if it verifies, has no ``l=``
tag (anyone could append text after the signed length), uses ``a=rsa-sha256`` or
``a=ed25519-sha256`` (:rfc:`8301` forbids rsa-sha1; :rfc:`8463`), and, for RSA, a key
of at least 1024 bits. Signatures that verify but fail these rules are ``neutral``
with the reason (``l= tag present``, ``rsa-sha1``, ``key of 768 bits``). At most
:data:`MAX_SIGNATURES` signatures are examined, those whose ``d=`` shares the From
domain's organisational domain first, so junk signatures cannot push the real one out.

How the DNS is asked: every lookup goes through one dnspython resolver built from the
``[dns]`` nameservers and timeout (the system resolver when there are none), called
from worker threads (:func:`asyncio.to_thread`), so the event loop never blocks:

* dkimpy: this module fetches the key record itself (so a SERVFAIL can be told from a
  missing key, which dkimpy's own lookup cannot) and hands it to
  ``dkim.DKIM.verify(idx, dnsfunc=...)``, the documented DNS hook, as a function that
  returns that record; dkimpy never asks the DNS itself.
* pyspf: its only DNS hook is the module-global ``spf.DNSLookup`` (process-wide, so
  unusable with per-call resolvers in threads). Instead :class:`_SPFQuery` subclasses
  ``spf.query`` and overrides ``query.dns()``, the one method through which pyspf
  makes every lookup, with the same contract (lists of addresses, ``(preference,
  host)`` pairs, PTR names, TXT string tuples; RFC 7208 §4.6.4 void-lookup limit) on
  our resolver. DNS trouble raises ``spf.TempError``, which pyspf reports as
  ``temperror``.
* DMARC: the TXT record at ``_dmarc.<From domain>``, falling back to the
  organisational domain (``sp=`` applies there when present, RFC 7489 §6.6.3). The
  organisational domain is found with the Public Suffix List (RFC 7489 §3.2), ICANN
  and private sections both, as the ``publicsuffixlist`` package ships it: one label
  under the longest public suffix (``example.co.uk``, ``foo.github.io``,
  ``x.k12.ca.us``). A name that is itself a public suffix is its own.

All lookups of one call share a deadline of :data:`LOOKUP_BUDGET` times the timeout.

Exceptions::

    TemporaryAuthError  -- a lookup that decides the outcome failed (SERVFAIL,
                           timeout, no usable resolver): the MX answers 451 4.7.x
    (nothing else: any bytes, however broken, give a result, at worst a fail)

A lookup decides the outcome when its answer could still make the message pass: the
DMARC record (it sets the alignment mode), the key of a signature whose ``d=`` could
align, the SPF check of an aligned MAIL FROM domain, unless another aligned mechanism
already passed. Other temporary failures show as ``temperror`` in the results.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util
import dns.exception
import dns.name
import dns.resolver
import spf
from publicsuffixlist import PublicSuffixList

from certifier.errors import TemporaryError
from relay.delivery.routing import parse_nameservers

log = logging.getLogger("certifica/authn")
# dkimpy logs what it meets in a message at error level, in the message's own words
# ("Incomplete ARC set for instance <the sender's number>"): hostile bytes are not a
# fault of the gateway, and client text must not reach the log unescaped. Its verdicts
# are returned and logged here, so its own lines go nowhere.
_DKIMPY_LOG = logging.getLogger("certifica/authn/dkimpy")
_DKIMPY_LOG.propagate = False
_DKIMPY_LOG.addHandler(logging.NullHandler())
_DKIMPY_LOG.setLevel(logging.CRITICAL)

MAX_SIGNATURES = 5
"""DKIM-Signature fields examined per message at most (aligned ones first)."""

MIN_RSA_BITS = 1024
"""RSA keys shorter than this do not count (RFC 8301 §3.2)."""

LOOKUP_BUDGET = 4
"""All DNS lookups of one :func:`authenticate` call end within this many timeouts."""

ACCEPTED_ALGORITHMS = (b"rsa-sha256", b"ed25519-sha256")

POLICIES = ("dkim-or-spf", "dkim")
"""What :meth:`AuthResults.passes` accepts: aligned DKIM or SPF, or aligned DKIM only."""

_SAFE_PVALUE = re.compile(r"[A-Za-z0-9._+@-]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
# d= and s= worth a DNS query: ASCII labels (RFC 6376 §3.5, A-labels for IDNs).
_DNS_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}(?:\.[A-Za-z0-9_-]{1,63})*")


class TemporaryAuthError(TemporaryError):
    """A DNS lookup that decides the outcome failed (SERVFAIL, timeout): answer 451 4.7.x."""


class _Temporary(TemporaryError):
    """One lookup failed in a way that trying later may cure; carries the reason."""


@dataclass(frozen=True)
class DkimResult:
    """One DKIM-Signature: ``pass``; ``fail`` (with why: ``body hash mismatch``, ``no key
    published``, ...); ``neutral``, not counted whatever its validity (``l= tag
    present``, ``rsa-sha1``, ``key of 768 bits``); or ``temperror`` (RFC 8601 §2.7.1:
    its key could not be fetched now, and that did not decide the outcome)."""

    domain: str
    selector: str
    result: str
    reason: str


@dataclass(frozen=True)
class AuthResults:
    """What :func:`authenticate` found; see the module docstring."""

    from_domain: str
    dkim: tuple[DkimResult, ...]
    spf: str
    spf_domain: str
    dmarc: str
    dmarc_policy: str | None
    aligned_dkim: bool
    aligned_spf: bool
    spf_scope: str = "mailfrom"
    """``mailfrom``, or ``helo`` when the null sender made SPF check the HELO name."""

    def header(self, authserv_id: str) -> str:
        """The value of an Authentication-Results header field (RFC 8601 §2.2)."""
        parts = [authserv_id]
        if not self.dkim:
            parts.append("dkim=none")
        for sig in self.dkim:
            text = f"dkim={sig.result}"
            if sig.result != "pass" and sig.reason:
                text += f" reason={_quoted(sig.reason)}"
            if sig.domain:
                text += f" header.d={_pvalue(sig.domain)}"
            if sig.selector:
                text += f" header.s={_pvalue(sig.selector)}"
            parts.append(text)
        spf_text = f"spf={self.spf}"
        if self.spf_domain:
            spf_text += f" smtp.{self.spf_scope}={_pvalue(self.spf_domain)}"
        parts.append(spf_text)
        dmarc_text = f"dmarc={self.dmarc}"
        if self.from_domain:
            dmarc_text += f" header.from={_pvalue(self.from_domain)}"
        parts.append(dmarc_text)
        return "; ".join(parts)

    def passes(self, policy: str) -> bool:
        """Whether the message authenticates under ``policy`` (one of :data:`POLICIES`)."""
        if policy == "dkim-or-spf":
            return self.aligned_dkim or self.aligned_spf
        if policy == "dkim":
            return self.aligned_dkim
        raise ValueError(f"unknown authentication policy {policy!r}: use one of {POLICIES}")

    def refusal(self, policy: str) -> str:
        """One plain sentence for the 550 5.7.1 reply: what failed, what to publish."""
        domain = _printable(self.from_domain) or "the From domain"
        if self.passes(policy):
            return f"The message is authenticated for {domain}."
        dkim_part = self._dkim_problem(domain)
        if policy == "dkim":
            return (
                f"Mail from {domain} must carry a valid DKIM signature by {domain}, but "
                f"{dkim_part}; the owner of {domain} must sign its outgoing mail with DKIM "
                f"and publish the key in DNS."
            )
        return (
            f"Mail from {domain} must be authenticated, but {dkim_part} and "
            f"{self._spf_problem(domain)}; the owner of {domain} must sign its outgoing "
            f"mail with DKIM and publish the key in DNS, or publish an SPF record that "
            f"authorises the sending server."
        )

    def _dkim_problem(self, domain: str) -> str:
        if not self.dkim:
            return "it carries no DKIM signature"
        aligned = [s for s in self.dkim if _aligned(s.domain, self.from_domain, strict=False)]
        for sig in aligned:
            if sig.result == "pass":
                return f"its DKIM signature by {_printable(sig.domain)} does not align strictly"
        for sig in aligned:
            reason = _printable(sig.reason) or sig.result
            if sig.result == "neutral":
                return f"its DKIM signature by {_printable(sig.domain)} does not count ({reason})"
            return f"its DKIM signature by {_printable(sig.domain)} is not valid ({reason})"
        signers = sorted({_printable(s.domain) for s in self.dkim if s.result == "pass"})
        if signers:
            return f"it is DKIM-signed only by {', '.join(signers)}, not by {domain}"
        return f"none of its DKIM signatures is valid or by {domain}"

    def _spf_problem(self, domain: str) -> str:
        where = _printable(self.spf_domain) or "the envelope sender"
        if self.spf == "pass":
            return f"SPF passed for {where}, which does not align with {domain}"
        return {
            "none": f"{where} publishes no SPF record",
            "permerror": f"the SPF record of {where} is invalid (permerror)",
            "temperror": f"the SPF record of {where} could not be read (temperror)",
        }.get(
            self.spf,
            f"the SPF record of {where} does not authorise the sending server ({self.spf})",
        )


# -- the DNS -------------------------------------------------------------------------
class _DNS:
    """Blocking lookups through one resolver, for use in worker threads."""

    def __init__(self, nameservers: Sequence[str], timeout: float) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + LOOKUP_BUDGET * timeout
        self._resolver: dns.resolver.Resolver | None = None
        self._problem = ""
        try:
            self._resolver = dns.resolver.Resolver(configure=not nameservers)
        except dns.exception.DNSException as err:  # no /etc/resolv.conf, say
            self._problem = f"no usable resolver ({err.__class__.__name__})"
            return
        if nameservers:
            self._resolver.nameservers = parse_nameservers(tuple(nameservers))
        self._resolver.timeout = min(self._resolver.timeout, timeout)

    def lookup(self, name: str | bytes, rdtype: str) -> list[Any]:
        """The records, [] if the name or record does not exist; raises :class:`_Temporary`."""
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, ValueError, UnicodeError):
            return []  # not a name that can exist: no record
        shown = qname.to_text(omit_final_dot=True)
        if self._resolver is None:
            raise _Temporary(f"lookup of {shown}/{rdtype} failed: {self._problem}")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Temporary(f"lookup of {shown}/{rdtype} not tried: time is up")
        try:
            answer = self._resolver.resolve(
                qname, rdtype, search=False, lifetime=min(self.timeout, left)
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except (dns.exception.DNSException, OSError) as err:
            raise _Temporary(f"lookup of {shown}/{rdtype} failed ({_reason(err)})") from None
        return list(answer)

    def txt(self, name: str | bytes) -> list[bytes]:
        return [b"".join(r.strings) for r in self.lookup(name, "TXT")]


def _reason(err: BaseException) -> str:
    if isinstance(err, dns.exception.Timeout):
        return "timed out"
    if isinstance(err, dns.resolver.NoNameservers):
        return "SERVFAIL or no usable name server"
    return err.__class__.__name__


# -- helpers -------------------------------------------------------------------------
@functools.cache
def _public_suffixes() -> PublicSuffixList:
    """The Public Suffix List bundled with ``publicsuffixlist``, parsed once (~50 ms)."""
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """The organisational domain of ``domain`` (RFC 7489 §3.2): the longest public suffix
    it ends in plus one label. A public suffix itself (``co.uk``), a single label or a
    name the list cannot parse is its own organisational domain; never raises."""
    name = ".".join(label for label in domain.lower().rstrip(".").split(".") if label)
    try:
        found = _public_suffixes().privatesuffix(name)
    except (ValueError, TypeError, UnicodeError):
        found = None
    return found if isinstance(found, str) else name


def _aligned(domain: str, from_domain: str, *, strict: bool) -> bool:
    """RFC 7489 §3.1: the same name (strict) or the same organisational domain."""
    a, b = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if not a or not b:
        return False
    return a == b if strict else organizational_domain(a) == organizational_domain(b)


def _text(value: bytes | None) -> str:
    """A d= or s= value from a signature, safe for logs, headers and replies."""
    if not value:
        return ""
    return "".join(value.decode("utf-8", "replace").split())[:255]


def _printable(text: str) -> str:
    """``text`` without control characters (CR, LF, ...), at most 255 characters."""
    return _CONTROLS.sub("", text)[:255]


def _quoted(text: str) -> str:
    clean = _printable(text).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{clean}"'


def _pvalue(text: str) -> str:
    """An RFC 8601 property value: as is when plain, else a quoted-string."""
    return text if _SAFE_PVALUE.fullmatch(text) else _quoted(text)


# -- DKIM ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Checked:
    result: DkimResult
    temporary: str = ""  # why the key lookup failed, when it did


def _verify_dkim(lookup: _DNS, raw: bytes, from_domain: str) -> list[_Checked]:
    """Every DKIM-Signature of ``raw`` (up to the cap), aligned candidates first."""
    try:
        verifier = dkim.DKIM(raw, logger=_DKIMPY_LOG, minkey=MIN_RSA_BITS)
        headers = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    except Exception as err:  # dkimpy's parser on hostile bytes: IndexError and the like
        log.info("DKIM: message could not be parsed for verification (%s)", err.__class__.__name__)
        return []
    order = []
    for idx, value in enumerate(headers):
        try:
            tags = dkim.util.parse_tag_value(value)
        except Exception:  # InvalidTagValueList, or worse, on junk
            tags = {}
        candidate = _aligned(_text(tags.get(b"d")), from_domain, strict=False)
        order.append((not candidate, idx, tags))
    order.sort(key=lambda item: (item[0], item[1]))
    if len(order) > MAX_SIGNATURES:
        log.info("DKIM: %d signatures, only %d examined", len(order), MAX_SIGNATURES)
    results = []
    for _, idx, tags in order[:MAX_SIGNATURES]:
        try:
            results.append(_verify_one(lookup, verifier, idx, tags))
        except Exception as err:  # dkimpy on hostile input; never let it reach the MX
            log.warning("DKIM: signature %d not verifiable (%r)", idx, err)
            domain, selector = _text(tags.get(b"d")), _text(tags.get(b"s"))
            results.append(_Checked(DkimResult(domain, selector, "fail", "not verifiable")))
    return results


def _verify_one(lookup: _DNS, verifier: dkim.DKIM, idx: int, tags: dict[bytes, bytes]) -> _Checked:
    domain, selector = _text(tags.get(b"d")).lower(), _text(tags.get(b"s"))

    def result(value: str, reason: str) -> _Checked:
        return _Checked(DkimResult(domain, selector, value, reason))

    if not tags or not _DNS_NAME.fullmatch(domain) or not _DNS_NAME.fullmatch(selector):
        return result("fail", "malformed signature")
    if b"l" in tags:
        return result("neutral", "l= tag present")
    algorithm = tags.get(b"a", b"").lower()
    if algorithm == b"rsa-sha1":
        return result("neutral", "rsa-sha1")
    if algorithm not in ACCEPTED_ALGORITHMS:
        return result("fail", "unknown algorithm")
    name = tags[b"s"] + b"._domainkey." + tags[b"d"] + b"."
    try:
        records = lookup.txt(name)
    except _Temporary as err:
        return _Checked(DkimResult(domain, selector, "temperror", "key lookup failed"), str(err))
    if not records:
        return result("fail", "no key published")
    record = next((r for r in records if b"p=" in r), records[0])
    try:
        _, bits, key_type, _ = dkim.evaluate_pk(name, record)
    except Exception:  # KeyFormatError, binascii.Error, ...: a broken key record
        return result("fail", "key record unusable")
    if not bits:
        return result("fail", "key revoked or unusable")
    if key_type != (b"ed25519" if algorithm == b"ed25519-sha256" else b"rsa"):
        return result("fail", "key type does not match a=")
    if key_type == b"rsa" and bits < MIN_RSA_BITS:
        return result("neutral", f"key of {bits} bits")
    try:
        # The documented hook: dkimpy asks dnsfunc for the key; it gets the record above.
        ok = verifier.verify(idx=idx, dnsfunc=lambda _name, timeout=0: record)
    except dkim.DKIMException as err:
        text = str(err)
        if "body hash mismatch" in text:
            return result("fail", "body hash mismatch")
        return result("fail", _printable(text.split(" (")[0])[:80] or "invalid signature")
    return result("pass", "") if ok else result("fail", "signature did not verify")


# -- SPF -----------------------------------------------------------------------------
class _SPFQuery(spf.query):  # type: ignore[misc]
    """pyspf's query with its DNS layer (``query.dns``) on our resolver."""

    def __init__(self, lookup: _DNS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lookup = lookup

    def dns(
        self, name: str, qtype: str, cnames: Any = None, ignore_void: bool = False
    ) -> list[Any]:
        name = str(name).rstrip(".").lower()
        if not name:
            raise spf.PermError("empty domain name")
        if not all(0 < len(label) < 64 for label in name.split(".")):
            return []  # as pyspf: an impossible name has no records
        key = (name, qtype)
        if key not in self.cache:
            try:
                records = self._lookup.lookup(name, qtype)
            except _Temporary as err:
                raise spf.TempError(f"DNS {err}") from None
            self.cache[key] = [_spf_value(qtype, r) for r in records]
        result = list(self.cache[key])
        if not result and not ignore_void:
            self.void_lookups += 1
            if self.void_lookups > spf.MAX_VOID_LOOKUPS:
                raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
        return result


def _spf_value(qtype: str, rdata: Any) -> Any:
    """One record in the form pyspf's own DNSLookup_dnspython gives it."""
    if qtype in ("A", "AAAA"):
        return rdata.address
    if qtype == "MX":
        return (rdata.preference, rdata.exchange.to_text(omit_final_dot=True))
    if qtype == "PTR":
        return rdata.target.to_text(omit_final_dot=True)
    return tuple(rdata.strings)  # TXT, SPF


def _check_spf(lookup: _DNS, client_ip: str, mail_from: str, helo: str) -> tuple[str, str]:
    """``(result, detail)`` of RFC 7208 check_host() for the MAIL FROM (or HELO) identity."""
    try:
        query = _SPFQuery(lookup, i=client_ip, s=mail_from, h=helo, timeout=lookup.timeout)
        result, _, explanation = query.check()
    except Exception as err:  # pyspf on a malformed IP or identity
        log.info("SPF: check not possible (%r)", err)
        return "permerror", "check not possible"
    if result not in ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"):
        result = "permerror"
    return result, str(explanation)


# -- DMARC ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Dmarc:
    policy: str | None
    strict_dkim: bool
    strict_spf: bool


def _dmarc_record(lookup: _DNS, from_domain: str) -> _Dmarc | None:
    """The DMARC record for ``from_domain`` (RFC 7489 §6.6.3); raises :class:`_Temporary`."""
    if not from_domain:
        return None
    org = organizational_domain(from_domain)
    for name, inherited in ((from_domain, False), (org, True)):
        if inherited and name == from_domain:
            break
        records = [r for r in lookup.txt(f"_dmarc.{name}.") if r.startswith(b"v=DMARC1")]
        if len(records) == 1:
            return _parse_dmarc(records[0], inherited)
        if records:
            return None  # more than one record: none applies (§6.6.3 step 3)
    return None


def _parse_dmarc(record: bytes, inherited: bool) -> _Dmarc:
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";"):
        key, _, value = part.partition("=")
        tags.setdefault(key.strip().lower(), value.strip().lower())
    policy = tags.get("p")
    if inherited and tags.get("sp") in ("none", "quarantine", "reject"):
        policy = tags["sp"]
    if policy not in ("none", "quarantine", "reject"):
        policy = "none"  # §6.6.3: a record without a valid p= is treated as p=none
    return _Dmarc(policy, tags.get("adkim") == "s", tags.get("aspf") == "s")


# -- ARC -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ArcResult:
    """The ARC chain of a forwarded message (:rfc:`8617`): ``none`` (no ARC headers),
    ``pass`` or ``fail``, the number of hops that sealed it, and why when it failed."""

    result: str
    instances: int
    reason: str


def _check_arc(lookup: _DNS, raw: bytes) -> ArcResult:
    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            records = lookup.txt(name)
        except _Temporary:
            return None
        return records[0] if records else None

    try:
        cv, results, reason = dkim.arc_verify(
            raw, logger=_DKIMPY_LOG, dnsfunc=txt, minkey=MIN_RSA_BITS
        )
    except Exception as err:  # dkimpy on hostile bytes
        log.info("ARC: chain not verifiable (%s)", err.__class__.__name__)
        return ArcResult("fail", 0, "not verifiable")
    result = cv.decode("ascii", "replace") if isinstance(cv, bytes) else str(cv)
    return ArcResult(result, len(results or []), _printable(str(reason or ""))[:200])


async def check_arc(raw: bytes, nameservers: Sequence[str], timeout: float) -> ArcResult:
    """ARC chain validation of ``raw`` with our resolver, off the event loop."""
    return await asyncio.to_thread(_check_arc, _DNS(nameservers, timeout), bytes(raw))


# -- putting it together -------------------------------------------------------------
async def authenticate(
    raw: bytes,
    mail_from: str,
    client_ip: str,
    helo: str,
    from_domain: str,
    nameservers: Sequence[str],
    timeout: float,
) -> AuthResults:
    """DKIM, SPF and DMARC for one message; raises only :class:`TemporaryAuthError`.

    ``mail_from`` is the reverse-path without angle brackets ("" for the null sender),
    ``from_domain`` the domain of the one From mailbox, ``nameservers`` as in ``[dns]``
    (``ip`` or ``ip:port``; empty for the system resolver).
    """
    from_domain = from_domain.lower().rstrip(".")
    mail_from = mail_from.strip().strip("<>")
    lookup = _DNS(nameservers, timeout)
    dmarc_out, dkim_out, spf_out = await asyncio.gather(
        asyncio.to_thread(_dmarc_record, lookup, from_domain),
        asyncio.to_thread(_verify_dkim, lookup, bytes(raw), from_domain),
        asyncio.to_thread(_check_spf, lookup, client_ip, mail_from, helo),
        return_exceptions=True,
    )
    if isinstance(dmarc_out, _Temporary):
        raise TemporaryAuthError(f"DMARC record: {dmarc_out}")
    # The workers catch what third-party code raises; anything left is a bug of ours,
    # logged, and taken as "not authenticated" rather than a crash of the MX session.
    for outcome in (dmarc_out, dkim_out, spf_out):
        if isinstance(outcome, BaseException):
            log.error("authentication check failed", exc_info=outcome)
    if not isinstance(dkim_out, list):
        dkim_out = []
    if not isinstance(spf_out, tuple):
        spf_out = ("permerror", "check failed")
    record = dmarc_out if isinstance(dmarc_out, _Dmarc) else None
    strict_dkim = record.strict_dkim if record else False
    strict_spf = record.strict_spf if record else False

    if mail_from:
        scope, spf_domain = "mailfrom", mail_from.rpartition("@")[2].lower().rstrip(".")
    else:
        scope, spf_domain = "helo", helo.lower().rstrip(".")
    spf_result, spf_detail = spf_out
    signatures = tuple(c.result for c in dkim_out)
    aligned_dkim = any(
        s.result == "pass" and _aligned(s.domain, from_domain, strict=strict_dkim)
        for s in signatures
    )
    aligned_spf = spf_result == "pass" and _aligned(spf_domain, from_domain, strict=strict_spf)

    if not (aligned_dkim or aligned_spf):
        for checked in dkim_out:
            if checked.temporary and _aligned(
                checked.result.domain, from_domain, strict=strict_dkim
            ):
                raise TemporaryAuthError(f"DKIM key: {checked.temporary}")
        if spf_result == "temperror" and _aligned(spf_domain, from_domain, strict=strict_spf):
            raise TemporaryAuthError(f"SPF: {spf_detail}")

    if aligned_dkim or aligned_spf:
        dmarc = "pass"
    else:
        dmarc = "fail" if record else "none"
    return AuthResults(
        from_domain=from_domain,
        dkim=signatures,
        spf=spf_result,
        spf_domain=spf_domain,
        dmarc=dmarc,
        dmarc_policy=record.policy if record else None,
        aligned_dkim=aligned_dkim,
        aligned_spf=aligned_spf,
        spf_scope=scope,
    )
