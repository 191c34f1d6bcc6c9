"""What a proof and a GET read of their unlock request: the row with its decision's log index (one
statement, not two), and the request's state, which a batch of proofs takes from the row it read
(on PostgreSQL, locked) in the same transaction instead of reading it again."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from audit.hot_sql import in_place_sqlite
from audit.store import AuditStore
from service.persistence.accounts import AccountRepository
from service.persistence.api_keys import Role
from service.persistence.challenges import ChallengeRepository
from service.persistence.unlock_requests import UnlockRequestRepository
from tests.service.conftest import Api, _api


def test_request_rows_carry_their_decisions_log_index(api: Api) -> None:
    first = api.create_unlock_request("acct-index-1")
    second = api.create_unlock_request("acct-index-2")
    engine = api.app.state.engine
    subject = api.ctx.data_keys.pseudonymize("acct-index-1")

    async def read() -> list[tuple[int | None, int | None]]:
        async with engine.connect() as conn:
            repo, store = UnlockRequestRepository(conn), AuditStore(conn)
            one = await repo.get(first["id"])
            many = await repo.get_many([first["id"], second["id"], "no-such-request"])
            listed = await repo.for_subject(subject, 10)
            rows = [one, *many.values(), *listed]
            assert None not in rows
            assert len(rows) == 4
            return [
                (row.audit_index, await store.index_of(row.audit_inbox_id))
                for row in rows
                if row is not None
            ]

    pairs = api.run(read)
    assert all(index is not None and index == looked_up for index, looked_up in pairs), pairs
    # And the answers name the same entries the rows do.
    assert [index for index, _ in pairs] == [
        first["audit"]["index"],
        first["audit"]["index"],
        second["audit"]["index"],
        first["audit"]["index"],
    ]


def test_request_state_from_the_row_read_locked_here_is_the_state_read_without_a_statement(
    api: Api,
) -> None:
    decision = api.create_unlock_request("acct-state")
    engine = api.app.state.engine

    async def states() -> tuple[Any, Any, list[str]]:
        async with engine.begin() as conn:
            rows = await UnlockRequestRepository(conn).get_many([decision["id"]], lock=True)
            row = rows[decision["id"]]
            repo = ChallengeRepository(conn)
            read = await repo.lock_request(decision["id"])
            executed: list[str] = []
            db = in_place_sqlite(conn)
            if db is not None:
                db.set_trace_callback(executed.append)
            try:
                given = await repo.lock_request(decision["id"], read_here=row)
            finally:
                if db is not None:
                    db.set_trace_callback(None)
            return read, given, executed

    read, given, executed = api.run(states)
    assert read == ("pending_verification", [], None, False)
    assert given == read
    if api.app.state.engine.dialect.name == "sqlite":
        assert executed == []


@pytest.fixture
def postgres_api(tmp_path: Path, postgres_url: str) -> Iterator[Api]:
    yield from _api(tmp_path, postgres_url)


def test_a_locked_read_of_requests_holds_their_rows_until_the_transaction_ends(
    postgres_api: Api,
) -> None:
    """What lets a batch of proofs on PostgreSQL take a request's state from its own read
    (``lock_request(read_here=...)``): no other transaction can change the row meanwhile."""
    api = postgres_api
    decision = api.create_unlock_request("acct-locked")
    other = api.create_unlock_request("acct-not-locked")
    engine = api.app.state.engine

    async def try_lock(request_id: str) -> bool:
        async with engine.begin() as conn:
            try:
                await conn.execute(
                    text("SELECT id FROM unlock_requests WHERE id = :id FOR UPDATE NOWAIT"),
                    {"id": request_id},
                )
            except DBAPIError:
                return False
            return True

    async def while_held() -> tuple[bool, bool, bool]:
        async with engine.begin() as conn:
            await UnlockRequestRepository(conn).get_many([decision["id"]], lock=True)
            held = await try_lock(decision["id"])
            free = await try_lock(other["id"])
        return held, free, await try_lock(decision["id"])

    assert api.run(while_held) == (False, True, True)


def test_request_state_says_when_the_account_was_erased(api: Api) -> None:
    # What a proof checks under the request's lock before it may count (the erasure may have
    # committed after the proof read the row): both ways of reading the state agree.
    decision = api.create_unlock_request("acct-state-erased")
    erased = api.client.delete("/v1/accounts/acct-state-erased", headers=api.headers(Role.ADMIN))
    assert erased.status_code == 200, erased.text

    async def states() -> tuple[Any, Any]:
        async with api.app.state.engine.begin() as conn:
            rows = await UnlockRequestRepository(conn).get_many([decision["id"]], lock=True)
            repo = ChallengeRepository(conn)
            return (
                await repo.lock_request(decision["id"]),
                await repo.lock_request(decision["id"], read_here=rows[decision["id"]]),
            )

    read, given = api.run(states)
    assert read.erased
    assert given == read


def test_request_state_refuses_another_requests_row(api: Api) -> None:
    one = api.create_unlock_request("acct-state-a")
    other = api.create_unlock_request("acct-state-b")
    engine = api.app.state.engine

    async def mixed() -> None:
        async with engine.begin() as conn:
            rows = await UnlockRequestRepository(conn).get_many([other["id"]], lock=True)
            await ChallengeRepository(conn).lock_request(one["id"], read_here=rows[other["id"]])

    with pytest.raises(ValueError, match="another request"):
        api.run(mixed)


def test_request_and_challenge_columns_are_in_their_rows_field_order() -> None:
    # The repositories make rows positionally (UnlockRequestRow(*row)): a column added,
    # removed or moved on one side only would put values into the wrong fields.
    from service.persistence import challenges, unlock_requests

    pairs = [
        (unlock_requests._COLUMNS, unlock_requests.UnlockRequestRow),
        (challenges._CHALLENGE_COLUMNS, challenges.ChallengeRow),
    ]
    for columns, row_type in pairs:
        assert tuple(c.key for c in columns) == row_type.__struct_fields__


def test_a_batchs_decision_inputs_hold_each_accounts_own_snapshot(api: Api) -> None:
    """The batch read (on PostgreSQL one statement, the linked identities a JSON column of it;
    on SQLite two) finds for each account what the account's own read finds, linked identities
    included, and an empty snapshot for an account no one has."""
    for account, verified in (("acct-linked-1", True), ("acct-linked-2", False)):
        linked = api.client.put(
            f"/v1/accounts/{account}/linked-identities/gov-eid",
            json={"subject": f"sub-{account}", "real_name_verified": verified},
            headers=api.headers(),
        )
        assert linked.status_code == 200, linked.text
    phone = api.client.put(
        "/v1/accounts/acct-linked-1/phone", json={"phone": "+8613812345678"}, headers=api.headers()
    )
    assert phone.status_code == 200, phone.text
    subjects = [
        api.ctx.data_keys.pseudonymize(a) for a in ("acct-linked-1", "acct-linked-2", "nobody")
    ]

    async def read() -> tuple[list[Any], list[Any]]:
        async with api.app.state.engine.begin() as conn:
            batch = await UnlockRequestRepository(conn).decision_inputs(
                subjects,
                datetime.now(UTC),
                velocity_window=timedelta(hours=24),
                failures_window=timedelta(hours=24),
                throttle_window=timedelta(hours=24),
                throttle_limit=5,
            )
            own = [await AccountRepository(conn).snapshot(s) for s in subjects]
            return [batch[s].snapshot for s in subjects], own

    batch, own = api.run(read)
    assert batch == own
    assert [len(s.linked) for s in batch] == [1, 1, 0]
    assert [s.linked[0].real_name_verified for s in batch[:2]] == [True, False]
    assert batch[0].phone is not None
    assert batch[1].phone is None
    assert not batch[2].exists
