"""Peer benchmark (issue 7): privacyIDEA POST /validate/check against FairUnlock TOTP verify.

    .venv/bin/python -m bench.bench_peer [--workers 1,2] [--connections 32,64] [--runs 3]
                                         [--duration S] [--users N] [--skip-default-hashing]

One command sets up, measures and tears down the peer:

- privacyIDEA (``privacyidea>=3.14,<4`` from PyPI) and gunicorn live in their own virtualenv,
  ``bench/privacyidea/venv``, created on the first run and reused afterwards; they are never a
  dependency of the project.
- Per hashing configuration a fresh temp dir holds pi.cfg (SQLite database), the encryption and
  audit-signing keys made by privacyIDEA's own ``pi-manage setup create_enckey``,
  ``create_audit_keys`` and ``create_tables``, a passwd-format file with ``--users`` users read by
  a ``passwdresolver`` in the realm ``bench``, and one TOTP token per user (SHA1, 6 digits, 30 s,
  a known random hex seed, token PIN ``PIN``), made by bench/privacyidea/pi_setup_users.py with
  privacyIDEA's library in its venv.
- It is served by ``gunicorn -w N`` (as shipped: sync workers) on 127.0.0.1 on a free port, N
  being each of ``--workers``, the same worker counts FairUnlock's ``fairunlock serve`` gets.

Two configurations, reported separately:

- "default hashing": as shipped. The token PIN is hashed with argon2id at privacyIDEA's defaults
  (``DEFAULT_HASH_ALGO_PARAMS = {'argon2__rounds': 9}`` in privacyidea/lib/crypto.py, passlib's
  64 MiB memory cost and parallelism 4), and /validate/check verifies that hash per request.
- "cheap hashing": pi.cfg sets ``PI_HASH_ALGO_PARAMS = {"argon2__rounds": 1,
  "argon2__memory_cost": 8, "argon2__parallelism": 1}``, the values privacyIDEA's own
  TestingConfig uses (privacyidea/config.py) to make the same PIN hash cheap. (An empty PIN would
  not help: privacyIDEA hashes and verifies "" with argon2 too.) Nothing else changes.

Each request is ``POST /validate/check`` (form: user, realm, pass = PIN + the user's current TOTP
value from pyotp). privacyIDEA rejects a code whose time step is not newer than the last one that
token accepted, so the client hands out each user at most once per 30 s step (users carry over
between runs of one server); when every user has been used in the current step a connection
waits for the next step, and the time spent so is reported (``pool_wait_s``). Every answer is
counted as accepted (``result.value`` true) or rejected (with privacyIDEA's message); a run where
fewer than 90 % are accepted is flagged as not a valid throughput figure.

FairUnlock's own TOTP verify is measured in the same command, per worker count, on
``fairunlock serve`` started by bench/bench_http.py's ``fairunlock_server``, with
bench/bench_totp_verify.py's VerifyBench: accounts, enrolments, unlock requests and challenges
prepared first (not timed), then wrk sends each challenge one right code for ``--duration`` at C
connections. (The peer's own load is an httpx client: at its rates the client is not the limit.)
The ratio is FairUnlock TOTP verify req/s / privacyIDEA cheap /validate/check req/s (target
>= 25x).

Load goes to 127.0.0.1 only and is bounded in time and count.
Every server runs in its own process group and is stopped on exit, error or Ctrl-C. Results:
a table on stdout and ``bench/results/peer-<timestamp>.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyotp

from bench.bench_http import ROOT, fairunlock_server
from bench.bench_totp_verify import VerifyBench
from bench.http_load import (
    LOOPBACK,
    Server,
    cpu_ticks,
    free_port,
    most_steal,
    serve,
    steal_between,
    steal_text,
)

PI_DIR = ROOT / "bench" / "privacyidea"
PI_VENV = PI_DIR / "venv"
PI_REQUIREMENT = "privacyidea>=3.14,<4"
RESULTS = ROOT / "bench" / "results"
REALM = "bench"
PIN = "8264"
STEP_S = 30
TARGET_RATIO = 25.0
VALID_ACCEPT_SHARE = 0.90
MAX_REQUESTS_PER_RUN = 200_000
CHEAP_HASH_PARAMS = {"argon2__rounds": 1, "argon2__memory_cost": 8, "argon2__parallelism": 1}
CONFIGS = {"default hashing": None, "cheap hashing": CHEAP_HASH_PARAMS}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def _run(command: list[str], *, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    completed = subprocess.run(
        command,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({completed.returncode}):\n"
            f"{(completed.stdout + completed.stderr).strip()[-3000:]}"
        )
    return completed.stdout


# -- privacyIDEA setup -------------------------------------------------------------------------


def ensure_venv() -> str:
    """Create bench/privacyidea/venv with privacyIDEA and gunicorn once; return the version."""
    python = PI_VENV / "bin" / "python"
    if not (PI_VENV / "bin" / "gunicorn").exists() or not (PI_VENV / "bin" / "pi-manage").exists():
        log(f"creating {PI_VENV} and installing {PI_REQUIREMENT} + gunicorn from PyPI")
        _run([sys.executable, "-m", "venv", str(PI_VENV)], timeout=300)
        _run([str(python), "-m", "pip", "install", "-q", PI_REQUIREMENT, "gunicorn"], timeout=1200)
    probe = "import importlib.metadata as m; print(m.version('privacyidea'), m.version('gunicorn'))"
    pi_version, gunicorn_version = _run([str(python), "-c", probe]).split()
    return f"privacyIDEA {pi_version}, gunicorn {gunicorn_version}"


@dataclass
class PiUser:
    name: str
    seed_hex: str
    totp: pyotp.TOTP = field(repr=False)
    last_step: int = -1


def make_users(count: int) -> list[PiUser]:
    users = []
    for i in range(count):
        seed = secrets.token_bytes(20)
        totp = pyotp.TOTP(base64.b32encode(seed).decode(), digits=6, interval=STEP_S)
        users.append(PiUser(f"bench{i:05d}", seed.hex(), totp))
    return users


def _pi_cfg(data: Path, hash_params: dict[str, int] | None) -> str:
    lines = [
        f"SQLALCHEMY_DATABASE_URI = 'sqlite:///{data / 'pi.sqlite'}'",
        f"SECRET_KEY = '{secrets.token_hex(24)}'",
        f"PI_PEPPER = '{secrets.token_hex(24)}'",
        f"PI_ENCFILE = '{data / 'enckey'}'",
        f"PI_AUDIT_KEY_PRIVATE = '{data / 'audit-private.pem'}'",
        f"PI_AUDIT_KEY_PUBLIC = '{data / 'audit-public.pem'}'",
        f"PI_LOGFILE = '{data / 'privacyidea.log'}'",
        "PI_LOGLEVEL = 30  # WARNING, both configurations (the shipped default logs INFO)",
    ]
    if hash_params is not None:
        lines.append(f"PI_HASH_ALGO_PARAMS = {hash_params!r}  # the 'cheap hashing' change")
    return "\n".join(lines) + "\n"


@contextmanager
def privacyidea_instance(
    hash_params: dict[str, int] | None, users: list[PiUser]
) -> Iterator[tuple[Path, dict[str, str]]]:
    """A fresh, populated privacyIDEA data dir: (pi.cfg path, environment for its commands)."""
    with tempfile.TemporaryDirectory(prefix="pi-bench-") as tmp:
        data = Path(tmp)
        cfg = data / "pi.cfg"
        cfg.write_text(_pi_cfg(data, hash_params))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PRIVACYIDEA_CONFIGFILE"] = str(cfg)
        env["PI_BENCH_PIN"] = PIN
        manage = str(PI_VENV / "bin" / "pi-manage")
        for command in ("create_enckey", "create_audit_keys", "create_tables"):
            _run([manage, "setup", command], env=env, timeout=300)
        passwd = data / "passwd"
        passwd.write_text(
            "".join(
                f"{u.name}:x:{20000 + i}:20000:Bench {i}:/home/{u.name}:/bin/sh\n"
                for i, u in enumerate(users)
            )
        )
        users_json = data / "users.json"
        users_json.write_text(json.dumps([{"name": u.name, "seed": u.seed_hex} for u in users]))
        started = time.perf_counter()
        out = _run(
            [
                str(PI_VENV / "bin" / "python"),
                str(PI_DIR / "pi_setup_users.py"),
                str(cfg),
                str(passwd),
                str(users_json),
            ],
            env=env,
            timeout=1800,
        )
        log(f"  {out.strip().splitlines()[-1]} in {time.perf_counter() - started:.1f} s")
        yield cfg, env


@contextmanager
def gunicorn_server(env: dict[str, str], workers: int, log_path: Path) -> Iterator[Server]:
    port = free_port()
    command = [
        str(PI_VENV / "bin" / "gunicorn"),
        "--workers",
        str(workers),
        "--bind",
        f"{LOOPBACK}:{port}",
        "--timeout",
        "120",
        "privacyidea.app:create_app(config_name='production')",
    ]
    with serve(
        command,
        port=port,
        env=env,
        cwd=PI_DIR,
        ready_path="/healthz/",
        log_path=log_path,
        start_timeout_s=180,
    ) as server:
        yield server


# -- load --------------------------------------------------------------------------------------


class UserPool:
    """Hands out each user at most once per TOTP step (privacyIDEA rejects a replayed step)."""

    def __init__(self, users: list[PiUser]) -> None:
        self.users = users
        self.cursor = 0

    def take(self) -> tuple[PiUser, int] | float:
        """(user, step) or, when every user was used in this step, seconds to the next one."""
        now = time.time()
        step = int(now // STEP_S)
        for _ in range(len(self.users)):
            user = self.users[self.cursor]
            self.cursor = (self.cursor + 1) % len(self.users)
            if user.last_step < step:
                user.last_step = step
                return user, step
        return (step + 1) * STEP_S - now + 0.05


@dataclass
class PeerResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    accepted: int
    rejected: int
    http_errors: int
    socket_errors: int
    pool_wait_s: float
    reject_reasons: dict[str, int]
    loadavg_before: float = field(default_factory=lambda: round(os.getloadavg()[0], 2))
    # The share of the machine's CPU time other guests of the VM took while it ran (http_load).
    steal_share: float | None = None

    @property
    def valid(self) -> bool:
        return self.requests > 0 and self.accepted >= VALID_ACCEPT_SHARE * self.requests


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(q / 100 * len(sorted_values))) - 1]


async def load_validate_check(
    base_url: str, pool: UserPool, connections: int, duration_s: float
) -> PeerResult:
    if not base_url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError(f"load only goes to {LOOPBACK}, not {base_url!r}")
    latencies: list[float] = []
    reasons: Counter[str] = Counter()
    counts = Counter[str]()
    waited = 0.0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    ticks = cpu_ticks()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        started = time.perf_counter()
        deadline = started + duration_s

        async def connection() -> None:
            nonlocal waited
            while time.perf_counter() < deadline and sum(counts.values()) < MAX_REQUESTS_PER_RUN:
                taken = pool.take()
                if isinstance(taken, float):
                    pause = min(taken, deadline - time.perf_counter())
                    if pause > 0:
                        waited += pause
                        await asyncio.sleep(pause)
                    continue
                user, step = taken
                form = {
                    "user": user.name,
                    "realm": REALM,
                    "pass": PIN + user.totp.at(step * STEP_S),
                }
                sent = time.perf_counter()
                try:
                    response = await client.post("/validate/check", data=form)
                except httpx.HTTPError as e:
                    counts["socket_errors"] += 1
                    reasons[f"transport: {type(e).__name__}"] += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                try:
                    body = response.json()
                    accepted = bool(body["result"].get("value"))
                    message = str(body.get("detail", {}).get("message", body["result"]))
                except (ValueError, KeyError, AttributeError, TypeError):
                    accepted, message = False, f"unparsable answer {response.status_code}"
                if response.status_code >= 400:
                    counts["http_errors"] += 1
                if accepted and response.status_code == 200:
                    counts["accepted"] += 1
                else:
                    counts["rejected"] += 1
                    reasons[f"{response.status_code} {message[:80]}"] += 1

        await asyncio.gather(*(connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return PeerResult(
        requests=len(latencies),
        duration_s=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(_percentile(latencies, 50) * 1000, 2),
        p99_ms=round(_percentile(latencies, 99) * 1000, 2),
        accepted=counts["accepted"],
        rejected=counts["rejected"],
        http_errors=counts["http_errors"],
        socket_errors=counts["socket_errors"],
        pool_wait_s=round(waited, 2),
        reject_reasons=dict(reasons.most_common(5)),
        steal_share=steal_between(ticks, cpu_ticks()),
    )


# -- FairUnlock's TOTP verify --------------------------------------------------------------------


def _fairunlock_runs(
    base_url: str, key: str, plan: list[tuple[int, int]], duration_s: float
) -> list[tuple[int, int, PeerResult]]:
    """The right-code verify for each (connections, rep) in ``plan``, driven by wrk over
    challenges prepared for it (bench/bench_totp_verify.py's VerifyBench)."""
    bench = VerifyBench(base_url, key)
    log(f"  FairUnlock: probe {bench.probe(plan[0][0]):,.0f} req/s")
    out = []
    for connections, rep in plan:
        run = bench.run(connections, rep, duration_s, wrong=False)
        r = run.result
        rejected = r.http_errors + r.socket_errors
        reasons = {"ran out of prepared challenges (lower bound)": 1} if r.exhausted else {}
        if r.http_errors:
            reasons["HTTP status >= 400"] = r.http_errors
        out.append(
            (
                connections,
                rep,
                PeerResult(
                    requests=r.requests,
                    duration_s=r.duration_s,
                    rps=r.rps,
                    p50_ms=r.p50_ms,
                    p99_ms=r.p99_ms,
                    accepted=r.requests - rejected,
                    rejected=rejected,
                    http_errors=r.http_errors,
                    socket_errors=r.socket_errors,
                    pool_wait_s=0.0,
                    reject_reasons=reasons,
                    steal_share=r.steal_share,
                ),
            )
        )
    return out


# -- orchestration -------------------------------------------------------------------------------


@dataclass
class Row:
    target: str  # "privacyIDEA <config>" | "FairUnlock TOTP verify"
    workers: int
    connections: int
    rep: int
    result: PeerResult


def _print_run(row: Row) -> None:
    r = row.result
    flag = "" if r.valid else "  NOT VALID: most answers rejected"
    log(
        f"  {row.target} w={row.workers} c={row.connections} run {row.rep}: {r.rps:,.1f} req/s "
        f"p50 {r.p50_ms:.1f} ms p99 {r.p99_ms:.1f} ms accepted {r.accepted} rejected "
        f"{r.rejected} (wait {r.pool_wait_s:g} s, load avg before {r.loadavg_before:.2f}) "
        f"{r.reject_reasons or ''}{flag}"
    )


def bench_privacyidea(args: argparse.Namespace, log_dir: Path) -> list[Row]:
    rows: list[Row] = []
    for config, hash_params in CONFIGS.items():
        if hash_params is None and args.skip_default_hashing:
            continue
        target = f"privacyIDEA {config}"
        log(f"{target}: setting up {args.users} users/tokens")
        users = make_users(args.users)
        pool = UserPool(users)
        with privacyidea_instance(hash_params, users) as (_cfg, env):
            for workers in args.workers:
                slug = config.split()[0]
                with gunicorn_server(env, workers, log_dir / f"pi-{slug}-w{workers}.log") as srv:
                    # Warm-up: every gunicorn worker loads its app lazily on its first requests.
                    asyncio.run(load_validate_check(srv.base_url, pool, workers * 2, args.warmup))
                    for connections in args.connections:
                        for rep in range(1, args.runs + 1):
                            result = asyncio.run(
                                load_validate_check(srv.base_url, pool, connections, args.duration)
                            )
                            rows.append(Row(target, workers, connections, rep, result))
                            _print_run(rows[-1])
    return rows


def bench_fairunlock(args: argparse.Namespace, log_dir: Path) -> list[Row]:
    rows: list[Row] = []
    fu_args = argparse.Namespace(log_level="WARNING", database="sqlite", pg_admin_url="")
    plan = [(c, rep) for c in args.connections for rep in range(1, args.runs + 1)]
    for workers in args.workers:
        log(f"FairUnlock TOTP verify: fairunlock serve --workers {workers}")
        with fairunlock_server(fu_args, workers, log_dir / f"fu-totp-w{workers}.log") as (
            server,
            key,
        ):
            for connections, rep, result in _fairunlock_runs(
                server.base_url, key, plan, args.duration
            ):
                rows.append(Row("FairUnlock TOTP verify", workers, connections, rep, result))
                _print_run(rows[-1])
    return rows


def summarize(rows: list[Row]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, int], list[PeerResult]] = {}
    for row in rows:
        groups.setdefault((row.target, row.workers, row.connections), []).append(row.result)
    out = []
    for (target, workers, connections), results in groups.items():
        out.append(
            {
                "target": target,
                "workers": workers,
                "connections": connections,
                "runs": len(results),
                "rps_median": statistics.median(r.rps for r in results),
                "p50_ms_median": statistics.median(r.p50_ms for r in results),
                "p99_ms_median": statistics.median(r.p99_ms for r in results),
                "accepted": sum(r.accepted for r in results),
                "rejected": sum(r.rejected for r in results),
                "pool_wait_s": round(sum(r.pool_wait_s for r in results), 2),
                "valid": all(r.valid for r in results),
                "steal_share_max": most_steal(r.steal_share for r in results),
            }
        )
    return out


def ratios(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {(s["target"], s["workers"], s["connections"]): s for s in summary}
    out = []
    for s in summary:
        if s["target"] != "FairUnlock TOTP verify":
            continue
        peer = by_key.get(("privacyIDEA cheap hashing", s["workers"], s["connections"]))
        if peer is None or not peer["rps_median"]:
            continue
        ratio = s["rps_median"] / peer["rps_median"]
        out.append(
            {
                "workers": s["workers"],
                "connections": s["connections"],
                "ratio": round(ratio, 2),
                "meets_target": ratio >= TARGET_RATIO,
                "valid": s["valid"] and peer["valid"],
            }
        )
    return out


def print_table(summary: list[dict[str, Any]], ratio_rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'target':<32} {'workers':>7} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'accepted':>8} {'rejected':>8} {'steal':>6}  note"
    )
    print()
    print(header)
    print("-" * len(header))
    for s in summary:
        note = "" if s["valid"] else "NOT VALID (mostly rejected)"
        if s["pool_wait_s"]:
            note += f" waited {s['pool_wait_s']:g} s for fresh TOTP steps"
        print(
            f"{s['target']:<32} {s['workers']:>7} {s['connections']:>5} {s['rps_median']:>9,.1f} "
            f"{s['p50_ms_median']:>8.1f} {s['p99_ms_median']:>8.1f} {s['accepted']:>8} "
            f"{s['rejected']:>8} {steal_text(s['steal_share_max']):>6}  {note}"
        )
    for q in ratio_rows:
        verdict = "meets" if q["meets_target"] else "MISSES"
        print(
            f"FairUnlock TOTP verify / privacyIDEA cheap /validate/check at {q['workers']} "
            f"worker(s), {q['connections']} connections: {q['ratio']:.1f}x ({verdict} >= "
            f"{TARGET_RATIO:g}x){'' if q['valid'] else ' - NOT VALID: a side was mostly rejected'}"
        )


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(not 1 <= v <= 512 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of integers 1..512")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=_int_list, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--connections", type=_int_list, default=[32, 64], help="e.g. 32,64")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per configuration")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per privacyIDEA run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of discarded warm-up")
    parser.add_argument("--users", type=int, default=1000, help="privacyIDEA users/tokens")
    parser.add_argument("--skip-default-hashing", action="store_true")
    parser.add_argument("--skip-fairunlock", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="results JSON path")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120 or not 1 <= args.runs <= 10:
        parser.error("--duration must be 1..120 s and --runs 1..10")
    if not 10 <= args.users <= 50_000:
        parser.error("--users must be 10..50000")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every `with serve(...)` stops its process group.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    started = datetime.now(UTC)
    version = ensure_venv()
    log(f"peer: {version}; workers {args.workers}; connections {args.connections}")
    rows: list[Row] = []
    notes: list[str] = []
    # Server logs (gunicorn's, fairunlock's) stay for diagnosis in the git-ignored data dir.
    log_dir = PI_DIR / "data" / f"logs-{started:%Y%m%dT%H%M%SZ}"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        rows += bench_privacyidea(args, log_dir)
        if not args.skip_fairunlock:
            try:
                rows += bench_fairunlock(args, log_dir)
            except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as e:
                notes.append(f"FairUnlock TOTP verify not measured: {e}")
                log(notes[-1])
    except BaseException:
        for path in sorted(log_dir.glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
            print(f"--- {path.name} (tail)\n{tail}", file=sys.stderr)
        raise
    summary = summarize(rows)
    ratio_rows = ratios(summary)
    print_table(summary, ratio_rows)
    for note in notes:
        print(f"NOTE: {note}")
    output = args.output or RESULTS / f"peer-{started:%Y%m%dT%H%M%SZ}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started": started.isoformat(),
        "peer": version,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
        },
        "configs": {
            "default hashing": "as shipped: argon2id, privacyIDEA's argon2__rounds 9, passlib "
            "defaults (64 MiB, parallelism 4)",
            "cheap hashing": f"pi.cfg PI_HASH_ALGO_PARAMS = {CHEAP_HASH_PARAMS!r}",
        },
        "client": "httpx.AsyncClient, form POST /validate/check, one user per TOTP step",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "summary": summary,
        "ratios": ratio_rows,
        "notes": notes,
        "runs": [
            {
                "target": r.target,
                "workers": r.workers,
                "connections": r.connections,
                "rep": r.rep,
                **asdict(r.result),
            }
            for r in rows
        ],
    }
    output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results: {output}\nserver logs: {log_dir}")
    return 1 if notes else 0


if __name__ == "__main__":
    raise SystemExit(main())
