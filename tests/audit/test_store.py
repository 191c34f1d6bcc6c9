"""The audit store and integrator on real SQLite and PostgreSQL: appends, batches, checkpoints."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checkpoint import CheckpointSigner, verify_checkpoint
from audit.entry import AuditEvent, EntryKind, decode_entry
from audit.integrator import NotIntegratedError, integrate_all, integrate_once, wait_integrated
from audit.merkle import consistency_proof, inclusion_proof, leaf_hash, root_from_leaf_hashes
from audit.store import (
    AuditStore,
    AuditStoreError,
    GroupAppender,
    ThreadLeafSource,
    append_event,
    append_event_now,
    audit_inbox,
    audit_log,
    audit_subtrees,
    create_schema,
)
from service.db import create_engine

ORIGIN = "test.fairunlock/audit"
T = TypeVar("T")


def make_event(n: int, *, subject: str | None = "subj", actor: str = "tester") -> AuditEvent:
    return AuditEvent(EntryKind.DECISION, actor, subject, {"n": n}, datetime.now(UTC))


def make_signer() -> CheckpointSigner:
    return CheckpointSigner(ORIGIN, Ed25519PrivateKey.generate())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


def with_engine(url: str, body: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(url)
        try:
            await create_schema(engine)
            return await body(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def count(engine: AsyncEngine, table: Any) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def failing_flow(engine: AsyncEngine, survivors: list[int] | None = None) -> None:
    """A business transaction that appends an entry, optionally one in its own tx, then fails."""
    async with engine.begin() as conn:
        await append_event(conn, make_event(1))
        if survivors is not None:
            survivors.append(await append_event_now(engine, make_event(2)))
        raise RuntimeError("business failure")


def test_append_event_commits_and_rolls_back_with_the_callers_transaction(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            kept = await append_event(conn, make_event(1))
        with pytest.raises(RuntimeError, match="business failure"):
            await failing_flow(engine)
        async with engine.connect() as conn:
            ids = [r.id for r in await conn.execute(select(audit_inbox.c.id))]
        assert ids == [kept]

    with_engine(db_url, body)


def test_append_event_now_survives_the_flows_rollback(db_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        with pytest.raises(RuntimeError, match="business failure"):
            await failing_flow(engine)
        # A failed verification attempt is recorded in its own transaction after the rollback.
        # (On SQLite it must not be called while the flow's transaction is open: the engine has
        # one connection and BEGIN IMMEDIATE would wait for the flow's own write lock.)
        survivor = await append_event_now(engine, make_event(2))
        async with engine.connect() as conn:
            ids = [r.id for r in await conn.execute(select(audit_inbox.c.id))]
        assert ids == [survivor]

    with_engine(db_url, body)


@pytest.mark.postgres
def test_append_event_now_commits_while_the_flows_transaction_is_open(postgres_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        survivors: list[int] = []
        with pytest.raises(RuntimeError, match="business failure"):
            await failing_flow(engine, survivors)
        [survivor] = survivors
        async with engine.connect() as conn:
            ids = [r.id for r in await conn.execute(select(audit_inbox.c.id))]
        assert ids == [survivor]

    with_engine(postgres_url, body)


def test_integrator_assigns_contiguous_indices_and_signs_each_batch(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        ids = [await append_event_now(engine, make_event(n)) for n in range(7)]
        assert await integrate_once(engine, signer, ORIGIN, batch_size=3) == 3
        assert await integrate_all(engine, signer, ORIGIN, batch_size=3) == 4
        assert await integrate_once(engine, signer, ORIGIN, batch_size=3) == 0
        assert await count(engine, audit_inbox) == 0
        async with engine.connect() as conn:
            store = AuditStore(conn)
            assert await store.check_contiguity() == 7
            leaves = await store.leaves(0, 7)
            latest = await store.latest_checkpoint()
            first = await store.checkpoint_at(3)
            assert [await store.index_of(i) for i in ids] == list(range(7))
        # Leaves are in inbox order, carry their index and origin, and hash to the signed root.
        for index, leaf in enumerate(leaves):
            entry = decode_entry(leaf)
            assert (entry["index"], entry["log"], entry["data"]) == (index, ORIGIN, {"n": index})
        assert latest is not None
        assert first is not None
        checkpoint = verify_checkpoint(latest.note, signer.public_key, ORIGIN)
        assert checkpoint.size == 7
        assert checkpoint.root == root_from_leaf_hashes([leaf_hash(x) for x in leaves])
        assert verify_checkpoint(first.note, signer.public_key, ORIGIN).root == (
            root_from_leaf_hashes([leaf_hash(x) for x in leaves[:3]])
        )

    with_engine(db_url, body)


def test_integration_keeps_the_roots_of_the_subtrees_it_completes(db_url: str) -> None:
    # Batches of 97 cross the 256-leaf boundaries mid-batch; proofs read through the store
    # (ThreadLeafSource, stored roots) equal proofs from the leaf hashes.
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            for n in range(600):
                await append_event(conn, make_event(n))
        assert await integrate_all(engine, signer, ORIGIN, batch_size=97) == 600
        async with engine.connect() as conn:
            hashes = await AuditStore(conn).leaf_hashes(0, 600)
            stored = (
                await conn.execute(
                    select(
                        audit_subtrees.c.height, audit_subtrees.c.idx, audit_subtrees.c.root
                    ).order_by(audit_subtrees.c.height, audit_subtrees.c.idx)
                )
            ).all()
        assert [(h, i, bytes(r)) for h, i, r in stored] == [
            (8, 0, root_from_leaf_hashes(hashes[:256])),
            (8, 1, root_from_leaf_hashes(hashes[256:512])),
        ]
        source = ThreadLeafSource(engine, asyncio.get_running_loop(), 600)
        for index, size in ((0, 600), (300, 600), (599, 600), (255, 513), (7, 257)):
            proof = await asyncio.to_thread(inclusion_proof, source, index, size)
            assert proof == inclusion_proof(hashes[:size], index, size)
        for first, second in ((1, 600), (256, 600), (300, 512), (513, 600)):
            proof = await asyncio.to_thread(consistency_proof, source, first, second)
            assert proof == consistency_proof(hashes[:second], first, second)

    with_engine(db_url, body)


def test_wait_integrated_reports_the_entrys_index(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        await integrate_once(engine, signer, ORIGIN)
        inbox_id = await append_event_now(engine, make_event(1))
        with pytest.raises(NotIntegratedError):
            await wait_integrated(engine, inbox_id, timeout=0.05)
        index = await wait_integrated(
            engine, inbox_id, integrate=lambda: integrate_once(engine, signer, ORIGIN)
        )
        assert index == 1

    with_engine(db_url, body)


def test_contiguity_check_detects_a_deleted_entry(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        for n in range(4):
            await append_event_now(engine, make_event(n))
        await integrate_once(engine, signer, ORIGIN)
        async with engine.begin() as conn:
            await conn.execute(delete(audit_log).where(audit_log.c.seq == 2))
        async with engine.connect() as conn:
            with pytest.raises(AuditStoreError, match="not contiguous"):
                await AuditStore(conn).check_contiguity()
            with pytest.raises(AuditStoreError, match="3 rows for"):
                await AuditStore(conn).leaves(0, 4)

    with_engine(db_url, body)


def test_inbox_ids_are_never_reused_after_the_inbox_drains(db_url: str) -> None:
    # wait_integrated finds an entry by inbox id, so a drained SQLite inbox must not restart at 1.
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        first = await append_event_now(engine, make_event(0))
        await integrate_once(engine, signer, ORIGIN)
        second = await append_event_now(engine, make_event(1))
        assert second > first
        await integrate_once(engine, signer, ORIGIN)
        assert await wait_integrated(engine, second) == 1

    with_engine(db_url, body)


async def append_then_get_killed(engine: AsyncEngine, admin: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await append_event(conn, make_event(1))
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with admin.begin() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # Leaving the block commits: on a killed connection that raises.


@pytest.mark.postgres
def test_killed_connection_before_commit_is_an_error_and_loses_nothing_else(
    postgres_url: str,
) -> None:
    async def body(engine: AsyncEngine) -> None:
        admin = create_engine(postgres_url)
        try:
            with pytest.raises(DBAPIError):
                await append_then_get_killed(engine, admin)
        finally:
            await admin.dispose()
        assert await count(engine, audit_inbox) == 0

    with_engine(postgres_url, body)


@pytest.mark.postgres
def test_failed_commit_of_append_event_now_raises_on_postgres(postgres_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        # A deferred constraint trigger fails at COMMIT itself, after the INSERT succeeded.
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'commit refused'; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT ON audit_inbox "
                    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
        with pytest.raises(DBAPIError, match="commit refused"):
            await append_event_now(engine, make_event(1))
        assert await count(engine, audit_inbox) == 0

    with_engine(postgres_url, body)


async def install_commit_refusal(engine: AsyncEngine) -> None:
    """SQLite: a deferred foreign key is checked at COMMIT: the INSERT succeeds, COMMIT fails."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE parent (id INTEGER PRIMARY KEY)"))
        await conn.execute(
            text(
                "CREATE TABLE child (parent_id INTEGER REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_commit AFTER INSERT ON audit_inbox "
                "BEGIN INSERT INTO child VALUES (-1); END"
            )
        )


def test_failed_commit_of_append_event_now_raises_on_sqlite(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        await install_commit_refusal(engine)
        with pytest.raises(DBAPIError, match="FOREIGN KEY constraint failed"):
            await append_event_now(engine, make_event(1))
        assert await count(engine, audit_inbox) == 0

    with_engine(sqlite_url, body)


def test_group_appender_acknowledges_each_entry_after_its_shared_commit(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        appender = GroupAppender(engine, max_batch=64)
        ids = await asyncio.gather(*(appender.append(make_event(n)) for n in range(300)))
        assert len(set(ids)) == 300
        await integrate_all(engine, signer, ORIGIN)
        async with engine.connect() as conn:
            store = AuditStore(conn)
            indices = [await store.index_of(i) for i in ids]
            leaves = await store.leaves(0, 300)
        # Each caller's id names its own event.
        for n, index in enumerate(indices):
            assert index is not None
            assert decode_entry(leaves[index])["data"] == {"n": n}

    with_engine(db_url, body)


def test_group_appender_failed_commit_raises_in_every_caller(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        await install_commit_refusal(engine)
        appender = GroupAppender(engine)
        results = await asyncio.gather(
            *(appender.append(make_event(n)) for n in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, DBAPIError) for r in results), results
        assert await count(engine, audit_inbox) == 0

    with_engine(sqlite_url, body)
