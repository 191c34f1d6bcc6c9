"""Decisions made while another worker holds SQLite's write lock (service.flows.unlock.decide_ahead)
are stored only when the reads under the lock find the inputs they were made from; when that
worker changed them, the request is decided again from what it wrote."""

from __future__ import annotations

import copy
import dataclasses
import sqlite3
from collections.abc import Callable
from contextlib import closing

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import dto
from service.db import create_engine
from service.flows import unlock
from service.group_commit import Ahead, GroupCommit
from service.persistence.unlock_requests import DecisionInputs
from tests.service.conftest import PERSONA_REQUEST, Api
from tests.service.flows.another_worker import while_another_worker_writes

ACCOUNT_ID = "acct-ahead"


def _copy_request(request_id: str) -> Callable[[sqlite3.Connection], None]:
    """Another worker's write: one more unlock request of the account, a copy of ``request_id``
    (so the account's velocity count goes up by one)."""

    def write(db: sqlite3.Connection) -> None:
        columns = [row[1] for row in db.execute("PRAGMA table_info(unlock_requests)")]
        values = ", ".join("'copied-request'" if c == "id" else c for c in columns)
        db.execute(
            f"INSERT INTO unlock_requests ({', '.join(columns)}) "
            f"SELECT {values} FROM unlock_requests WHERE id = ?",
            (request_id,),
        )

    return write


def _decide_while_another_worker_writes(
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[sqlite3.Connection], None] | None,
) -> tuple[list[tuple[int, unlock.PreparedDecision]], unlock.DecisionRequest, str]:
    """One request for the account while a turn held here stands for another worker: decided
    ahead, then ``change`` written while it waits, then the lock let go. (Each decision made,
    with the velocity count it was made from; the request as the batch got it; the context
    ciphertext stored.)"""
    made: list[tuple[int, unlock.PreparedDecision]] = []
    prepare = unlock._prepare

    async def recording_prepare(
        conn: AsyncConnection, request: unlock.DecisionRequest, inputs: DecisionInputs
    ) -> unlock.PreparedDecision:
        prepared = await prepare(conn, request, inputs)
        made.append((inputs.history.recent_unlock_requests, prepared))
        return prepared

    monkeypatch.setattr(unlock, "_prepare", recording_prepare)

    async def create(engine: AsyncEngine, ahead: Ahead[unlock.DecisionRequest]) -> str:
        ctx = dataclasses.replace(
            api.ctx, decisions=GroupCommit(engine, unlock.decide_batch, ahead=ahead)
        )
        body = copy.deepcopy(PERSONA_REQUEST) | {"account_id": ACCOUNT_ID}
        created = await unlock.create(ctx, "test", msgspec.convert(body, dto.UnlockRequestIn))
        return created.decision.id

    path = api.app.state.engine.url.database
    got_ahead, decision_id = api.run(
        while_another_worker_writes, path, unlock.decide_ahead, create, change
    )
    assert isinstance(decision_id, str), decision_id
    with closing(sqlite3.connect(path)) as db:
        (ciphertext,) = db.execute(
            "SELECT context_ciphertext FROM unlock_requests WHERE id = ?", (decision_id,)
        ).fetchone()
    assert len(got_ahead) == 1
    return made, got_ahead[0], str(ciphertext)


def _known_account_with_one_request(api: Api) -> str:
    r = api.client.put(
        f"/v1/accounts/{ACCOUNT_ID}/phone",
        json={"phone": "+86 138 0000 5678"},
        headers=api.headers(),
    )
    assert r.status_code == 200, r.text
    return str(api.create_unlock_request(ACCOUNT_ID)["id"])


def test_a_decision_made_ahead_is_stored_when_the_lock_finds_the_same_inputs(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    _known_account_with_one_request(sqlite_api)
    made, request, stored = _decide_while_another_worker_writes(sqlite_api, monkeypatch, None)
    assert request.ahead is not None
    assert [count for count, _ in made] == [1]  # decided once, ahead of the lock
    assert made[0][1] is request.ahead.prepared
    assert stored == request.ahead.prepared.row["context_ciphertext"]


def test_a_decision_made_ahead_is_made_again_when_another_worker_changed_its_inputs(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _known_account_with_one_request(sqlite_api)
    made, request, stored = _decide_while_another_worker_writes(
        sqlite_api, monkeypatch, _copy_request(first)
    )
    assert request.ahead is not None
    # Ahead from one earlier request; under the lock, again from the two now there.
    assert [count for count, _ in made] == [1, 2]
    assert stored == made[1][1].row["context_ciphertext"]
    assert stored != made[0][1].row["context_ciphertext"]


def test_requests_left_when_the_lock_arrives_are_decided_under_it(sqlite_api: Api) -> None:
    """decide_ahead stops at the first poll that finds the lock this connection's: the requests
    after it carry no decision, and the batch decides them under the lock."""
    polls = iter([False, False, True])  # before the reads, before the first, before the second

    async def scenario() -> list[bool]:
        ctx = sqlite_api.ctx
        requests = [
            unlock.DecisionRequest.of(
                ctx,
                "test",
                msgspec.convert(
                    copy.deepcopy(PERSONA_REQUEST) | {"account_id": f"acct-left-{i}"},
                    dto.UnlockRequestIn,
                ),
            )
            for i in range(3)
        ]
        engine = create_engine(f"sqlite+aiosqlite:///{sqlite_api.app.state.engine.url.database}")
        async with engine.connect() as conn:
            decided = await unlock.decide_ahead(conn, requests, lambda: next(polls))
        await engine.dispose()
        assert [r.request_id for r in decided] == [r.request_id for r in requests]
        return [r.ahead is not None for r in decided]

    assert sqlite_api.run(scenario) == [True, False, False]
