"""Micro-benchmark: CPU milliseconds per signed certificate, by stage and by signing mode.

    .venv/bin/python bench/certs.py [--rounds N] [--profile]

One process, the development PKI in a temporary directory, the in-process RFC 3161
TSA, and the sample messages in tests/fixtures/*.eml (the headline figures) and the
4 KB and 100 KB plain-text messages bench/run.py sends, with evidence shaped like
``relay.certify.evidence_record.build_evidence`` makes it (two recipients, a timeline, an
evidence log of three entries). Each certificate goes through the same steps as
:func:`certifier.pipeline.certify`, timed separately with ``time.process_time`` (CPU,
not wall clock):

- ``parse``: :func:`certifier.pipeline.complete_evidence` (MIME summary, hashes);
- ``etsi``: :meth:`certifier.signing.DocumentSigner.etsi_evidence`, one ETSI EN 319
  522-3 XML document per log entry, each signed XAdES by the signing key;
- ``render``: :func:`certifier.document.render_certificate` (reportlab, attachments);
- ``sign``: :meth:`certifier.signing.DocumentSigner.sign` minus its timestamp;
- ``sig-ts``: the timestamp authority making the signature timestamp's token;
- ``lta``: :meth:`certifier.lta.Archiver.archive` minus its token: the DSS with the
  chains and the CRL, and the document timestamp's revision;
- ``doc-ts``: the timestamp authority making the document timestamp's token.

Four modes, each over the same messages, interleaved round by round:

- ``file key, B-T``: a key file, no DSS and no document timestamp (``lta`` and
  ``doc-ts`` are 0): what certificates cost before PAdES B-LTA;
- ``file key, B-LTA``: the gateway's default (``[evidence] lta_delay = 0``);
- ``SoftHSM2 key, B-LTA``: the signing key in a SoftHSM2 token (``[signing] pkcs11_*``),
  the TSA's key in a file;
- ``SoftHSM2 keys, B-LTA``: the TSA's key in the token too (``pkcs11_tsa_key_label``).

SoftHSM2 runs in this process, so its RSA work is in the CPU figures; a network HSM's
is not (it would show as waiting: compare ``wall``). The HSM modes need Debian's
``softhsm2`` and are left out, with a note, without it.

Figures are medians over the rounds (other work on a shared machine slows some rounds
down), then means over the fixtures. ``cert/s`` is 1000 / the CPU total: certificates
per second on one core. Nothing here passes or fails: the gateway's budget is end to
end (``bench/run.py``, bench/README.md), where a certificate shares the CPU with
delivery and the notice. ``--profile`` prints the top of a cProfile of the whole loop.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime as dt
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadgen import message as bench_message  # noqa: E402

from certifier import pipeline  # noqa: E402
from certifier.document import render_certificate  # noqa: E402
from certifier.hsm import Pkcs11Key  # noqa: E402
from certifier.i18n import Reader  # noqa: E402
from certifier.pki import Pki, ensure_dev_pki, ensure_token_tsa_cert  # noqa: E402
from certifier.pool import SigningSettings, build_archiver, build_signer  # noqa: E402

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN, PIN = "certifica-bench", "4711-0815"
STAGES = ("parse", "etsi", "render", "sign", "sig-ts", "lta", "doc-ts")
DEFAULT_MODE = "file key, B-LTA"


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
        # One log entry per event, every hashed field (certifier.evidence.excerpt_entry):
        # the certificate embeds one signed ETSI EN 319 522-3 document per entry.
        "evidence_log": {
            "format": "certifica-log-excerpt/2",
            "head": "c3" * 32,
            "entries": [
                {
                    "seq": seq,
                    "time": repr(1795428000.123 + seq),  # 2026-11-23T10:00:0x
                    "qid": qid,
                    "recipient": recipient,
                    "event": event,
                    "detail": json.dumps({"code": code}, separators=(",", ":")),
                    "prev": f"{seq - 1:064x}",
                    "hash": f"{seq:064x}",
                    "salt": "5a" * 32,
                }
                for seq, recipient, event, code in (
                    (1, None, "SubmissionAcceptance", 250),
                    (2, "bob@example.org", "RelayToNonERDS", 250),
                    (3, "carol@example.net", "RelayToNonERDSFailure", 550),
                )
            ],
        },
    }


class _TimedTSA:
    """Adds up the CPU time the signer spends in its timestamp authority."""

    def __init__(self, signer: Any) -> None:
        self.seconds = 0.0
        tsa = signer.timestamper
        # The in-process authority's direct entry point (the signature timestamp), and
        # the RFC 3161 request one (the document timestamp, through pyHanko).
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


def softhsm_settings(root: Path, pki: Pki) -> tuple[SigningSettings, SigningSettings]:
    """A SoftHSM2 token in *root* with a signing key and a TSA key made inside it (never
    extractable), certified by the development CA; the settings that sign with the
    first, and with both."""
    import pkcs11
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from pkcs11 import Attribute, KeyType

    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", TOKEN,
         "--pin", PIN, "--so-pin", "12345678"],
        check=True, capture_output=True,
    )  # fmt: skip
    lib = pkcs11.lib(str(SOFTHSM))
    with lib.get_token(token_label=TOKEN).open(user_pin=PIN, rw=True) as session:
        for label in ("seal", "timestamping"):
            session.generate_keypair(
                KeyType.RSA, 2048, label=label, store=True,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )  # fmt: skip
    lib.finalize()

    def public(label: str) -> Any:
        key = Pkcs11Key(SOFTHSM, TOKEN, label, PIN)
        try:
            return key.public_key()
        finally:
            key.close()

    # The signing key's certificate: the development signing certificate's profile.
    ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    template = x509.load_pem_x509_certificate(pki.signing_cert.read_bytes())
    seal = public("seal")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name.from_rfc4514_string("CN=Certifica bench seal (SoftHSM2)"))
        .issuer_name(ca_cert.subject)
        .public_key(seal)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
    )
    for ext in template.extensions:
        if ext.oid == x509.oid.ExtensionOID.SUBJECT_KEY_IDENTIFIER:
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(seal), False)
        else:
            builder = builder.add_extension(ext.value, ext.critical)
    cert_path = root / "seal.pem"
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    signing = dataclasses.replace(
        SigningSettings.from_pki(pki),
        signing_cert=cert_path,
        pkcs11_module=SOFTHSM,
        pkcs11_token=TOKEN,
        pkcs11_key_label="seal",
        pkcs11_pin=PIN,
    )
    both = dataclasses.replace(
        signing,
        tsa_cert=ensure_token_tsa_cert(pki, public("timestamping"), "certifica.localhost"),
        tsa_key=None,
        pkcs11_tsa_key_label="timestamping",
    )
    return signing, both


@dataclass
class Mode:
    """One way of signing, built once, as a pool worker builds it."""

    name: str
    settings: SigningSettings

    def __post_init__(self) -> None:
        self.signer = build_signer(self.settings)
        self.archiver = build_archiver(self.settings, self.signer)
        self.tsa = _TimedTSA(self.signer)

    def certify(self, evidence: dict[str, Any], eml: bytes) -> tuple[dict[str, float], bytes]:
        """One certificate: CPU seconds by stage (and ``wall``), and the PDF."""
        signer, tsa = self.signer, self.tsa
        w = time.perf_counter()
        a = time.process_time()
        completed = pipeline.complete_evidence(evidence, eml)
        completed["seal"] = signer.seal  # as pool.render_and_sign adds it
        b = time.process_time()
        xml = signer.etsi_evidence(completed, eml)
        c = time.process_time()
        pdf = render_certificate(completed, eml, Reader(), xml)
        d = time.process_time()
        tsa.seconds = 0.0
        signed = signer.sign(pdf)
        e = time.process_time()
        signature_stamp, tsa.seconds = tsa.seconds, 0.0
        if self.archiver is not None:
            signed = self.archiver.archive(signed)
        f = time.process_time()
        wall = time.perf_counter() - w
        spent = {
            "parse": b - a,
            "etsi": c - b,
            "render": d - c,
            "sign": e - d - signature_stamp,
            "sig-ts": signature_stamp,
            "lta": f - e - tsa.seconds,
            "doc-ts": tsa.seconds,
            "wall": wall,
        }
        return spent, signed


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
        file_key = SigningSettings.from_pki(pki)
        settings = {
            "file key, B-T": dataclasses.replace(file_key, archive=False),
            DEFAULT_MODE: file_key,
        }
        if SOFTHSM.exists():
            hsm_root = Path(tmp) / "softhsm"
            hsm_root.mkdir()
            settings["SoftHSM2 key, B-LTA"], settings["SoftHSM2 keys, B-LTA"] = softhsm_settings(
                hsm_root, pki
            )
        else:
            print(f"no SoftHSM2 ({SOFTHSM}): the HSM modes are left out (apt-get install softhsm2)")
        modes = [Mode(name, s) for name, s in settings.items()]
        # Warm up as a pool worker does (fonts, caches, the token's sessions), unmeasured.
        for mode in modes:
            for _, eml in messages:
                mode.certify(evidence_for(eml, 0), eml)
        t2 = time.process_time()
        print(
            f"setup: dev PKI {1000 * (t1 - t0):.0f} ms, {len(modes)} signers + warm-up "
            f"{1000 * (t2 - t1):.0f} ms CPU ({len(messages)} messages)"
        )

        profiler = cProfile.Profile() if args.profile else None
        # Seconds per mode, message, stage and round.
        spent = {
            m.name: {name: {k: [] for k in (*STAGES, "wall")} for name, _ in messages}
            for m in modes
        }
        sizes = {m.name: dict.fromkeys(spent[m.name], 0) for m in modes}
        if profiler:
            profiler.enable()
        for r in range(args.rounds):
            for mode in modes:
                for i, (name, eml) in enumerate(messages):
                    one, pdf = mode.certify(evidence_for(eml, r * len(messages) + i), eml)
                    for k, v in one.items():
                        spent[mode.name][name][k].append(v)
                    sizes[mode.name][name] = len(pdf)
        if profiler:
            profiler.disable()

    med = {
        mode: {
            name: {k: 1000 * statistics.median(v) for k, v in row.items()}
            for name, row in rows.items()
        }
        for mode, rows in spent.items()
    }
    mean = {
        mode: {k: statistics.mean(rows[n][k] for n, _ in fixtures) for k in (*STAGES, "wall")}
        for mode, rows in med.items()
    }
    entries = len(evidence_for(b"", 0)["evidence_log"]["entries"])
    print(
        f"{len(fixtures)} non-DSN fixtures, {args.rounds} rounds, {entries} ETSI documents "
        "each; ms CPU per certificate (median of the rounds, mean over the messages); "
        "cert/s: certificates per second on one core (1000 / total); wall: elapsed ms:"
    )
    print(
        f"  {'mode':<22}"
        + "".join(f"{k:>8}" for k in STAGES)
        + f"{'total':>8}{'cert/s':>8}{'wall':>8}  KiB"
    )
    totals = {}
    for mode, row in mean.items():
        total = totals[mode] = sum(row[k] for k in STAGES)
        kib = sum(sizes[mode][n] for n, _ in fixtures) / len(fixtures) / 1024
        print(
            f"  {mode:<22}"
            + "".join(f"{row[k]:8.2f}" for k in STAGES)
            + f"{total:8.2f}{1000 / total:8.0f}{row['wall']:8.2f}  {kib:.0f}"
        )
    lta = mean[DEFAULT_MODE]
    print(
        f"B-LTA over B-T: +{totals[DEFAULT_MODE] - totals['file key, B-T']:.2f} ms "
        f"(DSS and revision {lta['lta']:.2f}, document timestamp token {lta['doc-ts']:.2f}); "
        f"ETSI XML + XAdES: {lta['etsi']:.2f} ms ({lta['etsi'] / entries:.2f} per document)"
    )
    for mode in ("SoftHSM2 key, B-LTA", "SoftHSM2 keys, B-LTA"):
        if mode in totals:
            print(
                f"{mode} over the file key: {totals[mode] - totals[DEFAULT_MODE]:+.2f} ms CPU, "
                f"{mean[mode]['wall'] - lta['wall']:+.2f} ms wall"
            )
    print(
        "No pass or fail here: the budget is end to end, whole process tree (bench/run.py: "
        "<= 18 ms CPU per certified message, >= 90 certificates/s on 2 cores), and a "
        "certificate's share of it is the total above."
    )
    print(f"by message, {DEFAULT_MODE}, ms CPU per certificate (median):")
    for name, eml in messages:
        row = med[DEFAULT_MODE][name]
        print(
            f"  {name:<30} {len(eml) / 1024:6.1f} KiB  etsi {row['etsi']:5.2f}  "
            f"render {row['render']:6.2f}  sign+sig-ts {row['sign'] + row['sig-ts']:5.2f}  "
            f"lta+doc-ts {row['lta'] + row['doc-ts']:6.2f}  total {sum(row[k] for k in STAGES):6.2f}"
        )
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
