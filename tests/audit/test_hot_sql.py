"""The contract of audit.hot_sql: a HotStatement run in place on SQLite is SQLAlchemy's execution of
the same statement — the same SQL text, the same rows (values and types) and row count, and the
same database afterwards — for every HotStatement the service and the audit store define.

The rows come from a real scenario over the API (enrolments, decisions, a rejected and an accepted
proof, an approval), so the statements meet the data they meet in service.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, event, func, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit import hot_sql
from audit.hot_sql import (
    HOT_STATEMENTS,
    HotStatement,
    NotHot,
    Rows,
    in_place,
    savepoint,
)
from audit.integrator import ADVISORY_LOCK_KEY
from audit.store import audit_inbox
from service.methods.totp import TotpParameters, code_at
from service.persistence.tables import unlock_requests, verification_attempts
from service.schema import ALL_METADATA
from tests.service import test_challenges_api as flows
from tests.service.conftest import Api, _api

Params = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None


@pytest.fixture
def scenario(tmp_path: Path, database_url: str) -> Iterator[Api]:
    """An app on a file SQLite or on PostgreSQL after a little of everything."""
    for api in _api(tmp_path, database_url):
        secret = flows._enrol_totp(api, "acct-hot", at=flows.previous_step())
        flows._enrol_totp(api, "acct-other", at=flows.previous_step())
        flows._phone(api, "acct-hot")
        decision = flows._request(api, "acct-hot")
        challenge = flows._start(api, decision["id"], "totp").json()
        assert flows._verify(api, decision["id"], challenge["id"], code="000000").status_code == 422
        code = code_at(secret, datetime.now(UTC), TotpParameters())
        assert flows._verify(api, decision["id"], challenge["id"], code=code).status_code == 200
        second = flows._request(api, "acct-other")
        assert flows._start(api, second["id"], "totp").status_code == 201
        flows._request(api, "acct-never-seen")
        _integrated(api)
        yield api


def _integrated(api: Api, timeout: float = 30.0) -> None:
    """Until the background integrator has taken every queued entry into the log (on PostgreSQL
    the scenario's entries wait in the inbox): its commits would otherwise land between the
    snapshots the contract test compares (seen once, in a full test run)."""

    async def queued() -> int:
        async with api.ctx.engine.connect() as conn:
            return int((await _one(conn, "SELECT count(*) FROM audit_inbox"))[0])

    deadline = time.monotonic() + timeout
    while api.run(queued):
        assert time.monotonic() < deadline, "the integrator left entries in the inbox"
        time.sleep(0.05)


async def _one(conn: AsyncConnection, sql: str) -> Any:
    return (await conn.execute(text(sql))).first()


async def _cases(conn: AsyncConnection) -> dict[str, list[Params]]:
    """Parameters for each statement family (the name before any ``[n]``): rows that exist, rows
    that do not, datetimes, NULLs, one parameter set and several."""
    now = datetime.now(UTC)
    day_ago = now - timedelta(days=1)
    subject, other = (
        r[0] for r in (await conn.execute(text("SELECT subject FROM totp_enrolments"))).all()
    )
    open_ch = await _one(conn, "SELECT id FROM challenges WHERE status = 'open'")
    done_ch = await _one(conn, "SELECT id FROM challenges WHERE status = 'succeeded'")
    request = await _one(conn, "SELECT * FROM unlock_requests WHERE status = 'approved'")
    pending = await _one(conn, "SELECT id FROM unlock_requests WHERE status != 'approved'")
    attempt = await _one(conn, "SELECT id, source_index FROM verification_attempts")
    head = await _one(conn, "SELECT size, root, compact_range FROM audit_head")
    inbox_id = (await _one(conn, "SELECT max(inbox_id) FROM audit_log"))[0]
    # Through the table, so the values have its types (aware datetimes, not strings).
    typed = (
        (await conn.execute(select(unlock_requests).where(unlock_requests.c.id == request.id)))
        .one()
        ._asdict()
    )

    def copy_of_request() -> dict[str, Any]:
        return {**typed, "id": str(uuid.uuid4())}

    def attempt_row(outcome: str, source: str | None) -> dict[str, Any]:
        return {
            "id": str(uuid.uuid4()),
            "subject": subject,
            "unlock_request_id": request.id,
            "method": "totp",
            "outcome": outcome,
            "source_index": source,
            "created_at": now,
        }

    def outbox_row(kind: str) -> dict[str, Any]:
        event_id = str(uuid.uuid4())
        return {
            "id": event_id,
            "kind": kind,
            "subject": subject,
            "payload": json.dumps({"event_id": event_id}),
            "created_at": now,
            "next_attempt_at": now,
        }

    subjects = {"s0": subject, "s1": "f" * 64, "s2": other}
    windows = {"velocity_since": day_ago, "failures_since": day_ago, "throttle_since": day_ago}
    size = int(head.size)
    batch_rows = {
        "seqs": [size, size + 1],
        "leaves": [b"leaf", b"leaf 2"],
        "leaf_hashes": [bytes(32), bytes(range(32))],
        "inbox_ids": [10**9, 10**9 + 1],
    }
    return {
        "challenges.get": [{"p_id": done_ch.id}, {"p_id": open_ch.id}, {"p_id": "nope"}],
        "challenges.get_many": [{"p0": done_ch.id, "p1": open_ch.id, "p2": "nope"}],
        "challenges.get_many_locked": [{"p0": done_ch.id, "p1": open_ch.id, "p2": "nope"}],
        "challenges.complete": [
            {"p_id": open_ch.id, "p_now": now},
            {"p_id": done_ch.id, "p_now": now},
        ],
        "challenges.reserve_attempt": [
            {"p_id": open_ch.id, "p_max": 5},
            {"p_id": open_ch.id, "p_max": 0},
        ],
        "challenges.reserve_and_complete": [
            {"p_id": open_ch.id, "p_max": 0, "p_now": now},
            {"p_id": done_ch.id, "p_max": 5, "p_now": now},
            {"p_id": open_ch.id, "p_max": 5, "p_now": now},
        ],
        "challenges.attempts": [{"p_id": done_ch.id}],
        "challenges.close_failed": [{"p_id": open_ch.id, "p_now": now}],
        "attempts.insert": [
            attempt_row("pending", attempt.source_index),
            attempt_row("wrong_code", None),
            [attempt_row("wrong_code", None), attempt_row("success", "x" * 64)],
        ],
        "attempts.settle": [
            {"p_id": attempt.id, "p_outcome": "success"},
            {"p_id": "nope", "p_outcome": "success"},
        ],
        "attempts.failures_of_method": [
            {"p_since": day_ago, "p_subject": subject, "p_method": "totp"},
            {"p_since": now, "p_subject": subject, "p_method": "totp"},
        ],
        "attempts.failures_of_method_and_source": [
            {
                "p_since": day_ago,
                "p_subject": subject,
                "p_method": "totp",
                "p_source_since": day_ago,
                "p_source": attempt.source_index,
            }
        ],
        "attempts.failures_many": [
            {
                "p_since": day_ago,
                "p_source_since": day_ago,
                "s0": subject,
                "m0": "totp",
                "x0": attempt.source_index,
                "s1": other,
                "m1": "sms",
                "x1": None,
                "s2": subject,
                "m2": "recovery_code",
                "x2": "x" * 64,
            }
        ],
        "totp.consume_step": [
            {"p_subject": subject, "p_step": 10**12},
            {"p_subject": subject, "p_step": 1},
            {"p_subject": other, "p_step": 10**12},
        ],
        "unlock_requests.state": [{"p_id": request.id}, {"p_id": "nope"}],
        "unlock_requests.state_for_update": [{"p_id": pending.id}],
        "unlock_requests.update_state": [
            {
                "p_id": pending.id,
                "p_status": "review_required",
                "p_factors": '["totp"]',
                "p_review_reason": None,
                "p_now": now,
            }
        ],
        "unlock_requests.insert": [copy_of_request(), [copy_of_request(), copy_of_request()]],
        "unlock_requests.get": [{"p_id": request.id}, {"p_id": "nope"}],
        "unlock_requests.get_many": [{"p0": request.id, "p1": "nope", "p2": pending.id}],
        "unlock_requests.get_many_locked": [{"p0": request.id, "p1": "nope", "p2": pending.id}],
        "unlock_requests.decision_inputs": [{**subjects, **windows}],
        "unlock_requests.decision_inputs_pg": [{"subjects": [*subjects.values()], **windows}],
        "outbox.insert": [outbox_row("notify_person"), [outbox_row("a"), outbox_row("b")]],
        "accounts.snapshot_facts": [{"subject": subject}, {"subject": "f" * 64}],
        "accounts.linked": [{"subject": subject}],
        "accounts.linked_many": [subjects],
        "accounts.totp_many": [subjects],
        "audit_inbox.insert": [{"payload": b"{}", "created_at": now}],
        "audit_inbox.batch": [{"limit": 10}],
        # One per database (only_on); the scenario's inbox has drawn ids, so SQLite's counter
        # exists.
        "audit_inbox.reserve_ids_sqlite": [{"count": 1}, {"count": 3}],
        "audit_inbox.reserve_ids_pg": [{"count": 1}, {"count": 3}],
        "audit_log.insert": [
            [
                {
                    "seq": size + i,
                    "leaf": b"leaf",
                    "leaf_hash": bytes(32),
                    "inbox_id": 10**9 + i,
                    "integrated_at": now,
                }
                for i in range(2)
            ]
        ],
        "audit_log.index_of": [{"inbox_id": inbox_id}, {"inbox_id": -1}],
        "audit_head.get": [None],
        "audit_head.get_for_update": [None],
        "audit_head.move": [
            {
                "old_size": size,
                "new_size": size + 1,
                "new_root": bytes(32),
                "new_compact": head.compact_range,
                "now": now,
                "new_mac": bytes(range(32)),
            }
        ],
        "audit_head.with_inbox_pg": [{"limit": 10}, {"limit": 1}],  # PostgreSQL only
        "audit_head.log_move_and_checkpoint_pg": [  # PostgreSQL only (only_on)
            {
                "old_size": size,
                "new_size": size + 2,
                "new_root": bytes(32),
                "new_compact": head.compact_range,
                "now": now,
                "new_mac": bytes(range(32)),
                "note": "test",
                **batch_rows,
            },
            {  # the head is elsewhere: nothing moves, no checkpoint (the caller rolls back)
                "old_size": size + 5,
                "new_size": size + 6,
                "new_root": bytes(32),
                "new_compact": head.compact_range,
                "now": now,
                "new_mac": bytes(32),
                "note": "test",
                **batch_rows,
            },
        ],
        # PostgreSQL only (only_on); a session may take the same advisory lock again.
        "locks.advisory_xact": [{"p_key": -(2**63)}],
        "locks.advisory_xact_shared": [{"k0": -(2**63), "k1": 0, "k2": 2**63 - 1}],
        "locks.advisory_xact_many": [{"k0": -(2**63), "k1": 0, "k2": 2**63 - 1}],
        "locks.try_integration": [None],
        "locks.wait_integration": [None],
        "audit_checkpoints.insert": [
            {"size": size + 1, "root": bytes(32), "note": "test", "created_at": now}
        ],
        "audit_subtrees.insert": [
            [{"height": 8, "idx": 10**9 + i, "root": bytes([i]) * 32} for i in range(2)]
        ],
    }


def _family(statement: HotStatement) -> str:
    return statement.name.split("[", 1)[0]


def _statements(dialect: str) -> list[HotStatement]:
    """Every HotStatement the modules define for this database, with the sized families at the
    sizes used here."""
    from service.persistence import challenges, unlock_requests
    from service.persistence.accounts import linked_many, totp_many
    from service.persistence.locks import advisory_xact_locks, advisory_xact_locks_shared

    unlock_requests.decision_inputs_statement(3)
    unlock_requests.get_many_statement(3, False)
    unlock_requests.get_many_statement(3, True)
    challenges.get_many_statement(3, False)
    challenges.get_many_statement(3, True)
    challenges.failures_many_statement(3)
    linked_many(3)
    totp_many(3)
    advisory_xact_locks_shared(3)
    advisory_xact_locks(3)
    return [
        s
        for s in HOT_STATEMENTS
        if ("[" not in s.name or s.name.endswith("[3]")) and s.only_on in (None, dialect)
    ]


# Columns the app's outbox dispatcher changes while the test runs (committed concurrently on
# PostgreSQL): the comparison leaves them out.
_DELIVERY_STATE = frozenset({"attempts", "next_attempt_at", "delivered_at", "last_error"})


async def _database(conn: AsyncConnection) -> list[tuple[str, list[tuple[Any, ...]]]]:
    tables = []
    for metadata in ALL_METADATA:
        for table in metadata.sorted_tables:
            columns = [
                c
                for c in table.columns
                if table.name != "outbox_events" or c.name not in _DELIVERY_STATE
            ]
            rows = (await conn.execute(select(*columns))).all()
            tables.append((table.name, sorted((tuple(r) for r in rows), key=repr)))
    return tables


async def _restart_sequences(conn: AsyncConnection) -> None:
    """PostgreSQL: sequences ignore rollbacks; put each back at its table's maximum so the two
    runs of an INSERT draw the same ids (setval is not transactional either)."""
    if conn.dialect.name != "postgresql":
        return
    serial = await conn.execute(
        text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() "
            "AND (column_default LIKE 'nextval%' OR is_identity = 'YES')"
        )
    )
    for table, column in serial.all():
        await conn.execute(
            text(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"coalesce((SELECT max({column}) FROM {table}), 0) + 1, false)"
            )
        )


def _rows(result: Rows) -> list[list[tuple[str, type, Any]]]:
    return [[(k, type(v), v) for k, v in row._asdict().items()] for row in result]


def test_every_hot_statement_runs_in_place_as_sqlalchemy_runs_it(scenario: Api) -> None:
    engine = scenario.app.state.engine

    async def compare() -> tuple[list[str], list[str], list[str]]:
        compared: list[str] = []
        changed: list[str] = []
        not_hot: list[str] = []
        executed: list[str] = []

        def seen(connection: Any, cursor: Any, sql: str, *args: Any) -> None:
            if connection is mine[0]:  # not the app's integrator or dispatcher
                executed.append(sql)

        mine: list[Any] = [None]

        async with engine.begin() as conn:
            mine[0] = conn.sync_connection
            cases = await _cases(conn)  # begins the transaction (on asyncpg: at a statement)
            if conn.dialect.name == "postgresql":
                # The app's integrator may take the integration lock between the two runs of
                # locks.try_integration (a savepoint's rollback releases what it took): held
                # here, outside the savepoints, both runs take it again as its holder.
                await conn.execute(select(func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
            db = in_place(conn)
            assert db is not None, "the scenario's statements must run in place"
            statements = _statements(conn.dialect.name)
            missing = sorted({_family(s) for s in statements} - set(cases))
            assert not missing, f"HotStatements without a contract case: {missing}"
            for statement in statements:
                for params in cases[_family(statement)]:
                    before = await _database(conn)
                    await _restart_sequences(conn)
                    savepoint = await conn.begin_nested()
                    try:
                        if isinstance(db, sqlite3.Connection):
                            ran_in_place = statement.run_sqlite(db, conn.dialect, params)
                        else:
                            ran_in_place = await statement.run_asyncpg(conn, db, params)
                    except NotHot:
                        await savepoint.rollback()
                        # Refused before running: run() hands this shape to SQLAlchemy.
                        not_hot.append(f"{statement.name} with {params!r}")
                        continue
                    after_in_place = await _database(conn)
                    await savepoint.rollback()

                    executed.clear()
                    await _restart_sequences(conn)
                    savepoint = await conn.begin_nested()
                    event.listen(engine.sync_engine, "before_cursor_execute", seen)
                    try:
                        by_sqlalchemy = await statement.run_sqlalchemy(conn, params)
                    finally:
                        event.remove(engine.sync_engine, "before_cursor_execute", seen)
                    after_sqlalchemy = await _database(conn)
                    await savepoint.rollback()

                    label = f"{statement.name} with {params!r}"
                    compiled = statement.compiled(conn.dialect, params)
                    assert executed == [compiled.sql], label
                    assert _rows(ran_in_place) == _rows(by_sqlalchemy), label
                    assert ran_in_place.rowcount == by_sqlalchemy.rowcount, label
                    assert after_in_place == after_sqlalchemy, label
                    # The parameters came from the plan worked out at compile time, and it
                    # agrees with SQLAlchemy's construct_params for this parameter set.
                    assert compiled.plan is not None, label
                    for one in (
                        [params] if params is None or isinstance(params, Mapping) else params
                    ):
                        assert compiled.parameters(one or {}) == compiled.constructed(one or {}), (
                            label
                        )
                    compared.append(label)
                    if after_in_place != before:
                        changed.append(label)
            await conn.rollback()
        return compared, changed, not_hot

    compared, changed, not_hot = scenario.run(compare)
    assert not_hot == []  # every case here runs in place on both databases
    # Every write changed something in at least one case (the databases compared are not
    # trivially equal), and no case was skipped.
    writes: tuple[str, ...] = (
        "insert",
        "complete",
        "reserve_attempt",
        "close_failed",
        "settle",
        "consume_step",
    )
    writes += ("update_state", "move", "log_move", "reserve_and_complete")
    assert {c.split(" ", 1)[0] for c in changed} == {
        s.name
        for s in _statements(scenario.ctx.engine.dialect.name)
        if s.name.split(".", 1)[1].startswith(writes)
    }
    postgres = scenario.ctx.engine.dialect.name == "postgresql"
    assert len(compared) == (66 if postgres else 56)


def _attempt(attempt_id: str) -> dict[str, Any]:
    """A failed SMS attempt row of no account, for the verification_attempts insert."""
    return {
        "id": attempt_id,
        "subject": "s" * 64,
        "unlock_request_id": None,
        "method": "sms",
        "outcome": "wrong_code",
        "source_index": None,
        "created_at": datetime.now(UTC),
    }


def test_a_write_in_place_commits_and_rolls_back_with_the_transaction(scenario: Api) -> None:
    engine = scenario.app.state.engine
    from service.persistence.challenges import _INSERT_ATTEMPT

    kept, dropped = str(uuid.uuid4()), str(uuid.uuid4())

    async def failing_flow() -> None:
        async with engine.begin() as conn:
            await _INSERT_ATTEMPT.run(conn, _attempt(dropped))
            raise RuntimeError("the flow fails after its write")

    async def scenario_steps() -> set[str]:
        async with engine.begin() as conn:
            await _INSERT_ATTEMPT.run(conn, _attempt(kept))
        with pytest.raises(RuntimeError):
            await failing_flow()
        async with engine.connect() as conn:
            ids = select(verification_attempts.c.id).where(
                verification_attempts.c.id.in_([kept, dropped])
            )
            return {r[0] for r in await conn.execute(ids)}

    assert scenario.run(scenario_steps) == {kept}


def test_count_changed_is_the_rows_the_executions_changed_in_place_or_not(scenario: Api) -> None:
    """count_changed over several parameter sets (a batch of proofs checks its planned writes
    against it): the rows changed in all, a row changed twice counted twice, one that matches
    nothing not at all — in place (SQLite: sqlite3's executemany; PostgreSQL: asyncpg's
    fetchmany with RETURNING 1) and through SQLAlchemy's execution (a transaction not begun
    yet: one by one), leaving the same rows; refused for what is not an UPDATE or a DELETE."""
    from service.persistence.challenges import _INSERT_ATTEMPT, _SETTLE_ATTEMPT

    engine = scenario.app.state.engine
    ids = [str(uuid.uuid4()) for _ in range(3)]
    sets = [
        {"p_id": ids[0], "p_outcome": "first"},
        {"p_id": "no-such-attempt", "p_outcome": "none"},
        {"p_id": ids[1], "p_outcome": "second"},
        {"p_id": ids[0], "p_outcome": "again"},
    ]

    async def setup() -> None:
        async with engine.begin() as conn:
            await _INSERT_ATTEMPT.run(conn, [_attempt(i) for i in ids])

    async def counted(begun: bool, params: list[dict[str, Any]]) -> tuple[bool, int, list[Any]]:
        async with engine.connect() as conn:
            if begun:
                await conn.execute(text("SELECT 1"))  # the transaction has begun: in place
            was_in_place = in_place(conn) is not None
            changed = await _SETTLE_ATTEMPT.count_changed(conn, params)
            outcomes = select(verification_attempts.c.id, verification_attempts.c.outcome)
            rows = await conn.execute(outcomes.where(verification_attempts.c.id.in_(ids)))
            await conn.rollback()
        return was_in_place, changed, sorted(tuple(r) for r in rows)

    scenario.run(setup)
    left = sorted([(ids[0], "again"), (ids[1], "second"), (ids[2], "wrong_code")])
    assert scenario.run(counted, True, sets) == (True, 3, left)
    assert scenario.run(counted, False, sets) == (False, 3, left)
    assert scenario.run(counted, True, sets[1:2])[1:] == (0, sorted((i, "wrong_code") for i in ids))
    assert scenario.run(counted, True, [])[1] == 0

    async def refused(statement: HotStatement) -> None:
        async with engine.connect() as conn:
            await statement.count_changed(conn, [_attempt(str(uuid.uuid4()))] * 2)

    with pytest.raises(ValueError, match="UPDATE or a DELETE"):
        scenario.run(refused, _INSERT_ATTEMPT)
    returning = HotStatement(
        "test.returning",
        delete(verification_attempts)
        .where(verification_attempts.c.id == "none")
        .returning(verification_attempts.c.id),
    )
    HOT_STATEMENTS.remove(returning)  # a test's own: not one the contract test must cover
    with pytest.raises(ValueError, match="UPDATE or a DELETE"):
        scenario.run(refused, returning)


def test_a_database_error_in_place_is_sqlalchemys_error(scenario: Api) -> None:
    """The error map (service.errors) and callers see what SQLAlchemy would have raised."""
    from service.persistence.challenges import _INSERT_ATTEMPT

    engine = scenario.app.state.engine
    attempt = _attempt("dup")

    async def twice(second_in_place: bool) -> tuple[type[BaseException], type[object]]:
        async with engine.begin() as conn:
            await _INSERT_ATTEMPT.run_sqlalchemy(conn, attempt)  # and the transaction has begun
            assert in_place(conn) is not None
            run = _INSERT_ATTEMPT.run if second_in_place else _INSERT_ATTEMPT.run_sqlalchemy
            try:
                await run(conn, attempt)
            except DBAPIError as exc:
                await conn.rollback()
                return type(exc), type(exc.orig)
        raise AssertionError("the second insert of one id did not fail")

    raised_in_place = scenario.run(twice, True)
    assert raised_in_place == scenario.run(twice, False)
    assert issubclass(raised_in_place[0], IntegrityError)


def test_without_a_begun_transaction_the_statement_goes_through_sqlalchemy(scenario: Api) -> None:
    """A connection that has not begun (autobegin) gets SQLAlchemy's execution, which begins it
    (SQLite: BEGIN IMMEDIATE through the engine's hook; asyncpg: its transaction at the first
    statement); in place only inside the transaction."""
    from service.persistence.unlock_requests import _GET

    engine = scenario.app.state.engine
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(args[2])

    async def reads() -> tuple[bool, bool]:
        event.listen(engine.sync_engine, "before_cursor_execute", record)
        try:
            async with engine.connect() as conn:
                before = in_place(conn) is not None
                await _GET.run(conn, {"p_id": "nope"})
                after = in_place(conn) is not None
                await _GET.run(conn, {"p_id": "nope"})
                await conn.rollback()
            return before, after
        finally:
            event.remove(engine.sync_engine, "before_cursor_execute", record)

    assert scenario.run(reads) == (False, True)
    gets = [sql for sql in seen if sql.startswith("SELECT unlock_requests.id")]
    assert len(gets) == 1  # the first through SQLAlchemy, the second in place


def test_what_only_sqlalchemys_execution_does_is_left_to_it(scenario: Api) -> None:
    """Expanding IN parameters and several rows with RETURNING are rendered by SQLAlchemy's
    execution: such a statement is refused in place, and run() hands it to SQLAlchemy."""
    engine = scenario.app.state.engine
    expanding = HotStatement(
        "test.expanding", delete(audit_inbox).where(audit_inbox.c.id.in_([-1, -2]))
    )
    many_returning = HotStatement(
        "test.many_returning", insert(audit_inbox).returning(audit_inbox.c.id)
    )
    for statement in (expanding, many_returning):
        HOT_STATEMENTS.remove(statement)  # not part of the service
    rows = [{"payload": b"a", "created_at": datetime.now(UTC)}] * 2

    async def refused() -> tuple[int, int, int]:
        async with engine.begin() as conn:
            await conn.execute(select(1))  # the transaction has begun (asyncpg: at a statement)
            assert in_place(conn) is not None
            for statement, params in ((expanding, None), (many_returning, rows)):
                with pytest.raises(NotHot):
                    statement.compiled(conn.dialect, params)
            deleted = (await expanding.run(conn)).rowcount
            ids = [r.id for r in await many_returning.run(conn, rows)]
            await conn.rollback()
        return deleted, len(ids), len(set(ids))

    assert scenario.run(refused) == (0, 2, 2)


def test_a_sqlite_connection_in_aiosqlites_thread_never_runs_in_place(tmp_path: Path) -> None:
    """In place on SQLite is only for the connection service.sqlite_inline opens."""
    from service.db import create_engine

    async def check(inline: bool) -> bool:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", inline_sqlite=inline)
        try:
            async with engine.begin() as conn:
                await conn.execute(select(1))
                return in_place(conn) is not None
        finally:
            await engine.dispose()

    assert (asyncio.run(check(False)), asyncio.run(check(True))) == (False, True)


async def _inbox_payloads(engine: AsyncEngine) -> list[bytes]:
    """The inbox's payloads in the order written: what the savepoint tests kept."""
    async with engine.connect() as conn:
        rows = await conn.execute(select(audit_inbox.c.payload).order_by(audit_inbox.c.id))
        return [bytes(r[0]) for r in rows]


def test_a_savepoint_undoes_what_its_block_wrote_and_keeps_it_otherwise(database_url: str) -> None:
    """audit.hot_sql.savepoint, in place on the driver of either database once the transaction
    has begun: a block that raises is undone, a statement that failed inside it included (on
    PostgreSQL it leaves the transaction aborted until the savepoint is rolled back), and the
    caller's transaction goes on."""
    from audit.store import _INSERT_INBOX, create_schema
    from service.db import create_engine

    now = datetime.now(UTC)

    async def main() -> tuple[bool, list[bytes]]:
        engine = create_engine(database_url)
        try:
            await create_schema(engine)
            async with engine.begin() as conn:
                # A statement first: asyncpg's transaction begins with it, and from then on the
                # savepoints run in place on PostgreSQL too.
                await _INSERT_INBOX.run(conn, {"payload": b"first", "created_at": now})
                running_in_place = in_place(conn) is not None
                async with savepoint(conn):
                    await _INSERT_INBOX.run(conn, {"payload": b"kept", "created_at": now})
                with pytest.raises(RuntimeError):
                    await failing(conn)
                with pytest.raises(IntegrityError):
                    await failing_statement(conn)
                async with savepoint(conn):
                    await _INSERT_INBOX.run(conn, {"payload": b"after", "created_at": now})
                # Nested (one savepoint name for all, on SQLite): each block undoes its own.
                async with savepoint(conn):
                    await _INSERT_INBOX.run(conn, {"payload": b"outer", "created_at": now})
                    with pytest.raises(RuntimeError):
                        await failing(conn)
                    async with savepoint(conn):
                        await _INSERT_INBOX.run(conn, {"payload": b"inner", "created_at": now})
                with pytest.raises(RuntimeError):
                    await failing_around_a_kept_block(conn)
                with pytest.raises(IntegrityError):
                    await failing_statement_after_a_kept_block(conn)
                async with savepoint(conn):
                    await _INSERT_INBOX.run(conn, {"payload": b"last", "created_at": now})
            # A new transaction (on PostgreSQL the same pooled connection): nothing of the
            # last one's savepoints carries over.
            async with engine.begin() as conn:
                await _INSERT_INBOX.run(conn, {"payload": b"next", "created_at": now})
                async with savepoint(conn):
                    await _INSERT_INBOX.run(conn, {"payload": b"next kept", "created_at": now})
            return running_in_place, await _inbox_payloads(engine)
        finally:
            await engine.dispose()

    async def failing(conn: AsyncConnection) -> None:
        async with savepoint(conn):
            await _INSERT_INBOX.run(conn, {"payload": b"undone", "created_at": now})
            raise RuntimeError("this proof raises")

    async def failing_statement(conn: AsyncConnection) -> None:
        async with savepoint(conn):
            await _INSERT_INBOX.run(conn, {"payload": b"undone", "created_at": now})
            await _INSERT_INBOX.run(conn, {"payload": None, "created_at": now})  # NOT NULL

    async def failing_around_a_kept_block(conn: AsyncConnection) -> None:
        async with savepoint(conn):
            async with savepoint(conn):
                await _INSERT_INBOX.run(conn, {"payload": b"undone too", "created_at": now})
            raise RuntimeError("the outer block raises")

    async def failing_statement_after_a_kept_block(conn: AsyncConnection) -> None:
        async with savepoint(conn):
            async with savepoint(conn):
                await _INSERT_INBOX.run(conn, {"payload": b"undone as well", "created_at": now})
            await _INSERT_INBOX.run(conn, {"payload": None, "created_at": now})  # NOT NULL

    running_in_place, payloads = asyncio.run(main())
    assert running_in_place
    kept = [b"first", b"kept", b"after", b"outer", b"inner", b"last"]
    assert payloads == [*kept, b"next", b"next kept"]


@pytest.mark.parametrize("raised", [asyncio.CancelledError, RuntimeError])
def test_a_cancellation_stays_one_when_the_savepoint_cannot_be_undone(
    database_url: str, raised: type[BaseException]
) -> None:
    """A block cancelled while its savepoint can no longer be rolled back (here: released
    behind the helper's back; in service, a lost connection) raises the cancellation, not the
    undo's database error, which a flow catching Exception would take for the unit's outcome
    and go on; an ordinary error is replaced by the undo's, as before."""
    from audit.store import _INSERT_INBOX, create_schema
    from service.db import create_engine

    now = datetime.now(UTC)

    async def main() -> type[BaseException]:
        engine = create_engine(database_url)
        try:
            await create_schema(engine)
            async with engine.connect() as conn:
                await conn.begin()
                await _INSERT_INBOX.run(conn, {"payload": b"first", "created_at": now})
                assert in_place(conn) is not None
                try:
                    async with savepoint(conn):
                        await conn.execute(text("RELEASE hot_savepoint"))
                        raise raised()
                except BaseException as exc:  # what came out is the finding
                    seen: type[BaseException] = type(exc)
                await conn.rollback()
            return seen
        finally:
            await engine.dispose()

    seen = asyncio.run(main())
    if raised is asyncio.CancelledError:
        assert seen is asyncio.CancelledError
    else:
        # The undo's error (in place on SQLite the driver's own, as SAVEPOINT's errors are).
        assert issubclass(seen, DBAPIError | sqlite3.Error), seen


def test_a_kept_savepoint_is_released_with_the_next_one_on_postgresql(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Proofs in a batch each take a savepoint: a kept one's RELEASE goes with the next SAVEPOINT
    (one round trip, not two), and COMMIT releases the last."""
    import asyncpg  # type: ignore[import-untyped]

    from audit.store import _INSERT_INBOX, create_schema
    from service.db import create_engine

    sent: list[str] = []
    execute = asyncpg.connection.Connection.execute

    async def counting(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await execute(self, query, *args, **kwargs)

    now = datetime.now(UTC)

    async def main() -> int:
        engine = create_engine(postgres_url)
        try:
            await create_schema(engine)
            async with engine.begin() as conn:
                await _INSERT_INBOX.run(conn, {"payload": b"first", "created_at": now})
                monkeypatch.setattr(asyncpg.connection.Connection, "execute", counting)
                for i in range(3):
                    async with savepoint(conn):
                        await _INSERT_INBOX.run(conn, {"payload": b"%d" % i, "created_at": now})
            return len(await _inbox_payloads(engine))
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == 4
    gc.collect()
    assert not hot_sql._OWED, "what a finished transaction owed outlived it"
    savepoints = [q for q in sent if "hot_savepoint" in q]
    assert savepoints == [
        "SAVEPOINT hot_savepoint",
        "RELEASE hot_savepoint; SAVEPOINT hot_savepoint",
        "RELEASE hot_savepoint; SAVEPOINT hot_savepoint",
    ]


def test_savepoints_inside_one_taken_before_the_transaction_began(database_url: str) -> None:
    """A savepoint taken before the transaction's first statement is SQLAlchemy's; the blocks
    inside it run in place, and its RELEASE (or ROLLBACK TO) takes theirs with it: a savepoint
    after it must not release them again (on PostgreSQL that fails without the bookkeeping)."""
    from audit.store import _INSERT_INBOX, create_schema
    from service.db import create_engine

    now = datetime.now(UTC)

    async def main() -> list[bytes]:
        engine = create_engine(database_url)
        try:
            await create_schema(engine)
            for outer_fails in (False, True):
                async with engine.begin() as conn:
                    with contextlib.suppress(RuntimeError):
                        async with savepoint(conn):  # nothing has run yet in this transaction
                            async with savepoint(conn):
                                await _INSERT_INBOX.run(
                                    conn, {"payload": b"inner %d" % outer_fails, "created_at": now}
                                )
                            if outer_fails:
                                raise RuntimeError("the outer block raises")
                    async with savepoint(conn):
                        await _INSERT_INBOX.run(
                            conn, {"payload": b"after %d" % outer_fails, "created_at": now}
                        )
            return await _inbox_payloads(engine)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == [b"inner 0", b"after 0", b"after 1"]


def test_rows_one_and_scalar_one_want_exactly_one_row() -> None:
    """As SQLAlchemy's Result: the repositories rely on these raising, not on a first row."""
    assert Rows([(7, "x")], -1).one() == (7, "x")
    assert Rows([(7, "x")], -1).scalar_one() == 7
    for rows, error in (([], NoResultFound), ([(1,), (2,)], MultipleResultsFound)):
        with pytest.raises(error):
            Rows(rows, -1).one()
        with pytest.raises(error):
            Rows(rows, -1).scalar_one()
    assert Rows([], -1).first() is None
    assert Rows([], -1).scalar() is None
