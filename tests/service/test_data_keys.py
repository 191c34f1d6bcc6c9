"""Per-account data keys: envelope encryption, pseudonyms, crypto-shredding (PIPL-47, GDPR-17)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.data_keys import (
    CiphertextInvalid,
    DataKeyDestroyed,
    DataKeys,
    KeyRow,
    account_data_keys,
)
from service.db import create_engine
from service.persistence import metadata

T = TypeVar("T")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def with_engine(url: str, body: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, tables=[account_data_keys])
            return await body(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def new_keys() -> DataKeys:
    return DataKeys(secrets.token_bytes(32), secrets.token_bytes(32))


def test_encrypt_round_trips_and_stores_only_a_wrapped_key_under_a_pseudonym(db_url: str) -> None:
    keys = new_keys()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            token = await keys.encrypt(conn, "acct-1024", b"+8613812345678", b"phone")
            again = await keys.encrypt(conn, "acct-1024", b"+8613812345678", b"phone")
        assert token != again  # a fresh nonce each time
        assert "8613812345678" not in token
        async with engine.connect() as conn:
            assert await keys.decrypt(conn, "acct-1024", token, b"phone") == b"+8613812345678"
            rows = (await conn.execute(select(account_data_keys))).all()
        assert len(rows) == 1  # one key per account, reused
        assert rows[0].subject == keys.pseudonymize("acct-1024")
        assert "acct-1024" not in rows[0].subject
        assert rows[0].wrapped_key is not None
        assert len(rows[0].wrapped_key) == 12 + 32 + 16

    with_engine(db_url, body)


def test_a_decoy_decryption_does_a_real_ones_work_and_touches_no_row(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OWASP-FP-1/2: an unknown account's proof decrypts a decoy made once per field, through
    the same unwrap and AES-GCM decryption a known account's takes, and writes no key."""
    keys = new_keys()
    made: list[bytes] = []
    unwrapped: list[str] = []
    unwrap = DataKeys._unwrap

    def counting_unwrap(self: DataKeys, subject: str, row: KeyRow) -> tuple[int, bytes]:
        unwrapped.append(subject)
        return unwrap(self, subject, row)

    monkeypatch.setattr(DataKeys, "_unwrap", counting_unwrap)

    def plaintext() -> bytes:
        made.append(secrets.token_bytes(20))
        return made[-1]

    async def body(engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            first = await keys.decrypt_decoy(conn, b"totp", plaintext)
            second = await keys.decrypt_decoy(conn, b"totp", plaintext)
            other = await keys.decrypt_decoy(conn, b"phone", plaintext)
            assert not conn.in_transaction()
            assert (await conn.execute(select(account_data_keys))).all() == []
        assert first == second == made[0]
        assert other == made[1] != made[0]  # one decoy per field

    with_engine(db_url, body)
    assert len(made) == 2
    assert len(unwrapped) == 3


def test_a_token_is_bound_to_its_account_and_field(db_url: str) -> None:
    keys = new_keys()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            token = await keys.encrypt(conn, "acct-1", b"secret", b"totp")
            await keys.encrypt(conn, "acct-2", b"other", b"totp")
            with pytest.raises(CiphertextInvalid):
                await keys.decrypt(conn, "acct-1", token, b"phone")
            with pytest.raises(CiphertextInvalid):
                await keys.decrypt(conn, "acct-2", token, b"totp")
            flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
            with pytest.raises(CiphertextInvalid):
                await keys.decrypt(conn, "acct-1", flipped, b"totp")
            with pytest.raises(CiphertextInvalid, match="base64url"):
                await keys.decrypt(conn, "acct-1", "!!!", b"totp")
            with pytest.raises(CiphertextInvalid, match="too short"):
                await keys.decrypt(conn, "acct-1", "AAAA", b"totp")

    with_engine(db_url, body)


def test_destroy_crypto_shreds_and_refuses_new_data(db_url: str) -> None:
    keys = new_keys()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            token = await keys.encrypt(conn, "acct-9", b"+8613800000000", b"phone")
            other = await keys.encrypt(conn, "acct-10", b"+8613811111111", b"phone")
        async with engine.begin() as conn:
            assert await keys.destroy(conn, "acct-9") is True
        async with engine.begin() as conn:
            assert await keys.is_destroyed(conn, "acct-9")
            with pytest.raises(DataKeyDestroyed):
                await keys.decrypt(conn, "acct-9", token, b"phone")
            with pytest.raises(DataKeyDestroyed):
                await keys.encrypt(conn, "acct-9", b"new data", b"phone")
            # Another account is untouched.
            assert await keys.decrypt(conn, "acct-10", other, b"phone") == b"+8613811111111"
            row = (
                await conn.execute(
                    select(account_data_keys).where(
                        account_data_keys.c.subject == keys.pseudonymize("acct-9")
                    )
                )
            ).one()
        assert row.wrapped_key is None
        assert row.destroyed_at is not None

    with_engine(db_url, body)


def test_destroying_an_account_without_a_key_leaves_a_tombstone(db_url: str) -> None:
    keys = new_keys()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            assert await keys.destroy(conn, "never-seen") is False
            assert await keys.destroy(conn, "never-seen") is False  # idempotent
        async with engine.begin() as conn:
            with pytest.raises(DataKeyDestroyed):
                await keys.encrypt(conn, "never-seen", b"x", b"phone")

    with_engine(db_url, body)


def test_another_master_key_cannot_unwrap(db_url: str) -> None:
    pseudonym_key = secrets.token_bytes(32)
    keys = DataKeys(secrets.token_bytes(32), pseudonym_key)
    intruder = DataKeys(secrets.token_bytes(32), pseudonym_key)

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            token = await keys.encrypt(conn, "acct-1", b"secret", b"totp")
        async with engine.connect() as conn:
            with pytest.raises(RuntimeError, match="wrong master key"):
                await intruder.decrypt(conn, "acct-1", token, b"totp")

    with_engine(db_url, body)


def test_pseudonyms_are_keyed_stable_and_distinct() -> None:
    keys = new_keys()
    assert keys.pseudonymize("acct-1") == keys.pseudonymize("acct-1")
    assert keys.pseudonymize("acct-1") != keys.pseudonymize("acct-2")
    assert new_keys().pseudonymize("acct-1") != keys.pseudonymize("acct-1")
    assert len(keys.pseudonymize("acct-1")) == 64
    assert keys.blind_index("phone", "+86138") != keys.blind_index("email", "+86138")
    assert "keys hidden" in repr(keys)


PSEUDONYM_KEY = bytes(range(32))


def test_face_references_are_per_provider_stable_and_never_the_pseudonym() -> None:
    """A provider enrols a face under its reference: the reference must not change, must differ
    per provider (no joining of their users) and must not be the pseudonym the log names."""
    keys = DataKeys(secrets.token_bytes(32), PSEUDONYM_KEY)
    subject = keys.pseudonymize("acct-1")
    a = keys.face_subject("acme", subject)
    assert a == keys.face_subject("acme", subject)
    assert a != keys.face_subject("other", subject)
    assert a != keys.face_subject("acme", keys.pseudonymize("acct-2"))
    assert a != subject
    blind = b"fairunlock/blind/face_subject/acme\x00" + subject.encode()
    assert a == hmac.new(PSEUDONYM_KEY, blind, hashlib.sha256).hexdigest()


@given(account_id=st.text(max_size=80), purpose=st.text(max_size=20), value=st.text(max_size=40))
def test_pseudonyms_and_blind_indexes_are_hmac_sha256_of_their_context(
    account_id: str, purpose: str, value: str
) -> None:
    """The stored pseudonyms and blind indexes must never change under an account: each is
    HMAC-SHA256 under the pseudonym key of its context, computed here by the standard library
    afresh, whatever the implementation keeps between calls."""
    keys = DataKeys(secrets.token_bytes(32), PSEUDONYM_KEY)
    subject = b"fairunlock/subject/v1\x00" + account_id.encode()
    blind = b"fairunlock/blind/" + purpose.encode() + b"\x00" + value.encode()
    assert keys.pseudonymize(account_id) == hmac.new(PSEUDONYM_KEY, subject, "sha256").hexdigest()
    assert (
        keys.blind_index(purpose, value)
        == hmac.new(PSEUDONYM_KEY, blind, hashlib.sha256).hexdigest()
    )
    # Interleaved calls do not leak into each other (each starts from the keyed state).
    assert keys.pseudonymize(account_id) == keys.pseudonymize(account_id)
