"""Benchmark: SMS submitted per second through the gateway's ESME client to the test SMSC.

    .venv/bin/python bench/sms.py [--count N] [--windows 1,10,50] [--segments 1]

The test SMSC (tests/smsc.py, smpp34's codec) runs in a process of its own on a
loopback port; this process runs :class:`relay.sms.smpp.EsmeClient` and submits
``--count`` texts of ``--segments`` GSM parts each (to one destination, every part a
``submit_sm`` asking for a receipt) with each submit window, all at once, so the window
alone limits how many wait for their ``submit_sm_resp``. A row gives submit_sm per
second (wall clock, from the first submit to the last response) and texts per second.
Every part must be accepted, or the row says how many were not. Nothing asserts on time;
a real SMSC's throttling (often 10 to 100 per second per bind) is far below these
figures, which measure the client's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.sms.encoding import EncodedSms, encode_sms  # noqa: E402
from relay.sms.smpp import EsmeClient, Outcome, SmscSettings, sender_address  # noqa: E402
from tests.smsc import TestSmsc  # noqa: E402


async def serve_smsc() -> None:
    """The SMSC process: print the port, serve until stdin closes."""
    async with TestSmsc() as smsc:
        smsc.received = _Forgetful()  # keep memory flat over long runs
        print(smsc.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


class _Forgetful(list):  # type: ignore[type-arg]
    """A ``received`` list that records nothing (the benchmark checks the responses)."""

    def append(self, item: object) -> None:
        pass


async def measure(port: int, count: int, window: int, segments: int) -> tuple[float, int]:
    text = "Su cita del jueves a las 10:00 queda confirmada. " * 40
    sms = encode_sms(text[: 153 * segments if segments > 1 else 160], max_segments=255,
                     reference=1)  # fmt: skip
    assert isinstance(sms, EncodedSms) and sms.segments == segments
    settings = SmscSettings("127.0.0.1", port, "esme", "secret", submit_window=window)
    client = EsmeClient(settings)
    task = asyncio.create_task(client.run())
    await asyncio.wait_for(client.bound.wait(), 10)
    sender = sender_address("ACME")
    start = time.perf_counter()
    results = await asyncio.gather(
        *(client.submit_encoded("34600111222", sender, sms) for _ in range(count))
    )
    elapsed = time.perf_counter() - start
    await client.stop()
    await task
    refused = sum(1 for parts in results for r in parts if r.outcome is not Outcome.ACCEPTED)
    return elapsed, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="texts per row")
    parser.add_argument("--windows", default="1,10,50", help="submit windows, comma-separated")
    parser.add_argument("--segments", type=int, default=1, help="GSM parts per text")
    parser.add_argument("--smsc", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smsc:
        asyncio.run(serve_smsc())
        return
    smsc = subprocess.Popen(
        [sys.executable, __file__, "--smsc"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert smsc.stdout is not None
        port = int(smsc.stdout.readline())
        print(f"{'window':>6} {'texts':>6} {'parts':>6} {'submit_sm/s':>12} {'texts/s':>9}")
        for window in (int(w) for w in args.windows.split(",")):
            elapsed, refused = asyncio.run(measure(port, args.count, window, args.segments))
            parts = args.count * args.segments
            note = f"  ({refused} parts not accepted)" if refused else ""
            print(
                f"{window:>6} {args.count:>6} {parts:>6} {parts / elapsed:>12.0f} "
                f"{args.count / elapsed:>9.0f}{note}"
            )
    finally:
        if smsc.stdin is not None:
            smsc.stdin.close()
        smsc.wait(10)


if __name__ == "__main__":
    main()
