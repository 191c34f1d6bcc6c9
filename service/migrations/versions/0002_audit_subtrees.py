"""audit subtree roots: proofs and delta exports read O(255 per level) hashes, not every leaf

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from audit.integrator import ADVISORY_LOCK_KEY
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
    if context.is_offline_mode():
        return  # --sql renders DDL only; the roots are derived data, computed online
    _backfill(op.get_bind())


def _backfill(bind: sa.Connection) -> None:
    """The subtrees of the log integrated so far, from its leaf hashes in order, as the
    integrator reports them (audit.merkle's RFC 6962 hashing is fixed, so importing it from a
    migration stays correct).

    Holding the integration lock, so no integrator moves the log on while the backfill reads it
    (SQLite: the migration's BEGIN IMMEDIATE; PostgreSQL: the integrators' advisory lock, held to
    the end of the migration's transaction). Stop the old version's workers before upgrading: an
    integrator of the old code would integrate after this without storing roots (proofs stay
    correct, they read the leaves where roots are missing, but slower)."""
    if bind.dialect.name == "postgresql":
        bind.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
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
