"""service/db.py on PostgreSQL: a connection that sat unused in the pool is pinged before it is
handed out, and replaced when the ping fails (a server restart or a killed backend goes unnoticed
by the caller); a connection in steady use is not pinged at every checkout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from service import db


def _count_pings(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each ping of SQLAlchemy's asyncpg adapter: whether it found the connection alive."""
    pings: list[bool] = []
    ping = AsyncAdapt_asyncpg_connection.ping

    def counting(self: Any) -> Any:
        try:
            result = ping(self)  # type: ignore[no-untyped-call]
        except Exception:
            pings.append(False)
            raise
        pings.append(True)
        return result

    monkeypatch.setattr(AsyncAdapt_asyncpg_connection, "ping", counting)
    return pings


@pytest.mark.postgres
def test_a_connection_in_steady_use_is_not_pinged(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(monkeypatch)

    async def main() -> None:
        engine = db.create_engine(postgres_url, pool_size=1)
        try:
            for _ in range(20):
                async with engine.connect() as conn:
                    assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert pings == []


@pytest.mark.postgres
def test_an_idle_connection_whose_backend_was_killed_is_replaced_unnoticed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(monkeypatch)
    monkeypatch.setattr(db, "PG_IDLE_PING_S", 0.05)

    async def main() -> tuple[int, int]:
        engine = db.create_engine(postgres_url, pool_size=1)
        admin = db.create_engine(postgres_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                killed = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            async with admin.connect() as conn:
                await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": killed})
            await asyncio.sleep(0.1)  # idle longer than PG_IDLE_PING_S
            async with engine.connect() as conn:
                now = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            return killed, now
        finally:
            await engine.dispose()
            await admin.dispose()

    killed, now = asyncio.run(main())
    assert now != killed
    assert pings == [False], "the killed connection was handed out without a ping"
