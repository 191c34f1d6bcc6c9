"""Dependency providers: the service context and the caller, from app state and the auth result."""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request
from litestar.di import NamedDependency, Provide

from service.auth import principal_of
from service.context import ServiceContext
from service.http import state_item
from service.persistence.api_keys import Principal


def _context(request: Request[Any, Any, Any]) -> ServiceContext:
    ctx: ServiceContext = state_item(request.app, "ctx")
    return ctx


def _principal(request: Request[Any, Any, Any], ctx: NamedDependency[ServiceContext]) -> Principal:
    # ``ctx`` is unused but orders the two providers: Litestar resolves providers of one level
    # concurrently in an anyio task group, which cost ~7 % of a decision's CPU (py-spy) for two
    # attribute reads. Dependent, they resolve one after the other with no task group.
    del ctx
    return principal_of(request)


DEPENDENCIES = {
    "ctx": Provide(_context, sync_to_thread=False),
    "principal": Provide(_principal, sync_to_thread=False),
}

# What handlers declare: `ctx: Ctx` and `principal: Caller` are injected by name.
Ctx: TypeAlias = NamedDependency[ServiceContext]
Caller: TypeAlias = NamedDependency[Principal]
