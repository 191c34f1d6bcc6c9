"""The app's response class (service/http.py): every answer is the one Litestar's Response makes."""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import Cookie
from litestar.exceptions import ImproperlyConfiguredException, SerializationException
from litestar.response.base import ASGIResponse
from litestar.testing import TestClient

from service import dto
from service.app import create_app
from service.http import EncodedJson, JsonResponse
from service.settings import Settings


class Colour(enum.Enum):
    RED = "red"


class Item(msgspec.Struct):
    name: str
    at: datetime
    colour: Colour
    tags: list[str]


def _messages(response: ASGIResponse) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    asyncio.run(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    return sent


def _request() -> Request[Any, Any, Any]:
    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"})  # type: ignore[arg-type]


def _both(content: Any, **kwargs: Any) -> tuple[ASGIResponse, ASGIResponse]:
    ours = JsonResponse(content, **kwargs).to_asgi_response(None, _request())
    litestars = Response(content, **kwargs).to_asgi_response(None, _request())
    return ours, litestars


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500)
@given(content=JSON_VALUES, status=st.sampled_from([200, 201, 202]))
def test_a_json_answer_sends_the_messages_litestars_response_sends(
    content: Any, status: int
) -> None:
    ours, litestars = _both(content, status_code=status)
    # A str is sent as it is, not as JSON text: Litestar's way (below).
    assert isinstance(ours, EncodedJson) is not isinstance(content, str)
    assert _messages(ours) == _messages(litestars)


def test_structs_datetimes_and_enums_encode_as_litestar_encodes_them() -> None:
    item = Item("a", datetime(2026, 12, 6, 7, 0, tzinfo=UTC), Colour.RED, ["x", "é"])
    ours, litestars = _both({"items": [item], "out": dto.ReasonOut(code="c", message="m")})
    assert isinstance(ours, EncodedJson)
    assert _messages(ours) == _messages(litestars)
    assert b'"at":"2026-12-06T07:00:00Z"' in ours.body


@pytest.mark.parametrize(
    "kwargs",
    [
        {"headers": {"x-extra": "1"}},
        {"cookies": [Cookie(key="k", value="v")]},
        {"background": BackgroundTask(lambda: None)},
        {"media_type": "text/plain"},
        {"status_code": 204},
        {"status_code": 404},
    ],
    ids=lambda kwargs: next(iter(kwargs)),
)
def test_anything_beyond_plain_json_takes_litestars_way(kwargs: dict[str, Any]) -> None:
    content: Any = None if kwargs.get("status_code") == 204 else {"colour": Colour.RED}
    if kwargs.get("media_type") == "text/plain":
        content = "plain"
    ours, litestars = _both(content, **kwargs)
    assert not isinstance(ours, EncodedJson)
    assert _messages(ours) == _messages(litestars)


def test_type_encoders_apply_as_litestar_applies_them() -> None:
    class Opaque:
        pass

    encoders: dict[Any, Any] = {Opaque: lambda _: "opaque", Colour: lambda _: "never used"}
    # msgspec encodes an enum itself, so Litestar never asks the type encoder either.
    ours, litestars = _both({"colour": Colour.RED}, type_encoders=encoders)
    assert isinstance(ours, EncodedJson)
    assert _messages(ours) == _messages(litestars)
    assert ours.body == b'{"colour":"red"}'
    # A type only an encoder knows.
    ours, litestars = _both({"x": Opaque()}, type_encoders=encoders)
    assert not isinstance(ours, EncodedJson)
    assert _messages(ours) == _messages(litestars)
    assert b'"opaque"' in ours.body


def test_bytes_and_text_content_take_litestars_way() -> None:
    for content in (b'{"already":"encoded"}', "text"):
        ours, litestars = _both(content)
        assert not isinstance(ours, EncodedJson)
        assert _messages(ours) == _messages(litestars)


def test_content_msgspec_cannot_encode_fails_as_litestar_fails() -> None:
    class Opaque:
        pass

    for response_class in (JsonResponse, Response):
        with pytest.raises(SerializationException, match="Unsupported type"):
            response_class({"x": Opaque()}).to_asgi_response(None, _request())
        # A lone surrogate cannot be UTF-8: Litestar's 500, not a UnicodeEncodeError.
        with pytest.raises(ImproperlyConfiguredException, match="Unable to serialize"):
            response_class({"x": "a\ud800"}).to_asgi_response(None, _request())


@pytest.mark.parametrize(
    "kwargs",
    [{"headers": {"x-route": "1"}}, {"cookies": [Cookie(key="k", value="v")]}],
    ids=["headers", "cookies"],
)
def test_a_routes_own_headers_and_cookies_take_litestars_way(kwargs: dict[str, Any]) -> None:
    # What a route's response_headers / response_cookies reach to_asgi_response as.
    ours = JsonResponse({"a": 1}).to_asgi_response(None, _request(), **kwargs)
    litestars = Response({"a": 1}).to_asgi_response(None, _request(), **kwargs)
    assert not isinstance(ours, EncodedJson)
    assert _messages(ours) == _messages(litestars)


def test_the_service_answers_through_this_class(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    assert app.response_class is JsonResponse
    built: list[EncodedJson] = []
    original = EncodedJson.__init__

    def spy(self: EncodedJson, body: bytes, status: int) -> None:
        built.append(self)
        original(self, body, status)

    with pytest.MonkeyPatch.context() as patch, TestClient(app) as client:
        patch.setattr(EncodedJson, "__init__", spy)
        response = client.get("/health/live")
    assert response.status_code == 200
    assert [e.body for e in built] == [response.content]
