"""The ceiling for the HTTP benchmark: Litestar with nothing behind its handlers.

``GET /hello`` is PERF.md §2's hello-world; ``POST /echo`` decodes and re-encodes a JSON body,
so an endpoint's ratio to it isolates the work the service does beyond HTTP and JSON.

    python -m service.serving bench.trivial_app:create_app --port 8001 [--workers N]
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, get, post
from litestar.params import JSONBody


@get("/hello", sync_to_thread=False)
def hello() -> dict[str, str]:
    return {"hello": "world"}


@post("/echo", sync_to_thread=False)
def echo(data: JSONBody[dict[str, Any]]) -> dict[str, Any]:
    return data


def create_app() -> Litestar:
    # Litestar's defaults, as in PERF.md; debug off like the service.
    return Litestar(route_handlers=[hello, echo], debug=False)
