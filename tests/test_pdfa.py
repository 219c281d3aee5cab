"""Certificates are PDF/A-3b (ISO 19005-3, level B), before and after the signature.

No PDF/A validator (veraPDF and the like) is installable here, so these tests check the
properties PDF/A-3b asks for structurally, with pikepdf (an independent PDF reader,
qpdf) and poppler's ``pdffonts``, on certificates made by
:func:`certifier.pool.render_and_sign` with the development signer: the header version,
the XMP identification and its agreement with the document information dictionary, the
sRGB output intent with its ICC profile, every font embedded, the file identifier, no
encryption or JavaScript, and the embedded files as associated files. Passing them is
necessary for conformance, not proof of it.
"""

from __future__ import annotations

import io
import re
import struct
import subprocess
from datetime import datetime

import pikepdf
import pytest
from PIL import ImageCms

from certifier.pki import Pki, ensure_dev_pki
from certifier.pool import SigningSettings, build_signer, render_and_sign
from certifier.signing import DocumentSigner
from tests.test_certificate_pages import KINDS, evidence_for
from tests.test_certificate_pdf import EML, make_evidence

PDFA_ID = "{http://www.aiim.org/pdfa/ns/id/}"
DC = "{http://purl.org/dc/elements/1.1/}"
XMP = "{http://ns.adobe.com/xap/1.0/}"
PDF = "{http://ns.adobe.com/pdf/1.3/}"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> DocumentSigner:
    pki: Pki = ensure_dev_pki(tmp_path_factory.mktemp("keys") / "pki", "certifica.localhost")
    return build_signer(SigningSettings.from_pki(pki))


@pytest.fixture(scope="module")
def signed(signer: DocumentSigner) -> bytes:
    return render_and_sign(make_evidence(), EML, signer)


def open_pdf(data: bytes) -> pikepdf.Pdf:
    return pikepdf.open(io.BytesIO(data))


def pdf_date(value: str) -> datetime:
    """A PDF date string (ISO 32000-1 section 7.9.4) as an aware datetime."""
    m = re.fullmatch(r"D:(\d{14})([+-])(\d\d)'(\d\d)'?", value)
    assert m, value
    digits, sign, hh, mm = m.groups()
    return datetime.strptime(f"{digits}{sign}{hh}{mm}", "%Y%m%d%H%M%S%z")


def cmap_subtables(font_program: bytes) -> list[tuple[int, int]]:
    """(platform, encoding) of each subtable of a TrueType font's cmap table."""
    (count,) = struct.unpack(">H", font_program[4:6])
    for i in range(count):
        record = font_program[12 + 16 * i : 28 + 16 * i]
        if record[:4] == b"cmap":
            (offset,) = struct.unpack(">I", record[8:12])
            (n,) = struct.unpack(">H", font_program[offset + 2 : offset + 4])
            at = offset + 4
            return [
                struct.unpack(">HH", font_program[at + 8 * j : at + 8 * j + 4]) for j in range(n)
            ]
    raise AssertionError("no cmap table")


def assert_pdfa3b(data: bytes) -> None:
    assert data.startswith(b"%PDF-1.7\n")  # PDF/A-3 is based on PDF 1.7 (6.1.2)
    with open_pdf(data) as pdf:
        root = pdf.Root
        assert not pdf.is_encrypted
        assert "/Version" not in root or str(root.Version) == "/1.7"
        ids = pdf.trailer.ID
        assert len(ids) == 2 and len(bytes(ids[0])) == 16
        # XMP metadata, unfiltered (6.6.2.1), identifying PDF/A-3b (6.6.4).
        assert "/Filter" not in root.Metadata.stream_dict
        xmp = pdf.open_metadata()
        assert xmp[f"{PDFA_ID}part"] == "3"
        assert xmp[f"{PDFA_ID}conformance"] == "B"
        # The document information dictionary and the XMP agree (6.6.2.3.1).
        info = pdf.docinfo
        assert xmp[f"{DC}title"] == str(info.Title)
        assert xmp[f"{DC}creator"] == [str(info.Author)]
        assert xmp[f"{DC}description"] == str(info.Subject)
        assert xmp[f"{XMP}CreatorTool"] == str(info.Creator)
        assert xmp[f"{PDF}Producer"] == str(info.Producer)
        if "/Keywords" in info:
            assert xmp[f"{PDF}Keywords"] == str(info.Keywords)
        created = datetime.fromisoformat(xmp[f"{XMP}CreateDate"])
        assert created == pdf_date(str(info.CreationDate))
        assert datetime.fromisoformat(xmp[f"{XMP}ModifyDate"]) == pdf_date(str(info.ModDate))
        # An sRGB output intent with an embedded ICC profile (6.2.3).
        (intent,) = root.OutputIntents
        assert intent.S == "/GTS_PDFA1"
        profile = intent.DestOutputProfile
        assert int(profile.N) == 3
        icc = ImageCms.ImageCmsProfile(io.BytesIO(profile.read_bytes()))
        assert icc.profile.xcolor_space.strip() == "RGB"
        # Symbolic TrueType fonts (reportlab's subsets): no /Encoding, and the font
        # program's cmap has exactly one encoding or the (3,0) one (6.2.11.6).
        for page in pdf.pages:
            for font in page.Resources.Font.values():
                descriptor = font.FontDescriptor
                assert font.Subtype == "/TrueType" and "/FontFile2" in descriptor
                if int(descriptor.Flags) & 4:
                    assert "/Encoding" not in font
                    subtables = cmap_subtables(descriptor.FontFile2.read_bytes())
                    assert len(subtables) == 1 or (3, 0) in subtables, subtables
        # Colours: DeviceRGB (rg, RG) or DeviceGray (g, G) only, which the RGB output
        # intent covers; no DeviceCMYK, no other colour space set (6.2.4.3).
        for page in pdf.pages:
            ops = {str(op) for _, op in pikepdf.parse_content_stream(page)}
            assert not ops & {"k", "K", "cs", "CS", "sc", "SC", "scn", "SCN"}, ops
        # No JavaScript (6.6.1), no encryption (6.1.3, above).
        assert "/JavaScript" not in root.get("/Names", {})
        assert "/OpenAction" not in root
        for page in pdf.pages:
            for annot in page.get("/Annots", []):
                assert annot.get("/A", {}).get("/S") != "/JavaScript"
        # Embedded files are associated files (6.8): in the catalog's /AF, with their
        # relationship, MIME type and modification date.
        names = root.Names.EmbeddedFiles.Names
        specs = {str(names[i]): names[i + 1] for i in range(0, len(names), 2)}
        assert {spec.objgen for spec in root.AF} == {spec.objgen for spec in specs.values()}
        relationships = {name: str(spec.AFRelationship) for name, spec in specs.items()}
        assert relationships["evidence.json"] == "/Data"
        if "message.eml" in relationships:
            assert relationships["message.eml"] == "/Source"
        for spec in specs.values():
            stream = spec.EF.F
            assert str(stream.Subtype).startswith("/")
            pdf_date(str(stream.Params.ModDate))
            assert int(stream.Params.Size) == len(stream.read_bytes())
    fonts = subprocess.run(
        ["pdffonts", "-"], input=data, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    rows = fonts.splitlines()[2:]
    assert rows
    for row in rows:
        emb = row.split()[-5]
        assert emb == "yes", row  # every font embedded, no standard-14 font (6.2.11.4)


def test_signed_certificate_is_pdfa3b(signed: bytes) -> None:
    assert_pdfa3b(signed)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_document_is_pdfa3b(kind: str, signer: DocumentSigner) -> None:
    # Certificates of every outcome, the addendum and the reception certificate.
    assert_pdfa3b(render_and_sign(evidence_for(kind), b"x", signer))


def test_signature_is_an_allowed_form_field(signed: bytes) -> None:
    # The signature is an incremental update: a signature field (ISO 19005-3 section
    # 6.4.3 allows them) whose widget is printable and not hidden.
    with open_pdf(signed) as pdf:
        fields = pdf.Root.AcroForm.Fields
        assert fields
        for field in fields:
            assert field.FT == "/Sig"
            flags = int(field.get("/F", 4))
            assert flags & 4 and not flags & (1 | 2 | 32)  # Print; not Invisible/Hidden/NoView
            # An appearance stream, or none for a widget with an empty rectangle
            # (ISO 19005-3 section 6.3.3).
            appearance = field.get("/AP", {}).get("/N")
            if appearance is None:
                x1, y1, x2, y2 = (float(v) for v in field.Rect)
                assert x1 == x2 and y1 == y2
            else:
                assert appearance.Subtype == "/Form"
            # No string longer than 32767 bytes (6.1.13): the CMS in /Contents neither.
            assert len(bytes(field.V.Contents)) <= 32767
        assert "/NeedAppearances" not in pdf.Root.AcroForm


def test_signature_keeps_the_header_version(signed: bytes) -> None:
    # The signature adds no second header and no newer version.
    assert signed.count(b"%PDF-") == 1
    with open_pdf(signed) as pdf:
        assert str(pdf.pdf_version) == "1.7"


def test_characters_no_shipped_font_has_are_marked_not_set_in_unembedded_fonts(
    signer: DocumentSigner,
) -> None:
    # Chinese, Japanese, Korean and emoji: DejaVu lacks them, and PDF/A allows no font
    # that is not embedded (the Adobe CJK fonts never are). They show as U+FFFD with
    # the exact characters as replacement text (/ActualText): extracted text is exact.
    subject = "会議 회의 📎 Straße"
    data = render_and_sign(make_evidence(subject=subject, text=subject), EML, signer)
    assert_pdfa3b(data)
    with open_pdf(data) as pdf:
        content = pdf.pages[0].Contents.read_bytes()
    assert b"/ActualText <FEFF" + "会議".encode("utf-16-be").hex().upper().encode() in content
    text = subprocess.run(
        ["pdftotext", "-", "-"], input=data, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    assert subject in " ".join(text.split())
