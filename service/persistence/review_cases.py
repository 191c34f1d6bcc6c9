"""Human-review cases and their actions (issue 6; NIST-63A4-3.1.13.1 "a record of any session
that involves a trusted referee").

One unlock request can have several cases over time (a person may contest a denial again), but
at most one that is not closed: ``active_request_id`` holds the request id while the case is
active and NULL once it is closed, and is unique (NULLs are distinct on SQLite and PostgreSQL).
Every state change is a conditional UPDATE whose row count says whether this caller won.
Free text (the person's statement, a reviewer's reason) is stored only as ciphertext under the
account's data key, so erasure crypto-shreds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    String,
    Table,
    Text,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ids import new_id
from service.persistence import UtcDateTime, metadata
from service.persistence.tables import (
    SUBJECT,
    challenges,
    face_consents,
    unlock_requests,
    verification_attempts,
)

ACTOR = String(128)

review_cases = Table(
    "review_cases",
    metadata,
    Column("id", String(36), primary_key=True),
    Column(
        "unlock_request_id",
        String(36),
        ForeignKey("unlock_requests.id"),
        nullable=False,
        index=True,
    ),
    # The request id while the case is not closed, NULL after: at most one active case each.
    Column("active_request_id", String(36), nullable=True, unique=True),
    Column("subject", SUBJECT, nullable=False, index=True),
    # open | claimed | awaiting_person | awaiting_confirmation | closed
    Column("status", String(24), nullable=False),
    # appeal | risk_level | no_usable_method | face_check_failed | repeated_failures
    Column("origin", String(32), nullable=False),
    Column("risk_level", String(16), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("due_at", UtcDateTime(), nullable=False),
    Column("statement_ciphertext", Text, nullable=True),
    Column("contact_preference", String(16), nullable=True),
    Column("assignee", ACTOR, nullable=True),
    Column("claim_expires_at", UtcDateTime(), nullable=True),
    # The reviewer whose approval awaits a second, different reviewer (four-eyes).
    Column("first_reviewer", ACTOR, nullable=True),
    # approve | deny | need_more_info: the latest decision, and its code and text.
    Column("outcome", String(16), nullable=True),
    Column("reason_code", String(32), nullable=True),
    Column("reason_ciphertext", Text, nullable=True),
    # approved | denied, once closed by a decision.
    Column("resolution", String(16), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("closed_at", UtcDateTime(), nullable=True),
    Index("ix_review_cases_status_due", "status", "due_at"),
)

review_actions = Table(
    "review_actions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("case_id", String(36), ForeignKey("review_cases.id"), nullable=False),
    # opened | claimed | released | decided | confirmed | rejected | answered | revealed
    Column("action", String(24), nullable=False),
    Column("actor", ACTOR, nullable=False),
    Column("outcome", String(16), nullable=True),
    Column("reason_code", String(32), nullable=True),
    Column("reason_ciphertext", Text, nullable=True),
    Column("status_after", String(24), nullable=False),
    Column("audit_inbox_id", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Index("ix_review_actions_case_created", "case_id", "created_at"),
)

ACTIVE = ("open", "claimed", "awaiting_confirmation")


@dataclass(frozen=True, slots=True)
class CaseRow:
    id: str
    unlock_request_id: str
    subject: str
    status: str
    origin: str
    risk_level: str
    priority: str
    due_at: datetime
    statement_ciphertext: str | None
    contact_preference: str | None
    assignee: str | None
    claim_expires_at: datetime | None
    first_reviewer: str | None
    outcome: str | None
    reason_code: str | None
    reason_ciphertext: str | None
    resolution: str | None
    created_at: datetime
    updated_at: datetime
    closed_at: datetime | None

    def effective_status(self, now: datetime) -> str:
        """A claim that lapsed is an open case again (claims expire)."""
        if (
            self.status == "claimed"
            and self.claim_expires_at is not None
            and self.claim_expires_at <= now
        ):
            return "open"
        return self.status

    def overdue(self, now: datetime) -> bool:
        # Waiting on the person (awaiting_person) is not our delay; closed cases are done.
        return self.status in ACTIVE and self.due_at <= now


@dataclass(frozen=True, slots=True)
class ActionRow:
    id: str
    case_id: str
    action: str
    actor: str
    outcome: str | None
    reason_code: str | None
    reason_ciphertext: str | None
    status_after: str
    created_at: datetime


_CASE_COLUMNS = tuple(review_cases.c[name] for name in CaseRow.__dataclass_fields__)
_ACTION_COLUMNS = tuple(review_actions.c[name] for name in ActionRow.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class QueueFilter:
    status: str | None = None
    priority: str | None = None
    overdue: bool | None = None
    assignee: str | None = None
    origin: str | None = None
    after: tuple[datetime, str] | None = None  # the cursor: (due_at, id) of the last row seen


def _claim_lapsed(now: datetime) -> ColumnElement[bool]:
    return and_(review_cases.c.status == "claimed", review_cases.c.claim_expires_at <= now)


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(review_cases.c.status == "open", _claim_lapsed(now))


class ReviewCaseRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def active_for(self, unlock_request_id: str) -> CaseRow | None:
        row = (
            await self._conn.execute(
                select(*_CASE_COLUMNS).where(review_cases.c.active_request_id == unlock_request_id)
            )
        ).first()
        return None if row is None else CaseRow(**row._mapping)

    async def get(self, case_id: str) -> CaseRow | None:
        stmt = select(*_CASE_COLUMNS).where(review_cases.c.id == case_id)
        row = (await self._conn.execute(stmt)).first()
        return None if row is None else CaseRow(**row._mapping)

    async def insert(self, row: CaseRow) -> None:
        values: dict[str, Any] = {c.name: getattr(row, c.name) for c in _CASE_COLUMNS}
        values["active_request_id"] = row.unlock_request_id
        await self._conn.execute(insert(review_cases).values(values))

    async def transition(
        self,
        case_id: str,
        *,
        expect: ColumnElement[bool],
        now: datetime,
        **values: Any,
    ) -> bool:
        """Apply ``values`` if the case still matches ``expect``; True only for the winner."""
        if values.get("status") == "closed":
            values["active_request_id"] = None
            values["closed_at"] = now
        result = await self._conn.execute(
            update(review_cases)
            .where(review_cases.c.id == case_id, expect)
            .values(updated_at=now, **values)
        )
        return result.rowcount == 1

    @staticmethod
    def claimable(now: datetime) -> ColumnElement[bool]:
        return _claimable(now)

    @staticmethod
    def held_by(actor: str, now: datetime) -> ColumnElement[bool]:
        return and_(
            review_cases.c.status == "claimed",
            review_cases.c.assignee == actor,
            review_cases.c.claim_expires_at > now,
        )

    @staticmethod
    def in_status(*statuses: str) -> ColumnElement[bool]:
        return review_cases.c.status.in_(statuses)

    async def add_action(
        self,
        case_id: str,
        action: str,
        actor: str,
        status_after: str,
        audit_inbox_id: int,
        now: datetime,
        *,
        outcome: str | None = None,
        reason_code: str | None = None,
        reason_ciphertext: str | None = None,
    ) -> None:
        await self._conn.execute(
            insert(review_actions).values(
                id=new_id(),
                case_id=case_id,
                action=action,
                actor=actor,
                outcome=outcome,
                reason_code=reason_code,
                reason_ciphertext=reason_ciphertext,
                status_after=status_after,
                audit_inbox_id=audit_inbox_id,
                created_at=now,
            )
        )

    async def actions(self, case_id: str) -> list[ActionRow]:
        rows = await self._conn.execute(
            select(*_ACTION_COLUMNS)
            .where(review_actions.c.case_id == case_id)
            .order_by(review_actions.c.created_at, review_actions.c.id)
        )
        return [ActionRow(**r._mapping) for r in rows]

    async def for_subject(self, subject: str, limit: int) -> list[CaseRow]:
        rows = await self._conn.execute(
            select(*_CASE_COLUMNS)
            .where(review_cases.c.subject == subject)
            .order_by(review_cases.c.created_at.desc(), review_cases.c.id)
            .limit(limit)
        )
        return [CaseRow(**r._mapping) for r in rows]

    async def latest_for_requests(self, request_ids: list[str]) -> dict[str, CaseRow]:
        """The newest case of each request (the active one if any: it is always the newest)."""
        if not request_ids:
            return {}
        rows = await self._conn.execute(
            select(*_CASE_COLUMNS)
            .where(review_cases.c.unlock_request_id.in_(request_ids))
            .order_by(review_cases.c.created_at, review_cases.c.id)
        )
        latest: dict[str, CaseRow] = {}
        for r in rows:
            case = CaseRow(**r._mapping)
            latest[case.unlock_request_id] = case
        return latest

    async def queue(self, f: QueueFilter, now: datetime, limit: int) -> list[CaseRow]:
        c = review_cases.c
        stmt = select(*_CASE_COLUMNS)
        if f.status == "open":
            stmt = stmt.where(_claimable(now))
        elif f.status == "claimed":
            stmt = stmt.where(c.status == "claimed", c.claim_expires_at > now)
        elif f.status is not None:
            stmt = stmt.where(c.status == f.status)
        if f.priority is not None:
            stmt = stmt.where(c.priority == f.priority)
        if f.origin is not None:
            stmt = stmt.where(c.origin == f.origin)
        if f.assignee is not None:
            stmt = stmt.where(c.assignee == f.assignee, c.claim_expires_at > now)
        if f.overdue is True:
            stmt = stmt.where(c.status.in_(ACTIVE), c.due_at <= now)
        elif f.overdue is False:
            stmt = stmt.where(or_(c.status.not_in(ACTIVE), c.due_at > now))
        if f.after is not None:
            due, case_id = f.after
            stmt = stmt.where(or_(c.due_at > due, and_(c.due_at == due, c.id > case_id)))
        rows = await self._conn.execute(stmt.order_by(c.due_at, c.id).limit(limit))
        return [CaseRow(**r._mapping) for r in rows]

    async def count_overdue(self, now: datetime) -> int:
        c = review_cases.c
        stmt = select(func.count()).where(c.status.in_(ACTIVE), c.due_at <= now)
        return int((await self._conn.execute(stmt)).scalar_one())

    # --- what the case detail's timeline reads from the other flows' tables -------------------

    async def challenges_of(self, unlock_request_id: str) -> list[dict[str, Any]]:
        c = challenges.c
        rows = await self._conn.execute(
            select(c.id, c.method, c.provider, c.status, c.attempts, c.created_at, c.completed_at)
            .where(c.unlock_request_id == unlock_request_id)
            .order_by(c.created_at, c.id)
        )
        return [dict(r._mapping) for r in rows]

    async def attempts_of(self, unlock_request_id: str) -> list[dict[str, Any]]:
        a = verification_attempts.c
        rows = await self._conn.execute(
            select(a.method, a.outcome, a.created_at)
            .where(a.unlock_request_id == unlock_request_id)
            .order_by(a.created_at, a.id)
        )
        return [dict(r._mapping) for r in rows]

    async def consents_of(self, subject: str) -> list[dict[str, Any]]:
        f = face_consents.c
        rows = await self._conn.execute(
            select(f.notice_version, f.purpose, f.channel, f.granted_at, f.withdrawn_at)
            .where(f.subject == subject)
            .order_by(f.granted_at, f.id)
        )
        return [dict(r._mapping) for r in rows]

    async def request_facts(self, unlock_request_id: str) -> RequestFacts | None:
        u = unlock_requests.c
        row = (
            await self._conn.execute(
                select(
                    u.risk_level, u.lock_reason, u.locale, u.context_ciphertext, u.created_at
                ).where(u.id == unlock_request_id)
            )
        ).first()
        return None if row is None else RequestFacts(**row._mapping)


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a case needs of its unlock request beyond ``UnlockRequestRow``."""

    risk_level: str
    lock_reason: str
    locale: str
    context_ciphertext: str | None
    created_at: datetime
