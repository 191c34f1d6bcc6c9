"""CPU per request in process (no sockets): the decision route against the trivial route.

    python -m bench.bench_asgi_cpu [--requests N] [--rounds R] [--concurrency C]
                                   [--database sqlite|postgres] [--output FILE.json]
    python -m bench.bench_asgi_cpu --instructions [--requests N] [--concurrency C]

The HTTP benchmark (bench_http) measures what a client sees, but on a shared 2-core VM the
trivial route's throughput swings several-fold within an hour, so a change worth a few percent
cannot be resolved there. This one calls the ASGI apps directly with ``C`` concurrent clients in
one event loop and counts the process's CPU time (its threads included: SQLite's COMMIT runs in
one) per request: POST /echo on the trivial app, and ``POST /v1/unlock-requests`` on the real
service (``create_app``, a fresh migrated data directory, a ``frontend`` key, the bench_http
request body). Rounds alternate between the two, each a second or two long, so drift hits both;
the report gives the medians and the median of the rounds' ratios of CPU per request, trivial ÷
unlock: the share of a core's trivial-route throughput a decision gets when the server, not the
client or the network, is the limit. What uvicorn and the kernel add per request (~110 µs on
this VM, the same for both routes) is outside, so the HTTP ratio is higher than this one; for a
change's effect on the decision route, this is the finer instrument. With ``--database postgres``
the database server's own CPU is not counted (it is another process).

``--instructions`` counts instructions instead (valgrind's callgrind, which counts what the
process executes whatever else the machine does): the same echo and unlock routes, and the
decision alone (``service.flows.unlock.create`` called by the clients directly: the group
commit, the policy, the audit integration and SQLite, no HTTP). Each runs in its own process
under callgrind, measured only after a warm-up (``callgrind_control`` switches counting on and
off). The decision alone is the A/B instrument for that path: its clients resubmit at once, so
every batch holds all of them and two runs of the same code agree to ~0.05 %. The unlock route's
count moves by several percent between runs with the sizes its batches happen to take, so the
route without the decision is a target of its own: ``route``, POST /v1/unlock-requests with
``unlock.create`` answering one decision made beforehand (authentication, middleware, body
validation, the answer's encoding; no batches, so as steady as the decision's). Slow: about a
minute per target.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_http import PG_ADMIN_URL, REQUEST_TEMPLATE, VARY, _unlock_environment
from bench.http_load import LoadSpec

ASGIApp = Callable[..., Coroutine[Any, Any, None]]
BODY = LoadSpec(url="", body_template=REQUEST_TEMPLATE, vary=VARY)


class Lifespan:
    """The app's lifespan protocol driven by hand: startup on enter, shutdown on exit."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._to_app: asyncio.Queue[dict[str, str]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Lifespan:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
        self._task = asyncio.create_task(self._app(scope, self._to_app.get, self._from_app.put))
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._from_app.get()
        if message["type"] != "lifespan.startup.complete":
            raise RuntimeError(f"app startup failed: {message}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._to_app.put({"type": "lifespan.shutdown"})
        await self._from_app.get()
        assert self._task is not None
        await self._task


async def call(
    app: ASGIApp,
    path: str,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    answer: list[bytes] | None = None,
) -> int:
    """One POST through the app; its status (and its body's chunks appended to ``answer``)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    delivered = False
    disconnected = asyncio.Event()
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # like a server: nothing more until the client goes away
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif answer is not None and message["type"] == "http.response.body":
            answer.append(message.get("body", b""))

    await app(scope, receive, send)
    disconnected.set()
    return status


def request_bodies(requests: int, concurrency: int, numbers: Iterator[int]) -> list[list[bytes]]:
    """``requests`` bodies (a multiple of ``concurrency``, checked in main), one list per client,
    each for an account and device of its own number."""
    per_client = requests // concurrency
    return [
        [(BODY.body(next(numbers)) or "").encode() for _ in range(per_client)]
        for _ in range(concurrency)
    ]


async def post_all(
    app: ASGIApp,
    path: str,
    headers: list[tuple[bytes, bytes]],
    bodies: list[list[bytes]],
    expect: int,
) -> None:
    """Each client POSTs its bodies one after the other; every answer must be ``expect`` (a
    benchmark of errors measures nothing)."""

    async def client(mine: list[bytes]) -> None:
        for body in mine:
            status = await call(app, path, body, headers)
            if status != expect:
                raise RuntimeError(f"POST {path} answered {status}, expected {expect}")

    await asyncio.gather(*(client(mine) for mine in bodies))


async def cpu_per_request(
    app: ASGIApp,
    path: str,
    headers: list[tuple[bytes, bytes]],
    bodies: list[list[bytes]],
    expect: int,
) -> float:
    """CPU µs per request of POSTing ``bodies`` (built beforehand, outside the measurement)."""
    started = time.process_time()
    await post_all(app, path, headers, bodies, expect)
    return (time.process_time() - started) * 1e6 / sum(len(mine) for mine in bodies)


def _apps(env: dict[str, str], key: str) -> tuple[ASGIApp, Any, dict[str, tuple[Any, ...]]]:
    """The trivial app, the service (built as `fairunlock serve` builds it, from the
    environment) and the two routes: name -> (app, path, headers, expected status)."""
    # Only the bench's own settings: never a FAIRUNLOCK_* setting of the caller's shell (as
    # bench_http's _clean_env).
    for name in [k for k in os.environ if k.startswith("FAIRUNLOCK_")]:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if k.startswith("FAIRUNLOCK_")})
    os.environ.setdefault("FAIRUNLOCK_LOG_LEVEL", "warning")
    from bench.trivial_app import create_app as create_trivial
    from service.app import create_app
    from service.settings import Settings

    trivial = create_trivial()
    service = create_app(Settings.from_env())
    json_header = (b"content-type", b"application/json")
    bearer = (b"authorization", f"Bearer {key}".encode())
    routes = {
        "echo": (trivial, "/echo", [json_header], 201),
        "unlock": (service, "/v1/unlock-requests", [json_header, bearer], 201),
    }
    return trivial, service, routes


async def measure(args: argparse.Namespace, env: dict[str, str], key: str) -> dict[str, Any]:
    trivial, service, routes = _apps(env, key)
    # Own numbers per route: the echo's four times as many requests must not use up the unlock
    # route's accounts (the bodies name 100,000, then repeat, and a repeat has history).
    numbers = {name: itertools.count() for name in routes}
    samples: dict[str, list[float]] = {"echo": [], "unlock": []}
    async with Lifespan(trivial), Lifespan(service):
        for name, (app, path, headers, expect) in routes.items():  # warm-up
            bodies = request_bodies(WARM_UP, args.concurrency, numbers[name])
            await cpu_per_request(app, path, headers, bodies, expect)
        for round_no in range(args.rounds):
            for name, (app, path, headers, expect) in routes.items():
                bodies = request_bodies(
                    _counted_requests(args, name), args.concurrency, numbers[name]
                )
                us = await cpu_per_request(app, path, headers, bodies, expect)
                samples[name].append(us)
                print(f"  round {round_no + 1} {name:6s} {us:8.1f} µs CPU/request", flush=True)
    echo, unlock = (statistics.median(samples[k]) for k in ("echo", "unlock"))
    # Each round's own ratio: the two routes ran within seconds of each other, so a minute in
    # which the VM is slow slows both and the pair's ratio stays put.
    ratios = [e / u for e, u in zip(samples["echo"], samples["unlock"], strict=True)]
    return {
        "echo_us": echo,
        "unlock_us": unlock,
        "ratio": statistics.median(ratios),
        "ratios": ratios,
        "samples": samples,
    }


TARGETS = ("echo", "unlock", "decision", "route")
# Where each target's account numbers start: the children share one database, and the decision
# child must not meet the accounts the unlock child gave history to.
FIRST_NUMBER = {"echo": 0, "unlock": 0, "decision": 50_000, "route": 90_000}
WARM_UP = 512
_COLLECTED = re.compile(r"Collected : (\d+)")


def _callgrind(counting: bool) -> None:
    # Run inside valgrind only (--child): switches this process's counting on or off.
    # callgrind_control exits 0 even when it reached no process: its "OK" is the answer.
    done = subprocess.run(
        ["callgrind_control", "--instr=on" if counting else "--instr=off", str(os.getpid())],
        check=False,
        capture_output=True,
        text=True,
    )
    if "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control failed: {done.stdout}{done.stderr}")


async def counted_child(args: argparse.Namespace, env: dict[str, str], key: str) -> None:
    """One target under callgrind: a warm-up uncounted, then ``--requests`` counted."""
    trivial, service, routes = _apps(env, key)
    target = args.child
    numbers = itertools.count(FIRST_NUMBER[target])
    async with Lifespan(trivial), Lifespan(service):
        if target == "decision":
            import msgspec

            from service import dto
            from service.flows import unlock

            decoder = msgspec.json.Decoder(dto.UnlockRequestIn)
            ctx = service.state.ctx

            async def decide(n: int, counted: bool) -> None:
                bodies = [
                    [decoder.decode(body) for body in mine]
                    for mine in request_bodies(n, args.concurrency, numbers)
                ]

                async def client(mine: list[dto.UnlockRequestIn]) -> None:
                    for body in mine:
                        await unlock.create(ctx, "bench", body)

                if counted:
                    _callgrind(True)
                await asyncio.gather(*(client(mine) for mine in bodies))
                if counted:
                    _callgrind(False)

            await decide(WARM_UP, counted=False)
            await decide(args.requests, counted=True)
            return
        if target == "route":
            await route_without_decision(service, numbers)
            target = "unlock"
        app, path, headers, expect = routes[target]
        await post_all(
            app, path, headers, request_bodies(WARM_UP, args.concurrency, numbers), expect
        )
        bodies = request_bodies(_counted_requests(args, target), args.concurrency, numbers)
        _callgrind(True)
        await post_all(app, path, headers, bodies, expect)
        _callgrind(False)


async def route_without_decision(service: Any, numbers: Iterator[int]) -> None:
    """Make the service's unlock route answer every request with one decision made now (the
    ``route`` target): what remains is the route's own work around the flow."""
    import msgspec

    from service import dto
    from service.flows import unlock

    body = msgspec.json.decode(request_bodies(1, 1, numbers)[0][0], type=dto.UnlockRequestIn)
    made = await unlock.create(service.state.ctx, "bench", body)

    async def answer(ctx: Any, actor: str, body: dto.UnlockRequestIn) -> unlock.CreatedDecision:
        return made

    unlock.create = answer


def _counted_requests(args: argparse.Namespace, target: str) -> int:
    requests: int = args.requests
    return requests * (4 if target == "echo" else 1)


def require_callgrind() -> None:
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"--instructions needs {tool} (Debian's valgrind package)")


def callgrind_count(
    child: list[str], env: dict[str, str], key: str, out_file: str, what: str
) -> int:
    """Run ``python -m <child...>`` under callgrind, counting only where the child switches
    counting on (``_callgrind``), with the bench's environment and key: the instructions counted."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_file}",
        sys.executable,
        "-m",
        *child,
    ]
    child_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FAIRUNLOCK_")},
        **env,
        "FAIRUNLOCK_BENCH_KEY": key,
    }
    done = subprocess.run(command, env=child_env, capture_output=True, text=True, check=False)
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found or int(found[-1]) == 0:
        raise RuntimeError(f"{what} under callgrind failed: {done.stderr[-2000:]}")
    return int(found[-1])


def count_instructions(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """Instructions per request of each target, each in its own process under callgrind."""
    require_callgrind()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fu-callgrind-") as scratch:
        out = args.keep or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        for target in args.targets:
            child = ["bench.bench_asgi_cpu", "--child", target, "--requests", str(args.requests)]
            child += ["--concurrency", str(args.concurrency), "--database", args.database]
            counted = callgrind_count(child, env, args.key, f"{out}/{target}.out", target)
            per_request = counted / _counted_requests(args, target)
            result[f"{target}_instructions"] = per_request
            print(f"  {target:8s} {per_request:12,.0f} instructions/request", flush=True)
    if "echo_instructions" in result and "unlock_instructions" in result:
        result["ratio"] = result["echo_instructions"] / result["unlock_instructions"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2048, help="unlock requests per round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    parser.add_argument(
        "--targets",
        type=lambda text: [t for t in text.split(",") if t],
        default=list(TARGETS),
        help="with --instructions: which of echo,unlock,decision (e.g. decision for an A/B)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="with --instructions: keep each target's callgrind.out in this directory "
        "(for callgrind_annotate --inclusive=yes)",
    )
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"--targets: unknown {', '.join(sorted(unknown))}")
    if not 1 <= args.concurrency <= WARM_UP or WARM_UP % args.concurrency:
        parser.error(f"--concurrency must divide the warm-up's {WARM_UP} requests")
    if args.requests < args.concurrency or args.requests % args.concurrency:
        parser.error("--requests must be a multiple of --concurrency")
    args.log_level = "warning"
    if args.child is not None:  # one target, under callgrind, in the parent's environment
        asyncio.run(counted_child(args, dict(os.environ), os.environ["FAIRUNLOCK_BENCH_KEY"]))
        return
    if args.instructions:
        with _unlock_environment(args) as (env, key):
            args.key = key
            counted = count_instructions(args, env)
        if "ratio" in counted:
            print(
                f"\n{args.database}, {args.concurrency} clients: unlock executes "
                f"{1 / counted['ratio']:.1f}x the instructions of POST /echo per request "
                f"({100 * counted['ratio']:.1f} %)"
            )
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps({"benchmark": "asgi_instructions", **counted}) + "\n")
        return
    with _unlock_environment(args) as (env, key):
        result = asyncio.run(measure(args, env, key))
    print(
        f"\n{args.database}, {args.concurrency} clients, medians of {args.rounds} rounds: "
        f"POST /echo {result['echo_us']:.1f} µs, POST /v1/unlock-requests "
        f"{result['unlock_us']:.1f} µs of CPU per request; median of the rounds' ratios: unlock "
        f"gets {100 * result['ratio']:.1f} % of the trivial route's requests per CPU second "
        f"(rounds {min(result['ratios']):.1%}..{max(result['ratios']):.1%})"
    )
    if args.output is not None:
        record = {
            "benchmark": "asgi_cpu",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "database": args.database,
            "concurrency": args.concurrency,
            "requests": args.requests,
            "rounds": args.rounds,
            **result,
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
