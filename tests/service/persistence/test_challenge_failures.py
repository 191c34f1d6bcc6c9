"""The throttles' failures a batch of proofs reads once (ChallengeRepository.failure_book): for
every key, what one proof's own read (``failures_since``, ``method_failures_since``) returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from audit.hot_sql import HotStatement
from service.persistence.challenges import (
    _FAILURES_OF_METHOD,
    _FAILURES_OF_METHOD_AND_SOURCE,
    ChallengeRepository,
    FailureBook,
    failures_many_statement,
)
from service.persistence.tables import ATTEMPT_FAILED
from service.persistence.unlock_requests import DECISION_INPUTS_PG, decision_inputs_statement
from tests.service.conftest import Api, assert_condition_is_the_models, stored_indexes

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
A, B = "a" * 64, "b" * 64
SOURCE, OTHER_SOURCE = "5" * 64, "6" * 64


def test_one_read_for_a_batch_returns_what_each_proofs_own_read_would(api: Api) -> None:
    attempts = [
        (A, "totp", "wrong_code", SOURCE, NOW - timedelta(minutes=5)),
        (A, "totp", "pending", None, NOW - timedelta(hours=3)),
        (A, "totp", "success", SOURCE, NOW - timedelta(minutes=4)),  # not a failure
        (A, "totp", "wrong_code", SOURCE, NOW - timedelta(hours=30)),  # before the day
        (A, "sms", "wrong_code", OTHER_SOURCE, NOW - timedelta(minutes=20)),
        (B, "totp", "wrong_code", SOURCE, NOW - timedelta(minutes=50)),
        (B, "totp", "expired", SOURCE, NOW - timedelta(minutes=70)),  # before the source's hour
    ]
    keys = [(A, "totp", SOURCE), (A, "sms", None), (B, "totp", OTHER_SOURCE), (B, "sms", SOURCE)]
    day, hour = NOW - timedelta(hours=24), NOW - timedelta(hours=1)

    async def read() -> tuple[FailureBook, list[tuple[list[datetime], list[datetime]]]]:
        async with api.app.state.engine.begin() as conn:
            repo = ChallengeRepository(conn)
            for subject, method, outcome, source, at in attempts:
                await repo.record_attempt(subject, "r", method, outcome, source, at)
            book = await repo.failure_book(keys, day, hour)
            own: list[tuple[list[datetime], list[datetime]]] = []
            for subject, method, source in keys:
                if source is None:
                    own.append((await repo.method_failures_since(day, subject, method), []))
                else:
                    own.append(await repo.failures_since(day, subject, method, hour, source))
            await conn.rollback()
        return book, own

    book, own = api.run(read)
    from_book = [
        (book.of_method(s, m, day), [] if x is None else book.from_source(x, hour))
        for s, m, x in keys
    ]
    assert from_book == own
    # The case is not empty: both kinds, several keys.
    assert [len(m) + len(s) for m, s in own] == [2 + 2, 1, 2 + 1, 0 + 2]


def test_a_recorded_failure_counts_from_its_time_on() -> None:
    book = FailureBook({}, {})
    late, early = NOW - timedelta(minutes=1), NOW - timedelta(minutes=30)
    book.add(A, "totp", SOURCE, late)
    book.add(A, "totp", None, early)  # no source: counts for the account only
    assert book.of_method(A, "totp", NOW - timedelta(hours=1)) == [early, late]  # oldest first
    assert book.of_method(A, "totp", NOW - timedelta(minutes=10)) == [late]
    assert book.of_method(A, "sms", NOW - timedelta(hours=1)) == []
    assert book.from_source(SOURCE, NOW - timedelta(hours=1)) == [late]
    assert book.from_source(OTHER_SOURCE, NOW - timedelta(hours=1)) == []


BY_ACCOUNT = "ix_verification_attempts_subject_failed"
BY_SOURCE = "ix_verification_attempts_source_failed"
BATCH = 4


def _failure_reads(postgres: bool) -> list[tuple[HotStatement, dict[str, object], set[str]]]:
    """Every statement that counts failed attempts on this database, with parameters for one
    key, and the indexes it should read."""
    day, hour = NOW - timedelta(hours=24), NOW - timedelta(hours=1)
    one = {"p_since": day, "p_subject": A, "p_method": "totp"}
    # Batches' statements for several keys: with one, an OR of keys is no OR at all (SQLite's
    # planner scanned a whole index for four OR-ed (account, method) pairs).
    many: dict[str, object] = {"p_since": day, "p_source_since": hour}
    windows: dict[str, object] = {"velocity_since": day, "failures_since": day}
    windows["throttle_since"] = day
    subjects = [f"{i}" * 64 for i in range(BATCH)]
    for i in range(BATCH):
        many |= {f"s{i}": subjects[i], f"x{i}": f"{i + 5}" * 64}
    reads: list[tuple[HotStatement, dict[str, object], set[str]]] = [
        (_FAILURES_OF_METHOD, one, {BY_ACCOUNT}),
        (
            _FAILURES_OF_METHOD_AND_SOURCE,
            {**one, "p_source_since": hour, "p_source": SOURCE},
            {BY_ACCOUNT, BY_SOURCE},
        ),
        (failures_many_statement(BATCH), many, {BY_ACCOUNT, BY_SOURCE}),
    ]
    if postgres:  # the accounts as one array there
        return [*reads, (DECISION_INPUTS_PG, {**windows, "subjects": subjects}, {BY_ACCOUNT})]
    history = windows | {f"s{i}": subject for i, subject in enumerate(subjects)}
    return [*reads, (decision_inputs_statement(BATCH), history, {BY_ACCOUNT})]


def test_failure_reads_use_the_failed_attempts_partial_indexes(api: Api) -> None:
    """Only failed attempts are indexed (migration 0007), so every read of failures must let the
    planner use those indexes: on PostgreSQL even in a generic plan of the prepared statement,
    which cannot see a bound 'success' (the statements carry it as a literal). Sequential scans
    are ruled out there, the table being almost empty."""
    engine = api.app.state.engine
    postgres = engine.dialect.name == "postgresql"

    async def plan_of(n: int, statement: HotStatement, params: dict[str, object]) -> str:
        compiled = statement.compiled(engine.dialect, params)
        async with engine.begin() as conn:
            if not postgres:
                raw = await conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + compiled.sql, compiled.parameters(params)
                )
                return " | ".join(str(row[-1]) for row in raw)
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            await conn.exec_driver_sql(f"PREPARE failures_{n} AS {compiled.sql}")
            nulls = ", ".join(["NULL"] * len(compiled.binds))
            raw = await conn.exec_driver_sql(f"EXPLAIN EXECUTE failures_{n}({nulls})")
            text = " | ".join(str(row[0]) for row in raw)
            await conn.exec_driver_sql(f"DEALLOCATE failures_{n}")
            return text

    for n, (statement, params, wanted) in enumerate(_failure_reads(postgres)):
        plan = api.run(plan_of, n, statement, params)
        assert {i for i in (BY_ACCOUNT, BY_SOURCE) if i in plan} == wanted, (statement, plan)
        assert "SCAN verification_attempts" not in plan, plan  # SQLite's full scan
        assert "Seq Scan on verification_attempts" not in plan, plan


def test_the_failed_attempts_indexes_hold_what_the_model_says(api: Api) -> None:
    """Migration 0007 left the two partial indexes alone, each with the model's condition."""
    indexes = stored_indexes(api, "verification_attempts")
    assert sorted(indexes) == [BY_SOURCE, BY_ACCOUNT]
    for definition in indexes.values():
        assert_condition_is_the_models(api, definition, ATTEMPT_FAILED)
