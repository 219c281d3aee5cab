"""Private keys that never leave a PKCS#11 token (an HSM, a smart card; OASIS PKCS#11 v2.40).

:class:`Pkcs11Key` is an RSA private key as ``cryptography`` types it, whose signatures
the token makes: the document signing key (:mod:`certifier.signing`, ``[signing]
pkcs11_key_label``) and the development timestamp authority's key (:mod:`certifier.tsa`,
``[signing] pkcs11_tsa_key_label``) can both live there. python-pkcs11 is imported on
first use, so a process that only names a key loads nothing more than ``cryptography``.

Errors: one :class:`ValueError` sentence naming the key (no module, no token of that
label, a wrong PIN, no key or several keys of that label, an operation the key does
not do).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["Pkcs11Key"]


# Open Pkcs11Key sessions by process and module: the library is finalised when
# the last one closes.
_open_keys: dict[tuple[int, str], int] = {}


class Pkcs11Key(rsa.RSAPrivateKey):
    """An RSA private key that never leaves a PKCS#11 token (OASIS PKCS#11 v2.40).

    It is what :class:`~certifier.cms.CmsSigner` calls: ``sign`` with PKCS#1 v1.5 and
    SHA-256 (mechanism CKM_SHA256_RSA_PKCS), ``public_key`` from the private key
    object's public attributes (CKA_MODULUS, CKA_PUBLIC_EXPONENT). Nothing can export
    it. The session is opened on first use in the process that uses it and reopened
    if that process is a fork of the one that opened it: PKCS#11 v2.40 gives
    a child no use of its parent's sessions, so a session is never inherited (the
    certificate workers are spawned and build their own, ARCHITECTURE.md).

    Errors (no module, no token of that label, wrong PIN, no key of that label) raise
    :class:`ValueError` with one line naming the key.
    """

    def __init__(self, module: Path, token: str, label: str, pin: str) -> None:
        self.module, self.token, self.label = Path(module), token, label
        self._pin = pin
        self.name = f"PKCS#11 key {label!r} in token {token!r} ({module})"
        self._pid: int | None = None
        self._lib: object = None
        self._session: object = None
        self._key: object = None
        self._public: rsa.RSAPublicKey | None = None
        self._lock = threading.Lock()

    def _private(self) -> object:
        if self._pid != os.getpid():
            self._open()
        return self._key

    def _open(self) -> None:
        import pkcs11
        from pkcs11 import Attribute, KeyType, ObjectClass

        try:
            lib = pkcs11.lib(str(self.module))
            try:
                token = lib.get_token(token_label=self.token)
            except pkcs11.NoSuchToken:
                raise ValueError(f"{self.name}: no token labelled {self.token!r}") from None
            try:
                session = token.open(user_pin=self._pin)
            except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid):
                raise ValueError(f"{self.name}: the PIN is wrong") from None
            except pkcs11.UserAlreadyLoggedIn:
                # Login is per application, not per session (PKCS#11 v2.40):
                # another key of this process logged in already.
                session = token.open()
            try:
                key = session.get_key(
                    object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.RSA, label=self.label
                )
            except pkcs11.NoSuchKey:
                session.close()
                raise ValueError(
                    f"{self.name}: the token holds no RSA private key of that label"
                ) from None
            except pkcs11.MultipleObjectsReturned:
                session.close()
                raise ValueError(f"{self.name}: several keys have that label") from None
            modulus = int.from_bytes(key[Attribute.MODULUS], "big")
            exponent = int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big")
        except pkcs11.PKCS11Error as err:
            raise ValueError(f"{self.name}: {err.__class__.__name__} {err}".rstrip()) from None
        self._lib, self._session, self._key = lib, session, key
        _open_keys[self._slot] = _open_keys.get(self._slot, 0) + 1
        self._public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        self._pid = os.getpid()

    @property
    def _slot(self) -> tuple[int, str]:
        return (os.getpid(), str(self.module))

    def close(self) -> None:
        """Close the session and finalise the library in this process (C_Finalize)."""
        if self._pid == os.getpid() and self._session is not None:
            self._session.close()  # type: ignore[attr-defined]
            left = _open_keys[self._slot] = _open_keys[self._slot] - 1
            if not left:
                # C_Finalize ends every session of this process with that module.
                self._lib.finalize()  # type: ignore[attr-defined]
        self._pid = self._lib = self._session = self._key = None

    def sign(self, data: bytes, padding: object, algorithm: object) -> bytes:  # type: ignore[override]
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding as padding_
        from pkcs11 import Mechanism

        if not isinstance(padding, padding_.PKCS1v15) or not isinstance(algorithm, hashes.SHA256):
            raise ValueError(f"{self.name}: only PKCS#1 v1.5 with SHA-256 is supported")
        # One operation at a time per session: a PKCS#11 session is not for two threads at once.
        with self._lock:
            key = self._private()
            return bytes(key.sign(bytes(data), mechanism=Mechanism.SHA256_RSA_PKCS))  # type: ignore[attr-defined]

    def public_key(self) -> rsa.RSAPublicKey:
        self._private()
        if self._public is None:  # not reached: _private() opens the key or raises
            raise ValueError(f"{self.name}: not open")
        return self._public

    @property
    def key_size(self) -> int:
        return self.public_key().key_size

    def decrypt(self, ciphertext: bytes, padding: object) -> bytes:  # type: ignore[override]
        raise ValueError(f"{self.name}: signs only")

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise ValueError(f"{self.name}: the key cannot leave the token")

    def private_bytes(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        raise ValueError(f"{self.name}: the key cannot leave the token")

    def __copy__(self) -> Pkcs11Key:
        return self

    def __deepcopy__(self, memo: dict) -> Pkcs11Key:
        return self
