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


class RequestClosed(DomainError):
    """The unlock request is approved, denied or expired: no more challenges or proofs."""

    code = "request_closed"


class MethodNotOffered(DomainError):
    code = "method_not_offered"


class FaceConsentRequired(DomainError):
    """Face needs the person's consent at the time it is used, not only when it was offered."""

    code = "face_consent_required"


class ChallengeNotFound(DomainError):
    code = "challenge_not_found"


class ChallengeClosed(DomainError):
    code = "challenge_closed"


class ProofMissing(DomainError):
    """The verify body lacks what this method needs (e.g. `code`, or `state` for OIDC)."""

    code = "invalid_request"


class ProofRejected(DomainError):
    """A wrong, reused, expired or invalid proof; carries `reason` and `attempts_left`."""

    code = "proof_rejected"


class Throttled(DomainError):
    """Too many failures or sends; `retry_after` seconds. Other methods and review stay open."""

    code = "throttled"

    def __init__(self, message: str, *, retry_after: int, **extra: object) -> None:
        super().__init__(message, retry_after=retry_after, **extra)
        self.retry_after = retry_after


class DeliveryFailed(DomainError):
    code = "delivery_failed"


# --- human review (issue 6; service/flows/review.py) ---------------------------------------------


class ReviewCaseNotFound(DomainError):
    code = "review_case_not_found"


class CaseNotClaimable(DomainError):
    """Another reviewer holds a live claim, or the case is not open (carries `case_status`)."""

    code = "case_not_claimable"


class CaseNotClaimedByCaller(DomainError):
    """Deciding or releasing needs a live claim held by the caller."""

    code = "case_not_claimed_by_caller"


class CaseNotAwaitingConfirmation(DomainError):
    code = "case_not_awaiting_confirmation"


class FourEyesRequired(DomainError):
    """The reviewer who approved cannot be the one who confirms."""

    code = "four_eyes_required"


class ReasonCodeMismatch(DomainError):
    """A reason code that is not in the closed list for the chosen outcome."""

    code = "invalid_request"


class InvalidQueueCursor(DomainError):
    code = "invalid_request"
