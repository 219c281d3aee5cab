"""Micro-benchmark: CPU milliseconds per message in each in-process stage of certified mail.

    .venv/bin/python bench/stages.py [--rounds N] [--repeat N] [--profile STAGE]
    make bench-stages

One process, no sockets, no database: each stage is the library call the gateway makes,
timed with ``time.process_time`` (CPU, not wall clock) on the 4 KB and 100 KB plain-text
messages bench/run.py sends (``bench/loadgen.py``), the development PKI in a temporary
directory and the in-process RFC 3161 TSA. A figure is the median over the rounds of the
mean over ``--repeat`` calls (a shared machine slows some rounds down); the column ``min``
is the fastest round, the steadiest figure to compare two versions of the code with.

The stages, in the order a certified message meets them:

- ``smtpd.check``: :func:`relay.smtpd.protocol.check_data` and ``unstuff`` on the DATA
  (the rest of acceptance is sockets, TLS and the database: ``make bench PROFILE=1``);
- ``outbound``: the copy that leaves for the recipient, :func:`relay.delivery.outbound`
  header fields and the DKIM signature (:func:`relay.delivery.dkim_keys.sign`);
- ``notice.build`` / ``notice.dkim``: the "being processed" notice
  (:mod:`relay.certify.notices`) and its signature;
- ``cert.summarise``, ``cert.render``, ``cert.sign``, ``cert.timestamp``: the certificate
  (:func:`certifier.pipeline.certify`): MIME summary and hashes, reportlab, the CMS
  signature and incremental update, the RFC 3161 token (as in ``bench/certs.py``);
- ``certmail.build`` / ``certmail.dkim``: the mail that carries the signed PDF back to the
  sender, and its signature (its body is the base64 PDF: ~90 KB to hash).

``--profile STAGE`` (a name above, or a prefix such as ``cert``) prints the top of a
cProfile of that stage. Nothing asserts on time.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from certs import _TimedTSA, evidence_for  # noqa: E402
from loadgen import message as bench_message  # noqa: E402

from certifier import pipeline  # noqa: E402
from certifier.document import render_certificate  # noqa: E402
from certifier.pki import ensure_dev_pki  # noqa: E402
from certifier.pool import SigningSettings, build_signer  # noqa: E402
from relay.certify import notices  # noqa: E402
from relay.delivery import outbound  # noqa: E402
from relay.delivery.dkim_keys import DkimKeyring, sign  # noqa: E402
from relay.smtpd.protocol import check_data, unstuff  # noqa: E402

GATEWAY = "certifica.localhost"
CERTIFICATION_ADDRESS = f"certifica@{GATEWAY}"


def stages(keys_dir: Path, size: int) -> list[tuple[str, Callable[[], Any], _TimedTSA | None]]:
    """(name, one call of the stage, TSA timer) for a message of ``size`` bytes."""
    eml = bench_message(size, 1, CERTIFICATION_ADDRESS)
    stuffed = eml  # the bench's text has no line starting with a dot
    pki = ensure_dev_pki(keys_dir, GATEWAY)
    signer = build_signer(SigningSettings.from_pki(pki))
    tsa = _TimedTSA(signer)
    keyring = DkimKeyring(keys_dir)
    keyring.ensure_gateway_key(GATEWAY)
    keys = outbound.signing_keys(keyring, "example.com", GATEWAY)
    sha = hashlib.sha256(eml).hexdigest()

    def outgoing() -> bytes:
        head = b"Received: from laptop.example.com by certifica.localhost; now\r\n"
        head += outbound.submission_fields(eml, "4F2A1B3C00", 1.8e9, GATEWAY)
        raw = eml
        if outbound.needs_rewrite(keys, "example.com"):
            raw = outbound.rewrite_from(
                eml, outbound.display_name(eml) or "alice", CERTIFICATION_ADDRESS, GATEWAY
            )
        return sign(head + raw, keys)

    def notice() -> bytes:
        return notices.build_notice(
            gateway_name=GATEWAY,
            from_address=CERTIFICATION_ADDRESS,
            hostname=GATEWAY,
            to="alice@example.com",
            qid="4F2A1B3C00",
            accepted_at="2026-11-23T10:00:05Z",
            sha256=sha,
            recipients=["bob@example.org", CERTIFICATION_ADDRESS],
            original=notices.original_headers(eml),
        )

    evidence = evidence_for(eml, 0)
    completed = pipeline.complete_evidence(evidence, eml)
    unsigned = render_certificate(completed, eml)
    pdf = signer.sign(unsigned)

    def certificate_mail() -> bytes:
        return notices.build_certificate_mail(
            gateway_name=GATEWAY,
            from_address=CERTIFICATION_ADDRESS,
            hostname=GATEWAY,
            to="alice@example.com",
            qid="4F2A1B3C00",
            cert_id="CF-6F1C2A9E0B7D4E00",
            sha256=sha,
            recipients=[
                {"address": "bob@example.org", "status": "delivered", "reply": "250 2.0.0 Ok"}
            ],
            original=notices.original_headers(eml),
            pdf=pdf,
        )

    notice_mail, cert_mail = notice(), certificate_mail()
    gateway_keys = outbound.signing_keys(keyring, GATEWAY, GATEWAY)
    return [
        ("smtpd.check", lambda: (check_data(stuffed, 64 * 1024, False), unstuff(stuffed)), None),
        ("outbound", outgoing, None),
        ("notice.build", notice, None),
        ("notice.dkim", lambda: sign(notice_mail, gateway_keys), None),
        ("cert.summarise", lambda: pipeline.complete_evidence(evidence, eml), None),
        ("cert.render", lambda: render_certificate(completed, eml), None),
        ("cert.sign", lambda: signer.sign(unsigned), tsa),
        ("certmail.build", certificate_mail, None),
        ("certmail.dkim", lambda: sign(cert_mail, gateway_keys), None),
    ]


def measure(
    call: Callable[[], Any], tsa: _TimedTSA | None, rounds: int, repeat: int
) -> dict[str, list[float]]:
    """Milliseconds of CPU per call, per round; the TSA's share apart when timed."""
    out: dict[str, list[float]] = {"self": [], "tsa": []}
    call()  # warm up (caches, fonts), outside the measurement
    for _ in range(rounds):
        if tsa is not None:
            tsa.seconds = 0.0
        t0 = time.process_time()
        for _ in range(repeat):
            call()
        spent = time.process_time() - t0
        tsa_spent = tsa.seconds if tsa is not None else 0.0
        out["self"].append(1000 * (spent - tsa_spent) / repeat)
        out["tsa"].append(1000 * tsa_spent / repeat)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per stage (median)")
    parser.add_argument("--repeat", type=int, default=20, help="calls per round")
    parser.add_argument("--profile", metavar="STAGE", help="cProfile the stages named so")
    args = parser.parse_args()

    rows: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (4 * 1024, 100 * 1024):
            for name, call, tsa in stages(Path(tmp) / "keys", size):
                result = measure(call, tsa, args.rounds, args.repeat)
                label = "cert.sign" if tsa is not None else name
                rows.append((label, size, statistics.median(result["self"]), min(result["self"])))
                if tsa is not None:
                    rows.append(
                        (
                            "cert.timestamp",
                            size,
                            statistics.median(result["tsa"]),
                            min(result["tsa"]),
                        )
                    )
                if args.profile and name.startswith(args.profile) and size == 4 * 1024:
                    profiler = cProfile.Profile()
                    profiler.enable()
                    for _ in range(args.repeat * args.rounds):
                        call()
                    profiler.disable()
                    print(f"--- cProfile of {name}, 4 KB, {args.repeat * args.rounds} calls")
                    stats = pstats.Stats(profiler)
                    stats.sort_stats("cumulative").print_stats(25)
                    stats.sort_stats("tottime").print_stats(25)

    print(
        f"ms CPU per message and stage (median of {args.rounds} rounds of {args.repeat} "
        "calls; min = fastest round)"
    )
    print(f"  {'stage':<16} {'4 KB':>7} {'(min)':>7} {'100 KB':>8} {'(min)':>7}")
    by_name: dict[str, dict[int, tuple[float, float]]] = {}
    for name, size, med, low in rows:
        by_name.setdefault(name, {})[size] = (med, low)
    totals = {4096: [0.0, 0.0], 102400: [0.0, 0.0]}
    for name, sizes in by_name.items():
        (m4, l4), (m100, l100) = sizes[4096], sizes[102400]
        print(f"  {name:<16} {m4:7.2f} {l4:7.2f} {m100:8.2f} {l100:7.2f}")
        for size, (med, low) in sizes.items():
            totals[size][0] += med
            totals[size][1] += low
    print(
        f"  {'total':<16} {totals[4096][0]:7.2f} {totals[4096][1]:7.2f} "
        f"{totals[102400][0]:8.2f} {totals[102400][1]:7.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
