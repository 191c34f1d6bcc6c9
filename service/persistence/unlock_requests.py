"""Unlock requests and the history the risk engine counts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ScalarSelect, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from policy.model import Method, RequestHistory
from service.persistence.tables import unlock_requests, verification_attempts


@dataclass(frozen=True, slots=True)
class UnlockRequestRow:
    id: str
    subject: str
    account_id_sealed: str | None
    known_account: bool
    status: str
    decision_json: str
    audit_inbox_id: int
    factors_satisfied: str
    review_reason: str | None
    source_index: str | None
    created_at: datetime
    expires_at: datetime


_COLUMNS = (
    unlock_requests.c.id,
    unlock_requests.c.subject,
    unlock_requests.c.account_id_sealed,
    unlock_requests.c.known_account,
    unlock_requests.c.status,
    unlock_requests.c.decision_json,
    unlock_requests.c.audit_inbox_id,
    unlock_requests.c.factors_satisfied,
    unlock_requests.c.review_reason,
    unlock_requests.c.source_index,
    unlock_requests.c.created_at,
    unlock_requests.c.expires_at,
)


class UnlockRequestRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def history(
        self,
        subject: str,
        now: datetime,
        velocity_window: timedelta,
        failures_window: timedelta,
        throttle_window: timedelta,
        throttle_limit: int,
    ) -> tuple[RequestHistory, frozenset[str]]:
        """The counts the risk engine needs and the methods paused by failures, in one statement
        (each round trip to SQLite costs ~0.5 ms here)."""
        failed = verification_attempts.c.outcome != "success"

        def failures(since: datetime, method: str | None = None) -> ScalarSelect[Any]:
            where = [verification_attempts.c.subject == subject, failed]
            where.append(verification_attempts.c.created_at >= since)
            if method is not None:
                where.append(verification_attempts.c.method == method)
            return select(func.count()).where(*where).scalar_subquery()

        requests = (
            select(func.count())
            .where(
                unlock_requests.c.subject == subject,
                unlock_requests.c.created_at >= now - velocity_window,
            )
            .scalar_subquery()
        )
        methods = [m.value for m in Method]
        row = (
            await self._conn.execute(
                select(
                    requests,
                    failures(now - failures_window),
                    *(failures(now - throttle_window, m) for m in methods),
                )
            )
        ).one()
        history = RequestHistory(
            recent_unlock_requests=int(row[0]), recent_failed_verifications=int(row[1])
        )
        throttled = frozenset(
            m for m, count in zip(methods, row[2:], strict=True) if count >= throttle_limit
        )
        return history, throttled

    async def insert(self, **values: object) -> None:
        await self._conn.execute(insert(unlock_requests).values(**values))

    async def get(self, request_id: str) -> UnlockRequestRow | None:
        row = (
            await self._conn.execute(select(*_COLUMNS).where(unlock_requests.c.id == request_id))
        ).first()
        return None if row is None else UnlockRequestRow(**row._mapping)

    async def for_subject(self, subject: str, limit: int) -> list[UnlockRequestRow]:
        rows = (
            await self._conn.execute(
                select(*_COLUMNS)
                .where(unlock_requests.c.subject == subject)
                .order_by(unlock_requests.c.created_at.desc(), unlock_requests.c.id)
                .limit(limit)
            )
        ).all()
        return [UnlockRequestRow(**r._mapping) for r in rows]

    async def forget_account_id(self, subject: str) -> None:
        """Erasure: the account id sealed on its requests is removed; the decisions stay."""
        await self._conn.execute(
            update(unlock_requests)
            .where(unlock_requests.c.subject == subject)
            .values(account_id_sealed=None)
        )
