"""Unlock requests: decisions, and the challenges and proofs that satisfy their offers."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service import dto
from service.auth import principal_of, require_roles
from service.flows import challenges, unlock
from service.http import state_item
from service.persistence.api_keys import Role
from service.routes.deps import Caller, Ctx
from service.routes.handlers import get, post
from service.routes.problems import problems

FRONTEND = [require_roles(Role.FRONTEND)]
RequestIdParam = Parameter(
    pattern=r"^[0-9a-f-]{36}$", max_length=36, description="Unlock request id"
)


class UnlockRequestController(Controller):
    path = "/v1/unlock-requests"
    tags = ["unlock requests"]  # noqa: RUF012 - Litestar reads this class attribute

    @post("/", guards=FRONTEND, status_code=HTTP_201_CREATED, responses=problems(413, 415))
    async def create(
        self, data: JSONBody[dto.UnlockRequestIn], request: Request[Any, Any, Any]
    ) -> dto.DecisionOut:
        """Assess an unlock request; answer with the decision: risk, offer, explanation, review."""
        # The busiest route reads the context and the caller itself, as the `ctx` and
        # `principal` providers would (routes/deps.py): resolving them cost ~5 % of a decision.
        app = request.app
        created = await unlock.create(state_item(app, "ctx"), principal_of(request).name, data)
        metrics = state_item(app, "metrics")
        if metrics is not None:
            metrics.record_decision(
                created.decision.risk.level, created.decision.status, created.offered_face
            )
        return created.decision

    @get("/{request_id:str}", guards=FRONTEND, responses=problems(404))
    async def read(
        self,
        ctx: Ctx,
        request_id: str = RequestIdParam,
    ) -> dto.DecisionOut:
        """Read a decision; `status` becomes `expired` once `expires_at` passes unverified."""
        return await unlock.get(ctx, request_id)

    @post(
        "/{request_id:str}/challenges",
        guards=FRONTEND,
        status_code=HTTP_201_CREATED,
        responses=problems(404, 409, 413, 415, 429, 503),
    )
    async def start_challenge(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.ChallengeIn],
        request_id: str = RequestIdParam,
    ) -> dto.ChallengeOut:
        """Start an offered method: SMS sends a code (asking again resends), OIDC returns the
        authorization URL, face a provider session; TOTP and recovery codes need nothing sent."""
        return await challenges.start(ctx, principal.name, request_id, data.method, data.provider)

    @post(
        "/{request_id:str}/challenges/{challenge_id:str}/verify",
        guards=FRONTEND,
        status_code=HTTP_200_OK,
        responses=problems(404, 409, 413, 415, 422, 429),
    )
    async def verify(
        self,
        data: JSONBody[dto.VerifyIn],
        request: Request[Any, Any, Any],
        request_id: str = RequestIdParam,
        challenge_id: str = Parameter(pattern=r"^[0-9a-f-]{36}$", max_length=36),
    ) -> dto.DecisionOut:
        """Submit the proof. Accepted: the updated decision (`factors_satisfied`, `status`).
        Rejected: 422 with `reason` and `attempts_left`; throttled: 429 with Retry-After."""
        # A hot route too: the context and the caller read as in create().
        ctx = state_item(request.app, "ctx")
        return await challenges.verify(
            ctx, principal_of(request).name, request_id, challenge_id, data
        )
