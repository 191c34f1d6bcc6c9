"""Deleting operational records once their retention period ends (PIPL-19, ASVS5-14.2.7).

Each purge deletes at most ``limit`` rows, oldest first, in the caller's transaction. Ids are
UUIDv7 (service/ids.py), so id order is creation order: a purge of rows first finds the oldest
row still young (created at or after the cut-off), one probe from the start of the primary key,
and only looks at the ids below it (the wipe of challenges' secrets reads a partial index
instead). A pass that finds nothing to delete therefore reads a few rows, not the
table (on SQLite it holds the write lock meanwhile). On PostgreSQL the rows are locked with SKIP
LOCKED: two workers purging at once, or a purge meeting an erasure or an outbox settlement, skip
each other's rows instead of waiting (or deadlocking) on them; SQLite renders no row locks (its
one writer holds the database).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ScalarSelect,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    exists,
    not_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from service.persistence import UtcDateTime
from service.persistence.review_cases import review_cases
from service.persistence.tables import (
    CHALLENGE_SECRET_HELD,
    challenges,
    outbox_events,
    sms_sends,
    unlock_requests,
    verification_attempts,
)

CLOSED = "closed"


class RetentionRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def purge_sms_sends(self, before: datetime, limit: int) -> int:
        """Records of text messages sent (a keyed digest of the number, when) from before
        ``before``: they only count towards the per-number send limits."""
        return await self._purge(sms_sends, sms_sends.c.created_at < _before(), before, limit)

    async def purge_delivered_events(self, before: datetime, limit: int) -> int:
        """Outbox events delivered before ``before``; undelivered ones stay until delivered."""
        delivered = outbox_events.c.delivered_at
        return await self._purge(
            outbox_events, and_(delivered.is_not(None), delivered < _before()), before, limit
        )

    async def purge_attempts(self, before: datetime, limit: int) -> int:
        """Verification attempts from before ``before``, except those of a request whose review
        case is not closed: the reviewer sees them.

        On PostgreSQL a case can open while a purge runs, and one statement judges "no open case"
        from its snapshot, taken before that case committed. So there it takes three: the oldest
        attempts, locked; then their requests' rows, locked (SKIP LOCKED both), and an attempt
        whose request another transaction holds is left for the next pass; then the delete, with
        the open-case test read afresh. Every opener of a case locks the request's row first
        (review.open_case_in, appeal): one under way keeps its attempts, one that committed before
        the last statement is seen by it, and one that comes later waits for this purge. SQLite's
        one writer excludes openers meanwhile, so one statement does there."""
        attempts = verification_attempts.c
        under_review = exists().where(
            review_cases.c.unlock_request_id == attempts.unlock_request_id,
            review_cases.c.status != CLOSED,
        )
        condition = and_(attempts.created_at < _before(), not_(under_review))
        if self._conn.dialect.name != "postgresql":
            return await self._purge(verification_attempts, condition, before, limit)
        condition = await self._below_first_young(verification_attempts, condition, before)
        picked = (
            await self._conn.execute(
                _oldest(verification_attempts, condition, limit, attempts.unlock_request_id),
                {"p_before": before},
            )
        ).all()
        held = await self.lock_requests({r.unlock_request_id for r in picked} - {None})
        ids = [r.id for r in picked if r.unlock_request_id is None or r.unlock_request_id in held]
        if not ids:
            return 0
        result = await self._conn.execute(
            delete(verification_attempts).where(attempts.id.in_(ids), not_(under_review))
        )
        return int(result.rowcount or 0)

    async def lock_requests(self, request_ids: set[str]) -> set[str]:
        """Those of these unlock requests whose rows this transaction could lock (PostgreSQL,
        SKIP LOCKED): another transaction holds the rest."""
        if not request_ids:
            return set()
        rows = await self._conn.execute(
            select(unlock_requests.c.id)
            .where(unlock_requests.c.id.in_(sorted(request_ids)))
            .with_for_update(skip_locked=True)
        )
        return {row[0] for row in rows}

    async def wipe_challenge_secrets(self, before: datetime, limit: int) -> int:
        """The secrets of challenges that expired before ``before`` (an SMS code's keyed hash, an
        OIDC or face session's sealed state): nothing can be proven with an expired challenge,
        so they are of no more use. The challenge itself (method, status, times) stays with its
        request. The oldest are found through the partial index of challenges still holding a
        secret; joining them back to their rows, PostgreSQL chose a hash join over the table at
        100,000 challenges (38 ms for 1,000; ``UPDATE ... FROM`` planned the same), once an hour."""
        held = and_(CHALLENGE_SECRET_HELD, challenges.c.expires_at < _before())
        result = await self._conn.execute(
            update(challenges)
            .where(challenges.c.id.in_(_oldest_ids(challenges, held, limit)))
            .values(secret_hash=None, secret_sealed=None),
            {"p_before": before},
        )
        return int(result.rowcount or 0)

    async def _purge(
        self, table: Table, condition: ColumnElement[bool], before: datetime, limit: int
    ) -> int:
        condition = await self._below_first_young(table, condition, before)
        result = await self._conn.execute(
            delete(table).where(table.c.id.in_(_oldest_ids(table, condition, limit))),
            {"p_before": before},
        )
        return int(result.rowcount or 0)

    async def _below_first_young(
        self, table: Table, condition: ColumnElement[bool], before: datetime
    ) -> ColumnElement[bool]:
        """``condition``, for ids below the oldest row still young, when there is one."""
        first_young = (
            await self._conn.execute(
                select(table.c.id)
                .where(table.c.created_at >= _before())
                .order_by(table.c.id)
                .limit(1),
                {"p_before": before},
            )
        ).scalar()
        if first_young is None:
            return condition
        # Anything past its period was created before the cut-off, so its id is lower.
        return and_(table.c.id < first_young, condition)


def _oldest_ids(table: Table, condition: ColumnElement[bool], limit: int) -> ScalarSelect[Any]:
    """The ids of at most ``limit`` rows meeting ``condition``, oldest first; on PostgreSQL
    locked, skipping rows another transaction holds."""
    return _oldest(table, condition, limit).scalar_subquery()


def _oldest(
    table: Table, condition: ColumnElement[bool], limit: int, *also: ColumnElement[Any]
) -> Select[Any]:
    """``_oldest_ids`` as a statement of its own, with the columns ``also`` beside each id."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return (
        select(table.c.id, *also)
        .where(condition)
        .order_by(table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _before() -> ColumnElement[datetime]:
    return bindparam("p_before", type_=UtcDateTime())
