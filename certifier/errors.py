"""The exceptions of Certifica: one tree, one root, each branch mapped to what a person sees.

Every exception class the project defines derives from :class:`CertificaError`, so
``except CertificaError`` catches exactly "an error Certifica raised on purpose", and
anything else reaching the last line of defence is a bug (or a library's error that
nobody mapped yet). Where a class must also stay a standard one for its callers
(``ValueError``, ``FileNotFoundError``), it derives from both.

The tree (``relay.x.Name`` is where a leaf is defined)::

    CertificaError
    ├── TemporaryError            trying again later may work: an SMTP client gets 4xx,
    │   │                         a recipient stays deferred
    │   ├── relay.smtpd.authn.TemporaryAuthError       451 4.7.x (DNS failed for SPF,
    │   │                                              DKIM or DMARC)
    │   ├── relay.smtpd.authn._Temporary               one lookup; becomes the above
    │   ├── relay.delivery.routing._Temporary          one lookup; becomes RouteError
    │   ├── relay.queue.jobs.JobLost                   the process running a job ended;
    │   │                                              the scheduler hands it out again
    │   ├── relay.process.dispatch.ChildFailed         a job failed in its child (logged
    │   │                                              there); its message is looked at
    │   │                                              again on the next scan
    │   ├── relay.web.verification.Unavailable         the verification page's records
    │   │                                              cannot be read now: 503, Retry-After
    │   ├── relay.certify.renewal.RenewalBusy          another renewal pass holds the
    │   │                                              archive: the next one renews
    │   └── relay.queue.archive.ArchiveBusy            the archive lock stayed taken: the
    │                                                  deletion or renewal is tried again
    ├── PermanentError            trying again will not work: an SMTP client gets 5xx,
    │   │                         a recipient fails
    │   ├── relay.smtpd.protocol.DataRefused           5xx to DATA (``reply``)
    │   ├── relay.smtpd.protocol.BadCommandLine        5xx to a command line (``reply``)
    │   │   ├── BareLineFeed
    │   │   ├── ControlCharacter
    │   │   └── NotUtf8
    │   ├── relay.certify.dsn.ParameterError           501 to a DSN parameter (ValueError)
    │   ├── certifier.lta.NoValidationData             a renewal cannot add the signer's
    │   │                                              validation data (ValueError)
    │   ├── relay.delivery.dkim_keys.UnsignableMessage header not RFC 5322 (ValueError)
    │   ├── relay.queue.credits.InsufficientCredits    the organisation's balance is short:
    │   │                                              550 5.7.1 to a certified message
    │   │                                              (452 4.7.1 when_short = "defer"); a
    │   │                                              document waits for credits
    │   └── relay.webhooks.guard.ForbiddenAddress      a webhook's host is or resolves to
    │                                                  a non-public address (no SSRF)
    ├── DeliveryError             an outbound attempt ended without a reply for every
    │   │                         recipient; ``temporary`` / ``next_hop`` / ``code`` say
    │   │                         whether the recipients are deferred or failed
    │   ├── relay.delivery.routing.RouteError          no hop to try (``temporary``)
    │   └── relay.delivery.client._Broken              the session with one hop broke
    ├── ConfigError               the configuration is wrong; the sentence names the key
    │                             and the file; ``certifica`` exits 2 and starts nothing
    ├── StartupError              the gateway cannot start (a port, a key file); exit 2
    ├── StorageError              the queue could not be read or written
    │   ├── relay.queue.spool.SpoolFileMissing         (FileNotFoundError)
    │   └── relay.queue.errors.StoreError              451 to a client: nothing was
    │       └── StoreFullError                         accepted, try again later (452
    │                                                  when the disk is full)
    ├── UsageError                a command line the CLI cannot carry out; one line, exit 2
    │   │                         (relay.cli.common.UserError)
    │   ├── relay.process.status.NotRunning            ``certifica status``: the gateway
    │   │                                              is not running; exit 1
    │   ├── relay.queue.erasure.StillActive            ``certifica erase``: messages about
    │   │                                              the address are still queued
    │   ├── relay.queue.backup.BackupError             ``certifica backup``/``restore``
    │   │                                              refused; names the path
    │   ├── relay.queue.holds.NoSuchCertificate        ``certifica evidence legal-hold``:
    │   │                                              no such certificate (LookupError)
    │   ├── relay.web.api.problems.Problem             a JSON API request refused: its
    │   │                                              status and plain detail are the
    │   │                                              answer (RFC 9457)
    │   └── relay.queue.credits.NoSuchOrganisation     ``certifica credits``, ``org``: no
    │                                                  organisation with that code (LookupError)
    ├── VerificationError         a certificate cannot be verified; ``certifica verify``
    │   │                         says why in one sentence and exits 1
    │   └── certifier.verify._Failed                   a check that makes the following
    │                                                  ones meaningless
    └── relay.queue.retention.Stopped                  not an error: a retention pass was
                                                       asked to stop between two batches

Not in the tree: errors of the libraries we call, which keep their own classes where
they are caught: pyHanko's ``TimestampRequestError`` (the timestamp authority failed:
temporary, the certificate is made later) and ``SigningError`` (a PDF that cannot be
signed), ``OSError`` from sockets and files, ``sqlite3.Error``.

An exception's text reaches an SMTP client only where its class is written for one (the
``reply`` of DataRefused and BadCommandLine, the sentence of ParameterError); otherwise
the client gets the reply named by the code that caught it (``relay.smtpd.replies``).
"""

from __future__ import annotations

__all__ = [
    "CertificaError",
    "ConfigError",
    "DeliveryError",
    "PermanentError",
    "StartupError",
    "StorageError",
    "TemporaryError",
    "UsageError",
    "VerificationError",
]


class CertificaError(Exception):
    """The root: an error Certifica raises on purpose, worded for the person who sees it."""


class TemporaryError(CertificaError):
    """Trying again later may work: 4xx to an SMTP client, the recipient stays deferred."""


class PermanentError(CertificaError):
    """Trying again will not work: 5xx to an SMTP client, the recipient fails."""


class DeliveryError(CertificaError):
    """An outbound delivery attempt that did not end in a reply for every recipient."""


class ConfigError(CertificaError):
    """A configuration problem, worded for the operator: it names the key and the file."""


class StartupError(CertificaError):
    """The gateway cannot start; the message names what to fix (a port, a key file)."""


class StorageError(CertificaError):
    """The queue (spool files or database) could not be read or written."""


class UsageError(CertificaError):
    """A command the CLI cannot carry out as given; printed as one line."""


class VerificationError(CertificaError):
    """A certificate failed a check that makes the following checks meaningless."""
