"""challenges still holding a secret: the retention job wipes those of expired challenges

A partial index over the ids of challenges whose secret (an SMS code's keyed hash, an OIDC or
face session's sealed state) has not been wiped yet: the job's pass reads those, oldest first,
not every challenge there ever was. On PostgreSQL it is built CONCURRENTLY (challenges are
written on every proof), and an interrupted build's invalid index is dropped first, as in 0004.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "ix_challenges_secret_held"
HELD = sa.text("secret_hash IS NOT NULL OR secret_sealed IS NOT NULL")


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if _postgresql():
        with op.get_context().autocommit_block():
            op.drop_index(
                NAME, table_name="challenges", postgresql_concurrently=True, if_exists=True
            )
            op.create_index(
                NAME,
                "challenges",
                ["id"],
                postgresql_where=HELD,
                postgresql_concurrently=True,
            )
    else:
        op.create_index(NAME, "challenges", ["id"], sqlite_where=HELD)


def downgrade() -> None:
    if _postgresql():
        with op.get_context().autocommit_block():
            op.drop_index(NAME, table_name="challenges", postgresql_concurrently=True)
    else:
        op.drop_index(NAME, table_name="challenges")
