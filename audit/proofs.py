"""Proofs as the service serves them (and a delta export's prefix): built from the store (its
stored subtree roots where it has them) and checked against the root of the stored checkpoint they
name, the root its signed note carries, before anyone sees them.

The subtree roots are derived data (audit_subtrees, written by the integrator and migration
0002). Should one ever disagree with the leaf hashes it was derived from, a proof built from it
would not verify, and an auditor would see the log "fail" when only an index is wrong. So each
proof is verified here first; one that does not verify is logged as an error and built again from
the leaf hashes alone, and if that does not verify either, the log itself disagrees with its
checkpoint: AuditStoreError, never a proof.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.merkle import (
    CompactRange,
    LeafSource,
    ProofError,
    consistency_proof,
    inclusion_proof,
    prefix_range,
    verify_consistency,
    verify_inclusion,
)
from audit.store import AuditStore, AuditStoreError, StoredCheckpoint, ThreadLeafSource

log = logging.getLogger("fairunlock.audit.proofs")

_Proof = TypeVar("_Proof")


class LeavesOnly:
    """The store without its subtree roots: every subtree root computed from the leaf hashes."""

    __slots__ = ("_source",)

    def __init__(self, source: LeafSource) -> None:
        self._source = source

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        return self._source.leaf_hashes(start, end)


async def _checked(
    prove: Callable[[LeafSource], _Proof],
    check: Callable[[_Proof], None],
    source: ThreadLeafSource,
    what: str,
) -> _Proof:
    proof = await asyncio.to_thread(prove, source)
    try:
        check(proof)
        return proof
    except ProofError as exc:
        log.error(
            "audit proof from stored subtree roots does not verify; rebuilding from the leaves "
            "(repair the stored roots with `fairunlock audit rebuild-subtrees`)",
            extra={"proof": what, "error": str(exc)},
        )
    proof = await asyncio.to_thread(prove, LeavesOnly(source))
    try:
        check(proof)
    except ProofError as exc:
        raise AuditStoreError(
            f"the {what} proof from the leaf hashes does not verify against the signed "
            f"checkpoint: {exc}"
        ) from exc
    return proof


async def served_inclusion_proof(
    engine: AsyncEngine, index: int, checkpoint: StoredCheckpoint
) -> tuple[bytes, list[bytes]]:
    """The leaf hash of entry ``index`` and its inclusion proof in ``checkpoint``'s tree,
    verified against that checkpoint's root. Raises ProofError for an index outside the tree."""
    size = checkpoint.size
    if not 0 <= index < size:
        raise ProofError(f"index {index} is outside a tree of size {size}")
    async with engine.connect() as conn:
        [leaf] = await AuditStore(conn).leaf_hashes(index, index + 1)
    source = ThreadLeafSource(engine, asyncio.get_running_loop(), size)

    def prove(src: LeafSource) -> list[bytes]:
        return inclusion_proof(src, index, size)

    def check(proof: list[bytes]) -> None:
        verify_inclusion(leaf, index, size, proof, checkpoint.root)

    return leaf, await _checked(prove, check, source, f"inclusion of {index} in {size}")


async def served_consistency_proof(
    engine: AsyncEngine, first: int, checkpoint: StoredCheckpoint
) -> list[bytes]:
    """The consistency proof from size ``first`` to ``checkpoint``'s tree, verified against that
    checkpoint's root and the root of ``first`` (its stored checkpoint's, else computed: a proof
    that verifies against the signed second root binds the first root either way)."""
    size = checkpoint.size
    if not 0 < first <= size:
        raise ProofError(f"no consistency proof from {first} to {size}")
    async with engine.connect() as conn:
        at_first = await AuditStore(conn).checkpoint_at(first)
    source = ThreadLeafSource(engine, asyncio.get_running_loop(), size)

    def prove(src: LeafSource) -> tuple[list[bytes], bytes]:
        # The first root from the same source as the proof, so a rebuild from the leaves
        # recomputes both.
        first_root = prefix_range(src, 0, first).root() if at_first is None else at_first.root
        return consistency_proof(src, first, size), first_root

    def check(built: tuple[list[bytes], bytes]) -> None:
        proof, first_root = built
        verify_consistency(first, size, first_root, checkpoint.root, proof)

    proof, _ = await _checked(prove, check, source, f"consistency of {first} with {size}")
    return proof


async def checked_prefix(
    engine: AsyncEngine, size: int, checkpoint: StoredCheckpoint
) -> CompactRange:
    """The compact range of [0, size) (a delta export's prefix) from the store, its root checked
    as a served consistency proof is: against ``checkpoint`` (size at least ``size``) through the
    proof from ``size`` to it, or equal to its root at the same size."""
    if not 0 <= size <= checkpoint.size:
        raise ProofError(f"no prefix of {size} entries in a tree of {checkpoint.size}")
    source = ThreadLeafSource(engine, asyncio.get_running_loop(), checkpoint.size)

    def prove(src: LeafSource) -> tuple[CompactRange, list[bytes]]:
        prefix = prefix_range(src, 0, size)
        within = 0 < size < checkpoint.size
        return prefix, consistency_proof(src, size, checkpoint.size) if within else []

    def check(built: tuple[CompactRange, list[bytes]]) -> None:
        prefix, proof = built
        if 0 < size < checkpoint.size:
            verify_consistency(size, checkpoint.size, prefix.root(), checkpoint.root, proof)
        elif size == checkpoint.size and prefix.root() != checkpoint.root:
            raise ProofError(f"the root of {size} entries is not the checkpoint's")

    prefix, _ = await _checked(prove, check, source, f"prefix of {size} in {checkpoint.size}")
    return prefix
