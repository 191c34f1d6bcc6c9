"""The vocabulary of the risk engine: facts in, assessment and offer out. Frozen, no behaviour.

Absent facts are ``None``: unknown, never reassuring. The records are frozen ``msgspec.Struct``s,
not frozen dataclasses: a decision builds a few dozen of them, and a frozen dataclass pays an
``object.__setattr__`` per field (measured: 1.5 µs against 0.15 µs for ten fields; 1.09 M ->
0.96 M instructions per decision).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec


class Method(StrEnum):
    TOTP = "totp"
    LINKED_IDENTITY = "linked_identity"
    RECOVERY_CODE = "recovery_code"
    SMS = "sms"
    FACE = "face"


BIOMETRIC_METHODS = frozenset({Method.FACE})


class Strength(StrEnum):
    # NIST SP 800-63B: PSTN (SMS) is a "restricted" authenticator; never enough alone above low.
    STRONG = "strong"
    RESTRICTED = "restricted"


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _LEVEL_RANK[self]


LEVELS_ASCENDING: tuple[RiskLevel, ...] = (
    RiskLevel.LOW,
    RiskLevel.MEDIUM,
    RiskLevel.HIGH,
    RiskLevel.CRITICAL,
)
_LEVEL_RANK = {level: i for i, level in enumerate(LEVELS_ASCENDING)}


class LockReason(StrEnum):
    SUSPECTED_TAKEOVER = "suspected_takeover"
    TOO_MANY_FAILED_LOGINS = "too_many_failed_logins"
    UNUSUAL_ACTIVITY = "unusual_activity"
    USER_REQUESTED = "user_requested"
    PAYMENT_RISK = "payment_risk"


class Network(StrEnum):
    RESIDENTIAL = "residential"
    MOBILE = "mobile"
    CORPORATE = "corporate"
    PROXY = "proxy"
    TOR = "tor"
    DATACENTER = "datacenter"
    MALICIOUS = "malicious"
    UNKNOWN = "unknown"


class Locale(StrEnum):
    ZH_CN = "zh-CN"
    EN = "en"


class ConsentState(StrEnum):
    NONE = "none"
    ACTIVE = "active"
    WITHDRAWN = "withdrawn"
    # Granted under an older notice version: the person never saw the current one.
    STALE = "stale"


class TotpState(StrEnum):
    NONE = "none"
    UNCONFIRMED = "unconfirmed"
    CONFIRMED = "confirmed"


class SignalCode(StrEnum):
    """Stable reason codes for risk signals. Renaming one breaks clients and audit history."""

    NEW_DEVICE = "NEW_DEVICE"
    UNKNOWN_DEVICE = "UNKNOWN_DEVICE"
    UNUSUAL_LOCATION = "UNUSUAL_LOCATION"
    UNKNOWN_LOCATION = "UNKNOWN_LOCATION"
    IMPOSSIBLE_TRAVEL = "IMPOSSIBLE_TRAVEL"
    RISKY_NETWORK = "RISKY_NETWORK"
    UNKNOWN_NETWORK = "UNKNOWN_NETWORK"
    RECENT_SIM_SWAP = "RECENT_SIM_SWAP"
    RECENT_CREDENTIAL_CHANGE = "RECENT_CREDENTIAL_CHANGE"
    REQUEST_VELOCITY = "REQUEST_VELOCITY"
    RECENT_FAILED_VERIFICATIONS = "RECENT_FAILED_VERIFICATIONS"
    LONG_STANDING_ACCOUNT = "LONG_STANDING_ACCOUNT"
    LOCK_SUSPECTED_TAKEOVER = "LOCK_SUSPECTED_TAKEOVER"
    LOCK_TOO_MANY_FAILED_LOGINS = "LOCK_TOO_MANY_FAILED_LOGINS"
    LOCK_UNUSUAL_ACTIVITY = "LOCK_UNUSUAL_ACTIVITY"
    LOCK_USER_REQUESTED = "LOCK_USER_REQUESTED"
    LOCK_PAYMENT_RISK = "LOCK_PAYMENT_RISK"


# Signals that speak for the person; every other signal may only raise the risk.
MITIGATING_SIGNALS = frozenset({SignalCode.LONG_STANDING_ACCOUNT})

LOCK_REASON_SIGNAL: dict[LockReason, SignalCode] = {
    LockReason.SUSPECTED_TAKEOVER: SignalCode.LOCK_SUSPECTED_TAKEOVER,
    LockReason.TOO_MANY_FAILED_LOGINS: SignalCode.LOCK_TOO_MANY_FAILED_LOGINS,
    LockReason.UNUSUAL_ACTIVITY: SignalCode.LOCK_UNUSUAL_ACTIVITY,
    LockReason.USER_REQUESTED: SignalCode.LOCK_USER_REQUESTED,
    LockReason.PAYMENT_RISK: SignalCode.LOCK_PAYMENT_RISK,
}


class NotOfferedReason(StrEnum):
    NOT_ENROLLED = "NOT_ENROLLED"
    NOT_CONFIRMED = "NOT_CONFIRMED"
    PHONE_NOT_VERIFIED = "PHONE_NOT_VERIFIED"
    IDENTITY_NOT_REAL_NAME_VERIFIED = "IDENTITY_NOT_REAL_NAME_VERIFIED"
    NO_CODES_LEFT = "NO_CODES_LEFT"
    SIM_SWAP_RECENT = "SIM_SWAP_RECENT"
    THROTTLED = "THROTTLED"
    METHOD_NOT_ALLOWED_AT_LEVEL = "METHOD_NOT_ALLOWED_AT_LEVEL"
    NO_FACE_CONSENT = "NO_FACE_CONSENT"
    FACE_CONSENT_WITHDRAWN = "FACE_CONSENT_WITHDRAWN"
    FACE_CONSENT_STALE = "FACE_CONSENT_STALE"
    FACE_DISABLED = "FACE_DISABLED"
    FACE_NOT_ALLOWED_AT_LEVEL = "FACE_NOT_ALLOWED_AT_LEVEL"
    # Face would be the only automated way in: FRM-10 forbids it, so a person reviews instead.
    FACE_WITHOUT_NON_BIOMETRIC_PATH = "FACE_WITHOUT_NON_BIOMETRIC_PATH"
    # Face counts only beside a non-biometric proof (NIST-63B4-3.2.3-a), and here every such
    # proof is enough alone: face could change nothing, so no face is processed (GDPR-5(1)(c)).
    FACE_NOT_NEEDED = "FACE_NOT_NEEDED"


class ReviewReason(StrEnum):
    LEVEL_REQUIRES_REVIEW = "LEVEL_REQUIRES_REVIEW"
    NO_USABLE_METHOD = "NO_USABLE_METHOD"
    # Raised after the decision, by what happened next (the service records them on the request).
    FACE_CHECK_FAILED = "FACE_CHECK_FAILED"
    REPEATED_FAILURES = "REPEATED_FAILURES"
    APPEALED = "APPEALED"


# --- facts in ---------------------------------------------------------------------------------


class GeoPoint(msgspec.Struct, frozen=True):
    country: str | None = None
    lat: float | None = None
    lon: float | None = None


class LastLogin(msgspec.Struct, frozen=True):
    at: datetime | None = None
    device_id: str | None = None
    geo: GeoPoint | None = None


class RequestContext(msgspec.Struct, frozen=True):
    ip: str
    device_id: str | None = None
    user_agent: str | None = None
    geo: GeoPoint | None = None
    network: Network | None = None
    sim_swap_at: datetime | None = None
    credential_changed_at: datetime | None = None
    account_created_at: datetime | None = None
    last_login: LastLogin | None = None
    known_device_ids: frozenset[str] | None = None


class UnlockRequestFacts(msgspec.Struct, frozen=True):
    """What the frontend tells us about one unlock request (DESIGN.md's request object)."""

    account_id: str
    lock_reason: LockReason
    context: RequestContext
    locale: Locale = Locale.ZH_CN


class RequestHistory(msgspec.Struct, frozen=True):
    """What the service's own records say, counted over the policy's windows."""

    recent_unlock_requests: int = 0
    recent_failed_verifications: int = 0


class LinkedIdentity(msgspec.Struct, frozen=True):
    provider: str
    real_name_verified: bool


class PhoneOnFile(msgspec.Struct, frozen=True):
    verified: bool


class AccountFacts(msgspec.Struct, frozen=True):
    totp: TotpState = TotpState.NONE
    linked_identities: tuple[LinkedIdentity, ...] = ()
    # None: never issued; 0: all used.
    recovery_codes_remaining: int | None = None
    phone: PhoneOnFile | None = None
    face_consent: ConsentState = ConsentState.NONE
    throttled_methods: frozenset[Method] = frozenset()


# --- assessment and offer out -----------------------------------------------------------------


class Signal(msgspec.Struct, frozen=True):
    code: SignalCode
    # The network kind behind RISKY_NETWORK (it sets the weight); never shown to the person.
    network: Network | None = None


class Reason(msgspec.Struct, frozen=True):
    code: SignalCode
    weight: int
    # Key into the message catalogs (the code itself): the person sees the message,
    # agents and auditors also see the weight.
    message_key: str


class RiskAssessment(msgspec.Struct, frozen=True):
    level: RiskLevel
    score: int
    reasons: tuple[Reason, ...]
    # Signals whose floor raised the level above what the score alone gives.
    floors_applied: tuple[SignalCode, ...] = ()


class OfferedMethod(msgspec.Struct, frozen=True):
    method: Method
    strength: Strength
    biometric: bool
    optional_alternative: bool
    provider: str | None = None


class NotOffered(msgspec.Struct, frozen=True):
    method: Method
    reason: NotOfferedReason
    provider: str | None = None


class ReviewPath(msgspec.Struct, frozen=True):
    required: bool
    reasons: tuple[ReviewReason, ...] = ()
    # Always true: a person can ask for human review of any decision (PIPL-24, GDPR-22(3)).
    available: bool = True


class Offer(msgspec.Struct, frozen=True):
    factors_required: int
    strong_factors_required: int
    methods: tuple[OfferedMethod, ...]
    not_offered: tuple[NotOffered, ...]
    review: ReviewPath
    # True when the non-biometric methods offered can by themselves meet the requirement.
    non_biometric_path: bool = True


class Decision(msgspec.Struct, frozen=True):
    """The engine's whole answer for one request: never an adverse outcome, only a path."""

    signals: tuple[Signal, ...]
    assessment: RiskAssessment
    offer: Offer
