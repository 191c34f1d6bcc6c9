"""HTTP load harness: start a server on loopback, load it for a fixed time, always stop it.

- ``call_all(base_url, calls, concurrency)`` sends a list of requests over keep-alive
  connections and returns each status and body: the set-up a benchmark needs before it measures,
  several times faster than httpx, whose client cost would make the set-up the slowest part.
- ``serve(command, port=..., env=...)`` starts a server process in its own process group, waits
  until it answers HTTP, and on exit sends SIGTERM to the group, then SIGKILL after a grace period.
- ``run_load(spec)`` loads one endpoint for ``spec.duration_s`` with ``spec.connections`` open
  connections and returns requests/s and latency percentiles. With ``spec.sequence`` every
  request is the next (path, body) of that list, each sent once (a proof that is good once);
  when it runs out the load stops early and the result says ``exhausted``. It uses ``wrk`` when
  it is on PATH (this module installs nothing: ``apt-get install wrk``) and otherwise a bounded
  asyncio + httpx client, whose own CPU cost then limits what it can measure (results name the
  tool). Each result also says what share of the machine's CPU time the hypervisor gave to other
  guests while it ran (``steal_share``, from /proc/stat): on a shared VM that share moved between
  0 and 29 % within one benchmark (2026-12-07), and a run that lost a quarter of its CPU is not
  comparable with one that lost none, so the tables show it beside each figure.

Every URL is ``http://127.0.0.1:<port>``; anything else is refused.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.serving import listening_sockets

LOOPBACK = "127.0.0.1"
MAX_REQUESTS = 2_000_000  # the fallback client's hard bound, whatever the duration
STOP_GRACE_S = 10.0


class ServerFailed(RuntimeError):
    """The server exited or never answered; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _check_loopback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != LOOPBACK:
        raise ValueError(f"load only goes to http://{LOOPBACK}, not {url!r}")


def uvicorn_command(factory: str, *, workers: int, port: int) -> list[str]:
    """An app factory served as ``fairunlock serve`` serves the service (service.serving:
    uvicorn, each worker on its own SO_REUSEPORT socket, no access log), warnings only."""
    return [
        sys.executable,
        "-m",
        "service.serving",
        factory,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
    ]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # The server runs in its own session, so its pid is its process group: workers go too.
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_ready(server: Server, path: str, timeout_s: float, listeners: int) -> None:
    """Until the server answers ``path`` and ``listeners`` sockets listen on its port (with
    service.serving, every worker its own: a load started before the last one listens would
    open all its connections on the others)."""
    deadline = time.monotonic() + timeout_s
    url = server.base_url + path
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerFailed(
                f"server exited with {server.process.returncode} before answering:\n"
                + server.log_tail()
            )
        try:
            httpx.get(url, timeout=1.0)
        except httpx.TransportError:
            time.sleep(0.1)
            continue
        # Any HTTP answer means the server is up; every worker is, once each listens.
        listening = listening_sockets(server.port)
        if listening is None or len(listening) >= listeners:
            return
        time.sleep(0.1)
    raise ServerFailed(
        f"no answer from {url} on {listeners} listening socket(s) within {timeout_s:g} s:\n"
        + server.log_tail()
    )


@contextmanager
def serve(
    command: list[str],
    *,
    port: int,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/",
    log_path: Path | None = None,
    start_timeout_s: float = 60.0,
    listeners: int = 1,
) -> Iterator[Server]:
    """Run ``command`` (which must listen on 127.0.0.1:``port``, on ``listeners`` sockets once
    ready) for the ``with`` block."""
    if log_path is None:
        log_path = Path(tempfile.mkstemp(prefix="server-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            server = Server(process, port, log_path)
            _wait_ready(server, ready_path, start_timeout_s, listeners)
            yield server
        finally:
            _stop(process)


# -- load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """One endpoint under load. ``body_template`` placeholders (keys of ``vary``) are replaced by
    the request number modulo the given value, so every request can carry other ids."""

    url: str
    method: str = "GET"
    body_template: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    vary: Mapping[str, int] = field(default_factory=dict)
    connections: int = 32
    duration_s: float = 10.0
    timeout_s: float = 10.0
    # (path, body) per request, each used once, in order; url then gives only host and port.
    sequence: tuple[tuple[str, str], ...] | None = None

    def body(self, n: int) -> str | None:
        if self.body_template is None:
            return None
        body = self.body_template
        for placeholder, modulus in self.vary.items():
            body = body.replace(placeholder, str(n % modulus))
        return body


@dataclass
class LoadResult:
    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p99_ms: float
    http_errors: int  # responses with status >= 400
    socket_errors: int
    latency_distribution_ms: dict[str, float] = field(default_factory=dict)
    # spec.sequence ran out before the duration ended: rps is then a lower bound
    exhausted: bool = False
    # Of all CPUs' time while the load ran, the share the hypervisor gave to other guests
    # (None where /proc/stat does not say).
    steal_share: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_load(spec: LoadSpec, *, tool: str = "auto") -> LoadResult:
    """Load ``spec.url``; ``tool`` is ``wrk``, ``httpx`` or ``auto`` (wrk when installed)."""
    _check_loopback(spec.url)
    if tool == "auto":
        tool = "wrk" if shutil.which("wrk") else "httpx"
    before = cpu_ticks()
    if tool == "wrk":
        result = _run_wrk(spec)
    elif tool == "httpx":
        result = asyncio.run(_run_httpx(spec))
    else:
        raise ValueError(f"unknown load tool {tool!r}")
    result.steal_share = steal_between(before, cpu_ticks())
    return result


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs since boot, from the first line of /proc/stat
    (``cpu user nice system idle iowait irq softirq steal ...``; guest time is already counted
    in user), or None where there is no such file or line."""
    try:
        with stat.open("rb") as file:
            fields = file.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != b"cpu":
        return None
    ticks = [int(value) for value in fields[1:9]]
    return ticks[7], sum(ticks)


def steal_between(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the CPU time between two ``cpu_ticks`` readings that went to other guests."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 4)


def most_steal(shares: Iterable[float | None]) -> float | None:
    """The largest of some runs' ``steal_share`` (None when none of them knows its own)."""
    known = [share for share in shares if share is not None]
    return max(known) if known else None


def steal_text(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


# -- wrk ---------------------------------------------------------------------------------------


def _lua_string(value: str) -> str:
    level = 1
    while f"]{'=' * level}]" in value:
        level += 1
    return f"[{'=' * level}[{value}]{'=' * level}]"


def _wrk_script(spec: LoadSpec) -> str:
    lines = [f"wrk.method = {_lua_string(spec.method)}"]
    lines += [
        f"wrk.headers[ {_lua_string(name)} ] = {_lua_string(value)}"
        for name, value in spec.headers.items()
    ]
    if spec.sequence is not None:
        lines += [
            "local paths = {" + ",".join(_lua_string(p) for p, _ in spec.sequence) + "}",
            "local bodies = {" + ",".join(_lua_string(b) for _, b in spec.sequence) + "}",
            "local n = 0",
            "exhausted = 0",
            "request = function()",
            "  n = n + 1",
            "  if n > #paths then",
            "    exhausted = 1",
            "    wrk.thread:stop()",
            "    n = #paths",
            "  end",
            "  return wrk.format(nil, paths[n], nil, bodies[n])",
            "end",
        ]
    elif spec.body_template is not None:
        mods = ", ".join(f"{{{_lua_string(k)}, {v}}}" for k, v in spec.vary.items())
        lines += [
            f"local template = {_lua_string(spec.body_template)}",
            f"local mods = {{{mods}}}",
            "local n = 0",
            "request = function()",
            "  n = n + 1",
            "  local body = template",
            "  for _, m in ipairs(mods) do",
            "    body = (string.gsub(body, m[1], tostring(n % m[2])))",
            "  end",
            "  return wrk.format(nil, nil, nil, body)",
            "end",
        ]
    # Exact figures (microseconds) and every error class, in one parseable line.
    lines += [
        "local threads = {}",
        "setup = function(thread) table.insert(threads, thread) end",
        "done = function(summary, latency, requests)",
        "  local e = summary.errors",
        "  local ran_out = 0",
        "  for _, t in ipairs(threads) do",
        "    if t:get('exhausted') == 1 then ran_out = 1 end",
        "  end",
        '  io.write(string.format("FU_RESULT %d %d %d %d %d %d %d %d %d %d\\n",',
        "    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),",
        "    e.connect, e.read, e.write, e.status, e.timeout, ran_out))",
        "end",
    ]
    return "\n".join(lines) + "\n"


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_DISTRIBUTION = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)


def parse_wrk_latency(output: str) -> dict[str, float]:
    """The ``--latency`` table (50/75/90/99 %) in milliseconds."""
    return {
        f"p{pct}": round(float(value) * _UNITS_MS[unit], 3)
        for pct, value, unit in _DISTRIBUTION.findall(output)
    }


def _run_wrk(spec: LoadSpec) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(spec))
    try:
        command = [
            "wrk",
            "-t1",  # one thread: the generator shares the 2 cores with the server (PERF.md §1)
            f"-c{spec.connections}",
            f"-d{max(1, round(spec.duration_s))}s",
            f"--timeout={max(1, round(spec.timeout_s))}s",
            "--latency",
            "-s",
            script.name,
            spec.url,
        ]
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=spec.duration_s + spec.timeout_s + 30,
            check=False,
        )
    finally:
        os.unlink(script.name)
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()}")
    match = re.search(r"^FU_RESULT ([\d ]+)$", completed.stdout, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no result line:\n{completed.stdout}")
    requests, duration_us, p50_us, p99_us, connect, read, write, status, timeouts, ran_out = map(
        int, match.group(1).split()
    )
    duration_s = duration_us / 1e6
    return LoadResult(
        tool="wrk",
        requests=requests,
        duration_s=round(duration_s, 3),
        rps=round(requests / duration_s, 1) if duration_s else 0.0,
        p50_ms=round(p50_us / 1000, 3),
        p99_ms=round(p99_us / 1000, 3),
        http_errors=status,  # wrk counts responses with status > 399 here
        socket_errors=connect + read + write + timeouts,
        latency_distribution_ms=parse_wrk_latency(completed.stdout),
        exhausted=bool(ran_out),
    )


# -- the fallback client -----------------------------------------------------------------------


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


async def _run_httpx(spec: LoadSpec) -> LoadResult:
    parts = urlsplit(spec.url)
    path = parts.path or "/"
    limits = httpx.Limits(
        max_connections=spec.connections, max_keepalive_connections=spec.connections
    )
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    numbers = itertools.count()
    async with httpx.AsyncClient(
        base_url=f"{parts.scheme}://{parts.netloc}",
        limits=limits,
        timeout=spec.timeout_s,
        headers=dict(spec.headers),
    ) as client:
        started = time.perf_counter()
        deadline = started + spec.duration_s

        exhausted = False

        async def connection() -> None:
            nonlocal errors, exhausted
            while time.perf_counter() < deadline and len(latencies) + errors < MAX_REQUESTS:
                n = next(numbers)
                target, body = path, spec.body(n)
                if spec.sequence is not None:
                    if n >= len(spec.sequence):
                        exhausted = True
                        return
                    target, body = spec.sequence[n]
                sent = time.perf_counter()
                try:
                    response = await client.request(
                        spec.method, target, content=body.encode() if body is not None else None
                    )
                except httpx.HTTPError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - sent)
                statuses[response.status_code] += 1

        await asyncio.gather(*(connection() for _ in range(spec.connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    distribution = {f"p{q}": round(_percentile(latencies, q) * 1000, 3) for q in (50, 75, 90, 99)}
    return LoadResult(
        tool="httpx",
        requests=len(latencies),
        duration_s=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=distribution["p50"],
        p99_ms=distribution["p99"],
        http_errors=sum(n for status, n in statuses.items() if status >= 400),
        socket_errors=errors,
        latency_distribution_ms=distribution,
        exhausted=exhausted,
    )


# -- set-up client -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    body: bytes | None = None


async def _keep_alive_connection(
    host: str,
    port: int,
    headers: bytes,
    calls: list[Call],
    cursor: Iterator[int],
    answers: list[tuple[int, bytes] | None],
    timeout_s: float,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in cursor:
            call = calls[i]
            body = call.body or b""
            head = f"{call.method} {call.path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode("latin-1") + headers + b"\r\n" + body)
            status_line = await asyncio.wait_for(reader.readline(), timeout_s)
            status = int(status_line.split(b" ", 2)[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answers[i] = (status, await reader.readexactly(length) if length else b"")
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


async def call_all(
    base_url: str,
    calls: list[Call],
    *,
    headers: Mapping[str, str],
    concurrency: int = 32,
    timeout_s: float = 30.0,
) -> list[tuple[int, bytes]]:
    """Send ``calls`` over ``concurrency`` keep-alive HTTP/1.1 connections; (status, body) each,
    in the order of ``calls``. For set-up only: it expects Content-Length bodies (no chunking),
    which is what Litestar sends for JSON."""
    _check_loopback(base_url)
    parts = urlsplit(base_url)
    host, port = parts.hostname or LOOPBACK, parts.port or 80
    fixed = {"Host": f"{host}:{port}", "Content-Type": "application/json", **headers}
    header_bytes = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
    answers: list[tuple[int, bytes] | None] = [None] * len(calls)
    cursor = iter(range(len(calls)))  # shared: each connection takes the next call
    await asyncio.gather(
        *(
            _keep_alive_connection(host, port, header_bytes, calls, cursor, answers, timeout_s)
            for _ in range(min(concurrency, len(calls)) or 1)
        )
    )
    done = [a for a in answers if a is not None]
    if len(done) != len(calls):
        raise RuntimeError(f"set-up: {len(calls) - len(done)} requests got no answer")
    return done
