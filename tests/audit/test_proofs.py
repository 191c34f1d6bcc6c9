"""Proofs as served (audit/proofs.py) on real SQLite and PostgreSQL: from the stored subtree roots,
verified against the signed checkpoint, rebuilt from the leaves when a stored root is wrong."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.export import export_bundle
from audit.integrator import integrate_all, rebuild_subtrees
from audit.merkle import (
    ProofError,
    consistency_proof,
    inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from audit.proofs import checked_prefix, served_consistency_proof, served_inclusion_proof
from audit.store import (
    AuditStore,
    AuditStoreError,
    StoredCheckpoint,
    ThreadLeafSource,
    append_event,
    audit_log,
    audit_subtrees,
)
from audit.verify import verify_bundle
from tests.audit.test_store import ORIGIN, db_url, make_event, make_signer, with_engine

__all__ = ["db_url"]  # the fixture, imported for the tests here

SIZE = 600  # past two stored subtrees of 256 leaves


# The log's key: one per test module, as one per deployment (an export signs with the key that
# signed the checkpoints it checks against).
SIGNER = make_signer()


async def _seed(engine: AsyncEngine) -> tuple[list[bytes], StoredCheckpoint]:
    async with engine.begin() as conn:
        for n in range(SIZE):
            await append_event(conn, make_event(n))
    # Batches of 97: checkpoints at 97, 194, ... and 600; 256 and 512 cross batches.
    await integrate_all(engine, SIGNER, ORIGIN, batch_size=97)
    async with engine.connect() as conn:
        store = AuditStore(conn)
        hashes = await store.leaf_hashes(0, SIZE)
        latest = await store.latest_checkpoint()
    assert latest is not None
    assert latest.size == SIZE
    return hashes, latest


async def _corrupt_first_subtree(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        changed = await conn.execute(
            update(audit_subtrees)
            .where(audit_subtrees.c.height == 8, audit_subtrees.c.idx == 0)
            .values(root=bytes(32))
        )
        assert changed.rowcount == 1


async def _corrupt_leaf_hash(engine: AsyncEngine, seq: int) -> None:
    async with engine.begin() as conn:
        changed = await conn.execute(
            update(audit_log).where(audit_log.c.seq == seq).values(leaf_hash=bytes(32))
        )
        assert changed.rowcount == 1


def test_served_proofs_verify_against_the_checkpoint_they_name(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(engine: AsyncEngine) -> None:
        hashes, latest = await _seed(engine)
        for index in (0, 255, 256, 300, 599):
            leaf, proof = await served_inclusion_proof(engine, index, latest)
            assert leaf == hashes[index]
            assert proof == inclusion_proof(hashes, index, SIZE)
            verify_inclusion(leaf, index, SIZE, proof, latest.root)
        # 194 is a checkpoint's size; 300 and 513 are not (their roots are computed).
        for first in (1, 194, 300, 513, SIZE):
            proof = await served_consistency_proof(engine, first, latest)
            assert proof == consistency_proof(hashes, first, SIZE)
            verify_consistency(
                first, SIZE, root_from_leaf_hashes(hashes[:first]), latest.root, proof
            )
        with pytest.raises(ProofError):
            await served_inclusion_proof(engine, SIZE, latest)
        with pytest.raises(ProofError):
            await served_consistency_proof(engine, SIZE + 1, latest)

    with caplog.at_level(logging.ERROR, logger="fairunlock.audit.proofs"):
        with_engine(db_url, body)
    # Built from the stored roots, not rebuilt from the leaves after a failed check.
    assert [r for r in caplog.records if r.name == "fairunlock.audit.proofs"] == []


def test_a_wrong_stored_subtree_root_is_logged_and_the_proof_rebuilt_from_the_leaves(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(engine: AsyncEngine) -> None:
        hashes, latest = await _seed(engine)
        await _corrupt_first_subtree(engine)
        with caplog.at_level(logging.ERROR, logger="fairunlock.audit.proofs"):
            _, proof = await served_inclusion_proof(engine, 300, latest)
            assert proof == inclusion_proof(hashes, 300, SIZE)
            # From 194 the proof descends into [0, 256) and never uses its root; from 300 it
            # does, and 300 (no checkpoint's size) has its root computed from it too.
            for first in (194, 300):
                proof = await served_consistency_proof(engine, first, latest)
                assert proof == consistency_proof(hashes, first, SIZE)
        errors = [r for r in caplog.records if r.name == "fairunlock.audit.proofs"]
        assert [r.proof for r in errors] == [  # type: ignore[attr-defined]
            "inclusion of 300 in 600",
            "consistency of 300 with 600",
        ]
        assert all("rebuilding from the leaves" in r.getMessage() for r in errors)

    with_engine(db_url, body)


def test_a_log_that_disagrees_with_its_checkpoint_gets_no_proof(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        _, latest = await _seed(engine)
        await _corrupt_leaf_hash(engine, 5)
        with pytest.raises(AuditStoreError, match="does not verify against the signed"):
            await served_inclusion_proof(engine, 5, latest)

    with_engine(db_url, body)


def test_a_delta_export_from_a_wrong_stored_root_is_rebuilt_and_verifies(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = SIGNER

    async def body(engine: AsyncEngine) -> None:
        hashes, latest = await _seed(engine)
        await _corrupt_first_subtree(engine)
        with caplog.at_level(logging.ERROR, logger="fairunlock.audit.proofs"):
            prefix = await checked_prefix(engine, 300, latest)
            assert prefix.root() == root_from_leaf_hashes(hashes[:300])
            result = await export_bundle(
                engine, tmp_path / "delta", signer=signer, origin=ORIGIN, actor="t", start=300
            )
        assert result.manifest.start == 300
        verify_bundle(tmp_path / "delta", signer.public_key)
        errors = [r for r in caplog.records if r.name == "fairunlock.audit.proofs"]
        assert [r.proof for r in errors] == ["prefix of 300 in 600"] * 2  # type: ignore[attr-defined]

    with_engine(db_url, body)


def test_a_consistency_proof_of_a_log_that_disagrees_with_its_checkpoint_is_refused(
    db_url: str,
) -> None:
    async def body(engine: AsyncEngine) -> None:
        _, latest = await _seed(engine)
        await _corrupt_leaf_hash(engine, 599)
        with pytest.raises(AuditStoreError, match="consistency of 300 with 600"):
            await served_consistency_proof(engine, 300, latest)

    with_engine(db_url, body)


def test_the_store_serves_subtree_roots_inside_the_tree_only(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        hashes, _ = await _seed(engine)
        loop = asyncio.get_running_loop()
        source = ThreadLeafSource(engine, loop, 512)
        roots = await asyncio.to_thread(source.subtree_roots, 8, 0, 2)  # ends exactly at 512
        assert roots == [
            root_from_leaf_hashes(hashes[:256]),
            root_from_leaf_hashes(hashes[256:512]),
        ]
        with pytest.raises(AuditStoreError, match="outside the tree"):
            await asyncio.to_thread(ThreadLeafSource(engine, loop, 511).subtree_roots, 8, 0, 2)

    with_engine(db_url, body)


async def _stored_subtrees(engine: AsyncEngine) -> list[tuple[int, int, bytes]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(audit_subtrees.c.height, audit_subtrees.c.idx, audit_subtrees.c.root).order_by(
                audit_subtrees.c.height, audit_subtrees.c.idx
            )
        )
        return [(int(h), int(i), bytes(r)) for h, i, r in rows]


def test_rebuilding_the_subtrees_repairs_a_wrong_and_a_missing_root(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(engine: AsyncEngine) -> None:
        hashes, latest = await _seed(engine)
        written = await _stored_subtrees(engine)
        await _corrupt_first_subtree(engine)
        async with engine.begin() as conn:
            await conn.execute(delete(audit_subtrees).where(audit_subtrees.c.idx == 1))
        assert await rebuild_subtrees(engine, chunk=97) == 2
        assert await _stored_subtrees(engine) == written
        with caplog.at_level(logging.ERROR, logger="fairunlock.audit.proofs"):
            _, proof = await served_inclusion_proof(engine, 300, latest)
        assert proof == inclusion_proof(hashes, 300, SIZE)
        assert [r for r in caplog.records if r.name == "fairunlock.audit.proofs"] == []

    with_engine(db_url, body)


def test_rebuilding_from_leaves_that_miss_the_head_changes_nothing(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        await _seed(engine)
        written = await _stored_subtrees(engine)
        await _corrupt_leaf_hash(engine, 5)
        with pytest.raises(AuditStoreError, match="do not reproduce the head"):
            await rebuild_subtrees(engine)
        assert await _stored_subtrees(engine) == written

    with_engine(db_url, body)
