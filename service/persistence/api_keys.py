"""API keys: high-entropy random strings stored only as SHA-256 digests (checked in microseconds).

A key is 256 random bits, so a plain digest is enough: there is nothing to brute-force that a slow
hash would protect (PERF.md: argon2 here would cost ~100 ms per request).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import Column, DateTime, LargeBinary, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from service.ids import new_id
from service.persistence import metadata

KEY_PREFIX = "fu_"


class Role(StrEnum):
    FRONTEND = "frontend"
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    AUDITOR = "auditor"
    ADMIN = "admin"


api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(20), nullable=False),
    Column("digest", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's name is what audit entries record as the actor."""

    key_id: str
    name: str
    role: Role


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(presented: str) -> bytes:
    return hashlib.sha256(presented.encode("utf-8")).digest()


class ApiKeyRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def create(self, role: Role, name: str, *, now: datetime | None = None) -> str:
        """Store a new key and return it in clear — the only time it exists outside the caller."""
        key = generate_api_key()
        await self._conn.execute(
            insert(api_keys).values(
                id=new_id(),
                name=name,
                role=role.value,
                digest=key_digest(key),
                created_at=now or datetime.now(UTC),
            )
        )
        return key

    async def find_active(self, presented: str) -> Principal | None:
        row = (
            await self._conn.execute(
                select(api_keys.c.id, api_keys.c.name, api_keys.c.role).where(
                    api_keys.c.digest == key_digest(presented), api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
        if row is None:
            return None
        return Principal(key_id=row.id, name=row.name, role=Role(row.role))
