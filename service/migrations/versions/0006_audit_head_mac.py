"""audit head MAC: a worker accepts the head another worker signed with one HMAC

The integrator checks that the head it extends is a tree its key signed (AUDIT.md §11). With the
head's MAC (CheckpointSigner.head_mac) stored beside it, a head another worker moved passes by
one HMAC instead of a read and an Ed25519 verification of its checkpoint note inside the write
lock. Nullable: the heads written before this column carry none and are checked by their note,
as before, until the next integration writes one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("mac", sa.LargeBinary(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("mac")
