"""`make run` as a newcomer uses it: the gateway in a terminal, stopped with Ctrl-C.

Ctrl-C signals the terminal's whole process group, the certificate workers included;
the gateway must stop cleanly and print no traceback from any of its processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import CERTIFICA, write_config


def test_ctrl_c_stops_the_gateway_and_its_workers_without_a_traceback(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {})
    listen = tmp_path / "state" / "listen.json"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [CERTIFICA, "-c", str(cfg), "serve"], stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while not listen.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(1.0)  # the certificate workers are up and idle, as at a terminal
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert "certifica/master: stopped" in text, text
