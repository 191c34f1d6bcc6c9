"""outbox_events by subject: erasure removes an account's events, which carry its account id

Without the index an erasure read the whole outbox, which keeps delivered events (for 30 days
by default since the retention job).
On PostgreSQL it is built CONCURRENTLY; such a build, interrupted, leaves an invalid index of
that name behind, which the upgrade run again drops first.

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


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if _postgresql():
        # The outbox keeps delivered events, and every approval writes to it: built
        # CONCURRENTLY, the index does not hold approvals up (outside the migration's
        # transaction, as PostgreSQL requires).
        with op.get_context().autocommit_block():
            op.drop_index(
                "ix_outbox_events_subject",
                table_name="outbox_events",
                postgresql_concurrently=True,
                if_exists=True,
            )
            op.create_index(
                "ix_outbox_events_subject",
                "outbox_events",
                ["subject"],
                postgresql_concurrently=True,
            )
    else:
        op.create_index("ix_outbox_events_subject", "outbox_events", ["subject"])


def downgrade() -> None:
    if _postgresql():
        with op.get_context().autocommit_block():
            op.drop_index(
                "ix_outbox_events_subject",
                table_name="outbox_events",
                postgresql_concurrently=True,
            )
    else:
        op.drop_index("ix_outbox_events_subject", table_name="outbox_events")
