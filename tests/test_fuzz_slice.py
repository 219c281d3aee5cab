"""A fixed slice of the fuzz campaign (tests/fuzz_smtp.py) in every test run.

The same sessions every time (seed and session numbers fixed), against a gateway of
its own; `make fuzz` runs the open-ended campaign. Any finding fails the test, and the
failure message names the session that replays it:
``python -m tests.fuzz_smtp --seed 12 --session N``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz_smtp import campaign, write_findings

SEED = 12
SESSIONS = 300  # about 15 s of sessions on two cores, plus the queue draining


@pytest.mark.timeout(300)
def test_a_fixed_slice_of_the_fuzz_campaign_finds_nothing(tmp_path: Path) -> None:
    result = campaign(
        tmp_path, SEED, seconds=60.0, sessions=SESSIONS, workers=2, drain_timeout=120.0
    )
    write_findings(result, tmp_path / "findings.json")  # every finding, with its transcript
    print(result.summary())
    assert result.stats.sessions >= 100, result.summary()  # the slice ran, not just started
    assert result.stats.accepted > 0, result.summary()
    assert not result.findings, f"{result.summary()}\nall of them: {tmp_path / 'findings.json'}"
