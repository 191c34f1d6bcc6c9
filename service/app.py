"""The composition root: ``create_app(settings)`` builds everything; importing builds nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Server

from audit.integrator import BackgroundIntegrator
from audit.store import AuditStore
from service import __doc__ as service_doc
from service.auth import KeyCache, authentication_middleware
from service.context import ServiceContext
from service.data_keys import DataKeys
from service.db import batches_in_flight, create_engine
from service.errors import EXCEPTION_HANDLERS, database_unavailable
from service.flows import challenges, unlock
from service.gc_tuning import startup_heap_frozen
from service.http import JsonResponse, StrictJsonRequest, require_json_body
from service.keystore import KeyStore
from service.notice import load_shipped_notice
from service.observability import (
    Metrics,
    OperationsController,
    configure_logging,
    install_observability,
)
from service.outbox import OutboxDispatcher, WebhookConfig
from service.policy_source import load_configured_policy
from service.retention import RetentionJob, RetentionPeriods
from service.routes.accounts import AccountController, FaceNoticeController
from service.routes.audit import AuditController
from service.routes.deps import DEPENDENCIES
from service.routes.health import HealthController
from service.routes.policy import PolicyController
from service.routes.review import AppealController, ReviewCaseController
from service.routes.unlock_requests import UnlockRequestController
from service.schema import upgrade
from service.sealer import Sealer
from service.settings import Settings
from service.wiring import Adapters, build_adapters

API_TITLE = "FairUnlock"
API_VERSION = "1.0.0"


log = logging.getLogger("fairunlock")


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title=API_TITLE,
        version=API_VERSION,
        description=service_doc,
        servers=[Server(url="/")],
        use_handler_docstrings=True,
        # The spec and its viewers are the published contract: public, and marked so like every
        # other public route (the route-table walks in tests check each route's mark).
        openapi_router=Router(
            "/schema", route_handlers=[], include_in_schema=False, opt={"public": True}
        ),
    )


async def _refresh_gauges(metrics: Metrics, app: Litestar) -> None:
    """Gauges read from the database when /metrics is scraped: overdue cases, audit backlog."""
    from service.flows.review import overdue_count

    ctx: ServiceContext = app.state.ctx
    metrics.set_review_cases_overdue(await overdue_count(ctx))
    async with ctx.engine.connect() as conn:
        metrics.set_audit_backlog(await AuditStore(conn).backlog())


def create_app(  # noqa: PLR0915 - the composition root: it builds and starts every part
    settings: Settings, adapters: Adapters | None = None
) -> Litestar:
    """Build the app. ``adapters`` replaces the real SMS, OIDC and face adapters (tests)."""
    configure_logging(settings.log_level)
    metrics = Metrics()
    engine = create_engine(settings.resolved_database_url)
    # Keys load once per process, here: a production start without them fails naming the variable.
    keystore = KeyStore.load(settings)
    audit_signer = keystore.signer(settings.audit_origin)
    parties = adapters if adapters is not None else build_adapters(settings)
    # A policy that breaks a principle stops the start here, naming the rule.
    ctx = ServiceContext(
        settings=settings,
        engine=engine,
        policy=load_configured_policy(settings.policy_file),
        data_keys=DataKeys.from_keystore(keystore),
        signer=audit_signer,
        notice=load_shipped_notice(),
        oidc_providers=settings.oidc_providers,
        sealer=Sealer(keystore.master_key),
        sms=parties.sms,
        oidc=parties.oidc,
        face=parties.face,
        face_audiences=parties.face_audiences,
        # One decision batch at a time: they share the audit integration lock, and more in
        # flight made smaller batches (PostgreSQL, 2 workers: 1,098 -> 578 req/s with four).
        decisions=unlock.decision_batches(engine, observe=metrics.observe_batch),
        proofs=challenges.proof_batches(
            engine, concurrency=batches_in_flight(settings.resolved_database_url)
        ),
    )

    retention = RetentionJob(
        engine,
        RetentionPeriods.of(settings, ctx.policy),
        ctx.clock,
        interval=float(settings.retention_interval_s),
    )
    outbox = OutboxDispatcher(
        ctx, WebhookConfig.from_env(settings.adapter_env, production=settings.is_production)
    )

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        if not settings.is_production:
            # Development and tests migrate on start; production runs `fairunlock db upgrade`.
            try:
                await asyncio.to_thread(upgrade, settings.resolved_database_url)
            except Exception as exc:
                if not database_unavailable(exc):
                    raise
                # A worker respawned while the database is down must still start (and answer
                # 503 until it is back), or uvicorn stops the whole service; the schema was
                # migrated when the database was last reachable.
                log.warning("migration on start skipped: database unavailable (%s)", exc)
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
        outbox.start()
        retention.start()
        try:
            with startup_heap_frozen():  # gc: see service/gc_tuning.py
                yield
        finally:
            try:
                await retention.stop()
                await outbox.aclose()
                await integrator.stop()
            finally:
                try:
                    await parties.aclose()
                finally:
                    await engine.dispose()

    app = Litestar(
        route_handlers=[
            HealthController,
            OperationsController,
            AccountController,
            FaceNoticeController,
            UnlockRequestController,
            PolicyController,
            AuditController,
            ReviewCaseController,  # issue 6: human review
            AppealController,
        ],
        dependencies=DEPENDENCIES,
        before_request=require_json_body,
        middleware=[authentication_middleware()],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        # Our JSON, redacting handler stays: Litestar's default would replace the root handlers.
        logging_config=None,
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        request_class=StrictJsonRequest,
        response_class=JsonResponse,
        debug=False,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.keystore = keystore
    app.state.audit_signer = audit_signer
    app.state.data_keys = ctx.data_keys
    app.state.ctx = ctx
    app.state.outbox = outbox
    app.state.metrics = metrics
    app.state.key_cache = KeyCache()
    metrics.on_scrape(_refresh_gauges)
    install_observability(app, metrics)
    return app
