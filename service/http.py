"""Edge checks that apply to every route before its handler runs."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def header(scope: Any, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case, as ASGI delivers names).

    Read straight from the scope: building Litestar's Headers object costs more than the few
    look-ups every request makes (auth, content type)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """A request with a body must declare it JSON: anything else is 415, not a parse error."""
    if request.method not in _BODY_METHODS:
        return
    scope = request.scope
    has_body = header(scope, b"content-length") not in {None, "", "0"} or (
        header(scope, b"transfer-encoding") is not None
    )
    if not has_body:
        return
    media_type = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise HTTPException(status_code=415, detail="Send the request body as application/json.")
