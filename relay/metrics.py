"""The gateway's Prometheus metrics: what each stage counts, named once.

Every process of the gateway (ARCHITECTURE.md §1) counts what it does in these metrics;
the admin process (:mod:`relay.process.admin`) serves them all as one exposition on
``[listen] admin`` ``/metrics`` (README, "Metrics and health"). Several processes count
the same metric, so the values live in prometheus-client's *multiprocess mode*: each
process writes its own memory-mapped file under ``<state_dir>/run/metrics`` and a scrape
adds them up (:class:`prometheus_client.multiprocess.MultiProcessCollector`). The master
empties that directory when it starts (:func:`enable_multiprocess`) and tells the library
when a child ended (``mark_process_dead``); a restarted child's counters start from its
predecessor's file, which stays, so a counter never goes backwards while the master lives.

Counters are kept where the stage already names the outcome (STYLE: explicit outcomes),
one line each; what the database knows (the queue by state, the oldest deferred
recipient, the last evidence checkpoint) is read when scraped, not counted
(:mod:`relay.process.admin`). Every metric has labels: a labelled metric makes its value
only when first used, after :func:`enable_multiprocess` chose where values live, even in
a module imported before that.

Label values are from short fixed sets (a listener's name, an outcome, a reason class):
never an address, a host or a client's text.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import Counter, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds: an SMTP attempt takes from a few milliseconds (a local MX) to the minutes a
# slow server may use (RFC 5321 §4.5.3.2); a certificate is ~13 ms to render and sign
# with the in-process TSA, seconds with a remote one.
ATTEMPT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
CERTIFICATE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

MESSAGES_ACCEPTED = Counter(
    "certifica_messages_accepted",
    "Messages answered 250 at the end of DATA, by listener",
    ["listener"],
)
SMTP_REFUSALS = Counter(
    "certifica_smtp_refusals",
    "4xx and 5xx replies to MAIL, RCPT and DATA, by listener, command and the reply's "
    "enhanced status class and subject (RFC 3463, e.g. 5.7)",
    ["listener", "command", "reason"],
)
TLS_HANDSHAKE_FAILURES = Counter(
    "certifica_tls_handshake_failures",
    "Inbound TLS handshakes that failed (STARTTLS or implicit TLS), by listener",
    ["listener"],
)
RECIPIENTS_FINAL = Counter(
    "certifica_recipients_final",
    "Recipients that reached a final state through a delivery attempt, by outcome",
    ["outcome"],
)
DELIVERY_ATTEMPTS = Histogram(
    "certifica_delivery_attempt_seconds",
    "Delivery attempts per recipient and how long the SMTP transaction took, by result "
    "(delivered, deferred, failed)",
    ["result"],
    buckets=ATTEMPT_BUCKETS,
)
CERTIFICATES = Histogram(
    "certifica_certificate_seconds",
    "Signed PDFs made (certificates and addenda) and the time to render, sign and "
    "timestamp each, by result (issued, failed)",
    ["result"],
    buckets=CERTIFICATE_BUCKETS,
)
TSA_ERRORS = Counter(
    "certifica_tsa_errors",
    "Timestamp requests that failed, by use (certificate, checkpoint)",
    ["use"],
)
SIGNING_ERRORS = Counter(
    "certifica_signing_errors",
    "Documents that could not be rendered or signed for another reason than the TSA, by use",
    ["use"],
)
TRACKING_HITS = Counter(
    "certifica_tracking_hits",
    "Opens and clicks recorded, by kind and classification (person, automatic)",
    ["kind", "classification"],
)
WEBHOOK_ATTEMPTS = Counter(
    "certifica_webhook_attempts",
    "Webhook POSTs made, by result (delivered: a 2xx; deferred: tried again later; "
    "failed: given up)",
    ["result"],
)
PROCESS_RESTARTS = Counter(
    "certifica_process_restarts",
    "Children the master started again after they ended, by role",
    ["role"],
)


def metrics_dir(state_dir: Path) -> Path:
    """``<state_dir>/run/metrics``: the processes' value files."""
    return state_dir / "run" / "metrics"


def enable_multiprocess(directory: Path) -> None:
    """Make every value from now on live in ``directory``, emptied first (the master,
    before its first fork; the children inherit the setting and the environment).

    prometheus-client picks its value class from ``PROMETHEUS_MULTIPROC_DIR`` when it is
    first imported, and its documentation asks for the variable to be set before the
    program starts; but the modules defining metrics are imported before the master has
    read the configuration that names the state directory. So the class is set here,
    explicitly: metrics already defined made no value yet (they all have labels), so
    every value is made in the directory."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[ENV] = str(directory)
    _values_in_files()


# -- prometheus-client beyond its public API ---------------------------------------------
# Two things the gateway needs that prometheus-client does not offer publicly, written
# against the version pinned in pyproject.toml and used nowhere else. On an upgrade,
# check them against the new version's prometheus_client/values.py and multiprocess.py;
# tests/test_metrics.py checks them with the installed one (and fails on another version).
PINNED_VERSION = "0.26.0"


def _values_in_files() -> None:
    """Make every value created from now on live in ``PROMETHEUS_MULTIPROC_DIR``: the
    library chooses its value class once, at import (``values.ValueClass``)."""
    values.ValueClass = values.MultiProcessValue()


def installed_version() -> str:
    """The version of prometheus-client this process runs."""
    from importlib.metadata import version

    return version("prometheus-client")


class ValueFiles(Collector):
    """A collector (``registry.register(ValueFiles(directory))``) of every process's
    value files in ``directory``, added up as prometheus-client's
    :class:`~prometheus_client.multiprocess.MultiProcessCollector` adds them, but
    leaving out a file still being made: a process that counts for the first time
    creates its file empty, then sizes it, and a scrape in between would fail on it.
    Once sized, a file is always readable (an entry is written before the header counts
    it). The library's collector reads every ``*.db`` file with no such exception."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        files = []
        for path in self.directory.glob("*.db"):
            try:
                if path.stat().st_size >= 8:  # the header: how much of the file is used
                    files.append(str(path))
            except FileNotFoundError:
                continue
        return MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-any-return]


SMTP_LISTENERS = ("submission", "submission_tls", "mx")


def show_zeros(listeners: Iterable[str], roles: Iterable[str]) -> None:
    """Give the series known in advance a value of 0 (the master, once), so that a
    scrape shows ``certifica_tsa_errors_total{use="certificate"} 0`` rather than nothing
    until the first error: an alert on a rate needs the series to exist."""
    smtp = [name for name in listeners if name in SMTP_LISTENERS]
    for name in smtp:
        MESSAGES_ACCEPTED.labels(name)
        TLS_HANDSHAKE_FAILURES.labels(name)
    for outcome in ("delivered", "failed", "bounced"):
        RECIPIENTS_FINAL.labels(outcome)
    for result in ("delivered", "deferred", "failed"):
        DELIVERY_ATTEMPTS.labels(result)
    for result in ("issued", "failed"):
        CERTIFICATES.labels(result)
    for use in ("certificate", "checkpoint"):
        TSA_ERRORS.labels(use)
    SIGNING_ERRORS.labels("certificate")
    for kind in ("open", "click"):
        for classification in ("person", "automatic"):
            TRACKING_HITS.labels(kind, classification)
    for result in ("delivered", "deferred", "failed"):
        WEBHOOK_ATTEMPTS.labels(result)
    for role in roles:
        PROCESS_RESTARTS.labels(role)


def reason_class(reply: str) -> str:
    """The enhanced status code's class and subject of ``reply`` (``5.7`` of
    ``550 5.7.1 ...``, RFC 3463 §3.1); its basic code's first digit and ``x`` when it
    has none."""
    parts = reply.split(" ", 2)
    if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
        return parts[1].rsplit(".", 1)[0]
    return f"{reply[:1]}.x"
