"""The one map from errors to RFC 9457 ``application/problem+json`` responses.

Domain errors (``DomainError`` and the cores' own exceptions) know nothing of HTTP; this module is
the only place that gives them a status. Every response body has a stable ``code`` and a ``type``
URI built from it, and never a stack trace.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy import exc as sa_exc

from service import domain
from service.db import causes
from service.domain import DomainError

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://fairunlock.dev/problems/"

log = logging.getLogger("fairunlock.errors")


@dataclass(frozen=True, slots=True)
class ProblemSpec:
    status: int
    title: str


# -- Domain errors of the audit log (service/routes/audit.py) and the data keys
# (service/data_keys.py re-exports its two), kept beside the map that gives them a status.


class AuditQueryInvalid(DomainError):
    """An audit read names a range, index or tree size the log cannot answer."""

    code = "audit_query_invalid"


class AuditRangeTooLarge(AuditQueryInvalid):
    """An entries page asks for more than the maximum page size."""

    code = "audit_range_too_large"


class AuditNoCheckpoint(DomainError):
    """Nothing has been integrated yet, so no checkpoint exists."""

    code = "audit_no_checkpoint"


class DataKeyDestroyed(DomainError):
    """The account's data key was crypto-shredded (erasure): its personal data is gone for good."""

    code = "data_key_destroyed"


class CiphertextInvalid(DomainError):
    """A token is malformed, belongs to another account or field, or was altered.

    Deliberately not mapped below: stored data failing to decrypt is a fault to log as a 500.
    """

    code = "ciphertext_invalid"


# Domain error class -> HTTP status and title. Later flows add their errors here, nowhere else.
DOMAIN_ERROR_MAP: dict[type[DomainError], ProblemSpec] = {
    AuditQueryInvalid: ProblemSpec(400, "Invalid audit query"),
    AuditNoCheckpoint: ProblemSpec(404, "No audit checkpoint yet"),
    DataKeyDestroyed: ProblemSpec(410, "Personal data erased"),
    domain.InvalidPhone: ProblemSpec(422, "Invalid phone number"),
    domain.AccountErased: ProblemSpec(409, "Account erased"),
    domain.TotpAlreadyEnrolled: ProblemSpec(409, "Authenticator already enrolled"),
    domain.TotpNotStarted: ProblemSpec(409, "No authenticator enrolment to confirm"),
    domain.InvalidCode: ProblemSpec(422, "Code not accepted"),
    domain.UnknownProvider: ProblemSpec(422, "Unknown identity provider"),
    domain.StaleNoticeVersion: ProblemSpec(409, "Notice version is not current"),
    domain.ConsentNotAccepted: ProblemSpec(422, "Consent not accepted"),
    domain.UnlockRequestNotFound: ProblemSpec(404, "Unlock request not found"),
    domain.InvalidRequestContext: ProblemSpec(400, "Invalid request"),
    domain.RequestClosed: ProblemSpec(409, "Unlock request closed"),
    domain.MethodNotOffered: ProblemSpec(409, "Method not offered for this request"),
    domain.FaceConsentRequired: ProblemSpec(409, "Face consent is not current"),
    domain.ChallengeNotFound: ProblemSpec(404, "Challenge not found"),
    domain.ChallengeClosed: ProblemSpec(409, "Challenge closed"),
    domain.ProofMissing: ProblemSpec(400, "Invalid request"),
    domain.ProofRejected: ProblemSpec(422, "Proof not accepted"),
    domain.Throttled: ProblemSpec(429, "Too many attempts"),
    domain.DeliveryFailed: ProblemSpec(503, "Message could not be delivered"),
    # Human review (issue 6).
    domain.ReviewCaseNotFound: ProblemSpec(404, "Review case not found"),
    domain.CaseNotClaimable: ProblemSpec(409, "Review case cannot be claimed"),
    domain.CaseNotClaimedByCaller: ProblemSpec(409, "Review case not claimed by the caller"),
    domain.CaseNotAwaitingConfirmation: ProblemSpec(409, "Review case awaits no confirmation"),
    domain.FourEyesRequired: ProblemSpec(403, "A second reviewer must confirm"),
    domain.ReasonCodeMismatch: ProblemSpec(400, "Invalid request"),
    domain.InvalidQueueCursor: ProblemSpec(400, "Invalid request"),
}

# Stable codes for the framework's own HTTP errors.
_HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed for this role"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("body_too_large", "Request body too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("unprocessable", "Unprocessable request"),
    429: ("throttled", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": TYPE_BASE + code,
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update(extra)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_NAMED_FIELD = re.compile(r"(?:missing required field|contains unknown field) `([^`]+)`")


def _field_name(key: str, message: str) -> str:
    """The dotted path of the offending field; msgspec names the parent for missing/unknown ones."""
    parent = "" if key in {"", "data", "body"} else key
    named = _NAMED_FIELD.search(message)
    if named:
        return f"{parent}.{named.group(1)}" if parent else named.group(1)
    return parent or "body"


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    if isinstance(exc.extra, list):
        for item in exc.extra:
            if isinstance(item, dict):
                message = str(item.get("message", "invalid"))
                key = str(item.get("key") or "")
                if item.get("source") not in (None, "body"):
                    key = key or str(item.get("source"))
                errors.append({"field": _field_name(key, message), "message": message})
    return errors


def handle_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = _validation_errors(exc)
    detail = (
        exc.detail if not errors else "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    )
    return problem_response(400, "invalid_request", "Invalid request", detail, errors=errors)


def handle_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(exc.status_code, code, title, exc.detail or title, headers=headers)


def handle_domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    for cls in type(exc).__mro__:
        spec = DOMAIN_ERROR_MAP.get(cls)
        if spec is not None:
            headers = None
            if isinstance(exc, domain.Throttled):
                headers = {"Retry-After": str(exc.retry_after)}
            return problem_response(
                spec.status, exc.code, spec.title, exc.message, headers=headers, **exc.extra
            )
    return handle_unexpected(request, exc)


def handle_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[Any]:
    # msgspec refuses JSON nested past the recursion limit: that is bad input, not a bug.
    return problem_response(
        400, "body_too_deep", "Bad request", "The JSON body is nested too deeply."
    )


def _raised_decoding_the_body(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "decode_json" and "litestar" in code.co_filename:
            return True
        tb = tb.tb_next
    return False


# The database cannot be reached or cannot take the write now (down, restarting, refusing
# connections, out of disk, locked past the busy timeout): the request was not carried out and
# may be retried, so 503, never a 500. Anything else the database raises stays a 500 (a bug).
DATABASE_RETRY_AFTER_S = 1
UNAVAILABLE_DETAIL = "The database is unavailable; nothing was changed. Retry later."
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,  # the pool had no connection to give in time
    asyncpg.PostgresConnectionError,  # class 08: connection does not exist, failure, ...
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # disk full, too many connections
    asyncpg.InterfaceError,  # "connection is closed"
)
# SQLite's OperationalError also means a bug ("no such table", a syntax error): only these
# result codes are the database being unable to take work (base names; extended ones such as
# SQLITE_IOERR_FSYNC start with them). Hand-made errors carry no code: their message decides.
_SQLITE_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_PROTOCOL",
)
_SQLITE_UNAVAILABLE_TEXT = (
    "database or disk is full",
    "database is locked",
    "disk i/o error",
    "readonly database",
    "unable to open database",
)
# Raw socket errors count only when the database driver raised them (asyncpg's connect does).
_DRIVER_MODULES = ("asyncpg", "sqlalchemy", "aiosqlite")


def _raised_by_driver(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = tb.tb_frame.f_globals.get("__name__", "")
        if isinstance(module, str) and module.split(".", 1)[0] in _DRIVER_MODULES:
            return True
        tb = tb.tb_next
    return False


def handle_bad_encoding(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[Any]:
    # msgspec raises UnicodeDecodeError (which Litestar does not turn into a 400) for invalid
    # UTF-8 inside a JSON string: bad input. Anywhere else it is a fault, and stays a 500.
    if not _raised_decoding_the_body(exc):
        return handle_unexpected(request, exc)
    return problem_response(400, "bad_request", "Bad request", "The JSON body is not valid UTF-8.")


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable or cannot take work right now."""
    for cause in causes(exc):
        if isinstance(cause, sa_exc.DBAPIError) and cause.connection_invalidated:
            return True
        if isinstance(cause, sqlite3.Error):
            if _sqlite_unavailable(cause):
                return True
            continue
        if isinstance(cause, sa_exc.OperationalError) and not isinstance(cause.orig, sqlite3.Error):
            return True  # PostgreSQL: could not connect, server closed the connection
        if isinstance(cause, _UNAVAILABLE_TYPES):
            return True
        if isinstance(cause, (ConnectionError, TimeoutError)) and _raised_by_driver(cause):
            return True
    return False


def _sqlite_unavailable(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        return name.startswith(_SQLITE_UNAVAILABLE)
    return any(text in str(exc).lower() for text in _SQLITE_UNAVAILABLE_TEXT)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if database_unavailable(exc):
        # An outage, not a bug: one line per request, no traceback; /health/ready says so too.
        log.warning(
            "database unavailable on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            # The first line names the condition ("database or disk is full"); never the SQL.
            str(exc).split("\n", 1)[0][:200],
        )
        return problem_response(
            503,
            "database_unavailable",
            "Service unavailable",
            UNAVAILABLE_DETAIL,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
            # As /health/ready answers (service/observability.py): the type names the condition.
            type=TYPE_BASE + "unavailable",
        )
    # A 500 is a bug: log it with its traceback, answer without one.
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal_error",
        "Internal error",
        "The service failed to handle this request; it has been logged.",
    )


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    ValidationException: handle_validation,
    HTTPException: handle_http,
    DomainError: handle_domain,
    RecursionError: handle_too_deep,
    UnicodeDecodeError: handle_bad_encoding,
    Exception: handle_unexpected,
}

__all__ = [
    "DOMAIN_ERROR_MAP",
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "DomainError",
    "MediaType",
    "ProblemSpec",
    "database_unavailable",
    "problem_response",
]
