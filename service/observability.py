"""Operations: request ids, JSON logs without secrets, Prometheus metrics, readiness.

Wiring, in ``service/app.py``'s ``create_app`` (nothing here runs at import)::

    from service.observability import Metrics, OperationsController, configure_logging
    from service.observability import install_observability

    configure_logging(settings.log_level)          # idempotent; every worker calls create_app
    metrics = Metrics()
    app = Litestar(
        route_handlers=[..., OperationsController],  # middleware unchanged
        logging_config=None,  # REQUIRED: see below
        ...,
    )
    install_observability(app, metrics)            # after Litestar(...), before returning app
    app.state.metrics = metrics                    # /metrics and the unlock route read it

``logging_config=None`` matters: Litestar's default ``LoggingConfig`` runs ``dictConfig`` when the
app is built and replaces the root logger's handlers with its own plain-text one, so every line
would be neither JSON nor redacted. With ``None``, Litestar's loggers propagate to ours.

``install_observability`` wraps Litestar's outermost ASGI handler (as Litestar does itself for its
OpenTelemetry plugin), so the request id, the access log line and the metrics cover *every* HTTP
response: also 401s raised by the authentication middleware and 404/405s for paths no route
matches. ``observability_middleware(metrics)`` returns the same middleware for
``Litestar(middleware=[...])`` instead, but Litestar runs that list only for matched routes and
responses made from exceptions raised by later middleware (the 401s) bypass its ``send``: use it
only where that is acceptable.

Metrics are per process: with several uvicorn workers each scrape sees one worker's counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any, Final

import msgspec
from litestar import Controller, Litestar, Request, Response, get
from litestar.enums import ScopeType
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import ResponseSpec
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from service.errors import PROBLEM_JSON, TYPE_BASE, problem_response
from service.ids import new_request_id
from service.routes.problems import Problem

__all__ = [
    "REDACTED",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "Metrics",
    "ObservabilityMiddleware",
    "OperationsController",
    "RedactingFilter",
    "Refresher",
    "configure_logging",
    "current_request_id",
    "install_observability",
    "observability_middleware",
    "redact",
]

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_HEADER_B = REQUEST_ID_HEADER.lower().encode("latin-1")
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
UNMATCHED_ROUTE = "<unmatched>"  # one label for every path no route matches: bounded cardinality
READINESS_TIMEOUT_S = 2.0

_request_id: ContextVar[str | None] = ContextVar("fairunlock_request_id", default=None)

access_log = logging.getLogger("fairunlock.access")
log = logging.getLogger("fairunlock.observability")


def current_request_id() -> str | None:
    """The id of the request this code runs for, or None outside a request."""
    return _request_id.get()


# -- Redaction ---------------------------------------------------------------------------------

REDACTED: Final = "[redacted]"

_SECRET_PATTERNS = re.compile(
    "|".join(
        (
            # API keys: "fu_" + token_urlsafe (service/persistence/api_keys.py).
            r"(?<![A-Za-z0-9])fu_[A-Za-z0-9_-]{8,}",
            # JWS/JWT (and the first parts of a JWE): the header is base64url JSON, so "eyJ".
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}",
            # E.164 phone numbers.
            r"\+\d{8,15}\b",
            # Base32 TOTP secrets (pyotp's are upper case), padding included.
            r"\b[A-Z2-7]{16,}=*",
            # One-time and recovery codes of 6-8 digits; \b keeps digits inside hex ids intact.
            r"\b\d{6,8}\b",
        )
    )
)


def redact(value: str) -> str:
    """``value`` with everything that looks like a secret replaced by ``[redacted]``."""
    return _SECRET_PATTERNS.sub(REDACTED, value)


# The request ids the service makes (service.ids.new_request_id: 32 hex digits of a UUIDv7, whose
# first is 0 until the year 2527) are every line's; none of the patterns above can match one
# (no "_", "J" or "+"; its only word boundaries are its ends, and its first digit is not in
# [2-7]), so redact() leaves it unchanged, proved by a property test. Checking the shape costs a
# tenth of redacting it.
_PLAIN_REQUEST_ID: Final = re.compile(r"0[0-9a-f]{31}")


def redact_request_id(request_id: str) -> str:
    """``redact(request_id)``, without its cost for the ids the service makes."""
    return request_id if _PLAIN_REQUEST_ID.fullmatch(request_id) else redact(request_id)


def _redact_any(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _redact_any(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_any(v) for v in value]
    return value


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RECORD_ATTRS}


class RedactingFilter(logging.Filter):
    """Rewrites a record so no secret reaches a handler: the formatted message and every extra.

    Installed on the handler (not a logger) because logger filters do not see records that
    propagate from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # Formatting first means secrets passed as %-args (strings or ints) are caught too.
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in _extra_fields(record).items():
            setattr(record, key, _redact_any(value))
        return True


# -- JSON logs ---------------------------------------------------------------------------------


# The last whole second formatted and its text: datetime's construction and isoformat() were
# most of a line's timestamp, and every line of one second shares everything up to the
# milliseconds. Replaced as one tuple, so a thread always reads a matching pair.
_last_second: list[tuple[int, str]] = [(-1, "")]


def _rfc3339(created: float) -> str:
    """``datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`` with Z."""
    # Split as datetime.fromtimestamp splits a float (CPython's _PyTime_DoubleToDenominator):
    # the fraction's microseconds rounded half to even, a carry into the second.
    fraction, whole = math.modf(created)
    microseconds = round(fraction * 1e6)
    if microseconds >= 1_000_000:
        microseconds -= 1_000_000
        whole += 1.0
    elif microseconds < 0:
        microseconds += 1_000_000
        whole -= 1.0
    second = int(whole)
    cached_second, text = _last_second[0]
    if second != cached_second:
        text = datetime.fromtimestamp(second, tz=UTC).isoformat().removesuffix("+00:00")
        _last_second[0] = (second, text)
    return f"{text}.{microseconds // 1000:03d}Z"


# json.dumps with these arguments builds a new encoder per call; one prebuilt encodes the same.
_JSON_LINE: Final = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras, error."""

    def __init__(self, *, include_traceback: bool = False) -> None:
        super().__init__()
        self.include_traceback = include_traceback

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            out["request_id"] = redact_request_id(request_id)
        for key, value in _extra_fields(record).items():
            out.setdefault(key, value)  # extras never overwrite the fields above
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # Exception messages can quote input: they are redacted like everything else.
            error: dict[str, Any] = {"type": type(exc).__name__, "message": redact(str(exc))}
            if self.include_traceback:
                error["traceback"] = redact("".join(traceback.format_exception(exc)))
            out["error"] = error
        return _JSON_LINE.encode(out)


class LoopFlushedHandler(logging.StreamHandler[IO[str]]):
    """A StreamHandler that, on a thread running an event loop, flushes once after the loop's
    current round of callbacks instead of after every record: the lines of the requests a round
    answers (a decision batch's ~30 access lines) leave in one write. Measured with strace
    (SQLite, one worker, 32 connections): ~3 write calls per decision before, ~2 after (uvicorn
    writes a response's head and body apart); interleaved HTTP runs 1.02-1.06x. Off a loop
    (start-up, shutdown, threads) a flush happens at once; ``logging.shutdown`` flushes at exit.
    What a SIGKILL can take: the lines of the round it interrupts, never anything a client was
    answered from (logs are not the record; the database and the audit log are)."""

    def __init__(self, stream: IO[str], *, owned: bool = False) -> None:
        super().__init__(stream)
        self._owned = owned  # opened for this handler (close closes it)
        self._flush_on: asyncio.AbstractEventLoop | None = None
        # The loop last seen running and its thread: asyncio.get_running_loop costs a getpid
        # system call on Python 3.11, as much as the write this saves.
        self._loop: tuple[asyncio.AbstractEventLoop, int] | None = None

    def flush(self) -> None:
        thread = threading.get_ident()
        seen = self._loop
        if seen is not None and seen[1] == thread and seen[0].is_running():
            loop = seen[0]  # a loop runs in one thread: it is this thread's
        else:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                super().flush()
                return
            self._loop = (loop, thread)
        # One flush per loop round; a flush pending on a loop that has since closed is replaced.
        if self._flush_on is not loop:
            self._flush_on = loop
            loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_on = None
        if not getattr(self.stream, "closed", False):  # closed meanwhile: close flushed it
            super().flush()

    def close(self) -> None:
        try:
            # A stream its owner closed already (a test's capture) has nothing left to flush.
            if not getattr(self.stream, "closed", False):
                super().flush()
            if self._owned:
                self.stream.close()
        finally:
            super().close()


def _stderr_for_logs() -> tuple[IO[str], bool]:
    """A block-buffered text stream on stderr's file (sys.stderr flushes at every newline), and
    whether it was opened here; sys.stderr itself when it has no file (a test's capture)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stderr, False
    stream = open(  # noqa: SIM115 - the handler owns it and closes it
        fd,
        "w",
        buffering=_LOG_BUFFER_BYTES,
        encoding=sys.stderr.encoding or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
    return stream, True


_LOG_BUFFER_BYTES: Final = 1 << 16
_HANDLER_MARK = "_fairunlock_json_handler"
_OWN_LOGGERS = ("fairunlock", "service", "audit", "policy")
# uvicorn installs its own handlers; routing them through ours keeps every line JSON and redacted.
# Not "uvicorn.access": uvicorn logs access lines only while that logger has handlers, and our own
# access line (with the request id, without the client address) replaces it.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error")


def configure_logging(level: str, *, stream: IO[str] | None = None) -> None:
    """Send every log record to ``stream`` (stderr) as redacted JSON lines. Safe to call again.

    Tracebacks are included only at DEBUG; above it an exception is its type and message.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    if stream is None:
        stderr, owned = _stderr_for_logs()
        handler = LoopFlushedHandler(stderr, owned=owned)
    else:
        handler = LoopFlushedHandler(stream)
    handler.setFormatter(JsonFormatter(include_traceback=numeric <= logging.DEBUG))
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(numeric)
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        for old in list(uvicorn_logger.handlers):
            uvicorn_logger.removeHandler(old)
        uvicorn_logger.propagate = True


# -- The access line ---------------------------------------------------------------------------
#
# One line per request is most of what the service logs, and through ``logging`` it cost ~60 µs
# (a LogRecord, the filter walking every extra, formatting, the handler): ~7 % of a decision's
# CPU. When the line's only destination is configure_logging's handler, unfiltered on the way,
# ``_write_access_line`` writes the same line to it directly: the same fields in the same order,
# redacted by the same function, encoded to the same text, written and flushed under the
# handler's lock as ``StreamHandler.emit`` does. Any other set-up (another handler, a filter, a
# disabled logger) takes the ordinary path, and so does a line msgspec cannot encode or whose
# write raised (the handler then reports the error as it always does).
# tests/service/test_observability.py compares the two paths' lines byte for byte.

_ACCESS_FIELDS: Final = ("method", "path", "route", "status", "duration_ms", "api_key_name")
# The access line's encoder: msgspec writes what _JSON_LINE writes for the line's strings, ints,
# None and floats written without an exponent (property-tested), in a quarter of the time.
_ACCESS_LINE: Final = msgspec.json.Encoder()
# repr() writes floats below 1e-4 and from 1e16 up with an exponent, which msgspec writes
# otherwise; durations are rounded to 0.001 ms.
_PLAIN_FLOATS: Final = (1e-4, 1e15)
_REDACTED_CACHE_SIZE: Final = 512
# redact() of values from small sets (methods, route templates, API key names): pure, so
# remembered; the set is bounded so odd methods sent by clients cannot grow it.
_redacted_cache: dict[str, str] = {}


def _redact_known(value: str) -> str:
    cached = _redacted_cache.get(value)
    if cached is None:
        cached = redact(value)
        if len(_redacted_cache) < _REDACTED_CACHE_SIZE:
            _redacted_cache[value] = cached
    return cached


def _sole_json_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """configure_logging's handler when it is the only one a record of ``logger`` at INFO
    reaches and no filter, other than its own RedactingFilter, sees the record; else None."""
    found: logging.StreamHandler[Any] | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        for handler in current.handlers:
            if (
                found is not None
                or not getattr(handler, _HANDLER_MARK, False)
                or not isinstance(handler, logging.StreamHandler)
                or handler.level > logging.INFO
                or type(handler.formatter) is not JsonFormatter
                or any(type(f) is not RedactingFilter for f in handler.filters)
            ):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return found


def _write_access_line(
    request_id: str, fields: tuple[str, str, str, int, float, str | None]
) -> bool:
    """Write the access line as ``access_log.info`` would through configure_logging's handler;
    False when that is not the set-up (nothing written) or the write raised."""
    handler = _sole_json_handler(access_log)
    if handler is None or access_log.disabled:
        return False
    method, path, route, status, duration_ms, api_key_name = fields
    if not (duration_ms == 0.0 or _PLAIN_FLOATS[0] <= duration_ms < _PLAIN_FLOATS[1]):
        return False  # where msgspec and json write a float differently (or NaN)
    # A path equal to its route's template is one of the app's own paths, a bounded set, so its
    # redacted forms are remembered; any other path (parameters, 404s) is redacted each time.
    redact_path = redact_message = _redact_known if path == route else redact
    created = time.time()
    # JsonFormatter's fields, then the extras in the order access_log.info passes them, each
    # redacted as RedactingFilter redacts them (strings; the int and the float pass unchanged).
    try:
        line = _ACCESS_LINE.encode(
            {
                "time": _rfc3339(created),
                "level": "INFO",
                "logger": access_log.name,
                "message": redact_message(f"{method} {path} {status}"),
                "request_id": redact_request_id(request_id),
                "method": _redact_known(method),
                "path": redact_path(path),
                "route": _redact_known(route),
                "status": _redact_any(status),
                "duration_ms": duration_ms,
                "api_key_name": _redact_known(api_key_name)
                if isinstance(api_key_name, str)
                else _redact_any(api_key_name),
            }
        ).decode()
    except Exception:
        # What msgspec cannot write (a lone surrogate in a path, an odd type) logging can.
        return False
    handler.acquire()
    try:
        handler.stream.write(line + handler.terminator)
        handler.flush()
    except Exception:
        return False
    finally:
        handler.release()
    return True


# -- Metrics -----------------------------------------------------------------------------------

# 1 ms ... 2.5 s: the p99 target is 25 ms, so the low end is fine-grained.
LATENCY_BUCKETS_S: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


Refresher = Callable[["Metrics", Litestar], Awaitable[None]]
REFRESH_TIMEOUT_S = 2.0


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (never the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "fairunlock_http_requests",
            "HTTP requests answered, by route template and status.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "fairunlock_http_request_duration_seconds",
            "Time from receiving a request to the end of its response.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.decisions = Counter(
            "fairunlock_decisions",
            "Unlock decisions made, by risk level and status.",
            ("level", "status"),
            registry=self.registry,
        )
        self.offers_with_face = Counter(
            "fairunlock_offers_with_face",
            "Decisions whose offer lists face verification (always as an optional alternative).",
            registry=self.registry,
        )
        self.review_cases_overdue = Gauge(
            "fairunlock_review_cases_overdue",
            "Open review cases past their due time.",
            registry=self.registry,
        )
        self.refreshers: list[Refresher] = []
        self.audit_backlog = Gauge(
            "fairunlock_audit_backlog",
            "Audit entries written but not yet integrated into the log.",
            registry=self.registry,
        )

        self.group_commit_batch = Histogram(
            "fairunlock_group_commit_batch_size",
            "Decisions committed together in one transaction (service/group_commit.py).",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._decision_children: dict[tuple[str, str], Counter] = {}

    def observe_batch(self, size: int) -> None:
        self.group_commit_batch.observe(size)

    def observe_request(self, method: str, route: str, status: int, duration_s: float) -> None:
        # The labelled children, remembered per label set: labels() costs twice the updates.
        # As many entries as the metrics have children, so no new bound is needed.
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(duration_s)

    def record_decision(self, level: str, status: str, offered_face: bool) -> None:
        # Remembered per label pair as in observe_request; levels and statuses are enums.
        key = (str(level), str(status))
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self.decisions.labels(*key)
        child.inc()
        if offered_face:
            self.offers_with_face.inc()

    def set_review_cases_overdue(self, count: int) -> None:
        self.review_cases_overdue.set(count)

    def set_audit_backlog(self, count: int) -> None:
        self.audit_backlog.set(count)

    def on_scrape(self, refresh: Refresher) -> None:
        """Run ``refresh(metrics, app)`` before each ``GET /metrics``.

        For gauges read at scrape time (e.g. the audit backlog from the database). Each gets 2 s;
        a failure is logged and the scrape goes on with the gauge's last value.
        """
        self.refreshers.append(refresh)

    async def refresh(self, app: Litestar) -> None:
        for refresh in self.refreshers:
            try:
                await asyncio.wait_for(refresh(self, app), timeout=REFRESH_TIMEOUT_S)
            except Exception as exc:
                # A stale gauge beats a failed scrape: the other metrics still matter.
                log.warning(
                    "metrics refresher failed",
                    extra={
                        "refresher": getattr(refresh, "__name__", repr(refresh)),
                        "error_type": type(exc).__name__,
                    },
                )

    def render(self) -> tuple[bytes, str]:
        """The text exposition of this registry and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# -- The middleware ----------------------------------------------------------------------------


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER_B:
            candidate = value.decode("latin-1")
            return candidate if _SANE_REQUEST_ID.fullmatch(candidate) else None
    return None


class ObservabilityMiddleware:
    """Plain ASGI: request id (header, scope state, log context), one access line, metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope["headers"]) or new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        header = (_REQUEST_ID_HEADER_B, request_id.encode("latin-1"))
        method = scope["method"]
        path = scope["path"]  # read now: routing rewrites it; ASGI paths carry no query string
        status = 500  # if the app ends without answering, the server answers 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != header[0]]
                headers.append(header)
                message["headers"] = headers
            await send(message)

        token = _request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Only reached when mounted as route middleware and a later middleware raised
            # (e.g. 401 from authentication): Litestar's outer handler will answer with this.
            status = getattr(exc, "status_code", 500)
            raise
        finally:
            duration = time.perf_counter() - started
            route = scope.get("path_template") or UNMATCHED_ROUTE
            self.metrics.observe_request(method, route, status, duration)
            if access_log.isEnabledFor(logging.INFO):
                fields = (
                    method,
                    path,
                    route,
                    status,
                    round(duration * 1000, 3),
                    getattr(scope.get("user"), "name", None),
                )
                if not _write_access_line(request_id, fields):
                    access_log.info(
                        "%s %s %s",
                        method,
                        path,
                        status,
                        extra=dict(zip(_ACCESS_FIELDS, fields, strict=True)),
                    )
            _request_id.reset(token)


def install_observability(app: Litestar, metrics: Metrics) -> None:
    """Wrap the app's outermost HTTP handler so every response is observed (see module doc)."""
    app.asgi_handler = ObservabilityMiddleware(app.asgi_handler, metrics)


def observability_middleware(metrics: Metrics) -> list[DefineMiddleware]:
    """The same middleware for ``Litestar(middleware=...)``; covers matched routes only."""
    return [DefineMiddleware(ObservabilityMiddleware, metrics=metrics)]


# -- Operations routes -------------------------------------------------------------------------

_METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.split(";", 1)[0]


class OperationsController(Controller):
    path = "/"
    tags = ["operations"]  # noqa: RUF012 - Litestar reads this class attribute

    @get(
        "/health/ready",
        opt={"public": True},
        summary="Readiness",
        operation_id="health_ready",
        responses={
            503: ResponseSpec(
                data_container=Problem,
                description="The database did not answer",
                media_type=PROBLEM_JSON,
                generate_examples=False,
            )
        },
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
        """Ready when the database answers `SELECT 1` within 2 s; otherwise 503."""
        engine: AsyncEngine = request.app.state.engine
        try:
            await asyncio.wait_for(_select_one(engine), timeout=READINESS_TIMEOUT_S)
        except TimeoutError:
            log.warning("readiness: database timed out", extra={"timeout_s": READINESS_TIMEOUT_S})
            return _unavailable(f"The database did not answer within {READINESS_TIMEOUT_S:g} s.")
        except Exception as exc:
            # Any failure to reach the database means not ready; the type is enough to diagnose.
            log.warning("readiness: database unavailable", extra={"error_type": type(exc).__name__})
            return _unavailable(f"The database is not reachable ({type(exc).__name__}).")
        return Response({"status": "ready", "database": "ok"})

    @get(
        "/metrics",
        opt={"public": True},
        summary="Prometheus metrics",
        operation_id="metrics",
        media_type=_METRICS_MEDIA_TYPE,
    )
    async def metrics(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        """Prometheus text exposition of this worker's metrics."""
        metrics: Metrics = request.app.state.metrics
        await metrics.refresh(request.app)
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})


async def _select_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _unavailable(detail: str) -> Response[dict[str, Any]]:
    # The type names the general condition; the code says which dependency is down.
    return problem_response(
        503, "database_unavailable", "Service unavailable", detail, type=TYPE_BASE + "unavailable"
    )
