"""unlock_requests.decision_json as bytes: stored as msgspec writes it, read as msgspec reads it

As text, every decision's JSON was decoded from UTF-8 to str and encoded back by the driver.
The conversion keeps each value's UTF-8 bytes (SQLite: CAST to BLOB while the table is copied;
PostgreSQL: convert_to).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("unlock_requests") as batch:
        batch.alter_column(
            "decision_json",
            existing_type=sa.Text(),
            type_=sa.LargeBinary(),
            existing_nullable=False,
            postgresql_using="convert_to(decision_json, 'UTF8')",
        )


def downgrade() -> None:
    with op.batch_alter_table("unlock_requests") as batch:
        batch.alter_column(
            "decision_json",
            existing_type=sa.LargeBinary(),
            type_=sa.Text(),
            existing_nullable=False,
            postgresql_using="convert_from(decision_json, 'UTF8')",
        )
