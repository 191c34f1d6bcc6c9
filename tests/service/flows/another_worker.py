"""A group commit's work ahead of its BEGIN while "another worker" holds SQLite's write lock:
the harness of test_unlock_ahead and test_challenges_ahead."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.db import create_engine
from service.group_commit import Ahead
from service.sqlite_inline import WriterTurn

T = TypeVar("T")  # what the group commit's requests bring
R = TypeVar("R")  # what the submitted call answers


async def while_another_worker_writes(
    path: str,
    ahead: Ahead[T],
    submit: Callable[[AsyncEngine, Ahead[T]], Awaitable[R]],
    change: Callable[[sqlite3.Connection], None] | None,
) -> tuple[list[T], R | Exception]:
    """``submit(engine, ahead)`` (a call through a group commit on ``engine`` built with that
    ``ahead``) while a write turn held here stands for another worker: ``ahead`` works on its
    batch, then ``change`` is written as that worker would, then the lock is let go and the
    batch runs under it. (The items ``ahead`` returned; the call's answer, or what it raised.)"""
    # An engine of the test's own: the app's one pooled connection may be taken at any moment by
    # its audit integrator or outbox, which would then wait for the lock held here.
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    worked, go_on = asyncio.Event(), asyncio.Event()
    got: list[T] = []

    async def waiting(
        conn: AsyncConnection, batch: Sequence[T], arrived: Callable[[], bool]
    ) -> Sequence[T]:
        items = await ahead(conn, batch, arrived)
        got.extend(items)
        worked.set()
        await go_on.wait()
        return items

    other_worker = WriterTurn(path)
    try:
        assert await other_worker.take(1)
        called = asyncio.ensure_future(submit(engine, waiting))
        await asyncio.wait_for(worked.wait(), 5)
        if change is not None:
            with closing(sqlite3.connect(path)) as db, db:
                change(db)
    finally:
        other_worker.close()  # lets go of the lock
        go_on.set()
    try:
        return got, await asyncio.wait_for(called, 10)
    except Exception as exc:
        return got, exc
    finally:
        await engine.dispose()
