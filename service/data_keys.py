"""Per-account data keys (envelope encryption) so an erasure request can crypto-shred an account.

Each account (by its keyed pseudonym, never its id) gets a random AES-256-GCM data key, stored
wrapped by the master key in ``account_data_keys``. Personal data (phone numbers, TOTP secrets,
personal data inside audit entries) is encrypted under that key. ``destroy`` overwrites the wrapped
key: from then on every ciphertext of the account is noise, while the audit log, which holds only
those ciphertexts, still verifies byte for byte.

Nothing is cached in memory: a key destroyed by one worker must stop decrypting in every worker.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    String,
    Table,
    bindparam,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from service.errors import CiphertextInvalid, DataKeyDestroyed
from service.keystore import KeyStore
from service.persistence import metadata

__all__ = ["CiphertextInvalid", "DataKeyDestroyed", "DataKeys", "account_data_keys"]

TOKEN_FORMAT = 1
KEY_VERSION = 1
NONCE_BYTES = 12
_HEADER = struct.Struct(">BI")  # token format, key version
_MIN_TOKEN = _HEADER.size + NONCE_BYTES + 16  # + the GCM tag
_PSEUDONYM_CONTEXT = b"fairunlock/subject/v1\x00"
# No account's id: dto.AccountId admits no NUL.
_DECOY_ACCOUNT_ID = "\x00decoy"

account_data_keys = Table(
    "account_data_keys",
    metadata,
    # HMAC-SHA256 pseudonym, hex: the table never holds an account id in clear.
    Column("subject", String(64), primary_key=True),
    Column("key_version", Integer, nullable=False),
    # nonce || AES-GCM(master key, data key); NULL once destroyed.
    Column("wrapped_key", LargeBinary(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True), nullable=True),
)


class DataKeys:
    """Pseudonyms and envelope encryption; build once per process from the key store."""

    __slots__ = ("_decoys", "_master", "_pseudonym_mac")

    def __init__(self, master_key: bytes, pseudonym_key: bytes) -> None:
        if len(master_key) != 32 or len(pseudonym_key) != 32:
            raise ValueError("master and pseudonym keys must be 32 bytes")
        self._master = AESGCM(master_key)
        # HMAC-SHA256 keyed once; each digest starts from a copy (2.7 against 3.8 µs for
        # hmac.new, which sets the key up again each time: twice per decision).
        self._pseudonym_mac = hmac.new(pseudonym_key, digestmod=hashlib.sha256)
        # Per field (its aad): a data key row and a ciphertext for an account no one has
        # (decrypt_decoy), made on first use.
        self._decoys: dict[bytes, tuple[KeyRow, str]] = {}

    @classmethod
    def from_keystore(cls, keystore: KeyStore) -> DataKeys:
        return cls(keystore.master_key, keystore.pseudonym_key)

    def __repr__(self) -> str:
        return "DataKeys(<keys hidden>)"

    def pseudonymize(self, account_id: str) -> str:
        """A stable keyed pseudonym (64 hex chars): joinable by us, meaningless without the key."""
        mac = self._pseudonym_mac.copy()
        mac.update(_PSEUDONYM_CONTEXT + account_id.encode())
        return mac.hexdigest()

    def blind_index(self, purpose: str, value: str) -> str:
        """A keyed digest of a value for equality look-ups (e.g. a phone number) in one purpose."""
        mac = self._pseudonym_mac.copy()
        mac.update(b"fairunlock/blind/" + purpose.encode() + b"\x00" + value.encode())
        return mac.hexdigest()

    def face_subject(self, provider: str, subject: str) -> str:
        """The reference a face provider knows an account by (its ``subject``, the keyed
        pseudonym): the provider enrols the person's face under it and names it in each
        attestation's ``sub``, so one person's match cannot stand for another account. Keyed per
        provider, so providers cannot join their references with each other's or with ours."""
        return self.blind_index("face_subject/" + provider, subject)

    async def encrypt(
        self, conn: AsyncConnection, account_id: str, plaintext: bytes, aad: bytes = b""
    ) -> str:
        """Encrypt under the account's data key (created on first use) in the caller's transaction.

        ``aad`` names what the value is (e.g. b"phone"), so a token cannot be replayed as another
        field. The result is base64url text: format, key version, nonce, ciphertext and tag.
        """
        subject = self.pseudonymize(account_id)
        version, data_key = await self._key(conn, subject, create=True)
        return _seal(subject, version, data_key, plaintext, aad)

    async def encrypt_with(
        self,
        conn: AsyncConnection,
        account_id: str,
        key_row: KeyRow | None,
        plaintext: bytes,
        aad: bytes = b"",
    ) -> str:
        """``encrypt`` with the key row the caller already read in this transaction (see
        ``KEY_COLUMNS``): one statement fewer on a hot path. No row yet: creates the key."""
        if key_row is None:
            return await self.encrypt(conn, account_id, plaintext, aad)
        subject = self.pseudonymize(account_id)
        version, data_key = self._unwrap(subject, key_row)
        return _seal(subject, version, data_key, plaintext, aad)

    async def decrypt(
        self, conn: AsyncConnection, account_id: str, token: str, aad: bytes = b""
    ) -> bytes:
        return await self.decrypt_with(conn, account_id, None, token, aad)

    async def decrypt_with(
        self,
        conn: AsyncConnection,
        account_id: str,
        key_row: KeyRow | None,
        token: str,
        aad: bytes = b"",
    ) -> bytes:
        """``decrypt`` with the key row the caller already read in this transaction (see
        ``KEY_COLUMNS``); None reads it."""
        subject = self.pseudonymize(account_id)
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise CiphertextInvalid("The ciphertext is not base64url.") from None
        if len(raw) < _MIN_TOKEN:
            raise CiphertextInvalid("The ciphertext is too short.")
        token_format, version = _HEADER.unpack_from(raw)
        if token_format != TOKEN_FORMAT:
            raise CiphertextInvalid(f"Unknown ciphertext format {token_format}.")
        if key_row is None:
            stored_version, data_key = await self._key(conn, subject, create=False)
        else:
            stored_version, data_key = self._unwrap(subject, key_row)
        if version != stored_version:
            raise CiphertextInvalid("The ciphertext was made with another key version.")
        nonce = raw[_HEADER.size : _HEADER.size + NONCE_BYTES]
        try:
            return AESGCM(data_key).decrypt(
                nonce, raw[_HEADER.size + NONCE_BYTES :], _aad(subject, version, aad)
            )
        except InvalidTag:
            raise CiphertextInvalid(
                "The ciphertext does not belong to this account or field, or was altered."
            ) from None

    async def decrypt_decoy(
        self, conn: AsyncConnection, aad: bytes, plaintext: Callable[[], bytes]
    ) -> bytes:
        """``decrypt_with``'s work (the pseudonym, the unwrapping, the decryption) on a data key
        and a ciphertext of ``plaintext()`` made once per field for an account no one has: for
        a check that must cost the same without an account's data as with it (an unknown
        account's TOTP proof, OWASP-FP-1/2). Reads and writes nothing."""
        decoy = self._decoys.get(aad)
        if decoy is None:
            subject = self.pseudonymize(_DECOY_ACCOUNT_ID)
            data_key = AESGCM.generate_key(bit_length=256)
            nonce = secrets.token_bytes(NONCE_BYTES)
            wrapped = nonce + self._master.encrypt(nonce, data_key, _wrap_aad(subject, KEY_VERSION))
            token = _seal(subject, KEY_VERSION, data_key, plaintext(), aad)
            decoy = self._decoys[aad] = ((KEY_VERSION, wrapped, None), token)
        key_row, token = decoy
        return await self.decrypt_with(conn, _DECOY_ACCOUNT_ID, key_row, token, aad)

    async def destroy(self, conn: AsyncConnection, account_id: str) -> bool:
        """Crypto-shred the account's key in the caller's transaction; True if a key existed.

        Also leaves a tombstone when no key existed, so later encrypts for the subject are refused
        (an erased account must not quietly collect new personal data).
        """
        subject = self.pseudonymize(account_id)
        now = datetime.now(UTC)
        result = await conn.execute(
            update(account_data_keys)
            .where(
                account_data_keys.c.subject == subject,
                account_data_keys.c.destroyed_at.is_(None),
            )
            .values(wrapped_key=None, destroyed_at=now)
        )
        if result.rowcount:
            return True
        await conn.execute(
            _insert_ignore(conn).values(
                subject=subject,
                key_version=KEY_VERSION,
                wrapped_key=None,
                created_at=now,
                destroyed_at=now,
            )
        )
        return False

    async def is_destroyed(self, conn: AsyncConnection, account_id: str) -> bool:
        row = (await conn.execute(_SELECT_KEY, {"subject": self.pseudonymize(account_id)})).first()
        return row is not None and row.destroyed_at is not None

    async def _key(self, conn: AsyncConnection, subject: str, *, create: bool) -> tuple[int, bytes]:
        row = await _select_key(conn, subject)
        if row is None:
            if not create:
                raise DataKeyDestroyed(
                    "No data key exists for this account: nothing was encrypted for it."
                )
            data_key = AESGCM.generate_key(bit_length=256)
            nonce = secrets.token_bytes(NONCE_BYTES)
            wrapped = nonce + self._master.encrypt(nonce, data_key, _wrap_aad(subject, KEY_VERSION))
            # Two requests may create the first key at once: the loser keeps the winner's key.
            await conn.execute(
                _insert_ignore(conn).values(
                    subject=subject,
                    key_version=KEY_VERSION,
                    wrapped_key=wrapped,
                    created_at=datetime.now(UTC),
                )
            )
            row = await _select_key(conn, subject)
            assert row is not None  # inserted or found in the same transaction
        return self._unwrap(subject, row)

    def _unwrap(self, subject: str, row: KeyRow) -> tuple[int, bytes]:
        version, wrapped_key, destroyed_at = row
        if destroyed_at is not None or wrapped_key is None:
            raise DataKeyDestroyed("This account's data key was destroyed (erasure).")
        try:
            data_key = self._master.decrypt(
                wrapped_key[:NONCE_BYTES], wrapped_key[NONCE_BYTES:], _wrap_aad(subject, version)
            )
        except InvalidTag:
            # Not a user error: the master key is wrong or the row was tampered with.
            raise RuntimeError(
                "cannot unwrap a data key: wrong master key or altered account_data_keys row"
            ) from None
        return int(version), data_key


# (key_version, wrapped_key, destroyed_at): what another query may read along, for encrypt_with.
KeyRow = tuple[int, bytes | None, datetime | None]
KEY_COLUMNS = (
    account_data_keys.c.key_version,
    account_data_keys.c.wrapped_key,
    account_data_keys.c.destroyed_at,
)
# Built once: the statement costs more to construct than to run (hot in every decision).
_SELECT_KEY = select(*KEY_COLUMNS).where(account_data_keys.c.subject == bindparam("subject"))


def _seal(subject: str, version: int, data_key: bytes, plaintext: bytes, aad: bytes) -> str:
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, _aad(subject, version, aad))
    raw = _HEADER.pack(TOKEN_FORMAT, version) + nonce + ciphertext
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


async def _select_key(
    conn: AsyncConnection, subject: str
) -> tuple[int, bytes | None, datetime | None] | None:
    row = (await conn.execute(_SELECT_KEY, {"subject": subject})).first()
    if row is None:
        return None
    return int(row.key_version), row.wrapped_key, row.destroyed_at


def _insert_ignore(conn: AsyncConnection) -> postgresql.Insert | sqlite.Insert:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(account_data_keys).on_conflict_do_nothing(
            index_elements=["subject"]
        )
    return sqlite.insert(account_data_keys).on_conflict_do_nothing(index_elements=["subject"])


def _aad(subject: str, version: int, aad: bytes) -> bytes:
    # Bind the ciphertext to its account and key version as well as to the caller's context.
    return b"fairunlock/data/v1\x00" + subject.encode() + struct.pack(">I", version) + aad


def _wrap_aad(subject: str, version: int) -> bytes:
    return b"fairunlock/wrap/v1\x00" + subject.encode() + struct.pack(">I", version)
