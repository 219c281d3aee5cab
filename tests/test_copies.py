"""Recipes of delivered copies (certifier/copies.py): applying, composing, compacting,
reading them from evidence; a broken recipe is a VerificationError, never another exception."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addendum.inject import inject
from certifier import copies
from certifier.copies import Edit, Recipe
from certifier.errors import VerificationError
from certifier.verify import copies_check
from relay.delivery import client, outbound
from tests import test_tracking_units as units

_BYTES = st.binary(max_size=300)
# No deadline: the machine running the tests is shared; nothing here is about time.
_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
PROPERTY = settings(max_examples=100, deadline=None, database=None, suppress_health_check=_SLOW)
MORE = settings(max_examples=300, deadline=None, database=None, suppress_health_check=_SLOW)


@st.composite
def edited(draw: st.DrawFn, data: bytes | None = None) -> tuple[bytes, list[Edit]]:
    """Some bytes and a valid list of edits on them."""
    if data is None:
        data = draw(_BYTES)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    edits: list[Edit] = []
    pos = 0
    for i in range(0, len(cuts) - 1, 2):
        start, end = max(cuts[i], pos), cuts[i + 1]
        if start > end:
            continue
        edits.append(Edit(start, end - start, draw(st.binary(max_size=20))))
        pos = end
    return data, edits


def _naive(data: bytes, edits: list[Edit]) -> bytes:
    for e in reversed(edits):
        data = data[: e.offset] + e.insert + data[e.offset + e.length :]
    return data


@PROPERTY
@given(edited())
def test_apply_splices_every_edit(case: tuple[bytes, list[Edit]]) -> None:
    data, edits = case
    assert copies.apply(data, edits) == _naive(data, edits)


@MORE
@given(st.data())
def test_two_rewrites_composed_make_the_same_copy(draw: st.DataObject) -> None:
    data, first = draw.draw(edited())
    middle = copies.apply(data, first)
    _, second = draw.draw(edited(middle))
    target = copies.apply(middle, second)
    composed = copies.compose(first, second, len(data))
    assert copies.apply(data, composed) == target
    copies.check(composed, len(data))


@PROPERTY
@given(edited())
def test_compacted_edits_make_the_same_copy_and_hold_no_more(
    case: tuple[bytes, list[Edit]],
) -> None:
    data, edits = case
    small = copies.compact(data, edits)
    assert copies.apply(data, small) == copies.apply(data, edits)

    def size(edits: list[Edit]) -> int:
        return len(json.dumps(Recipe(b"", tuple(edits), ()).to_json()))

    assert size(small) <= size(edits)


@PROPERTY
@given(_BYTES, _BYTES, _BYTES)
def test_a_recipe_round_trips_through_its_evidence_form(
    eml: bytes, prefix_text: bytes, copy: bytes
) -> None:
    prefix = prefix_text.decode("latin-1").encode("latin-1")
    recipe = Recipe(prefix, tuple(copies.diff(eml, copy)), ({"change": "other"},))
    assert copies.rebuild(eml, recipe.to_json()) == prefix + copy
    assert Recipe.from_json(recipe.to_json()) == recipe


_BODY_PIECES = st.sampled_from(
    [b"<p>clause ", b"=\r\n", b"\r\n", b"\n", b"https://example.org/x", b"=3D", b" ", b"a" * 300]
)


@PROPERTY
@given(st.data())
def test_a_long_body_split_by_lines_and_words_rebuilds(draw: st.DataObject) -> None:
    old = b"".join(draw.draw(st.lists(_BODY_PIECES, min_size=20, max_size=200)))
    _, edits = draw.draw(edited(old))
    new = copies.apply(old, edits)
    small = copies.compact(old, [Edit(0, len(old), new)])
    assert copies.apply(old, small) == new
    copies.check(small, len(old))


def test_a_long_reencoded_body_is_recorded_by_the_lines_that_changed() -> None:
    lines = [f"line {i} of a long quoted-printable body=\r\n".encode() for i in range(2000)]
    old = b"".join(lines)
    lines[700] = b"a link that was rewritten=\r\n"
    lines[1500:1501] = [b"two lines\r\n", b"in place of one\r\n"]
    new = b"".join(lines)
    small = copies.compact(old, [Edit(0, len(old), new)])
    assert copies.apply(old, small) == new
    assert sum(len(e.insert) for e in small) < 100


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 400) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@MORE
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "prefix": _JSON,
            "edits": st.lists(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "offset": _JSON,
                        "length": _JSON,
                        "insert": _JSON
                        | st.binary(max_size=9).map(lambda b: base64.b64encode(b).decode()),
                    },
                ),
                max_size=4,
            )
            | _JSON,
            "changes": _JSON,
        },
    )
    | _JSON,
    st.binary(max_size=50),
)
def test_any_recipe_rebuilds_or_says_why(copy: Any, eml: bytes) -> None:
    try:
        copies.rebuild(eml, copy)
    except VerificationError as why:
        assert str(why)


@pytest.mark.parametrize(
    ("copy", "says"),
    [
        ({"prefix": "", "edits": [{"offset": 9, "length": 5, "insert": ""}]}, "beyond"),
        (
            {
                "edits": [
                    {"offset": 4, "length": 1, "insert": ""},
                    {"offset": 2, "length": 1, "insert": ""},
                ]
            },
            "overlaps",
        ),
        ({"edits": [{"offset": 0, "length": 0, "insert": "not base64!"}]}, "base64"),
        ({"prefix": "\u20ac"}, "prefix"),
        ([], "not a JSON object"),
    ],
)
def test_a_recipe_that_does_not_apply_says_why(copy: Any, says: str) -> None:
    with pytest.raises(VerificationError, match=says):
        copies.rebuild(b"0123456789", copy)


def test_every_change_reads_as_a_sentence() -> None:
    assert copies.describe({"change": "link_tracked", "link": 2, "url": "https://e.org/x"}) == (
        "Link 2 (https://e.org/x) was replaced by a tracking link."
    )
    assert copies.describe(
        {"change": "part_reencoded", "part": "the message body", "encoding": "quoted-printable"}
    ) == ("The message body was re-encoded as quoted-printable.")
    for kind in copies.CHANGES:
        assert copies.describe({"change": kind}).endswith(".")


# --- addendum.inject returns the edits it spliced --------------------------------------


def _rebuilt_by_its_edits(raw: bytes) -> None:
    result = inject(raw, units.BASE, units.tok)
    assert copies.apply(raw, result.edits) == result.message
    if result.message == raw:
        assert result.edits == () and not result.pixel and not result.reencoded
    else:
        # Only what changed is held: never the whole message again.
        assert sum(len(e.insert) for e in result.edits) < len(result.message)


@units.PROPERTY
@given(
    pieces=st.lists(units.HTML_PIECES, max_size=60),
    cte=st.sampled_from(["quoted-printable", "base64", "8bit", "7bit", ""]),
    charset=st.sampled_from(["utf-8", "iso-8859-1", "us-ascii", "windows-1252", "bogus", ""]),
)
def test_inject_edits_rebuild_random_html(pieces: list[str], cte: str, charset: str) -> None:
    data = "".join(pieces).encode("utf-8")
    body = {"quoted-printable": units.qp_body, "base64": units.b64_body}.get(cte, lambda d: d)(data)
    headers = "Content-Type: text/html" + (f"; charset={charset}" if charset else "") + "\n"
    if cte:
        headers += f"Content-Transfer-Encoding: {cte}\n"
    _rebuilt_by_its_edits(units.mixed_message(body, headers))


@units.PROPERTY
@given(st.lists(units.MIME_PIECES, max_size=40))
def test_inject_edits_rebuild_mime_shaped_input(pieces: list[str]) -> None:
    _rebuilt_by_its_edits("".join(pieces).encode("utf-8"))


def test_inject_edits_rebuild_the_fixtures() -> None:
    for path in sorted(units.FIXTURES.glob("*.eml")):
        _rebuilt_by_its_edits(path.read_bytes())


def test_inject_names_the_pixel_and_a_part_it_reencoded() -> None:
    raw = (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n\r\n"
        b'<p>\xc3\xa9 <a href="https://example.org/offer">offer</a></p>\r\n'
    )
    result = inject(raw, units.BASE, units.tok)
    assert result.links == ("https://example.org/offer",)
    assert result.pixel
    assert result.reencoded == (("the message body", "quoted-printable"),)
    assert copies.apply(raw, result.edits) == result.message


# --- the delivery agent's recipe (relay/delivery/outbound.py) --------------------------

_LINES = st.lists(st.sampled_from([b"a", b"From: x\r\n", b"\r\n", b"\n", b"\r", b".", b"b c"]))


@PROPERTY
@given(_LINES.map(b"".join))
def test_wire_form_is_what_the_smtp_client_sends_and_hashes(message: bytes) -> None:
    wired, edits = outbound.wire_form(message)
    assert wired == client._crlf(message)
    assert copies.apply(message, edits) == wired
    assert client._crlf(wired) == wired  # the client changes nothing more


@MORE
@given(st.data())
def test_the_recipe_of_each_step_rebuilds_the_wire_copy(draw: st.DataObject) -> None:
    original = draw.draw(_LINES.map(b"".join))
    recipe = outbound.CopyRecipe(original)
    body = original
    for _ in range(draw.draw(st.integers(0, 2))):  # tracking, From rewriting
        _, edits = draw.draw(edited(body))
        body = copies.apply(body, edits)
        recipe.rewritten(edits, {"change": "other"})
    message = body
    for head in draw.draw(st.lists(st.sampled_from([b"Received: x\r\n", b"DKIM-Signature: y\n"]))):
        message = head + message
        recipe.prepended(head)
    wired = recipe.wire(message)
    assert wired == client._crlf(message)
    made = recipe.recipe(wired)
    assert not recipe.broken
    assert copies.rebuild(original, made.to_json()) == wired


def test_a_recipe_that_missed_a_step_records_the_difference() -> None:
    original = b"From: a@example.com\r\n\r\nbody\r\n"
    recipe = outbound.CopyRecipe(original)
    copy = b"Received: x\r\nFrom: b@example.com\r\n\r\nbody\r\n"  # From edit not told
    recipe.prepended(b"Received: x\r\n")
    made = recipe.recipe(recipe.wire(copy))
    assert recipe.broken and made.changes == ({"change": "other"},)
    assert copies.rebuild(original, made) == copy


@pytest.mark.parametrize(
    "header",
    [
        b"From: Alice <a@example.com>\r\nTo: b@example.org\r\n",
        b"To: b@example.org\r\nFrom: A <a@example.com>\r\nFrom: B <b@example.com>\r\n"
        b"Reply-To: c@example.com\r\n",
        b"From: A\r\n <a@example.com>\r\nSubject: folded From",
        b"Subject: no From\r\n",
    ],
)
def test_from_edits_make_the_rewritten_message(header: bytes) -> None:
    raw = header + b"\r\nbody\r\n"
    edits = outbound.from_edits(raw, "Alice", "certifica@gw.example", "Certifica")
    rewritten = outbound.rewrite_from(raw, "Alice", "certifica@gw.example", "Certifica")
    assert copies.apply(raw, edits) == rewritten
    assert (rewritten == raw) == (b"From:" not in header)
    assert rewritten.count(b"From:") == (1 if b"From:" in header else 0)


# --- certifica verify's delivered-copies check (certifier/verify.py) --------------------


def _evidence(eml: bytes, copy: bytes, recipe: Recipe | None, stated: str | None) -> dict[str, Any]:
    return {
        "recipients": [
            {
                "address": "bob@example.org",
                "status": "delivered",
                "delivered_sha256": stated,
                "copy": recipe.to_json() if recipe else None,
            }
        ]
    }


def test_the_check_rebuilds_a_copy_and_names_a_recipient_whose_copy_differs() -> None:
    eml = b"Subject: x\r\n\r\nbody\r\n"
    copy = b"Received: by gw\r\nSubject: x\r\n\r\nbody, edited\r\n"
    recipe = Recipe(b"Received: by gw\r\n", tuple(copies.diff(eml, copy[17:])), ())
    good = hashlib.sha256(copy).hexdigest()
    assert copies_check(_evidence(eml, copy, recipe, good), eml).ok
    wrong = copies_check(_evidence(eml, copy, recipe, "0" * 64), eml)
    assert not wrong.ok and "<bob@example.org>" in wrong.detail and "0" * 64 in wrong.detail
    unstated = copies_check(_evidence(eml, copy, recipe, None), eml)
    assert not unstated.ok and "no delivered SHA-256" in unstated.detail
    lost = copies_check(_evidence(eml, copy, recipe, good), None)
    assert lost.ok and lost.content_not_certified
    nothing = copies_check({"recipients": "not a list"}, eml)
    assert nothing.ok and nothing.detail.startswith("Not recorded")
