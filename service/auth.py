"""Bearer API-key authentication and role guards.

Every route handler either carries a guard from ``require_roles`` or is marked
``opt={"public": True}`` (which also exempts it from authentication); a test walks the route
table to prove it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from service.persistence.api_keys import ApiKeyRepository, Principal, Role

PUBLIC_OPT = "public"
MAX_KEY_LENGTH = 200

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


class ApiKeyAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented or len(presented) > MAX_KEY_LENGTH:
            raise NotAuthorizedException("Send an API key as 'Authorization: Bearer <key>'.")
        engine: AsyncEngine = connection.app.state.engine
        async with engine.connect() as conn:
            principal = await ApiKeyRepository(conn).find_active(presented)
        if principal is None:
            raise NotAuthorizedException("Unknown or revoked API key.")
        return AuthenticationResult(user=principal, auth=presented)


def authentication_middleware() -> DefineMiddleware:
    # The OpenAPI document describes the API to anyone who may call it; it carries no data.
    return DefineMiddleware(
        ApiKeyAuthenticationMiddleware, exclude_from_auth_key=PUBLIC_OPT, exclude=["^/schema"]
    )


def require_roles(*roles: Role) -> Guard:
    allowed = frozenset(roles)
    names = ", ".join(sorted(r.value for r in allowed))

    # Async so Litestar keeps the function itself (a sync guard gets wrapped), and with it `.roles`.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.scope.get("user")
        if not isinstance(principal, Principal):
            raise NotAuthorizedException("Authentication required.")
        if principal.role not in allowed:
            raise PermissionDeniedException(f"This route needs one of the roles: {names}.")

    guard.__name__ = f"require_roles({names})"
    guard.roles = allowed  # type: ignore[attr-defined]  # read by the route-table test
    return guard


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = connection.scope.get("user")
    if not isinstance(principal, Principal):
        raise NotAuthorizedException("Authentication required.")
    return principal
