"""The outbox deliverer's queries (service/persistence/outbox.py): a batch of due events is leased
in one statement and goes to one deliverer, also when two lease at once; settling marks the
acknowledged delivered and puts the failed back for their retry."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.persistence.outbox import FailedAttempt, OutboxRepository
from service.persistence.tables import outbox_events
from tests.service.conftest import Api

LEASE = timedelta(seconds=60)


def _events(api: Api, count: int, due: datetime) -> list[str]:
    ids = [f"evt-{i:03d}" for i in range(count)]

    async def add() -> None:
        async with api.app.state.engine.begin() as conn:
            await conn.execute(
                insert(outbox_events),
                [
                    {
                        "id": event_id,
                        "kind": "notify_person",
                        "subject": "s" * 64,
                        "payload": "{}",
                        "created_at": due,
                        # Oldest first: evt-000 is the most overdue.
                        "next_attempt_at": due - timedelta(seconds=count - i),
                    }
                    for i, event_id in enumerate(ids)
                ],
            )

    api.run(add)
    return ids


def outbox_rows(api: Api) -> list[Row[Any]]:
    """Every outbox event as stored: id, kind, delivered_at, attempts, next_attempt_at and
    last_error (tests/service/test_outbox.py reads them the same way)."""

    async def read() -> list[Row[Any]]:
        async with api.app.state.engine.connect() as conn:
            found = await conn.execute(
                select(
                    outbox_events.c.id,
                    outbox_events.c.kind,
                    outbox_events.c.delivered_at,
                    outbox_events.c.attempts,
                    outbox_events.c.next_attempt_at,
                    outbox_events.c.last_error,
                )
            )
            return list(found)

    rows: list[Row[Any]] = api.run(read)
    return rows


def outbox_payloads(api: Api) -> list[dict[str, Any]]:
    """Every outbox event's payload, decoded."""

    async def read() -> list[dict[str, Any]]:
        async with api.app.state.engine.connect() as conn:
            found = await conn.execute(select(outbox_events.c.payload))
            return [json.loads(payload) for (payload,) in found]

    payloads: list[dict[str, Any]] = api.run(read)
    return payloads


def _lease(api: Api, now: datetime, limit: int) -> list[str]:
    async def lease() -> list[str]:
        async with api.app.state.engine.begin() as conn:
            return [e.id for e in await OutboxRepository(conn).lease_due(now, LEASE, limit)]

    leased: list[str] = api.run(lease)
    return leased


def test_due_events_are_leased_oldest_first_and_not_again_until_the_lease_runs_out(
    api: Api,
) -> None:
    now = datetime.now(UTC)
    ids = _events(api, 5, now)
    assert sorted(_lease(api, now, 3)) == ids[:3]
    assert sorted(_lease(api, now, 10)) == ids[3:]
    assert _lease(api, now, 10) == []
    assert sorted(_lease(api, now + LEASE + timedelta(seconds=1), 10)) == ids


def test_two_deliverers_leasing_at_once_share_the_events_without_overlap(api: Api) -> None:
    now = datetime.now(UTC)
    ids = _events(api, 40, now)

    async def both() -> list[list[str]]:
        async def one() -> list[str]:
            async with api.app.state.engine.begin() as conn:
                leased = await OutboxRepository(conn).lease_due(now, LEASE, 25)
                await asyncio.sleep(0.05)  # hold the transaction while the other leases
                return [e.id for e in leased]

        return list(await asyncio.gather(one(), one()))

    first, second = api.run(both)
    assert not set(first) & set(second)
    assert sorted(first + second) == ids
    # Each takes at most its limit. How the 40 split depends on how the two statements' scans
    # interleave (SKIP LOCKED passes over rows the other has just locked): 25/15 when one
    # finishes first, 21/19 when both run at once.
    assert max(len(first), len(second)) <= 25


def test_settling_marks_the_delivered_and_reschedules_the_failed(api: Api) -> None:
    now = datetime.now(UTC)
    ids = _events(api, 3, now)
    _lease(api, now, 3)
    retry_at = now + timedelta(seconds=4)

    async def settle() -> None:
        async with api.app.state.engine.begin() as conn:
            await OutboxRepository(conn).settle(
                ids[:2], [FailedAttempt(ids[2], retry_at, "sms: " + "x" * 300)], now
            )

    api.run(settle)
    rows = {row.id: row for row in outbox_rows(api)}
    for event_id in ids[:2]:
        assert rows[event_id].delivered_at == now
        assert rows[event_id].attempts == 1
        assert rows[event_id].last_error is None
    failed = rows[ids[2]]
    assert failed.delivered_at is None
    assert failed.attempts == 1
    assert failed.next_attempt_at == retry_at
    error = failed.last_error
    assert error is not None
    assert len(error) == 200
    assert _lease(api, retry_at, 10) == [ids[2]]


class _PausingAfterFirst:
    """A connection that stops after its first statement until released: a transaction caught
    between its statements."""

    def __init__(self, conn: AsyncConnection, paused: asyncio.Event, go: asyncio.Event) -> None:
        self._conn = conn
        self._paused = paused
        self._go = go

    @property
    def dialect(self) -> Any:
        return self._conn.dialect

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._conn.execute(*args, **kwargs)
        if not self._paused.is_set():
            self._paused.set()
            await self._go.wait()
        return result


def test_a_settlement_and_an_erasure_of_the_same_events_both_finish(api: Api) -> None:
    """A deliverer settles two events of an account (one delivered, one failed) while the
    account is erased: the settlement locks both rows before it changes either, in the order an
    erasure locks them, so the erasure waits for it and then removes both. Row by row, each
    could hold one and wait for the other (PostgreSQL: a deadlock, and the erasure failed). On
    SQLite one writer at a time makes the erasure wait either way; the PostgreSQL run is the one
    that fails without the ordering."""
    now = datetime.now(UTC)
    ids = _events(api, 2, now)
    _lease(api, now, 2)
    subject = "s" * 64

    async def race() -> tuple[bool, int]:
        engine = api.app.state.engine
        paused, go = asyncio.Event(), asyncio.Event()

        async def settle() -> None:
            async with engine.begin() as conn:
                pausing = cast(AsyncConnection, _PausingAfterFirst(conn, paused, go))
                await OutboxRepository(pausing).settle(
                    [ids[1]], [FailedAttempt(ids[0], now + timedelta(seconds=5), "sms: down")], now
                )

        async def erase() -> int:
            async with engine.begin() as conn:
                return await OutboxRepository(conn).forget_subject(subject)

        settling = asyncio.create_task(settle())
        await asyncio.wait_for(paused.wait(), 5)
        erasing = asyncio.create_task(erase())
        await asyncio.sleep(0.3)  # the erasure takes what it can and waits
        waited = not erasing.done()
        go.set()
        await asyncio.wait_for(settling, 10)
        return waited, await asyncio.wait_for(erasing, 10)

    waited, cancelled = api.run(race)
    assert waited, "the erasure waits for the settlement in flight"
    assert cancelled == 1  # the failed one was still to be delivered
    assert outbox_rows(api) == []
