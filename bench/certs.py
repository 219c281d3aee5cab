"""Micro-benchmark: CPU milliseconds per signed certificate, split by stage.

    .venv/bin/python bench/certs.py [--rounds N] [--profile]

One process, the development PKI in a temporary directory, the in-process RFC 3161
TSA, and the sample messages in tests/fixtures/*.eml (the headline figures) and the
4 KB and 100 KB plain-text messages bench/run.py sends, with evidence shaped like
``relay.certify.evidence_record.build_evidence`` makes it (two recipients, a timeline, the
evidence log). Each certificate goes through the same steps as
:func:`certifier.pipeline.certify`, timed separately with ``time.process_time`` (CPU,
not wall clock):

- ``parse``: :func:`certifier.pipeline.complete_evidence` (MIME summary, hashes);
- ``render``: :func:`certifier.document.render_certificate` (reportlab, attachments);
- ``sign``: :meth:`certifier.signing.DocumentSigner.sign` minus the timestamp;
- ``timestamp``: the timestamp authority answering the signer's request;
- ``lta``: :meth:`certifier.lta.Archiver.archive`, what makes the signed PDF PAdES
  B-LTA (the DSS with the chains and CRL, then a document timestamp, its TSA included).

Figures are medians over the rounds (other work on a shared machine slows some rounds
down). ``--profile`` prints the top of a cProfile of the whole loop. Nothing asserts
on time; the budget (<= 20 ms CPU per certificate) is printed next to the total.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import message as bench_message  # noqa: E402

from certifier import pipeline  # noqa: E402
from certifier.document import render_certificate  # noqa: E402
from certifier.pki import ensure_dev_pki  # noqa: E402
from certifier.pool import SigningSettings, build_archiver, build_signer  # noqa: E402

BUDGET_MS = 20.0


def evidence_for(eml: bytes, n: int) -> dict[str, Any]:
    """Evidence as the queue manager hands it to the certifier (before the summary)."""
    sha = hashlib.sha256(eml).hexdigest()
    qid = f"4F2A1B3C{n:02X}"
    t = "2026-11-23T10:00:0{}.123Z"
    tls = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    return {
        "format": "certifica-evidence/1",
        "kind": "sending",
        "certificate_id": f"CF-6F1C2A9E0B7D4E{n:02X}",
        "queue_id": qid,
        "issued_at": t.format(5),
        "gateway": {
            "hostname": "certifica.localhost",
            "domain": "certifica.localhost",
            "software": "Certifica 0.1.0",
        },
        "sender": {
            "envelope_from": "alice@example.com",
            "header_from": None,
            "authenticated_user": "alice@example.com",
            "client_ip": "192.0.2.10",
            "client_helo": "laptop.example.com",
            "tls": tls,
            "method": "submission",
        },
        "message": {"sha256": sha, "size": len(eml), "summary_pending": True},
        "recipients": [
            {
                "address": "bob@example.org",
                "status": "delivered",
                "time": t.format(2),
                "mx_host": "mx1.example.org",
                "ip": "198.51.100.25",
                "port": 25,
                "reply": {"code": 250, "enhanced": "2.0.0", "text": "Ok: queued as 4XyZ12"},
                "remote_qid": "4XyZ12",
                "tls": tls,
                "attempts": 1,
                "delivered_sha256": hashlib.sha256(b"delivered" + eml).hexdigest(),
                "note": None,
            },
            {
                "address": "carol@example.net",
                "status": "failed",
                "time": t.format(3),
                "mx_host": "mx.example.net",
                "ip": "203.0.113.7",
                "port": 25,
                "reply": {"code": 550, "enhanced": "5.1.1", "text": "User unknown"},
                "remote_qid": None,
                "tls": None,
                "attempts": 1,
                "delivered_sha256": None,
                "note": None,
            },
        ],
        "tracking": None,
        "timeline": [
            {
                "time": t.format(0),
                "event": "SubmissionAcceptance",
                "recipient": None,
                "detail": f"accepted as {qid}, {len(eml)} bytes, sha256 {sha}",
            },
            {
                "time": t.format(2),
                "event": "RelayToNonERDS",
                "recipient": "bob@example.org",
                "detail": "250 2.0.0 Ok: queued as 4XyZ12 via mx1.example.org[198.51.100.25]:25",
            },
            {
                "time": t.format(3),
                "event": "RelayToNonERDSFailure",
                "recipient": "carol@example.net",
                "detail": "550 5.1.1 User unknown via mx.example.net[203.0.113.7]:25",
            },
        ],
        "evidence_log": {
            "head": "c3" * 32,
            "entries": [
                {"seq": 1, "event": "SubmissionAcceptance", "hash": "a1" * 32},
                {"seq": 2, "event": "RelayToNonERDS", "hash": "b2" * 32},
                {"seq": 3, "event": "RelayToNonERDSFailure", "hash": "c3" * 32},
            ],
        },
    }


class _TimedTSA:
    """Adds up the CPU time the signer spends in its timestamp authority."""

    def __init__(self, signer: Any) -> None:
        self.seconds = 0.0
        tsa = signer.timestamper
        # The in-process authority's direct entry point, or the RFC 3161 request one.
        for name in ("timestamp_token", "request_tsa_response"):
            if hasattr(tsa, name):
                setattr(tsa, name, self._timed(getattr(tsa, name)))

    def _timed(self, inner: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - t0

        return timed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="passes over the messages")
    parser.add_argument("--profile", action="store_true", help="print a cProfile summary")
    args = parser.parse_args()

    fixtures = [
        (p.name, p.read_bytes())
        for p in sorted((ROOT / "tests" / "fixtures").glob("*.eml"))
        if not p.name.startswith("dsn_")
    ]
    # What bench/run.py sends through the gateway: plain text of 4 KB and 100 KB.
    plain = [
        (f"bench plain {size // 1024} KB", bench_message(size, 1, "certifica@certifica.localhost"))
        for size in (4 * 1024, 100 * 1024)
    ]
    messages = fixtures + plain
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.process_time()
        pki = ensure_dev_pki(Path(tmp) / "keys", "certifica.localhost")
        t1 = time.process_time()
        settings = SigningSettings.from_pki(pki)
        signer = build_signer(settings)
        archiver = build_archiver(settings, signer)
        assert archiver is not None
        tsa = _TimedTSA(signer)
        # Warm up as a pool worker does (fonts, caches), outside the measurement.
        for _, eml in messages:
            archiver.archive(
                signer.sign(
                    render_certificate(pipeline.complete_evidence(evidence_for(eml, 0), eml), eml)
                )
            )
        t2 = time.process_time()
        print(
            f"setup: dev PKI {1000 * (t1 - t0):.0f} ms, signer + warm-up "
            f"{1000 * (t2 - t1):.0f} ms CPU ({len(messages)} messages)"
        )

        profiler = cProfile.Profile() if args.profile else None
        stages = ("parse", "render", "sign", "timestamp", "lta")
        # Seconds per message, stage and round; the figures are medians over the rounds,
        # since other work on a shared machine slows some rounds down.
        per_message = {name: {k: [] for k in stages} for name, _ in messages}
        sizes = dict.fromkeys(per_message, 0)
        if profiler:
            profiler.enable()
        for r in range(args.rounds):
            for i, (name, eml) in enumerate(messages):
                evidence = evidence_for(eml, r * len(messages) + i)
                tsa.seconds = 0.0
                a = time.process_time()
                completed = pipeline.complete_evidence(evidence, eml)
                b = time.process_time()
                pdf = render_certificate(completed, eml)
                c = time.process_time()
                signed = signer.sign(pdf)
                d = time.process_time()
                stamped = tsa.seconds
                signed = archiver.archive(signed)
                e = time.process_time()
                row = per_message[name]
                row["parse"].append(b - a)
                row["render"].append(c - b)
                row["sign"].append(d - c - stamped)
                row["timestamp"].append(stamped)
                row["lta"].append(e - d)
                sizes[name] = len(signed)
        if profiler:
            profiler.disable()

    med = {
        name: {k: 1000 * statistics.median(v) for k, v in row.items()}
        for name, row in per_message.items()
    }
    per = {k: statistics.mean(med[n][k] for n, _ in fixtures) for k in stages}
    total = sum(per.values())
    print(
        f"{len(fixtures)} non-DSN fixtures, {args.rounds} rounds, "
        f"{sum(sizes[n] for n, _ in fixtures) / len(fixtures) / 1024:.0f} KiB each signed; "
        "ms CPU per certificate (median of the rounds, mean over the messages):\n"
        + "".join(f"  {k:<10} {v:7.2f}\n" for k, v in per.items())
        + f"  {'total':<10} {total:7.2f}   (budget {BUDGET_MS:.0f} ms: "
        + ("holds" if total <= BUDGET_MS else "FAILS")
        + f"; {1000 / total:.0f} certificates/s per core)"
    )
    print("by message, ms CPU per certificate (median):")
    for name, eml in messages:
        row = med[name]
        ms = sum(row.values())
        print(
            f"  {name:<30} {len(eml) / 1024:6.1f} KiB  render {row['render']:6.2f}  "
            f"sign+timestamp {row['sign'] + row['timestamp']:5.2f}  lta {row['lta']:6.2f}  "
            f"total {ms:6.2f}" + ("" if ms <= BUDGET_MS else "  over budget")
        )
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
