"""How flows write audit entries: in their own transaction, and learning the index afterwards."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from audit.entry import AuditEvent, EntryKind, JSONValue
from audit.integrator import integrate_once, wait_integrated
from audit.store import append_event
from service.context import ServiceContext


async def record(
    conn: AsyncConnection,
    ctx: ServiceContext,
    kind: EntryKind,
    actor: str,
    subject: str | None,
    data: Mapping[str, JSONValue],
    now: datetime,
) -> int:
    """Queue an entry in the caller's transaction: it commits, or not, with the business write."""
    return await append_event(
        conn, AuditEvent(kind=kind, actor=actor, subject=subject, data=data, time=now)
    )


async def index_of(ctx: ServiceContext, inbox_id: int) -> int:
    """The log index of a committed entry; integrates the pending batch now rather than waiting."""
    return await wait_integrated(
        ctx.engine,
        inbox_id,
        integrate=lambda: integrate_once(
            ctx.engine, ctx.signer, ctx.audit_origin, ctx.settings.audit_batch_size
        ),
    )
