"""ETSI EN 319 522-3 evidence (certifier/etsi.py): one signed ``Evidence`` document per
event of a certificate's evidence log.

Checked with parts that are not ours: every document against the published XSD with
``xmlschema`` (its imports resolved offline: ``xml.xsd`` and the XML Signature schema
ship with xmlschema, the SAML assertion schema with pysaml2), and every XAdES signature
with signxml's verifier, trusting only the development CA. The records are the
gateway's own (tests/fixtures/evidence: sending delivered, deferred then failed with the
content lost, tracked, reception, addenda), and a certificate made by the real gateway
goes through ``certifica evidence export``.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import saml2
import xmlschema
from lxml import etree
from signxml.exceptions import InvalidSignature
from signxml.xades import XAdESVerifier

from certifier.etsi import ETSI_EVENT, NS, etsi_evidence_files
from certifier.evidence import commitment, entry_hash_v2
from certifier.pki import Pki, ensure_dev_pki
from tests.conftest import CERT_ADDRESS, FIXTURES, ROOT, Gateway, Sink, make_message
from tests.test_certified_sending import submit
from tests.test_verification_record import certificate_of

# The published schema is not copied into the repository: it is read from the project's
# shared standards folder beside the checkout (or CERTIFICA_STANDARDS, a folder holding it).
XSD_NAME = "etsi-en-319-522-3.xsd"
XSD_PLACES = [
    *([Path(os.environ["CERTIFICA_STANDARDS"])] if os.environ.get("CERTIFICA_STANDARDS") else []),
    ROOT.parent / "shared" / "standards",
    Path("/work/shared/standards"),
]
XSD = next((p / XSD_NAME for p in XSD_PLACES if (p / XSD_NAME).is_file()), None)
RECORDS = sorted((FIXTURES / "evidence").glob("*.json"))
KINDS = {"sending", "reception", "addendum"}


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    if XSD is None:
        pytest.skip(
            f"the published ETSI EN 319 522-3 schema ({XSD_NAME}) is in none of "
            + ", ".join(map(str, XSD_PLACES))
            + "; set CERTIFICA_STANDARDS to the folder holding it"
        )
    bundled = Path(xmlschema.__file__).parent / "schemas"
    saml = Path(saml2.__file__).parent / "data" / "schemas" / "saml-schema-assertion-2.0.xsd"
    return xmlschema.XMLSchema(
        str(XSD),
        locations=[
            ("http://www.w3.org/XML/1998/namespace", str(bundled / "XML" / "xml_minimal.xsd")),
            (
                "http://www.w3.org/2000/09/xmldsig#",
                str(bundled / "DSIG" / "xmldsig-core-schema.xsd"),
            ),
            ("urn:oasis:names:tc:SAML:2.0:assertion", str(saml)),
        ],
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_dev_pki(tmp_path_factory.mktemp("etsi-keys"), "certifica.localhost")


def signed(record: Path, pki: Pki) -> list[tuple[str, bytes]]:
    evidence = json.loads(record.read_text())
    return etsi_evidence_files(
        evidence, None, pki.signing_key.read_bytes(), pki.signing_cert.read_bytes()
    )


def text(xml: bytes, path: str) -> list[str]:
    root = etree.fromstring(xml)
    return [str(t) for t in root.xpath(path, namespaces={"e": NS})]


def test_the_fixtures_cover_every_kind_of_record() -> None:
    kinds = {json.loads(p.read_text())["kind"] for p in RECORDS}
    assert kinds == KINDS


@pytest.mark.parametrize("record", RECORDS, ids=lambda p: p.stem)
def test_every_event_is_one_evidence_document_valid_against_the_etsi_xsd(
    record: Path, schema: xmlschema.XMLSchema, pki: Pki
) -> None:
    evidence = json.loads(record.read_text())
    entries = evidence["evidence_log"]["entries"]
    files = signed(record, pki)

    assert [name for name, _ in files] == [
        f"evidence/{n:03d}-{e['event']}.xml" for n, e in enumerate(entries, 1)
    ]
    for (name, xml), entry in zip(files, entries, strict=True):
        errors = list(schema.iter_errors(xml.decode()))
        assert not errors, f"{name}: {errors[0]}"
        root = etree.fromstring(xml)
        assert root.tag == f"{{{NS}}}Evidence"
        # The log entry travels verbatim: its hash in the chain can be recomputed.
        assert text(xml, "//*[local-name()='LogEntry']/@hash") == [entry["hash"]]
        assert text(xml, "//*[local-name()='Detail']/text()") == [entry["detail"]]
        assert text(xml, "e:MessageIdentifier/text()")
        digests = text(
            xml, "e:UserContentInfo/e:PartsInfo/e:PartInfo/*[local-name()='DigestValue']/text()"
        )
        assert len(digests) == 1 + len(evidence["message"].get("attachments") or [])


def test_the_events_map_to_etsi_events_with_their_reasons_and_relay(pki: Pki) -> None:
    by_event: dict[str, list[bytes]] = {}
    for record in RECORDS:
        for name, xml in signed(record, pki):
            by_event.setdefault(name.split("-", 1)[1].removesuffix(".xml"), []).append(xml)

    for ours, etsi in [
        ("SubmissionAcceptance", "SubmissionAcceptance"),
        ("RelayToNonERDS", "RelayToNonERDS"),
        ("RelayToNonERDSFailure", "RelayToNonERDSFailure"),
        ("ReceivedFromNonERDS", "ReceivedFromNonERDS"),
        ("ContentOpened", "ContentHandover"),
    ]:
        for xml in by_event[ours]:
            assert text(xml, "e:ERDSEventId/text()") == [ETSI_EVENT + etsi]
    for xml in by_event["NoticeSent"]:
        assert text(xml, "e:ERDSEventId/text()") == ["urn:certifica:event:NoticeSent"]

    relayed = by_event["RelayToNonERDS"][0]
    assert text(relayed, "ForwardedToExternalSystem/text()")[0].startswith("127.0.0.1[127.0.0.1]:")
    assert text(relayed, "//*[local-name()='RemoteReply']/text()")[0].startswith("250 ")
    assert text(relayed, "EvidenceRefersToRecipient/text()") in (["1"], ["2"])
    for failed in by_event["RelayToNonERDSFailure"]:
        assert text(failed, "e:EventReasons/e:EventReason/Code/text()")
    opened = by_event["ContentOpened"][0]
    assert text(opened, "e:EventReasons/e:EventReason/Code/text()")[0].startswith(
        "urn:certifica:reason:tracking-"
    )
    assert text(opened, "//*[local-name()='Tracking']/@automatic") in (["true"], ["false"])
    received = by_event["ReceivedFromNonERDS"][0]
    assert text(received, "//*[local-name()='Dmarc']/text()") == ["pass"]
    assert text(received, "e:RecipientDetails/Identifier/text()") == ["owner@owner.test"]


def test_every_signature_verifies_with_the_development_ca_and_a_tampered_one_fails(
    pki: Pki, tmp_path: Path
) -> None:
    verified = 0
    for record in RECORDS:
        for _name, xml in signed(record, pki):
            XAdESVerifier().verify(xml, ca_pem_file=str(pki.ca_cert))
            verified += 1
    assert verified == sum(
        len(json.loads(p.read_text())["evidence_log"]["entries"]) for p in RECORDS
    )

    _name, xml = signed(RECORDS[0], pki)[0]
    tampered = xml.replace(b"alice@example.com</Identifier>", b"mallory@example.com</Identifier>")
    assert tampered != xml
    with pytest.raises(InvalidSignature):
        XAdESVerifier().verify(tampered, ca_pem_file=str(pki.ca_cert))

    other = ensure_dev_pki(tmp_path / "other", "elsewhere.localhost")
    with pytest.raises(InvalidSignature):
        XAdESVerifier().verify(xml, ca_pem_file=str(other.ca_cert))


def test_export_writes_one_signed_valid_file_per_event_of_a_real_certificate(
    gateway: Gateway, mx: Sink, schema: xmlschema.XMLSchema, tmp_path: Path
) -> None:
    from certifier.verify import embedded_evidence

    raw = make_message(to="bob@example.org", cc=CERT_ADDRESS, subject="ETSI export")
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    evidence = embedded_evidence(certificate_of(mx, qid))
    assert evidence is not None
    cert_id = evidence["certificate_id"]

    result = gateway.cli("evidence", "export", cert_id, str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "out" / "evidence").iterdir())
    entries = evidence["evidence_log"]["entries"]
    assert [p.name for p in written] == [
        f"{n:03d}-{e['event']}.xml" for n, e in enumerate(entries, 1)
    ]
    ca = gateway.state / "keys" / "ca.pem"
    for path in written:
        xml = path.read_bytes()
        schema.validate(xml.decode())
        XAdESVerifier().verify(xml, ca_pem_file=str(ca))
        assert text(xml, "e:EvidenceIssuerPolicyID/PolicyID/text()") == [
            evidence["provider"]["policy_id"]
        ]
        # message.eml came out of the PDF: its MIME parts are listed beside the whole.
        identifiers = text(xml, "e:UserContentInfo/e:PartsInfo/e:PartInfo/Identifier/text()")
        assert identifiers[0] == "message.eml" and len(identifiers) >= 2
        # The chain hash of the entry recomputes from the XML alone (format 2: the salt).
        (log,) = etree.fromstring(xml).xpath("//*[local-name()='LogEntry']")
        detail = text(xml, "//*[local-name()='Detail']/text()")
        committed = commitment(log.get("salt"), log.get("recipient"), detail[0] if detail else "")
        assert log.get("hash") == entry_hash_v2(
            log.get("prev"), int(log.get("seq")), float(log.get("time")), log.get("qid"),
            log.get("event"), committed,
        )  # fmt: skip

    missing = gateway.cli("evidence", "export", "CF-0000000000000000", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert "no certificate CF-0000000000000000" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_user_content_lists_every_mime_part_of_the_attested_message(
    schema: xmlschema.XMLSchema, pki: Pki
) -> None:
    evidence = json.loads((FIXTURES / "evidence" / "sending.json").read_text())
    eml = (FIXTURES / "thunderbird_attachments.eml").read_bytes()  # sending.json's message
    key, cert = pki.signing_key.read_bytes(), pki.signing_cert.read_bytes()

    _name, xml = etsi_evidence_files(evidence, eml, key, cert)[0]
    schema.validate(xml.decode())
    parts = "e:UserContentInfo/e:PartsInfo/e:PartInfo/"
    assert text(xml, parts + "Identifier/text()") == [
        "message.eml",
        "1.1",
        "1.2",
        "2 (contrato-revisión.pdf)",
        "3 (firma.png)",
    ]
    assert text(xml, parts + "ContentType/text()") == [
        "message/rfc822",
        "text/plain",
        "text/html",
        "application/pdf",
        "image/png",
    ]
    digests = [
        base64.b64decode(d).hex() for d in text(xml, parts + "*[local-name()='DigestValue']/text()")
    ]
    assert digests[0] == evidence["message"]["sha256"]
    assert digests[3:] == [a["sha256"] for a in evidence["message"]["attachments"]]
    assert text(xml, "e:UserContentInfo/ComposingParts/text()") == ["5"]

    # Another message than the one attested: its parts are not described.
    _name, other = etsi_evidence_files(evidence, eml + b"\r\n", key, cert)[0]
    assert text(other, parts + "Identifier/text()") == [
        "message.eml",
        "contrato-revisión.pdf",
        "firma.png",
    ]


def test_what_xml_cannot_carry_is_replaced_and_the_document_stays_valid(
    schema: xmlschema.XMLSchema, pki: Pki
) -> None:
    evidence = json.loads((FIXTURES / "evidence" / "sending.json").read_text())
    entry = evidence["evidence_log"]["entries"][2]
    detail = json.loads(entry["detail"])
    detail["reply"] = "250 2.0.0 queued\x00\x1b[31m\udcff\ufffe"
    entry["detail"] = json.dumps(detail)
    evidence["message"]["attachments"][0]["sha256"] = "not a digest"

    _name, xml = etsi_evidence_files(
        evidence, None, pki.signing_key.read_bytes(), pki.signing_cert.read_bytes()
    )[2]
    schema.validate(xml.decode())
    XAdESVerifier().verify(xml, ca_pem_file=str(pki.ca_cert))
    assert text(xml, "//*[local-name()='RemoteReply']/text()") == [
        "250 2.0.0 queued\ufffd\ufffd[31m\ufffd\ufffd"
    ]


def test_the_certificate_embeds_one_signed_evidence_document_per_event(
    gateway: Gateway, mx: Sink, schema: xmlschema.XMLSchema
) -> None:
    """The PDF the sender gets carries the ETSI documents beside evidence.json, as
    associated files with relationship Data (read back with pikepdf, not our code)."""
    import io

    import pikepdf

    from certifier.verify import embedded_evidence

    raw = make_message(to="bob@example.org", cc=CERT_ADDRESS, subject="ETSI embedded")
    qid = submit(gateway, raw, ["bob@example.org", CERT_ADDRESS])
    pdf = certificate_of(mx, qid)
    evidence = embedded_evidence(pdf)
    assert evidence is not None
    entries = evidence["evidence_log"]["entries"]
    with pikepdf.open(io.BytesIO(pdf)) as doc:
        files = {name: spec for name, spec in doc.attachments.items()}
        related = {str(f.get("/F")): str(f.get("/AFRelationship")) for f in doc.Root.AF}
        xml_names = sorted(n for n in files if n.startswith("evidence-"))
        assert xml_names == [f"evidence-{n:03d}-{e['event']}.xml" for n, e in enumerate(entries, 1)]
        ca = gateway.state / "keys" / "ca.pem"
        for name in xml_names:
            assert related[name] == "/Data"
            xml = files[name].get_file().read_bytes()
            schema.validate(xml.decode())
            XAdESVerifier().verify(xml, ca_pem_file=str(ca))
    # The gateway's own verifier still accepts the certificate with the extra files.
    path = gateway.state / "certificates" / f"{evidence['certificate_id']}.pdf"
    check = gateway.cli("verify", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
