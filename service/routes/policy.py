"""The active policy, for administrators and auditors."""

from __future__ import annotations

from typing import Any

from litestar import Controller

from service import dto
from service.auth import require_roles
from service.persistence.api_keys import Role
from service.routes.deps import Ctx
from service.routes.handlers import get
from service.routes.problems import problems


class PolicyController(Controller):
    path = "/v1/policy"
    tags = ["policy"]  # noqa: RUF012 - Litestar reads this class attribute

    @get("/", guards=[require_roles(Role.ADMIN, Role.AUDITOR)], responses=problems())
    async def active(self, ctx: Ctx) -> dto.PolicyOut:
        """The active policy and catalogs, its version and the SHA-256 of their canonical form."""
        document: dict[str, Any] = dict(ctx.policy.document)
        return dto.PolicyOut(
            version=ctx.policy.version, sha256=ctx.policy.sha256, document=document
        )
