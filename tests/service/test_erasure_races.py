"""Erasure against a decision made at the same moment: whichever commits first, no decision row
keeps the erased account's id (the erasure clears every row it can see, so a decision must not
commit a row after the erasure has looked).

SQLite serialises the two by its write lock (BEGIN IMMEDIATE). PostgreSQL runs them on two
connections under READ COMMITTED, where only a lock both take keeps the decision's insert from
landing after the erasure's clearing."""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from service import dto
from service.flows import challenges, enrolment, unlock
from service.methods.totp import code_at
from service.persistence.accounts import AccountRepository
from service.persistence.unlock_requests import UnlockRequestRepository
from tests.service.conftest import PERSONA_REQUEST, Api
from tests.service.persistence.test_outbox_leases import outbox_payloads
from tests.service.test_challenges_api import (
    PARAMS,
    _enrol_totp,
    _sms_code,
    _start,
    _verify,
    previous_step,
)

ACCOUNT = "acct-erase-race"
# Long enough for an erasure that nothing holds back to commit, on a slow CI machine too.
ERASURE_HEAD_START_S = 0.5


def _verified_phone(api: Api, account_id: str) -> None:
    phone = api.client.put(
        f"/v1/accounts/{account_id}/phone",
        json={"phone": "+8613800005678", "verified": True},
        headers=api.headers(),
    )
    assert phone.status_code == 200, phone.text


def _decision_request(api: Api, account_id: str) -> unlock.DecisionRequest:
    raw = copy.deepcopy(PERSONA_REQUEST)
    raw["account_id"] = account_id
    body = msgspec.convert(raw, dto.UnlockRequestIn, strict=False)
    return unlock.DecisionRequest.of(api.ctx, "test-frontend", body)


def test_an_erasure_during_a_decision_leaves_the_decision_without_the_account_id(
    api: Api,
) -> None:
    _verified_phone(api, ACCOUNT)
    request = _decision_request(api, ACCOUNT)
    ctx = api.ctx

    async def race() -> str:
        # The decision's transaction is open, its row written, when the erasure starts.
        async with ctx.engine.begin() as conn:
            [outcome] = await unlock.decide_batch(conn, [request])
            assert not isinstance(outcome, Exception), outcome
            erasure = asyncio.create_task(enrolment.erase(ctx, "test-admin", ACCOUNT))
            await asyncio.sleep(ERASURE_HEAD_START_S)
        assert (await erasure).key_destroyed
        return outcome.out.id

    request_id = api.run(race)

    async def sealed() -> str | None:
        async with ctx.engine.connect() as conn:
            row = await UnlockRequestRepository(conn).get(request_id)
            assert row is not None
            return row.account_id_sealed

    assert api.run(sealed) is None
    answer = api.client.get(f"/v1/unlock-requests/{request_id}", headers=api.headers())
    assert answer.status_code == 200, answer.text
    assert answer.json()["account_id"] == unlock.ERASED


def test_an_erasure_waits_for_the_accounts_writers_in_flight(api: Api) -> None:
    # What enrolment's writes rely on (they hold the account as decisions do), shown on the
    # locks themselves: the erasure's turn comes only once the writer has committed.
    subject = api.ctx.data_keys.pseudonymize(ACCOUNT)
    engine = api.ctx.engine

    async def order() -> list[str]:
        events: list[str] = []

        async def erase() -> None:
            async with engine.begin() as conn:
                await AccountRepository(conn).hold_for_erasure(subject)
                events.append("erasure holds the account")

        async with engine.begin() as conn:
            await AccountRepository(conn).hold_for_writing([subject, "another-subject"])
            erasure = asyncio.create_task(erase())
            await asyncio.sleep(ERASURE_HEAD_START_S)
            events.append("writer commits")
        await erasure
        return events

    assert api.run(order) == ["writer commits", "erasure holds the account"]


@pytest.mark.parametrize("method", ["sms", "totp"])
def test_a_proof_judged_across_an_erasure_never_lands_on_the_erased_account(
    api: Api, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """A proof batch has read its request when the account's erasure starts: the erasure waits
    for the batch's commit (SQLite: one writer; PostgreSQL: the batch read its requests locked)
    and then clears what the proof wrote. Otherwise the proof, judged on a request read before
    the erasure committed, would land its factor, and with an approval its outbox events with
    the sealed account id, on a request whose account no longer exists. A TOTP proof also
    writes the enrolment the erasure deletes: on PostgreSQL the batch holds the account (shared)
    before any row, as the erasure does (exclusive), or the two deadlocked."""
    account = f"acct-erase-proof-race-{method}"
    api.run(api.app.state.outbox.stop)  # nothing is delivered before the erasure counts it
    if method == "sms":
        _verified_phone(api, account)
    else:
        secret = _enrol_totp(api, account, at=previous_step())
    decision = api.create_unlock_request(account)
    started = _start(api, decision["id"], method)
    assert started.status_code == 201, started.text
    code = _sms_code(api) if method == "sms" else code_at(secret, datetime.now(UTC), PARAMS)
    ctx = api.ctx
    read_for = challenges._read_for
    erasures: list[asyncio.Task[enrolment.Erasure]] = []

    async def read_then_erase(conn: AsyncConnection, batch: Any) -> challenges.ProofReads:
        reads = await read_for(conn, batch)
        erasures.append(asyncio.create_task(enrolment.erase(ctx, "test-admin", account)))
        await asyncio.sleep(ERASURE_HEAD_START_S)
        return reads

    monkeypatch.setattr(challenges, "_read_for", read_then_erase)
    answer = _verify(api, decision["id"], started.json()["id"], code=code)
    monkeypatch.setattr(challenges, "_read_for", read_for)

    async def erased() -> enrolment.Erasure:
        return await erasures[0]

    erasure = api.run(erased)
    assert erasure.key_destroyed
    # The erasure came second: the proof counted, then everything was cleared.
    assert answer.status_code == 200, answer.text
    assert answer.json()["factors_satisfied"] == [method]
    after = api.client.get(f"/v1/unlock-requests/{decision['id']}", headers=api.headers())
    assert after.status_code == 200, after.text
    assert after.json()["account_id"] == unlock.ERASED
    # A TOTP proof approves (an SMS code alone leads to review): the approval's events carry
    # the sealed account id and are cleared with the rest, both still undelivered (the outbox
    # loop was stopped above).
    assert answer.json()["status"] == ("approved" if method == "totp" else "review_required")
    assert erasure.deliveries_cancelled == (2 if method == "totp" else 0)
    assert outbox_payloads(api) == []
