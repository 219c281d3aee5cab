"""ETSI EN 319 522-3 evidence: one signed XML ``Evidence`` document per recorded event.

A certificate's ``evidence.json`` (:mod:`certifier.evidence_record`) is Certifica's own
format; EN 319 522-3 (Electronic Registered Delivery Services, evidence formats) is the
standard one. :func:`etsi_evidence_files` turns the record's evidence log
(``evidence_log.entries``, one entry per event, hash-chained) into one XML document per
entry whose root is ``Evidence`` in the namespace ``http://uri.etsi.org/19522/v1#`` (the
schema has no container element), named ``evidence/001-SubmissionAcceptance.xml``, ...
in the log's order, each signed on its own with an enveloped XAdES signature
(ETSI EN 319 132-1, XAdES-B-B: ``SigningTime`` and ``SigningCertificateV2``) by the key
and certificate that sign the PDF. The function is pure: the same record, key and
certificate give the same documents except for the signing time.

Events. EN 319 522-2 section 8 names the events of a registered delivery service; ours
map to them as follows (``ERDSEventId`` is ``http://uri.etsi.org/19522/Event/<name>``):

- ``SubmissionAcceptance``: the sender's message accepted (answered 250) -> the same.
- ``RelayToNonERDS``: a recipient's server accepted the message -> the same.
- ``RelayToNonERDSFailure``: it refused it for good, or a late bounce said so -> the same.
- ``ReceivedFromNonERDS``: a message received for a reception address -> the same.
- ``ContentOpened``: the recipient's mail program fetched the tracking image or followed
  a link -> ``ContentHandover``, the nearest ETSI event (the content reached the
  recipient's hands); its ``EventReasons`` say it was observed by tracking, and the
  tracking classification (by a person, or an automatic fetch, and why) is in
  ``Extensions``. It is a weaker proof than an ERDS handover and is labelled as such.

Every other event of the gateway (``NoticeSent``, ``RelayAttemptDeferred``,
``SpoolFileMissing``, ``CertificateIssued``, ``AddendumIssued``, ``DeliveryReport``...)
has no ETSI counterpart: its ``ERDSEventId`` is ``urn:certifica:event:<name>`` (a URI of
ours, which the schema allows) and what it recorded is under ``Extensions``.

Components (EN 319 522-3 ``Components`` group, in the schema's order):
``EventReasons`` for failures, deferrals and tracking (``Code`` a URI, ``Details`` the
remote server's reply or the gateway's note); ``EventTime`` the log entry's time;
``EvidenceIssuerPolicyID`` from ``[provider] policy_id``; ``EvidenceIssuerDetails`` the
provider and the gateway as SAML attributes, with the signing certificate;
``SenderDetails`` and ``RecipientDetails`` identified by e-mail address (scheme
``mailto``; a reception names its owner as recipient); ``EvidenceRefersToRecipient``
(1-based) when the event concerns one recipient; ``SubmissionTime``;
``MessageIdentifier`` the Message-ID (else the queue id); ``UserContentInfo`` with a
``PartInfo`` and SHA-256 digest for the whole message (``message/rfc822``, the digest
of the bytes as received) and for every MIME leaf part (its decoded body, identified by
its RFC 3501 section number), or, when the message is lost, for every attachment the
record lists;
``ForwardedToExternalSystem`` the MX that answered (``host[ip]:port``).

``Extensions`` hold, in the namespace ``urn:certifica:etsi-extensions:1``: the log
entry itself (sequence number, its hash and the previous one, the ``detail`` JSON
verbatim and, for a format-2 entry, its ``salt`` (or, once the gateway forgot its values,
its ``commitment``), so the entry's hash in the chain can be recomputed from the XML
alone, as :mod:`certifier.evidence` describes and README "The evidence log" says), the
remote server's reply, TLS, the sender's authentication results (RFC 8601 header,
DKIM, SPF, DMARC) and the tracking classification; and, in an ``Extension`` of its own
in every document, one ``Invoice`` element per attachment that is an invoice
(:mod:`certifier.invoices`: format, version, number, issue date, seller and buyer with
their tax ids, total with currency, the invoice's own signature and any problem in
reading it), naming the attachment by file name and SHA-256 as ``UserContentInfo``
lists it. ``Extension`` is ``AnyType`` in the schema, so these validate as they are.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any

from lxml import etree

from certifier.i18n import as_datetime
from certifier.mime import (
    PART_FIELDS,
    Defects,
    decode_transfer,
    part_headers,
    read_headers,
    split_multipart,
)

__all__ = [
    "CERTIFICA_EVENT",
    "ETSI_EVENT",
    "EXT_NS",
    "NS",
    "etsi_event_uri",
    "etsi_evidence_files",
    "evidence_documents",
    "mime_parts",
    "sign_xml",
]

NS = "http://uri.etsi.org/19522/v1#"
"""EN 319 522-3's namespace."""
DS_NS = "http://www.w3.org/2000/09/xmldsig#"
SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
EXT_NS = "urn:certifica:etsi-extensions:1"
"""Certifica's elements inside ``Extension``."""
ETSI_EVENT = "http://uri.etsi.org/19522/Event/"
CERTIFICA_EVENT = "urn:certifica:event:"
REASON = "urn:certifica:reason:"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"  # XML Encryption, as XAdES uses it
VERSION = "1"
MAX_PARTS = 1000
MAX_DEPTH = 64

_ETSI_EVENTS = {
    "SubmissionAcceptance": "SubmissionAcceptance",
    "RelayToNonERDS": "RelayToNonERDS",
    "RelayToNonERDSFailure": "RelayToNonERDSFailure",
    "ReceivedFromNonERDS": "ReceivedFromNonERDS",
    "ContentOpened": "ContentHandover",
    "ContentHandover": "ContentHandover",  # the hosted page handed the content over
    "ContentHandoverFailure": "ContentHandoverFailure",  # its link expired unopened
}


def etsi_event_uri(event: str) -> str:
    """The ``ERDSEventId`` of one of our event names (module docstring)."""
    if event in _ETSI_EVENTS:
        return ETSI_EVENT + _ETSI_EVENTS[event]
    return CERTIFICA_EVENT + event


# The schema declares no elementFormDefault: its global elements are in NS, the ones
# declared inside a type (EventTime, Code, Identifier, ...) in no namespace.
_LOCAL = frozenset(
    {
        "EventTime",
        "X509Certificate",
        "Code",
        "Details",
        "PolicyID",
        "Identifier",
        "ComposingParts",
        "ContentType",
        "EvidenceRefersToRecipient",
        "ForwardedToExternalSystem",
    }
)


def _q(name: str, ns: str = NS) -> str:
    if ns == NS and name in _LOCAL:
        return name
    return f"{{{ns}}}{name}"


# Characters XML 1.0 cannot carry (section 2.2: C0 controls but tab and line breaks,
# surrogates, U+FFFE/U+FFFF): a remote reply or header may hold them; each becomes
# U+FFFD here, the exact bytes staying in the log entry's hash chain and evidence.json.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


_HEX_SHA256 = re.compile("[0-9a-f]{64}")


def _xml(value: object) -> str:
    return _NOT_XML.sub("\ufffd", str(value))


def _sub(parent: etree._Element, name: str, text: str | None = None, ns: str = NS) -> Any:
    element = etree.SubElement(parent, _q(name, ns))
    if text is not None:
        element.text = _xml(text)
    return element


def _set(element: etree._Element, name: str, value: object) -> None:
    element.set(name, _xml(value))


def _iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _time(value: str | None) -> str | None:
    """An ISO 8601 time or the log's epoch seconds, as an xs:dateTime in UTC."""
    if not value:
        return None
    try:
        return _iso(float(value))
    except ValueError:
        pass
    parsed = as_datetime(value)
    return None if parsed is None else _iso(parsed.timestamp())


def _b64_of_hex(digest: str) -> str:
    return base64.b64encode(bytes.fromhex(digest)).decode("ascii")


def _detail(entry: dict[str, Any]) -> dict[str, Any]:
    try:
        loaded = json.loads(entry.get("detail") or "{}")
    except (TypeError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _saml_attribute(parent: etree._Element, name: str, friendly: str, value: str) -> None:
    attribute = _sub(parent, "Attribute", ns=SAML_NS)
    attribute.set("Name", name)
    attribute.set("NameFormat", "urn:oasis:names:tc:SAML:2.0:attrname-format:uri")
    attribute.set("FriendlyName", friendly)
    _sub(attribute, "AttributeValue", value, ns=SAML_NS)


def _user(parent: etree._Element, name: str, address: str, header: str | None) -> None:
    """``SenderDetails``/``RecipientDetails``: the display name of the header field, if
    any, as a SAML ``cn`` attribute, and the envelope address as ``mailto``."""
    user = _sub(parent, name)
    display = parseaddr(header)[0] if header else ""
    if display:
        identity = _sub(user, "Identity")
        _saml_attribute(identity, "urn:oid:2.5.4.3", "cn", display)
    identifier = _sub(user, "Identifier", address or "<>")
    identifier.set("IdentifierSchemeName", "mailto")


def _recipients(evidence: dict[str, Any]) -> list[str]:
    addresses = [r["address"] for r in evidence.get("recipients") or [] if r.get("address")]
    if addresses:
        return addresses
    reception = evidence.get("reception") or {}
    if reception.get("owner"):
        return [str(reception["owner"])]
    envelope = reception.get("envelope") or {}
    return [str(a) for a in envelope.get("rcpt_to") or []] or ["<>"]


def _submission_time(evidence: dict[str, Any]) -> str | None:
    for entry in (evidence.get("evidence_log") or {}).get("entries") or []:
        if entry.get("event") in ("SubmissionAcceptance", "ReceivedFromNonERDS"):
            return _time(entry.get("time"))
    reception = evidence.get("reception") or {}
    timeline = evidence.get("timeline") or [{}]
    return _time(reception.get("arrived_at") or timeline[0].get("time"))


def _reasons(event: str, detail: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """``EventReasons``: why a relay failed or was deferred, how a handover was seen."""
    reply = str(detail.get("reply") or "")
    notes = [str(detail[k]) for k in ("note", "reason", "why", "error") if detail.get(k)]
    if event in ("RelayToNonERDSFailure", "RelayAttemptDeferred"):
        words = reply.split()
        code = next((w for w in words[1:2] if w[:1].isdigit() and "." in w), "")
        kind = "smtp-" + (code or (words[0] if words else "none"))
        return [(REASON + kind, [t for t in [reply, *notes] if t])]
    if event == "ContentOpened":
        automatic = detail.get("automatic")
        kind = "tracking-automatic" if automatic else "tracking-person"
        return [(REASON + kind, notes)]
    if event == "SpoolFileMissing":
        return [(REASON + "content-unavailable", notes)]
    return []


def _extensions(parent: etree._Element, evidence: dict[str, Any], entry: dict[str, Any]) -> None:
    detail = _detail(entry)
    extensions = _sub(parent, "Extensions")
    log = _sub(_sub(extensions, "Extension"), "LogEntry", ns=EXT_NS)
    _set(log, "event", entry.get("event", ""))
    for key in ("seq", "qid", "recipient", "time", "prev", "hash", "salt", "commitment"):
        if entry.get(key) is not None:
            _set(log, key, entry[key])
    _sub(log, "Detail", str(entry.get("detail") or ""), ns=EXT_NS)

    extras = _sub(extensions, "Extension")
    if detail.get("reply"):
        _sub(extras, "RemoteReply", str(detail["reply"]), ns=EXT_NS)
    tls = detail.get("tls")
    sender = evidence.get("sender") or {}
    if entry.get("event") in ("SubmissionAcceptance", "ReceivedFromNonERDS"):
        sender_tls = sender.get("tls") or {}
        if sender_tls.get("version"):
            tls = sender_tls
    if isinstance(tls, dict):
        element = _sub(extras, "Tls", ns=EXT_NS)
        for key in ("version", "cipher"):
            if tls.get(key):
                _set(element, key, tls[key])
    elif tls:
        _set(_sub(extras, "Tls", ns=EXT_NS), "version", tls)
    authentication = sender.get("authentication")
    if isinstance(authentication, dict) and entry.get("event") == "ReceivedFromNonERDS":
        auth = _sub(extras, "Authentication", ns=EXT_NS)
        if authentication.get("header"):
            _sub(auth, "AuthenticationResults", str(authentication["header"]), ns=EXT_NS)
        for dkim in authentication.get("dkim") or []:
            element = _sub(auth, "Dkim", str(dkim.get("result", "")), ns=EXT_NS)
            _set(element, "domain", dkim.get("domain", ""))
        for key in ("spf", "dmarc"):
            if authentication.get(key):
                _sub(auth, key.capitalize(), str(authentication[key]), ns=EXT_NS)
    if entry.get("event") == "ContentOpened":
        element = _sub(extras, "Tracking", str(detail.get("reason") or ""), ns=EXT_NS)
        element.set("automatic", "true" if detail.get("automatic") else "false")
        if detail.get("link"):
            _set(element, "link", detail["link"])
    if len(extras) == 0:
        extensions.remove(extras)
    _invoices(extensions, evidence)


def _invoices(extensions: etree._Element, evidence: dict[str, Any]) -> None:
    """One ``Invoice`` per attachment the record found to be an invoice."""
    attachments = (evidence.get("message") or {}).get("attachments") or []
    found = [a for a in attachments if isinstance(a, dict) and isinstance(a.get("invoice"), dict)]
    if not found:
        return
    extension = _sub(extensions, "Extension")
    for attachment in found:
        invoice = attachment["invoice"]
        element = _sub(extension, "Invoice", ns=EXT_NS)
        _set(element, "part", attachment.get("filename") or "")
        _set(element, "sha256", attachment.get("sha256") or "")
        for key in ("format", "version", "kind"):
            _set(element, key, invoice.get(key) or "")
        _sub(element, "Number", str(invoice.get("number") or ""), ns=EXT_NS)
        _sub(element, "IssueDate", str(invoice.get("issue_date") or ""), ns=EXT_NS)
        for role in ("seller", "buyer"):
            party = invoice.get(role) or {}
            who = _sub(element, role.capitalize(), str(party.get("name") or ""), ns=EXT_NS)
            _set(who, "taxId", party.get("tax_id") or "")
        total = _sub(element, "Total", str(invoice.get("total") or ""), ns=EXT_NS)
        _set(total, "currency", invoice.get("currency") or "")
        signature = invoice.get("signature")
        if isinstance(signature, dict):
            seal = _sub(element, "Signature", str(signature.get("detail") or ""), ns=EXT_NS)
            for key in ("status", "kind", "signer"):
                if signature.get(key):
                    _set(seal, key, signature[key])
        if invoice.get("problem"):
            _sub(element, "Problem", str(invoice["problem"]), ns=EXT_NS)


def _document(
    evidence: dict[str, Any],
    entry: dict[str, Any],
    number: int,
    eml: bytes | None,
    signer_cert_der: bytes | None,
) -> etree._Element:
    event = str(entry.get("event") or "Unknown")
    detail = _detail(entry)
    root = etree.Element(
        _q("Evidence"), nsmap={"erds": NS, "ds": DS_NS, "saml": SAML_NS, "c": EXT_NS}
    )
    root.set("version", VERSION)
    _sub(root, "EvidenceIdentifier", f"{evidence.get('certificate_id', '')}/{number:03d}")
    _sub(root, "ERDSEventId", etsi_event_uri(event))
    reasons = _reasons(event, detail)
    if reasons:
        element = _sub(root, "EventReasons")
        for code, details in reasons:
            reason = _sub(element, "EventReason")
            _sub(reason, "Code", code)
            for text in details:
                _sub(reason, "Details", text)
    _sub(root, "EventTime", _time(entry.get("time")) or _time(evidence.get("issued_at")))
    provider = evidence.get("provider") or {}
    if provider.get("policy_id"):
        _sub(_sub(root, "EvidenceIssuerPolicyID"), "PolicyID", str(provider["policy_id"]))
    issuer = _sub(root, "EvidenceIssuerDetails")
    identity = _sub(issuer, "Identity")
    gateway = evidence.get("gateway") or {}
    if provider.get("name"):
        _saml_attribute(identity, "urn:oid:2.5.4.10", "o", str(provider["name"]))
    _saml_attribute(identity, "urn:oid:2.5.4.3", "cn", str(gateway.get("hostname") or "-"))
    if signer_cert_der is not None:
        details = _sub(issuer, "CertificateDetails")
        _sub(details, "X509Certificate", base64.b64encode(signer_cert_der).decode("ascii"))

    sender = evidence.get("sender") or {}
    _user(root, "SenderDetails", str(sender.get("envelope_from") or ""), sender.get("header_from"))
    recipients = _recipients(evidence)
    for address in recipients:
        _user(root, "RecipientDetails", address, None)
    submitted = _submission_time(evidence)
    if submitted:
        _sub(root, "SubmissionTime", submitted)
    if entry.get("recipient") in recipients:
        _sub(root, "EvidenceRefersToRecipient", str(recipients.index(entry["recipient"]) + 1))
    message = evidence.get("message") or {}
    _sub(
        root,
        "MessageIdentifier",
        str(message.get("message_id") or evidence.get("queue_id") or evidence["certificate_id"]),
    )
    _content(root, message, eml)
    if detail.get("mx_host"):
        forwarded = f"{detail['mx_host']}[{detail.get('ip') or ''}]"
        if detail.get("port"):
            forwarded += f":{detail['port']}"
        _sub(root, "ForwardedToExternalSystem", forwarded)
    _extensions(root, evidence, entry)
    return root


def _content(root: etree._Element, message: dict[str, Any], eml: bytes | None) -> None:
    """``UserContentInfo``: the whole message, then every MIME leaf part of ``eml`` when
    it is the message the record attests (same SHA-256), else every attachment the
    record lists (the gateway lost the message, or none was given)."""
    digest = str(message.get("sha256") or "")
    parts = [("message.eml", "message/rfc822", digest)]
    if eml is not None and hashlib.sha256(eml).hexdigest() == digest:
        parts += mime_parts(eml)
    else:
        parts += [
            (str(a.get("filename") or f"attachment {i}"), str(a.get("content_type") or ""),
             str(a.get("sha256") or ""))
            for i, a in enumerate(message.get("attachments") or [], 1)
        ]  # fmt: skip
    info = _sub(root, "UserContentInfo")
    _sub(info, "ComposingParts", str(len(parts)))
    listed = _sub(info, "PartsInfo")
    for name, content_type, sha256 in parts:
        part = _sub(listed, "PartInfo")
        _sub(part, "Identifier", name)
        _sub(part, "ContentType", content_type or "application/octet-stream")
        if _HEX_SHA256.fullmatch(sha256):
            _sub(part, "DigestMethod", ns=DS_NS).set("Algorithm", SHA256)
            _sub(part, "DigestValue", _b64_of_hex(sha256), ns=DS_NS)


def mime_parts(eml: bytes) -> list[tuple[str, str, str]]:
    """Every leaf part of a message: ``(identifier, content type, SHA-256 hex of its
    decoded body)``. The identifier is the part's section number (RFC 3501 section
    6.4.5: ``1``, ``2.1``, ...), with its file name if it has one. Read with
    :mod:`certifier.mime`, iteratively, at most ``MAX_PARTS`` entities ``MAX_DEPTH`` deep;
    what cannot be read is left out (the whole message's digest still covers it)."""
    defects = Defects()
    out: list[tuple[str, str, str]] = []
    stack: list[tuple[int, int, str, int]] = [(0, len(eml), "", 0)]
    examined = 0
    while stack and examined < MAX_PARTS:
        examined += 1
        start, end, section, depth = stack.pop()
        fields, body_start = read_headers(eml, start, end, PART_FIELDS, "", defects)
        headers = part_headers(fields, "text/plain", "", defects)
        boundary = headers.params.get("boundary", "")
        if headers.content_type.startswith("multipart/") and boundary and depth < MAX_DEPTH:
            split = split_multipart(
                eml, body_start, end, boundary.encode("utf-8", "surrogatepass"), MAX_PARTS
            )
            del stack[MAX_PARTS:]  # bounded, whatever the nesting
            for number in range(len(split.children), 0, -1):
                child_start, child_end = split.children[number - 1]
                child = f"{section}.{number}" if section else str(number)
                stack.append((child_start, child_end, child, depth + 1))
            continue
        data = decode_transfer(eml[body_start:end], headers.transfer_encoding, "", defects)
        name = headers.disposition_params.get("filename") or headers.params.get("name")
        identifier = section or "1"
        out.append(
            (f"{identifier} ({name})" if name else identifier, headers.content_type,
             hashlib.sha256(data).hexdigest())
        )  # fmt: skip
    return out


def evidence_documents(
    evidence: dict[str, Any], eml: bytes | None = None, signer_cert_pem: bytes | None = None
) -> list[tuple[str, etree._Element]]:
    """The unsigned ``Evidence`` documents of a record, one per log entry, with their
    file names (``evidence/001-SubmissionAcceptance.xml``, ...)."""
    der = None
    if signer_cert_pem is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        der = x509.load_pem_x509_certificate(signer_cert_pem).public_bytes(Encoding.DER)
    entries = (evidence.get("evidence_log") or {}).get("entries") or []
    out = []
    for number, entry in enumerate(entries, 1):
        name = "".join(c for c in str(entry.get("event") or "Unknown") if c.isalnum())
        out.append(
            (f"evidence/{number:03d}-{name}.xml", _document(evidence, entry, number, eml, der))
        )
    return out


@functools.lru_cache(maxsize=4)
def _private_key(pem: bytes, password: bytes | None) -> Any:
    """The key object of a PEM key, loaded once per process: loading an RSA key checks
    it, which costs far more than a signature (about 30 ms against 0.5 ms)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=password)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"cannot sign XAdES with a {type(key).__name__}: RSA or EC only")
    return key


def sign_xml(
    document: etree._Element,
    signer_key: bytes | Any,
    signer_cert: bytes,
    *,
    key_password: bytes | None = None,
) -> bytes:
    """``document`` with an enveloped XAdES-B-B signature (signxml) appended as its last
    child, serialised as UTF-8 with an XML declaration. ``signer_key`` and
    ``signer_cert`` are PEM (the key encrypted under ``key_password`` if given), or the
    key is already a key object (the certificate worker's, possibly in an HSM); RSA and
    EC keys are supported."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from signxml import DigestAlgorithm, SignatureMethod
    from signxml.xades import XAdESSigner

    key = _private_key(signer_key, key_password) if isinstance(signer_key, bytes) else signer_key
    method = (
        SignatureMethod.ECDSA_SHA256
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else SignatureMethod.RSA_SHA256
    )
    signer = XAdESSigner(signature_algorithm=method, digest_algorithm=DigestAlgorithm.SHA256)
    signed = signer.sign(document, key=key, cert=signer_cert.decode("ascii"))
    return bytes(etree.tostring(signed, xml_declaration=True, encoding="UTF-8"))


def etsi_evidence_files(
    evidence: dict[str, Any],
    eml: bytes | None,
    signer_key: bytes | Any,
    signer_cert: bytes,
    *,
    key_password: bytes | None = None,
) -> list[tuple[str, bytes]]:
    """Every event of ``evidence`` as a signed EN 319 522-3 ``Evidence`` document:
    ``(name, xml)`` pairs in the log's order, ``name`` like
    ``evidence/001-SubmissionAcceptance.xml``. ``eml`` is the message as received
    (None when the gateway lost it): its MIME parts are listed with their digests.
    ``signer_key``/``signer_cert``: PEM, as for :func:`sign_xml`."""
    return [
        (name, sign_xml(document, signer_key, signer_cert, key_password=key_password))
        for name, document in evidence_documents(evidence, eml, signer_cert)
    ]
