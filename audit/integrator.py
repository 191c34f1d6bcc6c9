"""The integrator: turns queued inbox rows into contiguous, signed log entries, one batch at a time.

One batch is ONE transaction (AUDIT.md §7.2 pattern D): lock, read the head, read inbox rows in
id order, give them the next indices, write leaves and leaf hashes, the new compact range and
root, a signed checkpoint, and delete the consumed inbox rows. A crash anywhere rolls all of it
back, leaving the inbox rows to the next attempt: nothing is lost and nothing is doubled. A flow
that integrates in its own transaction adds its entries after the queued ones without queueing
them (integrate_in's ``direct``): they commit, or vanish, with that flow.

Leadership. PostgreSQL: ``pg_try_advisory_xact_lock`` in its own statement at the start of each
batch, then the head row ``FOR UPDATE`` as a second guard. A transaction-scoped lock rather than a
session lock on a dedicated connection because (a) any worker can lead any batch with no
connection pinned per worker, (b) a killed or stalled leader releases it with its transaction
(a session lock can outlive a hung leader whose TCP connection is still open), and (c) there is no
leadership state in memory to get wrong — "nothing in a worker's memory may be needed for
correctness". The lock call is its own statement under READ COMMITTED, so the later reads see
rows committed while we waited (AUDIT.md §7.1). SQLite: the engine begins every transaction with
``BEGIN IMMEDIATE``, which is the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.checkpoint import Checkpoint, CheckpointSigner
from audit.entry import AuditEvent, EntryKind, encode_entry
from audit.hot_sql import HotStatement
from audit.merkle import CompactRange, Subtree, leaf_hash
from audit.store import AuditStore, AuditStoreError, Head, InboxRow, LogRow

log = logging.getLogger("fairunlock.audit.integrator")

# "FUAUDIT" as a bigint: the advisory lock key every FairUnlock integrator agrees on.
ADVISORY_LOCK_KEY = int.from_bytes(b"FUAUDIT", "big")
_DECODE_JSON = msgspec.json.Decoder().decode
DEFAULT_BATCH_SIZE = 1000
_PAYLOAD_KEYS = {"actor", "data", "kind", "subject", "time", "v"}
_TRY_LOCK = HotStatement(
    "locks.try_integration",
    select(func.pg_try_advisory_xact_lock(ADVISORY_LOCK_KEY)),
    only_on="postgresql",
)
_WAIT_LOCK = HotStatement(
    "locks.wait_integration",
    select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)),
    only_on="postgresql",
)
_PROBE = AuditEvent(EntryKind.EXPORT, "a", "s", {}, datetime(2000, 1, 1, tzinfo=UTC))


class NotIntegratedError(TimeoutError):
    """An inbox entry did not receive its index in time (is any integrator running?)."""


async def integrate_once(
    engine: AsyncEngine, signer: CheckpointSigner, origin: str, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """Integrate up to ``batch_size`` inbox rows; return how many (0: none, or not the leader)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    async with engine.begin() as conn:
        integrated = await integrate_in(conn, signer, origin, batch_size)
    return 0 if integrated is None else len(integrated)


async def integrate_in(
    conn: AsyncConnection,
    signer: CheckpointSigner,
    origin: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    wait: bool = False,
    direct: Sequence[InboxRow] = (),
) -> dict[int, int] | None:
    """Integrate one batch inside the caller's transaction: inbox id -> log index for each entry
    integrated, or None when another worker holds the integration lock (PostgreSQL).

    A flow that writes entries and needs their indices at once (a decision reports
    `audit.index`) calls this at the end of its own transaction with them as ``direct``
    (payloads under ids from AuditStore.reserve_inbox_ids, never inserted into the inbox, built
    by audit.entry's encoders in this process, which the integration trusts): they follow up to
    ``batch_size`` queued entries in the same batch. One commit instead of a second transaction
    and polls, and no inbox row written, read back and deleted for them. Everything commits or
    rolls back with the flow. With ``wait`` it waits for the lock instead
    (PostgreSQL): a holder commits within one batch, which is sooner than polling for another
    worker to integrate the entry; ``direct`` needs it. Call it last, holding no lock another
    integration could need."""
    if direct and not wait:
        raise ValueError("direct entries need wait=True: nothing else would integrate them")
    store = AuditStore(conn)
    if store.is_postgres:
        if wait:
            await _WAIT_LOCK.run(conn)
        elif not (await _TRY_LOCK.run(conn)).scalar_one():
            return None  # another worker is integrating right now
    head: Head | None
    if direct and store.is_postgres:
        # Direct entries always need the head: it and the queue in one round trip.
        head, queued = await store.head_and_inbox(batch_size)
        if head is None:  # the log's first integration: no head row to join the queue to
            await store.ensure_head()
            head, queued = await store.head_and_inbox(batch_size)
    else:
        # The inbox first: an idle poll then costs one indexed read, not the head's root check.
        queued = await store.inbox_batch(batch_size)
        if not queued and not direct:
            return {}
        head = await store.head(for_update=True)
    batch = [*queued, *direct]
    if head is None:
        await store.ensure_head()
        head = await store.head(for_update=True)
        assert head is not None
    await _check_head_was_signed(store, head, signer, origin)
    compact = head.compact.copy()
    rows: list[LogRow] = []
    subtrees: list[Subtree] = []
    log_key = _log_key(origin)  # cached per origin
    for offset, item in enumerate(batch):
        seq = head.size + offset
        # Direct entries were encoded by this process just now (leaf_from_payload's parse=False).
        leaf = leaf_from_payload(item.payload, seq, log_key, parse=offset < len(queued))
        if leaf is None:
            # Appends validate events, so this is corruption: stop rather than skip an entry.
            raise AuditStoreError(f"audit entry with inbox id {item.id} is not a canonical event")
        digest = leaf_hash(leaf)
        compact.append(digest, subtrees)
        rows.append(LogRow(seq, leaf, digest, item.id))
    root = compact.root()
    note = signer.sign(Checkpoint(origin, compact.size, root))
    moved = Head(compact.size, root, compact, signer.head_mac(origin, compact.size, root))
    await store.integrate(rows, [item.id for item in queued], moved, note, subtrees)
    return {row.inbox_id: row.seq for row in rows}


async def _check_head_was_signed(
    store: AuditStore, head: Head, signer: CheckpointSigner, origin: str
) -> None:
    """Refuse to extend a head that this log never signed: the key must not sign a tree that
    forks from a published checkpoint because someone rewrote the head in the database (AUDIT.md
    §11). The head this process signed last passes at once, and so does one whose MAC is the
    key's (another worker signed it: one HMAC, where reading and verifying the Ed25519 note took
    ~0.8 ms inside the write lock of every batch with two workers; bench_ab measured 1.10x their
    requests/s on SQLite and 1.12x on PostgreSQL without it).
    Any other is compared with the signed note stored at its size (its signature verified, its
    root the one that counts, not the stored root column). A head that passes by its MAC needs
    no note: a note missing or damaged at its size is found by the export and the verifier, not
    here. A head rolled back below a stored checkpoint never gets here (AuditStore's head read
    refuses it); one rolled back together with its checkpoints is not caught: that needs a
    checkpoint kept outside the database, which is what auditors hold."""
    if signer.last_signed == (head.size, head.root):
        return
    if head.mac is not None and hmac.compare_digest(
        head.mac, signer.head_mac(origin, head.size, head.root)
    ):
        signer.last_signed = (head.size, head.root)
        return
    if head.size == 0:
        # The empty tree: the head read (AuditStore, _head_of) already refused an empty head
        # beside a larger checkpoint, and one whose root is not the empty tree's.
        return
    stored = await store.checkpoint_at(head.size)
    if stored is None:
        raise AuditStoreError(f"no signed checkpoint at the audit log head's size {head.size}")
    signed = stored.signed(signer.public_key, origin)
    if signed.size != head.size or signed.root != head.root:
        raise AuditStoreError(
            f"the audit log head at size {head.size} is not the tree its checkpoint signed: "
            "refusing to sign a fork"
        )
    signer.last_signed = (head.size, head.root)


@functools.lru_cache(maxsize=8)
def _log_key(origin: str) -> bytes:
    # RFC 8785 escaping of the origin, exactly as encode_entry writes it.
    probe = encode_entry(0, origin, _PROBE)
    return probe[probe.index(b',"log":') : probe.rindex(b',"subject":')]


def leaf_from_payload(
    payload: bytes, index: int, log_key: bytes, *, parse: bool = True
) -> bytes | None:
    """encode_entry(index, origin, payload_to_event(payload)) without re-canonicalising.

    The payload is canonical JSON with the sorted keys actor, data, kind, subject, time, v; the
    leaf adds index (before kind) and log (before subject). A JSON string never holds an
    unescaped quote, so the LAST ',"kind":"' and ',"subject":' are the top-level keys, and the
    leaf can be spliced from the payload's bytes: 2 µs instead of 100 µs of parsing and
    re-serialising per entry, which is what lets one integrator keep up with many writers.
    tests/audit/test_integrator.py proves it equal to encode_entry. Returns None for a payload
    that does not have that shape (then nothing is integrated, see integrate_once).

    ``parse=False`` leaves out the parse that proves the rest of the shape (~20,000 instructions
    for a decision's entry, 2.5 % of the decision): for a payload this process built with
    audit.entry's encoders a moment ago (integrate_in's ``direct`` entries), never one read
    from storage.
    """
    kind_at = payload.rfind(b',"kind":"')
    subject_at = payload.rfind(b',"subject":')
    if (
        kind_at < 0
        or subject_at < kind_at
        or not payload.startswith(b'{"actor":"')
        or not payload.endswith(b',"v":1}')
        or payload.find(b',"data":{', 0, kind_at) < 0
        or b"\n" in payload
    ):
        return None
    if not parse:
        return _spliced(payload, index, log_key, kind_at, subject_at)
    try:
        # msgspec's decoder: the same check as json.loads for what writers store (canonical
        # JSON, integers within ±(2**53-1)), a few µs less per entry.
        fields = _DECODE_JSON(payload)
    except msgspec.DecodeError:
        return None
    if not isinstance(fields, dict) or fields.keys() != _PAYLOAD_KEYS:
        return None
    return _spliced(payload, index, log_key, kind_at, subject_at)


def _spliced(payload: bytes, index: int, log_key: bytes, kind_at: int, subject_at: int) -> bytes:
    return b"".join(
        (
            payload[:kind_at],
            b',"index":%d' % index,
            payload[kind_at:subject_at],
            log_key,
            payload[subject_at:],
        )
    )


async def rebuild_subtrees(engine: AsyncEngine, chunk: int = 65_536) -> int:
    """Recompute every stored subtree root from the leaf hashes, holding the integration lock
    (no batch moves the log meanwhile), and replace the stored ones: the repair for a root that
    served proofs found wrong (audit.proofs logs it). Refuses, changing nothing, when the leaves
    do not reproduce the head's root. Returns how many roots are stored."""
    async with engine.begin() as conn:
        store = AuditStore(conn)
        if store.is_postgres:
            await _WAIT_LOCK.run(conn)
        head = await store.head(for_update=True)
        if head is None:
            return 0
        compact = CompactRange.empty()
        subtrees: list[Subtree] = []
        for low in range(0, head.size, chunk):
            for digest in await store.leaf_hashes(low, min(head.size, low + chunk)):
                compact.append(digest, subtrees)
        if compact.root() != head.root:
            raise AuditStoreError(
                "the leaf hashes do not reproduce the head's root: subtree roots left unchanged"
            )
        await store.replace_subtrees(subtrees)
    return len(subtrees)


async def integrate_all(
    engine: AsyncEngine, signer: CheckpointSigner, origin: str, batch_size: int = DEFAULT_BATCH_SIZE
) -> int:
    """Integrate batches until the inbox is empty (or another worker holds the lock)."""
    total = 0
    while True:
        count = await integrate_once(engine, signer, origin, batch_size)
        total += count
        if count < batch_size:
            return total


async def run(
    engine: AsyncEngine,
    signer: CheckpointSigner,
    origin: str,
    stop_event: asyncio.Event,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    interval: float = 0.1,
) -> None:
    """Integrate until ``stop_event`` is set: back to back while there is a backlog, else poll.

    A failed batch is logged with its traceback and retried after a back-off; its inbox rows stay
    queued, so an outage delays entries but never drops them.
    """
    failures = 0
    while not stop_event.is_set():
        try:
            count = await integrate_once(engine, signer, origin, batch_size)
            failures = 0
        except (AuditStoreError, ValueError):
            # An invariant is broken: retrying cannot fix it and must not paper over it.
            log.exception("audit integrator stopped: the stored log is inconsistent")
            raise
        except Exception:
            failures += 1
            log.exception("audit integration failed (attempt %d); retrying", failures)
            count = 0
        if count >= batch_size:
            continue  # more is waiting
        delay = interval if failures == 0 else min(30.0, interval * 2**failures)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), timeout=delay)


async def wait_integrated(
    engine: AsyncEngine,
    inbox_id: int,
    *,
    integrate: Callable[[], Awaitable[int]] | None = None,
    timeout: float = 5.0,
    poll: float = 0.01,
) -> int:
    """Return the log index the entry queued as ``inbox_id`` received, waiting for it.

    Pass ``integrate`` (e.g. ``lambda: integrate_once(engine, signer, origin)``) to integrate the
    pending batch right away instead of waiting for the background integrator's next poll: if
    another worker holds the lock it does nothing and we wait for that worker's batch.
    """
    deadline = time.monotonic() + timeout
    while True:
        async with engine.connect() as conn:
            index = await AuditStore(conn).index_of(inbox_id)
        if index is not None:
            return index
        if time.monotonic() >= deadline:
            raise NotIntegratedError(f"audit inbox entry {inbox_id} not integrated in {timeout} s")
        if integrate is not None and await integrate():
            continue
        await asyncio.sleep(poll)


class BackgroundIntegrator:
    """The integrator as a task inside a service worker; every worker may run one.

    On PostgreSQL the workers' batches take turns through the advisory lock (the losers'
    integrate_once returns 0 at once); on SQLite through BEGIN IMMEDIATE.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        signer: CheckpointSigner,
        origin: str,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = 0.1,
    ) -> None:
        self._args = (engine, signer, origin)
        self._batch_size = batch_size
        self._interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("the integrator is already running")
        self._task = asyncio.create_task(
            run(
                *self._args,
                self._stop,
                batch_size=self._batch_size,
                interval=self._interval,
            ),
            name="audit-integrator",
        )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop after the current batch; re-raises what stopped the loop, if anything did."""
        if self._task is None:
            return
        self._stop.set()
        task, self._task = self._task, None
        await task
