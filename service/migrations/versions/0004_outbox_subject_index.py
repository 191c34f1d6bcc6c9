"""outbox_events by subject: erasure removes an account's events, which carry its account id

Without the index an erasure read the whole outbox, which keeps every delivered event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_events_subject", "outbox_events", ["subject"])


def downgrade() -> None:
    op.drop_index("ix_outbox_events_subject", table_name="outbox_events")
