"""How flows write audit entries: in their own transaction, and learning the index afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from audit.entry import AuditEvent, EntryKind, JSONValue, new_event_payload
from audit.integrator import integrate_in, integrate_once, wait_integrated
from audit.store import AuditStore, InboxRow, append_event
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


class DirectEntries:
    """The entries a group-commit batch writes, written by the batch itself at its end: on
    SQLite integrated into the log in the batch's transaction (integrate_in's direct entries),
    with no inbox row written, read back and deleted for each and no integrator transaction
    after the batch — the batch holds SQLite's one write lock anyway. Measured on TOTP proofs
    (two entries each when they approve; bench/bench_verify_cpu.py): ~620 -> ~515 µs of CPU per
    proof. On PostgreSQL queued in the inbox in one statement for the background integrator:
    integrating there would make a worker's concurrent batches wait for each other on the
    integration lock (measured over HTTP, one worker: rejected proofs 523 -> 447 req/s).

    A unit of work in the batch that rolls back to its savepoint drops what it added
    (``mark`` / ``drop_since``); everything else commits with the batch."""

    __slots__ = ("_payloads",)

    def __init__(self) -> None:
        self._payloads: list[bytes] = []

    def add(
        self,
        kind: EntryKind,
        actor: str,
        subject: str | None,
        data: Mapping[str, JSONValue],
        now: datetime,
    ) -> None:
        # Validated here, as record's are: a bad event fails its own unit of work. Encoded at
        # once (new_event_payload walks the data once, not twice: nothing can change it between).
        self._payloads.append(new_event_payload(kind, actor, subject, data, now))

    def add_encoded(self, payloads: Sequence[bytes]) -> None:
        """Entries ``add`` would have made, encoded already (new_event_payload): by a batch's
        work ahead of its lock."""
        self._payloads += payloads

    def mark(self) -> int:
        return len(self._payloads)

    def drop_since(self, mark: int) -> None:
        del self._payloads[mark:]

    async def write_in(self, conn: AsyncConnection, ctx: ServiceContext) -> None:
        """Write the entries in ``conn``'s transaction; call it last (integrate_in's rule)."""
        if not self._payloads:
            return
        store = AuditStore(conn)
        if store.is_postgres:
            await store.enqueue_batch(self._payloads)
            return
        ids = await store.reserve_inbox_ids(len(self._payloads))
        await integrate_direct_in(
            conn, ctx, [InboxRow(i, p) for i, p in zip(ids, self._payloads, strict=True)]
        )


async def integrate_direct_in(
    conn: AsyncConnection, ctx: ServiceContext, entries: Sequence[InboxRow]
) -> dict[int, int]:
    """Integrate ``entries`` (payloads under ids from AuditStore.reserve_inbox_ids) in ``conn``'s
    transaction with the service's signer and origin, after any queued ones: inbox id -> log
    index. Call it last (integrate_in's rule)."""
    integrated = await integrate_in(
        conn,
        ctx.signer,
        ctx.audit_origin,
        ctx.settings.audit_batch_size,
        wait=True,
        direct=entries,
    )
    assert integrated is not None  # with wait=True it integrates, the direct entries included
    return integrated


async def record_in(
    entries: DirectEntries | None,
    conn: AsyncConnection,
    ctx: ServiceContext,
    kind: EntryKind,
    actor: str,
    subject: str | None,
    data: Mapping[str, JSONValue],
    now: datetime,
) -> None:
    """``record``, or with ``entries`` (a batch's) added to them for the batch to integrate."""
    if entries is None:
        await record(conn, ctx, kind, actor, subject, data, now)
    else:
        entries.add(kind, actor, subject, data, now)


async def index_of(ctx: ServiceContext, inbox_id: int) -> int:
    """The log index of a committed entry; integrates the pending batch now rather than waiting."""
    return await wait_integrated(
        ctx.engine,
        inbox_id,
        integrate=lambda: integrate_once(
            ctx.engine, ctx.signer, ctx.audit_origin, ctx.settings.audit_batch_size
        ),
    )
