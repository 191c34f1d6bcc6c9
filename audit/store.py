"""The audit log's tables and the queries on them (SQLAlchemy 2 Core, SQLite and PostgreSQL).

Writers INSERT into ``audit_inbox``, inside their own transaction (a transactional outbox,
AUDIT.md §7.2 pattern D). The integrator (audit/integrator.py) is the only writer of
``audit_log``, ``audit_subtrees``, ``audit_head`` and ``audit_checkpoints``; it gives entries
their positions, so no position ever comes from a sequence (sequences have gaps and commit out of
order, AUDIT.md §7.1). A writer that integrates in its own transaction anyway (a decision batch)
hands its entries to the integration directly instead of through the inbox, under ids reserved
from the inbox's id sequence: every entry has an inbox id either way, never reused.
``audit_log.seq`` is the primary key and ``check_contiguity`` is the last line of defence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    bindparam,
    cast,
    column,
    delete,
    func,
    insert,
    literal,
    select,
    table,
    true,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from audit.entry import AuditEvent, event_to_payload
from audit.hot_sql import HotStatement
from audit.merkle import EMPTY_ROOT, HASH_SIZE, CompactRange, Subtree

# The same convention as service.persistence, so one Alembic environment can hold both.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

audit_metadata = MetaData(naming_convention=NAMING_CONVENTION)

# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" is the rowid (clustered,
# and what AUTOINCREMENT needs).
_Id = BigInteger().with_variant(Integer(), "sqlite")

HEAD_ID = 1
# IN lists are bounded: SQLite caps bound parameters and huge lists plan badly on PostgreSQL.
_IN_CHUNK = 1000
_SUBTREE_CHUNK = 10_000  # rows per INSERT of subtree roots (a rebuild writes them all)

audit_inbox = Table(
    "audit_inbox",
    audit_metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    # event_to_payload(event): canonical JSON without index and origin.
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Ids are never reused (SQLite reuses max(rowid)+1 without it once the inbox drains), so an
    # inbox id names one entry forever and wait_integrated can find it in audit_log.
    sqlite_autoincrement=True,
)

audit_log = Table(
    "audit_log",
    audit_metadata,
    # The entry's index: assigned by the integrator, contiguous from 0, never from a sequence.
    Column("seq", _Id, primary_key=True, autoincrement=False),
    Column("leaf", LargeBinary, nullable=False),  # the exact leaf bytes, the export line
    Column("leaf_hash", LargeBinary(HASH_SIZE), nullable=False),
    Column("inbox_id", BigInteger, nullable=False, unique=True),
    Column("integrated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("seq >= 0", name="seq_non_negative"),
)

audit_head = Table(
    "audit_head",
    audit_metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(HASH_SIZE), nullable=False),
    # CompactRange.to_lines(): popcount(size) base64 hashes, so appends never re-read the log.
    Column("compact_range", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # CheckpointSigner.head_mac of (origin, size, root), written with the head by the process
    # that signed it: another process holding the key accepts the head by it (integrator).
    # NULL for the empty head and for heads written before the column existed.
    Column("mac", LargeBinary(HASH_SIZE), nullable=True),
    CheckConstraint(f"id = {HEAD_ID}", name="single_row"),
)

# The roots of the log's aligned perfect subtrees of 2**8, 2**16, ... leaves (merkle.SUBTREE_STEP),
# written by the integrator as it completes them: proofs and delta exports read these instead of
# every leaf hash. Derived data: each is recomputable from audit_log.leaf_hash.
audit_subtrees = Table(
    "audit_subtrees",
    audit_metadata,
    Column("height", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(HASH_SIZE), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    audit_metadata,
    Column("size", _Id, primary_key=True, autoincrement=False),
    Column("root", LargeBinary(HASH_SIZE), nullable=False),
    Column("note", Text, nullable=False),  # the C2SP signed note, verbatim
    Column("created_at", DateTime(timezone=True), nullable=False),
)


class AuditStoreError(RuntimeError):
    """The stored log breaks an invariant (gap, duplicate, head out of step): stop and alert."""


class Head(msgspec.Struct, frozen=True):
    size: int
    root: bytes
    compact: CompactRange
    # The signer's head_mac of (origin, size, root), or None (see audit_head.mac).
    mac: bytes | None = None


class InboxRow(msgspec.Struct, frozen=True):
    id: int
    payload: bytes


class LogRow(msgspec.Struct, frozen=True):
    seq: int
    leaf: bytes
    leaf_hash: bytes
    inbox_id: int


class StoredCheckpoint(msgspec.Struct, frozen=True):
    size: int
    root: bytes
    note: str

    def signed(self, public_key: Ed25519PublicKey, origin: str) -> Checkpoint:
        """What the note signs, its signature verified: the size and root that count, not the
        columns stored beside it. AuditStoreError when the note does not verify."""
        try:
            return verify_checkpoint(self.note, public_key, origin)
        except CheckpointError as exc:
            message = f"the stored checkpoint of size {self.size} does not verify: {exc}"
            raise AuditStoreError(message) from None


async def create_schema(engine: AsyncEngine) -> None:
    """Create the audit tables and the empty head (tests and development; Alembic in production)."""
    async with engine.begin() as conn:
        await conn.run_sync(audit_metadata.create_all)
        await AuditStore(conn).ensure_head()


async def append_event(conn: AsyncConnection, event: AuditEvent) -> int:
    """Queue an event in the caller's transaction and return its inbox id.

    The entry commits or rolls back with the caller's business change; the integrator gives it
    its index later (see audit.integrator.wait_integrated).
    """
    return await AuditStore(conn).enqueue(event_to_payload(event))


async def append_event_now(engine: AsyncEngine, event: AuditEvent) -> int:
    """Queue an event in its own short transaction, for events that must outlive a rollback.

    Returns once the commit succeeded; a failed commit raises (it is never retried silently).
    On SQLite call it after the flow's own transaction has ended, not inside it: the engine has
    one connection per process, so a second transaction would wait for the first one forever
    (until the pool timeout raises). Many concurrent callers: use GroupAppender.append.
    """
    async with engine.begin() as conn:
        return await append_event(conn, event)


class GroupAppender:
    """Group commit for own-transaction appends: concurrent callers in one process share one.

    ``append`` has append_event_now's contract — it returns the inbox id only after the commit
    that holds the entry succeeded, and a failed commit raises in every caller of that batch —
    but one transaction carries every append that arrived while the previous one was
    committing. No timer: an idle appender commits at once; a busy one batches by itself. A
    worker with many requests in flight then pays one commit per batch instead of per entry,
    which is what SQLite (one writer at a time) needs to get past ~1,000 appends/s.
    """

    __slots__ = ("_engine", "_flusher", "_max_batch", "_pending")

    def __init__(self, engine: AsyncEngine, *, max_batch: int = 1000) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, event: AuditEvent) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((event_to_payload(event), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                async with self._engine.begin() as conn:
                    ids = await AuditStore(conn).enqueue_batch([payload for payload, _ in batch])
            except asyncio.CancelledError:
                # Shutting down: nobody may wait forever for an acknowledgement.
                for _, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:
                # Every caller of this batch gets the failure; none of its rows committed.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), inbox_id in zip(batch, ids, strict=True):
                if not future.done():  # a cancelled caller: its entry is committed regardless
                    future.set_result(inbox_id)


# The statements every decision and proof runs, built once and run in place on SQLite
# (audit.hot_sql): constructing a statement, and SQLAlchemy's execution of it, cost more Python
# time than SQLite needs to execute it.
_INSERT_INBOX = HotStatement("audit_inbox.insert", insert(audit_inbox).returning(audit_inbox.c.id))
_INSERT_INBOX_RETURNING_IN_ORDER = insert(audit_inbox).returning(
    audit_inbox.c.id, sort_by_parameter_order=True
)
_INSERT_INBOX_RETURNING_PAYLOAD = insert(audit_inbox).returning(
    audit_inbox.c.id, audit_inbox.c.payload
)
_INSERT_LOG = HotStatement("audit_log.insert", insert(audit_log))
_INSERT_CHECKPOINT = HotStatement("audit_checkpoints.insert", insert(audit_checkpoints))
_INSERT_SUBTREES = HotStatement("audit_subtrees.insert", insert(audit_subtrees))
# With the largest signed size (the checkpoints' primary key, so one index probe): _head_of
# refuses a head rolled back below a checkpoint the log's key signed.
_HEAD_SELECT = select(
    audit_head.c.size,
    audit_head.c.root,
    audit_head.c.compact_range,
    audit_head.c.mac,
    select(func.max(audit_checkpoints.c.size)).scalar_subquery().label("signed_size"),
).where(audit_head.c.id == HEAD_ID)
_HEAD = HotStatement("audit_head.get", _HEAD_SELECT)
_HEAD_FOR_UPDATE = HotStatement("audit_head.get_for_update", _HEAD_SELECT.with_for_update())
# The oldest queued inbox rows, up to ``limit``.
_INBOX_SELECT = (
    select(audit_inbox.c.id, audit_inbox.c.payload)
    .order_by(audit_inbox.c.id)
    .limit(bindparam("limit", type_=Integer))
)
_INBOX_BATCH = HotStatement("audit_inbox.batch", _INBOX_SELECT)
# PostgreSQL, for an integration with direct entries (which always needs the head): the head,
# locked, and the queued inbox rows in one round trip, a row per inbox row (the head's columns
# repeated) or one with no inbox columns when the inbox is empty. The lock is taken before the
# statement (integrate_in), so its snapshot sees the previous integration's commit.
_QUEUED = _INBOX_SELECT.lateral("queued")
_HEAD_WITH_INBOX_PG = HotStatement(
    "audit_head.with_inbox_pg",
    _HEAD_SELECT.add_columns(_QUEUED.c.id.label("inbox_id"), _QUEUED.c.payload)
    .select_from(audit_head.outerjoin(_QUEUED, true()))
    .order_by(_QUEUED.c.id)
    .with_for_update(of=audit_head),
    only_on="postgresql",
)
# The head moved from the size the batch read to its new state; nothing if it moved meanwhile.
_HEAD_MOVE = (
    update(audit_head)
    .where(audit_head.c.id == HEAD_ID, audit_head.c.size == bindparam("old_size"))
    .values(
        size=bindparam("new_size"),
        root=bindparam("new_root"),
        compact_range=bindparam("new_compact"),
        updated_at=bindparam("now"),
        mac=bindparam("new_mac"),
    )
)
_MOVE_HEAD = HotStatement("audit_head.move", _HEAD_MOVE)
# PostgreSQL: the batch's log rows inserted, the head moved and its checkpoint inserted in one
# round trip (inside the integration lock, where each statement was ~140 µs of the worker's CPU
# and a wait; the rows were one execution each). The rows come as one array per column; the
# checkpoint row is written only if the head moved, from what the move returned (had it not, the
# caller raises and its transaction, these rows with it, rolls back).
_MOVED = _HEAD_MOVE.returning(audit_head.c.size, audit_head.c.root, audit_head.c.updated_at).cte(
    "moved"
)
_BATCH_ROWS = (
    func.unnest(
        bindparam("seqs", type_=postgresql.ARRAY(BigInteger)),
        bindparam("leaves", type_=postgresql.ARRAY(LargeBinary)),
        bindparam("leaf_hashes", type_=postgresql.ARRAY(LargeBinary)),
        bindparam("inbox_ids", type_=postgresql.ARRAY(BigInteger)),
    )
    .table_valued("seq", "leaf", "leaf_hash", "inbox_id")
    .render_derived(name="batch_rows")
)
_LOGGED = (
    insert(audit_log)
    .from_select(
        ["seq", "leaf", "leaf_hash", "inbox_id", "integrated_at"],
        select(
            _BATCH_ROWS.c.seq,
            _BATCH_ROWS.c.leaf,
            _BATCH_ROWS.c.leaf_hash,
            _BATCH_ROWS.c.inbox_id,
            bindparam("now", type_=DateTime(timezone=True)),
        ),
    )
    .cte("logged")
)
_LOG_MOVE_AND_CHECKPOINT_PG = HotStatement(
    "audit_head.log_move_and_checkpoint_pg",
    insert(audit_checkpoints)
    .add_cte(_LOGGED)
    .add_cte(_MOVED)
    .from_select(
        ["size", "root", "note", "created_at"],
        select(_MOVED.c.size, _MOVED.c.root, bindparam("note", type_=Text), _MOVED.c.updated_at),
    )
    .returning(audit_checkpoints.c.size),
    only_on="postgresql",
)
# Expanding IN: rendered per execution, so SQLAlchemy runs it (once per batch).
_DELETE_INBOX = delete(audit_inbox).where(audit_inbox.c.id.in_(bindparam("ids", expanding=True)))
# Inbox ids for entries handed to the integration directly (reserve_inbox_ids). SQLite: the
# AUTOINCREMENT counter, which a later INSERT continues from; PostgreSQL: the id column's sequence.
_sqlite_sequence = table("sqlite_sequence", column("name", Text), column("seq", Integer))
_RESERVE_IDS_SQLITE = HotStatement(
    "audit_inbox.reserve_ids_sqlite",
    update(_sqlite_sequence)
    .where(_sqlite_sequence.c.name == "audit_inbox")
    .values(seq=_sqlite_sequence.c.seq + bindparam("count", type_=Integer))
    .returning(_sqlite_sequence.c.seq),
    only_on="sqlite",
)
_SEED_SEQUENCE_SQLITE = insert(_sqlite_sequence).from_select(
    ["name", "seq"], select(literal("audit_inbox"), func.coalesce(func.max(audit_inbox.c.id), 0))
)
# The sequence is looked up once per statement (a scalar subquery), not once per id: 1,024 ids
# took 9.7 ms with the lookup per row, 1.0 ms without (psql, warm).
_INBOX_SEQUENCE = select(
    cast(func.pg_get_serial_sequence("audit_inbox", "id"), postgresql.REGCLASS)
).scalar_subquery()
_RESERVE_IDS_PG = HotStatement(
    "audit_inbox.reserve_ids_pg",
    select(func.nextval(_INBOX_SEQUENCE)).select_from(
        func.generate_series(1, bindparam("count", type_=Integer))
    ),
    only_on="postgresql",
)
_INDEX_OF = HotStatement(
    "audit_log.index_of",
    select(audit_log.c.seq).where(audit_log.c.inbox_id == bindparam("inbox_id")),
)


def _head_of(row: Any) -> Head:
    if row.signed_size is not None and row.signed_size > row.size:
        # Extending it would sign a tree that forks from the checkpoints above it.
        raise AuditStoreError(
            f"audit_head: size {row.size} is behind the signed checkpoint of size "
            f"{row.signed_size} (rolled back)"
        )
    compact = CompactRange.from_lines(int(row.size), row.compact_range)
    if compact.root() != row.root:
        raise AuditStoreError("audit_head: root does not match its compact range")
    return Head(
        int(row.size), bytes(row.root), compact, None if row.mac is None else bytes(row.mac)
    )


class AuditStore:
    """Every query on the audit tables, on the caller's connection and transaction."""

    __slots__ = ("_conn",)

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    @property
    def is_postgres(self) -> bool:
        return self._conn.dialect.name == "postgresql"

    # -- writers ---------------------------------------------------------------------------

    async def enqueue(self, payload: bytes) -> int:
        result = await _INSERT_INBOX.run(
            self._conn, {"payload": payload, "created_at": datetime.now(UTC)}
        )
        return int(result.scalar_one())

    async def enqueue_batch(self, payloads: Sequence[bytes]) -> list[int]:
        """Insert several payloads in one statement; their ids in the same order."""
        now = datetime.now(UTC)
        rows = [{"payload": p, "created_at": now} for p in payloads]
        if self.is_postgres:
            # SQLAlchemy orders RETURNING by parameter position on PostgreSQL (sentinel column).
            result = await self._conn.execute(_INSERT_INBOX_RETURNING_IN_ORDER, rows)
            return [int(row.id) for row in result]
        # SQLite: SQLAlchemy would fall back to one INSERT per row for an ordered RETURNING
        # (6x slower). Under BEGIN IMMEDIATE this is the only writer and AUTOINCREMENT gives the
        # VALUES rows ascending ids in order, so sorting the ids restores the input order; the
        # payload comparison proves it rather than trusting it.
        result = await self._conn.execute(_INSERT_INBOX_RETURNING_PAYLOAD, rows)
        returned = sorted((int(row.id), bytes(row.payload)) for row in result)
        if [payload for _, payload in returned] != list(payloads):
            raise AuditStoreError("inbox ids came back out of insertion order")
        return [inbox_id for inbox_id, _ in returned]

    async def reserve_inbox_ids(self, count: int) -> list[int]:
        """``count`` inbox ids that no inbox row will ever take, for entries handed to the
        integration directly (integrator.integrate_in's ``direct``). SQLite: call it under the
        write lock (any transaction of this engine holds it)."""
        if count < 1:
            return []
        if self.is_postgres:
            return [int(row[0]) for row in await _RESERVE_IDS_PG.run(self._conn, {"count": count})]
        last = (await _RESERVE_IDS_SQLITE.run(self._conn, {"count": count})).scalar()
        if last is None:  # this database never drew an inbox id: start its counter
            await self._conn.execute(_SEED_SEQUENCE_SQLITE)
            last = (await _RESERVE_IDS_SQLITE.run(self._conn, {"count": count})).scalar_one()
        return list(range(int(last) - count + 1, int(last) + 1))

    async def enqueue_many(self, payloads: Sequence[bytes]) -> None:
        """Bulk insert (benchmarks and seeding); ids are not returned."""
        now = datetime.now(UTC)
        await self._conn.execute(
            insert(audit_inbox), [{"payload": p, "created_at": now} for p in payloads]
        )

    # -- integrator ------------------------------------------------------------------------

    async def ensure_head(self) -> None:
        """Insert the empty head if absent (callers hold the integration lock or run DDL)."""
        exists = (
            await self._conn.execute(select(audit_head.c.id).where(audit_head.c.id == HEAD_ID))
        ).first()
        if exists is None:
            await self._conn.execute(
                insert(audit_head).values(
                    id=HEAD_ID,
                    size=0,
                    root=EMPTY_ROOT,
                    compact_range="",
                    updated_at=datetime.now(UTC),
                )
            )

    async def head(self, *, for_update: bool = False) -> Head | None:
        # FOR UPDATE re-reads the newest version after waiting, so a second integrator cannot
        # fork (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes other writers).
        query = _HEAD_FOR_UPDATE if for_update and self.is_postgres else _HEAD
        row = (await query.run(self._conn)).first()
        return None if row is None else _head_of(row)

    async def head_and_inbox(self, limit: int) -> tuple[Head | None, list[InboxRow]]:
        """PostgreSQL: ``head(for_update=True)`` and ``inbox_batch(limit)`` in one statement."""
        rows = (await _HEAD_WITH_INBOX_PG.run(self._conn, {"limit": limit})).all()
        if not rows:
            return None, []
        queued = [
            InboxRow(int(r.inbox_id), bytes(r.payload)) for r in rows if r.inbox_id is not None
        ]
        return _head_of(rows[0]), queued

    async def inbox_batch(self, limit: int) -> list[InboxRow]:
        # All visible rows in id order, never "id > watermark": on PostgreSQL a smaller id can
        # commit later, and a watermark would skip it forever.
        rows = await _INBOX_BATCH.run(self._conn, {"limit": limit})
        return [InboxRow(int(r.id), bytes(r.payload)) for r in rows]

    async def integrate(
        self,
        rows: Sequence[LogRow],
        consumed: Sequence[int],
        head: Head,
        note: str,
        subtrees: Sequence[Subtree] = (),
    ) -> None:
        """Write one batch: log rows, the subtrees they complete, the new head, its checkpoint;
        delete the consumed inbox."""
        now = datetime.now(UTC)
        await self._insert_subtrees(subtrees)
        move = {
            "old_size": rows[0].seq,
            "new_size": head.size,
            "new_root": head.root,
            "new_compact": head.compact.to_lines(),
            "now": now,
            "new_mac": head.mac,
        }
        if self.is_postgres:
            columns = {
                "seqs": [r.seq for r in rows],
                "leaves": [r.leaf for r in rows],
                "leaf_hashes": [r.leaf_hash for r in rows],
                "inbox_ids": [r.inbox_id for r in rows],
            }
            moved = await _LOG_MOVE_AND_CHECKPOINT_PG.run(
                self._conn, {**move, **columns, "note": note}
            )
            if moved.first() is None:
                raise AuditStoreError("audit_head moved during integration")
        else:
            await _INSERT_LOG.run(
                self._conn,
                [
                    {
                        "seq": r.seq,
                        "leaf": r.leaf,
                        "leaf_hash": r.leaf_hash,
                        "inbox_id": r.inbox_id,
                        "integrated_at": now,
                    }
                    for r in rows
                ],
            )
            if (await _MOVE_HEAD.run(self._conn, move)).rowcount != 1:
                raise AuditStoreError("audit_head moved during integration")
            await _INSERT_CHECKPOINT.run(
                self._conn,
                {"size": head.size, "root": head.root, "note": note, "created_at": now},
            )
        for start in range(0, len(consumed), _IN_CHUNK):
            chunk = consumed[start : start + _IN_CHUNK]
            deleted = await self._conn.execute(_DELETE_INBOX, {"ids": chunk})
            if deleted.rowcount != len(chunk):
                raise AuditStoreError("inbox rows vanished during integration")

    # -- readers ---------------------------------------------------------------------------

    async def size(self) -> int:
        head = await self.head()
        return 0 if head is None else head.size

    async def backlog(self) -> int:
        return int(
            (await self._conn.execute(select(func.count()).select_from(audit_inbox))).scalar_one()
        )

    async def index_of(self, inbox_id: int) -> int | None:
        row = (await _INDEX_OF.run(self._conn, {"inbox_id": inbox_id})).first()
        return None if row is None else int(row.seq)

    async def leaves(self, start: int, end: int) -> list[bytes]:
        """Leaf bytes [start, end) in order; raises if any is missing."""
        rows = await self._conn.execute(
            select(audit_log.c.leaf)
            .where(audit_log.c.seq >= start, audit_log.c.seq < end)
            .order_by(audit_log.c.seq)
        )
        leaves = [bytes(leaf) for (leaf,) in rows]
        if len(leaves) != end - start:
            raise AuditStoreError(f"audit_log: {len(leaves)} rows for [{start}, {end})")
        return leaves

    async def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        rows = await self._conn.execute(
            select(audit_log.c.leaf_hash)
            .where(audit_log.c.seq >= start, audit_log.c.seq < end)
            .order_by(audit_log.c.seq)
        )
        hashes = [bytes(digest) for (digest,) in rows]
        if len(hashes) != end - start:
            raise AuditStoreError(f"audit_log: {len(hashes)} hashes for [{start}, {end})")
        return hashes

    async def replace_subtrees(self, subtrees: Sequence[Subtree]) -> None:
        """Delete every stored subtree root and store these instead (callers hold the
        integration lock: see integrator.rebuild_subtrees)."""
        await self._conn.execute(delete(audit_subtrees))
        await self._insert_subtrees(subtrees)

    async def _insert_subtrees(self, subtrees: Sequence[Subtree]) -> None:
        for start in range(0, len(subtrees), _SUBTREE_CHUNK):
            await _INSERT_SUBTREES.run(
                self._conn,
                [
                    {"height": height, "idx": idx, "root": root}
                    for height, idx, root in subtrees[start : start + _SUBTREE_CHUNK]
                ],
            )

    async def subtree_roots(self, height: int, start: int, end: int) -> list[bytes]:
        """Stored subtree roots of ``height`` with indices [start, end) in order (only those
        stored: the caller compares the count)."""
        rows = await self._conn.execute(
            select(audit_subtrees.c.root)
            .where(
                audit_subtrees.c.height == height,
                audit_subtrees.c.idx >= start,
                audit_subtrees.c.idx < end,
            )
            .order_by(audit_subtrees.c.idx)
        )
        return [bytes(root) for (root,) in rows]

    async def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = (
            await self._conn.execute(
                select(audit_checkpoints.c.size, audit_checkpoints.c.root, audit_checkpoints.c.note)
                .order_by(audit_checkpoints.c.size.desc())
                .limit(1)
            )
        ).first()
        return None if row is None else StoredCheckpoint(int(row.size), bytes(row.root), row.note)

    async def checkpoint_at(self, size: int) -> StoredCheckpoint | None:
        row = (
            await self._conn.execute(
                select(
                    audit_checkpoints.c.size, audit_checkpoints.c.root, audit_checkpoints.c.note
                ).where(audit_checkpoints.c.size == size)
            )
        ).first()
        return None if row is None else StoredCheckpoint(int(row.size), bytes(row.root), row.note)

    async def check_contiguity(self) -> int:
        """Raise unless indices are exactly 0..size-1 and match the head; return the size."""
        count, low, high = (
            await self._conn.execute(
                select(func.count(), func.min(audit_log.c.seq), func.max(audit_log.c.seq))
            )
        ).one()
        size = await self.size()
        if count != size or (count and (low != 0 or high != count - 1)):
            raise AuditStoreError(
                f"audit_log is not contiguous: {count} rows, min {low}, max {high}, "
                f"head size {size}"
            )
        return size


class InboxIdBlock:
    """Inbox ids for direct entries (AuditStore.reserve_inbox_ids), drawn ahead on PostgreSQL.

    There each reservation is a round trip to the id column's sequence, which a decision batch
    waits for inside its transaction (~0.5 ms of a batch's ~11 ms with one worker); here a
    process draws ``block`` at a time and hands them out as batches need them. A sequence never
    gives a value twice, whatever commits or rolls back, so ids drawn and never used are gaps,
    as any rolled-back nextval leaves. SQLite's reservation runs in place under the write lock
    (no round trip) and keeps its counter exact: it is called as it was. One per process and
    database (ServiceContext)."""

    __slots__ = ("_block", "_ids")

    def __init__(self, block: int = 1024) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self._block = block
        self._ids: list[int] = []

    async def take(self, store: AuditStore, count: int) -> list[int]:
        if not store.is_postgres:
            return await store.reserve_inbox_ids(count)
        while len(self._ids) < count:
            # Another coroutine may draw or take meanwhile: the list is looked up after the
            # draw (``self._ids += await ...`` would extend the one read before it).
            drawn = await store.reserve_inbox_ids(max(count, self._block))
            self._ids.extend(drawn)
        # No await from the check to here: no other coroutine takes these.
        taken, self._ids = self._ids[:count], self._ids[count:]
        return taken


class ThreadLeafSource:
    """A synchronous merkle.SubtreeSource over the database, for code running in a worker thread.

    Proof generation is synchronous and CPU-bound, so it runs in a thread; each slice it asks for
    is read on the event loop in its own short transaction (the log below the head never changes).
    """

    __slots__ = ("_engine", "_loop", "_size")

    def __init__(self, engine: AsyncEngine, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._engine = engine
        self._loop = loop
        self._size = size

    def leaf_hashes(self, start: int, end: int) -> Sequence[bytes]:
        if not 0 <= start <= end <= self._size:
            raise AuditStoreError(
                f"leaf range [{start}, {end}) is outside the tree of {self._size}"
            )
        return asyncio.run_coroutine_threadsafe(
            _read_hashes(self._engine, start, end), self._loop
        ).result()

    def subtree_roots(self, height: int, start: int, end: int) -> Sequence[bytes]:
        if not (0 <= start <= end and end << height <= self._size):
            raise AuditStoreError(
                f"subtrees [{start}, {end}) of height {height} are outside the tree of {self._size}"
            )
        return asyncio.run_coroutine_threadsafe(
            _read_subtrees(self._engine, height, start, end), self._loop
        ).result()


async def _read_hashes(engine: AsyncEngine, start: int, end: int) -> list[bytes]:
    async with engine.connect() as conn:
        return await AuditStore(conn).leaf_hashes(start, end)


async def _read_subtrees(engine: AsyncEngine, height: int, start: int, end: int) -> list[bytes]:
    async with engine.connect() as conn:
        return await AuditStore(conn).subtree_roots(height, start, end)
