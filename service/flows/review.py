"""Human review: appeals, the escalation queue, four-eyes decisions and the person's explanation
(issue 6; DESIGN.md principle 2; PIPL-24, GDPR-22(3), NIST-63A4-3.1.6 / 3.1.13 / 3.1.13.1 /
3.1.13.2, OWASP-FP-13).

A case belongs to one unlock request and moves ``open`` -> ``claimed`` -> (a decision) ->
``closed``, or ``awaiting_confirmation`` (an approval at high or critical risk waits for a second
reviewer, a supervisor who is not the first) or ``awaiting_person`` (``need_more_info``: the
person's answer reopens it). A lapsed claim counts as ``open`` again. Only a reviewer's ``deny``
ever makes a request ``denied``; a reviewer's approval does what every approval does
(``challenges.approve_in``). Every action is an audit entry with the actor, the reason code and
the reason text encrypted under the account's data key (erasure shreds it, the log still verifies).

SLA. A case's priority, fixed when it opens or reopens, gives its due time:

    priority   due within     starts at
    urgent     4 h            -
    high       8 h            risk high or critical
    normal     24 h           risk medium
    low        72 h           risk low

and it moves one step more urgent for each of: the person cannot go on without a person (origin
``face_check_failed`` or ``no_usable_method``: NIST-63A4-3.1.13.2 / OWASP-FP-13); the person has
already waited 24 h since the request; the case reopens with the person's answer. Cases past
their due time and still waiting on a reviewer are overdue (``fairunlock_review_cases_overdue``).
"""

# The zh-CN texts use full-width punctuation on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.entry import EntryKind, JSONValue
from policy.config import ReviewSla
from policy.model import ReviewReason
from service import dto
from service import review_dto as rdto
from service.context import ServiceContext
from service.domain import (
    CaseNotAwaitingConfirmation,
    CaseNotClaimable,
    CaseNotClaimedByCaller,
    FourEyesRequired,
    InvalidQueueCursor,
    ReasonCodeMismatch,
    RequestClosed,
    ReviewCaseNotFound,
    UnlockRequestNotFound,
)
from service.errors import DataKeyDestroyed
from service.flows import challenges, unlock
from service.flows.audit_trail import record
from service.flows.enrolment import PHONE_AAD
from service.ids import new_id
from service.persistence.accounts import AccountRepository
from service.persistence.challenges import ChallengeRepository
from service.persistence.review_cases import (
    CaseRow,
    QueueFilter,
    RequestFacts,
    ReviewCaseRepository,
)
from service.persistence.unlock_requests import UnlockRequestRepository, UnlockRequestRow

SYSTEM_ACTOR = "fairunlock"
CLAIM_TTL = timedelta(minutes=30)
MAX_PAGE = 100
EARLIER_CASES = 20
STATEMENT_AAD = b"review_statement"
REASON_AAD = b"review_reason"
ERASED = "[erased]"
# Approvals at these levels need a second reviewer (four-eyes).
FOUR_EYES_LEVELS = frozenset({"high", "critical"})

# NIST-63A4-3.1.13.1: why a trusted referee was used.
ESCALATION_REASON = {
    "appeal": "applicant_request",
    "risk_level": "exception_policy",
    "no_usable_method": "automated_failure",
    "face_check_failed": "automated_failure",
    "repeated_failures": "automated_failure",
}
ORIGINS = tuple(ESCALATION_REASON)

# What the person reads, in their locale (principle 3: no thresholds or weights).
REASON_MESSAGES: dict[str, dict[str, str]] = {
    "IDENTITY_CONFIRMED": {
        "en": "A reviewer confirmed that you own the account.",
        "zh-CN": "工作人员已确认您是该账号的所有者。",
    },
    "FALSE_POSITIVE": {
        "en": "A reviewer found that the risk signals on this request were a false alarm.",
        "zh-CN": "工作人员认定此申请的风险信号属于误报。",
    },
    "IDENTITY_NOT_CONFIRMED": {
        "en": "A reviewer could not confirm from the evidence available that you own the account.",
        "zh-CN": "工作人员根据现有材料未能确认您是该账号的所有者。",
    },
    "FRAUD_INDICATORS": {
        "en": "A reviewer found signs that someone other than the account owner made this request.",
        "zh-CN": "工作人员发现此申请可能并非由账号所有者本人提出。",
    },
    "EVIDENCE_REQUESTED": {
        "en": "A reviewer needs more information from you before deciding.",
        "zh-CN": "工作人员需要您提供更多信息后才能作出决定。",
    },
}
CONTEST_MESSAGES = {
    "en": "If you disagree, send a new appeal with your statement to {path}; "
    "a person will review the request again. You can also start a new unlock request.",
    "zh-CN": "如对此决定有异议，您可以向 {path} 再次提交申诉并附上说明，工作人员将重新复核；"
    "您也可以重新发起解封申请。",
}
STATUS_MESSAGES: dict[str, dict[str, str]] = {
    "in_review": {
        "en": "A person is reviewing your request.",
        "zh-CN": "工作人员正在复核您的申请。",
    },
    "need_more_info": {
        "en": "A reviewer asked you for more information; answer by sending an appeal with "
        "your statement.",
        "zh-CN": "工作人员需要您补充信息；请通过提交申诉并附上说明来回复。",
    },
    "decided": {
        "en": "A person has decided on your request.",
        "zh-CN": "工作人员已对您的申请作出决定。",
    },
}
_PERSON_STATUS = {
    "open": "in_review",
    "claimed": "in_review",
    "awaiting_confirmation": "in_review",
    "awaiting_person": "need_more_info",
    "closed": "decided",
}


def _msg(table: dict[str, str], locale: str) -> str:
    return table.get(locale, table["en"])


# --- SLA -----------------------------------------------------------------------------------------


def priority_for(
    sla: ReviewSla, risk_level: str, origin: str, waited: timedelta, *, reopened: bool
) -> str:
    """The policy's [review] table: a base from the risk level, one step up per aggravation."""
    return sla.priority(risk_level, origin, waited.total_seconds() / 3600, reopened=reopened)


def due_at(sla: ReviewSla, priority: str, now: datetime) -> datetime:
    return now + timedelta(hours=sla.sla_hours[priority])


def origin_of(reasons: Sequence[ReviewReason]) -> str:
    """Which origin a policy-required review has (the decision's review reasons)."""
    if ReviewReason.NO_USABLE_METHOD in reasons:
        return "no_usable_method"
    return "risk_level"


# --- helpers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    row: UnlockRequestRow
    facts: RequestFacts


async def _request(conn: AsyncConnection, request_id: str) -> _Request:
    row = await UnlockRequestRepository(conn).get(request_id)
    facts = await ReviewCaseRepository(conn).request_facts(request_id)
    if row is None or facts is None:
        raise UnlockRequestNotFound("No unlock request with this id.")
    return _Request(row, facts)


def _account_id(ctx: ServiceContext, row: UnlockRequestRow) -> str:
    if row.account_id_sealed is None:
        raise RequestClosed("This request's account was erased.", request_status="erased")
    return ctx.sealer.open(row.account_id_sealed, unlock.ACCOUNT_ID_PURPOSE)


async def _encrypt(
    conn: AsyncConnection, ctx: ServiceContext, row: UnlockRequestRow, text: str, aad: bytes
) -> str:
    # Free text may name a person: only ciphertext under the account's key, here and in the log.
    return await ctx.data_keys.encrypt(conn, _account_id(ctx, row), text.encode(), aad)


async def _decrypt(
    conn: AsyncConnection,
    ctx: ServiceContext,
    row: UnlockRequestRow,
    token: str | None,
    aad: bytes,
) -> str | None:
    if token is None:
        return None
    if row.account_id_sealed is None:
        return ERASED
    account_id = ctx.sealer.open(row.account_id_sealed, unlock.ACCOUNT_ID_PURPOSE)
    try:
        return (await ctx.data_keys.decrypt(conn, account_id, token, aad)).decode()
    except DataKeyDestroyed:
        return ERASED


async def _case(conn: AsyncConnection, case_id: str) -> CaseRow:
    case = await ReviewCaseRepository(conn).get(case_id)
    if case is None:
        raise ReviewCaseNotFound("No review case with this id.")
    return case


async def _act(
    conn: AsyncConnection,
    ctx: ServiceContext,
    case: CaseRow,
    action: str,
    actor: str,
    status_after: str,
    now: datetime,
    *,
    kind: EntryKind = EntryKind.REVIEW_ACTION,
    outcome: str | None = None,
    reason_code: str | None = None,
    reason_ciphertext: str | None = None,
    extra: dict[str, JSONValue] | None = None,
) -> None:
    """Audit entry and action row for one step, in the caller's transaction."""
    data: dict[str, JSONValue] = {
        "case_id": case.id,
        "unlock_request_id": case.unlock_request_id,
        "action": action,
        "status": status_after,
    }
    if outcome is not None:
        data["outcome"] = outcome
    if reason_code is not None:
        data["reason_code"] = reason_code
    if reason_ciphertext is not None:
        data["reason_ciphertext"] = reason_ciphertext
    data.update(extra or {})
    inbox_id = await record(conn, ctx, kind, actor, case.subject, data, now)
    await ReviewCaseRepository(conn).add_action(
        case.id,
        action,
        actor,
        status_after,
        inbox_id,
        now,
        outcome=outcome,
        reason_code=reason_code,
        reason_ciphertext=reason_ciphertext,
    )


def summary(case: CaseRow, now: datetime) -> rdto.CaseSummaryOut:
    status = case.effective_status(now)
    held = status == "claimed"
    return rdto.CaseSummaryOut(
        id=case.id,
        unlock_request_id=case.unlock_request_id,
        status=status,
        origin=case.origin,
        escalation_reason=ESCALATION_REASON.get(case.origin, "exception_policy"),
        risk_level=case.risk_level,
        priority=case.priority,
        due_at=case.due_at,
        overdue=case.overdue(now),
        created_at=case.created_at,
        updated_at=case.updated_at,
        assignee=case.assignee if held else None,
        claim_expires_at=case.claim_expires_at if held else None,
        first_reviewer=case.first_reviewer,
        outcome=case.outcome,
        reason_code=case.reason_code,
        resolution=case.resolution,
    )


# --- opening -------------------------------------------------------------------------------------


async def open_case_in(
    conn: AsyncConnection,
    ctx: ServiceContext,
    request_id: str,
    subject: str,
    *,
    origin: str,
    now: datetime,
    actor: str = SYSTEM_ACTOR,
    statement: str | None = None,
    contact_preference: str | None = None,
) -> str:
    """Open a case for the request in the caller's transaction, or return its active one.

    Idempotent: the request row is locked first (FOR UPDATE on PostgreSQL; SQLite's BEGIN
    IMMEDIATE serialises writers), so two openers cannot both insert; the unique
    ``active_request_id`` is the backstop.
    """
    await ChallengeRepository(conn).lock_request(request_id)
    repo = ReviewCaseRepository(conn)
    active = await repo.active_for(request_id)
    if active is not None:
        return active.id
    req = await _request(conn, request_id)
    priority = priority_for(
        ctx.policy.review, req.facts.risk_level, origin, now - req.facts.created_at, reopened=False
    )
    statement_ciphertext = (
        None if statement is None else await _encrypt(conn, ctx, req.row, statement, STATEMENT_AAD)
    )
    case = CaseRow(
        id=new_id(),
        unlock_request_id=request_id,
        subject=subject,
        status="open",
        origin=origin,
        risk_level=req.facts.risk_level,
        priority=priority,
        due_at=due_at(ctx.policy.review, priority, now),
        statement_ciphertext=statement_ciphertext,
        contact_preference=contact_preference,
        assignee=None,
        claim_expires_at=None,
        first_reviewer=None,
        outcome=None,
        reason_code=None,
        reason_ciphertext=None,
        resolution=None,
        created_at=now,
        updated_at=now,
        closed_at=None,
    )
    await repo.insert(case)
    await _act(
        conn,
        ctx,
        case,
        "opened",
        actor,
        "open",
        now,
        kind=EntryKind.REVIEW_OPENED,
        extra={
            "origin": origin,
            "escalation_reason": ESCALATION_REASON[origin],
            "risk_level": case.risk_level,
            "priority": priority,
            "due_at": case.due_at.isoformat(),
            "statement_given": statement is not None,
        },
    )
    return case.id


# --- the person's side ---------------------------------------------------------------------------


async def appeal(
    ctx: ServiceContext, actor: str, request_id: str, body: rdto.AppealIn
) -> tuple[rdto.AppealOut, bool]:
    """Ask for human review (PIPL-24, GDPR-22(3)); True when a case was opened by this call.

    An active case is returned as it is; if it waits on the person, this is their answer and
    reopens it; a statement sent to a case under review is added to it.
    """
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        state = await ChallengeRepository(conn).lock_request(request_id)
        if state is None:
            raise UnlockRequestNotFound("No unlock request with this id.")
        req = await _request(conn, request_id)
        _account_id(ctx, req.row)  # an erased account has nothing left to review
        if state.status == "approved":
            raise RequestClosed(
                "This request is approved; there is nothing to contest.",
                request_status=state.status,
            )
        repo = ReviewCaseRepository(conn)
        active = await repo.active_for(request_id)
        created = active is None
        if active is None:
            case_id = await open_case_in(
                conn,
                ctx,
                request_id,
                req.row.subject,
                origin="appeal",
                now=now,
                actor=actor,
                statement=body.statement,
                contact_preference=body.contact_preference,
            )
            if state.review_reason is None:
                # The decision now says a person was asked to look (APPEALED).
                await ChallengeRepository(conn).update_request(
                    request_id,
                    status=state.status,
                    factors=state.factors,
                    review_reason=ReviewReason.APPEALED.value,
                    now=now,
                )
        else:
            case_id = active.id
            if body.statement is not None:
                await _answer(conn, ctx, req, active, actor, body.statement, now)
        case = await _case(conn, case_id)
        out = await _appeal_out(conn, ctx, req, case, now)
    return out, created


async def _answer(
    conn: AsyncConnection,
    ctx: ServiceContext,
    req: _Request,
    case: CaseRow,
    actor: str,
    statement: str,
    now: datetime,
) -> None:
    repo = ReviewCaseRepository(conn)
    ciphertext = await _encrypt(conn, ctx, req.row, statement, STATEMENT_AAD)
    if case.status != "awaiting_person":
        await _act(
            conn,
            ctx,
            case,
            "statement_added",
            actor,
            case.status,
            now,
            reason_ciphertext=ciphertext,
        )
        return
    priority = priority_for(
        ctx.policy.review, case.risk_level, case.origin, now - req.facts.created_at, reopened=True
    )
    won = await repo.transition(
        case.id,
        expect=repo.in_status("awaiting_person"),
        now=now,
        status="open",
        priority=priority,
        due_at=due_at(ctx.policy.review, priority, now),
        assignee=None,
        claim_expires_at=None,
    )
    if won:
        await _act(
            conn,
            ctx,
            case,
            "answered",
            actor,
            "open",
            now,
            reason_ciphertext=ciphertext,
            extra={"priority": priority},
        )


async def appeal_status(ctx: ServiceContext, request_id: str, case_id: str) -> rdto.AppealOut:
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        req = await _request(conn, request_id)
        case = await ReviewCaseRepository(conn).get(case_id)
        if case is None or case.unlock_request_id != request_id:
            raise ReviewCaseNotFound("No review case with this id for this unlock request.")
        return await _appeal_out(conn, ctx, req, case, now)


async def _appeal_out(
    conn: AsyncConnection, ctx: ServiceContext, req: _Request, case: CaseRow, now: datetime
) -> rdto.AppealOut:
    locale = req.facts.locale
    person_status = _PERSON_STATUS[case.effective_status(now)]
    path = f"/v1/unlock-requests/{case.unlock_request_id}/appeals"
    asked = None
    if case.status == "awaiting_person":
        asked = await _decrypt(conn, ctx, req.row, case.reason_ciphertext, REASON_AAD)
    return rdto.AppealOut(
        id=case.id,
        unlock_request_id=case.unlock_request_id,
        status=person_status,
        status_message=_msg(STATUS_MESSAGES[person_status], locale),
        created_at=case.created_at,
        updated_at=case.updated_at,
        due_at=case.due_at if case.status != "closed" else None,
        asked=asked,
        outcome=_outcome(case, locale),
        contest_path=path,
    )


def _outcome(case: CaseRow, locale: str) -> rdto.AppealOutcomeOut | None:
    if case.resolution not in ("approved", "denied") or case.reason_code is None:
        return None
    path = f"/v1/unlock-requests/{case.unlock_request_id}/appeals"
    return rdto.AppealOutcomeOut(
        decision="approved" if case.resolution == "approved" else "denied",
        reason_code=case.reason_code,
        explanation=_msg(REASON_MESSAGES[case.reason_code], locale),
        contest=_msg(CONTEST_MESSAGES, locale).format(path=path)
        if case.resolution == "denied"
        else None,
    )


async def attach_in(
    conn: AsyncConnection, ctx: ServiceContext, decisions: list[dto.DecisionOut]
) -> list[dto.DecisionOut]:
    """Decisions with their latest review case (``review.case_id``) and, once a reviewer decided
    or asked for more, that outcome's explanation among ``review.reasons``."""
    latest = await ReviewCaseRepository(conn).latest_for_requests([d.id for d in decisions])
    out = []
    for d in decisions:
        case = latest.get(d.id)
        if case is None:
            out.append(d)
            continue
        reasons = list(d.review.reasons)
        outcome = _outcome(case, d.locale)
        if outcome is not None:
            reasons.append(
                dto.ReasonOut(
                    code=outcome.reason_code,
                    message=" ".join(filter(None, [outcome.explanation, outcome.contest])),
                )
            )
        elif case.status == "awaiting_person":
            reasons.append(
                dto.ReasonOut(
                    code=rdto.ReasonCode.EVIDENCE_REQUESTED.value,
                    message=_msg(REASON_MESSAGES["EVIDENCE_REQUESTED"], d.locale),
                )
            )
        review = msgspec.structs.replace(d.review, case_id=case.id, reasons=reasons)
        out.append(msgspec.structs.replace(d, review=review))
    return out


def with_case(decision: dto.DecisionOut, case_id: str) -> dto.DecisionOut:
    return msgspec.structs.replace(
        decision, review=msgspec.structs.replace(decision.review, case_id=case_id)
    )


# --- the console ---------------------------------------------------------------------------------


def encode_cursor(case: CaseRow) -> str:
    raw = f"{case.due_at.isoformat()}|{case.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        due, case_id = raw.split("|", 1)
        moment = datetime.fromisoformat(due)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidQueueCursor(
            "cursor: not a cursor this service issued",
            errors=[{"field": "cursor", "message": "invalid cursor"}],
        ) from None
    if moment.tzinfo is None:
        raise InvalidQueueCursor(
            "cursor: not a cursor this service issued",
            errors=[{"field": "cursor", "message": "invalid cursor"}],
        )
    return moment, case_id


async def queue(
    ctx: ServiceContext, filters: QueueFilter, cursor: str | None, limit: int
) -> rdto.CasePageOut:
    now = ctx.clock()
    limit = max(1, min(limit, MAX_PAGE))
    after = None if cursor is None else decode_cursor(cursor)
    async with ctx.engine.connect() as conn:
        rows = await ReviewCaseRepository(conn).queue(
            dataclasses.replace(filters, after=after),
            now,
            limit + 1,
        )
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return rdto.CasePageOut(cases=[summary(c, now) for c in page], next_cursor=next_cursor)


async def overdue_count(ctx: ServiceContext) -> int:
    async with ctx.engine.connect() as conn:
        return await ReviewCaseRepository(conn).count_overdue(ctx.clock())


def _truncate_ip(ip: str) -> str:
    # Network only: /24 for IPv4, /48 for IPv6 (enough to see the network, not the host).
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return "[invalid]"
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _mask_device(device_id: str) -> str:
    keep = min(3, len(device_id) // 2)
    return device_id[:keep] + "*" * (len(device_id) - keep)


async def _context(
    conn: AsyncConnection, ctx: ServiceContext, req: _Request
) -> dict[str, Any] | None:
    token = req.facts.context_ciphertext
    if token is None or req.row.account_id_sealed is None:
        return None
    account_id = ctx.sealer.open(req.row.account_id_sealed, unlock.ACCOUNT_ID_PURPOSE)
    try:
        raw = await ctx.data_keys.decrypt(conn, account_id, token, unlock.CONTEXT_AAD)
    except DataKeyDestroyed:
        return None
    context: dict[str, Any] = json.loads(raw)
    return context


async def _phone(
    conn: AsyncConnection, ctx: ServiceContext, req: _Request
) -> tuple[str, str] | None:
    """(masked, ciphertext) of the phone on file, if any."""
    snapshot = await AccountRepository(conn).snapshot(req.row.subject)
    if snapshot.phone is None or not req.row.known_account:
        return None
    return snapshot.phone.masked, snapshot.phone.ciphertext


async def detail(ctx: ServiceContext, case_id: str) -> rdto.CaseDetailOut:
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        repo = ReviewCaseRepository(conn)
        case = await _case(conn, case_id)
        req = await _request(conn, case.unlock_request_id)
        stored = msgspec.json.decode(req.row.decision_json, type=unlock.StoredDecision)
        decision = stored.decision
        context = await _context(conn, ctx, req) or {}
        phone = await _phone(conn, ctx, req)
        evidence = rdto.EvidenceOut(
            known_account=req.row.known_account,
            phone=None if phone is None else phone[0],
            ip=_truncate_ip(context["ip"]) if context.get("ip") else None,
            device_id=_mask_device(context["device_id"]) if context.get("device_id") else None,
            user_agent=(context.get("user_agent") or "").split(" ", 1)[0] or None,
            country=(context.get("geo") or {}).get("country"),
            network=context.get("network"),
        )
        timeline = [
            rdto.TimelineEventOut(
                at=req.row.created_at,
                kind="request",
                data={"lock_reason": req.facts.lock_reason, "locale": req.facts.locale},
            ),
            rdto.TimelineEventOut(
                at=decision.created_at,
                kind="decision",
                data={
                    "status": decision.status,
                    "level": decision.risk.level,
                    "reasons": [r.code for r in decision.risk.reasons],
                    "offered": [m.method.value for m in decision.offer.methods],
                    "not_offered": [
                        {"method": n.method.value, "reason": n.reason}
                        for n in decision.offer.not_offered
                    ],
                    "factors_required": decision.offer.factors_required,
                    "review_reasons": [r.code for r in decision.review.reasons],
                },
            ),
        ]
        for ch in await repo.challenges_of(req.row.id):
            timeline.append(
                rdto.TimelineEventOut(
                    at=ch["created_at"],
                    kind="challenge",
                    data={
                        "challenge_id": ch["id"],
                        "method": ch["method"],
                        "provider": ch["provider"],
                        "status": ch["status"],
                        "attempts": ch["attempts"],
                    },
                )
            )
        for at in await repo.attempts_of(req.row.id):
            timeline.append(
                rdto.TimelineEventOut(
                    at=at["created_at"],
                    kind="attempt",
                    data={"method": at["method"], "outcome": at["outcome"]},
                )
            )
        for consent in await repo.consents_of(req.row.subject):
            timeline.append(
                rdto.TimelineEventOut(
                    at=consent["granted_at"],
                    kind="consent_granted",
                    data={
                        "notice_version": consent["notice_version"],
                        "purpose": consent["purpose"],
                        "channel": consent["channel"],
                    },
                )
            )
            if consent["withdrawn_at"] is not None:
                timeline.append(
                    rdto.TimelineEventOut(
                        at=consent["withdrawn_at"],
                        kind="consent_withdrawn",
                        data={"notice_version": consent["notice_version"]},
                    )
                )
        actions = []
        for a in await repo.actions(case.id):
            actions.append(
                rdto.ActionOut(
                    action=a.action,
                    actor=a.actor,
                    status_after=a.status_after,
                    at=a.created_at,
                    outcome=a.outcome,
                    reason_code=a.reason_code,
                    reason=await _decrypt(
                        conn,
                        ctx,
                        req.row,
                        a.reason_ciphertext,
                        STATEMENT_AAD
                        if a.action in ("answered", "statement_added")
                        else REASON_AAD,
                    ),
                )
            )
            timeline.append(
                rdto.TimelineEventOut(
                    at=a.created_at,
                    kind=f"case_{a.action}",
                    data={"actor": a.actor, "status": a.status_after},
                )
            )
        earlier = [
            summary(c, now)
            for c in await repo.for_subject(case.subject, EARLIER_CASES + 1)
            if c.id != case.id
        ][:EARLIER_CASES]
        statement = await _decrypt(conn, ctx, req.row, case.statement_ciphertext, STATEMENT_AAD)
        request_status = unlock.view(ctx, req.row, None, now).status
    timeline.sort(key=lambda e: e.at)
    return rdto.CaseDetailOut(
        case=summary(case, now),
        request_status=request_status,
        lock_reason=req.facts.lock_reason,
        locale=req.facts.locale,
        score=rdto.ScoreOut(
            level=decision.risk.level,
            score=stored.score,
            weights=stored.weights,
            floors_applied=stored.floors_applied,
            policy_version=decision.policy.version,
            policy_sha256=decision.policy.sha256,
        ),
        evidence=evidence,
        timeline=timeline,
        actions=actions,
        earlier_cases=earlier,
        statement=statement,
        contact_preference=case.contact_preference,
    )


async def claim(ctx: ServiceContext, actor: str, case_id: str) -> rdto.CaseSummaryOut:
    """One reviewer at a time: a conditional update lets exactly one of concurrent claims win."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        repo = ReviewCaseRepository(conn)
        case = await _case(conn, case_id)
        expect = repo.claimable(now)
        if case.effective_status(now) == "claimed" and case.assignee == actor:
            expect = repo.held_by(actor, now)  # renewing one's own claim
        won = await repo.transition(
            case_id,
            expect=expect,
            now=now,
            status="claimed",
            assignee=actor,
            claim_expires_at=now + CLAIM_TTL,
        )
        if not won:
            current = await _case(conn, case_id)
            raise CaseNotClaimable(
                f"This case is {current.effective_status(now)} and cannot be claimed.",
                case_status=current.effective_status(now),
            )
        await _act(
            conn,
            ctx,
            case,
            "claimed",
            actor,
            "claimed",
            now,
            extra={"claim_expires_at": (now + CLAIM_TTL).isoformat()},
        )
        case = await _case(conn, case_id)
    return summary(case, now)


async def release(
    ctx: ServiceContext, actor: str, case_id: str, body: rdto.ReleaseIn
) -> rdto.CaseSummaryOut:
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        repo = ReviewCaseRepository(conn)
        case = await _case(conn, case_id)
        req = await _request(conn, case.unlock_request_id)
        won = await repo.transition(
            case_id,
            expect=repo.held_by(actor, now),
            now=now,
            status="open",
            assignee=None,
            claim_expires_at=None,
        )
        if not won:
            raise _not_claimed(case, now)
        reason = await _encrypt(conn, ctx, req.row, body.reason, REASON_AAD)
        await _act(conn, ctx, case, "released", actor, "open", now, reason_ciphertext=reason)
        case = await _case(conn, case_id)
    return summary(case, now)


def _not_claimed(case: CaseRow, now: datetime) -> CaseNotClaimedByCaller:
    return CaseNotClaimedByCaller(
        "Claim the case first: only the reviewer holding a live claim can act on it.",
        case_status=case.effective_status(now),
    )


async def decide(
    ctx: ServiceContext, actor: str, case_id: str, body: rdto.DecisionIn
) -> rdto.CaseSummaryOut:
    if body.reason_code not in rdto.CODES_FOR[body.outcome]:
        allowed = sorted(c.value for c in rdto.CODES_FOR[body.outcome])
        raise ReasonCodeMismatch(
            f"reason_code: {body.reason_code.value} does not fit outcome {body.outcome.value}",
            errors=[{"field": "reason_code", "message": f"expected one of {', '.join(allowed)}"}],
        )
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        repo = ReviewCaseRepository(conn)
        case = await _case(conn, case_id)
        held = repo.held_by(actor, now)
        if case.effective_status(now) != "claimed" or case.assignee != actor:
            raise _not_claimed(case, now)
        state = await ChallengeRepository(conn).lock_request(case.unlock_request_id)
        assert state is not None  # a case's request exists (foreign key) and is never deleted
        request_status = state.status
        req = await _request(conn, case.unlock_request_id)
        if body.outcome is rdto.Outcome.APPROVE and not req.row.known_account:
            # No account exists to unlock; the person was answered like any other (OWASP-FP-1/2).
            raise RequestClosed(
                "No account with this id is known here, so nothing can be unlocked; deny or ask "
                "for more information.",
                request_status="unknown_account",
            )
        reason = await _encrypt(conn, ctx, req.row, body.reason, REASON_AAD)
        decided: dict[str, Any] = {
            "outcome": body.outcome.value,
            "reason_code": body.reason_code.value,
            "reason_ciphertext": reason,
            "assignee": None,
            "claim_expires_at": None,
        }
        # NIST-63A4-3.1.13.1: what evidence was presented and which processes were completed.
        factors: list[str] = json.loads(req.row.factors_satisfied)
        evidence = ["decision_record", *(f"proof:{m}" for m in factors)]
        if case.statement_ciphertext is not None:
            evidence.append("applicant_statement")
        steps: dict[str, JSONValue] = {
            "steps_completed": list(factors),
            "evidence_types": list(evidence),
            "escalation_reason": ESCALATION_REASON.get(case.origin, "exception_policy"),
        }
        if body.outcome is rdto.Outcome.NEED_MORE_INFO:
            status_after = "awaiting_person"
            won = await repo.transition(
                case_id, expect=held, now=now, status=status_after, **decided
            )
            if won:
                await _tell_person(conn, case, "need_more_info", now)
        elif body.outcome is rdto.Outcome.DENY:
            if request_status == "approved":
                raise RequestClosed(
                    "The person has since proven ownership and the request is approved; "
                    "approve to close the case.",
                    request_status=request_status,
                )
            status_after = "closed"
            won = await repo.transition(
                case_id, expect=held, now=now, status=status_after, resolution="denied", **decided
            )
            if won:
                await _deny_request(conn, ctx, actor, case, body.reason_code.value, now)
        elif case.risk_level in FOUR_EYES_LEVELS and request_status != "approved":
            status_after = "awaiting_confirmation"
            won = await repo.transition(
                case_id, expect=held, now=now, status=status_after, first_reviewer=actor, **decided
            )
        else:
            status_after = "closed"
            won = await repo.transition(
                case_id,
                expect=held,
                now=now,
                status=status_after,
                first_reviewer=actor,
                resolution="approved",
                **decided,
            )
        if not won:
            raise _not_claimed(case, now)
        await _act(
            conn,
            ctx,
            case,
            "decided",
            actor,
            status_after,
            now,
            outcome=body.outcome.value,
            reason_code=body.reason_code.value,
            reason_ciphertext=reason,
            extra=steps,
        )
        if status_after == "closed" and body.outcome is rdto.Outcome.APPROVE:
            await _approve_request(conn, ctx, actor, case, now)
        case = await _case(conn, case_id)
    return summary(case, now)


async def confirm(
    ctx: ServiceContext, actor: str, case_id: str, body: rdto.ConfirmationIn
) -> rdto.CaseSummaryOut:
    """The second reviewer of an approval at high or critical risk (four-eyes)."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        repo = ReviewCaseRepository(conn)
        case = await _case(conn, case_id)
        if case.status != "awaiting_confirmation":
            raise CaseNotAwaitingConfirmation(
                "Only an approval awaiting a second reviewer can be confirmed.",
                case_status=case.effective_status(now),
            )
        if case.first_reviewer == actor:
            raise FourEyesRequired(
                "The reviewer who approved cannot also confirm: a second person must."
            )
        # The request first, then the case: the order every review write takes (no deadlock).
        await ChallengeRepository(conn).lock_request(case.unlock_request_id)
        req = await _request(conn, case.unlock_request_id)
        reason = await _encrypt(conn, ctx, req.row, body.reason, REASON_AAD)
        expect = repo.in_status("awaiting_confirmation")
        if body.agree:
            status_after, action, code = "closed", "confirmed", "APPROVAL_CONFIRMED"
            won = await repo.transition(
                case_id, expect=expect, now=now, status="closed", resolution="approved"
            )
        else:
            # Back to the queue for a fresh decision, by anyone but on the record.
            status_after, action, code = "open", "rejected", "APPROVAL_REJECTED"
            won = await repo.transition(
                case_id,
                expect=expect,
                now=now,
                status="open",
                first_reviewer=None,
                outcome=None,
                reason_code=None,
                reason_ciphertext=None,
            )
        if not won:
            raise CaseNotAwaitingConfirmation(
                "Another reviewer confirmed or rejected this approval first.",
                case_status=(await _case(conn, case_id)).effective_status(now),
            )
        await _act(
            conn,
            ctx,
            case,
            action,
            actor,
            status_after,
            now,
            reason_code=code,
            reason_ciphertext=reason,
            extra={"first_reviewer": case.first_reviewer or ""},
        )
        if body.agree:
            await _approve_request(conn, ctx, actor, case, now)
        case = await _case(conn, case_id)
    return summary(case, now)


async def _approve_request(
    conn: AsyncConnection, ctx: ServiceContext, actor: str, case: CaseRow, now: datetime
) -> None:
    """Mark the request approved and do what every approval does (audit, webhook, notice)."""
    repo = ChallengeRepository(conn)
    state = await repo.lock_request(case.unlock_request_id)
    assert state is not None
    if state.status == "approved":
        return  # the person proved ownership meanwhile: the account system was told already
    row = await UnlockRequestRepository(conn).get(case.unlock_request_id)
    assert row is not None
    _account_id(ctx, row)  # an erased account cannot be unlocked
    await repo.update_request(
        row.id, status="approved", factors=state.factors, review_reason=state.review_reason, now=now
    )
    decision = unlock.view(ctx, row, None, now)
    loaded = challenges.Loaded(row, decision, decision.account_id)
    await challenges.approve_in(conn, ctx, actor, loaded, now, via="review")


async def _deny_request(
    conn: AsyncConnection,
    ctx: ServiceContext,
    actor: str,
    case: CaseRow,
    reason_code: str,
    now: datetime,
) -> None:
    """The only place a request becomes ``denied`` (principle 2): a reviewer's decision."""
    repo = ChallengeRepository(conn)
    state = await repo.lock_request(case.unlock_request_id)
    assert state is not None
    await repo.update_request(
        case.unlock_request_id,
        status="denied",
        factors=state.factors,
        review_reason=state.review_reason,
        now=now,
    )
    await record(
        conn,
        ctx,
        EntryKind.DECISION,
        actor,
        case.subject,
        {
            "unlock_request_id": case.unlock_request_id,
            "status": "denied",
            "via": "review",
            "case_id": case.id,
            "reason_code": reason_code,
        },
        now,
    )
    await _tell_person(conn, case, "denied", now)


async def _tell_person(conn: AsyncConnection, case: CaseRow, outcome: str, now: datetime) -> None:
    """A reviewer's denial or question reaches the person on the channels on file (through the
    outbox, after commit); the message says only where to look, never the reason or any data."""
    row = await UnlockRequestRepository(conn).get(case.unlock_request_id)
    if row is None or row.account_id_sealed is None:
        return  # erased: no channel left
    await ChallengeRepository(conn).enqueue(
        "notify_review",
        case.subject,
        {
            "unlock_request_id": case.unlock_request_id,
            "account_id_sealed": row.account_id_sealed,
            "locale": json.loads(row.decision_json)["decision"]["locale"],
            "outcome": outcome,
        },
        now,
    )


async def reveal(
    ctx: ServiceContext, actor: str, case_id: str, body: rdto.RevealIn
) -> rdto.RevealOut:
    """A masked value in clear, for a supervisor with a reason; the look itself is audited."""
    now = ctx.clock()
    async with ctx.engine.begin() as conn:
        case = await _case(conn, case_id)
        req = await _request(conn, case.unlock_request_id)
        account_id = _account_id(ctx, req.row)
        value: str | None = None
        if body.field == "phone":
            phone = await _phone(conn, ctx, req)
            if phone is not None:
                raw = await ctx.data_keys.decrypt(conn, account_id, phone[1], PHONE_AAD)
                value = raw.decode()
        else:
            context = await _context(conn, ctx, req) or {}
            found = context.get(body.field)
            value = None if found is None else str(found)
        reason = await _encrypt(conn, ctx, req.row, body.reason, REASON_AAD)
        await _act(
            conn,
            ctx,
            case,
            "revealed",
            actor,
            case.status,
            now,
            reason_ciphertext=reason,
            extra={"field": body.field},
        )
    return rdto.RevealOut(field=body.field, value=value)
