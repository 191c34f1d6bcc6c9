"""Retention (PIPL-19, ASVS5-14.2.7): operational records older than their configured period are
deleted by a job; younger ones, undelivered events and what an open review case shows stay."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.app import create_app
from service.ids import new_id
from service.persistence.review_cases import review_cases
from service.persistence.tables import outbox_events, sms_sends, verification_attempts
from service.policy_source import load_default_policy
from service.retention import RetentionJob, RetentionPeriods, purge_expired
from service.settings import Settings, SettingsError
from tests.service.conftest import Api, make_settings
from tests.service.test_review_api import _create

NOW = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
PERIODS = RetentionPeriods(
    attempts=timedelta(days=180), sms_sends=timedelta(days=30), delivered_events=timedelta(days=30)
)
OLD, YOUNG = NOW - timedelta(days=200), NOW - timedelta(days=10)


def _attempt(at: datetime, request_id: str | None = None, ident: str | None = None) -> Any:
    return {
        "id": ident or new_id(),
        "subject": "s" * 64,
        "unlock_request_id": request_id,
        "method": "totp",
        "outcome": "wrong_code",
        "source_index": None,
        "created_at": at,
    }


def _send(at: datetime, ident: str) -> Any:
    return {
        "id": ident,
        "destination_index": "d" * 64,
        "delivery_id": new_id(),
        "purpose": "challenge",
        "created_at": at,
    }


def _event(at: datetime, ident: str, delivered: datetime | None) -> Any:
    return {
        "id": ident,
        "kind": "notify_person",
        "subject": "s" * 64,
        "payload": "{}",
        "created_at": at,
        "next_attempt_at": at,
        "delivered_at": delivered,
    }


async def _ids(engine: AsyncEngine) -> dict[str, set[str]]:
    async with engine.connect() as conn:
        return {
            table.name: {row[0] for row in await conn.execute(select(table.c.id))}
            for table in (verification_attempts, sms_sends, outbox_events)
        }


def test_records_past_their_period_go_and_the_rest_stay(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine
    # A request whose review case is open, and one whose case is closed (critical risk opens one).
    open_request = _create(api, "acct-ret-open", level="critical")["id"]
    closed_request = _create(api, "acct-ret-closed", level="critical")["id"]

    async def seed() -> None:
        async with engine.begin() as conn:
            await conn.execute(
                update(review_cases)
                .where(review_cases.c.unlock_request_id == closed_request)
                .values(status="closed", active_request_id=None, closed_at=OLD)
            )
            await conn.execute(
                insert(verification_attempts),
                [
                    _attempt(OLD, ident="att-old"),
                    _attempt(OLD, open_request, ident="att-old-open-case"),
                    _attempt(OLD, closed_request, ident="att-old-closed-case"),
                    _attempt(NOW - timedelta(days=179), ident="att-young"),
                ],
            )
            await conn.execute(
                insert(sms_sends),
                [_send(NOW - timedelta(days=31), "sms-old"), _send(YOUNG, "sms-young")],
            )
            await conn.execute(
                insert(outbox_events),
                [
                    _event(OLD, "evt-old-delivered", OLD),
                    _event(OLD, "evt-old-undelivered", None),
                    _event(OLD, "evt-recently-delivered", YOUNG),
                ],
            )

    api.run(seed)
    before: dict[str, set[str]] = api.run(_ids, engine)
    counts = api.run(purge_expired, engine, PERIODS, NOW)
    assert counts == {"verification_attempts": 2, "sms_sends": 1, "delivered_outbox_events": 1}
    after: dict[str, set[str]] = api.run(_ids, engine)
    assert before["verification_attempts"] - after["verification_attempts"] == {
        "att-old",
        "att-old-closed-case",
    }
    assert {"att-old-open-case", "att-young"} <= after["verification_attempts"]
    assert before["sms_sends"] - after["sms_sends"] == {"sms-old"}
    assert "sms-young" in after["sms_sends"]
    assert before["outbox_events"] - after["outbox_events"] == {"evt-old-delivered"}
    assert {"evt-old-undelivered", "evt-recently-delivered"} <= after["outbox_events"]
    # Nothing left to delete: a second pass deletes nothing.
    assert set(api.run(purge_expired, engine, PERIODS, NOW).values()) == {0}


def test_a_backlog_larger_than_a_batch_is_deleted_in_batches(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine

    async def seed() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(sms_sends), [_send(OLD, f"sms-{i:02d}") for i in range(11)])

    async def left() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(sms_sends))).scalar())

    api.run(seed)
    counts = api.run(purge_expired, engine, PERIODS, NOW, 3)
    assert counts["sms_sends"] == 11
    assert api.run(left) == 0


def test_the_job_in_a_worker_deletes_on_its_interval_and_stops(api: Api) -> None:
    engine: AsyncEngine = api.app.state.engine

    async def scenario() -> set[str]:
        async with engine.begin() as conn:
            await conn.execute(insert(sms_sends), [_send(OLD, "sms-job")])
        job = RetentionJob(engine, PERIODS, lambda: NOW, interval=0.05)
        job.start()
        try:
            for _ in range(100):
                if "sms-job" not in (await _ids(engine))["sms_sends"]:
                    break
                await asyncio.sleep(0.05)
        finally:
            await job.stop()
        return (await _ids(engine))["sms_sends"]

    assert "sms-job" not in api.run(scenario)


def test_a_period_no_longer_than_what_is_counted_is_refused(tmp_path: Path) -> None:
    policy = load_default_policy()
    window_days = policy.thresholds.failed_verifications_window_hours / 24
    too_short = max(1, int(window_days))
    with pytest.raises(SettingsError, match="RETENTION_ATTEMPTS_DAYS"):
        RetentionPeriods.of(Settings(retention_attempts_days=too_short), policy)
    with pytest.raises(SettingsError, match="RETENTION_SMS_SENDS_DAYS"):
        RetentionPeriods.of(Settings(retention_sms_sends_days=1), policy)
    with pytest.raises(SettingsError):
        create_app(make_settings(tmp_path, retention_sms_sends_days=1))
    # The defaults are the periods the tests above use.
    assert RetentionPeriods.of(Settings(), policy) == PERIODS


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
