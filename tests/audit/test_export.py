"""Export from the DB: full and delta bundles verify, exports are audited, tampering is refused."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.entry import decode_entry
from audit.export import ExportRangeError, export_bundle
from audit.integrator import integrate_all
from audit.merkle import CompactRange, leaf_hash
from audit.proofs import checked_prefix
from audit.store import AuditStore, AuditStoreError, append_event_now, audit_log
from audit.verify import MANIFEST_SIGNATURE_FILE, VerificationError, verify_bundle
from tests.audit.test_store import ORIGIN, db_url, make_event, make_signer, with_engine

__all__ = ["db_url"]


async def seed(engine: AsyncEngine, count: int, batch_size: int = 1000) -> None:
    for n in range(count):
        await append_event_now(engine, make_event(n))
    await integrate_all(engine, _SIGNER, ORIGIN, batch_size)


_SIGNER = make_signer()


def test_full_and_delta_exports_verify_and_chain(db_url: str, tmp_path: Path) -> None:
    async def body(engine: AsyncEngine) -> None:
        await seed(engine, 25, batch_size=10)
        first = await export_bundle(
            engine,
            tmp_path / "full",
            signer=_SIGNER,
            origin=ORIGIN,
            actor="auditor-1",
            purpose="quarterly review",
            chunk=7,  # several slices, and a last partial one
        )
        assert (first.manifest.start, first.manifest.end) == (0, 25)
        await integrate_all(engine, _SIGNER, ORIGIN)  # the export's own entry: index 25
        await seed(engine, 4)
        delta = await export_bundle(
            engine, tmp_path / "delta", signer=_SIGNER, origin=ORIGIN, actor="auditor-1", start=25
        )
        assert (delta.manifest.start, delta.manifest.end) == (25, 30)
        middle = await export_bundle(
            engine,
            tmp_path / "middle",
            signer=_SIGNER,
            origin=ORIGIN,
            actor="auditor-1",
            start=3,
            end=17,
            chunk=5,
        )
        assert (middle.manifest.start, middle.manifest.end) == (3, 17)

    with_engine(db_url, body)
    key = _SIGNER.public_key
    full = verify_bundle(tmp_path / "full", key)
    assert (full.start, full.end) == (0, 25)
    previous = (tmp_path / "full" / "checkpoint").read_text()
    delta = verify_bundle(tmp_path / "delta", key, previous)
    assert (delta.start, delta.end) == (25, 30)
    verify_bundle(tmp_path / "middle", key)
    lines = (tmp_path / "delta" / "entries.jsonl").read_bytes().splitlines()
    export_entry = decode_entry(lines[0])
    assert export_entry["kind"] == "export"
    assert export_entry["actor"] == "auditor-1"
    assert export_entry["subject"] is None
    assert export_entry["data"]["from"] == 0
    assert export_entry["data"]["to"] == 25
    assert export_entry["data"]["purpose"] == "quarterly review"
    assert export_entry["data"]["root"] == base64.b64encode(full.root).decode()


def test_compact_prefix_from_stored_hashes_equals_recomputation(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        await seed(engine, 600, batch_size=97)  # past two stored subtrees of 256 leaves
        async with engine.connect() as conn:
            store = AuditStore(conn)
            leaves = await store.leaves(0, 600)
            latest = await store.latest_checkpoint()
        assert latest is not None
        for size in (0, 1, 2, 7, 8, 31, 32, 37, 255, 256, 257, 511, 512, 513, 600):
            expected = CompactRange.empty()
            expected.extend(leaf_hash(x) for x in leaves[:size])
            assert await checked_prefix(engine, size, latest) == expected

    with_engine(sqlite_url, body)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [(5, 3, "not inside"), (0, 11, "not inside"), (11, None, "not inside")],
)
def test_ranges_outside_the_log_are_refused(
    sqlite_url: str, tmp_path: Path, start: int, end: int | None, message: str
) -> None:
    async def body(engine: AsyncEngine) -> None:
        with pytest.raises(ExportRangeError, match="empty"):
            await export_bundle(engine, tmp_path / "e", signer=_SIGNER, origin=ORIGIN, actor="a")
        await seed(engine, 10)
        with pytest.raises(ExportRangeError, match=message):
            await export_bundle(
                engine,
                tmp_path / "b",
                signer=_SIGNER,
                origin=ORIGIN,
                actor="a",
                start=start,
                end=end,
            )

    with_engine(sqlite_url, body)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("column", "seq", "end"),
    [
        # A checkpoint exists at 8 (batches of 4): the signer guard compares with it.
        ("leaf", 6, 8),
        ("leaf_hash", 1, 8),
        # None at 7: the exported leaves are hashed and folded on to the latest checkpoint.
        ("leaf", 6, 7),
        ("leaf_hash", 1, 7),
        ("leaf_hash", 9, 7),
    ],
)
def test_export_refuses_to_sign_a_tampered_log(
    db_url: str, tmp_path: Path, column: str, seq: int, end: int
) -> None:
    """A row altered in the database (an exported leaf, a prefix hash, a hash past the range)
    no longer reproduces a stored checkpoint: the export fails before signing anything."""

    async def body(engine: AsyncEngine) -> None:
        await seed(engine, 12, batch_size=4)
        async with engine.begin() as conn:
            if column == "leaf":
                [leaf] = await AuditStore(conn).leaves(seq, seq + 1)
                forged = leaf.replace(b'"n":6', b'"n":7')
                assert forged != leaf
                values = {"leaf": forged, "leaf_hash": leaf_hash(forged)}
            else:
                values = {"leaf_hash": bytes(32)}
            await conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(**values))
        # Caught where the altered row is first read: the delta's prefix (checked against the
        # latest checkpoint before anything is written) or the exported range.
        refused = r"reproduce (the log's|its) checkpoint|does not verify against the signed"
        with pytest.raises(AuditStoreError, match=refused):
            await export_bundle(
                engine,
                tmp_path / "bundle",
                signer=_SIGNER,
                origin=ORIGIN,
                actor="a",
                start=4,
                end=end,
            )

    with_engine(db_url, body)
    assert not (tmp_path / "bundle" / MANIFEST_SIGNATURE_FILE).exists()
    with pytest.raises(VerificationError):
        verify_bundle(tmp_path / "bundle", _SIGNER.public_key)


def test_export_uses_bounded_slices(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread pulls slices of `chunk` rows, never the whole range at once."""
    seen: list[tuple[int, int]] = []

    async def body(engine: AsyncEngine) -> None:
        await seed(engine, 50)
        original = AuditStore.leaves

        async def spy(self: AuditStore, start: int, end: int) -> list[bytes]:
            seen.append((start, end))
            return await original(self, start, end)

        # A recording wrapper around the real read, not a substitute for it.
        monkeypatch.setattr(AuditStore, "leaves", spy)
        await export_bundle(
            engine, tmp_path / "b", signer=_SIGNER, origin=ORIGIN, actor="a", chunk=8
        )

    with_engine(sqlite_url, body)
    assert seen == [(low, min(50, low + 8)) for low in range(0, 50, 8)]
    verify_bundle(tmp_path / "b", _SIGNER.public_key)


@pytest.mark.parametrize("end", [12, 8])
def test_export_trusts_the_signed_note_not_the_root_column_beside_it(
    db_url: str, tmp_path: Path, end: int
) -> None:
    """An altered leaf with the checkpoint's root column set to match it: the export compares
    with the root the note signs, so it refuses instead of signing a second checkpoint of the
    same size, a fork (found by a review: the column alone was trusted)."""
    from audit.merkle import root_from_leaf_hashes
    from audit.store import audit_checkpoints

    async def body(engine: AsyncEngine) -> None:
        await seed(engine, 12, batch_size=4)
        async with engine.begin() as conn:
            store = AuditStore(conn)
            [leaf] = await store.leaves(5, 6)
            forged = leaf.replace(b'"n":5', b'"n":9')
            await conn.execute(
                update(audit_log)
                .where(audit_log.c.seq == 5)
                .values(leaf=forged, leaf_hash=leaf_hash(forged))
            )
            for size in (8, 12):
                hashes = await store.leaf_hashes(0, size)
                await conn.execute(
                    update(audit_checkpoints)
                    .where(audit_checkpoints.c.size == size)
                    .values(root=root_from_leaf_hashes(hashes))
                )
        with pytest.raises(AuditStoreError, match="not what its note signs"):
            await export_bundle(
                engine, tmp_path / "bundle", signer=_SIGNER, origin=ORIGIN, actor="a", end=end
            )

    with_engine(db_url, body)
    assert not (tmp_path / "bundle" / MANIFEST_SIGNATURE_FILE).exists()
