"""``fairunlock db upgrade`` and ``fairunlock keys create --role ROLE --name NAME``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.settings import Settings, SettingsError


def register(groups: Any) -> None:
    db = groups.add_parser("db", help="database migrations")
    db_commands = db.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    upgrade = db_commands.add_parser("upgrade", help="apply migrations to the configured database")
    upgrade.add_argument("--revision", default="head")
    upgrade.set_defaults(handler=_upgrade)

    keys = groups.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    create = key_commands.add_parser("create", help="create an API key; printed once, last line")
    create.add_argument(
        "--role", required=True, choices=["frontend", "agent", "supervisor", "auditor", "admin"]
    )
    create.add_argument(
        "--name", required=True, help="who holds it; recorded as the actor in audit entries"
    )
    create.set_defaults(handler=_create_key)


def _settings() -> Settings | None:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"fairunlock: {exc}", file=sys.stderr)
        return None


def _upgrade(args: argparse.Namespace) -> int:
    from service.schema import upgrade

    settings = _settings()
    if settings is None:
        return 2
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url, args.revision)
    print(f"database at revision {args.revision}", file=sys.stderr)
    return 0


def _create_key(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import IntegrityError

    from service.db import create_engine
    from service.persistence.api_keys import ApiKeyRepository, Role

    settings = _settings()
    if settings is None:
        return 2
    name = args.name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        print(
            "fairunlock keys create: --name must be 1 to 100 printable characters", file=sys.stderr
        )
        return 2

    async def create() -> str:
        engine = create_engine(settings.resolved_database_url)
        try:
            async with engine.begin() as conn:
                return await ApiKeyRepository(conn).create(Role(args.role), name)
        finally:
            await engine.dispose()

    try:
        key = asyncio.run(create())
    except IntegrityError:
        print(f"fairunlock keys create: a key named {name!r} exists already", file=sys.stderr)
        return 1
    print(f"created {args.role} key {name!r}; it is shown once:", file=sys.stderr)
    print(key)
    return 0
