"""Service-wide sealing of identifiers that must not rest in clear but are not an account's own
data (e.g. the account id on an unlock request, kept even for accounts we do not know).

The key is derived from the master key with HKDF, so no new secret needs configuring; erasure
removes an account's sealed values row by row (they cannot be crypto-shredded per account).
"""

from __future__ import annotations

import base64
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE = 12


class Sealer:
    __slots__ = ("_aead",)

    def __init__(self, master_key: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"fairunlock/sealer/v1"
        ).derive(master_key)
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Sealer(<key hidden>)"

    def seal(self, plaintext: str, purpose: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plaintext.encode(), purpose)
        return base64.urlsafe_b64encode(sealed).decode("ascii")

    def open(self, token: str, purpose: bytes) -> str:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
        try:
            return self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], purpose).decode()
        except InvalidTag:
            raise ValueError("sealed value altered or sealed for another purpose") from None
