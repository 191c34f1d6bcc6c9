"""Real OS processes: concurrent writers with a running integrator, and a SIGKILLed integrator.

Writers are separate Python processes (multiprocessing, spawn) appending through append_event_now;
the integrator is the real `fairunlock audit integrate` command in a subprocess. Afterwards the
indices must be contiguous, every acknowledged append present exactly once, and an export of the
whole log must pass the offline verifier.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.entry import AuditEvent, EntryKind, decode_entry, event_to_payload
from audit.export import export_bundle
from audit.store import AuditStore, GroupAppender, append_event_now
from audit.verify import verify_bundle
from service.db import create_engine
from service.keystore import KeyStore
from service.schema import upgrade
from service.settings import Settings
from tests.audit.test_store import db_url

__all__ = ["db_url"]

ORIGIN = "procs.fairunlock/audit"
WRITERS = 3
PER_WRITER = 1000


def _writer(url: str, writer: int, count: int, ack_file: str) -> None:
    """Child process: append `count` events, recording each acknowledgement.

    The first half one transaction each with append_event_now, in order; the second half through
    a GroupAppender from 16 concurrent tasks (shared commits), as a busy worker would.
    """

    def event(n: int) -> AuditEvent:
        return AuditEvent(
            EntryKind.VERIFICATION_ATTEMPT,
            f"writer-{writer}",
            None,
            {"writer": writer, "n": n},
            datetime.now(UTC),
        )

    async def main() -> None:
        engine = create_engine(url)
        acked: list[int] = []
        try:
            half = count // 2
            for n in range(half):
                await append_event_now(engine, event(n))
                acked.append(n)  # only after the commit returned
            appender = GroupAppender(engine)

            async def task(numbers: range) -> None:
                for n in numbers:
                    await appender.append(event(n))
                    acked.append(n)

            await asyncio.gather(*(task(range(half + t, count, 16)) for t in range(16)))
        finally:
            Path(ack_file).write_text(json.dumps(acked))
            await engine.dispose()

    asyncio.run(main())


def _env(url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    env.update(
        FAIRUNLOCK_DATABASE_URL=url,
        FAIRUNLOCK_DATA_DIR=str(data_dir),
        FAIRUNLOCK_AUDIT_ORIGIN=ORIGIN,
        **extra,
    )
    return env


def _integrator(url: str, data_dir: Path, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "audit", "integrate", *args],
        env=_env(url, data_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _peek(url: str) -> tuple[int, int]:
    """(log size, backlog) without queueing behind the integrator's write lock.

    The service's SQLite engine begins every transaction with BEGIN IMMEDIATE, which a busy
    integrator would starve; a plain WAL reader sees the last commit without waiting.
    """
    if url.startswith("sqlite"):
        conn = sqlite3.connect(f"file:{url.split(':///', 1)[1]}?mode=ro", uri=True)
        try:
            head = conn.execute("SELECT size FROM audit_head").fetchone()
            size = 0 if head is None else head[0]
            (backlog,) = conn.execute("SELECT count(*) FROM audit_inbox").fetchone()
            return int(size), int(backlog)
        finally:
            conn.close()
    return asyncio.run(_state(url))


async def _state(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            store = AuditStore(conn)
            return await store.size(), await store.backlog()
    finally:
        await engine.dispose()


def _export_and_verify(url: str, data_dir: Path, out: Path) -> list[dict[str, object]]:
    """Export the whole log with the service's keys, verify it offline, return the entries."""
    keystore = KeyStore.load(Settings(data_dir=data_dir, audit_origin=ORIGIN))

    async def main() -> int:
        engine: AsyncEngine = create_engine(url)
        try:
            async with engine.connect() as conn:
                size = await AuditStore(conn).check_contiguity()
            await export_bundle(
                engine,
                out,
                signer=keystore.signer(ORIGIN),
                origin=ORIGIN,
                actor="test",
                purpose="process test",
            )
            return size
        finally:
            await engine.dispose()

    size = asyncio.run(main())
    result = verify_bundle(out, keystore.signing_key.public_key())
    assert (result.start, result.end) == (0, size)
    lines = (out / "entries.jsonl").read_bytes().splitlines()
    assert len(lines) == size
    return [decode_entry(line) for line in lines]


def test_concurrent_writer_processes_with_a_running_integrator(db_url: str, tmp_path: Path) -> None:
    upgrade(db_url)
    integrator = _integrator(
        db_url, tmp_path, FAIRUNLOCK_AUDIT_BATCH_SIZE="500", FAIRUNLOCK_AUDIT_INTERVAL_MS="20"
    )
    try:
        spawn = multiprocessing.get_context("spawn")
        acks = [tmp_path / f"acks-{w}.json" for w in range(WRITERS)]
        writers = [
            spawn.Process(target=_writer, args=(db_url, w, PER_WRITER, str(acks[w])))
            for w in range(WRITERS)
        ]
        for process in writers:
            process.start()
        for process in writers:
            process.join(timeout=120)
            assert process.exitcode == 0
        deadline = time.monotonic() + 60
        while (state := _peek(db_url))[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state == (WRITERS * PER_WRITER, 0), "the integrator did not drain the inbox"
        assert integrator.poll() is None, "the integrator died"
    finally:
        integrator.send_signal(signal.SIGTERM)
        _, stderr = integrator.communicate(timeout=30)
    assert integrator.returncode == 0, stderr.decode()

    entries = _export_and_verify(db_url, tmp_path, tmp_path / "bundle")
    assert [e["index"] for e in entries] == list(range(len(entries)))
    written = Counter(
        (e["data"]["writer"], e["data"]["n"])  # type: ignore[index]
        for e in entries
        if e["kind"] == "verification_attempt"
    )
    acknowledged = {(w, n) for w in range(WRITERS) for n in json.loads(acks[w].read_text())}
    assert len(acknowledged) == WRITERS * PER_WRITER
    assert set(written) == acknowledged
    assert max(written.values()) == 1, "an entry was integrated twice"
    # A writer's sequential appends keep their order (each committed before the next began).
    for w in range(WRITERS):
        mine = [e["data"]["n"] for e in entries if e["actor"] == f"writer-{w}"]  # type: ignore[index]
        sequential = [n for n in mine if n < PER_WRITER // 2]
        assert sequential == list(range(PER_WRITER // 2))


def test_sigkilled_integrator_loses_and_duplicates_nothing(db_url: str, tmp_path: Path) -> None:
    total, batch = 24_000, 6_000

    async def seed() -> None:
        now = datetime.now(UTC)
        engine = create_engine(db_url)
        try:
            async with engine.begin() as conn:
                await AuditStore(conn).enqueue_many(
                    [
                        event_to_payload(
                            AuditEvent(EntryKind.DECISION, "seed", None, {"n": n}, now)
                        )
                        for n in range(total)
                    ]
                )
        finally:
            await engine.dispose()

    upgrade(db_url)
    asyncio.run(seed())
    integrator = _integrator(db_url, tmp_path, "--once", "--batch-size", str(batch))
    # Kill once at least one batch is committed and more remain: the integrator works batch
    # after batch with no pause, so it is inside an open batch transaction at that moment.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and integrator.poll() is None:
        size, backlog = _peek(db_url)
        if size > 0:
            break
        time.sleep(0.01)
    integrator.send_signal(signal.SIGKILL)
    integrator.communicate(timeout=30)
    assert integrator.returncode == -signal.SIGKILL
    size, backlog = _peek(db_url)
    assert 0 < size < total, f"kill did not land mid-run (size {size})"
    assert size % batch == 0, "a partial batch became visible"
    assert size + backlog == total

    restarted = _integrator(db_url, tmp_path, "--once", "--batch-size", str(batch))
    stdout, stderr = restarted.communicate(timeout=120)
    assert restarted.returncode == 0, stderr.decode()
    assert f"log size {total}" in stdout.decode()

    entries = _export_and_verify(db_url, tmp_path, tmp_path / "bundle")
    seeded = [e["data"]["n"] for e in entries if e["actor"] == "seed"]  # type: ignore[index]
    assert seeded == list(range(total)), "lost, duplicated or reordered entries"
