"""The composition root: ``create_app(settings)`` builds everything; importing builds nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Server

from audit.integrator import BackgroundIntegrator
from audit.store import create_schema
from service import __doc__ as service_doc
from service.auth import authentication_middleware
from service.data_keys import DataKeys
from service.db import create_engine
from service.errors import EXCEPTION_HANDLERS
from service.keystore import KeyStore
from service.routes.audit import AuditController
from service.routes.health import HealthController
from service.settings import Settings

API_TITLE = "FairUnlock"
API_VERSION = "1.0.0"


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title=API_TITLE,
        version=API_VERSION,
        description=service_doc,
        servers=[Server(url="/")],
        use_handler_docstrings=True,
        path="/schema",
    )


def create_app(settings: Settings) -> Litestar:
    engine = create_engine(settings.resolved_database_url)
    # Keys load once per process, here: a production start without them fails naming the variable.
    keystore = KeyStore.load(settings)
    audit_signer = keystore.signer(settings.audit_origin)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not settings.is_production:
            await create_schema(engine)  # no migrations for development databases yet
        # Every worker runs one; the database lock decides who integrates each batch.
        integrator = BackgroundIntegrator(
            engine,
            audit_signer,
            settings.audit_origin,
            batch_size=settings.audit_batch_size,
            interval=settings.audit_interval_ms / 1000,
        )
        if settings.audit_integrator:
            integrator.start()
        try:
            yield
        finally:
            try:
                await integrator.stop()
            finally:
                await engine.dispose()

    app = Litestar(
        route_handlers=[HealthController, AuditController],
        middleware=[authentication_middleware()],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        debug=False,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.keystore = keystore
    app.state.audit_signer = audit_signer
    app.state.data_keys = DataKeys.from_keystore(keystore)
    return app
