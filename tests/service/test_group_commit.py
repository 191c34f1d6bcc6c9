"""Group commit (service/group_commit.py): concurrent requests share a transaction, yet each caller
is told only what is true of its own request — committed, or failed with nothing written."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import create_engine, deadlocked
from service.group_commit import GroupCommit
from service.sqlite_inline import InlineConnection

metadata = MetaData()
rows = Table("rows", metadata, Column("id", Integer, primary_key=True), Column("v", String))


class Recorder:
    """A process that reads, per item, how many rows already hold its value, then inserts the
    good items in one statement, and answers "value:seen" — so tests can tell batches apart."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.fail_with: Exception | None = None
        self.delay = 0.0  # seconds each batch takes, for requests to arrive meanwhile

    async def process(self, conn: AsyncConnection, items: Sequence[str]) -> list[str | Exception]:
        self.batches.append(list(items))
        if self.delay:
            await asyncio.sleep(self.delay)
        outcomes: list[str | Exception] = []
        for v in items:
            if v == "bad":
                outcomes.append(LookupError("domain error in one request"))
            else:
                outcomes.append(f"{v}:{await _count(conn, v)}")
        good = [v for v in items if v != "bad"]
        if good:
            await conn.execute(insert(rows), [{"v": v} for v in good])
        if self.fail_with is not None:
            raise self.fail_with
        return outcomes


async def _count(conn: AsyncConnection, v: str | None = None) -> int:
    query = select(func.count()).select_from(rows)
    if v is not None:
        query = query.where(rows.c.v == v)
    return int((await conn.execute(query)).scalar_one())


async def _setup(
    tmp_path: Path, linger: float = 0.0
) -> tuple[GroupCommit[str, str], Recorder, AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    recorder = Recorder()
    return GroupCommit(engine, recorder.process, linger=linger), recorder, engine


def test_concurrent_requests_commit_in_fewer_transactions_and_all_are_durable(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        answers = await asyncio.gather(*(group.submit(f"k{i}", f"v{i}") for i in range(50)))
        assert answers == [f"v{i}:0" for i in range(50)]
        assert len(recorder.batches) < 50  # batched: at most the first request ran alone
        assert sorted(v for b in recorder.batches for v in b) == sorted(f"v{i}" for i in range(50))
        async with engine.connect() as conn:
            assert await _count(conn) == 50
        await engine.dispose()

    asyncio.run(scenario())


def test_requests_with_the_same_key_never_share_a_batch_and_see_each_others_rows(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        answers = await asyncio.gather(
            *(group.submit("same-account", "x") for _ in range(4)),
            group.submit("other", "y"),
        )
        # Each later request for the key read the rows committed by the earlier ones.
        assert answers[:4] == ["x:0", "x:1", "x:2", "x:3"]
        assert all(batch.count("x") <= 1 for batch in recorder.batches)
        await engine.dispose()

    asyncio.run(scenario())


def test_a_failing_item_fails_its_own_request_only(tmp_path: Path) -> None:
    async def scenario() -> None:
        group, _, engine = await _setup(tmp_path)

        outcomes = await asyncio.gather(
            group.submit("a", "good"),
            group.submit("b", "bad"),
            group.submit("c", "good"),
            return_exceptions=True,
        )
        assert outcomes[0] == "good:0"
        assert isinstance(outcomes[1], LookupError)
        assert outcomes[2] == "good:0"
        async with engine.connect() as conn:
            assert await _count(conn) == 2
        await engine.dispose()

    asyncio.run(scenario())


def test_a_failing_process_fails_every_request_of_the_batch_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        recorder.fail_with = OSError("disk full while integrating")
        outcomes = await asyncio.gather(
            *(group.submit(f"k{i}", "x") for i in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(o, OSError) for o in outcomes)
        async with engine.connect() as conn:
            assert await _count(conn) == 0  # the batch's INSERT was rolled back
        await engine.dispose()

    asyncio.run(scenario())


def test_max_batch_must_be_positive(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}")
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(engine, Recorder().process, max_batch=0)


class Deadlock(Exception):
    """Stands for PostgreSQL's deadlock error in the unit test of the retry rule."""


def test_a_batch_that_deadlocks_is_retried_one_request_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        _, recorder, engine = await _setup(tmp_path)

        async def process(conn: AsyncConnection, items: Sequence[str]) -> list[str | Exception]:
            outcomes = await recorder.process(conn, items)
            if len(items) > 1:
                raise Deadlock("two batches locked the same rows in opposite orders")
            return outcomes

        group = GroupCommit(engine, process, alone_on=lambda exc: isinstance(exc, Deadlock))
        answers = await asyncio.gather(*(group.submit(f"k{i}", f"v{i}") for i in range(6)))
        assert answers == [f"v{i}:0" for i in range(6)]
        assert any(len(b) > 1 for b in recorder.batches)  # a shared batch did fail first
        async with engine.connect() as conn:
            assert await _count(conn) == 6  # each once: the failed batch kept nothing
        await engine.dispose()

    asyncio.run(scenario())


def test_a_cancelled_retry_leaves_no_request_of_its_batch_waiting(tmp_path: Path) -> None:
    """A batch retried one request at a time (a deadlock) and cancelled meanwhile (shutdown):
    every request of it not yet retried learns it, none waits for ever."""

    async def scenario() -> None:
        _, recorder, engine = await _setup(tmp_path)
        stuck = asyncio.Event()

        async def process(conn: AsyncConnection, items: Sequence[str]) -> list[str | Exception]:
            if len(items) > 1:
                raise Deadlock("two batches locked the same rows in opposite orders")
            stuck.set()
            await asyncio.Event().wait()  # the first retry never ends
            return await recorder.process(conn, items)

        group = GroupCommit(engine, process, alone_on=lambda exc: isinstance(exc, Deadlock))
        callers = [asyncio.ensure_future(group.submit(f"k{i}", f"v{i}")) for i in range(3)]
        await stuck.wait()
        for runner in list(group._runners):
            runner.cancel()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*callers, return_exceptions=True), timeout=5
        )
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        await engine.dispose()

    asyncio.run(scenario())


def test_a_begin_that_fails_fails_the_requests_it_was_for(tmp_path: Path) -> None:
    """The batch is taken once BEGIN returns; when the connection or BEGIN fails (the database
    down), the requests waiting get its error, and later ones run once it works again."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        real_connect = engine.connect
        failing = True

        def connect() -> Any:
            if failing:
                raise OSError("database unavailable")
            return real_connect()

        group._engine = cast(AsyncEngine, SimpleNamespace(connect=connect))
        outcomes = await asyncio.gather(
            *(group.submit(f"k{i}", f"v{i}") for i in range(3)), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes), outcomes
        assert recorder.batches == []
        failing = False
        assert await group.submit("k0", "v0") == "v0:0"
        await engine.dispose()

    asyncio.run(scenario())


def test_other_errors_are_not_retried_one_by_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        _, recorder, engine = await _setup(tmp_path)
        recorder.fail_with = OSError("disk full")
        group = GroupCommit(engine, recorder.process, alone_on=lambda exc: False)
        outcomes = await asyncio.gather(
            *(group.submit(f"k{i}", "x") for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(o, OSError) for o in outcomes)
        assert sum(len(b) for b in recorder.batches) == 4  # each request ran exactly once
        await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_deadlocked_recognises_a_real_postgresql_deadlock(postgres_url: str) -> None:
    async def scenario() -> None:
        engine = create_engine(postgres_url)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
            await conn.execute(insert(rows), [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])
        first_locked, second_locked = asyncio.Event(), asyncio.Event()

        async def lock(mine: int, theirs: int, locked: asyncio.Event, other: asyncio.Event) -> None:
            async with engine.begin() as conn:
                await conn.execute(rows.update().where(rows.c.id == mine).values(v="x"))
                locked.set()
                await other.wait()
                await conn.execute(rows.update().where(rows.c.id == theirs).values(v="y"))

        outcomes = await asyncio.gather(
            lock(1, 2, first_locked, second_locked),
            lock(2, 1, second_locked, first_locked),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1  # PostgreSQL aborts one of the two
        assert deadlocked(errors[0])
        assert not deadlocked(OSError("disk full"))
        await engine.dispose()

    asyncio.run(scenario())


@pytest.mark.postgres
def test_batches_in_flight_overlap_but_never_share_a_key(postgres_url: str) -> None:
    async def scenario() -> None:
        engine = create_engine(postgres_url)
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        running: list[set[str]] = []
        overlapped = False

        async def process(conn: AsyncConnection, items: Sequence[str]) -> list[str | Exception]:
            nonlocal overlapped
            keys = {item.split(":")[0] for item in items}
            assert all(not (keys & other) for other in running), "a key in two batches"
            overlapped = overlapped or bool(running)
            running.append(keys)
            try:
                await conn.execute(insert(rows), [{"v": item} for item in items])
                await asyncio.sleep(0.02)  # a round trip's wait, during which another batch runs
                return [f"{item}:ok" for item in items]
            finally:
                running.remove(keys)

        # Small batches, so the runners started for later requests find keys no batch holds.
        group = GroupCommit(engine, process, concurrency=3, max_batch=4)
        # Ten keys, four requests each: a key's requests must run in separate batches, in order.
        items = [(f"k{i % 10}", f"k{i % 10}:{i}") for i in range(40)]
        answers = await asyncio.gather(*(group.submit(key, item) for key, item in items))
        assert answers == [f"{item}:ok" for _, item in items]
        assert overlapped  # with concurrency 3, batches did run at the same time
        async with engine.connect() as conn:
            assert await _count(conn) == 40
        await engine.dispose()

    asyncio.run(scenario())


def test_concurrency_must_be_positive(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}")
    with pytest.raises(ValueError, match="concurrency"):
        GroupCommit(engine, Recorder().process, concurrency=0)


def test_after_a_batch_the_runner_waits_for_three_quarters_of_its_size_to_come_back(
    tmp_path: Path,
) -> None:
    """The callers a batch answered return as new requests one by one: with a linger the next
    batch waits for three quarters of them (here 6 of a batch of 8, not all of them: the
    seventh comes in the batch after), where it would have taken the first alone and the others
    in a batch after it."""

    async def scenario(linger: float) -> list[int]:
        (tmp_path / str(linger)).mkdir()
        group, recorder, engine = await _setup(tmp_path / str(linger), linger)
        await asyncio.gather(*(group.submit(f"a{i}", f"a{i}") for i in range(8)))

        async def later(i: int) -> str:
            await asyncio.sleep(0.02 * i)  # trickling in, as answered clients do
            return await group.submit(f"b{i}", f"b{i}")

        await asyncio.gather(*(later(i) for i in range(7)))
        await engine.dispose()
        return [len(b) for b in recorder.batches]

    assert asyncio.run(scenario(0.5)) == [8, 6, 1]
    assert asyncio.run(scenario(0.0))[1] == 1  # without: the first came alone


def test_callers_answered_join_those_that_arrived_during_the_batch(tmp_path: Path) -> None:
    """Eight callers arrive while a batch of eight runs. With a linger, the next batch waits for
    them plus three quarters of the eight it answered, so the callers do not settle into two
    groups that take turns, each paying a whole batch."""

    async def scenario(linger: float) -> list[list[str]]:
        (tmp_path / str(linger)).mkdir()
        group, recorder, engine = await _setup(tmp_path / str(linger), linger)
        recorder.delay = 0.2

        async def client(name: str, start: float, rounds: int, back_after: float) -> None:
            await asyncio.sleep(start)
            for r in range(rounds):
                await group.submit(name, f"{name}-{r}")
                await asyncio.sleep(back_after)  # the answer travels, the next request comes

        await asyncio.gather(
            *(client(f"a{i}", 0.0, 2, 0.05 * i) for i in range(8)),
            *(client(f"b{i}", 0.05, 1, 0.0) for i in range(8)),
        )
        await engine.dispose()
        return recorder.batches

    arrived = {f"b{i}-0" for i in range(8)}
    merged = asyncio.run(scenario(0.5))
    assert [len(b) for b in merged] == [8, 14, 2]
    assert set(merged[1]) == arrived | {f"a{i}-1" for i in range(6)}
    # Without a linger the eight that arrived go alone, the answered ones after them.
    assert set(asyncio.run(scenario(0.0))[1]) == arrived


def test_a_linger_is_bounded_and_an_idle_worker_commits_at_once(tmp_path: Path) -> None:
    """Fewer than half coming back wait no longer than the linger; after a batch of one (an idle
    worker) or a pause a request is not held at all."""

    async def scenario() -> tuple[float, float, list[int]]:
        group, recorder, engine = await _setup(tmp_path, linger=0.5)
        await asyncio.gather(*(group.submit(f"a{i}", f"a{i}") for i in range(8)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await group.submit("b", "b")  # one of the eight came back: lingers, alone
        lingered = loop.time() - started
        started = loop.time()
        await group.submit("c", "c")  # after a batch of one: at once
        immediate = loop.time() - started
        await asyncio.gather(*(group.submit(f"d{i}", f"d{i}") for i in range(8)))
        await asyncio.sleep(0.6)
        started = loop.time()
        await group.submit("e", "e")  # after a pause longer than the linger: at once
        after_pause = loop.time() - started
        await engine.dispose()
        return lingered, max(immediate, after_pause), [len(b) for b in recorder.batches]

    lingered, immediate, sizes = asyncio.run(scenario())
    assert sizes == [8, 1, 1, 8, 1]
    assert 0.5 <= lingered < 3.0
    assert immediate < 0.25  # a commit, not a linger


def test_linger_must_not_be_negative(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}")
    with pytest.raises(ValueError, match="linger"):
        GroupCommit(engine, Recorder().process, linger=-0.001)


def test_a_runner_cancelled_while_lingering_fails_what_waits_for_it(tmp_path: Path) -> None:
    """Shutdown cancels the runner mid-wait: the request it was waiting with learns it instead of
    waiting for ever (with no runner left, nothing else would take it)."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path, linger=10.0)
        await asyncio.gather(*(group.submit(f"a{i}", f"a{i}") for i in range(8)))
        waiting = asyncio.ensure_future(group.submit("b", "b"))
        await asyncio.sleep(0.05)
        (runner,) = list(group._runners)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, timeout=5)
        assert [len(b) for b in recorder.batches] == [8]
        await engine.dispose()

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_cancel_its_batch_or_the_others_in_it(
    tmp_path: Path,
) -> None:
    """A client disconnect cancels the request's handler while its batch runs: the others in that
    batch are still answered, and the batch commits (the gone caller's row too: it was decided)."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        started, release = asyncio.Event(), asyncio.Event()
        process = recorder.process

        async def slow(conn: AsyncConnection, items: Sequence[str]) -> list[str | Exception]:
            started.set()
            await release.wait()
            return await process(conn, items)

        group._process = slow
        gone = asyncio.ensure_future(group.submit("a", "a"))
        stays = asyncio.ensure_future(group.submit("b", "b"))
        await asyncio.wait_for(started.wait(), timeout=5)
        gone.cancel()
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.wait_for(stays, timeout=5) == "b:0"
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert recorder.batches == [["a", "b"]]
        async with engine.connect() as conn:
            assert await _count(conn) == 2
        await engine.dispose()

    asyncio.run(scenario())


@asynccontextmanager
async def _another_worker_writing(tmp_path: Path) -> AsyncIterator[AsyncConnection]:
    """Another worker's connection to _setup's database, in a transaction: it holds the write
    lock until the caller commits it."""
    other = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.sqlite3'}")
    holder = await other.connect()
    try:
        await holder.begin()
        yield holder
    finally:
        await holder.close()
        await other.dispose()


def test_while_another_worker_writes_the_waiting_requests_are_worked_on_ahead_of_begin(
    tmp_path: Path,
) -> None:
    """With ``ahead``: while another worker's transaction holds SQLite's write lock, the requests
    waiting are taken and ``ahead`` works on them before BEGIN; those that arrive meanwhile join
    the batch after BEGIN, without that work; with the lock free, nothing is done ahead."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        worked: list[list[str]] = []
        worked_ahead = asyncio.Event()

        async def ahead(
            conn: AsyncConnection, items: Sequence[str], arrived: Callable[[], bool]
        ) -> list[str]:
            assert not conn.in_transaction()
            assert not arrived()  # the other worker still holds the lock
            worked.append(list(items))
            worked_ahead.set()
            return [f"{v}*" for v in items]

        group._ahead = ahead
        async with _another_worker_writing(tmp_path) as other_worker:
            early = [asyncio.ensure_future(group.submit(k, k)) for k in ("a", "b")]
            await asyncio.wait_for(worked_ahead.wait(), 5)
            late = [asyncio.ensure_future(group.submit(k, k)) for k in ("c", "d")]
            await asyncio.sleep(0.05)
            assert recorder.batches == []  # waiting for the lock
            await other_worker.commit()
            answers = await asyncio.wait_for(asyncio.gather(*early, *late), 5)
        assert worked == [["a", "b"]]
        assert recorder.batches == [["a*", "b*", "c", "d"]]
        assert answers == ["a*:0", "b*:0", "c:0", "d:0"]
        # The lock free: nothing ahead.
        assert await group.submit("e", "e") == "e:0"
        assert worked == [["a", "b"]]
        await engine.dispose()

    asyncio.run(scenario())


def test_work_ahead_that_fails_is_done_in_the_batch(tmp_path: Path) -> None:
    """``ahead`` only does work early: when it fails, the batch gets the requests as they came
    and every caller is answered."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        tried = asyncio.Event()

        async def ahead(
            conn: AsyncConnection, items: Sequence[str], arrived: Callable[[], bool]
        ) -> list[str]:
            tried.set()
            raise RuntimeError("a bug in the work ahead")

        group._ahead = ahead
        async with _another_worker_writing(tmp_path) as other_worker:
            callers = [asyncio.ensure_future(group.submit(k, k)) for k in ("a", "b")]
            await asyncio.wait_for(tried.wait(), 5)
            await other_worker.commit()
            assert await asyncio.wait_for(asyncio.gather(*callers), 5) == ["a:0", "b:0"]
        assert recorder.batches == [["a", "b"]]
        await engine.dispose()

    asyncio.run(scenario())


def test_a_begin_that_fails_after_work_ahead_fails_its_requests_and_keeps_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock got during the work ahead, then BEGIN fails: every request taken learns the
    error, the lock is let go (the other worker's next BEGIN does not wait), and the next
    request runs once BEGIN works again."""

    async def scenario() -> None:
        group, recorder, engine = await _setup(tmp_path)
        failing = False
        begin_immediate = InlineConnection.begin_immediate

        async def failing_begin(self: InlineConnection) -> None:
            if failing:
                raise sqlite3.OperationalError("disk I/O error")
            await begin_immediate(self)

        monkeypatch.setattr(InlineConnection, "begin_immediate", failing_begin)
        async with _another_worker_writing(tmp_path) as other_worker:

            async def ahead(
                conn: AsyncConnection, items: Sequence[str], arrived: Callable[[], bool]
            ) -> list[str]:
                nonlocal failing
                await other_worker.commit()
                assert arrived()  # the lock is this connection's now, ahead of its BEGIN
                failing = True
                return list(items)

            group._ahead = ahead
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(group.submit(k, k) for k in ("a", "b")), return_exceptions=True),
                5,
            )
            assert len(outcomes) == 2
            assert all("disk I/O error" in str(o) for o in outcomes), outcomes
            failing = False
            await asyncio.wait_for(other_worker.begin(), 5)  # not held by the failed batch
            await other_worker.commit()
        assert recorder.batches == []
        assert await group.submit("c", "c") == "c:0"
        await engine.dispose()

    asyncio.run(scenario())
