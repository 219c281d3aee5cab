"""``certifica evidence export CERT-ID DIR``: a certificate's events as signed ETSI EN
319 522-3 XML evidence (:mod:`certifier.etsi`), one file per event.

The certificate is the one the gateway kept when it issued it (``state_dir/certificates/
<CERT-ID>.pdf``); its ``evidence.json`` and ``message.eml`` are read from the PDF, so
the XML says exactly what the certificate says. Each file is signed (XAdES) with the
key and certificate that sign the PDFs (``[signing]``, else the development PKI).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from relay.cli.common import EXIT_OK, UserError, config_of, state_dir
from relay.queue.ids import CERTIFICATE_ID

if TYPE_CHECKING:
    from certifier.hsm import Pkcs11Key


def cmd_evidence_export(args: argparse.Namespace) -> int:
    """Write ``DIR/evidence/NNN-Event.xml`` for every event of a kept certificate."""
    from certifier.etsi import etsi_evidence_files
    from certifier.verify import embedded_evidence, embedded_message
    from relay.process.gateway import state_paths

    cfg = config_of(args)
    state_dir(cfg)  # as its owner, like every command that reads the state directory
    cert_id = str(args.certificate).upper()
    if not CERTIFICATE_ID.fullmatch(cert_id):
        raise UserError(f"{args.certificate!r} is not a certificate id (like CF-1CD0C29858F87AD3)")
    path = state_paths(cfg)["certificates"] / f"{cert_id}.pdf"
    try:
        pdf = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"no certificate {cert_id} kept on this gateway ({path})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    evidence = embedded_evidence(pdf)
    if evidence is None:
        raise UserError(f"{path}: embeds no readable evidence.json")
    key, cert, password = _signing_key(args)
    try:
        files = etsi_evidence_files(
            evidence, embedded_message(pdf), key, cert, key_password=password
        )
    except (TypeError, ValueError) as err:
        raise UserError(f"the signing key cannot sign the XML evidence: {err}") from None
    finally:
        if not isinstance(key, bytes):
            key.close()  # a key in a PKCS#11 token: its session and the library
    target = Path(args.dir)
    written = 0
    try:
        for name, xml in files:
            out = target / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(xml)
            written += 1
    except OSError as err:
        raise UserError(f"{target}: cannot be written ({err.strerror})") from None
    print(f"{written} signed evidence file(s) of {cert_id} written to {target / 'evidence'}")
    return EXIT_OK


def _signing_key(args: argparse.Namespace) -> tuple[bytes | Pkcs11Key, bytes, bytes | None]:
    """The key (PEM, or one that signs in its PKCS#11 token), PEM certificate and key
    password that sign the PDFs."""
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        pkcs12,
    )

    from certifier.pki import ensure_dev_pki
    from relay.process.gateway import signing_settings, state_paths

    cfg = config_of(args)
    settings = signing_settings(cfg, ensure_dev_pki(state_paths(cfg)["keys"], cfg.gateway.hostname))
    try:
        if settings.pkcs11_module is not None:
            return settings.pkcs11_key(), settings.signing_cert.read_bytes(), None
        if settings.pkcs12 is not None:
            key, cert, _ = pkcs12.load_key_and_certificates(
                settings.pkcs12.read_bytes(), settings.password
            )
            if key is None or cert is None:
                raise UserError(f"{settings.pkcs12}: holds no key and certificate")
            # In memory only: signxml takes the key as an object or unencrypted PEM.
            pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            return pem, cert.public_bytes(Encoding.PEM), None
        return (
            settings.signing_key.read_bytes(),
            settings.signing_cert.read_bytes(),
            settings.password,
        )
    except OSError as err:
        raise UserError(f"the signing key cannot be read: {err}") from None
    except ValueError as err:
        raise UserError(f"the signing key cannot be read ({err})") from None


def register(esub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` to the ``certifica evidence`` actions."""
    p = esub.add_parser(
        "export",
        help="a certificate's events as signed ETSI EN 319 522-3 XML",
        description="Write, for every event of a certificate this gateway issued, one "
        "ETSI EN 319 522-3 Evidence document signed with XAdES (DIR/evidence/"
        "001-SubmissionAcceptance.xml, ...), from the evidence the certificate embeds.",
    )
    p.add_argument("certificate", metavar="CERT-ID", help="the certificate's id (CF-...)")
    p.add_argument("dir", metavar="DIR", help="where to write the evidence/ files")
    p.set_defaults(func=cmd_evidence_export)
