"""Shared fixtures: real databases. PostgreSQL tests get a fresh database each and are skipped,
with the reason printed, only when no server answers at FAIRUNLOCK_TEST_PG_ADMIN_URL."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN_URL = os.environ.get(
    "FAIRUNLOCK_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _app_logging_stays_in_its_test() -> Iterator[None]:
    """create_app installs the redacting JSON handler on the root logger; left there, it rewrites
    the records later tests capture (caplog), so a test's outcome would depend on the order."""
    root = logging.getLogger()
    before = list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in before]:
        if getattr(handler, "_fairunlock_json_handler", False):
            root.removeHandler(handler)
            handler.close()


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import asyncpg  # type: ignore[import-untyped]

    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:  # any failure to connect means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = _pg_reachable()
    if reason is not None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({reason})")
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards: an asyncpg SQLAlchemy URL."""
    import asyncpg

    name = f"fu_test_{secrets.token_hex(6)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = pg_admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'fairunlock.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test that takes it runs on SQLite and on PostgreSQL (skipped when none answers)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fairunlock.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def pytest_report_header(config: pytest.Config) -> str:
    reason = _pg_reachable()
    if reason is None:
        return f"PostgreSQL: reachable at {PG_ADMIN_URL}"
    return (
        f"PostgreSQL: NOT reachable at {PG_ADMIN_URL} — PostgreSQL tests will be skipped ({reason})"
    )
