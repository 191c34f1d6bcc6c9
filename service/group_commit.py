"""Group commit: the work of concurrent requests shares one transaction per batch.

A decision is a few reads, a few inserts, an audit integration (head, leaves, a signed
checkpoint) and a commit. Done one request at a time, the per-statement cost, the integration and
the commit's fsync dominate, and on SQLite every writer waits for the one before it anyway. Here
the requests that arrive while a batch runs form the next batch, and ``process`` handles the
whole batch in one transaction — one multi-account read, one multi-row INSERT per table, one
audit integration — then one COMMIT makes it durable. Only then does any caller get its answer.

``process`` returns one outcome per item: the answer, or the exception that item failed with
(it must have written nothing for that item). Requests with the same ``key`` (the account) never
share a batch: a later one is held for the next batch, so its reads see the earlier one's rows
(e.g. the velocity count). No timer: an idle worker commits at once; a busy one batches by itself.
A batch is taken once its transaction has begun, so on SQLite the requests that arrive while a
worker waits for another's write lock join the batch that waits (two workers, before: about 8
requests per batch, and more transactions than one worker made for the same load).
With ``linger``, fewer than ``c + 3n / 4`` requests waiting within ``linger`` seconds of a batch
of ``n`` that ended with ``c`` waiting (they arrived while it ran) wait up to ``linger`` seconds
for the rest: the callers it answered come back as new requests and join those. Without the
wait the one that arrived during the batch went alone (at 32 connections batches alternated 1
and 31, and each batch costs ~1 ms of CPU whatever its size); waiting for ``3n / 4`` alone, the
callers settled into two groups that took turns (PostgreSQL, 2 workers: batches of 7-8 of a
worker's ~16 connections, each paying a batch's round trips and its turn at the audit
integration lock; counting ``c``, batches of 14-16 and 2,660-2,832 -> 3,730-3,771 req/s).
An idle worker still commits at once: after a batch of one, or a pause, nothing is awaited.
With ``concurrency`` above one (PostgreSQL, where a batch mostly waits on round trips), that many
batches run at once on their own connections; a key is never in two of them.

A ``process`` that raises, or a failed COMMIT, fails every request of the batch; nothing of it
was committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import write_turn_elsewhere

log = logging.getLogger("fairunlock.group_commit")

T = TypeVar("T")  # what a request brings
A = TypeVar("A")  # the answer each caller gets

Process = Callable[[AsyncConnection, Sequence[T]], Awaitable[Sequence["A | Exception"]]]
Ahead = Callable[[AsyncConnection, Sequence[T], Callable[[], bool]], Awaitable[Sequence[T]]]


@dataclass(slots=True)
class _Pending(Generic[T, A]):
    key: str
    item: T
    future: asyncio.Future[A] = field(repr=False)


class GroupCommit(Generic[T, A]):
    """One per worker process and kind of work."""

    __slots__ = (
        "_ahead",
        "_alone_on",
        "_carried",
        "_concurrency",
        "_engine",
        "_last_end",
        "_last_size",
        "_linger",
        "_max_batch",
        "_observe",
        "_pending",
        "_process",
        "_runners",
        "_waiting",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        process: Process[T, A],
        *,
        max_batch: int = 64,
        observe: Callable[[int], None] | None = None,
        alone_on: Callable[[Exception], bool] | None = None,
        concurrency: int = 1,
        linger: float = 0.0,
        ahead: Ahead[T] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if linger < 0:
            raise ValueError("linger must not be negative")
        self._engine = engine
        self._process = process
        self._max_batch = max_batch
        self._observe = observe
        self._alone_on = alone_on
        self._concurrency = concurrency
        self._linger = linger
        self._ahead = ahead
        # The last batch's size, when it ended (loop time) and how many requests were waiting
        # then: what a linger waits for.
        self._last_size = 0
        self._last_end = 0.0
        self._carried = 0
        self._pending: list[_Pending[T, A]] = []
        # Lingering runners: how many requests each waits for, and its wake-up.
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        # Each running batch loop and the keys of the batch it holds.
        self._runners: dict[asyncio.Task[None], set[str]] = {}

    async def submit(self, key: str, item: T) -> A:
        """Process ``item`` in the next batch that holds nothing else for ``key``; its answer,
        once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[A] = loop.create_future()
        self._pending.append(_Pending(key, item, future))
        for want, wake in self._waiting:
            # A waiter of another (closed) loop is skipped, as its runner is below.
            if len(self._pending) >= want and not wake.done() and wake.get_loop() is loop:
                wake.set_result(None)
        # A runner of another (closed) loop never finishes: tests reuse an app across loops.
        self._runners = {
            task: keys
            for task, keys in self._runners.items()
            if not task.done() and task.get_loop() is loop
        }
        if len(self._runners) < self._concurrency:
            self._runners[asyncio.create_task(self._run())] = set()
        # A caller that goes away (client disconnect) cancels only its own future: the batch is
        # the runner's task and answers only futures not done yet. (asyncio.shield here cost an
        # extra future and loop callback per request, ~5 % of a decision's instructions.)
        return await future

    def _take_batch(self, busy: set[str], room: int) -> list[_Pending[T, A]]:
        batch: list[_Pending[T, A]] = []
        keys: set[str] = set()
        held: list[_Pending[T, A]] = []
        for pending in self._pending:
            if len(batch) < room and pending.key not in keys and pending.key not in busy:
                batch.append(pending)
                keys.add(pending.key)
            else:
                held.append(pending)  # keeps arrival order for the next batch
        self._pending = held
        return batch

    async def _run(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        mine = self._runners.setdefault(me, set())

        def take(room: int) -> list[_Pending[T, A]]:
            # Keys another runner's batch holds wait for that batch's commit; those this batch
            # holds already (taken ahead of its BEGIN) for the next.
            busy = mine.union(*(k for t, k in self._runners.items() if t is not me))
            batch = self._take_batch(busy, room)
            mine.update(p.key for p in batch)
            return batch

        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                want = min(self._carried + self._last_size * 3 // 4, self._max_batch)
                # Only just after a batch: a request after a pause is not held.
                if len(self._pending) < want and loop.time() - self._last_end < self._linger:
                    try:
                        await self._wait_for(want)
                    except BaseException as stopped:
                        # Cancelled while waiting (shutdown): what waits may have no runner left
                        # to take it; its callers learn it rather than wait for ever.
                        self._fail(self._pending, stopped)
                        self._pending = []
                        raise
                ran = await self._run_batch(take)
                if not ran:
                    return
                self._last_size, self._last_end = len(ran), loop.time()
                self._carried = len(self._pending)
                mine.clear()
        finally:
            self._runners.pop(me, None)

    async def _wait_for(self, want: int) -> None:
        """Until ``want`` requests are waiting, or ``linger`` seconds have passed."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = wake.get_loop().call_later(self._linger, _set_none, wake)
        waiter = (want, wake)
        self._waiting.append(waiter)
        try:
            await wake
        finally:
            timer.cancel()
            self._waiting.remove(waiter)

    async def _run_batch(self, take: Callable[[int], list[_Pending[T, A]]]) -> list[_Pending[T, A]]:
        """Begin a transaction, then take the batch (``take``): what arrived while BEGIN waited
        (on SQLite, for the other workers' write lock) joins it. The batch it ran, if any.

        With ``ahead``, when the BEGIN would wait (service.db.write_turn_elsewhere), the
        requests waiting now are taken first and ``ahead`` does its part of their work until
        the lock comes, which it polls with ``arrived`` (on SQLite: reads without the lock and
        decisions, checked again under it); those that arrive meanwhile join after BEGIN as
        before."""
        batch: list[_Pending[T, A]] = []
        begun = False
        try:
            async with self._engine.connect() as conn:
                items: list[T] = []
                if self._ahead is not None:
                    arrived = write_turn_elsewhere(conn)
                    if arrived is not None:
                        batch = take(self._max_batch)
                        items = await self._work_ahead(conn, [p.item for p in batch], arrived)
                async with conn.begin():
                    begun = True
                    late = take(self._max_batch - len(batch))
                    batch += late
                    if not batch:
                        return batch
                    if self._observe is not None:
                        self._observe(len(batch))
                    items += [p.item for p in late]
                    outcomes = await self._process(conn, items)
                    if len(outcomes) != len(batch):
                        raise RuntimeError(
                            "group commit: process answered a different number of items"
                        )
        except Exception as exc:
            if not begun:  # BEGIN failed: the requests it was for learn why
                batch += take(self._max_batch - len(batch))
            if len(batch) > 1 and self._alone_on is not None and self._alone_on(exc):
                log.info("group commit of %d requests retried one by one: %r", len(batch), exc)
                try:
                    for pending in batch:
                        await self._run_batch(_only(pending))
                except BaseException as stopped:  # cancelled: those not retried yet learn it
                    self._fail(batch, stopped)
                    raise
                return batch
            self._fail(batch, exc)
            log.warning("group commit of %d requests failed: %r", len(batch), exc)
            return batch
        except BaseException as exc:
            # Cancelled (shutdown) or interpreter exit: nothing of the batch committed.
            if not begun:
                batch += take(self._max_batch - len(batch))
            self._fail(batch, exc)
            raise
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        return batch

    async def _work_ahead(
        self, conn: AsyncConnection, items: list[T], arrived: Callable[[], bool]
    ) -> list[T]:
        """``ahead``'s items in place of ``items``. Its work is only ahead of time: should it
        fail, the batch does all of it under the lock, as without it."""
        assert self._ahead is not None
        try:
            done = list(await self._ahead(conn, items, arrived))
        except Exception:
            log.warning("group commit: the work ahead of BEGIN failed", exc_info=True)
            return items
        if len(done) != len(items):
            raise RuntimeError("group commit: ahead answered a different number of items")
        return done

    @staticmethod
    def _fail(batch: list[_Pending[T, A]], exc: BaseException) -> None:
        # Nothing of the batch committed: every caller still waiting learns it.
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)


def _only(pending: _Pending[T, A]) -> Callable[[int], list[_Pending[T, A]]]:
    """A ``take`` for a batch of this one request (taken once)."""
    taken = [pending]

    def take(_room: int) -> list[_Pending[T, A]]:
        batch = taken[:]
        taken.clear()
        return batch

    return take


def _set_none(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
