"""Serving an ASGI app factory under uvicorn, with each worker on a listening socket of its own.

uvicorn's supervisor binds one socket and every worker accepts from it. asyncio accepts up to a
backlog's worth of connections per wake-up, so whichever worker wakes first takes a burst of new
connections whole: measured with 2 workers and 32 keep-alive connections opened at once (wrk), one
worker served at 0.94 of a core and the other at 0.02, and the split varied from run to run
(0.65 / 0.82, 0.48 / 0.87). A client that keeps its connections (a frontend's pool, a load
generator) then gets one worker's throughput and latency, whatever the count.

Here every worker binds the address itself with ``SO_REUSEPORT``, after its app has started, and
the kernel spreads new connections over the workers' sockets by a hash of the connection's
addresses. uvicorn's supervisor is kept as it is (restarting a worker that died, signals, health
checks): it is handed a stand-in for the socket (``OwnListener``) that each spawned worker turns
into a socket of its own when it unpickles it. What it costs: connections queued on a worker's
socket and not yet accepted when that worker dies are reset (with one shared socket another worker
would take them); the others are unaffected, and a worker's replacement joins once its app has
started. ``SO_REUSEPORT`` lets only processes of the same user bind the port beside it (Linux).

``python -m service.serving FACTORY --host H --port P --workers N`` serves any app factory this
way (the benchmarks serve their trivial app like the service).
"""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_own(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``, not yet listening (uvicorn's server
    listens once its app has started, so no connection is routed to a worker still starting)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class OwnListener:
    """The supervisor's stand-in for the listening socket: pickled into each worker it starts,
    it unpickles there as that worker's own ``bind_own(host, port)``."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (bind_own, (self.host, self.port))


def _unusable(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be served, or None."""
    # A wildcard address is asked on loopback (not bound: S104 does not apply).
    probe = {"::": "::1", "0.0.0.0": "127.0.0.1"}.get(host, host)  # noqa: S104
    try:
        with socket.create_connection((probe, port), timeout=1.0):
            return "address already in use (a server answers there)"
    except OSError:
        pass
    try:
        bind_own(host, port).close()
    except OSError as exc:
        return str(exc)
    return None


def serve(
    app: str, *, host: str, port: int, workers: int, log_level: str, factory: bool = True
) -> None:
    """Serve the app ``app`` (an import string; a factory's unless ``factory`` is false) until
    stopped; with ``workers`` above one, each worker on its own ``SO_REUSEPORT`` socket."""
    if workers <= 1:
        uvicorn.run(
            app, factory=factory, host=host, port=port, log_level=log_level, access_log=False
        )
        return
    config = uvicorn.Config(
        app,
        factory=factory,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )
    # A port that cannot be bound fails here, once, with the reason (in a worker it would fail
    # before the app starts, and the supervisor would start it again and again). SO_REUSEPORT
    # would also let this start beside a running server of the same user and split its traffic:
    # a port that already accepts connections is refused as in use.
    problem = _unusable(host, port)
    if problem is not None:
        print(f"cannot listen on {host}:{port}: {problem}", file=sys.stderr)  # noqa: T201
        sys.exit(STARTUP_FAILURE)
    Multiprocess(config, sockets=[OwnListener(host, port)]).run()  # type: ignore[list-item]


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
