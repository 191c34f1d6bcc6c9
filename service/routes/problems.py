"""The problem+json body as the OpenAPI spec declares it, and per-route response declarations."""

from __future__ import annotations

from collections.abc import Mapping

from litestar.openapi import ResponseSpec
from msgspec import Struct

from service.errors import PROBLEM_JSON


class FieldError(Struct):
    field: str
    message: str


class Problem(Struct, omit_defaults=True, kw_only=True):
    """RFC 9457 problem details; ``code`` is stable, ``type`` is built from it."""

    type: str
    title: str
    status: int
    code: str
    detail: str
    errors: list[FieldError] | None = None


_DESCRIPTIONS = {
    400: "Invalid request (the body or a parameter; `errors` names each field)",
    401: "No or unknown API key",
    403: "The API key's role may not use this route",
    404: "Not found",
    409: "Conflicts with the current state",
    410: "Gone (personal data erased)",
    413: "Request body too large",
    415: "Unsupported media type (send application/json)",
    422: "Understood but not accepted",
    429: "Throttled; see Retry-After",
    503: "Service unavailable (code `database_unavailable` while the database is down); retry",
}
# Every guarded route reads its API key and its data from the database, so each can answer 503.
COMMON = (400, 401, 403, 503)


def problems(*statuses: int, described: Mapping[int, str] | None = None) -> dict[int, ResponseSpec]:
    """Declare these problem responses (plus the ones every guarded route can give); ``described``
    says what a status means on this route where the general description says too little."""
    said = {**_DESCRIPTIONS, **(described or {})}
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=said[status],
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in sorted({*COMMON, *statuses})
    }
