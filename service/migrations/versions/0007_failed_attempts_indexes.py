"""failed verification attempts: the throttles' indexes hold only the attempts that failed

The two indexes over verification_attempts (by account, by source address) served only queries
for failed attempts, yet every successful attempt took an entry in each, at a leaf as random as
its account and its source: two more pages for SQLite to write to its WAL per accepted proof.
They become partial indexes of the failed attempts, under names that say so. On PostgreSQL the
new ones are built CONCURRENTLY before the old ones go (attempts are written on every proof, and
the throttles' queries keep an index meanwhile); an interrupted build's invalid index is
dropped first, as in 0004, and a run interrupted after it dropped an old index can run again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "verification_attempts"
FAILED = sa.text("outcome <> 'success'")
# (new partial index, the full index it replaces, columns)
INDEXES = (
    (
        "ix_verification_attempts_subject_failed",
        "ix_verification_attempts_subject_created",
        "subject",
    ),
    (
        "ix_verification_attempts_source_failed",
        "ix_verification_attempts_source_created",
        "source_index",
    ),
)


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if _postgresql():
        with op.get_context().autocommit_block():
            for new, old, column in INDEXES:
                op.drop_index(new, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
                op.create_index(
                    new,
                    TABLE,
                    [column, "created_at"],
                    postgresql_where=FAILED,
                    postgresql_concurrently=True,
                )
                op.drop_index(old, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
    else:
        for new, old, column in INDEXES:
            op.create_index(new, TABLE, [column, "created_at"], sqlite_where=FAILED)
            op.drop_index(old, table_name=TABLE)


def downgrade() -> None:
    if _postgresql():
        with op.get_context().autocommit_block():
            for new, old, column in INDEXES:
                op.drop_index(old, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
                op.create_index(old, TABLE, [column, "created_at"], postgresql_concurrently=True)
                op.drop_index(new, table_name=TABLE, postgresql_concurrently=True, if_exists=True)
    else:
        for new, old, column in INDEXES:
            op.create_index(old, TABLE, [column, "created_at"])
            op.drop_index(new, table_name=TABLE)
