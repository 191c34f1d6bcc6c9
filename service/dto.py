"""The HTTP contract (DESIGN.md "API contract"): request and response bodies as msgspec Structs.

Requests forbid unknown fields and bound every string and list, so bad input is refused with a
400 naming the field before any flow runs. Responses omit optional fields that are absent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from policy.model import Locale, LockReason, Method, Network

# No control characters in a request string (C0, DEL, C1): a CR/LF in a value that reaches a
# header, an SMS, a log line or a URL could split it. The pattern means the same to msgspec
# (Python `re.search`) and to an OpenAPI client (ECMA-262): Python's `$` also matches before a
# final newline, which `(?!\n)` refuses; in ECMA-262 `$` is the end and the lookahead always
# holds. The earlier form, a lookahead over the whole string (`^(?![\s\S]*[controls])`), means the
# same (tests/service/test_dto_patterns.py) and took 2.6x as long on a 107-character user agent.
SINGLE_LINE = r"^[^\x00-\x1f\x7f-\x9f]*$(?!\n)"
# Free text a person writes may span lines (LF) and hold tabs; CR and other controls are refused.
# LF is allowed, so Python's `$` before a final newline needs no guard here.
MULTI_LINE = r"^[^\x00-\x08\x0b-\x1f\x7f-\x9f]*$"

AccountId = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9._:@-]{1,128}$", description="The platform's account id")
]
DeviceId = Annotated[str, Meta(min_length=1, max_length=128, pattern=SINGLE_LINE)]
Text = Annotated[str, Meta(min_length=1, max_length=512, pattern=SINGLE_LINE)]
AwareTime = Annotated[datetime, Meta(tz=True)]
Country = Annotated[str, Meta(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]


class _In(Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of request bodies: unknown fields are an error, never silently ignored."""


class GeoIn(_In):
    country: Country | None = None
    lat: Latitude | None = None
    lon: Longitude | None = None


class LastLoginIn(_In):
    at: AwareTime | None = None
    device_id: DeviceId | None = None
    geo: GeoIn | None = None


class RequestContextIn(_In):
    ip: Annotated[
        str,
        Meta(
            min_length=2,
            max_length=45,
            pattern=SINGLE_LINE,
            description="IPv4 or IPv6 address",
            # The flow refuses anything else (400 `invalid_request`, field `context.ip`).
            extra_json_schema={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        ),
    ]
    device_id: DeviceId | None = None
    user_agent: Text | None = None
    geo: GeoIn | None = None
    network: Network | None = None
    sim_swap_at: AwareTime | None = None
    credential_changed_at: AwareTime | None = None
    account_created_at: AwareTime | None = None
    last_login: LastLoginIn | None = None
    known_device_ids: Annotated[list[DeviceId], Meta(max_length=100)] | None = None


class UnlockRequestIn(_In):
    account_id: AccountId
    lock_reason: LockReason
    context: RequestContextIn
    locale: Locale = Locale.ZH_CN


class PhoneIn(_In):
    phone: Annotated[
        str,
        Meta(
            min_length=3,
            max_length=32,
            pattern=SINGLE_LINE,
            description="E.164, e.g. +8613800005678",
        ),
    ]
    # The platform attests the number on file was verified by it; an unverified one is never used.
    verified: bool = True


class CodeIn(_In):
    code: Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE)]


class LinkedIdentityIn(_In):
    subject: Annotated[
        str,
        Meta(min_length=1, max_length=255, pattern=SINGLE_LINE, description="The provider's `sub`"),
    ]
    real_name_verified: bool


class FaceConsentIn(_In):
    notice_version: Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE)]
    purpose: Literal["account_unlock"]
    accepted: bool
    channel: Annotated[str, Meta(pattern=r"^[a-z_]{1,32}$")] = "frontend"


# --- responses ---------------------------------------------------------------------------------


class _Out(Struct, omit_defaults=True, kw_only=True):
    pass


class ReasonOut(_Out):
    code: str
    message: str


class OfferedMethodOut(_Out):
    method: Method
    biometric: bool
    optional_alternative: bool
    strength: str
    provider: str | None = None
    target: str | None = None


class NotOfferedOut(_Out):
    method: Method
    reason: str
    message: str
    provider: str | None = None


class OfferOut(_Out):
    factors_required: int
    strong_factors_required: int
    methods: list[OfferedMethodOut]
    not_offered: list[NotOfferedOut]


class RiskOut(_Out):
    level: str
    reasons: list[ReasonOut]


class ReviewOut(_Out):
    available: bool
    required: bool
    appeal_path: str
    case_id: str | None = None
    reasons: list[ReasonOut] = msgspec.field(default_factory=list)


class PolicyRefOut(_Out):
    version: str
    sha256: str


class AuditRefOut(_Out):
    index: int | None


class DecisionOut(_Out):
    id: str
    account_id: str
    status: str
    risk: RiskOut
    offer: OfferOut
    factors_satisfied: list[Method]
    explanation: str
    review: ReviewOut
    policy: PolicyRefOut
    audit: AuditRefOut
    locale: str
    created_at: datetime
    expires_at: datetime


class DecisionListOut(_Out):
    account_id: str
    decisions: list[DecisionOut]


class MaskedPhoneOut(_Out):
    phone: str
    verified: bool


class TotpEnrolmentOut(_Out):
    secret: str
    otpauth_uri: str
    confirmed: bool = False


class TotpStateOut(_Out):
    confirmed: bool


class LinkedIdentityOut(_Out):
    provider: str
    issuer: str
    real_name_verified: bool


class RecoveryCodesOut(_Out):
    codes: list[str]


class FaceConsentOut(_Out):
    state: Literal["none", "active", "withdrawn", "stale"]
    notice_version: str | None = None
    granted_at: datetime | None = None
    withdrawn_at: datetime | None = None
    # While consent is active: per configured face provider, the reference to enrol the
    # person's face under there; the provider names it as `sub` in its attestations.
    provider_subjects: dict[str, str] | None = None


class NoticeSectionOut(_Out):
    processor: str
    purpose: str
    method: str
    retention: str
    necessity: str
    rights: str
    withdraw: str


class FaceNoticeOut(_Out):
    version: str
    purpose: str
    texts: dict[str, NoticeSectionOut]


class MethodsOut(_Out):
    account_id: str
    totp: Literal["none", "unconfirmed", "confirmed"]
    face_consent: FaceConsentOut
    phone: MaskedPhoneOut | None = None
    linked_identities: list[LinkedIdentityOut] = msgspec.field(default_factory=list)
    recovery_codes_remaining: int | None = None


class PolicyOut(_Out):
    version: str
    sha256: str
    document: dict[str, object]


class ErasureOut(_Out):
    account_id: str
    erased: bool
    deliveries_cancelled: int
    audit: AuditRefOut


# --- challenges -----------------------------------------------------------------------------------


class ChallengeIn(_In):
    method: Method
    # Which linked identity, when several providers are bound; or which face provider.
    provider: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")] | None = None


class VerifyIn(_In):
    """The proof. `code` for totp, sms and recovery_code; `code` and `state` from the OIDC callback
    for linked_identity; `attestation` (a compact JWS from the face provider) for face. Nothing
    else: a body carrying an image or template is refused."""

    code: Annotated[str, Meta(min_length=1, max_length=512, pattern=SINGLE_LINE)] | None = None
    state: Annotated[str, Meta(min_length=1, max_length=512, pattern=SINGLE_LINE)] | None = None
    attestation: Annotated[str, Meta(min_length=1, max_length=8192, pattern=SINGLE_LINE)] | None = (
        None
    )


class FaceSessionOut(_Out):
    provider: str
    nonce: str
    audience: str
    # The account's reference at this provider: the face to match is the one enrolled under it,
    # and the attestation's `sub` must name it.
    subject: str


class ChallengeOut(_Out):
    id: str
    method: Method
    expires_at: datetime
    target: str | None = None
    authorization_url: str | None = None
    session: FaceSessionOut | None = None
    attempts_left: int | None = None
