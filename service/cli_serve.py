"""``fairunlock serve``: run the service under uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

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
    import uvicorn

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
    uvicorn.run(
        "service.asgi:app_factory",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
    )
    return 0
