"""Erasure (PIPL-47, GDPR-17): destroying an account's data key shreds its personal data in the
audit log while the whole log still verifies end to end."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.entry import AuditEvent, EntryKind, decode_entry
from audit.export import export_bundle
from audit.integrator import integrate_all
from audit.store import append_event
from audit.verify import verify_bundle
from service.data_keys import DataKeyDestroyed, DataKeys, account_data_keys
from service.persistence import metadata
from tests.audit.test_store import ORIGIN, db_url, make_signer, with_engine

__all__ = ["db_url"]

PHONES = {"acct-erased": b"+8613812345678", "acct-kept": b"+8613900000000"}


def test_erasure_shreds_entry_data_and_the_log_still_verifies(db_url: str, tmp_path: Path) -> None:
    signer = make_signer()
    keys = DataKeys(secrets.token_bytes(32), secrets.token_bytes(32))
    decrypted: dict[str, list[bytes]] = {}

    async def record_phone_change(engine: AsyncEngine, account: str) -> None:
        # As a flow would: ciphertext and pseudonym only, in the same transaction as the change.
        async with engine.begin() as conn:
            token = await keys.encrypt(conn, account, PHONES[account], b"audit:phone")
            await append_event(
                conn,
                AuditEvent(
                    EntryKind.ACCOUNT_CHANGED,
                    "frontend-key",
                    keys.pseudonymize(account),
                    {"field": "phone", "phone": token},
                    datetime.now(UTC),
                ),
            )

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all, tables=[account_data_keys])
        for account in ("acct-erased", "acct-kept", "acct-erased"):
            await record_phone_change(engine, account)
        await integrate_all(engine, signer, ORIGIN)
        await export_bundle(engine, tmp_path / "before", signer=signer, origin=ORIGIN, actor="a")

        async with engine.begin() as conn:
            assert await keys.destroy(conn, "acct-erased")
            await append_event(
                conn,
                AuditEvent(
                    EntryKind.ERASURE,
                    "admin-key",
                    keys.pseudonymize("acct-erased"),
                    {},
                    datetime.now(UTC),
                ),
            )
        await integrate_all(engine, signer, ORIGIN)
        await export_bundle(engine, tmp_path / "after", signer=signer, origin=ORIGIN, actor="a")

        lines = (tmp_path / "after" / "entries.jsonl").read_bytes().splitlines()
        async with engine.connect() as conn:
            for entry in map(decode_entry, lines):
                if entry["kind"] != "account_changed":
                    continue
                account = next(a for a in PHONES if keys.pseudonymize(a) == entry["subject"])
                try:
                    plain = await keys.decrypt(
                        conn, account, entry["data"]["phone"], b"audit:phone"
                    )
                except DataKeyDestroyed:
                    plain = b"<shredded>"
                decrypted.setdefault(account, []).append(plain)

    with_engine(db_url, body)
    assert decrypted == {"acct-erased": [b"<shredded>"] * 2, "acct-kept": [PHONES["acct-kept"]]}
    # No entry ever held the phone number or the account id in clear.
    after = (tmp_path / "after" / "entries.jsonl").read_bytes()
    for account, phone in PHONES.items():
        assert phone not in after
        assert account.encode() not in after
    # The log verifies end to end, before and after, and the later export extends the earlier.
    before = verify_bundle(tmp_path / "before", signer.public_key)
    result = verify_bundle(
        tmp_path / "after", signer.public_key, (tmp_path / "before" / "checkpoint").read_text()
    )
    assert result.end > before.end
    assert after.startswith((tmp_path / "before" / "entries.jsonl").read_bytes())
