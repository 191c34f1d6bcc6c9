"""Benchmark (issue 5): the TOTP verify route end to end, over HTTP on loopback.

A code is good once, so every measured verify needs its own account, unlock request and
challenge: those are set up first (not timed). Then ``--accounts`` verifies with the right code
(the accepting path: read, check, conditional updates, factor accounting, approval, outbox) run
with ``--connections`` concurrent clients, and the same number of wrong codes on fresh challenges
(the rejecting path, which commits its attempt record). The same client drives the trivial
``POST /echo`` of bench/trivial_app.py served the same way in the same run, so the ratio does not
depend on the client's own ceiling.

    python -m bench.bench_totp_verify [--accounts N] [--connections C] [--database sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.bench_http import ROOT, fairunlock_server
from bench.http_load import free_port, serve
from service.methods.totp import TotpParameters, code_at

PARAMS = TotpParameters()
REQUEST: dict[str, Any] = {
    "lock_reason": "suspected_takeover",
    "locale": "en",
    "context": {"ip": "203.0.113.7", "device_id": "d-1", "network": "residential"},
}


@dataclass
class Prepared:
    request_id: str
    challenge_id: str
    secret: str


async def prepare(client: httpx.AsyncClient, i: int) -> Prepared:
    account = f"bench-{i}"
    secret = (await client.post(f"/v1/accounts/{account}/totp")).json()["secret"]
    earlier = code_at(secret, datetime.now(UTC) - timedelta(seconds=30), PARAMS)
    await client.post(f"/v1/accounts/{account}/totp/confirm", json={"code": earlier})
    # One source address per account: the per-source throttle would otherwise stop the run.
    context = {**REQUEST["context"], "ip": f"198.18.{i // 250}.{i % 250 + 1}"}
    body = {**REQUEST, "account_id": account, "context": context}
    decision = (await client.post("/v1/unlock-requests", json=body)).json()
    challenge = (
        await client.post(
            f"/v1/unlock-requests/{decision['id']}/challenges", json={"method": "totp"}
        )
    ).json()
    return Prepared(decision["id"], challenge["id"], secret)


def right_code(p: Prepared) -> str:
    return code_at(p.secret, datetime.now(UTC), PARAMS)


async def verify(client: httpx.AsyncClient, p: Prepared, code: str) -> httpx.Response:
    """One proof for a prepared challenge."""
    return await client.post(
        f"/v1/unlock-requests/{p.request_id}/challenges/{p.challenge_id}/verify",
        json={"code": code},
    )


async def bounded(n: int, concurrency: int, job: Any) -> tuple[float, list[float], list[int]]:
    latencies: list[float] = []
    statuses: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            start = time.perf_counter()
            status = await job(i)
            latencies.append(time.perf_counter() - start)
            statuses.append(status)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, sorted(latencies), statuses


def _row(name: str, n: int, elapsed: float, latencies: list[float], statuses: list[int]) -> str:
    p50 = statistics.median(latencies) * 1e3
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3
    codes = {s: statuses.count(s) for s in sorted(set(statuses))}
    return f"{name:<34} {n / elapsed:>9.1f} {p50:>9.2f} {p99:>9.2f}  {codes}"


async def _measure_service(base: str, key: str, args: argparse.Namespace) -> list[str]:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, timeout=30, limits=limits
    ) as client:
        right = [await prepare(client, i) for i in range(args.accounts)]
        wrong = [await prepare(client, args.accounts + i) for i in range(args.accounts)]

        async def accept(i: int) -> int:
            return (await verify(client, right[i], right_code(right[i]))).status_code

        async def reject(i: int) -> int:
            p = wrong[i]
            r = await verify(client, p, f"{(int(right_code(p)) + 1) % 1_000_000:06d}")
            if r.status_code == 429 and not seen_429:
                seen_429.append(r.text)
            return r.status_code

        seen_429: list[str] = []
        rows = []
        for name, job in (
            ("POST …/verify (right code)", accept),
            ("POST …/verify (wrong code)", reject),
        ):
            elapsed, latencies, statuses = await bounded(args.accounts, args.connections, job)
            rows.append(_row(name, args.accounts, elapsed, latencies, statuses))
    rows.extend(seen_429[:1])
    return rows


async def _measure_trivial(base: str, args: argparse.Namespace) -> str:
    limits = httpx.Limits(max_connections=args.connections)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def echo(i: int) -> int:
            return (await client.post("/echo", json={"code": "123456", "i": i})).status_code

        await bounded(200, args.connections, echo)  # warm-up
        elapsed, latencies, statuses = await bounded(args.accounts * 4, args.connections, echo)
        return _row(
            "POST /echo (trivial, same client)", args.accounts * 4, elapsed, latencies, statuses
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    log_dir = ROOT / "bench" / "results"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'what':<34} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}  statuses")
    port = free_port()
    trivial = [sys.executable, "-m", "uvicorn", "--factory", "bench.trivial_app:create_app"]
    trivial += [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with serve(
        trivial,
        port=port,
        env=None,
        cwd=ROOT,
        ready_path="/hello",
        log_path=log_dir / "trivial-totp.log",
    ) as server:
        print(asyncio.run(_measure_trivial(server.base_url, args)), flush=True)
    with fairunlock_server(args, 1, log_dir / f"totp-{args.database}.log") as (server, key):
        for row in asyncio.run(_measure_service(server.base_url, key, args)):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
