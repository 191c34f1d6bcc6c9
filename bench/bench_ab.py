"""Interleaved A/B of POST /v1/unlock-requests: another checkout's code against this one's.

    python -m bench.bench_ab --base /tmp/base [--database sqlite|postgres] [--workers 1]
                             [--connections 32] [--rounds 8] [--duration 6] [--output F.json]

bench_http runs one configuration after the other, and on the shared 2-core VM a route's
requests/s moves by a fifth within minutes, so two of its runs (before, after) cannot resolve a
change of a few percent. Here the trivial app's POST /echo, ``fairunlock serve`` of ``--base``
(a checkout, e.g. ``git worktree add /tmp/base <commit>``) and ``fairunlock serve`` of this
checkout are all up at once, each on a fresh data directory (and database); every round loads
each of the three for ``--duration`` seconds with wrk, in turn, the order reversed every other
round. The report gives each one's median requests/s and p99, and the medians of the rounds'
ratios (base / echo, head / echo, head / base): a round's three runs are seconds apart, so a slow
minute slows all three. Both servers start from the same environment and migrate their own
schema; neither sees the other's requests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_http import (
    ECHO,
    PG_ADMIN_URL,
    ROOT,
    Endpoint,
    fairunlock_server,
    trivial_server,
    unlock_endpoint,
)
from bench.http_load import LoadResult, run_load

NAMES = ("echo", "base", "head")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds per server, once")
    parser.add_argument("--log-level", default=None, help="FAIRUNLOCK_LOG_LEVEL of the servers")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if not (args.base / "service").is_dir():
        parser.error(f"--base {args.base}: not a FairUnlock checkout")
    if args.rounds < 1 or args.workers < 1 or args.connections < 1:
        parser.error("--rounds, --workers and --connections must be at least 1")
    return args


def _round_order(round_no: int) -> tuple[str, ...]:
    return NAMES if round_no % 2 == 0 else tuple(reversed(NAMES))


def run(args: argparse.Namespace) -> dict[str, Any]:
    logs = ROOT / "bench" / "results"
    logs.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        # What each name loads: its endpoint and its server's base URL.
        targets: dict[str, tuple[Endpoint, str]] = {}
        for name, root in (("base", args.base.resolve()), ("head", ROOT)):
            server, key = stack.enter_context(
                fairunlock_server(args, args.workers, logs / f"ab-{name}.log", root)
            )
            targets[name] = (unlock_endpoint(key), server.base_url)
        trivial = stack.enter_context(trivial_server(args.workers, logs / "ab-trivial.log"))
        targets["echo"] = (ECHO, trivial.base_url)

        def load(name: str, seconds: float) -> LoadResult:
            endpoint, base_url = targets[name]
            return run_load(endpoint.spec(base_url, args, seconds, args.connections))

        for name in NAMES:
            if args.warmup > 0:
                load(name, args.warmup)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in NAMES}
        for round_no in range(args.rounds):
            for name in _round_order(round_no):
                result = load(name, args.duration)
                if result.http_errors or result.socket_errors:
                    raise RuntimeError(f"{name}: errors under load: {result.as_dict()}")
                runs[name].append(result.as_dict())
            print(
                f"round {round_no + 1}: "
                + "  ".join(
                    f"{n} {runs[n][-1]['rps']:,.0f} req/s (p99 {runs[n][-1]['p99_ms']:.1f} ms)"
                    for n in NAMES
                ),
                flush=True,
            )
    rps = {n: [r["rps"] for r in runs[n]] for n in NAMES}
    ratios = {
        "base_over_echo": [b / e for b, e in zip(rps["base"], rps["echo"], strict=True)],
        "head_over_echo": [h / e for h, e in zip(rps["head"], rps["echo"], strict=True)],
        "head_over_base": [h / b for h, b in zip(rps["head"], rps["base"], strict=True)],
    }
    return {
        "benchmark": "http_ab",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": str(args.base),
        "database": args.database,
        "workers": args.workers,
        "connections": args.connections,
        "rounds": args.rounds,
        "duration_s": args.duration,
        "median_rps": {n: statistics.median(rps[n]) for n in NAMES},
        "median_p99_ms": {n: statistics.median(r["p99_ms"] for r in runs[n]) for n in NAMES},
        "median_ratios": {k: statistics.median(v) for k, v in ratios.items()},
        "ratios": ratios,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    for name in NAMES:
        print(
            f"{name:5s} median {report['median_rps'][name]:,.0f} req/s, "
            f"p99 {report['median_p99_ms'][name]:.1f} ms"
        )
    medians = report["median_ratios"]
    print(
        f"medians of the rounds' ratios: base / echo {100 * medians['base_over_echo']:.1f} %, "
        f"head / echo {100 * medians['head_over_echo']:.1f} %, "
        f"head / base {medians['head_over_base']:.3f} "
        f"({', '.join(f'{x:.2f}' for x in report['ratios']['head_over_base'])})"
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
