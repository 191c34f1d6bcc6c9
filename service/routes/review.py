"""Human review over HTTP (issue 6): the escalation console (agents and supervisors) and the
person's appeal routes (the frontend)."""

from __future__ import annotations

from typing import Any, Literal

from litestar import Controller, Request, Response
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from service import review_dto as rdto
from service.auth import require_roles
from service.context import ServiceContext
from service.dto import SINGLE_LINE
from service.flows import review
from service.http import state_item
from service.persistence.api_keys import Role
from service.persistence.review_cases import QueueFilter
from service.routes.deps import Caller, Ctx
from service.routes.handlers import get, post
from service.routes.problems import problems

REVIEWERS = [require_roles(Role.AGENT, Role.SUPERVISOR)]
SUPERVISORS = [require_roles(Role.SUPERVISOR)]
FRONTEND = [require_roles(Role.FRONTEND)]
_UUID = r"^[0-9a-f-]{36}$"
CaseIdParam = Parameter(pattern=_UUID, max_length=36, description="Review case id")
RequestIdParam = Parameter(pattern=_UUID, max_length=36, description="Unlock request id")


async def _refresh_overdue(ctx: ServiceContext, request: Request[Any, Any, Any]) -> None:
    # The gauge is refreshed whenever the console reads or changes the queue.
    metrics = state_item(request.app, "metrics")
    if metrics is not None:
        metrics.set_review_cases_overdue(await review.overdue_count(ctx))


class ReviewCaseController(Controller):
    path = "/v1/review-cases"
    tags = ["review"]  # noqa: RUF012 - Litestar reads this class attribute

    @get("/", guards=REVIEWERS, responses=problems())
    async def list_cases(
        self,
        ctx: Ctx,
        request: Request[Any, Any, Any],
        status: Literal["open", "claimed", "awaiting_person", "awaiting_confirmation", "closed"]
        | None = Parameter(default=None),
        priority: Literal["urgent", "high", "normal", "low"] | None = Parameter(default=None),
        overdue: bool | None = Parameter(default=None),
        assignee: str | None = Parameter(default=None, max_length=128, pattern=SINGLE_LINE),
        origin: Literal[
            "appeal", "risk_level", "no_usable_method", "face_check_failed", "repeated_failures"
        ]
        | None = Parameter(default=None),
        cursor: str | None = Parameter(default=None, max_length=256, pattern=SINGLE_LINE),
        limit: int = Parameter(default=50, ge=1, le=review.MAX_PAGE),
    ) -> rdto.CasePageOut:
        """The queue, soonest due first; `next_cursor` fetches the next page. A lapsed claim
        counts as `open`; `overdue` cases wait on a reviewer past their SLA due time."""
        page = await review.queue(
            ctx,
            QueueFilter(
                status=status,
                priority=priority,
                overdue=overdue,
                assignee=assignee,
                origin=origin,
            ),
            cursor,
            limit,
        )
        await _refresh_overdue(ctx, request)
        return page

    @get("/{case_id:str}", guards=REVIEWERS, responses=problems(404))
    async def read(self, ctx: Ctx, case_id: str = CaseIdParam) -> rdto.CaseDetailOut:
        """The case with its timeline (request, decision with the full score breakdown and policy
        version, challenges, attempts, consents, its actions, earlier cases) and masked
        evidence."""
        return await review.detail(ctx, case_id)

    @post(
        "/{case_id:str}/claim",
        guards=REVIEWERS,
        status_code=HTTP_200_OK,
        responses=problems(404, 409),
    )
    async def claim(
        self,
        ctx: Ctx,
        principal: Caller,
        request: Request[Any, Any, Any],
        case_id: str = CaseIdParam,
    ) -> rdto.CaseSummaryOut:
        """Claim the case (no body): one reviewer at a time, until the claim lapses."""
        out = await review.claim(ctx, principal.name, case_id)
        await _refresh_overdue(ctx, request)
        return out

    @post(
        "/{case_id:str}/release",
        guards=REVIEWERS,
        status_code=HTTP_200_OK,
        responses=problems(404, 409, 413, 415),
    )
    async def release(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[rdto.ReleaseIn],
        request: Request[Any, Any, Any],
        case_id: str = CaseIdParam,
    ) -> rdto.CaseSummaryOut:
        """Give one's claim back to the queue, with a reason."""
        out = await review.release(ctx, principal.name, case_id, data)
        await _refresh_overdue(ctx, request)
        return out

    @post(
        "/{case_id:str}/decision",
        guards=REVIEWERS,
        status_code=HTTP_200_OK,
        responses=problems(404, 409, 410, 413, 415),
    )
    async def decide(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[rdto.DecisionIn],
        request: Request[Any, Any, Any],
        case_id: str = CaseIdParam,
    ) -> rdto.CaseSummaryOut:
        """Decide a case one holds: `approve`, `deny` or `need_more_info`, with a reason code
        from the outcome's list and a reason. Approvals at high or critical risk then await a
        supervisor's confirmation."""
        out = await review.decide(ctx, principal.name, case_id, data)
        await _refresh_overdue(ctx, request)
        return out

    @post(
        "/{case_id:str}/confirmation",
        guards=SUPERVISORS,
        status_code=HTTP_200_OK,
        responses=problems(404, 409, 410, 413, 415),
    )
    async def confirm(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[rdto.ConfirmationIn],
        request: Request[Any, Any, Any],
        case_id: str = CaseIdParam,
    ) -> rdto.CaseSummaryOut:
        """Second reviewer (a supervisor, not the one who approved): agree, and the request is
        approved; disagree, and the case goes back to the queue."""
        out = await review.confirm(ctx, principal.name, case_id, data)
        await _refresh_overdue(ctx, request)
        return out

    @post(
        "/{case_id:str}/reveal",
        guards=SUPERVISORS,
        status_code=HTTP_200_OK,
        responses=problems(404, 409, 410, 413, 415),
    )
    async def reveal(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[rdto.RevealIn],
        case_id: str = CaseIdParam,
    ) -> rdto.RevealOut:
        """Show one masked value in clear (`phone`, `ip`, `device_id`); audited with the reason."""
        return await review.reveal(ctx, principal.name, case_id, data)


class AppealController(Controller):
    path = "/v1/unlock-requests/{request_id:str}/appeals"
    tags = ["review"]  # noqa: RUF012 - Litestar reads this class attribute

    @post(
        "/",
        guards=FRONTEND,
        status_code=HTTP_201_CREATED,
        responses={
            HTTP_200_OK: ResponseSpec(
                data_container=rdto.AppealOut,
                description="A case is already active for the request: that case",
            ),
            **problems(404, 409, 410, 413, 415),
        },
    )
    async def appeal(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[rdto.AppealIn],
        request_id: str = RequestIdParam,
    ) -> Response[rdto.AppealOut]:
        """Ask a person to review (201), or, with a case already active, get it (200); a
        statement sent while a reviewer waits on the person is their answer and reopens it."""
        out, created = await review.appeal(ctx, principal.name, request_id, data)
        return Response(out, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @get("/{case_id:str}", guards=FRONTEND, responses=problems(404))
    async def status(
        self,
        ctx: Ctx,
        request_id: str = RequestIdParam,
        case_id: str = CaseIdParam,
    ) -> rdto.AppealOut:
        """Where the case stands, what is asked, the outcome explained in the request's locale,
        and how to contest."""
        return await review.appeal_status(ctx, request_id, case_id)
