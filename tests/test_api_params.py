"""The JSON API's reading of parameters (relay.web.api.params): whatever a client sends,
a value or a 400 sentence, never another exception; dates and domains round-trip."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict

from relay.web.api import params
from relay.web.api.problems import Problem


@given(st.text(max_size=40))
def test_any_text_is_a_moment_or_a_400(text: str) -> None:
    try:
        value = params.moment("since", text)
    except Problem as problem:
        assert problem.status == 400 and problem.detail.startswith("The parameter 'since'")
    else:
        assert isinstance(value, float)


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=st.builds(
            timezone, st.integers(-23 * 60, 23 * 60).map(lambda m: timedelta(minutes=m))
        ),
    )
)
def test_an_rfc3339_date_time_reads_back_as_its_moment(moment: datetime) -> None:
    moment = moment.replace(microsecond=0)
    text = moment.isoformat().replace("+00:00", "Z")
    assert params.moment("since", text) == moment.timestamp()


def test_a_date_is_its_start_or_with_end_of_day_the_next_start() -> None:
    start = datetime(2026, 11, 30, tzinfo=UTC).timestamp()
    assert params.moment("since", "2026-11-30") == start
    assert params.moment("until", "2026-11-30", end_of_day=True) == start + 86400
    for impossible in ("2026-02-30", "2026-11-01T25:00:00Z"):
        with pytest.raises(Problem, match="is not a date that exists"):
            params.moment("since", impossible)
    with pytest.raises(Problem, match="is not a date that exists"):
        params.moment("until", "9999-12-31", end_of_day=True)


@given(st.text(max_size=80))
def test_any_text_is_a_domain_or_a_400_and_a_domain_reads_as_itself(text: str) -> None:
    try:
        name = params.domain(text)
    except Problem as problem:
        assert problem.status == 400 and problem.detail.endswith(
            "is not a domain name such as acme.example."
        )
    else:
        assert name == name.lower() and name.isascii() and params.domain(name) == name


def test_internationalised_domains_are_kept_as_a_labels() -> None:
    assert params.domain("Bücher.Example.") == "xn--bcher-kva.example"
    for bad in ("localhost", "-x.example", "a..example", "x" * 64 + ".example", ""):
        with pytest.raises(Problem):
            params.domain(bad)


def test_unknown_and_repeated_parameters_are_refused() -> None:
    allowed = frozenset({"since", "limit"})
    assert params.query(MultiDict([("since", "2026-11-01")]), allowed) == {"since": "2026-11-01"}
    with pytest.raises(Problem, match="Unknown parameter 'sinse'"):
        params.query(MultiDict([("sinse", "2026-11-01")]), allowed)
    with pytest.raises(Problem, match="'limit' is given more than once"):
        params.query(MultiDict([("limit", "1"), ("limit", "2")]), allowed)


@given(st.text(max_size=12))
def test_any_text_is_a_number_in_range_or_a_400(text: str) -> None:
    try:
        value = params.number("limit", text, 1, 200)
    except Problem as problem:
        assert problem.status == 400
    else:
        assert 1 <= value <= 200 and int(text) == value
