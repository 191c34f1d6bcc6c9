"""Challenges, attempts, SMS sends and the outbox. Every state change that must happen at most once
(a challenge succeeding, a code being used, a TOTP step being consumed) is a conditional UPDATE
whose row count says whether this caller won."""

from __future__ import annotations

import bisect
import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import NamedTuple

import msgspec
from sqlalchemy import (
    String,
    bindparam,
    cast,
    delete,
    insert,
    literal,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.hot_sql import HotStatement
from service.ids import new_id
from service.persistence import padded
from service.persistence.locks import ADVISORY_XACT_LOCK, advisory_lock_key, advisory_xact_locks
from service.persistence.tables import (
    ATTEMPT_FAILED,
    challenges,
    outbox_events,
    recovery_codes,
    sms_sends,
    totp_enrolments,
    unlock_requests,
    verification_attempts,
)
from service.persistence.unlock_requests import UnlockRequestRow


class ChallengeRow(msgspec.Struct, frozen=True):
    id: str
    unlock_request_id: str
    subject: str
    method: str
    provider: str | None
    status: str
    attempts: int
    secret_hash: str | None
    secret_sealed: str | None
    delivery_id: str | None
    sends: int
    created_at: datetime
    expires_at: datetime


# In ChallengeRow's field order: a row read with these columns makes one positionally
# (ChallengeRow(*row): 0.4 against 2.5 µs through _asdict; tests/service/persistence).
_CHALLENGE_COLUMNS = (
    challenges.c.id,
    challenges.c.unlock_request_id,
    challenges.c.subject,
    challenges.c.method,
    challenges.c.provider,
    challenges.c.status,
    challenges.c.attempts,
    challenges.c.secret_hash,
    challenges.c.secret_sealed,
    challenges.c.delivery_id,
    challenges.c.sends,
    challenges.c.created_at,
    challenges.c.expires_at,
)


# Built once, with bind parameters, and run in place on SQLite (service.hot_sql): constructing a
# statement costs about twice what running it does, and SQLAlchemy's execution ten times what
# SQLite's does; a proof runs some fourteen. The bind names differ from column names, which
# SQLAlchemy reserves for an UPDATE's or INSERT's values.
_GET_CHALLENGE = HotStatement(
    "challenges.get", select(*_CHALLENGE_COLUMNS).where(challenges.c.id == bindparam("p_id"))
)


@functools.lru_cache(maxsize=128)
def get_many_statement(count: int, lock: bool, /) -> HotStatement:
    """``count`` challenges by id (p0..p{count-1}) in one statement: a batch of proofs reads its
    challenges at once. Built once per count (an expanding IN re-renders its SQL every time).
    ``lock``: locked for the transaction on PostgreSQL, in id order."""
    # Positional only: lru_cache would key (3, False) and (3, lock=False) apart, two statements.
    ids = [bindparam(f"p{i}", type_=String) for i in range(count)]
    statement = select(*_CHALLENGE_COLUMNS).where(challenges.c.id.in_(ids))
    if lock:
        statement = statement.order_by(challenges.c.id).with_for_update()
    family = "get_many_locked" if lock else "get_many"
    return HotStatement(f"challenges.{family}[{count}]", statement)


_COMPLETE = HotStatement(
    "challenges.complete",
    update(challenges)
    .where(challenges.c.id == bindparam("p_id"), challenges.c.status == "open")
    .values(status="succeeded", completed_at=bindparam("p_now")),
)
# The challenge is open and has an attempt left (p_max): what counting one more requires.
_ATTEMPT_LEFT = (
    challenges.c.id == bindparam("p_id"),
    challenges.c.status == "open",
    challenges.c.attempts < bindparam("p_max"),
)
_RESERVE = HotStatement(
    "challenges.reserve_attempt",
    update(challenges).where(*_ATTEMPT_LEFT).values(attempts=challenges.c.attempts + 1),
)
_RESERVE_AND_COMPLETE = HotStatement(
    "challenges.reserve_and_complete",
    update(challenges)
    .where(*_ATTEMPT_LEFT)
    .values(
        attempts=challenges.c.attempts + 1, status="succeeded", completed_at=bindparam("p_now")
    ),
)
_ATTEMPTS = HotStatement(
    "challenges.attempts",
    select(challenges.c.attempts).where(challenges.c.id == bindparam("p_id")),
)
_CLOSE_FAILED = HotStatement(
    "challenges.close_failed",
    update(challenges)
    .where(challenges.c.id == bindparam("p_id"), challenges.c.status == "open")
    .values(status="failed", completed_at=bindparam("p_now")),
)
_INSERT_ATTEMPT = HotStatement("attempts.insert", insert(verification_attempts))
_SETTLE_ATTEMPT = HotStatement(
    "attempts.settle",
    update(verification_attempts)
    .where(verification_attempts.c.id == bindparam("p_id"))
    .values(outcome=bindparam("p_outcome")),
)
_FAILED = (ATTEMPT_FAILED,)
_FAILED_AT_METHOD = (
    *_FAILED,
    verification_attempts.c.created_at >= bindparam("p_since"),
    verification_attempts.c.subject == bindparam("p_subject"),
    verification_attempts.c.method == bindparam("p_method"),
)
_FAILURES_OF_METHOD = HotStatement(
    "attempts.failures_of_method",
    select(verification_attempts.c.created_at)
    .where(*_FAILED_AT_METHOD)
    .order_by(verification_attempts.c.created_at),
)
# Both throttles' failures in one round trip: "m" rows are the account's at the method, "s" rows
# the source address's (any account).
_FAILURES_OF_METHOD_AND_SOURCE = HotStatement(
    "attempts.failures_of_method_and_source",
    union_all(
        select(literal("m").label("k"), verification_attempts.c.created_at).where(
            *_FAILED_AT_METHOD
        ),
        select(literal("s").label("k"), verification_attempts.c.created_at).where(
            *_FAILED,
            verification_attempts.c.created_at >= bindparam("p_source_since"),
            verification_attempts.c.source_index == bindparam("p_source"),
        ),
    ).order_by("k", "created_at"),
)


@functools.lru_cache(maxsize=128)
def failures_many_statement(count: int) -> HotStatement:
    """``_FAILURES_OF_METHOD_AND_SOURCE`` for ``count`` proofs in one statement: "m" rows of each
    account (s{i}) since p_since, at every method (the caller keeps the (account, method) pairs
    it asked for), "s" rows of each source (x{i}; None matches nothing) since p_source_since,
    each with its key. Accounts by IN, not by OR-ed (account, method) pairs: SQLite's planner
    took those for a scan of a whole index of failed attempts (every failure kept, 180 days by
    default), and a batch's read grew with them: after ~25,000 failures it was two thirds of a
    worker's time."""
    va = verification_attempts.c
    subjects = [bindparam(f"s{i}", type_=String) for i in range(count)]
    sources = [bindparam(f"x{i}", type_=String) for i in range(count)]
    return HotStatement(
        f"attempts.failures_many[{count}]",
        union_all(
            select(
                literal("m").label("k"), va.subject.label("a"), va.method.label("b"), va.created_at
            ).where(*_FAILED, va.created_at >= bindparam("p_since"), va.subject.in_(subjects)),
            select(
                literal("s").label("k"),
                va.source_index.label("a"),
                cast(null(), String).label("b"),
                va.created_at,
            ).where(
                *_FAILED, va.created_at >= bindparam("p_source_since"), va.source_index.in_(sources)
            ),
        ).order_by("created_at"),
    )


class FailureBook:
    """The failed attempts a batch of proofs counts against its throttles, read once for the
    whole batch (``ChallengeRepository.failure_book``) and kept up to date with the failures
    the batch's own proofs record (``add``): each proof then sees what a read of its own, at its
    turn in the batch's transaction, would have returned. Times per key, oldest first."""

    __slots__ = ("_from_source", "_of_method")

    def __init__(
        self,
        of_method: dict[tuple[str, str], list[datetime]],
        from_source: dict[str, list[datetime]],
    ) -> None:
        self._of_method = of_method
        self._from_source = from_source

    @staticmethod
    def _since(times: list[datetime] | None, since: datetime) -> list[datetime]:
        return [] if not times else times[bisect.bisect_left(times, since) :]

    def of_method(self, subject: str, method: str, since: datetime) -> list[datetime]:
        """``ChallengeRepository.method_failures_since`` (the read must have covered ``since``)."""
        return self._since(self._of_method.get((subject, method)), since)

    def from_source(self, source_index: str, since: datetime) -> list[datetime]:
        """The source's failures, any account, as ``failures_since`` returns them."""
        return self._since(self._from_source.get(source_index), since)

    def add(self, subject: str, method: str, source_index: str | None, at: datetime) -> None:
        """A failed attempt this transaction recorded (``record_attempt``)."""
        bisect.insort(self._of_method.setdefault((subject, method), []), at)
        if source_index is not None:
            bisect.insort(self._from_source.setdefault(source_index, []), at)


_CONSUME_TOTP_STEP = HotStatement(
    "totp.consume_step",
    update(totp_enrolments)
    .where(
        totp_enrolments.c.subject == bindparam("p_subject"),
        totp_enrolments.c.confirmed_at.is_not(None),
        (totp_enrolments.c.last_step.is_(None))
        | (totp_enrolments.c.last_step < bindparam("p_step")),
    )
    .values(last_step=bindparam("p_step")),
)


def request_state(row: UnlockRequestRow) -> RequestState:
    """The state of a request row this transaction read locked and has not changed since
    (``ChallengeRepository.lock_request``'s ``read_here``)."""
    return RequestState(
        row.status,
        list(json.loads(row.factors_satisfied)),
        row.review_reason,
        row.account_id_sealed is None,
    )


class AttemptRecord(NamedTuple):
    """A verification attempt to insert (record_attempts), as record_attempt takes one."""

    subject: str
    unlock_request_id: str
    method: str
    outcome: str
    source_index: str | None
    now: datetime


class RequestUpdate(NamedTuple):
    """A request's new state (update_requests), as update_request takes it."""

    id: str
    status: str
    factors: list[str]
    review_reason: str | None
    now: datetime


def _attempt_row(attempt_id: str, a: AttemptRecord) -> dict[str, object]:
    return {
        "id": attempt_id,
        "subject": a.subject,
        "unlock_request_id": a.unlock_request_id,
        "method": a.method,
        "outcome": a.outcome,
        "source_index": a.source_index,
        "created_at": a.now,
    }


def _update_params(u: RequestUpdate) -> dict[str, object]:
    return {
        "p_id": u.id,
        "p_status": u.status,
        "p_factors": json.dumps(sorted(u.factors)),
        "p_review_reason": u.review_reason,
        "p_now": u.now,
    }


class RequestState(NamedTuple):
    """An unlock request's state as a writer of it sees it under its lock."""

    status: str
    factors: list[str]
    review_reason: str | None
    # The account was erased (its id removed from the request): nothing may approve it now.
    erased: bool


_REQUEST_STATE_SELECT = select(
    unlock_requests.c.status,
    unlock_requests.c.factors_satisfied,
    unlock_requests.c.review_reason,
    unlock_requests.c.account_id_sealed.is_(None).label("erased"),
).where(unlock_requests.c.id == bindparam("p_id"))
_REQUEST_STATE = HotStatement("unlock_requests.state", _REQUEST_STATE_SELECT)
_REQUEST_STATE_FOR_UPDATE = HotStatement(
    "unlock_requests.state_for_update", _REQUEST_STATE_SELECT.with_for_update()
)
_UPDATE_REQUEST = HotStatement(
    "unlock_requests.update_state",
    update(unlock_requests)
    .where(unlock_requests.c.id == bindparam("p_id"))
    .values(
        status=bindparam("p_status"),
        factors_satisfied=bindparam("p_factors"),
        review_reason=bindparam("p_review_reason"),
        updated_at=bindparam("p_now"),
    ),
)
_INSERT_OUTBOX = HotStatement("outbox.insert", insert(outbox_events))


class UnusedCode(msgspec.Struct, frozen=True):
    id: str
    code_hash: str


class ChallengeRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def create(self, row: ChallengeRow) -> None:
        await self._conn.execute(
            insert(challenges).values({c.name: getattr(row, c.name) for c in _CHALLENGE_COLUMNS})
        )

    async def get(self, challenge_id: str) -> ChallengeRow | None:
        row = (await _GET_CHALLENGE.run(self._conn, {"p_id": challenge_id})).first()
        return None if row is None else ChallengeRow(*row)

    async def get_many(
        self,
        challenge_ids: Sequence[str],
        *,
        lock: bool = False,
        outside: sqlite3.Connection | None = None,
    ) -> dict[str, ChallengeRow]:
        """The challenges of these ids that exist, by id; ``lock``: locked until the transaction
        ends (PostgreSQL); ``outside``: read there, not in the transaction (HotStatement.run)."""
        if lock:
            challenge_ids = padded(challenge_ids)
        statement = get_many_statement(len(challenge_ids), lock)
        params = {f"p{i}": c for i, c in enumerate(challenge_ids)}
        rows = await statement.run(self._conn, params, outside=outside)
        return {row.id: ChallengeRow(*row) for row in rows}

    async def open_for(
        self, unlock_request_id: str, method: str, now: datetime
    ) -> ChallengeRow | None:
        row = (
            await self._conn.execute(
                select(*_CHALLENGE_COLUMNS)
                .where(
                    challenges.c.unlock_request_id == unlock_request_id,
                    challenges.c.method == method,
                    challenges.c.status == "open",
                    challenges.c.expires_at > now,
                )
                .order_by(challenges.c.created_at.desc())
                .limit(1)
            )
        ).first()
        return None if row is None else ChallengeRow(**row._asdict())

    async def resend(
        self, challenge_id: str, secret_hash: str, delivery_id: str, expires_at: datetime
    ) -> None:
        # A new code replaces the old one; the attempt count carries over (NIST-63B4-3.1.3.2).
        await self._conn.execute(
            update(challenges)
            .where(challenges.c.id == challenge_id)
            .values(
                secret_hash=secret_hash,
                delivery_id=delivery_id,
                sends=challenges.c.sends + 1,
                expires_at=expires_at,
            )
        )

    async def complete(self, challenge_id: str, now: datetime) -> bool:
        """Open -> succeeded, at most once: True only for the caller that made the change."""
        result = await _COMPLETE.run(self._conn, {"p_id": challenge_id, "p_now": now})
        return result.rowcount == 1

    async def reserve_attempt(self, challenge_id: str, max_attempts: int) -> bool:
        """Take one of the challenge's attempts before its proof is checked; False when none is
        left or the challenge is closed. Concurrent proofs cannot all see the same count."""
        result = await _RESERVE.run(self._conn, {"p_id": challenge_id, "p_max": max_attempts})
        return result.rowcount == 1

    async def reserve_and_complete(
        self, challenge_id: str, max_attempts: int, now: datetime
    ) -> bool:
        """``reserve_attempt`` and ``complete`` in one statement, for a proof already judged
        right: False, changing nothing, when no attempt is left or the challenge is closed."""
        params = {"p_id": challenge_id, "p_max": max_attempts, "p_now": now}
        return (await _RESERVE_AND_COMPLETE.run(self._conn, params)).rowcount == 1

    async def release_attempt(self, challenge_id: str, attempt_id: str) -> None:
        """Undo a reservation whose proof was never judged (missing field, provider down)."""
        await self._conn.execute(
            update(challenges)
            .where(challenges.c.id == challenge_id, challenges.c.attempts > 0)
            .values(attempts=challenges.c.attempts - 1)
        )
        await self._conn.execute(
            delete(verification_attempts).where(verification_attempts.c.id == attempt_id)
        )

    async def close_if_exhausted(self, challenge_id: str, max_attempts: int, now: datetime) -> int:
        """After a failed (reserved) attempt: close the challenge at the limit; attempts left."""
        attempts = (await _ATTEMPTS.run(self._conn, {"p_id": challenge_id})).scalar_one()
        if attempts >= max_attempts:
            await _CLOSE_FAILED.run(self._conn, {"p_id": challenge_id, "p_now": now})
        return max(0, max_attempts - int(attempts))

    async def expire(self, challenge_id: str, now: datetime) -> None:
        await self._conn.execute(
            update(challenges)
            .where(challenges.c.id == challenge_id, challenges.c.status == "open")
            .values(status="expired", completed_at=now)
        )

    # --- attempts and throttles -------------------------------------------------------------

    async def record_attempt(
        self,
        subject: str,
        unlock_request_id: str,
        method: str,
        outcome: str,
        source_index: str | None,
        now: datetime,
    ) -> str:
        """Insert an attempt; outcome ``pending`` counts as a failure until it is settled."""
        attempt = AttemptRecord(subject, unlock_request_id, method, outcome, source_index, now)
        attempt_id = new_id()
        await _INSERT_ATTEMPT.run(self._conn, _attempt_row(attempt_id, attempt))
        return attempt_id

    async def settle_attempt(self, attempt_id: str, outcome: str) -> None:
        await _SETTLE_ATTEMPT.run(self._conn, {"p_id": attempt_id, "p_outcome": outcome})

    # --- a batch of proofs' writes, one statement per kind (flows.challenges._Plan.write) -----
    # Each does what the single-row method of its name does for every item, in order, and
    # returns how many rows it changed: the caller checks that against what it expected.

    async def reserve_attempts(self, reservations: Sequence[tuple[str, int]]) -> int:
        """(challenge id, attempt limit) each."""
        params = [{"p_id": c, "p_max": limit} for c, limit in reservations]
        return await _RESERVE.count_changed(self._conn, params)

    async def reserve_and_complete_many(
        self, completions: Sequence[tuple[str, int, datetime]]
    ) -> int:
        """(challenge id, attempt limit, now) each."""
        params = [{"p_id": c, "p_max": limit, "p_now": now} for c, limit, now in completions]
        return await _RESERVE_AND_COMPLETE.count_changed(self._conn, params)

    async def close_failed_many(self, closings: Sequence[tuple[str, datetime]]) -> int:
        """(challenge id, now) each: open -> failed, as close_if_exhausted does at the limit."""
        params = [{"p_id": c, "p_now": now} for c, now in closings]
        return await _CLOSE_FAILED.count_changed(self._conn, params)

    async def record_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        rows = [_attempt_row(new_id(), a) for a in attempts]
        if rows:
            await _INSERT_ATTEMPT.run(self._conn, rows)

    async def consume_totp_steps(self, steps: Sequence[tuple[str, int]]) -> int:
        """(subject, step) each, in order."""
        params = [{"p_subject": subject, "p_step": step} for subject, step in steps]
        return await _CONSUME_TOTP_STEP.count_changed(self._conn, params)

    async def update_requests(self, updates: Sequence[RequestUpdate]) -> int:
        params = [_update_params(u) for u in updates]
        return await _UPDATE_REQUEST.count_changed(self._conn, params)

    async def serialise(self, scope: str, key: str) -> None:
        """Serialise the transactions that check and then record against one limit (``scope``,
        e.g. an account's attempts at a method, or the texts to one number) until commit: an
        advisory lock on PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers."""
        if self._conn.dialect.name == "postgresql":
            await ADVISORY_XACT_LOCK.run(self._conn, {"p_key": advisory_lock_key(scope, key)})

    async def serialise_many(self, scoped_keys: Iterable[tuple[str, str]]) -> None:
        """``serialise`` for several (scope, key) at once, in one statement, in a fixed order
        (two transactions taking overlapping sets this way cannot deadlock on them)."""
        if self._conn.dialect.name != "postgresql":
            return
        keys = sorted({advisory_lock_key(scope, key) for scope, key in scoped_keys})
        if keys:
            keys = padded(keys)
            params = {f"k{i}": k for i, k in enumerate(keys)}
            await advisory_xact_locks(len(keys)).run(self._conn, params)

    # When the failed attempts since ``since`` happened, oldest first: what throttling and
    # Retry-After are computed from.
    async def method_failures_since(
        self, since: datetime, subject: str, method: str
    ) -> list[datetime]:
        """An account's failed attempts at one method."""
        params = {"p_since": since, "p_subject": subject, "p_method": method}
        return [r[0] for r in await _FAILURES_OF_METHOD.run(self._conn, params)]

    async def failures_since(
        self, since: datetime, subject: str, method: str, source_since: datetime, source_index: str
    ) -> tuple[list[datetime], list[datetime]]:
        """An account's failed attempts at one method since ``since``, and those from one source
        address (its blind index; any account) since ``source_since``, in one statement."""
        params = {
            "p_since": since,
            "p_subject": subject,
            "p_method": method,
            "p_source_since": source_since,
            "p_source": source_index,
        }
        of_method: list[datetime] = []
        from_source: list[datetime] = []
        for kind, at in await _FAILURES_OF_METHOD_AND_SOURCE.run(self._conn, params):
            (of_method if kind == "m" else from_source).append(at)
        return of_method, from_source

    async def failure_book(
        self,
        keys: Sequence[tuple[str, str, str | None]],
        since: datetime,
        source_since: datetime,
    ) -> FailureBook:
        """``failures_since`` for several (subject, method, source index or None) at once, from
        the earliest times any of them asks for: one statement instead of one each."""
        params: dict[str, object] = {"p_since": since, "p_source_since": source_since}
        keys = padded(keys)
        for i, (subject, _, source) in enumerate(keys):
            params |= {f"s{i}": subject, f"x{i}": source}
        of_method: dict[tuple[str, str], list[datetime]] = {}
        from_source: dict[str, list[datetime]] = {}
        for kind, a, b, at in await failures_many_statement(len(keys)).run(self._conn, params):
            if kind == "m":
                of_method.setdefault((a, b), []).append(at)
            else:
                from_source.setdefault(a, []).append(at)
        return FailureBook(of_method, from_source)

    async def sms_sends_since(self, destination_index: str, since: datetime) -> list[datetime]:
        rows = await self._conn.execute(
            select(sms_sends.c.created_at)
            .where(
                sms_sends.c.destination_index == destination_index, sms_sends.c.created_at >= since
            )
            .order_by(sms_sends.c.created_at)
        )
        return [r[0] for r in rows]

    async def record_sms_send(
        self, destination_index: str, delivery_id: str, purpose: str, now: datetime
    ) -> None:
        await self._conn.execute(
            insert(sms_sends).values(
                id=new_id(),
                destination_index=destination_index,
                delivery_id=delivery_id,
                purpose=purpose,
                created_at=now,
            )
        )

    # --- proofs that are used once ----------------------------------------------------------

    async def consume_totp_step(self, subject: str, step: int) -> bool:
        """Advance the last accepted TOTP step; False if this or a later step was used already."""
        result = await _CONSUME_TOTP_STEP.run(self._conn, {"p_subject": subject, "p_step": step})
        return result.rowcount == 1

    async def unused_recovery_codes(self, subject: str) -> list[UnusedCode]:
        rows = await self._conn.execute(
            select(recovery_codes.c.id, recovery_codes.c.code_hash).where(
                recovery_codes.c.subject == subject, recovery_codes.c.used_at.is_(None)
            )
        )
        return [UnusedCode(r.id, r.code_hash) for r in rows]

    async def use_recovery_code(self, code_id: str, now: datetime) -> bool:
        result = await self._conn.execute(
            update(recovery_codes)
            .where(recovery_codes.c.id == code_id, recovery_codes.c.used_at.is_(None))
            .values(used_at=now)
        )
        return result.rowcount == 1

    # --- the unlock request's factors and outcome --------------------------------------------

    async def lock_request(
        self, unlock_request_id: str, *, read_here: UnlockRequestRow | None = None
    ) -> RequestState | None:
        """The request's state, locked for this transaction on PostgreSQL (SQLite's BEGIN
        IMMEDIATE already serialises writers). Read after the lock, it includes an erasure that
        committed since the caller last read the row.

        ``read_here``: the row as this transaction read it, unchanged since, and on PostgreSQL
        read locked (``UnlockRequestRepository.get_many(lock=True)``): the caller's promise.
        Nothing else can then have written it since, so it is the state, without a statement."""
        if read_here is not None:
            if read_here.id != unlock_request_id:
                raise ValueError("read_here is another request's row")
            return request_state(read_here)
        postgres = self._conn.dialect.name == "postgresql"
        stmt = _REQUEST_STATE_FOR_UPDATE if postgres else _REQUEST_STATE
        row = (await stmt.run(self._conn, {"p_id": unlock_request_id})).first()
        if row is None:
            return None
        return RequestState(
            row.status, list(json.loads(row.factors_satisfied)), row.review_reason, bool(row.erased)
        )

    async def update_request(
        self,
        unlock_request_id: str,
        *,
        status: str,
        factors: list[str],
        review_reason: str | None,
        now: datetime,
    ) -> None:
        update = RequestUpdate(unlock_request_id, status, factors, review_reason, now)
        await _UPDATE_REQUEST.run(self._conn, _update_params(update))

    async def enqueued_since(self, kind: str, subject: str, since: datetime) -> bool:
        """Whether an outbox event of ``kind`` for the account was written since ``since``."""
        found = await self._conn.execute(
            select(outbox_events.c.id)
            .where(
                outbox_events.c.subject == subject,
                outbox_events.c.kind == kind,
                outbox_events.c.created_at >= since,
            )
            .limit(1)
        )
        return found.first() is not None

    async def enqueue(
        self, kind: str, subject: str, payload: dict[str, object], now: datetime
    ) -> str:
        return (await self.enqueue_many([(kind, subject, payload)], now))[0]

    async def enqueue_many(
        self, events: list[tuple[str, str, dict[str, object]]], now: datetime
    ) -> list[str]:
        """Outbox events (kind, subject, payload), in one statement; their ids."""
        return await self.enqueue_at(
            [(kind, subject, payload, now) for kind, subject, payload in events]
        )

    async def enqueue_at(
        self, events: Sequence[tuple[str, str, dict[str, object], datetime]]
    ) -> list[str]:
        """Outbox events (kind, subject, payload, created at), in one statement; their ids."""
        ids: list[str] = []
        rows: list[dict[str, object]] = []
        for kind, subject, payload, now in events:
            event_id = new_id()
            ids.append(event_id)
            rows.append(
                {
                    "id": event_id,
                    "kind": kind,
                    "subject": subject,
                    "payload": json.dumps({"event_id": event_id, **payload}, sort_keys=True),
                    "created_at": now,
                    "next_attempt_at": now,
                }
            )
        if rows:
            await _INSERT_OUTBOX.run(self._conn, rows)
        return ids
