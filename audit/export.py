"""Export [start, end) of the stored log as a signed bundle (audit/bundle.py), streamed.

The bundle writer is synchronous and CPU-bound (hashing, file writes), so it runs in a worker
thread, pulling leaves from the event loop one bounded range read at a time, with the next read in
flight while the current slice is written. Memory holds two slices, however large the log.

Before the bundle is signed, the exported leaves with the stored hashes of [0, start) must
reproduce a checkpoint the integrator signed — the one at ``end`` when it exists, else (adding
the stored hashes of [end, latest)) the latest: an export never signs a tree that disagrees with
what the log already published. Every export then appends
an ``export`` entry naming who exported which range and why.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.bundle import write_bundle
from audit.checkpoint import Checkpoint, CheckpointSigner
from audit.entry import AuditEvent, EntryKind
from audit.merkle import CompactRange
from audit.proofs import checked_prefix
from audit.store import AuditStore, AuditStoreError, StoredCheckpoint, append_event_now
from audit.verify import Manifest

DEFAULT_CHUNK = 20_000


class ExportRangeError(ValueError):
    """The requested range is not inside the log."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    manifest: Manifest
    # The inbox id of the ``export`` entry recording this export (integrated later).
    audit_inbox_id: int


async def _leaves(engine: AsyncEngine, start: int, end: int) -> list[bytes]:
    # One short transaction per slice: on SQLite every transaction takes the write lock, so a
    # whole-export transaction would stall every writer for the length of the export.
    async with engine.connect() as conn:
        return await AuditStore(conn).leaves(start, end)


async def _hashes(engine: AsyncEngine, start: int, end: int) -> list[bytes]:
    async with engine.connect() as conn:
        return await AuditStore(conn).leaf_hashes(start, end)


class _CheckedLeaves:
    """The entries iterator handed to write_bundle (runs in the writer's thread).

    With ``hash_leaves`` (the range ends where no checkpoint was stored) it hashes what it yields
    and, once exhausted, folds in the stored hashes up to the latest checkpoint, raising on a
    mismatch before write_bundle reaches its signing step; ``root`` is then the root at ``end``.
    Without it (a checkpoint exists at ``end``) it only streams: _GuardedSigner compares the
    root write_bundle computed with that checkpoint, and hashing twice would cost a third of
    the export's time.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        loop: asyncio.AbstractEventLoop,
        *,
        prefix: CompactRange,
        end: int,
        latest: StoredCheckpoint,
        chunk: int,
        hash_leaves: bool,
    ) -> None:
        self._engine = engine
        self._loop = loop
        self._compact = prefix.copy()
        self._end = end
        self._latest = latest
        self._chunk = chunk
        self._hash_leaves = hash_leaves
        self.root: bytes | None = None

    def _submit(self, coro_start: int, kind: str) -> Future[list[bytes]]:
        end = self._end if kind == "leaves" else self._latest.size
        stop = min(end, coro_start + self._chunk)
        read = _leaves if kind == "leaves" else _hashes
        return asyncio.run_coroutine_threadsafe(read(self._engine, coro_start, stop), self._loop)

    def __iter__(self) -> Iterator[bytes]:
        sha256 = hashlib.sha256
        compact = self._compact
        position = compact.size
        # The next slice is read on the event loop while this thread writes the current one.
        pending = self._submit(position, "leaves") if position < self._end else None
        while pending is not None:
            leaves = pending.result()
            position += len(leaves)
            pending = self._submit(position, "leaves") if position < self._end else None
            if self._hash_leaves:
                compact.extend(sha256(b"\x00" + leaf).digest() for leaf in leaves)
            yield from leaves
        if not self._hash_leaves:
            return
        self.root = compact.root()
        while position < self._latest.size:
            hashes = self._submit(position, "hashes").result()
            position += len(hashes)
            compact.extend(hashes)
        if compact.size != self._latest.size or compact.root() != self._latest.root:
            raise AuditStoreError(
                f"the stored log does not reproduce its checkpoint of size {self._latest.size}: "
                "leaves or hashes were altered in the database; nothing was signed"
            )


class _GuardedSigner:
    """The signer write_bundle gets: it signs only a checkpoint the stored log vouches for.

    AUDIT.md §11.8: a log signer must never sign a tree inconsistent with what it signed before.
    The checkpoint is signed before the manifest, so a refusal here leaves nothing signed.
    """

    def __init__(self, signer: CheckpointSigner, size: int, root: Callable[[], bytes | None]):
        self.name = signer.name
        self.public_key = signer.public_key
        self.key_id = signer.key_id
        self._signer = signer
        self._size = size
        self._root = root
        self._approved = False

    def verifier_key(self) -> str:
        return self._signer.verifier_key()

    def sign(self, checkpoint: Checkpoint) -> str:
        if checkpoint.size != self._size or checkpoint.root != self._root():
            raise AuditStoreError(
                f"the exported entries do not reproduce the log's checkpoint of size {self._size}:"
                " leaves or hashes were altered in the database; nothing was signed"
            )
        self._approved = True
        return self._signer.sign(checkpoint)

    def sign_bytes(self, data: bytes) -> bytes:
        if not self._approved:
            raise AuditStoreError("refusing to sign a manifest before its checked checkpoint")
        return self._signer.sign_bytes(data)


def _as_signed(stored: StoredCheckpoint, signer: CheckpointSigner, origin: str) -> StoredCheckpoint:
    """The stored checkpoint with its note's signature verified and its root taken from the note;
    refused when the stored size or root disagrees with what the note signs."""
    signed = stored.signed(signer.public_key, origin)
    if (signed.size, signed.root) != (stored.size, stored.root):
        raise AuditStoreError(
            f"the stored checkpoint of size {stored.size} is not what its note signs: the root "
            "column was altered in the database; nothing was signed"
        )
    return StoredCheckpoint(signed.size, signed.root, stored.note)


async def export_bundle(
    engine: AsyncEngine,
    out_dir: Path,
    *,
    signer: CheckpointSigner,
    origin: str,
    actor: str,
    start: int = 0,
    end: int | None = None,
    purpose: str | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> ExportResult:
    """Write entries [start, end) (end defaults to the latest checkpoint) as a bundle in out_dir."""
    async with engine.connect() as conn:
        latest = await AuditStore(conn).latest_checkpoint()
    if latest is None:
        raise ExportRangeError("the audit log is empty: nothing has been integrated yet")
    end = latest.size if end is None else end
    if not 0 <= start <= end <= latest.size:
        raise ExportRangeError(
            f"range [{start}, {end}) is not inside the log of {latest.size} entries"
        )
    async with engine.connect() as conn:
        at_end = await AuditStore(conn).checkpoint_at(end)
    # What the log vouches for is the signed note, not the root column beside it: someone who can
    # write the database could set that column to the root of altered leaves, and the export would
    # then sign a second, forked checkpoint at the same size (AUDIT.md §11.8).
    latest = _as_signed(latest, signer, origin)
    at_end = None if at_end is None else _as_signed(at_end, signer, origin)
    # From the stored subtree roots, checked against the latest checkpoint (audit.proofs): a
    # delta export starts without reading the log before it.
    prefix = await checked_prefix(engine, start, latest)
    entries = _CheckedLeaves(
        engine,
        asyncio.get_running_loop(),
        prefix=prefix,
        end=end,
        latest=latest,
        chunk=chunk,
        hash_leaves=at_end is None,
    )
    guarded = _GuardedSigner(
        signer, end, (lambda: at_end.root) if at_end is not None else (lambda: entries.root)
    )
    manifest = await asyncio.to_thread(
        write_bundle,
        out_dir,
        entries,
        start=start,
        prefix=prefix,
        signer=cast(CheckpointSigner, guarded),
        origin=origin,
        purpose=purpose,
    )
    record = AuditEvent(
        kind=EntryKind.EXPORT,
        actor=actor,
        subject=None,
        data={
            "from": start,
            "to": end,
            "purpose": purpose,
            "root": base64.b64encode(manifest.root).decode("ascii"),
            "key_id": manifest.key_id,
        },
        time=datetime.now(UTC),
    )
    return ExportResult(manifest, await append_event_now(engine, record))
