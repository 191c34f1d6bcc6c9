"""Request ids, JSON logs without secrets, Prometheus metrics and readiness on a small real app."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import OctKey
from litestar import Litestar, Request, get, post
from litestar.params import FromPath, JSONBody
from litestar.testing import TestClient
from sqlalchemy import text

from service import observability
from service.auth import authentication_middleware, require_roles
from service.db import create_engine
from service.errors import EXCEPTION_HANDLERS
from service.observability import (
    REDACTED,
    Metrics,
    OperationsController,
    configure_logging,
    current_request_id,
    install_observability,
    observability_middleware,
    redact,
)
from service.persistence.api_keys import ApiKeyRepository, Role, generate_api_key
from service.schema import upgrade

app_log = logging.getLogger("fairunlock.test")
UNREACHABLE_PG = "postgresql+asyncpg://postgres@127.0.0.1:1/none"  # nothing listens on port 1


# -- the app under test ------------------------------------------------------------------------


@get("/items/{item_id:int}", opt={"public": True}, sync_to_thread=False)
def read_item(item_id: FromPath[int], request: Request[Any, Any, Any]) -> dict[str, Any]:
    app_log.info("item read", extra={"item_id": item_id})
    return {
        "id": item_id,
        "context_id": current_request_id(),
        "state_id": request.scope["state"]["request_id"],
    }


@post("/log", opt={"public": True}, sync_to_thread=False)
def log_values(data: JSONBody[dict[str, str]]) -> None:
    # Secrets arrive as %-args, as extra fields (flat and nested) and inside the message itself.
    for name, value in data.items():
        app_log.info(
            "value %s is %s", name, value, extra={"value": value, "nested": {"v": [value]}}
        )
        app_log.warning(f"inline {value}")


@get("/boom", opt={"public": True}, sync_to_thread=False)
def boom() -> None:
    raise RuntimeError("verification with code 654321 failed")


@get("/whoami", guards=[require_roles(Role.FRONTEND)], sync_to_thread=False)
def whoami(request: Request[Any, Any, Any]) -> dict[str, str]:
    return {"name": request.user.name}


def build_app(database_url: str, metrics: Metrics) -> Litestar:
    async def dispose() -> None:
        await app.state.engine.dispose()

    app = Litestar(
        route_handlers=[read_item, log_values, boom, whoami, OperationsController],
        middleware=[authentication_middleware()],
        exception_handlers=EXCEPTION_HANDLERS,
        on_shutdown=[dispose],
        logging_config=None,  # as create_app should: Litestar would otherwise own the root logger
    )
    install_observability(app, metrics)
    app.state.engine = create_engine(database_url)
    app.state.metrics = metrics
    return app


@dataclass
class Running:
    client: TestClient[Litestar]
    metrics: Metrics
    logs: io.StringIO
    key: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.lines() if r["logger"] == "fairunlock.access"]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("fairunlock", "service", "audit", "policy", "uvicorn", "uvicorn.error")
    loggers = {
        n: (
            logging.getLogger(n).level,
            list(logging.getLogger(n).handlers),
            logging.getLogger(n).propagate,
        )
        for n in names
    }
    yield
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    for name, (level, handlers, propagate) in loggers.items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).handlers[:] = handlers
        logging.getLogger(name).propagate = propagate


def _start(tmp_path: Path, level: str) -> Iterator[Running]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'obs.sqlite3'}"
    upgrade(url)  # the real api_keys table, for the real authentication middleware
    logs = io.StringIO()
    configure_logging(level, stream=logs)
    metrics = Metrics()
    app = build_app(url, metrics)
    with TestClient(app) as client:

        async def create_key() -> str:
            async with app.state.engine.begin() as conn:
                return await ApiKeyRepository(conn).create(Role.FRONTEND, "frontend-bench")

        with client.portal() as portal:
            key = portal.call(create_key)
        yield Running(client, metrics, logs, key)


@pytest.fixture
def running(tmp_path: Path, restore_logging: None) -> Iterator[Running]:
    yield from _start(tmp_path, "INFO")


@pytest.fixture
def running_debug(tmp_path: Path, restore_logging: None) -> Iterator[Running]:
    yield from _start(tmp_path, "DEBUG")


# -- request ids -------------------------------------------------------------------------------


def test_a_sane_request_id_is_echoed_and_visible_to_the_handler_and_logs(running: Running) -> None:
    response = running.client.get("/items/7", headers={"X-Request-ID": "Edge-1.a_b"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "Edge-1.a_b"
    assert response.json()["context_id"] == "Edge-1.a_b"
    assert response.json()["state_id"] == "Edge-1.a_b"
    item_line = next(r for r in running.lines() if r["message"] == "item read")
    assert item_line["request_id"] == "Edge-1.a_b"
    assert item_line["item_id"] == 7
    assert running.access()[-1]["request_id"] == "Edge-1.a_b"


def test_a_missing_request_id_is_generated_fresh_per_request(running: Running) -> None:
    first = running.client.get("/items/1").headers["x-request-id"]
    second = running.client.get("/items/1").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert first != second


@pytest.mark.parametrize(
    "bad",
    [b"a b", b"x" * 65, b"<script>", b"id;drop", "é-accented".encode("latin-1"), b""],
)
def test_an_insane_request_id_is_replaced(running: Running, bad: bytes) -> None:
    response = running.client.get("/items/1", headers={b"X-Request-ID": bad})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    logged = {r["request_id"] for r in running.lines() if "request_id" in r}
    assert logged == {response.headers["x-request-id"]}


def test_responses_made_outside_route_handlers_carry_a_request_id(running: Running) -> None:
    # 401 from the authentication middleware and 404 for a path no route matches.
    unauthenticated = running.client.get("/whoami", headers={"X-Request-ID": "r-401"})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-request-id"] == "r-401"
    missing = running.client.get("/no/such/path", headers={"X-Request-ID": "r-404"})
    assert missing.status_code == 404
    assert missing.headers["x-request-id"] == "r-404"
    statuses = {r["request_id"]: r["status"] for r in running.access()}
    assert statuses["r-401"] == 401
    assert statuses["r-404"] == 404


# -- logs --------------------------------------------------------------------------------------


def test_every_line_is_json_and_the_access_line_has_its_fields(running: Running) -> None:
    running.client.get("/items/42?token=fu_querystring_never_logged")
    raw = running.logs.getvalue().splitlines()
    assert raw, "nothing was logged"
    for line in raw:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    access = running.access()[-1]
    assert access["method"] == "GET"
    assert access["path"] == "/items/42"  # no query string
    assert access["status"] == 200
    assert isinstance(access["duration_ms"], float)
    assert access["duration_ms"] > 0
    assert access["api_key_name"] is None
    assert "querystring" not in running.logs.getvalue()


def test_the_access_line_names_the_api_key_and_never_shows_it(running: Running) -> None:
    response = running.client.get("/whoami", headers={"Authorization": f"Bearer {running.key}"})
    assert response.status_code == 200
    assert running.access()[-1]["api_key_name"] == "frontend-bench"
    assert running.key not in running.logs.getvalue()


class _Clock:
    """time.time and time.perf_counter for both access-line paths: a fixed wall clock and a
    request that always takes 12.3456 ms."""

    def __init__(self) -> None:
        self.ticks = 0.0

    def time(self) -> float:
        return 1_796_000_000.1234567

    def perf_counter(self) -> float:
        self.ticks += 0.0123456
        return self.ticks


def test_the_direct_access_line_is_the_line_logging_writes(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a served process, configure_logging's handler is the root's only one: pytest's
    # capture handlers go for this test (restore_logging puts the root's handlers back).
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if getattr(h, "stream", None) is running.logs]
    clock = _Clock()
    monkeypatch.setattr(observability, "time", clock)
    monkeypatch.setattr(logging, "time", clock)  # LogRecord.created
    auth = {"Authorization": f"Bearer {running.key}"}
    requests = [
        ("/whoami", {**auth, "X-Request-ID": "edge-1"}),
        ("/items/12345678", {"X-Request-ID": "Edge-20481337"}),  # both redacted
        ("/no/fu_abcdefghijkl/493817/+8613812345678/é%22q", {"X-Request-ID": "r-404"}),
        ("/whoami", {"X-Request-ID": "r-401"}),
    ]

    def access_lines() -> list[str]:
        before = len(running.logs.getvalue().splitlines())
        for path, headers in requests:
            running.client.get(path, headers=headers)
        lines = running.logs.getvalue().splitlines()[before:]
        return [line for line in lines if '"logger":"fairunlock.access"' in line]

    def no_record(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the access line went through logging")

    with monkeypatch.context() as direct:
        direct.setattr(observability.access_log, "info", no_record)
        direct_lines = access_lines()
    seen: list[logging.LogRecord] = []

    def through_logging(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    # Any filter on the way sends the line through logging, as every line went before.
    observability.access_log.addFilter(through_logging)
    try:
        logged_lines = access_lines()
    finally:
        observability.access_log.removeFilter(through_logging)
    assert len(seen) == len(requests)
    assert len(direct_lines) == len(requests)
    assert direct_lines == logged_lines
    first = json.loads(direct_lines[0])
    assert first["duration_ms"] == 12.346
    assert first["api_key_name"] == "frontend-bench"
    assert json.loads(direct_lines[1])["request_id"] == f"Edge-{REDACTED}"
    third = json.loads(direct_lines[2])
    assert third["status"] == 404
    assert third["path"] == f'/no/{REDACTED}/{REDACTED}/{REDACTED}/é"q'
    assert third["message"] == f'GET /no/{REDACTED}/{REDACTED}/{REDACTED}/é"q 404'
    assert running.key not in running.logs.getvalue()


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=-2e9, max_value=4e9, allow_nan=False),
        # Near whole seconds and half microseconds, where rounding carries.
        st.builds(
            lambda second, offset: second + offset,
            st.integers(min_value=-(10**9), max_value=4 * 10**9),
            st.sampled_from([0.0, 5e-7, -5e-7, 4.999e-7, 0.9999995, 0.9995, 1e-7, -1e-7]),
        ),
    )
)
def test_a_log_line_time_is_what_datetime_formats(created: float) -> None:
    # _rfc3339 remembers the last second's text; datetime is the reference it must equal.
    expected = (
        datetime.fromtimestamp(created, tz=UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )
    assert observability._rfc3339(created) == expected


def test_an_access_line_reaches_every_handler_on_its_way(running: Running) -> None:
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    capture = Capture()
    logging.getLogger("fairunlock").addHandler(capture)
    try:
        running.client.get("/items/3", headers={"X-Request-ID": "both"})
    finally:
        logging.getLogger("fairunlock").removeHandler(capture)
    access = [r for r in records if r.name == "fairunlock.access"]
    assert [(r.getMessage(), getattr(r, "route", None)) for r in access] == [
        ("GET /items/3 200", "/items/{item_id}")
    ]
    assert running.access()[-1]["request_id"] == "both"


def _secrets() -> dict[str, str]:
    return {
        "api_key": generate_api_key(),
        "code6": "493817",
        "code8": "20481337",
        "phone": "+8613812345678",
        "totp_secret": pyotp.random_base32(),
        "jwt": jwt.encode({"alg": "HS256"}, {"sub": "acct-1024"}, OctKey.import_key(b"k" * 32)),
    }


def test_every_kind_of_secret_is_redacted_from_args_extras_and_messages(running: Running) -> None:
    secrets = _secrets()
    assert running.client.post("/log", json=secrets).status_code == 201
    output = running.logs.getvalue()
    for kind, secret in secrets.items():
        assert secret not in output, kind
    value_lines = [r for r in running.lines() if r["message"].startswith("value ")]
    assert len(value_lines) == len(secrets)
    for record in value_lines:
        assert record["message"].endswith(f" is {REDACTED}")
        assert record["value"] == REDACTED
        assert record["nested"] == {"v": [REDACTED]}
    inline = [r["message"] for r in running.lines() if r["message"].startswith("inline ")]
    assert inline == [f"inline {REDACTED}"] * len(secrets)


def test_redaction_leaves_ordinary_values_alone() -> None:
    ordinary = (
        "account acct-1024 from 203.0.113.7 at 2026-11-20T09:12:00Z, "
        "request 3f2a9c81d4e64b0f9a1b2c3d4e5f6071, route /v1/unlock-requests/{id}, "
        "phone shown masked as +86 138****5678, 12345 items, NEW_DEVICE"
    )
    assert redact(ordinary) == ordinary


_HEX = "0123456789abcdef"


@settings(max_examples=3000)
@given(st.text(alphabet=_HEX, min_size=31, max_size=31))
def test_the_shape_of_the_services_own_request_ids_is_one_redaction_leaves_unchanged(
    rest: str,
) -> None:
    request_id = "0" + rest
    assert redact(request_id) == request_id
    assert observability.redact_request_id(request_id) == request_id


@given(st.text(max_size=40))
def test_a_request_id_of_any_other_shape_is_redacted_as_any_value(request_id: str) -> None:
    assert observability.redact_request_id(request_id) == redact(request_id)
    for secret in ("fu_abcdefghijkl", "JBSWY3DPEHPK3PXP", "12345678"):
        assert observability.redact_request_id(secret) == REDACTED


def test_the_request_ids_the_service_makes_have_that_shape() -> None:
    from service.ids import new_request_id

    assert all(observability._PLAIN_REQUEST_ID.fullmatch(new_request_id()) for _ in range(1000))


_ACCESS_VALUES = st.one_of(
    st.text(),
    st.none(),
    st.integers(),
    st.just(0.0),
    st.floats(*observability._PLAIN_FLOATS, exclude_max=True),
    st.floats(min_value=0.0, max_value=1e6).map(lambda ms: round(ms, 3)),
)


@settings(max_examples=3000)
@given(st.dictionaries(st.text(max_size=12), _ACCESS_VALUES, max_size=12))
def test_the_access_line_encoder_writes_what_the_json_formatter_writes(
    line: dict[str, object],
) -> None:
    try:
        fast = observability._ACCESS_LINE.encode(line).decode()
    except UnicodeEncodeError:
        # A lone surrogate: _write_access_line then leaves the line to logging.
        assert any(
            isinstance(s, str) and any("\ud800" <= c <= "\udfff" for c in s)
            for s in [*line, *line.values()]
        )
        return
    assert fast == observability._JSON_LINE.encode(line)


def test_a_line_msgspec_cannot_write_goes_through_logging(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if getattr(h, "stream", None) is running.logs]
    fields = ("GET", "/a\udcff", "/a\udcff", 404, 1.5, None)
    assert not observability._write_access_line("0" * 32, fields)
    for odd in (1e16, 5e-5, float("nan")):
        assert not observability._write_access_line("0" * 32, ("GET", "/", "/", 200, odd, None))
    assert observability._write_access_line("0" * 32, ("GET", "/", "/", 200, 1.5, None))


def test_an_error_is_type_and_message_without_traceback_above_debug(running: Running) -> None:
    response = running.client.get("/boom")
    assert response.status_code == 500
    assert "654321" not in response.text
    errors = [r for r in running.lines() if "error" in r]
    assert len(errors) == 1
    assert errors[0]["error"]["type"] == "RuntimeError"
    assert errors[0]["error"]["message"] == f"verification with code {REDACTED} failed"
    assert "traceback" not in errors[0]["error"]
    assert "654321" not in running.logs.getvalue()


def test_at_debug_the_traceback_is_logged_and_still_redacted(running_debug: Running) -> None:
    running_debug.client.get("/boom")
    errors = [r for r in running_debug.lines() if "error" in r]
    assert len(errors) == 1
    assert "Traceback (most recent call last)" in errors[0]["error"]["traceback"]
    assert "in boom" in errors[0]["error"]["traceback"]
    assert "654321" not in running_debug.logs.getvalue()


def test_configure_logging_twice_keeps_one_handler(restore_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", stream=first)
    configure_logging("WARNING", stream=second)
    app_log.warning("only once")
    app_log.info("below the level")
    assert first.getvalue() == ""
    assert [json.loads(line)["message"] for line in second.getvalue().splitlines()] == ["only once"]


def test_uvicorn_joins_the_json_output_but_its_disabled_access_log_stays_off(
    restore_logging: None,
) -> None:
    # As `uvicorn --no-access-log` leaves it: uvicorn logs access lines only if this has handlers.
    access = logging.getLogger("uvicorn.access")
    saved = (list(access.handlers), access.propagate)
    access.handlers.clear()
    access.propagate = False
    try:
        logs = io.StringIO()
        configure_logging("INFO", stream=logs)
        assert not access.hasHandlers()
        logging.getLogger("uvicorn.error").info("Started server process")
        assert json.loads(logs.getvalue())["logger"] == "uvicorn.error"
    finally:
        access.handlers[:], access.propagate = saved


class _CountingStream(io.StringIO):
    """What a handler's flushes handed on: the text at each flush."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def _line(message: str) -> logging.LogRecord:
    return logging.LogRecord("fairunlock.test", logging.INFO, __file__, 1, message, None, None)


def test_off_a_loop_each_log_line_is_flushed_at_once() -> None:
    stream = _CountingStream()
    handler = observability.LoopFlushedHandler(stream)
    handler.emit(_line("one"))
    handler.emit(_line("two"))
    assert stream.flushed == ["one\n", "one\ntwo\n"]


def test_on_a_loop_the_lines_of_one_round_are_flushed_once_after_it_in_order() -> None:
    stream = _CountingStream()
    handler = observability.LoopFlushedHandler(stream)
    seen_in_round: list[list[str]] = []

    async def round_then_next() -> None:
        for n in range(3):
            handler.emit(_line(f"line {n}"))
        seen_in_round.append(list(stream.flushed))  # nothing flushed yet in this round
        await asyncio.sleep(0)  # the loop's next round: the pending flush has run
        handler.emit(_line("later"))
        await asyncio.sleep(0)

    asyncio.run(round_then_next())
    assert seen_in_round == [[]]
    assert stream.flushed == ["line 0\nline 1\nline 2\n", "line 0\nline 1\nline 2\nlater\n"]
    # A new loop (a later test's, a restarted server's) flushes again rather than waiting for
    # the closed loop's round.
    asyncio.run(round_then_next())
    assert len(stream.flushed) == 4


def test_a_stopping_handler_flushes_and_closes_only_a_stream_it_opened(tmp_path: Path) -> None:
    given_stream = _CountingStream()
    handler = observability.LoopFlushedHandler(given_stream)

    async def emit_and_close() -> None:
        handler.emit(_line("last words"))
        handler.close()  # before the loop's round ends

    asyncio.run(emit_and_close())
    assert given_stream.flushed[-1] == "last words\n"
    assert not given_stream.closed
    file = (tmp_path / "log").open("w")
    owned = observability.LoopFlushedHandler(file, owned=True)
    errors: list[dict[str, Any]] = []

    async def emit_close_and_go_on() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, context: errors.append(context))
        owned.emit(_line("x"))
        owned.close()
        await asyncio.sleep(0)  # the flush the line asked for finds the stream closed: no error

    asyncio.run(emit_close_and_go_on())
    assert file.closed
    assert errors == []
    assert (tmp_path / "log").read_text() == "x\n"


def _json_handler() -> observability.LoopFlushedHandler:
    root = logging.getLogger()
    [handler] = [h for h in root.handlers if getattr(h, "_fairunlock_json_handler", False)]
    assert isinstance(handler, observability.LoopFlushedHandler)
    return handler


def test_by_default_logs_go_to_stderrs_file_through_a_stream_of_their_own(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")
    handler = _json_handler()
    # Its own block-buffered stream on stderr's file (sys.stderr would write at each newline).
    assert handler.stream is not sys.stderr
    assert handler.stream.fileno() == sys.stderr.fileno()
    app_log.info("to the file")  # off a loop: flushed at once
    assert json.loads(capfd.readouterr().err)["message"] == "to the file"
    handler.close()
    assert handler.stream.closed
    os.fstat(sys.stderr.fileno())  # the file stays open: the stream was opened with closefd=False


def test_without_a_file_behind_stderr_logs_go_to_sys_stderr(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO")  # capsys's stderr has no file descriptor
    handler = _json_handler()
    assert handler.stream is sys.stderr
    app_log.info("to the capture")
    assert json.loads(capsys.readouterr().err)["message"] == "to the capture"
    handler.close()
    assert not sys.stderr.closed  # not the handler's to close


def test_an_unknown_level_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="VERBOSE"):
        configure_logging("VERBOSE")


# -- metrics -----------------------------------------------------------------------------------


def test_requests_are_counted_by_route_template_not_raw_path(running: Running) -> None:
    for item in (123, 456, 789):
        running.client.get(f"/items/{item}")
    running.client.get("/no/such/path")
    registry = running.metrics.registry
    labels = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    assert registry.get_sample_value("fairunlock_http_requests_total", labels) == 3
    assert (
        registry.get_sample_value(
            "fairunlock_http_request_duration_seconds_count",
            {"method": "GET", "route": "/items/{item_id}"},
        )
        == 3
    )
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    assert registry.get_sample_value("fairunlock_http_requests_total", unmatched) == 1
    body, _ = running.metrics.render()
    assert b"/items/123" not in body
    assert b"/no/such/path" not in body


def test_decisions_and_face_offers_are_counted() -> None:
    metrics = Metrics()
    metrics.record_decision("medium", "pending_verification", offered_face=True)
    metrics.record_decision("medium", "pending_verification", offered_face=False)
    metrics.record_decision("critical", "review_required", offered_face=False)
    metrics.set_review_cases_overdue(2)
    metrics.set_audit_backlog(17)
    value = metrics.registry.get_sample_value
    assert value(
        "fairunlock_decisions_total", {"level": "medium", "status": "pending_verification"}
    ) == (2)
    assert value(
        "fairunlock_decisions_total", {"level": "critical", "status": "review_required"}
    ) == (1)
    assert value("fairunlock_offers_with_face_total") == 1
    assert value("fairunlock_review_cases_overdue") == 2
    assert value("fairunlock_audit_backlog") == 17


def test_two_metrics_objects_do_not_share_counts() -> None:
    # Each owns its registry: a second app (or test) neither collides nor sees the first's counts.
    first, second = Metrics(), Metrics()
    first.record_decision("low", "pending_verification", offered_face=True)
    assert second.registry.get_sample_value("fairunlock_offers_with_face_total") == 0


def test_the_metrics_endpoint_serves_the_text_exposition(running: Running) -> None:
    running.client.get("/items/5")
    response = running.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert response.headers["content-type"].count("charset") == 1
    assert (
        'fairunlock_http_requests_total{method="GET",route="/items/{item_id}",status="200"} 1.0'
        in (response.text)
    )
    assert "# TYPE fairunlock_http_request_duration_seconds histogram" in response.text


def test_gauges_are_refreshed_from_the_database_at_scrape_time(running: Running) -> None:
    async def audit_backlog(metrics: Metrics, app: Litestar) -> None:
        async with app.state.engine.connect() as conn:
            metrics.set_audit_backlog((await conn.execute(text("SELECT 5 + 2"))).scalar_one())

    async def broken(metrics: Metrics, app: Litestar) -> None:
        raise RuntimeError("the review queue is unreachable")

    running.metrics.on_scrape(broken)
    running.metrics.on_scrape(audit_backlog)
    response = running.client.get("/metrics")
    # The broken refresher is logged and skipped; the scrape and the next refresher go on.
    assert response.status_code == 200
    assert "\nfairunlock_audit_backlog 7.0\n" in response.text
    failures = [r for r in running.lines() if r["message"] == "metrics refresher failed"]
    assert [(r["refresher"], r["error_type"]) for r in failures] == [("broken", "RuntimeError")]


def test_the_middleware_list_form_also_observes_matched_routes(restore_logging: None) -> None:
    metrics = Metrics()
    app = Litestar(
        route_handlers=[read_item],
        middleware=observability_middleware(metrics),
        logging_config=None,
    )
    with TestClient(app) as client:
        response = client.get("/items/9", headers={"X-Request-ID": "list-form"})
    assert response.headers["x-request-id"] == "list-form"
    labels = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
    assert metrics.registry.get_sample_value("fairunlock_http_requests_total", labels) == 1


# -- readiness ---------------------------------------------------------------------------------


def test_ready_when_the_database_answers(running: Running) -> None:
    response = running.client.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "database": "ok"}


def _assert_unavailable(response: Any) -> dict[str, Any]:
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["type"] == "https://fairunlock.dev/problems/unavailable"
    assert body["title"] == "Service unavailable"
    assert body["status"] == 503
    assert body["code"] == "database_unavailable"
    return body


def _client_for(url: str) -> TestClient[Litestar]:
    metrics = Metrics()

    async def dispose() -> None:
        await app.state.engine.dispose()

    app = Litestar(
        route_handlers=[OperationsController], on_shutdown=[dispose], logging_config=None
    )
    app.state.engine = create_engine(url)
    app.state.metrics = metrics
    return TestClient(app)


def test_not_ready_when_the_database_refuses_connections(restore_logging: None) -> None:
    with _client_for(UNREACHABLE_PG) as client:
        started = time.monotonic()
        response = client.get("/health/ready")
        elapsed = time.monotonic() - started
    _assert_unavailable(response)
    assert elapsed < 3


def test_not_ready_when_the_database_never_answers(restore_logging: None) -> None:
    # A socket that accepts connections (the kernel's backlog) but never speaks: a hung server.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with _client_for(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/none") as client:
            started = time.monotonic()
            response = client.get("/health/ready")
            elapsed = time.monotonic() - started
    body = _assert_unavailable(response)
    assert "did not answer within 2 s" in body["detail"]
    assert 1.5 < elapsed < 4


def test_the_operations_routes_are_public_and_documented(running: Running) -> None:
    schema = running.client.app.openapi_schema.to_schema()
    ready = schema["paths"]["/health/ready"]["get"]
    assert "application/problem+json" in ready["responses"]["503"]["content"]
    assert "/metrics" in schema["paths"]
    for path in ("/health/ready", "/metrics"):
        route = running.client.app.route_handler_method_map[path]["GET"]
        assert route.opt.get("public") is True
