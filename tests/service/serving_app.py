"""A tiny app factory for tests/service/test_serving.py: it answers which process served it."""

from __future__ import annotations

import os

from litestar import Litestar, get


@get("/pid", sync_to_thread=False)
def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


def create_app() -> Litestar:
    return Litestar([pid])
