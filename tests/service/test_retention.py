"""Retention (PIPL-19, ASVS5-14.2.7): operational records older than their configured period are
deleted by a job; younger ones, undelivered events and what an open review case shows stay."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uuid_utils
from sqlalchemy import event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.app import create_app
from service.flows import review
from service.ids import new_id
from service.persistence.challenges import ChallengeRepository
from service.persistence.retention import RetentionRepository
from service.persistence.review_cases import review_cases
from service.persistence.tables import (
    CHALLENGE_SECRET_HELD,
    challenges,
    outbox_events,
    sms_sends,
    verification_attempts,
)
from service.policy_source import load_default_policy
from service.retention import CHALLENGE_SECRET_GRACE, RetentionJob, RetentionPeriods, purge_expired
from service.settings import Settings, SettingsError
from tests.service.conftest import (
    Api,
    _api,
    assert_condition_is_the_models,
    make_settings,
    stored_indexes,
)
from tests.service.test_challenges_api import _phone, _request, _sms_code, _start, _verify
from tests.service.test_review_api import _create

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
PERIODS = RetentionPeriods(
    attempts=timedelta(days=180), sms_sends=timedelta(days=30), delivered_events=timedelta(days=30)
)
OLD, YOUNG = NOW - timedelta(days=200), NOW - timedelta(days=10)
ALMOST_OLD = NOW - timedelta(days=179)
UNFINISHED = ("open", "claimed", "awaiting_person", "awaiting_confirmation")


class Ids:
    """Row ids as the service makes them (UUIDv7 of the row's time), by a name for the test."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}
        self._step = 0

    def at(self, name: str, at: datetime) -> str:
        self._step += 1  # distinct ids for rows of the same millisecond
        nanoseconds = int(at.timestamp()) * 10**9 + at.microsecond * 1000 + self._step
        self.by_name[name] = str(uuid_utils.uuid7(nanoseconds=nanoseconds))
        return self.by_name[name]

    def names(self, ids: set[str]) -> set[str]:
        return {name for name, ident in self.by_name.items() if ident in ids}


def _attempt(ident: str, at: datetime, request_id: str | None = None) -> Any:
    return {
        "id": ident,
        "subject": "s" * 64,
        "unlock_request_id": request_id,
        "method": "totp",
        "outcome": "wrong_code",
        "source_index": None,
        "created_at": at,
    }


def _send(ident: str, at: datetime) -> Any:
    return {
        "id": ident,
        "destination_index": "d" * 64,
        "delivery_id": new_id(),
        "purpose": "challenge",
        "created_at": at,
    }


def _event(ident: str, at: datetime, delivered: datetime | None) -> Any:
    return {
        "id": ident,
        "kind": "notify_person",
        "subject": "s" * 64,
        "payload": "{}",
        "created_at": at,
        "next_attempt_at": at,
        "delivered_at": delivered,
    }


def _challenge(
    ident: str, request_id: str, expires: datetime, secret: str | None, sealed: str | None
) -> Any:
    return {
        "id": ident,
        "unlock_request_id": request_id,
        "subject": "s" * 64,
        "method": "sms" if sealed is None else "oidc",
        "provider": None,
        "status": "open",
        "attempts": 0,
        "secret_hash": secret,
        "secret_sealed": sealed,
        "delivery_id": None,
        "sends": 1,
        "created_at": expires - timedelta(minutes=5),
        "expires_at": expires,
        "completed_at": None,
    }


async def _secrets_held(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        held = challenges.c.secret_hash.is_not(None) | challenges.c.secret_sealed.is_not(None)
        return {row[0] for row in await conn.execute(select(challenges.c.id).where(held))}


async def _ids(engine: AsyncEngine) -> dict[str, set[str]]:
    async with engine.connect() as conn:
        return {
            table.name: {row[0] for row in await conn.execute(select(table.c.id))}
            for table in (verification_attempts, sms_sends, outbox_events)
        }


def test_records_past_their_period_go_and_the_rest_stay(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine
    ids = Ids()
    # Requests whose review case is in each unfinished state, and one whose case is closed
    # (critical risk opens a case at once).
    requests = {
        status: _create(api, f"acct-ret-{status}", level="critical")["id"]
        for status in (*UNFINISHED, "closed")
    }

    async def seed() -> None:
        async with engine.begin() as conn:
            for status, request_id in requests.items():
                closed = status == "closed"
                await conn.execute(
                    update(review_cases)
                    .where(review_cases.c.unlock_request_id == request_id)
                    .values(
                        status=status,
                        active_request_id=None if closed else request_id,
                        closed_at=OLD if closed else None,
                    )
                )
            await conn.execute(
                insert(verification_attempts),
                [
                    _attempt(ids.at("att-old", OLD), OLD),
                    *(
                        _attempt(ids.at(f"att-old-{status}", OLD), OLD, request_id)
                        for status, request_id in requests.items()
                    ),
                    _attempt(ids.at("att-young", ALMOST_OLD), ALMOST_OLD),
                ],
            )
            await conn.execute(
                insert(sms_sends),
                [
                    _send(ids.at("sms-old", NOW - timedelta(days=31)), NOW - timedelta(days=31)),
                    _send(ids.at("sms-young", YOUNG), YOUNG),
                ],
            )
            await conn.execute(
                insert(outbox_events),
                [
                    _event(ids.at("evt-old-delivered", OLD), OLD, OLD),
                    _event(ids.at("evt-old-undelivered", OLD), OLD, None),
                    # Created long ago, delivered only lately (after retries): it stays.
                    _event(ids.at("evt-recently-delivered", OLD), OLD, YOUNG),
                    _event(ids.at("evt-young", YOUNG), YOUNG, YOUNG),
                ],
            )
            request_id = requests["closed"]
            lately = NOW - CHALLENGE_SECRET_GRACE + timedelta(minutes=1)
            await conn.execute(
                insert(challenges),
                [
                    _challenge(ids.at("ch-expired-sms", OLD), request_id, OLD, "h" * 64, None),
                    _challenge(ids.at("ch-expired-oidc", YOUNG), request_id, YOUNG, None, "x"),
                    _challenge(ids.at("ch-wiped", OLD), request_id, OLD, None, None),
                    # Expired within the grace, and still open: their secrets stay.
                    _challenge(ids.at("ch-lately", lately), request_id, lately, "h" * 64, None),
                    _challenge(
                        ids.at("ch-open", NOW), request_id, NOW + timedelta(minutes=5), None, "y"
                    ),
                ],
            )

    api.run(seed)
    counts = api.run(purge_expired, engine, PERIODS, NOW)
    assert counts == {
        "verification_attempts": 2,
        "sms_sends": 1,
        "delivered_outbox_events": 1,
        "challenge_secrets": 2,
    }
    assert ids.names(api.run(_secrets_held, engine)) == {"ch-lately", "ch-open"}
    after: dict[str, set[str]] = api.run(_ids, engine)
    left = set().union(*(ids.names(kept) for kept in after.values()))
    assert left == {n for n in ids.by_name if not n.startswith("ch-")} - {
        "att-old",
        "att-old-closed",
        "sms-old",
        "evt-old-delivered",
    }
    # Nothing left to delete: a second pass deletes nothing.
    assert set(api.run(purge_expired, engine, PERIODS, NOW).values()) == {0}


def test_expired_challenges_secrets_are_found_through_the_partial_index(api: Api) -> None:
    """The wipe can read the index of challenges still holding a secret, not every challenge:
    its condition implies the index's. (PostgreSQL's planner weighs an almost empty table's
    statistics, so there the plan is asked for with sequential scans ruled out.)"""
    engine: AsyncEngine = api.app.state.engine
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if sql.lstrip().upper().startswith("UPDATE CHALLENGES"):
            statements.append((sql, params))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        api.run(purge_expired, engine, PERIODS, NOW)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)
    assert len(statements) == 1

    async def plan() -> str:
        sql, params = statements[0]
        async with engine.begin() as conn:
            if engine.dialect.name == "sqlite":
                raw = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
                return " | ".join(str(row[-1]) for row in raw)
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            raw = await conn.exec_driver_sql("EXPLAIN " + sql, params)
            return " | ".join(str(row[0]) for row in raw)

    assert "ix_challenges_secret_held" in api.run(plan)

    definition = stored_indexes(api, "challenges")["ix_challenges_secret_held"]
    assert_condition_is_the_models(api, definition, CHALLENGE_SECRET_HELD)


def test_a_wiped_challenge_is_answered_as_the_same_challenge_unwiped(api: Api) -> None:
    """Once the job wiped an expired challenge's secret, a proof for it gets the answer it got
    before. (With the default policy the request itself has expired by then, 30 minutes against
    the challenge's 10 and the hour's grace, and that is the answer; the challenge flow also
    judges a challenge's expiry before any secret.)"""
    codes = {}
    started = {}
    for name in ("kept", "wiped"):
        account = f"acct-wipe-{name}-{api.ctx.settings.database_url is None}"
        _phone(api, account)
        api.client.post(f"/v1/accounts/{account}/recovery-codes", headers=api.headers())
        decision = _request(api, account)
        challenge = _start(api, decision["id"], "sms")
        assert challenge.status_code == 201, challenge.text
        started[name] = (decision["id"], challenge.json()["id"])
        codes[name] = _sms_code(api)
    later = datetime.now(UTC) + timedelta(minutes=30) + CHALLENGE_SECRET_GRACE
    api.set_clock(lambda: later)
    before = _verify(api, *started["kept"], code=codes["kept"])
    engine: AsyncEngine = api.app.state.engine
    assert api.run(purge_expired, engine, PERIODS, later)["challenge_secrets"] >= 1
    assert started["wiped"][1] not in api.run(_secrets_held, engine)
    after = _verify(api, *started["wiped"], code=codes["wiped"])
    assert before.status_code == after.status_code
    assert 400 <= after.status_code < 500
    assert before.json().get("code") == after.json().get("code")


def test_a_backlog_larger_than_a_batch_is_deleted_in_batches(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine

    async def seed() -> None:
        async with engine.begin() as conn:
            ids = Ids()
            rows = [_send(ids.at(f"sms-{i:02d}", OLD), OLD) for i in range(11)]
            await conn.execute(insert(sms_sends), rows)

    async def left() -> int:
        async with engine.connect() as conn:
            return (await conn.execute(select(func.count()).select_from(sms_sends))).scalar_one()

    api.run(seed)
    counts = api.run(purge_expired, engine, PERIODS, NOW, 3)
    assert counts["sms_sends"] == 11
    assert api.run(left) == 0


def test_the_job_in_a_worker_deletes_on_its_interval_and_stops(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine

    job_row = Ids().at("sms-job", OLD)

    async def scenario() -> set[str]:
        async with engine.begin() as conn:
            await conn.execute(insert(sms_sends), [_send(job_row, OLD)])
        job = RetentionJob(engine, PERIODS, lambda: NOW, interval=0.05)
        job.start()
        try:
            for _ in range(100):
                if job_row not in (await _ids(engine))["sms_sends"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            await job.stop()
        return (await _ids(engine))["sms_sends"]

    assert job_row not in api.run(scenario)


def test_a_period_no_longer_than_what_is_counted_is_refused(tmp_path: Path) -> None:
    policy = load_default_policy()
    # Against a day (the throttles' window) and against a policy that counts failures longer.
    with pytest.raises(SettingsError, match="RETENTION_ATTEMPTS_DAYS"):
        RetentionPeriods.of(Settings(retention_attempts_days=1), policy)
    four_days = dataclasses.replace(
        policy,
        thresholds=dataclasses.replace(policy.thresholds, failed_verifications_window_hours=96),
    )
    assert RetentionPeriods.of(Settings(retention_attempts_days=5), four_days)
    with pytest.raises(SettingsError, match="RETENTION_ATTEMPTS_DAYS"):
        RetentionPeriods.of(Settings(retention_attempts_days=4), four_days)
    with pytest.raises(SettingsError, match="RETENTION_SMS_SENDS_DAYS"):
        RetentionPeriods.of(Settings(retention_sms_sends_days=1), policy)
    with pytest.raises(SettingsError):
        create_app(make_settings(tmp_path, retention_sms_sends_days=1))
    # The defaults are the periods the tests above use.
    assert RetentionPeriods.of(Settings(), policy) == PERIODS


def test_every_worker_runs_the_job(api: Api) -> None:
    async def names() -> set[str]:
        return {task.get_name() for task in asyncio.all_tasks()}

    assert "fairunlock-retention" in api.run(names)


def test_periods_come_from_the_environment_within_bounds() -> None:
    settings = Settings.from_env(
        {
            "FAIRUNLOCK_RETENTION_ATTEMPTS_DAYS": "365",
            "FAIRUNLOCK_RETENTION_SMS_SENDS_DAYS": "7",
            "FAIRUNLOCK_RETENTION_OUTBOX_DAYS": "1",
            "FAIRUNLOCK_RETENTION_INTERVAL_S": "600",
        }
    )
    assert (
        settings.retention_attempts_days,
        settings.retention_sms_sends_days,
        settings.retention_outbox_days,
        settings.retention_interval_s,
    ) == (365, 7, 1, 600)
    for name, bad in (
        ("FAIRUNLOCK_RETENTION_ATTEMPTS_DAYS", "1"),
        ("FAIRUNLOCK_RETENTION_OUTBOX_DAYS", "0"),
        ("FAIRUNLOCK_RETENTION_INTERVAL_S", "5"),
        ("FAIRUNLOCK_RETENTION_SMS_SENDS_DAYS", "many"),
    ):
        with pytest.raises(SettingsError, match=name.removeprefix("FAIRUNLOCK_")):
            Settings.from_env({name: bad})


# -- A case opening while a purge runs (PostgreSQL: SQLite's one writer excludes it) ------------


@pytest.fixture
def pg_api(tmp_path: Path, postgres_url: str) -> Iterator[Api]:
    yield from _api(tmp_path, postgres_url)


def _request_with_an_old_attempt(api: Api, account_id: str, ids: Ids) -> tuple[str, str]:
    """A request without a review case, with one attempt past its period: (request id, its
    subject)."""
    request_id = _create(api, account_id)["id"]

    async def seed() -> None:
        async with api.app.state.engine.begin() as conn:
            await conn.execute(
                insert(verification_attempts), [_attempt(ids.at("att", OLD), OLD, request_id)]
            )

    api.run(seed)
    return request_id, api.ctx.data_keys.pseudonymize(account_id)


async def _open_case(api: Api, conn: AsyncConnection, request_id: str, subject: str) -> None:
    await review.open_case_in(conn, api.ctx, request_id, subject, origin="appeal", now=NOW)


def test_an_appeal_under_way_keeps_its_requests_old_attempts(pg_api: Api) -> None:
    # The appeal holds its request's row and has not committed its case when the purge runs:
    # one statement would judge "no open case" and delete the attempt the reviewer is to see.
    api, ids = pg_api, Ids()
    engine: AsyncEngine = api.app.state.engine
    request_id, subject = _request_with_an_old_attempt(api, "acct-ret-appeal-open", ids)

    async def scenario() -> dict[str, int]:
        async with engine.begin() as appeal:
            await ChallengeRepository(appeal).lock_request(request_id)
            during = await purge_expired(engine, PERIODS, NOW)
            await _open_case(api, appeal, request_id, subject)
        return during

    assert api.run(scenario)["verification_attempts"] == 0
    assert api.run(purge_expired, engine, PERIODS, NOW)["verification_attempts"] == 0
    assert ids.names(api.run(_ids, engine)["verification_attempts"]) == {"att"}


def test_a_case_committed_after_the_purge_chose_its_attempts_keeps_them(
    pg_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The purge has picked (and locked) the attempt; before it locks the request, an appeal
    # opens the case and commits: the delete reads afresh and sees it.
    api, ids = pg_api, Ids()
    engine: AsyncEngine = api.app.state.engine
    request_id, subject = _request_with_an_old_attempt(api, "acct-ret-appeal-late", ids)
    lock_requests = RetentionRepository.lock_requests
    appealed: list[set[str]] = []

    async def appeal_first(repo: RetentionRepository, request_ids: set[str]) -> set[str]:
        if not appealed:
            appealed.append(request_ids)
            async with engine.begin() as appeal:
                await _open_case(api, appeal, request_id, subject)
        return await lock_requests(repo, request_ids)

    monkeypatch.setattr(RetentionRepository, "lock_requests", appeal_first)
    assert api.run(purge_expired, engine, PERIODS, NOW)["verification_attempts"] == 0
    assert appealed == [{request_id}]
    assert ids.names(api.run(_ids, engine)["verification_attempts"]) == {"att"}
