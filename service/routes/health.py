"""Liveness: public, answers while the process can serve HTTP at all."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import Controller, get


@dataclass(frozen=True, slots=True)
class Liveness:
    status: str


class HealthController(Controller):
    path = "/health"
    tags = ["operations"]  # noqa: RUF012 - Litestar reads this class attribute

    @get("/live", opt={"public": True}, summary="Liveness", operation_id="health_live")
    async def live(self) -> Liveness:
        return Liveness(status="ok")
