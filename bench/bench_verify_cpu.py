"""CPU per TOTP verify in process (no sockets), against the trivial route: the proof path's A/B.

    python -m bench.bench_verify_cpu [--proofs N] [--rounds R] [--database sqlite|postgres]
                                     [--output FILE.json]

bench_totp_verify measures the verify route over HTTP with wrk; on this shared 2-core VM its
figure moves with the trivial route's, so a change worth a few percent cannot be resolved there.
This one runs the service (``create_app``, a fresh migrated data directory, a ``frontend`` key)
in one event loop as bench_asgi_cpu does and, each round, prepares ``N`` accounts with a
confirmed TOTP, an unlock request and an open TOTP challenge each (not timed), then sends every
challenge its right code from 32 concurrent clients and counts the process's CPU time per
proof; then ``N`` POST /echo on the trivial app, the same way. The report gives the medians and
the median of the rounds' ratios (trivial ÷ verify CPU per request). A round waits out a TOTP
step that would end before its proofs are checked. With ``--database postgres`` the database
server's own CPU is not counted (it is another process).

``--instructions`` counts the instructions per proof instead, under valgrind's callgrind, as
``bench_asgi_cpu --instructions`` does for the decision (whatever else this VM does, two runs of
the same code agree to a fraction of a percent, where CPU time moves by a fifth between rounds):
one process, a warm-up round uncounted, then one round whose proofs alone are counted. Slow (a
few minutes); ``--proofs`` defaults to 256 there, so a round's codes stay within their step.
``--keep FILE`` keeps that process's callgrind.out (``callgrind_annotate FILE``: where in C the
instructions go; 63 % of them in the interpreter, 8 % in SQLite on 2026-12-07).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.bench_asgi_cpu import (
    ASGIApp,
    Lifespan,
    _apps,
    _callgrind,
    call,
    callgrind_count,
    cpu_per_request,
    request_bodies,
    require_callgrind,
)
from bench.bench_http import PG_ADMIN_URL, _unlock_environment
from bench.bench_totp_verify import PARAMS, REQUEST, _source_ip
from service.methods.totp import code_at

CLIENTS = 32


async def _phase(
    app: ASGIApp,
    headers: list[tuple[bytes, bytes]],
    calls: list[tuple[str, bytes]],
    expect: int,
    *,
    parse: bool = True,
) -> list[dict[str, Any]]:
    """The calls from CLIENTS concurrent clients; every answer must be ``expect``. Their bodies
    parsed, unless ``parse`` is false: the measured proofs' answers are not (parsing a decision
    is ~90,000 instructions of the client's, and POST /echo's answers are not parsed either)."""
    gate = asyncio.Semaphore(CLIENTS)

    async def one(path: str, body: bytes) -> dict[str, Any]:
        chunks: list[bytes] = []
        async with gate:
            status = await call(app, path, body, headers, chunks)
        if status != expect:
            raise RuntimeError(f"POST {path} answered {status}: {b''.join(chunks)[:300]!r}")
        if not parse:
            return {}
        answer = b"".join(chunks)
        parsed: dict[str, Any] = json.loads(answer) if answer else {}
        return parsed

    return await asyncio.gather(*(one(path, body) for path, body in calls))


async def _step_clear(margin_s: float) -> None:
    """Wait out a TOTP step that ends within ``margin_s``."""
    left = PARAMS.period - time.time() % PARAMS.period
    if left < margin_s:
        await asyncio.sleep(left + 0.05)


async def prepare(
    app: ASGIApp, headers: list[tuple[bytes, bytes]], first: int, count: int
) -> list[tuple[str, str, str]]:
    """(request id, challenge id, secret) for ``count`` new accounts with an open TOTP challenge."""
    accounts = [f"cpu-{i}" for i in range(first, first + count)]
    enrolled = await _phase(app, headers, [(f"/v1/accounts/{a}/totp", b"") for a in accounts], 201)
    secrets = [e["secret"] for e in enrolled]
    await _step_clear(8.0)
    # Confirmed with the previous step's code: the current step's stays good for the proof.
    earlier = datetime.now(UTC) - timedelta(seconds=PARAMS.period)
    confirms = [
        (f"/v1/accounts/{a}/totp/confirm", json.dumps({"code": code_at(s, earlier, PARAMS)}))
        for a, s in zip(accounts, secrets, strict=True)
    ]
    await _phase(app, headers, [(p, b.encode()) for p, b in confirms], 200)
    requests = [
        json.dumps(
            {**REQUEST, "account_id": a, "context": {**REQUEST["context"], "ip": _source_ip(i)}}
        )
        for i, a in enumerate(accounts, start=first)
    ]
    decisions = await _phase(
        app, headers, [("/v1/unlock-requests", r.encode()) for r in requests], 201
    )
    challenges = await _phase(
        app,
        headers,
        [(f"/v1/unlock-requests/{d['id']}/challenges", b'{"method":"totp"}') for d in decisions],
        201,
    )
    return [(d["id"], c["id"], s) for d, c, s in zip(decisions, challenges, secrets, strict=True)]


def _proofs(prepared: list[tuple[str, str, str]]) -> list[tuple[str, bytes]]:
    """Each prepared challenge's verify call with its right code for now."""
    now = datetime.now(UTC)
    return [
        (
            f"/v1/unlock-requests/{r}/challenges/{c}/verify",
            json.dumps({"code": code_at(s, now, PARAMS)}).encode(),
        )
        for r, c, s in prepared
    ]


def _headers(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]


async def counted_child(args: argparse.Namespace, env: dict[str, str], key: str) -> None:
    """Under callgrind: a warm-up round, then a round whose verify calls alone are counted."""
    trivial, service, _ = _apps(env, key)
    headers = _headers(key)
    async with Lifespan(trivial), Lifespan(service):
        for first, counted in ((0, False), (args.proofs, True)):
            prepared = await prepare(service, headers, first, args.proofs)
            await _step_clear(20.0)
            proofs = _proofs(prepared)
            if counted:
                _callgrind(True)
            await _phase(service, headers, proofs, 200, parse=False)
            if counted:
                _callgrind(False)


def count_instructions(args: argparse.Namespace, env: dict[str, str], key: str) -> float:
    """Instructions per TOTP verify (the child under callgrind, see counted_child)."""
    require_callgrind()
    child = ["bench.bench_verify_cpu", "--child", "--proofs", str(args.proofs)]
    child += ["--database", args.database]
    proofs: int = args.proofs
    out_file = str(args.keep) if args.keep is not None else "/dev/null"
    return callgrind_count(child, env, key, out_file, "verify") / proofs


async def measure(args: argparse.Namespace, env: dict[str, str], key: str) -> dict[str, Any]:
    trivial, service, routes = _apps(env, key)
    _, echo_path, echo_headers, echo_status = routes["echo"]
    headers = _headers(key)
    samples: dict[str, list[float]] = {"echo": [], "verify": []}
    echo_numbers = itertools.count()
    async with Lifespan(trivial), Lifespan(service):
        first = 0
        for round_no in range(args.rounds + 1):  # the first round warms up, uncounted
            prepared = await prepare(service, headers, first, args.proofs)
            first += args.proofs
            await _step_clear(10.0)
            proofs = _proofs(prepared)
            started = time.process_time()
            await _phase(service, headers, proofs, 200, parse=False)
            verify_us = (time.process_time() - started) * 1e6 / len(proofs)
            bodies = request_bodies(args.proofs, CLIENTS, echo_numbers)
            echo_us = await cpu_per_request(trivial, echo_path, echo_headers, bodies, echo_status)
            if round_no == 0:
                continue
            samples["verify"].append(verify_us)
            samples["echo"].append(echo_us)
            print(
                f"  round {round_no}: verify {verify_us:.1f} µs, echo {echo_us:.1f} µs "
                f"({echo_us / verify_us:.1%})",
                flush=True,
            )
    ratios = [e / v for e, v in zip(samples["echo"], samples["verify"], strict=True)]
    return {
        "echo_us": statistics.median(samples["echo"]),
        "verify_us": statistics.median(samples["verify"]),
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proofs", type=int, default=None, help="proofs per round (1024; 256 with --instructions)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per proof (callgrind)"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="with --instructions: keep the callgrind.out in this file (for callgrind_annotate)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keep is not None and not args.instructions:
        parser.error("--keep goes with --instructions")
    if args.proofs is None:
        args.proofs = 256 if args.instructions or args.child else 1024
    if args.proofs < CLIENTS or args.proofs % CLIENTS:
        parser.error(f"--proofs must be a multiple of {CLIENTS}")
    args.log_level = "warning"
    if args.child:  # the counted process, in the parent's environment
        asyncio.run(counted_child(args, dict(os.environ), os.environ["FAIRUNLOCK_BENCH_KEY"]))
        return
    if args.instructions:
        with _unlock_environment(args) as (env, key):
            per_proof = count_instructions(args, env, key)
        print(f"\n{args.database}, {CLIENTS} clients: {per_proof:,.0f} instructions per verify")
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(
                json.dumps({"benchmark": "verify_instructions", "instructions": per_proof}) + "\n"
            )
        return
    with _unlock_environment(args) as (env, key):
        result = asyncio.run(measure(args, env, key))
    print(
        f"\n{args.database}, {CLIENTS} clients, medians of {args.rounds} rounds: POST /echo "
        f"{result['echo_us']:.1f} µs, TOTP verify {result['verify_us']:.1f} µs of CPU per "
        f"request; median of the rounds' ratios: verify gets {100 * result['ratio']:.1f} % of "
        "the trivial route's requests per CPU second"
    )
    if args.output is not None:
        record = {
            "benchmark": "verify_cpu",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "database": args.database,
            "proofs": args.proofs,
            "rounds": args.rounds,
            **result,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
