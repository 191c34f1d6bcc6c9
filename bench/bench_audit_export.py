"""Export throughput and peak memory for a 1,000,000-entry log stored in SQLite.

Seeds the inbox with batched inserts and integrates it with the real integrator, then, each in a
fresh process so peak RSS belongs to that step alone:

* baseline: stdlib sqlite3 streams ``SELECT leaf … ORDER BY seq`` to a file (no hashing, no
  signing): the I/O ceiling of this machine, measured in the same run;
* export: ``audit.export.export_bundle`` (range reads → write_bundle, checked against the stored
  checkpoint, signed), the code `fairunlock audit export` runs;
* verify: ``audit.verify.verify_bundle`` on the bundle just written, for reference.

    .venv/bin/python -m bench.bench_audit_export [--entries 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ORIGIN = "bench.fairunlock/audit"
SEED_BATCH = 50_000


def _payload(n: int, when: str) -> bytes:
    # Canonical JSON (sorted keys, no spaces, ASCII strings and ints only: equal to RFC 8785),
    # built with json.dumps because rfc8785 would make seeding 1 M entries take a minute.
    return json.dumps(
        {
            "actor": "frontend-key",
            "data": {
                "decision_id": f"d-{n}",
                "risk": {"level": "medium", "reasons": ["NEW_DEVICE", "UNUSUAL_LOCATION"]},
                "status": "pending_verification",
            },
            "kind": "decision",
            "subject": f"{n:064x}",
            "time": when,
            "v": 1,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def _peak_rss_mb() -> float:
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child
    # would report its parent's peak.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def seed(db: Path, key_pem: bytes, entries: int) -> float:
    from audit.checkpoint import CheckpointSigner, load_private_key_pem
    from audit.integrator import integrate_all
    from audit.store import AuditStore, create_schema
    from service.db import create_engine

    signer = CheckpointSigner(ORIGIN, load_private_key_pem(key_pem))
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    async def main() -> float:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            await create_schema(engine)
            integrate_seconds = 0.0
            for low in range(0, entries, SEED_BATCH):
                async with engine.begin() as conn:
                    await AuditStore(conn).enqueue_many(
                        [_payload(n, when) for n in range(low, min(entries, low + SEED_BATCH))]
                    )
                started = time.perf_counter()
                await integrate_all(engine, signer, ORIGIN, batch_size=SEED_BATCH)
                integrate_seconds += time.perf_counter() - started
            return integrate_seconds
        finally:
            await engine.dispose()

    return asyncio.run(main())


def child_baseline(db: str, out: str) -> dict[str, float]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    started = time.perf_counter()
    count = 0
    with open(out, "wb") as handle:
        cursor = conn.execute("SELECT leaf FROM audit_log ORDER BY seq")
        while rows := cursor.fetchmany(20_000):
            handle.write(b"".join(leaf + b"\n" for (leaf,) in rows))
            count += len(rows)
    return {"entries": count, "seconds": time.perf_counter() - started}


def child_export(db: str, out: str, key_pem: bytes) -> dict[str, float]:
    from audit.checkpoint import CheckpointSigner, load_private_key_pem
    from audit.export import export_bundle
    from service.db import create_engine

    signer = CheckpointSigner(ORIGIN, load_private_key_pem(key_pem))

    async def main() -> dict[str, float]:
        engine = create_engine(f"sqlite+aiosqlite:///{db}")
        try:
            started = time.perf_counter()
            result = await export_bundle(
                engine, Path(out), signer=signer, origin=ORIGIN, actor="bench", purpose="bench"
            )
            return {
                "entries": result.manifest.end - result.manifest.start,
                "seconds": time.perf_counter() - started,
            }
        finally:
            await engine.dispose()

    return asyncio.run(main())


def child_verify(out: str, key_pem: bytes) -> dict[str, float]:
    from audit.checkpoint import load_private_key_pem
    from audit.verify import verify_bundle

    public_key = load_private_key_pem(key_pem).public_key()
    started = time.perf_counter()
    result = verify_bundle(Path(out), public_key)
    return {"entries": result.end - result.start, "seconds": time.perf_counter() - started}


def _in_child(*args: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_audit_export", "--child", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, *rest = args.child
        if step == "baseline":
            result = child_baseline(rest[0], rest[1])
        elif step == "export":
            result = child_export(rest[0], rest[1], Path(rest[2]).read_bytes())
        else:
            result = child_verify(rest[0], Path(rest[1]).read_bytes())
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return

    from cryptography.hazmat.primitives import serialization

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "key.pem"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        db = tmp / "audit.sqlite3"
        started = time.perf_counter()
        integrate_seconds = seed(db, key.read_bytes(), args.entries)
        seeded = time.perf_counter() - started
        print(
            f"# audit export: {args.entries:,} entries in SQLite "
            f"({db.stat().st_size / 1e6:,.0f} MB file); seeded in {seeded:.1f} s, of which the "
            f"integrator took {integrate_seconds:.1f} s "
            f"({args.entries / integrate_seconds:,.0f} entries/s)\n"
        )
        print("| step | entries | seconds | entries/s | peak RSS |")
        print("|---|---:|---:|---:|---:|")
        for label, step in (
            (
                "baseline: sqlite3 SELECT → file (no hashing, no signing)",
                ("baseline", str(db), str(tmp / "raw.jsonl")),
            ),
            (
                "export_bundle (what `fairunlock audit export` runs)",
                ("export", str(db), str(tmp / "bundle"), str(key)),
            ),
            (
                "verify_bundle of that export (offline verifier)",
                ("verify", str(tmp / "bundle"), str(key)),
            ),
        ):
            result = _in_child(*step)
            print(
                f"| {label} | {int(result['entries']):,} | {result['seconds']:.2f} | "
                f"{result['entries'] / result['seconds']:,.0f} | {result['peak_rss_mb']:.0f} MB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
