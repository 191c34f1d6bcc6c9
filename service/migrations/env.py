"""Alembic environment: the project's own async engine factory, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from alembic import context
from sqlalchemy.engine import Connection

from service.db import create_engine
from service.persistence import UtcDateTime
from service.schema import ALL_METADATA

config = context.config
URL: str = config.attributes["url"]


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | Literal[False]:
    # UtcDateTime is a Python-side conversion; in the database it is a plain timestamptz.
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=list(ALL_METADATA),
        compare_type=True,
        # A server default changed in a model without a migration is drift too.
        compare_server_default=True,
        # SQLite alters tables by copying them; batch mode makes one migration serve both backends.
        render_as_batch=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    engine = create_engine(URL)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=URL, target_metadata=list(ALL_METADATA), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
