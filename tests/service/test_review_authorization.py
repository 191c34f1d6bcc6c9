"""Who may use each review route (issue 6; ASVS4-4.1.1): the console is for agents and
supervisors, a second approval and a reveal for supervisors only, the appeal routes for the
frontend. test_authorization.py proves every route enforces its guard; this pins which roles the
review routes name, so widening one (say, letting agents confirm) fails here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from litestar.routes import HTTPRoute

from service import review_dto as rdto
from service.flows import review
from service.persistence.api_keys import Role
from service.policy_source import load_default_policy
from tests.service.conftest import Api

REVIEWERS = frozenset({Role.AGENT, Role.SUPERVISOR})
EXPECTED = {
    ("GET", "/v1/review-cases"): REVIEWERS,
    ("GET", "/v1/review-cases/{case_id:str}"): REVIEWERS,
    ("POST", "/v1/review-cases/{case_id:str}/claim"): REVIEWERS,
    ("POST", "/v1/review-cases/{case_id:str}/release"): REVIEWERS,
    ("POST", "/v1/review-cases/{case_id:str}/decision"): REVIEWERS,
    ("POST", "/v1/review-cases/{case_id:str}/confirmation"): frozenset({Role.SUPERVISOR}),
    ("POST", "/v1/review-cases/{case_id:str}/reveal"): frozenset({Role.SUPERVISOR}),
    ("POST", "/v1/unlock-requests/{request_id:str}/appeals"): frozenset({Role.FRONTEND}),
    ("GET", "/v1/unlock-requests/{request_id:str}/appeals/{case_id:str}"): frozenset(
        {Role.FRONTEND}
    ),
}


def test_review_routes_name_exactly_their_roles(sqlite_api: Api) -> None:
    found = {}
    for route in sqlite_api.app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        if not route.path.startswith("/v1/review-cases") and "/appeals" not in route.path:
            continue
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"}:
                continue
            roles: set[Role] = set()
            for guard in handler.resolve_guards():
                roles |= set(getattr(guard, "roles", ()))
            for method in handler.http_methods:
                found[(method, route.path)] = frozenset(roles)
    assert found == EXPECTED


@pytest.mark.parametrize("role", [Role.FRONTEND, Role.AUDITOR, Role.ADMIN])
def test_people_outside_the_console_cannot_read_the_queue(sqlite_api: Api, role: Role) -> None:
    r = sqlite_api.client.get("/v1/review-cases", headers=sqlite_api.headers(role))
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("risk", "origin", "waited_h", "reopened", "priority"),
    [
        ("low", "appeal", 0, False, "low"),
        ("medium", "appeal", 0, False, "normal"),
        ("medium", "face_check_failed", 0, False, "high"),
        ("medium", "appeal", 30, False, "high"),
        ("high", "appeal", 0, False, "high"),
        ("critical", "risk_level", 0, False, "high"),
        ("critical", "no_usable_method", 30, True, "urgent"),  # never past the most urgent
        ("low", "repeated_failures", 0, True, "normal"),
    ],
)
def test_sla_priority_table(
    risk: str, origin: str, waited_h: int, reopened: bool, priority: str
) -> None:
    sla = load_default_policy().review
    got = review.priority_for(sla, risk, origin, timedelta(hours=waited_h), reopened=reopened)
    assert got == priority
    now = datetime(2026, 11, 22, tzinfo=UTC)
    assert review.due_at(sla, got, now) - now == timedelta(hours=sla.sla_hours[got])


def test_every_origin_has_an_escalation_reason_from_the_nist_list() -> None:
    allowed = {"automated_failure", "applicant_request", "exception_policy"}
    assert set(review.ESCALATION_REASON.values()) <= allowed
    assert set(rdto.CODES_FOR) == set(rdto.Outcome)
