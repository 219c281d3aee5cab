"""What Certifica reads from an invoice: the :class:`Invoice` every format's reader returns,
the :class:`InvoiceSettings` of ``[invoices]`` (README, "Invoices"), and the words for a
signature's verdict (docs/invoices.md, "How signatures are judged").

An invoice is never refused: what could not be read is said in ``problem``, in plain
words, and the attachment is certified like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["Invoice", "InvoiceSettings", "Signature", "SignatureStatus"]

DEFAULT_MAX_SIZE = 10_000_000
"""Bytes of one attachment examined (``[invoices] max_size``); larger ones are not read."""


@dataclass(frozen=True)
class InvoiceSettings:
    """``[invoices]``: whether attachments are read as invoices, up to how many bytes,
    and the PEM file of trusted roots for Facturae signatures (None: signers are not
    checked against a trust list). Picklable: it travels to the certificate workers."""

    enabled: bool = True
    max_size: int = DEFAULT_MAX_SIZE
    trust_roots: Path | None = None


class SignatureStatus(StrEnum):
    """What an invoice's own electronic signature was found to be (evidence codes; the
    certificate says them in words)."""

    TRUSTED = "trusted"  # intact, and the signer's certificate chains to a trust root
    UNTRUSTED = "untrusted"  # intact, but the signer does not chain to a trust root
    INTACT = "intact"  # intact; no trust list configured, the signer not checked
    NOT_INTACT = "not-intact"  # the signature does not match the signed content
    UNCHECKED = "unchecked"  # present but could not be checked (says why)
    PRESENT = "present"  # present and not examined (a CAdES envelope, .p7m)


@dataclass(frozen=True)
class Signature:
    """An invoice's signature: its verdict, the signer's name as its certificate gives
    it, and why when it is not intact or could not be checked (plain English)."""

    status: SignatureStatus
    kind: str  # "XAdES", "CAdES"
    signer: str | None = None
    detail: str | None = None

    def as_evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": str(self.status), "kind": self.kind}
        if self.signer is not None:
            out["signer"] = self.signer
        if self.detail is not None:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True)
class Invoice:
    """The essentials of one invoice. Every field but ``format`` may be empty when the
    file does not hold it or could not be read; ``problem`` then says what went wrong.
    ``total`` is a decimal number as text (``"1234.56"``), ``issue_date`` ISO 8601
    (``"2026-12-03"``) when the file's date could be read, else as written."""

    format: str  # "Facturae", "Factur-X", "ZUGFeRD", "CII", "UBL", "FatturaPA"
    version: str = ""
    kind: str = "invoice"  # "invoice" or "credit note"
    number: str = ""
    issue_date: str = ""
    seller_name: str = ""
    seller_tax_id: str = ""
    buyer_name: str = ""
    buyer_tax_id: str = ""
    total: str = ""
    currency: str = ""
    problem: str | None = None
    signature: Signature | None = None

    def as_evidence(self) -> dict[str, Any]:
        """The ``invoice`` object of an attachment in ``evidence.json``."""
        out: dict[str, Any] = {
            "format": self.format,
            "version": self.version,
            "kind": self.kind,
            "number": self.number,
            "issue_date": self.issue_date,
            "seller": {"name": self.seller_name, "tax_id": self.seller_tax_id},
            "buyer": {"name": self.buyer_name, "tax_id": self.buyer_tax_id},
            "total": self.total,
            "currency": self.currency,
        }
        if self.problem is not None:
            out["problem"] = self.problem
        if self.signature is not None:
            out["signature"] = self.signature.as_evidence()
        return out
