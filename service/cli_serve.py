"""``fairunlock serve``: run the service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from service.db import is_sqlite
from service.observability import configure_logging
from service.settings import Settings, SettingsError

log = logging.getLogger("fairunlock")


def register(groups: Any) -> None:
    serve = groups.add_parser("serve", help="run the service")
    serve.add_argument(
        "--host", default=None, help="address to bind (default FAIRUNLOCK_HOST or 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port (default FAIRUNLOCK_PORT or 8000)"
    )
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default 1)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service import serving

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"fairunlock serve: {exc}", file=sys.stderr)
        return 2
    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    workers = args.workers or settings.workers
    # Workers re-read the environment; pass the effective values on so they agree with this process.
    os.environ["FAIRUNLOCK_HOST"] = host
    os.environ["FAIRUNLOCK_PORT"] = str(port)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if workers > 1 and is_sqlite(settings.resolved_database_url):
        # Measured on the unlock route (bench_http, 32 connections): 2 workers on SQLite answer
        # ~1.4x what 1 does, but every decision batch waits for the one write lock, so more
        # workers add less and less. Allowed, but not silently.
        configure_logging(settings.log_level)
        log.warning(
            "SQLite has one writer: workers take turns at its write lock, so more of them add "
            "little throughput; set FAIRUNLOCK_DATABASE_URL to PostgreSQL to scale out",
            extra={"workers": workers},
        )
    serving.serve(
        "service.asgi:app_factory",
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
    )
    return 0
