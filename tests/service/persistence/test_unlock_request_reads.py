"""What a proof and a GET read of their unlock request: the row with its decision's log index (one
statement, not two), and the request's state, which on SQLite a batch of proofs takes from the row
it read in the same transaction instead of reading it again."""

from __future__ import annotations

from typing import Any

import pytest

from audit.hot_sql import in_place_sqlite
from audit.store import AuditStore
from service.persistence.api_keys import Role
from service.persistence.challenges import ChallengeRepository
from service.persistence.unlock_requests import UnlockRequestRepository
from tests.service.conftest import Api


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


def test_request_state_from_the_row_read_here_is_the_state_read_and_on_sqlite_reads_nothing(
    api: Api,
) -> None:
    decision = api.create_unlock_request("acct-state")
    engine = api.app.state.engine

    async def states() -> tuple[Any, Any, list[str]]:
        async with engine.begin() as conn:
            row = await UnlockRequestRepository(conn).get(decision["id"])
            assert row is not None
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
    # PostgreSQL reads and locks the row whatever the caller read (another worker may write it).


def test_request_state_says_when_the_account_was_erased(api: Api) -> None:
    # What a proof checks under the request's lock before it may count (the erasure may have
    # committed after the proof read the row): both ways of reading the state agree.
    decision = api.create_unlock_request("acct-state-erased")
    erased = api.client.delete("/v1/accounts/acct-state-erased", headers=api.headers(Role.ADMIN))
    assert erased.status_code == 200, erased.text

    async def states() -> tuple[Any, Any]:
        async with api.app.state.engine.begin() as conn:
            row = await UnlockRequestRepository(conn).get(decision["id"])
            assert row is not None
            repo = ChallengeRepository(conn)
            return (
                await repo.lock_request(decision["id"]),
                await repo.lock_request(decision["id"], read_here=row),
            )

    read, given = api.run(states)
    assert read.erased
    assert given == read


def test_request_state_refuses_another_requests_row(sqlite_api: Api) -> None:
    # SQLite only: PostgreSQL reads the row itself and never looks at read_here.
    api = sqlite_api
    one = api.create_unlock_request("acct-state-a")
    other = api.create_unlock_request("acct-state-b")
    engine = api.app.state.engine

    async def mixed() -> None:
        async with engine.begin() as conn:
            row = await UnlockRequestRepository(conn).get(other["id"])
            await ChallengeRepository(conn).lock_request(one["id"], read_here=row)

    with pytest.raises(ValueError, match="another request"):
        api.run(mixed)
