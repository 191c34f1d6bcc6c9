"""unlock_requests.decision_json compressed with LZ4 on PostgreSQL

A decision's stored JSON is ~2.2 KB, which takes its row over PostgreSQL's TOAST threshold
(~2 KB), so every INSERT compressed it with pglz. In the server's statement log under unlock
load (one worker, 32 connections), the INSERT took ~91 µs a row, the largest single cost of a
decision on the server; with LZ4, ~63-73 µs (and ~66 µs with no compression at all, the row then
a third larger). Over HTTP the change is within noise (the worker's CPU, not the server's, bounds
a decision): interleaved runs, head / base 0.990 on one worker and 0.978 on two. Metadata only
(a brief ACCESS EXCLUSIVE lock, no rewrite): existing rows keep their pglz values and read as
before, an UPDATE that leaves the column alone does not compress it again, and a server built
without LZ4 keeps pglz. SQLite does not compress.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LZ4_BUILT_IN = sa.text(
    "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
)


def _lz4_available() -> bool:
    bind = op.get_bind()
    return bind.dialect.name == "postgresql" and bool(bind.execute(_LZ4_BUILT_IN).scalar())


def upgrade() -> None:
    if _lz4_available():
        op.execute("ALTER TABLE unlock_requests ALTER COLUMN decision_json SET COMPRESSION lz4")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE unlock_requests ALTER COLUMN decision_json SET COMPRESSION default")
