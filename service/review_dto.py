"""Request and response bodies of human review (issue 6): the console's and the person's.

Requests forbid unknown fields and bound every string; a reason is mandatory free text and a
reason code from a closed list (DESIGN.md "Review actions").
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from service.dto import MULTI_LINE

Reason = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=2000,
        pattern=MULTI_LINE,
        description="Why, in words (mandatory, audited)",
    ),
]
Statement = Annotated[str, Meta(min_length=1, max_length=4000, pattern=MULTI_LINE)]


class Outcome(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    NEED_MORE_INFO = "need_more_info"


class ReasonCode(StrEnum):
    IDENTITY_CONFIRMED = "IDENTITY_CONFIRMED"
    FALSE_POSITIVE = "FALSE_POSITIVE"
    IDENTITY_NOT_CONFIRMED = "IDENTITY_NOT_CONFIRMED"
    FRAUD_INDICATORS = "FRAUD_INDICATORS"
    EVIDENCE_REQUESTED = "EVIDENCE_REQUESTED"


# Which codes fit which outcome; a code outside its outcome's list is refused.
CODES_FOR: dict[Outcome, frozenset[ReasonCode]] = {
    Outcome.APPROVE: frozenset({ReasonCode.IDENTITY_CONFIRMED, ReasonCode.FALSE_POSITIVE}),
    Outcome.DENY: frozenset({ReasonCode.IDENTITY_NOT_CONFIRMED, ReasonCode.FRAUD_INDICATORS}),
    Outcome.NEED_MORE_INFO: frozenset({ReasonCode.EVIDENCE_REQUESTED}),
}


class _In(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AppealIn(_In):
    """The person's request for review, or their answer to a question a reviewer asked."""

    statement: Statement | None = None
    contact_preference: Literal["sms", "email", "phone_call", "none"] | None = None


class DecisionIn(_In):
    outcome: Outcome
    reason_code: ReasonCode
    reason: Reason


class ConfirmationIn(_In):
    agree: bool
    reason: Reason


class ReleaseIn(_In):
    reason: Reason


class RevealIn(_In):
    field: Literal["phone", "ip", "device_id"]
    reason: Reason


# --- responses ---------------------------------------------------------------------------------


class _Out(Struct, omit_defaults=True, kw_only=True):
    pass


class ActionOut(_Out):
    action: str
    actor: str
    status_after: str
    at: datetime
    outcome: str | None = None
    reason_code: str | None = None
    reason: str | None = None


class CaseSummaryOut(_Out):
    id: str
    unlock_request_id: str
    status: str
    origin: str
    escalation_reason: str
    risk_level: str
    priority: str
    due_at: datetime
    overdue: bool
    created_at: datetime
    updated_at: datetime
    assignee: str | None = None
    claim_expires_at: datetime | None = None
    first_reviewer: str | None = None
    outcome: str | None = None
    reason_code: str | None = None
    resolution: str | None = None


class CasePageOut(_Out):
    cases: list[CaseSummaryOut]
    next_cursor: str | None = None


class TimelineEventOut(_Out):
    at: datetime
    kind: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class EvidenceOut(_Out):
    """What the request context showed, masked: reveal a value in clear with `…/reveal`."""

    known_account: bool
    phone: str | None = None
    ip: str | None = None
    device_id: str | None = None
    user_agent: str | None = None
    country: str | None = None
    network: str | None = None


class ScoreOut(_Out):
    level: str
    score: int
    weights: dict[str, int]
    floors_applied: list[str]
    policy_version: str
    policy_sha256: str


class CaseDetailOut(_Out):
    case: CaseSummaryOut
    request_status: str
    lock_reason: str
    locale: str
    score: ScoreOut
    evidence: EvidenceOut
    timeline: list[TimelineEventOut]
    actions: list[ActionOut]
    earlier_cases: list[CaseSummaryOut]
    statement: str | None = None
    contact_preference: str | None = None


class RevealOut(_Out):
    field: str
    value: str | None


class AppealOutcomeOut(_Out):
    decision: Literal["approved", "denied"]
    reason_code: str
    explanation: str
    # How to contest a denial; an approval has nothing to contest.
    contest: str | None = None


class AppealOut(_Out):
    """The person's view: where their case stands, what is asked, the outcome and how to contest."""

    id: str
    unlock_request_id: str
    status: str
    status_message: str
    contest_path: str
    created_at: datetime
    updated_at: datetime
    due_at: datetime | None = None
    asked: str | None = None
    outcome: AppealOutcomeOut | None = None
