"""Queries of the outbox's deliverer: lease what is due, settle what was attempted. The caller owns
the transaction; each method runs inside the connection it is given."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import ColumnElement, Select, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from service.persistence.tables import outbox_events

_COLUMNS = (
    outbox_events.c.id,
    outbox_events.c.kind,
    outbox_events.c.subject,
    outbox_events.c.payload,
    outbox_events.c.attempts,
)


class LeasedEvent(msgspec.Struct, frozen=True):
    id: str
    kind: str
    subject: str
    payload: str
    attempts: int


class FailedAttempt(msgspec.Struct, frozen=True):
    id: str
    retry_at: datetime
    error: str


class OutboxRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def lease_due(self, now: datetime, lease: timedelta, limit: int) -> list[LeasedEvent]:
        """Lease up to ``limit`` events that are due, oldest first, in one statement: another
        worker's lease in the meantime is seen by the conditions (or skipped while it is being
        taken, on PostgreSQL), so each event goes to one deliverer until its lease runs out."""
        pending = (outbox_events.c.delivered_at.is_(None), outbox_events.c.next_attempt_at <= now)
        due = (
            select(outbox_events.c.id)
            .where(*pending)
            .order_by(outbox_events.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite's writer lock serialises
            .cte("due")
            # Chosen once: as a subquery PostgreSQL may run it again per row, and a LIMIT n
            # leased more than n (seen here).
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        leased = await self._conn.execute(
            update(outbox_events)
            .where(outbox_events.c.id.in_(select(due.c.id)), *pending)
            .values(next_attempt_at=now + lease)
            .returning(*_COLUMNS)
        )
        return [LeasedEvent(*row) for row in leased]

    async def settle(
        self, delivered: Sequence[str], failed: Sequence[FailedAttempt], now: datetime
    ) -> None:
        """Mark what was acknowledged delivered, and put what failed back for its retry; either
        way the attempt is counted."""
        if self._conn.dialect.name == "postgresql" and len(delivered) + len(failed) > 1:
            # The rows locked first, in id order as an erasure takes them: in the updates' own
            # order an erasure of their account could hold one and wait for another (a deadlock,
            # and a failed erasure). SQLite's one writer serialises.
            await self._conn.execute(
                _in_id_order(outbox_events.c.id.in_([*delivered, *(f.id for f in failed)]))
            )
        if delivered:
            await self._conn.execute(
                update(outbox_events)
                .where(outbox_events.c.id.in_(delivered))
                .values(delivered_at=now, attempts=outbox_events.c.attempts + 1, last_error=None)
            )
        if failed:
            await self._conn.execute(
                update(outbox_events)
                .where(
                    outbox_events.c.id == bindparam("event_id"),
                    outbox_events.c.delivered_at.is_(None),
                )
                .values(
                    attempts=outbox_events.c.attempts + 1,
                    next_attempt_at=bindparam("new_retry_at"),
                    last_error=bindparam("new_error"),
                ),
                [
                    {
                        "event_id": f.id,
                        "new_retry_at": f.retry_at,
                        "new_error": f.error[:200],
                    }
                    for f in failed
                ],
            )

    async def forget_subject(self, subject: str) -> int:
        """Erasure: remove every event of the account, as each carries its sealed account id;
        returns how many were not acknowledged yet: none of them is attempted again. One being
        delivered at this moment may still arrive (its settlement then finds no row), so the
        count is of deliveries stopped, not of deliveries that never happened."""
        removed = await self._conn.execute(
            delete(outbox_events)
            .where(outbox_events.c.id.in_(_in_id_order(outbox_events.c.subject == subject)))
            .returning(outbox_events.c.delivered_at)
        )
        return sum(1 for (delivered_at,) in removed if delivered_at is None)


def _in_id_order(condition: ColumnElement[bool]) -> Select[tuple[str]]:
    """The ids of the events that meet ``condition``, locked in id order (PostgreSQL; SQLite
    has no row locks): writers that change several events lock them in one order."""
    return (
        select(outbox_events.c.id).where(condition).order_by(outbox_events.c.id).with_for_update()
    )
