"""HTTP benchmark (issue 4): FairUnlock's POST /v1/unlock-requests against a trivial Litestar
JSON endpoint served the same way (service.serving: uvicorn, same worker count, 127.0.0.1) in the
same run.

    python -m bench.bench_http [--duration S] [--connections 32,64] [--workers 1,2]
                               [--target trivial|unlock] [--database sqlite|postgres]

For each worker count: the trivial app (GET /hello, and POST /echo with the unlock request's
body) and, with ``--target unlock``, ``fairunlock serve`` on a fresh data directory (and, for
postgres, a fresh database ``fu_bench_<random>`` dropped afterwards) with a ``frontend`` key from
``fairunlock keys create``, both up at once. Each endpoint gets a warm-up, then ``--runs``
rounds in each of which every endpoint runs once, one after the other, so the VM's drift over
the minutes a configuration takes reaches both sides of a ratio alike. The table shows medians,
the ratios unlock / trivial of the medians, and each round's own ratio. Targets: >= 30 % of the
trivial endpoint's requests/s and p99 <= 25 ms at 32 connections. Results go to
``bench/results/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.http_load import (
    LoadResult,
    LoadSpec,
    Server,
    free_port,
    most_steal,
    run_load,
    serve,
    steal_text,
    uvicorn_command,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 0.30
TARGET_P99_MS = 25.0
TARGET_P99_CONNECTIONS = 32
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
UNLOCK_PATH = "/v1/unlock-requests"

# DESIGN.md's request object; __A__ and __D__ vary the account and device per request, so the
# service's history lookups see many accounts instead of one hot row.
REQUEST_TEMPLATE = json.dumps(
    {
        "account_id": "bench-acct-__A__",
        "lock_reason": "suspected_takeover",
        "locale": "zh-CN",
        "context": {
            "ip": "203.0.113.7",
            "device_id": "d-__D__",
            "user_agent": "Mozilla/5.0 (bench)",
            "geo": {"country": "CN", "lat": 31.23, "lon": 121.47},
            "network": "residential",
            "sim_swap_at": None,
            "credential_changed_at": None,
            "account_created_at": "2016-03-02T08:00:00Z",
            "last_login": {
                "at": "2026-11-20T09:12:00Z",
                "device_id": "d-11aa",
                "geo": {"country": "CN", "lat": 31.20, "lon": 121.44},
            },
            "known_device_ids": ["d-11aa", "d-5c02"],
        },
    },
    separators=(",", ":"),
)
VARY = {"__A__": 100_000, "__D__": 997}


@dataclass
class Endpoint:
    target: str  # trivial | unlock
    name: str
    method: str
    path: str
    body: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    def spec(
        self, base_url: str, args: argparse.Namespace, duration_s: float, connections: int
    ) -> LoadSpec:
        headers = dict(self.headers)
        if self.body:
            headers["Content-Type"] = "application/json"
        return LoadSpec(
            url=base_url + self.path,
            method=self.method,
            body_template=REQUEST_TEMPLATE if self.body else None,
            headers=headers,
            vary=VARY if self.body else {},
            connections=connections,
            duration_s=duration_s,
        )


@dataclass
class Run:
    endpoint: Endpoint
    workers: int
    connections: int
    rep: int
    result: LoadResult
    loadavg_before: float


def _clean_env(root: Path = ROOT) -> dict[str, str]:
    # Servers start from this environment, never from FAIRUNLOCK_* settings of the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")}
    # The checkout first; a caller's PYTHONPATH stays (e.g. to try uvloop/httptools builds).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def server_stack(env: dict[str, str]) -> dict[str, bool]:
    """Whether the servers' uvicorn can use uvloop and httptools (its "auto" picks them).

    Without uvloop, uvicorn with --workers >= 2 answers each request about 40 ms late (measured
    here: p50 46 ms at one connection, against 0.2 ms with uvloop): for several workers uvicorn
    bound the socket itself as ``socket.socket(family=AF_INET)`` (proto 0), and asyncio sets
    TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, so Nagle met delayed ACKs
    (service.serving's own sockets now name the protocol).
    """
    probe = (
        "import importlib.util as u; "
        "print(*(bool(u.find_spec(m)) for m in ('uvloop', 'httptools')))"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    uvloop, httptools = (part == "True" for part in completed.stdout.split())
    return {"uvloop": uvloop, "httptools": httptools}


def _measure_one(
    endpoint: Endpoint,
    base_url: str,
    args: argparse.Namespace,
    workers: int,
    connections: int,
    rep: int,
) -> Run:
    loadavg = os.getloadavg()[0]
    spec = endpoint.spec(base_url, args, args.duration, connections)
    result = run_load(spec, tool=args.tool)
    print(
        f"  {endpoint.target}:{endpoint.name} workers={workers} c={connections} run {rep}: "
        f"{result.rps:,.0f} req/s  p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
        f"errors {result.http_errors}+{result.socket_errors}  (load avg {loadavg:.2f}, "
        f"steal {steal_text(result.steal_share)})",
        flush=True,
    )
    return Run(endpoint, workers, connections, rep, result, loadavg)


def _measure_rounds(
    endpoints: list[tuple[Endpoint, str]], args: argparse.Namespace, workers: int
) -> list[Run]:
    """``--runs`` rounds; in each, every endpoint (with its server's base URL) once per
    connection count, one after the other: a drift of the shared VM over the minutes a
    configuration takes then reaches the trivial and the unlock runs of a round alike."""
    return [
        _measure_one(endpoint, base_url, args, workers, connections, rep)
        for rep in range(1, args.runs + 1)
        for connections in args.connections
        for endpoint, base_url in endpoints
    ]


def _warm_up(endpoint: Endpoint, base_url: str, args: argparse.Namespace) -> None:
    if args.warmup > 0:
        spec = endpoint.spec(base_url, args, args.warmup, args.connections[0])
        run_load(spec, tool=args.tool)


ECHO = Endpoint("trivial", "POST /echo", "POST", "/echo", body=True)


@contextmanager
def trivial_server(workers: int, log_path: Path) -> Iterator[Server]:
    """bench/trivial_app.py under uvicorn with ``workers`` workers, for the block."""
    port = free_port()
    with serve(
        uvicorn_command("bench.trivial_app:create_app", workers=workers, port=port),
        port=port,
        env=_clean_env(),
        cwd=ROOT,
        ready_path="/hello",
        log_path=log_path,
        listeners=workers,
    ) as server:
        yield server


TRIVIAL_ENDPOINTS = [Endpoint("trivial", "GET /hello", "GET", "/hello"), ECHO]


# -- FairUnlock --------------------------------------------------------------------------------


async def _pg_admin(sql: str, admin_url: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def _postgres_database(admin_url: str) -> Iterator[str]:
    name = f"fu_bench_{secrets.token_hex(4)}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"', admin_url))
    try:
        base = admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
        yield f"{base}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', admin_url))


def _fairunlock(env: dict[str, str], *argv: str, root: Path = ROOT) -> str:
    executable = shutil.which("fairunlock", path=str(Path(sys.executable).parent)) or "fairunlock"
    completed = subprocess.run(
        [executable, *argv],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"fairunlock {' '.join(argv)} failed ({completed.returncode}): "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return completed.stdout


@contextmanager
def _unlock_environment(
    args: argparse.Namespace, root: Path = ROOT
) -> Iterator[tuple[dict[str, str], str]]:
    """A fresh data directory (and database), migrated, with a frontend key: (env, key). The
    code is ``root``'s (another checkout's, for an A/B), whatever this process imported."""
    with tempfile.TemporaryDirectory(prefix="fu-bench-") as data_dir:
        env = _clean_env(root)
        env["FAIRUNLOCK_DATA_DIR"] = data_dir
        if args.log_level:
            env["FAIRUNLOCK_LOG_LEVEL"] = args.log_level
        with (
            _postgres_database(args.pg_admin_url) if args.database == "postgres" else _no_database()
        ) as database_url:
            if database_url is not None:
                env["FAIRUNLOCK_DATABASE_URL"] = database_url
            _fairunlock(env, "db", "upgrade", root=root)
            out = _fairunlock(
                env, "keys", "create", "--role", "frontend", "--name", "bench", root=root
            )
            key = out.strip().splitlines()[-1].strip()
            yield env, key


@contextmanager
def _no_database() -> Iterator[None]:
    yield None  # the embedded SQLite in the data directory


def _preflight(endpoint: Endpoint, base_url: str) -> str | None:
    """None when one request succeeds; otherwise why the unlock route cannot be measured."""
    body = LoadSpec(url="", body_template=REQUEST_TEMPLATE, vary=VARY).body(0)
    headers = {**endpoint.headers, "Content-Type": "application/json"}
    response = httpx.post(base_url + endpoint.path, content=body, headers=headers, timeout=10)
    if response.status_code == 404:
        return f"{endpoint.method} {endpoint.path} answered 404: the route does not exist yet"
    if not response.is_success:
        return (
            f"{endpoint.method} {endpoint.path} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return None


@contextmanager
def fairunlock_server(
    args: argparse.Namespace, workers: int, log_path: Path, root: Path = ROOT
) -> Iterator[tuple[Server, str]]:
    """`fairunlock serve` of ``root``'s code on a fresh, migrated data directory (and
    database): (server, key)."""
    with _unlock_environment(args, root) as (env, key):
        port = free_port()
        executable = str(Path(sys.executable).parent / "fairunlock")
        command = [executable, "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--workers", str(workers)]
        with serve(
            command,
            port=port,
            env=env,
            cwd=root,
            ready_path="/health/live",
            log_path=log_path,
            # A checkout from before service.serving (an A/B's base) shares one socket.
            listeners=workers if (root / "service" / "serving.py").exists() else 1,
        ) as server:
            yield server, key


def unlock_endpoint(key: str) -> Endpoint:
    """POST /v1/unlock-requests with the bench's body, as the ``frontend`` key ``key``."""
    headers = {"Authorization": f"Bearer {key}"}
    return Endpoint(
        "unlock", f"POST {UNLOCK_PATH}", "POST", UNLOCK_PATH, body=True, headers=headers
    )


def bench_workers(args: argparse.Namespace, workers: int, log_dir: Path) -> tuple[list[Run], str]:
    """The trivial app and, with ``--target unlock``, the service, both served with ``workers``
    workers at once, measured in alternating rounds: (runs, why the unlock route could not be
    measured, or "")."""
    with ExitStack() as stack:
        trivial = stack.enter_context(trivial_server(workers, log_dir / f"trivial-w{workers}.log"))
        endpoints = [(endpoint, trivial.base_url) for endpoint in TRIVIAL_ENDPOINTS]
        problem = ""
        if args.target == "unlock":
            log_path = log_dir / f"unlock-{args.database}-w{workers}.log"
            server, key = stack.enter_context(fairunlock_server(args, workers, log_path))
            unlock = unlock_endpoint(key)
            problem = _preflight(unlock, server.base_url) or ""
            if not problem:
                endpoints.append((unlock, server.base_url))
        for endpoint, base_url in endpoints:
            _warm_up(endpoint, base_url, args)
        return _measure_rounds(endpoints, args, workers), problem


# -- report ------------------------------------------------------------------------------------


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, int, int], list[Run]] = {}
    for run in runs:
        key = (run.endpoint.target, run.endpoint.name, run.workers, run.connections)
        groups.setdefault(key, []).append(run)
    rows = []
    for (target, name, workers, connections), group in groups.items():
        rps = [r.result.rps for r in group]
        rows.append(
            {
                "target": target,
                "endpoint": name,
                "workers": workers,
                "connections": connections,
                "runs": len(group),
                "rps_median": statistics.median(rps),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms_median": statistics.median(r.result.p50_ms for r in group),
                "p99_ms_median": statistics.median(r.result.p99_ms for r in group),
                "http_errors": sum(r.result.http_errors for r in group),
                "socket_errors": sum(r.result.socket_errors for r in group),
                "steal_share_max": most_steal(r.result.steal_share for r in group),
            }
        )
    return rows


def ratios(rows: list[dict[str, Any]], runs: list[Run]) -> list[dict[str, Any]]:
    """Per configuration, unlock's median over each reference's median, and the median of the
    rounds' own ratios (each round measures both, minutes apart at most)."""
    by_key = {(r["endpoint"], r["workers"], r["connections"]): r for r in rows}
    rps = {(r.endpoint.name, r.workers, r.connections, r.rep): r.result.rps for r in runs}
    out = []
    for row in rows:
        if row["target"] != "unlock":
            continue
        for reference in ("POST /echo", "GET /hello"):
            trivial = by_key.get((reference, row["workers"], row["connections"]))
            if trivial is None:
                continue
            ratio = row["rps_median"] / trivial["rps_median"]
            paired = [
                rps[(row["endpoint"], row["workers"], row["connections"], rep)]
                / rps[(reference, row["workers"], row["connections"], rep)]
                for rep in range(1, row["runs"] + 1)
                if (reference, row["workers"], row["connections"], rep) in rps
            ]
            out.append(
                {
                    "workers": row["workers"],
                    "connections": row["connections"],
                    "reference": reference,
                    "ratio": round(ratio, 4),
                    "ratio_rounds": [round(p, 4) for p in paired],
                    "ratio_rounds_median": round(statistics.median(paired), 4) if paired else None,
                    "meets_ratio": ratio >= TARGET_RATIO,
                    "p99_ms": row["p99_ms_median"],
                    # The p99 target is stated at 32 connections; other counts are reported only.
                    "meets_p99": (
                        row["p99_ms_median"] <= TARGET_P99_MS
                        if row["connections"] == TARGET_P99_CONNECTIONS
                        else None
                    ),
                }
            )
    return out


def print_table(rows: list[dict[str, Any]], ratio_rows: list[dict[str, Any]], args: Any) -> None:
    print()
    print(f"{args.duration:g} s per run, medians of {args.runs}")
    header = (
        f"{'endpoint':<28} {'workers':>7} {'conns':>5} {'req/s (median)':>15} {'min..max':>17} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'steal':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        span = f"{r['rps_min']:,.0f}..{r['rps_max']:,.0f}"
        print(
            f"{r['endpoint']:<28} {r['workers']:>7} {r['connections']:>5} "
            f"{r['rps_median']:>15,.1f} {span:>17} "
            f"{r['p50_ms_median']:>8.2f} {r['p99_ms_median']:>8.2f} "
            f"{r['http_errors'] + r['socket_errors']:>7} {steal_text(r['steal_share_max']):>6}"
        )
    print("steal: the most CPU time any run lost to other guests of the VM (/proc/stat)")
    for q in ratio_rows:
        p99_verdict = {True: "meets", False: "MISSES", None: "no target"}[q["meets_p99"]]
        print(
            f"unlock / {q['reference']} at {q['workers']} worker(s), {q['connections']} conns: "
            f"{q['ratio']:.1%} ({'meets' if q['meets_ratio'] else 'MISSES'} >= "
            f"{TARGET_RATIO:.0%}; rounds {', '.join(f'{r:.1%}' for r in q['ratio_rounds'])}); "
            f"p99 {q['p99_ms']:.2f} ms ({p99_verdict} <= "
            f"{TARGET_P99_MS:g} ms at {TARGET_P99_CONNECTIONS} conns)"
        )


def parse_workers(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(not 1 <= v <= 16 for v in values):
        raise argparse.ArgumentTypeError("workers: a comma-separated list of 1..16")
    return values


def parse_connections(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(not 1 <= v <= 1024 for v in values):
        raise argparse.ArgumentTypeError("connections: a comma-separated list of 1..1024")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of discarded warm-up")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per configuration")
    parser.add_argument(
        "--connections", type=parse_connections, default=[TARGET_P99_CONNECTIONS], help="e.g. 32,64"
    )
    parser.add_argument("--workers", type=parse_workers, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--target", choices=["trivial", "unlock"], default="trivial")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--tool", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--log-level", default=None, help="FAIRUNLOCK_LOG_LEVEL for the service (default: its own)"
    )
    parser.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be 1..120 s")
    if args.tool == "auto":
        args.tool = "wrk" if shutil.which("wrk") else "httpx"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = datetime.now(UTC)
    stack = server_stack(_clean_env())
    print(
        f"load generator: {args.tool}; workers {args.workers}; target {args.target}; "
        f"server uvloop={stack['uvloop']} httptools={stack['httptools']}",
        flush=True,
    )
    if not stack["uvloop"] and max(args.workers) > 1:
        print(
            "  WARNING: no uvloop: multi-worker latencies include ~40 ms Nagle stalls", flush=True
        )
    if args.tool == "httpx":
        print("  (wrk not found: the httpx client's own CPU cost caps the figures)", flush=True)
    runs: list[Run] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fu-bench-logs-") as logs:
        log_dir = Path(logs)
        for workers in args.workers:
            worker_runs, problem = bench_workers(args, workers, log_dir)
            runs += worker_runs
            if problem:
                notes.append(f"workers={workers}: {problem}")
                print(f"  unlock not measured: {problem}", flush=True)
    rows = summarize(runs)
    ratio_rows = ratios(rows, runs)
    print_table(rows, ratio_rows, args)
    for note in notes:
        print(f"NOTE: {note}")
    output = args.output or RESULTS / f"http-{args.target}-{started:%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "settings": {
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "runs": args.runs,
                    "connections": args.connections,
                    "workers": args.workers,
                    "target": args.target,
                    "database": args.database if args.target == "unlock" else None,
                    "tool": args.tool,
                    "server_stack": stack,
                },
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "summary": rows,
                "ratios": ratio_rows,
                "notes": notes,
                "runs": [
                    {
                        "target": r.endpoint.target,
                        "endpoint": r.endpoint.name,
                        "workers": r.workers,
                        "connections": r.connections,
                        "rep": r.rep,
                        "loadavg_before": r.loadavg_before,
                        **r.result.as_dict(),
                    }
                    for r in runs
                ],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"results: {output}")
    return 1 if notes else 0


if __name__ == "__main__":
    raise SystemExit(main())
