"""audit subtree roots: proofs and delta exports read O(255 per level) hashes, not every leaf

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from audit.merkle import CompactRange, Subtree

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHUNK = 65_536


def upgrade() -> None:
    op.create_table(
        "audit_subtrees",
        sa.Column("height", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("height", "idx", name=op.f("pk_audit_subtrees")),
    )
    _backfill(op.get_bind())


def _backfill(bind: sa.Connection) -> None:
    """The subtrees of the log integrated so far, from its leaf hashes in order, as the
    integrator reports them (audit.merkle's RFC 6962 hashing is fixed, so importing it from a
    migration stays correct)."""
    log = sa.table("audit_log", sa.column("seq", sa.BigInteger), sa.column("leaf_hash"))
    subtrees = sa.table("audit_subtrees", sa.column("height"), sa.column("idx"), sa.column("root"))
    compact = CompactRange.empty()
    while True:
        rows = bind.execute(
            sa.select(log.c.seq, log.c.leaf_hash)
            .where(log.c.seq >= compact.size)
            .order_by(log.c.seq)
            .limit(_CHUNK)
        ).all()
        if not rows:
            return
        completed: list[Subtree] = []
        for seq, digest in rows:
            if seq != compact.size:
                raise RuntimeError(f"audit_log has no entry {compact.size}: not contiguous")
            compact.append(bytes(digest), completed)
        if completed:
            bind.execute(
                sa.insert(subtrees),
                [{"height": height, "idx": idx, "root": root} for height, idx, root in completed],
            )


def downgrade() -> None:
    op.drop_table("audit_subtrees")
