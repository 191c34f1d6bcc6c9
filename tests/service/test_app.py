"""The composition root and the HTTP edge: liveness, problem+json for every error, and every
route guarded or explicitly public (STYLE.md habit 11)."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from pathlib import Path

from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from audit.entry import AuditEvent, EntryKind
from audit.store import append_event_now
from service.app import create_app
from service.gc_tuning import YOUNG_THRESHOLD
from service.settings import Settings


def _app(tmp_path: Path) -> Litestar:
    return create_app(Settings(data_dir=tmp_path))


def test_create_app_builds_nothing_at_import_and_serves_liveness(tmp_path: Path) -> None:
    with TestClient(_app(tmp_path)) as client:
        response = client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_the_running_app_keeps_its_start_up_heap_out_of_gc_and_releases_it_on_stop(
    tmp_path: Path,
) -> None:
    # Full collections walking the start-up heap were the decision route's p99 (gc_tuning.py).
    app = _app(tmp_path)
    assert gc.get_freeze_count() == 0  # building the app freezes nothing; the lifespan does
    thresholds = gc.get_threshold()
    with TestClient(app) as client:
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
        assert client.get("/health/live").status_code == 200
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == thresholds


def test_unknown_route_is_problem_json(tmp_path: Path) -> None:
    with TestClient(_app(tmp_path)) as client:
        response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "not_found"
    assert body["status"] == 404
    assert body["type"].endswith("/not_found")


def test_wrong_method_is_problem_json(tmp_path: Path) -> None:
    with TestClient(_app(tmp_path)) as client:
        response = client.delete("/health/live")
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed"


def test_every_route_has_a_guard_or_is_marked_public(tmp_path: Path) -> None:
    app = _app(tmp_path)
    unguarded = []
    checked = 0
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"}:
                continue  # Litestar's own CORS pre-flight handler; it returns no data
            checked += 1
            if handler.opt.get("public") is True:
                continue
            if not handler.resolve_guards():
                unguarded.append(f"{sorted(handler.http_methods)} {route.path}")
    assert checked > 0
    assert not unguarded, f"routes without a guard or opt={{'public': True}}: {unguarded}"


def test_metrics_report_overdue_cases_and_the_audit_backlog(tmp_path: Path) -> None:
    # No integrator: an appended entry stays in the inbox, and the scrape must see it there.
    app = create_app(Settings(data_dir=tmp_path, audit_integrator=False))
    event = AuditEvent(EntryKind.EXPORT, "test", None, {}, datetime.now(UTC))
    with TestClient(app) as client:
        with client.portal() as portal:
            portal.call(append_event_now, app.state.engine, event)
        text = client.get("/metrics").text
    assert "fairunlock_audit_backlog 1.0" in text
    assert "fairunlock_review_cases_overdue 0.0" in text


def test_a_development_worker_starts_while_the_database_is_down_and_answers_503(
    tmp_path: Path,
) -> None:
    # A worker respawned during an outage must start (uvicorn stops the service otherwise).
    from litestar.testing import TestClient

    from service.app import create_app
    from tests.service.conftest import make_settings

    settings = make_settings(tmp_path, "postgresql+asyncpg://postgres@127.0.0.1:9/unreachable")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.headers["content-type"].startswith("application/problem+json")
