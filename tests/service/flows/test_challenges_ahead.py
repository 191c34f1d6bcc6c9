"""Proofs judged while another worker holds SQLite's write lock (service.flows.challenges
.judge_ahead): what was judged ahead is used only when the reads under the lock find the rows it
was judged from; when that worker changed them (the TOTP step used, the request decided), the
proof is judged again from what it wrote (ASVS4-2.8.5: a code is accepted once)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from policy.model import Method
from service import dto
from service.db import create_engine
from service.domain import ProofRejected, RequestClosed
from service.flows import challenges
from service.group_commit import Ahead, GroupCommit
from service.methods.totp import TotpParameters, code_at
from tests.service import test_challenges_api as api_flows
from tests.service.conftest import Api
from tests.service.flows.another_worker import while_another_worker_writes

PARAMS = TotpParameters()
ACCOUNT_ID = "acct-proof-ahead"


@dataclasses.dataclass(frozen=True)
class Open:
    """An account's open TOTP challenge and the code its secret gives now."""

    request_id: str
    challenge_id: str
    code: str
    step: int


def _open_totp_challenge(api: Api, account_id: str = ACCOUNT_ID) -> Open:
    secret = api_flows._enrol_totp(api, account_id, at=api_flows.previous_step())
    decision = api_flows._request(api, account_id)
    started = api_flows._start(api, decision["id"], "totp")
    assert started.status_code == 201, started.text
    now = datetime.now(UTC)
    step = int(now.timestamp()) // PARAMS.period
    return Open(decision["id"], started.json()["id"], code_at(secret, now, PARAMS), step)


def _prove_while_another_worker_writes(
    api: Api,
    monkeypatch: pytest.MonkeyPatch,
    proof: Open,
    change: Callable[[sqlite3.Connection], None] | None,
) -> tuple[list[str], challenges.ProofRequest, dto.DecisionOut | Exception]:
    """One proof while a turn held here stands for another worker: judged ahead, then
    ``change`` written while it waits, then the lock let go. (Where each TOTP check ran, ahead
    of the lock or under it; the proof as the batch got it; its answer.)"""
    checks: list[str] = []
    check_totp = challenges._check_totp
    under_lock = [False]

    async def recording_check(*args: object) -> challenges.Checked:
        checks.append("under the lock" if under_lock[0] else "ahead")
        return await check_totp(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(challenges, "_check_totp", recording_check)
    monkeypatch.setitem(challenges.AT_ONCE, Method.TOTP, recording_check)

    async def judge_ahead(
        conn: AsyncConnection,
        batch: Sequence[challenges.ProofRequest],
        arrived: Callable[[], bool],
    ) -> list[challenges.ProofRequest]:
        judged = await challenges.judge_ahead(conn, batch, arrived)
        under_lock[0] = True
        return judged

    async def verify(engine: AsyncEngine, ahead: Ahead[challenges.ProofRequest]) -> dto.DecisionOut:
        ctx = dataclasses.replace(
            api.ctx, proofs=GroupCommit(engine, challenges.prove_batch, ahead=ahead)
        )
        body = dto.VerifyIn(code=proof.code)
        return await challenges.verify(ctx, "test", proof.request_id, proof.challenge_id, body)

    path = api.app.state.engine.url.database
    got_ahead, answer = api.run(while_another_worker_writes, path, judge_ahead, verify, change)
    assert len(got_ahead) == 1
    return checks, got_ahead[0], answer


def test_a_code_checked_ahead_is_accepted_when_the_lock_finds_the_same_rows(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof = _open_totp_challenge(sqlite_api)
    checks, judged, answer = _prove_while_another_worker_writes(
        sqlite_api, monkeypatch, proof, None
    )
    assert judged.ahead is not None
    assert judged.ahead.checked is not None
    assert judged.ahead.checked.totp_step == proof.step
    assert checks == ["ahead"]  # checked once, and not again under the lock
    assert isinstance(answer, dto.DecisionOut), answer
    assert answer.factors_satisfied == [Method.TOTP]
    # Its writes were made ahead too, and the log holds the entries as they were encoded there.
    assert judged.ahead.accepted is not None
    made_ahead = [json.loads(p) for p in judged.ahead.accepted.payloads]
    with closing(sqlite3.connect(sqlite_api.app.state.engine.url.database)) as db:
        leaves = [json.loads(leaf) for (leaf,) in db.execute("SELECT leaf FROM audit_log")]
    logged = [
        {k: v for k, v in leaf.items() if k in made_ahead[0]}
        for leaf in leaves
        if (
            leaf["kind"] == "verification_attempt"
            and leaf["data"]["challenge_id"] == proof.challenge_id
        )
        or leaf["data"].get("via") == "verification"
    ]
    assert logged == made_ahead


def test_a_code_checked_ahead_is_checked_again_when_another_worker_used_its_step(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ahead, the code matched an unused step; meanwhile the other worker accepted the same code
    for another request of the account. Under the lock the enrolment read differs, the code is
    checked again and turned away as reused: accepted once, not twice."""
    proof = _open_totp_challenge(sqlite_api)

    def use_the_step(db: sqlite3.Connection) -> None:
        db.execute("UPDATE totp_enrolments SET last_step = ?", (proof.step,))

    checks, judged, answer = _prove_while_another_worker_writes(
        sqlite_api, monkeypatch, proof, use_the_step
    )
    assert judged.ahead is not None
    assert judged.ahead.checked is not None
    assert judged.ahead.checked.ok
    # Checked again under the lock (twice: a reused code's first notice takes the proof-by-proof
    # path, which judges it again).
    assert checks[0] == "ahead"
    assert set(checks[1:]) == {"under the lock"}
    assert isinstance(answer, ProofRejected), answer
    assert answer.extra["reason"] == "code_reused"


def test_a_request_loaded_ahead_is_loaded_again_when_another_worker_closed_it(
    sqlite_api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    proof = _open_totp_challenge(sqlite_api)

    def deny(db: sqlite3.Connection) -> None:
        db.execute("UPDATE unlock_requests SET status = 'denied' WHERE id = ?", (proof.request_id,))

    checks, judged, answer = _prove_while_another_worker_writes(
        sqlite_api, monkeypatch, proof, deny
    )
    assert judged.ahead is not None
    assert checks == ["ahead"]  # refused under the lock before any check
    assert isinstance(answer, RequestClosed), answer


def test_proofs_left_when_the_lock_arrives_are_judged_under_it(sqlite_api: Api) -> None:
    """judge_ahead stops at the first poll that finds the lock this connection's: the proofs
    after it carry nothing judged, and the batch judges them under the lock."""
    opened = [_open_totp_challenge(sqlite_api, f"acct-left-{i}") for i in range(3)]
    polls = iter([False, False, True])  # before the reads, before the first, before the second

    async def scenario() -> list[bool]:
        ctx = sqlite_api.ctx
        proofs = [
            challenges.ProofRequest(
                ctx, "test", o.request_id, o.challenge_id, dto.VerifyIn(code=o.code), ctx.clock()
            )
            for o in opened
        ]
        engine = create_engine(f"sqlite+aiosqlite:///{sqlite_api.app.state.engine.url.database}")
        async with engine.connect() as conn:
            judged = await challenges.judge_ahead(conn, proofs, lambda: next(polls))
            assert not conn.in_transaction()  # the reads ahead began nothing on the connection
        await engine.dispose()
        assert [p.challenge_id for p in judged] == [o.challenge_id for o in opened]
        return [p.ahead is not None and p.ahead.checked is not None for p in judged]

    assert sqlite_api.run(scenario) == [True, False, False]
