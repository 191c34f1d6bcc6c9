"""Edge checks that apply to every route before its handler runs."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """A request with a body must declare it JSON: anything else is 415, not a parse error."""
    if request.method not in _BODY_METHODS:
        return
    has_body = request.headers.get("content-length", "0") not in {"", "0"} or (
        "transfer-encoding" in request.headers
    )
    if not has_body:
        return
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="Send the request body as application/json.")
