"""Integrator units: the leaf splice equals encode_entry, leadership, the background loop."""

from __future__ import annotations

import asyncio
import string
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checkpoint import CheckpointSigner
from audit.entry import AuditEvent, EntryKind, encode_entry, event_to_payload
from audit.integrator import (
    ADVISORY_LOCK_KEY,
    _log_key,
    integrate_in,
    integrate_once,
    leaf_from_payload,
    run,
    wait_integrated,
)
from audit.store import (
    AuditStore,
    AuditStoreError,
    InboxIdBlock,
    InboxRow,
    append_event_now,
    audit_checkpoints,
    audit_head,
    audit_inbox,
    audit_log,
    audit_metadata,
)
from service.db import create_engine
from tests.audit.test_store import ORIGIN, db_url, make_event, make_signer, with_engine

# One key for the fork tests' two "processes" (two signer objects, as two workers would hold).
SIGNING_KEY = Ed25519PrivateKey.generate()


__all__ = ["db_url"]  # the parametrised fixture, re-used

# Keys and text chosen to collide with the splice's anchors: nested "kind"/"subject"/"log"/"index"
# keys, quotes, backslashes, non-ASCII and the anchors themselves inside strings.
_PIECES = [
    *string.ascii_letters[:6],
    *'"\\,:{}',
    "é",
    "漢",
    "\U0001f600",
    "\u2028",
    "\n",
    "\x01",
    "\x7f",
    ',"kind":"',
    ',"subject":',
    ',"v":1}',
    '{"actor":"',
]
tricky_text = st.lists(st.sampled_from(_PIECES), max_size=6).map("".join)
keys = (
    st.sampled_from(["kind", "subject", "index", "log", "v", "data", "actor", "time"]) | tricky_text
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
events = st.builds(
    AuditEvent,
    kind=st.sampled_from(list(EntryKind)),
    actor=tricky_text.filter(bool),
    subject=st.none() | tricky_text.filter(bool),
    data=st.dictionaries(keys, json_values, max_size=5),
    time=st.datetimes(
        # hypothesis wants naive bounds and adds the zone itself
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
origins = st.sampled_from(["fairunlock.local/audit", 'we"ird/ü', "a\\b", ORIGIN])


@settings(max_examples=400, deadline=None)
@given(event=events, index=st.integers(min_value=0, max_value=2**53 - 1), origin=origins)
def test_spliced_leaf_equals_encode_entry(event: AuditEvent, index: int, origin: str) -> None:
    payload = event_to_payload(event)
    spliced = leaf_from_payload(payload, index, _log_key(origin))
    assert spliced == encode_entry(index, origin, event)
    # A direct entry's payload is this process's own encoding: the same leaf without the parse.
    assert leaf_from_payload(payload, index, _log_key(origin), parse=False) == spliced


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"{}",
        b'{"actor":"a","data":{},"kind":"decision","time":"x","v":1}',  # no subject
        b'{"actor":"a","data":{},"kind":"decision","subject":null,"time":"x","v":1,"z":1}',
        b'{"actor":"a","data":[],"kind":"decision","subject":null,"time":"x","v":1}',
        b'{"actor":"a","data":{},"kind":"decision","subject":null,"time":"x","v":2}',
        b'{"actor":"a","data":{},"kind":"decision","subject":null,\n"time":"x","v":1}',
        b'{"actor":"a","data":{},"kind":"decision","subject":null,"time":"x",,"v":1}',
    ],
)
def test_malformed_payloads_are_refused(payload: bytes) -> None:
    assert leaf_from_payload(payload, 0, _log_key(ORIGIN)) is None


def test_a_corrupt_inbox_row_stops_integration_without_losing_anything(sqlite_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        async with engine.begin() as conn:
            await AuditStore(conn).enqueue(b'{"not":"an event"}')
        with pytest.raises(AuditStoreError, match="is not a canonical event"):
            await integrate_once(engine, signer, ORIGIN)
        async with engine.connect() as conn:
            assert await AuditStore(conn).size() == 0
            assert (await conn.execute(select(func.count()).select_from(audit_inbox))).scalar() == 2

    with_engine(sqlite_url, body)


def test_inbox_ids_drawn_ahead_are_never_given_twice_nor_an_inbox_rows(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """InboxIdBlock: on PostgreSQL one round trip to the sequence serves several batches, and
    an id drawn in a transaction that rolled back is not given again (the sequence's are not
    transactional); on SQLite each take is a reservation in place, as before, and one that rolled
    back is given again (nothing used it)."""
    reservations: list[int] = []
    reserve = AuditStore.reserve_inbox_ids

    async def counted(self: AuditStore, count: int) -> list[int]:
        reservations.append(count)
        return await reserve(self, count)

    monkeypatch.setattr(AuditStore, "reserve_inbox_ids", counted)
    block = InboxIdBlock(block=4)

    async def body(engine: AsyncEngine) -> None:
        taken: list[int] = []
        async with engine.begin() as conn:
            taken += await block.take(AuditStore(conn), 3)
        conn = await engine.connect()
        async with conn.begin() as rolled_back:
            dropped = await block.take(AuditStore(conn), 3)
            await rolled_back.rollback()
        await conn.close()
        postgres = engine.dialect.name == "postgresql"
        if postgres:  # two batches drawing at once, each on its own connection
            async with engine.begin() as first, engine.begin() as second:
                both = await asyncio.gather(
                    block.take(AuditStore(first), 5), block.take(AuditStore(second), 5)
                )
            taken += both[0] + both[1]
        else:  # one connection a worker: one after the other
            for _ in range(2):
                async with engine.begin() as conn:
                    taken += await block.take(AuditStore(conn), 5)
        later = [await append_event_now(engine, make_event(n)) for n in range(3)]
        assert len(set(taken)) == len(taken) == 13
        assert not set(later) & set(taken)
        if postgres:
            assert not set(dropped) & (set(taken) | set(later))
        else:
            assert set(dropped) <= set(taken)
        # PostgreSQL: 4 ids drawn, 3 taken; 4 more for the next 3; then both takes found 2 and
        # drew 5 each. SQLite: one reservation per take, of its size.
        assert reservations == ([4, 4, 5, 5] if postgres else [3, 3, 5, 5])

    with_engine(db_url, body)


def test_direct_entries_follow_the_queued_ones_and_never_touch_the_inbox(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        queued = [await append_event_now(engine, make_event(n)) for n in range(2)]
        async with engine.begin() as conn:
            store = AuditStore(conn)
            reserved = await store.reserve_inbox_ids(3)
            events = [make_event(10 + k) for k in range(3)]
            direct = [
                InboxRow(i, event_to_payload(e)) for i, e in zip(reserved, events, strict=True)
            ]
            integrated = await integrate_in(conn, signer, ORIGIN, wait=True, direct=direct)
        assert integrated == dict(zip([*queued, *reserved], range(5), strict=True))
        later = await append_event_now(engine, make_event(99))
        assert later > max(reserved) > min(reserved) > max(queued)  # ids are never reused
        async with engine.connect() as conn:
            store = AuditStore(conn)
            assert await store.check_contiguity() == 5
            assert [await store.index_of(i) for i in reserved] == [2, 3, 4]
            # Only the entry queued after the integration waits in the inbox.
            inbox = (await conn.execute(select(audit_inbox.c.id))).scalars().all()
            assert list(inbox) == [later]
            assert await store.leaves(2, 5) == [
                encode_entry(2 + k, ORIGIN, e) for k, e in enumerate(events)
            ]

    with_engine(db_url, body)


def test_the_first_integration_with_direct_entries_takes_the_queued_ones_too(db_url: str) -> None:
    """No head row yet (migrations create none; the first integration does): the entries that
    queued before it are integrated with the direct ones, ahead of them."""
    events = [make_event(n) for n in range(3)]

    async def main() -> None:
        engine = create_engine(db_url)  # a fresh database per test
        try:
            async with engine.begin() as conn:
                await conn.run_sync(audit_metadata.create_all)  # tables, no head
                store = AuditStore(conn)
                queued = [await store.enqueue(event_to_payload(e)) for e in events[:2]]
            async with engine.begin() as conn:
                store = AuditStore(conn)
                assert await store.head() is None
                reserved = await store.reserve_inbox_ids(1)
                direct = [InboxRow(reserved[0], event_to_payload(events[2]))]
                integrated = await integrate_in(
                    conn, make_signer(), ORIGIN, wait=True, direct=direct
                )
            assert integrated == {queued[0]: 0, queued[1]: 1, reserved[0]: 2}
            async with engine.connect() as conn:
                store = AuditStore(conn)
                assert await store.check_contiguity() == 3
                assert await store.leaves(0, 3) == [
                    encode_entry(n, ORIGIN, e) for n, e in enumerate(events)
                ]
        finally:
            await engine.dispose()

    asyncio.run(main())


def test_direct_entries_roll_back_with_their_transaction(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        integrated: list[dict[int, int] | None] = []

        async def failing_flow() -> None:
            async with engine.begin() as conn:
                reserved = await AuditStore(conn).reserve_inbox_ids(1)
                direct = [InboxRow(reserved[0], event_to_payload(make_event(0)))]
                integrated.append(
                    await integrate_in(conn, signer, ORIGIN, wait=True, direct=direct)
                )
                raise RuntimeError("the flow failed")

        with pytest.raises(RuntimeError, match="the flow failed"):
            await failing_flow()
        assert integrated[0] is not None  # the entry was integrated, then rolled back
        ((reserved, index),) = integrated[0].items()
        assert index == 0
        async with engine.connect() as conn:
            store = AuditStore(conn)
            assert await store.size() == 0
            assert await store.index_of(reserved) is None
            assert await store.backlog() == 0

    with_engine(db_url, body)


def test_direct_entries_need_the_integration_to_wait_for_the_lock(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            direct = [InboxRow(1, event_to_payload(make_event(0)))]
            with pytest.raises(ValueError, match="wait=True"):
                await integrate_in(conn, make_signer(), ORIGIN, direct=direct)

    with_engine(sqlite_url, body)


@pytest.mark.postgres
def test_only_the_lock_holder_integrates_on_postgres(postgres_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        other = create_engine(postgres_url)
        try:
            async with other.begin() as conn:
                # Another worker is mid-batch: it holds the transaction-scoped leader lock.
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY}
                )
                assert await integrate_once(engine, signer, ORIGIN) == 0
            # Its transaction ended, so the lock is free again.
            assert await integrate_once(engine, signer, ORIGIN) == 1
        finally:
            await other.dispose()

    with_engine(postgres_url, body)


def test_background_loop_integrates_new_entries_and_stops_on_request(db_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(run(engine, signer, ORIGIN, stop, batch_size=2, interval=0.01))
        ids = [await append_event_now(engine, make_event(n)) for n in range(5)]
        indices = [await wait_integrated(engine, i, timeout=10) for i in ids]
        stop.set()
        await asyncio.wait_for(task, timeout=5)
        assert sorted(indices) == list(range(5))
        async with engine.connect() as conn:
            assert await AuditStore(conn).check_contiguity() == 5

    with_engine(db_url, body)


def test_background_loop_stops_on_a_broken_invariant(sqlite_url: str) -> None:
    signer = make_signer()

    async def body(engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await AuditStore(conn).enqueue(b"garbage")
        with pytest.raises(AuditStoreError):
            await asyncio.wait_for(
                run(engine, signer, ORIGIN, asyncio.Event(), interval=0.01), timeout=5
            )

    with_engine(sqlite_url, body)


@pytest.mark.parametrize("mac", ["kept", "another_key", "none"])
def test_a_head_rewritten_in_the_database_is_not_signed_into_a_fork(db_url: str, mac: str) -> None:
    """AUDIT.md §11: someone who can write the database but holds no key rewrites the head to
    another history's root and compact range, keeping the head's MAC, writing one made with
    another key, or clearing it. The integrator (a fresh process: it remembers no head of its
    own) finds no MAC of its key for that head, compares the head with the signed note at its
    size and refuses, so the key never signs a tree that forks from a published checkpoint."""
    from audit.merkle import CompactRange

    async def body(engine: AsyncEngine) -> None:
        for n in range(5):
            await append_event_now(engine, make_event(n))
        await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)
        other = CompactRange.empty()
        other.extend(bytes([n]) * 32 for n in range(5))
        forged: dict[str, object] = {"root": other.root(), "compact_range": other.to_lines()}
        if mac == "another_key":
            forged["mac"] = make_signer().head_mac(ORIGIN, 5, other.root())
        elif mac == "none":
            forged["mac"] = None
        async with engine.begin() as conn:
            assert (await conn.execute(select(audit_head.c.mac))).scalar_one() is not None
            await conn.execute(audit_head.update().values(**forged))
        await append_event_now(engine, make_event(99))
        fresh = CheckpointSigner(ORIGIN, SIGNING_KEY)  # another process, same key
        with pytest.raises(AuditStoreError, match="refusing to sign a fork"):
            await integrate_once(engine, fresh, ORIGIN)
        async with engine.connect() as conn:
            store = AuditStore(conn)
            assert await store.size() == 5
            latest = await store.latest_checkpoint()
            assert latest is not None
            assert latest.size == 5  # nothing new was signed

    with_engine(db_url, body)


def test_the_head_of_another_process_is_checked_once_then_remembered(sqlite_url: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)
        fresh = CheckpointSigner(ORIGIN, SIGNING_KEY)
        assert fresh.last_signed is None
        await append_event_now(engine, make_event(1))
        await integrate_once(engine, fresh, ORIGIN)  # the head at size 1 passed by its MAC
        async with engine.connect() as conn:
            latest = await AuditStore(conn).latest_checkpoint()
        assert latest is not None
        assert fresh.last_signed == (2, latest.root)

    with_engine(sqlite_url, body)


def test_a_head_another_process_signed_passes_by_its_mac_without_reading_the_note(
    db_url: str,
) -> None:
    """Two workers take turns at the log, so most batches extend a head the other one signed.
    Its MAC (made with the key both hold) lets the head pass by one HMAC: the stored note is
    not read, so one made unreadable here does not stop the integration."""

    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)
        async with engine.begin() as conn:
            await conn.execute(audit_checkpoints.update().values(note="not a note"))
        await append_event_now(engine, make_event(1))
        fresh = CheckpointSigner(ORIGIN, SIGNING_KEY)  # another process, same key
        assert await integrate_once(engine, fresh, ORIGIN) == 1
        async with engine.connect() as conn:
            head = await AuditStore(conn).head()
        assert head is not None
        assert head.size == 2
        assert head.mac == CheckpointSigner(ORIGIN, SIGNING_KEY).head_mac(ORIGIN, 2, head.root)

    with_engine(db_url, body)


def test_a_head_without_a_mac_is_checked_by_its_note_and_gets_one(db_url: str) -> None:
    """A head written before heads carried a MAC passes by its verified note, as before; the
    integration that extends it stores a MAC with the new head. The same head with its note
    made unreadable is refused."""

    async def body(engine: AsyncEngine) -> None:
        await append_event_now(engine, make_event(0))
        await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)
        async with engine.begin() as conn:
            await conn.execute(audit_head.update().values(mac=None))
        await append_event_now(engine, make_event(1))
        assert await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN) == 1
        async with engine.begin() as conn:
            assert (await conn.execute(select(audit_head.c.mac))).scalar_one() is not None
            await conn.execute(audit_head.update().values(mac=None))
            await conn.execute(audit_checkpoints.update().values(note="not a note"))
        await append_event_now(engine, make_event(2))
        with pytest.raises(AuditStoreError, match="does not verify"):
            await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)

    with_engine(db_url, body)


@pytest.mark.parametrize("earlier_size", [0, 1])
def test_a_head_rolled_back_below_a_signed_checkpoint_is_not_extended(
    db_url: str, earlier_size: int
) -> None:
    """Someone who can write the database puts back the head row of an earlier size (the empty
    head, or one whose MAC and note are both genuine) and deletes the entries after it, but
    leaves the later checkpoints: extending that head would sign a fork of them, so the head
    read refuses it."""

    async def body(engine: AsyncEngine) -> None:
        signer = CheckpointSigner(ORIGIN, SIGNING_KEY)
        for n in range(earlier_size):
            await append_event_now(engine, make_event(n))
        await integrate_once(engine, signer, ORIGIN)
        async with engine.connect() as conn:
            earlier = (await conn.execute(select(audit_head))).one()._asdict()
        for n in range(earlier_size, 4):
            await append_event_now(engine, make_event(n))
        assert await integrate_once(engine, signer, ORIGIN) == 4 - earlier_size
        async with engine.begin() as conn:
            await conn.execute(audit_head.update().values(**earlier))
            await conn.execute(audit_log.delete().where(audit_log.c.seq >= earlier_size))
        await append_event_now(engine, make_event(99))
        with pytest.raises(AuditStoreError, match="behind the signed checkpoint of size 4"):
            await integrate_once(engine, CheckpointSigner(ORIGIN, SIGNING_KEY), ORIGIN)
        async with engine.connect() as conn:
            latest = await AuditStore(conn).latest_checkpoint()
        assert latest is not None
        assert latest.size == 4  # nothing new was signed

    with_engine(db_url, body)
