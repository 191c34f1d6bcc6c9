"""Serving an ASGI app factory under uvicorn, with each worker on a listening socket of its own.

uvicorn's supervisor binds one socket and every worker accepts from it. asyncio accepts up to a
backlog's worth of connections per wake-up, so whichever worker wakes first takes a burst of new
connections whole: measured with 2 workers and 32 keep-alive connections opened at once (wrk), one
worker served at 0.94 of a core and the other at 0.02, and the split varied from run to run
(0.65 / 0.82, 0.48 / 0.87). A client that keeps its connections (a frontend's pool, a load
generator) then gets one worker's throughput and latency, whatever the count.

Here (Linux, more than one worker) every worker binds the address itself with ``SO_REUSEPORT``
and listens once its app has started, and the kernel spreads new connections over the workers'
sockets by a hash of the connection's addresses. uvicorn's supervisor is kept as it is
(restarting a worker that died, signals, health checks): it is handed a stand-in for the socket
(``OwnListener``) that each spawned worker turns into a socket of its own when it unpickles it.
The supervisor holds the address for its whole life, bound but not listening (so it receives no
connection): with every worker dead at once, nothing else can take the port meanwhile. A
second server on the same port is refused while this one runs (an abstract UNIX socket named
after the port, which the kernel releases with the process), as is a port that already answers.

What it costs: connections queued on a worker's socket and not yet accepted when that worker
stops (it died, or a graceful restart retired it) are reset, where with one shared socket
another worker would have taken them; Linux 5.14 and later hand them to the other workers when
``net.ipv4.tcp_migrate_req=1`` is set. A worker whose bind fails stops the whole server
(uvicorn's start-up failure) rather than being restarted for ever.

``python -m service.serving FACTORY --host H --port P --workers N`` serves any app factory this
way (the benchmarks serve their trivial app exactly as ``fairunlock serve`` serves the service).
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess

# Abstract UNIX socket names live in the network namespace and vanish with their process.
_INSTANCE_LOCK = "\0fairunlock.serving.port.{port}"


def listening_sockets(port: int) -> set[int] | None:
    """The inodes of the TCP sockets listening on ``port`` (Linux's /proc/net/tcp and tcp6):
    one per worker that serves. None where the kernel has no such tables."""
    found, inodes = False, set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                rows = list(lines)[1:]
        except FileNotFoundError:
            continue
        found = True
        for row in rows:
            fields = row.split()  # sl, local address:port (hex), remote, state (0A: LISTEN), ...
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    return inodes if found else None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_own(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``, not yet listening (uvicorn's server
    listens once its app has started, so no connection is routed to a worker still starting).
    The protocol is named: asyncio's own loop sets TCP_NODELAY only on connections of sockets
    whose ``proto`` is IPPROTO_TCP, and uvicorn's socket.socket(AF_INET) left Nagle's delay on
    (answers ~40 ms late without uvloop, bench_http.server_stack)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_own_in_worker(host: str, port: int) -> socket.socket:
    """``bind_own`` in a worker being started: a failure ends it as a failed start, which stops
    the supervisor (restarting it would fail the same way)."""
    try:
        return bind_own(host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(STARTUP_FAILURE)


class OwnListener:
    """The supervisor's stand-in for the listening socket: pickled into each worker it starts,
    it unpickles there as that worker's own ``bind_own_in_worker(host, port)``."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (bind_own_in_worker, (self.host, self.port))


def claim(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """Everything this server holds for ``host:port`` while it runs: the instance lock and the
    address, bound but not listening. OSError (the message says why) when the port is taken:
    another server of ours on it, a server that answers there, or an address that cannot be
    bound."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(_INSTANCE_LOCK.format(port=port))
    except OSError:
        lock.close()
        raise OSError(f"another server of this kind already serves port {port}") from None
    try:
        # A wildcard address is asked on loopback (not bound: S104 does not apply).
        probe = {"::": "::1", "0.0.0.0": "127.0.0.1"}.get(host, host)  # noqa: S104
        try:
            socket.create_connection((probe, port), timeout=1.0).close()
        except OSError:
            pass  # nothing answers there
        else:
            raise OSError("address already in use (a server answers there)")
        return lock, bind_own(host, port)
    except BaseException:
        lock.close()
        raise


def serve(
    app: str, *, host: str, port: int, workers: int, log_level: str, factory: bool = True
) -> None:
    """Serve the app ``app`` (an import string; a factory's unless ``factory`` is false) until
    stopped; with ``workers`` above one (on Linux), each worker on its own ``SO_REUSEPORT``
    socket."""
    options: dict[str, Any] = {
        "factory": factory,
        "host": host,
        "port": port,
        "workers": workers,
        "log_level": log_level,
        "access_log": False,
    }
    if workers <= 1 or not sys.platform.startswith("linux"):
        uvicorn.run(app, **options)
        return
    config = uvicorn.Config(app, **options)
    # A port that cannot be served fails here, once, with the reason.
    try:
        held = claim(host, port)
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc}", file=sys.stderr)  # noqa: T201
        sys.exit(STARTUP_FAILURE)
    try:
        Multiprocess(config, sockets=[OwnListener(host, port)]).run()  # type: ignore[list-item]
    finally:
        for sock in held:
            sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.serving", description=__doc__)
    parser.add_argument("app", help="module:factory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    serve(args.app, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)


if __name__ == "__main__":
    main()
