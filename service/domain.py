"""Domain errors of the service's flows: a stable code and a message, and nothing of HTTP.

``service/errors.py`` holds the one map that gives each a status.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    """Base of the service's domain errors: a stable code and a human message, no HTTP."""

    code: ClassVar[str] = "domain_error"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidPhone(DomainError):
    code = "invalid_phone"


class AccountErased(DomainError):
    code = "account_erased"


class TotpAlreadyEnrolled(DomainError):
    code = "totp_already_enrolled"


class TotpNotStarted(DomainError):
    code = "totp_not_started"


class InvalidCode(DomainError):
    code = "invalid_code"


class UnknownProvider(DomainError):
    code = "unknown_provider"


class StaleNoticeVersion(DomainError):
    code = "stale_notice_version"


class ConsentNotAccepted(DomainError):
    code = "consent_not_accepted"


class UnlockRequestNotFound(DomainError):
    code = "unlock_request_not_found"


class InvalidRequestContext(DomainError):
    """A request field that passed the schema but is not meaningful (e.g. an IP that is not one)."""

    code = "invalid_request"
