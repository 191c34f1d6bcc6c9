"""Every route in the app's route table: 401 without a key, 403 for a role it does not name, and
through the guard for each role it does (ASVS4-4.1.1, 4.1.3; STYLE.md habit 11)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar, get
from litestar.connection import ASGIConnection
from litestar.routes import HTTPRoute

from service.persistence.api_keys import Role
from tests.service.conftest import Api

PATH_VALUES = {
    "account_id": "acct-1",
    "request_id": "00000000-0000-0000-0000-000000000000",
    "provider": "gov-eid",
}


def _concrete(path: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return PATH_VALUES.get(name, "1")

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, path)


def _named_roles(app: Litestar) -> Iterator[tuple[str, str, frozenset[Role]]]:
    """(method, path template, the roles its guards name) of every guarded route."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"} or handler.opt.get("public"):
                continue
            roles: set[Role] = set()
            for guard in handler.resolve_guards():
                roles |= set(getattr(guard, "roles", ()))
            for method in handler.http_methods:
                yield method, route.path, frozenset(roles)


def _guarded_routes(app: Litestar) -> list[tuple[str, str, frozenset[Role]]]:
    out = []
    for method, path, roles in _named_roles(app):
        assert roles, f"{path} has a guard that names no role"
        out.append((method, _concrete(path), roles))
    return sorted(out, key=lambda r: (r[1], r[0]))


FRONTEND = frozenset({Role.FRONTEND})
# DESIGN.md's route table, outside review (test_review_authorization.py pins those): the matrix
# below proves each route enforces the roles its guard names; this pins which roles those are, so
# a guard widened or narrowed by mistake (say, erasure opened to the frontend) fails.
DESIGN_ROLES = {
    ("PUT", "/v1/accounts/{account_id:str}/phone"): FRONTEND,
    ("POST", "/v1/accounts/{account_id:str}/totp"): FRONTEND,
    ("POST", "/v1/accounts/{account_id:str}/totp/confirm"): FRONTEND,
    ("PUT", "/v1/accounts/{account_id:str}/linked-identities/{provider:str}"): FRONTEND,
    ("POST", "/v1/accounts/{account_id:str}/recovery-codes"): FRONTEND,
    ("GET", "/v1/face-consent/notice"): FRONTEND,
    ("PUT", "/v1/accounts/{account_id:str}/face-consent"): FRONTEND,
    ("DELETE", "/v1/accounts/{account_id:str}/face-consent"): FRONTEND,
    ("GET", "/v1/accounts/{account_id:str}/methods"): FRONTEND,
    ("GET", "/v1/accounts/{account_id:str}/decisions"): FRONTEND,
    ("DELETE", "/v1/accounts/{account_id:str}"): frozenset({Role.ADMIN}),
    ("POST", "/v1/unlock-requests"): FRONTEND,
    ("GET", "/v1/unlock-requests/{request_id:str}"): FRONTEND,
    ("POST", "/v1/unlock-requests/{request_id:str}/challenges"): FRONTEND,
    ("POST", "/v1/unlock-requests/{request_id:str}/challenges/{challenge_id:str}/verify"): (
        FRONTEND
    ),
    ("GET", "/v1/audit/checkpoint"): frozenset({Role.AUDITOR}),
    ("GET", "/v1/audit/entries"): frozenset({Role.AUDITOR}),
    ("GET", "/v1/audit/proofs/inclusion"): frozenset({Role.AUDITOR}),
    ("GET", "/v1/audit/proofs/consistency"): frozenset({Role.AUDITOR}),
    ("GET", "/v1/audit/public-key"): frozenset({Role.AUDITOR}),
    ("GET", "/v1/policy"): frozenset({Role.ADMIN, Role.AUDITOR}),
}


def test_every_guarded_route_names_the_roles_of_the_design(sqlite_api: Api) -> None:
    from tests.service.test_review_authorization import EXPECTED as REVIEW_ROLES

    named = {(method, path): roles for method, path, roles in _named_roles(sqlite_api.app)}
    assert named == DESIGN_ROLES | REVIEW_ROLES


def _call(api: Api, method: str, path: str, role: Role | None) -> Any:
    body: dict[str, Any] | None = {} if method in {"POST", "PUT", "PATCH"} else None
    return api.client.request(method, path, json=body, headers=api.headers(role))


def _check_role_matrix(api: Api) -> None:
    routes = _guarded_routes(api.app)
    assert len(routes) >= 15, routes
    for method, path, allowed in routes:
        anonymous = _call(api, method, path, None)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
        assert anonymous.json()["code"] == "unauthenticated"
        for role in Role:
            r = _call(api, method, path, role)
            if role in allowed:
                assert r.status_code not in (401, 403), (method, path, role, r.text)
            else:
                assert r.status_code == 403, (method, path, role, r.status_code)
                assert r.json()["code"] == "forbidden"


def test_role_matrix_over_the_whole_route_table(sqlite_api: Api) -> None:
    _check_role_matrix(sqlite_api)


async def _roleless_guard(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """A guard that names no role: it lets every authenticated caller through."""


@pytest.mark.parametrize("guards", [[], [_roleless_guard]], ids=["no guard", "roleless guard"])
def test_a_route_added_without_a_role_guard_fails_the_role_matrix(
    sqlite_api: Api, guards: list[Any]
) -> None:
    @get("/v1/added-later", guards=guards, sync_to_thread=False)
    def added_later() -> dict[str, str]:
        return {"ok": "yes"}

    sqlite_api.app.register(added_later)
    # Any key gets through such a route: it is in the route table and the matrix refuses it.
    r = _call(sqlite_api, "GET", "/v1/added-later", Role.AUDITOR)
    assert r.status_code == 200, r.text
    with pytest.raises(AssertionError, match="/v1/added-later"):
        _check_role_matrix(sqlite_api)


@pytest.mark.parametrize(
    "header",
    ["Bearer fu_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer", "fu_x", "Bearer " + "a" * 500],
)
def test_unknown_or_malformed_credentials_are_401(sqlite_api: Api, header: str) -> None:
    r = sqlite_api.client.get("/v1/accounts/acct-1/methods", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")


# Every public route, by name: a route marked public by mistake fails here. The /schema routes
# are the published OpenAPI document and its viewers (Litestar's, from app.openapi_config).
PUBLIC_ROUTES = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/schema",
    "/schema/elements",
    "/schema/oauth2-redirect.html",
    "/schema/openapi.json",
    "/schema/openapi.yaml",
    "/schema/openapi.yml",
    "/schema/rapidoc",
    "/schema/redoc",
    "/schema/swagger",
    "/schema/{path:str}",
}


def test_public_routes_are_exactly_health_metrics_and_the_openapi_document(
    sqlite_api: Api,
) -> None:
    public = {
        (method, route.path)
        for route in sqlite_api.app.routes
        if isinstance(route, HTTPRoute)
        for h in route.route_handlers
        if h.opt.get("public")
        for method in h.http_methods
        if method != "OPTIONS"
    }
    assert public == {("GET", path) for path in PUBLIC_ROUTES}
    for path in ("/health/live", "/schema/openapi.json"):
        assert sqlite_api.client.get(path).status_code == 200, path  # no key needed
