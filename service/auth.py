"""Bearer API-key authentication and role guards.

Every route handler either carries a guard from ``require_roles`` or is marked
``opt={"public": True}`` (which also exempts it from authentication); a test walks the route
table to prove it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from service.http import header, state_item
from service.persistence.api_keys import ApiKeyRepository, Principal, Role, key_digest

PUBLIC_OPT = "public"
MAX_KEY_LENGTH = 200
# A found key is remembered this long per worker: a revocation takes effect within it.
KEY_CACHE_SECONDS = 5.0
KEY_CACHE_SIZE = 1024


class KeyCache:
    """Per-worker memory of recently seen keys (by digest), to spare a database round trip per
    request. Only found keys are kept, so a wrong key always reaches the database (no negative
    cache an attacker could fill), and entries expire after a few seconds."""

    def __init__(self, ttl: float = KEY_CACHE_SECONDS, size: int = KEY_CACHE_SIZE) -> None:
        self._ttl = ttl
        self._size = size
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._loading: dict[bytes, asyncio.Future[Principal | None]] = {}

    def get(self, digest: bytes, now: float) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < now:
            return None
        return entry[1]

    async def load(
        self,
        digest: bytes,
        find: Callable[[], Awaitable[Principal | None]],
        now: float,
    ) -> Principal | None:
        """Look a key up once for all requests that present it while the look-up runs: when an
        entry expires under load, one query refreshes it instead of one per waiting request."""
        pending = self._loading.get(digest)
        if pending is None:
            pending = asyncio.ensure_future(find())
            self._loading[digest] = pending
            try:
                principal = await asyncio.shield(pending)
            finally:
                del self._loading[digest]
            if principal is not None:
                self.put(digest, principal, now)
            return principal
        return await asyncio.shield(pending)

    def put(self, digest: bytes, principal: Principal, now: float) -> None:
        if len(self._entries) >= self._size:
            self._entries.clear()  # simple bound; refilling costs one query per key
        self._entries[digest] = (now + self._ttl, principal)


Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]


class ApiKeyAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        authorization = header(connection.scope, b"authorization") or ""
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented or len(presented) > MAX_KEY_LENGTH:
            raise NotAuthorizedException("Send an API key as 'Authorization: Bearer <key>'.")
        # create_app installs the cache; an app built without one simply asks the database.
        cache: KeyCache | None = state_item(connection.app, "key_cache")
        digest = key_digest(presented)
        now = time.monotonic()
        principal = cache.get(digest, now) if cache is not None else None
        if principal is None:
            engine: AsyncEngine = connection.app.state.engine
            if cache is None:
                principal = await _find(engine, presented)
            else:
                principal = await cache.load(digest, lambda: _find(engine, presented), now)
            if principal is None:
                raise NotAuthorizedException("Unknown or revoked API key.")
        return AuthenticationResult(user=principal, auth=presented)


async def _find(engine: AsyncEngine, presented: str) -> Principal | None:
    async with engine.connect() as conn:
        return await ApiKeyRepository(conn).find_active(presented)


def authentication_middleware() -> DefineMiddleware:
    # Public routes are exempt by their mark alone (the OpenAPI routes carry it too, from their
    # router in app.openapi_config), so the route table says what is public, not a path list.
    return DefineMiddleware(ApiKeyAuthenticationMiddleware, exclude_from_auth_key=PUBLIC_OPT)


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
