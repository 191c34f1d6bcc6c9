"""Edge checks that apply to every route before its handler runs, and the app's response class."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import URL, Cookie, MutableScopeHeaders
from litestar.enums import MediaType
from litestar.exceptions import HTTPException, ValidationException
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK
from litestar.types import TypeEncodersMap
from litestar.types.empty import Empty
from litestar.utils.helpers import get_enum_string_value

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.background_tasks import BackgroundTask, BackgroundTasks

T = TypeVar("T")

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def header(scope: Any, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case, as ASGI delivers names).

    Read straight from the scope: building Litestar's Headers object costs more than the few
    look-ups every request makes (auth, content type)."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def state_item(app: Litestar, name: str) -> Any:
    """``getattr(app.state, name, None)`` read as an item. Litestar's State answers an attribute
    through ``__getattr__`` only after the instance's own look-up has failed and formatted an
    AttributeError (0.35 against 0.05 µs); the routes every request takes read three."""
    try:
        return app.state[name]
    except KeyError:
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


# Where msgspec says the offending value sits ("... - at `$.context.geo.lat`"), as Litestar reads
# it for its own validation errors (litestar/_signature/model.py, ERR_RE).
_AT_PATH = re.compile(r"`\$\.(.+)`$")


_UNTYPED: Final = msgspec.json.Decoder().decode


@functools.cache
def _strict_decoder(annotation: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(annotation, strict=True)


class StrictJsonRequest(Request[Any, Any, Any]):
    """Litestar's Request, with a JSON body decoded strictly into the route's ``data`` type.

    Litestar decodes the body to plain JSON values and converts them with ``strict=False``, which
    turns the string "true" and the number 1 into True, "31.2" into a float and a number into a
    datetime: a consent given as ``"accepted": "true"`` would count as given, and a malformed
    field would pass as another value. Here the body is decoded into the declared type with
    ``strict=True`` (each value must already be of its type), and the typed value is what
    Litestar's conversion then meets: an instance of the declared type, passed through as it is.
    A value of the wrong type is the same ValidationException Litestar raises for a missing
    field (key, message, source), so the error map answers it alike; JSON that does not parse
    (or nests too deep) takes Litestar's own way, also when a wrong value comes before the fault."""

    async def json(self) -> Any:
        data = self.route_handler.parsed_data_field
        if data is None or self._json is not Empty:
            return await super().json()
        if (cached := self._connection_state.json) is not Empty:
            self._json = cached
            return cached
        body = await self.body()
        try:
            value = _strict_decoder(data.annotation).decode(body or b"null")
        except msgspec.ValidationError as exc:
            # The typed decoder stops at the first value it cannot take, which may come before a
            # syntax error further on: a body that is not JSON at all is said to be that first.
            try:
                _UNTYPED(body or b"null")
            except (msgspec.DecodeError, RecursionError):
                return await super().json()  # Litestar's error for JSON that does not parse
            raise self._invalid(str(exc)) from None
        except msgspec.DecodeError:
            return await super().json()  # not JSON: Litestar's error, as for any route
        self._json = self._connection_state.json = value
        return value

    def _invalid(self, text: str) -> ValidationException:
        at = _AT_PATH.search(text)
        where = URL.from_components(path=self.url.path, query=self.url.query)
        return ValidationException(
            detail=f"Validation failed for {self.method} {where}",
            extra=[
                {
                    "message": text.split(" - ", maxsplit=1)[0],
                    "key": at.group(1) if at else "data",
                    "source": "body",
                }
            ],
        )


class EncodedJson(ASGIResponse):
    """Litestar's ASGIResponse for JSON already encoded, built as its constructor would build it
    for these arguments (a content-type and a content-length header) without the general case's
    header merging: it sends the same messages."""

    __slots__ = ()

    def __init__(self, body: bytes, status: int) -> None:
        self.headers = MutableScopeHeaders(
            {
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode("latin-1")),
                ]
            }
        )
        self.background = None
        self.body = body
        self.content_length = len(body)
        self._encoded_cookies = ()
        self.encoding = "utf-8"
        self.is_head_response = False
        self.status_code = status


# msgspec calls Litestar's serializer (the type encoders of the app and the route: the pydantic
# plugin adds some to every route) only for what it cannot encode itself. Content it encodes
# without one is therefore written as Litestar writes it; content that needs one raises here and
# takes Litestar's way.
_JSON: Final = msgspec.json.Encoder()
_BODY_STATUSES: Final = frozenset({200, 201, 202})


class JsonResponse(Response[T]):
    """Litestar's Response (the app's response class) answering a route's JSON data with less
    machinery: Response.to_asgi_response merges headers, cookies and type encoders, renders, and
    builds an ASGIResponse. With no headers, cookies or background task to add, JSON content
    msgspec encodes by itself is the same messages (tests/service/test_http.py compares them);
    anything else takes Litestar's way."""

    def to_asgi_response(
        self,
        app: Litestar | None,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        status = self.status_code or status_code or HTTP_200_OK
        plain = not (
            app is not None
            or background is not None
            or self.background is not None
            or cookies
            or self.cookies
            or encoded_headers
            or headers
            or self.headers
            or is_head_response
            or self.encoding != "utf-8"
            or status not in _BODY_STATUSES
            or get_enum_string_value(self.media_type or media_type or MediaType.JSON)
            != MediaType.JSON
            or isinstance(self.content, bytes | str)
            or self.content is Empty
        )
        if plain:
            try:
                return EncodedJson(_JSON.encode(self.content), status)
            except (TypeError, ValueError, msgspec.EncodeError):
                pass  # a type only a type encoder knows, or text UTF-8 cannot hold: Litestar's way
        return super().to_asgi_response(
            app,
            request,
            background=background,
            cookies=cookies,
            encoded_headers=encoded_headers,
            headers=headers,
            is_head_response=is_head_response,
            media_type=media_type,
            status_code=status_code,
            type_encoders=type_encoders,
        )
