"""Unlock requests: create and read decisions (the challenges come with the methods issue)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get, post
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_201_CREATED

from service import dto
from service.auth import require_roles
from service.flows import unlock
from service.persistence.api_keys import Role
from service.routes.deps import Caller, Ctx
from service.routes.problems import problems

FRONTEND = [require_roles(Role.FRONTEND)]


class UnlockRequestController(Controller):
    path = "/v1/unlock-requests"
    tags = ["unlock requests"]  # noqa: RUF012 - Litestar reads this class attribute

    @post("/", guards=FRONTEND, status_code=HTTP_201_CREATED, responses=problems(413, 415))
    async def create(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.UnlockRequestIn],
        request: Request[Any, Any, Any],
    ) -> dto.DecisionOut:
        """Assess an unlock request; answer with the decision: risk, offer, explanation, review."""
        created = await unlock.create(ctx, principal.name, data)
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.record_decision(
                created.decision.risk.level, created.decision.status, created.offered_face
            )
        return created.decision

    @get("/{request_id:str}", guards=FRONTEND, responses=problems(404))
    async def read(
        self,
        ctx: Ctx,
        request_id: str = Parameter(pattern=r"^[0-9a-f-]{36}$", max_length=36),
    ) -> dto.DecisionOut:
        """Read a decision; `status` becomes `expired` once `expires_at` passes unverified."""
        return await unlock.get(ctx, request_id)
