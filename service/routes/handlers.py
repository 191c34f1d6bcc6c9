"""The route decorators of this service: Litestar's, with guards that get the handler itself.

Litestar runs each guard as ``guard(connection, copy(handler))``, so that a guard cannot change
the handler for later requests. A handler carries dozens of attributes: the copy cost 13 µs per
guard and request (measured on the unlock route; ~1.5 % of a decision served). The guards here
(``service.auth.require_roles``) read only the connection, so they get the handler as it is.
(Litestar deprecates subclassing its ``get``/``post`` classes; ``HTTPRouteHandler`` with a
method is what they build.)
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler


class GuardedRouteHandler(HTTPRouteHandler):
    # Litestar's middleware asks every handler ``getattr(handler, "is_mount", False)``; only its
    # ASGI mounts define it, and on another handler the failed look-up formats an AttributeError
    # (~3,500 instructions) on every request. A route handler is never a mount.
    is_mount = False

    async def authorize_connection(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        for guard in self.resolve_guards():
            await guard(connection, self)  # type: ignore[misc]  # made async by resolve_guards


def get(path: str | None = None, **kwargs: Any) -> GuardedRouteHandler:
    return GuardedRouteHandler(path, http_method=HttpMethod.GET, **kwargs)


def post(path: str | None = None, **kwargs: Any) -> GuardedRouteHandler:
    return GuardedRouteHandler(path, http_method=HttpMethod.POST, **kwargs)


def put(path: str | None = None, **kwargs: Any) -> GuardedRouteHandler:
    return GuardedRouteHandler(path, http_method=HttpMethod.PUT, **kwargs)


def delete(path: str | None = None, **kwargs: Any) -> GuardedRouteHandler:
    return GuardedRouteHandler(path, http_method=HttpMethod.DELETE, **kwargs)
