"""Unlock requests and the history the risk engine counts."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import (
    ColumnElement,
    Label,
    ScalarSelect,
    Select,
    String,
    bindparam,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import NamedFromClause

from audit.hot_sql import HotStatement, read_snapshot
from audit.store import audit_log
from policy.model import Method, RequestHistory
from service.data_keys import KEY_COLUMNS, KeyRow, account_data_keys
from service.persistence import UtcDateTime, padded, subjects_array
from service.persistence.accounts import (
    AccountSnapshot,
    linked_from_json,
    linked_json,
    linked_many,
    snapshot_facts,
    snapshot_from,
)
from service.persistence.tables import ATTEMPT_FAILED, unlock_requests, verification_attempts


class UnlockRequestRow(msgspec.Struct, frozen=True):
    id: str
    subject: str
    account_id_sealed: str | None
    known_account: bool
    status: str
    decision_json: bytes
    audit_inbox_id: int
    factors_satisfied: str
    review_reason: str | None
    source_index: str | None
    created_at: datetime
    expires_at: datetime
    # The log index of the decision's audit entry (audit_log.seq through audit_inbox_id), read
    # with the row: None only while that entry waits in the inbox.
    audit_index: int | None


# In UnlockRequestRow's field order: a row read with these columns makes one positionally.
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
    audit_log.c.seq.label("audit_index"),
)
# Every read of a request carries its decision's log index: a proof's answer and a GET need it,
# and a join on audit_log's unique inbox_id costs less than a statement of its own.
_WITH_INDEX = unlock_requests.outerjoin(
    audit_log, audit_log.c.inbox_id == unlock_requests.c.audit_inbox_id
)


def _failures(
    subject: ColumnElement[Any], since: str, method: str | None = None
) -> ScalarSelect[Any]:
    where = [
        verification_attempts.c.subject == subject,
        ATTEMPT_FAILED,
        verification_attempts.c.created_at >= bindparam(since, type_=UtcDateTime),
    ]
    if method is not None:
        where.append(verification_attempts.c.method == method)
    return select(func.count()).where(*where).scalar_subquery()


_METHODS = tuple(m.value for m in Method)


def _history_columns(subject: ColumnElement[Any]) -> list[Label[Any]]:
    """What the risk engine counts for ``subject``: requests in the velocity window, failed
    verifications, and failures per method in the throttle window."""
    requests = (
        select(func.count())
        .where(
            unlock_requests.c.subject == subject,
            unlock_requests.c.created_at >= bindparam("velocity_since", type_=UtcDateTime),
        )
        .scalar_subquery()
    )
    return [
        requests.label("recent_requests"),
        _failures(subject, "failures_since").label("recent_failures"),
        *(_failures(subject, "throttle_since", m).label(f"throttle_{m}") for m in _METHODS),
    ]


@functools.lru_cache(maxsize=128)
def decision_inputs_statement(count: int) -> HotStatement:
    """A decision's reads for ``count`` accounts (parameters s0..s{count-1}) in one statement:
    the account's facts, the history counts and the data key, one row per account whether or
    not it exists. Built once per count: construction costs more than SQLite's work."""
    anchor = union_all(
        *(select(bindparam(f"s{i}", type_=String).label("subject")) for i in range(count))
    ).subquery("anchor")
    return HotStatement(f"unlock_requests.decision_inputs[{count}]", _decision_inputs(anchor))


def _decision_inputs(anchor: NamedFromClause) -> Select[Any]:
    return (
        snapshot_facts(anchor)
        .add_columns(
            anchor.c.subject.label("anchor_subject"),
            *_history_columns(anchor.c.subject),
            *KEY_COLUMNS,
        )
        .outerjoin(account_data_keys, account_data_keys.c.subject == anchor.c.subject)
    )


# decision_inputs_statement on PostgreSQL: the anchor is the array's rows (subjects_array), one
# statement for every batch size. Measured with 32 accounts (psql, warm): planned 0.7 against
# 2.6 ms, and once generic (after five runs, as PostgreSQL does) run in 0.58 against 0.67 ms.
_ARRAY_ANCHOR = func.unnest(subjects_array()).table_valued("subject").render_derived(name="anchor")
DECISION_INPUTS_PG = HotStatement(
    "unlock_requests.decision_inputs_pg",
    _decision_inputs(_ARRAY_ANCHOR).add_columns(linked_json(_ARRAY_ANCHOR).label("linked_json")),
    only_on="postgresql",
)


_INSERT = HotStatement("unlock_requests.insert", insert(unlock_requests))
# Built once (see service/persistence/challenges.py): read on every proof and every GET.
_GET = HotStatement(
    "unlock_requests.get",
    select(*_COLUMNS).select_from(_WITH_INDEX).where(unlock_requests.c.id == bindparam("p_id")),
)


@functools.lru_cache(maxsize=128)
def get_many_statement(count: int, lock: bool, /) -> HotStatement:
    """``count`` requests by id (parameters p0..p{count-1}) in one statement: a batch of proofs
    reads its requests at once. Built once per count, as decision_inputs_statement. ``lock``:
    the rows locked for the transaction on PostgreSQL (in id order, so two transactions locking
    overlapping sets cannot deadlock on them; SQLite's BEGIN IMMEDIATE already serialises
    writers and renders no lock)."""
    # Positional only: lru_cache would key (3, False) and (3, lock=False) apart, two statements.
    ids = [bindparam(f"p{i}", type_=String) for i in range(count)]
    statement = select(*_COLUMNS).select_from(_WITH_INDEX).where(unlock_requests.c.id.in_(ids))
    if lock:
        statement = statement.order_by(unlock_requests.c.id).with_for_update(of=unlock_requests)
    family = "get_many_locked" if lock else "get_many"
    return HotStatement(f"unlock_requests.{family}[{count}]", statement)


class DecisionInputs(msgspec.Struct, frozen=True):
    snapshot: AccountSnapshot
    history: RequestHistory
    throttled: frozenset[str]
    key_row: KeyRow | None


class UnlockRequestRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def decision_inputs(
        self,
        subjects: Sequence[str],
        now: datetime,
        velocity_window: timedelta,
        failures_window: timedelta,
        throttle_window: timedelta,
        throttle_limit: int,
        outside: sqlite3.Connection | None = None,
    ) -> dict[str, DecisionInputs]:
        """Everything the decisions for these accounts read, in two statements for all of them
        (one on PostgreSQL), the same whether or not an account exists (OWASP-FP-1/2).
        ``outside``: read on that SQLite connection in a read transaction of their own, not the
        caller's (which has not begun: service.db.reader)."""
        params: dict[str, object] = {
            "velocity_since": now - velocity_window,
            "failures_since": now - failures_window,
            "throttle_since": now - throttle_window,
        }
        linked: dict[str, list[Any]] = {}
        if self._conn.dialect.name == "postgresql":
            # One statement: the linked identities come as a JSON column of each row.
            params["subjects"] = list(subjects)
            rows = (await DECISION_INPUTS_PG.run(self._conn, params)).all()
            for row in rows:
                linked[row.anchor_subject] = linked_from_json(row.linked_json)
        else:
            params |= {f"s{i}": subject for i, subject in enumerate(subjects)}
            inputs = decision_inputs_statement(len(subjects))
            linked_of = linked_many(len(subjects))
            with read_snapshot(outside):
                rows = (await inputs.run(self._conn, params, outside=outside)).all()
                linked_rows = (await linked_of.run(self._conn, params, outside=outside)).all()
            for r in linked_rows:
                linked.setdefault(r.subject, []).append(r)
        found = {}
        for row in rows:
            subject = row.anchor_subject
            found[subject] = DecisionInputs(
                snapshot=snapshot_from(subject, row, linked.get(subject, ())),
                history=RequestHistory(
                    recent_unlock_requests=int(row.recent_requests),
                    recent_failed_verifications=int(row.recent_failures),
                ),
                throttled=frozenset(
                    method
                    for method in _METHODS
                    if int(getattr(row, f"throttle_{method}")) >= throttle_limit
                ),
                key_row=None
                if row.key_version is None
                else (int(row.key_version), row.wrapped_key, row.destroyed_at),
            )
        return found

    async def insert_many(self, rows: Sequence[Mapping[str, object]]) -> None:
        await _INSERT.run(self._conn, list(rows))

    async def get(self, request_id: str) -> UnlockRequestRow | None:
        row = (await _GET.run(self._conn, {"p_id": request_id})).first()
        return None if row is None else UnlockRequestRow(*row)

    async def get_many(
        self,
        request_ids: Sequence[str],
        *,
        lock: bool = False,
        outside: sqlite3.Connection | None = None,
    ) -> dict[str, UnlockRequestRow]:
        """The requests of these ids that exist, by id; ``lock``: locked until the transaction
        ends (PostgreSQL), so what is read here is what a write later in it changes;
        ``outside``: read there, not in the transaction (HotStatement.run)."""
        if lock:
            request_ids = padded(request_ids)
        statement = get_many_statement(len(request_ids), lock)
        params = {f"p{i}": r for i, r in enumerate(request_ids)}
        rows = await statement.run(self._conn, params, outside=outside)
        return {row.id: UnlockRequestRow(*row) for row in rows}

    async def for_subject(self, subject: str, limit: int) -> list[UnlockRequestRow]:
        rows = (
            await self._conn.execute(
                select(*_COLUMNS)
                .select_from(_WITH_INDEX)
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
