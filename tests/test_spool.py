"""The spool's durability: coalesced directory fsyncs still cover every caller's rename."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from relay.queue import spool


def test_every_caller_is_covered_by_an_fsync_that_began_after_its_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = itertools.count()
    lock = threading.Lock()
    syncs: list[tuple[int, int]] = []
    real_fsync = spool._fsync_dir_now

    def slow_fsync(path: Path) -> None:  # the real fsync, made slow enough to overlap
        with lock:
            began = next(clock)
        time.sleep(0.01)
        real_fsync(path)
        with lock:
            syncs.append((began, next(clock)))

    monkeypatch.setattr(spool, "_fsync_dir_now", slow_fsync)
    calls: list[tuple[int, int]] = []

    def caller() -> None:
        with lock:
            called = next(clock)
        spool.fsync_dir(tmp_path)
        with lock:
            calls.append((called, next(clock)))

    threads = [threading.Thread(target=caller) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 40
    for called, returned in calls:
        assert any(called < began and ended < returned for began, ended in syncs)
    assert len(syncs) < 40  # they were shared


def test_an_fsync_error_reaches_the_callers_it_covered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool, "_fsync_dir_now", broken)
    with pytest.raises(OSError, match="Input/output error"):
        spool.fsync_dir(tmp_path / "x")
    with pytest.raises(OSError):
        spool.write_durably(tmp_path / "file", b"data")


def test_write_durably_writes_the_bytes(tmp_path: Path) -> None:
    spool.write_durably(tmp_path / "f", b"hello")
    assert (tmp_path / "f").read_bytes() == b"hello"
    assert not list(tmp_path.glob(".*.tmp"))
