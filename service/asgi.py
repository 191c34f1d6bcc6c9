"""ASGI entry point for uvicorn's ``--factory``: each worker reads settings from its environment."""

from __future__ import annotations

from litestar import Litestar

from service.app import create_app
from service.settings import Settings


def app_factory() -> Litestar:
    return create_app(Settings.from_env())
