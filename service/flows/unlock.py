"""The unlock-request flow: facts in, a stored, audited decision out (DESIGN.md "The unlock flow").

The engine never decides against a person: the statuses it produces are ``pending_verification``
and ``review_required``; ``denied`` exists only as a reviewer's outcome.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.entry import MAX_SAFE_INTEGER, EntryKind, struct_event_payload
from audit.store import AuditStore, InboxRow
from policy.config import Policy
from policy.engine import decide
from policy.explain import explain
from policy.model import (
    AccountFacts,
    ConsentState,
    Decision,
    GeoPoint,
    LastLogin,
    LinkedIdentity,
    Locale,
    Method,
    PhoneOnFile,
    RequestContext,
    TotpState,
    UnlockRequestFacts,
)
from service import dto
from service.context import ServiceContext
from service.db import deadlocked, reader
from service.domain import InvalidRequestContext, UnlockRequestNotFound
from service.flows.audit_trail import index_of, integrate_direct_in
from service.flows.enrolment import consent_state
from service.flows.throttle_windows import METHOD_FAILURES_WINDOW
from service.group_commit import GroupCommit
from service.ids import new_id
from service.persistence.accounts import AccountRepository, AccountSnapshot
from service.persistence.unlock_requests import (
    DecisionInputs,
    UnlockRequestRepository,
    UnlockRequestRow,
)

CONTEXT_AAD = b"unlock_request_context"
ACCOUNT_ID_PURPOSE = b"unlock_request.account_id"
ERASED = "[erased]"
MAX_LISTED = 100


class StoredDecision(msgspec.Struct, kw_only=True):
    """What is stored per request: the person's view, and the breakdown agents and auditors see."""

    decision: dto.DecisionOut
    score: int
    weights: dict[str, int]
    floors_applied: list[str]


_DECODER = msgspec.json.Decoder(StoredDecision)


def _geo(g: dto.GeoIn | None) -> GeoPoint | None:
    return None if g is None else GeoPoint(country=g.country, lat=g.lat, lon=g.lon)


def is_ip_address(text: str) -> bool:
    """``ipaddress.ip_address(text)`` succeeds. The usual IPv4 address is checked by the C
    library first (0.1 against 1.9 µs): what it accepts, ipaddress accepts too (property-tested);
    everything else goes to ipaddress, so the answer is always ipaddress's."""
    try:
        socket.inet_pton(socket.AF_INET, text)
        return True
    except (OSError, ValueError, UnicodeError):
        pass
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def to_facts(body: dto.UnlockRequestIn) -> UnlockRequestFacts:
    c = body.context
    if not is_ip_address(c.ip):
        raise InvalidRequestContext(
            "context.ip: not an IPv4 or IPv6 address",
            errors=[{"field": "context.ip", "message": "not an IPv4 or IPv6 address"}],
        )
    last = c.last_login
    return UnlockRequestFacts(
        account_id=body.account_id,
        lock_reason=body.lock_reason,
        locale=body.locale,
        context=RequestContext(
            ip=c.ip,
            device_id=c.device_id,
            user_agent=c.user_agent,
            geo=_geo(c.geo),
            network=c.network,
            sim_swap_at=c.sim_swap_at,
            credential_changed_at=c.credential_changed_at,
            account_created_at=c.account_created_at,
            last_login=None
            if last is None
            else LastLogin(at=last.at, device_id=last.device_id, geo=_geo(last.geo)),
            known_device_ids=None if c.known_device_ids is None else frozenset(c.known_device_ids),
        ),
    )


def account_facts(
    snapshot: AccountSnapshot, ctx: ServiceContext, throttled: frozenset[Method] = frozenset()
) -> AccountFacts:
    return AccountFacts(
        totp=snapshot.totp_state,
        linked_identities=tuple(
            LinkedIdentity(r.provider, r.real_name_verified)
            for r in snapshot.linked
            if r.provider in ctx.oidc_providers
        ),
        recovery_codes_remaining=snapshot.recovery_codes_remaining,
        phone=None if snapshot.phone is None else PhoneOnFile(snapshot.phone.verified),
        face_consent=consent_state(snapshot.consent, ctx.notice.version),
        throttled_methods=throttled,
    )


def phantom_account(subject: str) -> tuple[AccountFacts, str]:
    """A plausible, stable profile for an account we do not know (OWASP-FP-1/2).

    Derived from the keyed pseudonym, so the same unknown id always looks the same and nothing
    tells it apart from a real account; nothing is ever sent for it and no proof can succeed.
    """
    h = bytes.fromhex(subject)
    digits = "".join(str(b % 10) for b in h[4:8])
    masked = f"+86 13{h[3] % 10}****{digits}"
    # Always one strong method and a phone, like a typical enrolled account, so the status is the
    # one a real account with those methods would get.
    has_totp = bool(h[0] & 1)
    facts = AccountFacts(
        totp=TotpState.CONFIRMED if has_totp else TotpState.NONE,
        recovery_codes_remaining=None if has_totp else 10,
        phone=PhoneOnFile(verified=True),
        face_consent=ConsentState.NONE,
    )
    return facts, masked


# explain() is a pure function of the assessment, the offer and the catalog, and a worker meets
# few distinct pairs: a remembered text saves building it (~8 µs) and, being the same str object,
# its UTF-8 form, which msgspec makes on first encoding. Keyed by the policy's hash, so a
# reloaded policy never gets an old catalog's text; emptied when full.
_EXPLANATIONS: dict[tuple[object, ...], str] = {}
MAX_EXPLANATIONS = 1024


def explanation(decision: Decision, policy: Policy, locale: Locale) -> str:
    """``explain(decision, policy.catalogs[locale])``, remembered per policy, locale, assessment
    and offer (explain never reads the signals, only what they became)."""
    key = (policy.sha256, locale, decision.assessment, decision.offer)
    text = _EXPLANATIONS.get(key)
    if text is None:
        if len(_EXPLANATIONS) >= MAX_EXPLANATIONS:
            _EXPLANATIONS.clear()
        text = _EXPLANATIONS[key] = explain(decision, policy.catalogs[locale])
    return text


def _decision_out(
    request_id: str,
    account_id: str,
    decision: Decision,
    policy: Policy,
    locale: Locale,
    phone_masked: str | None,
    now: datetime,
    expires_at: datetime,
) -> dto.DecisionOut:
    catalog = policy.catalogs[locale]
    offer = decision.offer
    appeal_path = f"/v1/unlock-requests/{request_id}/appeals"
    return dto.DecisionOut(
        id=request_id,
        account_id=account_id,
        status="review_required" if offer.review.required else "pending_verification",
        risk=dto.RiskOut(
            level=decision.assessment.level.value,
            reasons=[
                dto.ReasonOut(code=r.code, message=catalog.reasons[r.code])
                for r in decision.assessment.reasons
            ],
        ),
        offer=dto.OfferOut(
            factors_required=offer.factors_required,
            strong_factors_required=offer.strong_factors_required,
            methods=[
                dto.OfferedMethodOut(
                    method=m.method,
                    biometric=m.biometric,
                    optional_alternative=m.optional_alternative,
                    strength=m.strength.value,
                    provider=m.provider,
                    target=phone_masked if m.method is Method.SMS else None,
                )
                for m in offer.methods
            ],
            not_offered=[
                dto.NotOfferedOut(
                    method=n.method,
                    reason=n.reason.value,
                    message=catalog.not_offered[n.reason],
                    provider=n.provider,
                )
                for n in offer.not_offered
            ],
        ),
        factors_satisfied=[],
        explanation=explanation(decision, policy, locale),
        review=dto.ReviewOut(
            available=True,
            required=offer.review.required,
            appeal_path=appeal_path,
            reasons=[
                dto.ReasonOut(code=r.value, message=catalog.review[r.value])
                for r in offer.review.reasons
            ],
        ),
        policy=dto.PolicyRefOut(version=policy.version, sha256=policy.sha256),
        audit=dto.AuditRefOut(index=None),
        locale=locale.value,
        created_at=now,
        expires_at=expires_at,
    )


class NotOfferedEntry(msgspec.Struct):
    method: str
    reason: str


class DecisionEntry(msgspec.Struct):
    """A decision's audit data (the entry's ``data``): codes and outcomes only; no IP, device id,
    location or phone number enters the log. Enum members encode as their values."""

    unlock_request_id: str
    status: str
    lock_reason: str
    level: str
    score: int
    reasons: list[str]
    offered: list[str]
    not_offered: list[NotOfferedEntry]
    factors_required: int
    review_required: bool
    policy_version: str
    policy_sha256: str

    def __post_init__(self) -> None:
        # struct_event_payload's contract: integers within the range every JSON reader keeps.
        for number in (self.score, self.factors_required):
            if not -MAX_SAFE_INTEGER <= number <= MAX_SAFE_INTEGER:
                raise ValueError(f"{number} is outside ±(2**53 - 1)")


def _audit_data(
    request_id: str, decision: Decision, out: dto.DecisionOut, body: dto.UnlockRequestIn
) -> DecisionEntry:
    assessment, offer = decision.assessment, decision.offer
    return DecisionEntry(
        unlock_request_id=request_id,
        status=out.status,
        lock_reason=body.lock_reason,
        level=assessment.level,
        score=assessment.score,
        reasons=[r.code for r in assessment.reasons],
        offered=[m.method for m in offer.methods],
        not_offered=[NotOfferedEntry(n.method, n.reason) for n in offer.not_offered],
        factors_required=offer.factors_required,
        review_required=offer.review.required,
        policy_version=out.policy.version,
        policy_sha256=out.policy.sha256,
    )


class CreatedDecision(msgspec.Struct, frozen=True):
    decision: dto.DecisionOut
    offered_face: bool


class PreparedDecision(msgspec.Struct, frozen=True):
    """A decision made and ready to store: what ``decide_batch`` inserts for one request."""

    out: dto.DecisionOut
    decision: Decision
    subject: str
    audit_payload: bytes
    row: dict[str, object]


class DecidedAhead(msgspec.Struct, frozen=True):
    """A decision made while the worker waited for another's write lock, and the inputs it was
    made from, read without the lock (``decide_ahead``). Under the lock the batch reads them
    again: the same inputs make the same decision, so it is stored; other inputs are decided
    again."""

    inputs: DecisionInputs
    prepared: PreparedDecision


class DecisionRequest(msgspec.Struct, frozen=True):
    """One request as the batch needs it, with the context of the call that made it (the
    policy, notice and keys in force): parsed, pseudonymised, and everything of its row that no
    read decides (id, sealed account id, source index) made before it queues. A batch holds
    the database's write lock, which other workers wait for; this part needs no lock, nor
    does ``ahead``, the decision made while waiting for it, when there was one."""

    ctx: ServiceContext
    actor: str
    body: dto.UnlockRequestIn
    facts: UnlockRequestFacts
    subject: str
    context_json: bytes
    now: datetime
    request_id: str
    account_id_sealed: str
    source_index: str
    ahead: DecidedAhead | None = None

    @classmethod
    def of(cls, ctx: ServiceContext, actor: str, body: dto.UnlockRequestIn) -> DecisionRequest:
        return cls(
            ctx=ctx,
            actor=actor,
            body=body,
            facts=to_facts(body),
            subject=ctx.data_keys.pseudonymize(body.account_id),
            context_json=msgspec.json.encode(body.context),
            now=ctx.clock(),
            request_id=new_id(),
            account_id_sealed=ctx.sealer.seal(body.account_id, ACCOUNT_ID_PURPOSE),
            source_index=ctx.data_keys.blind_index("source_ip", body.context.ip),
        )


class StoredDecisionRef(msgspec.Struct, frozen=True):
    """What one request learns from its batch: its decision and its log index (the batch
    integrates its entries before it commits)."""

    out: dto.DecisionOut
    decision: Decision
    index: int


DecisionBatches = GroupCommit[DecisionRequest, StoredDecisionRef]
# After a batch, the callers it answered come back as new requests within a round trip: up to
# 2 ms for three quarters of them, not a batch of the one that came first (bench_http A/B,
# 32 connections: SQLite 2,065 -> 2,376 req/s on one worker, 2,974 -> 3,727 on two; PostgreSQL
# unchanged within noise, its p99 25.2 -> 23.4 ms).
DECISION_LINGER_S = 0.002


def decision_batches(engine: AsyncEngine, **kwargs: Any) -> DecisionBatches:
    """The worker's group commit for decisions (create_app builds one per process). Two workers'
    batches can deadlock on PostgreSQL (say, both creating one account's data key while waiting
    for the integration lock); such a batch is retried one request at a time."""
    return GroupCommit(
        engine,
        decide_batch,
        alone_on=deadlocked,
        linger=DECISION_LINGER_S,
        # Used only when BEGIN would wait: SQLite's writers (service.db.write_turn_elsewhere).
        ahead=decide_ahead,
        **kwargs,
    )


async def create(ctx: ServiceContext, actor: str, body: dto.UnlockRequestIn) -> CreatedDecision:
    """Assess, store and audit one request, in a group commit with concurrent requests
    (service.group_commit): shared reads, writes, audit integration and commit."""
    request = DecisionRequest.of(ctx, actor, body)
    stored = await ctx.decisions.submit(request.subject, request)
    offered_face = any(m.biometric for m in stored.decision.offer.methods)
    return CreatedDecision(
        msgspec.structs.replace(stored.out, audit=dto.AuditRefOut(index=stored.index)),
        offered_face,
    )


async def decide_batch(
    conn: AsyncConnection, batch: Sequence[DecisionRequest]
) -> list[StoredDecisionRef | Exception]:
    """Decide and store a batch of requests for distinct accounts in the caller's transaction:
    one read for all accounts, each decision, then one multi-row INSERT per table, the review
    cases the policy requires, and one audit integration. Each request is decided under its own
    context; the shared reads and writes use the first's (one per worker in production)."""
    ctx = batch[0].ctx
    # Before the reads: an erasure of one of these accounts either committed before them (the
    # reads see it) or waits for this batch's commit and then clears its rows (PostgreSQL).
    await AccountRepository(conn).hold_for_writing([r.subject for r in batch])
    inputs = await _read_inputs(conn, batch)
    outcomes: list[PreparedDecision | Exception] = []
    for request in batch:
        got = inputs[request.subject]
        ahead = request.ahead
        if ahead is not None and ahead.inputs == got:
            outcomes.append(ahead.prepared)  # decided from what the lock's reads found again
            continue
        try:
            outcomes.append(await _prepare(conn, request, got))
        except Exception as exc:  # this request's own failure: nothing was written for it
            if deadlocked(exc):
                raise  # PostgreSQL aborted the whole transaction: retried one request at a time
            outcomes.append(exc)
    made = [o for o in outcomes if isinstance(o, PreparedDecision)]
    stored = iter(await _store(conn, ctx, made) if made else [])
    return [o if isinstance(o, Exception) else next(stored) for o in outcomes]


async def _read_inputs(
    conn: AsyncConnection,
    batch: Sequence[DecisionRequest],
    outside: sqlite3.Connection | None = None,
) -> dict[str, DecisionInputs]:
    """The decision inputs of the batch's accounts, in ``conn``'s transaction, or read
    ``outside`` one (``decide_ahead``)."""
    policy = batch[0].ctx.policy
    thresholds = policy.thresholds
    # One clock for the reads' windows: the batch's requests arrived within one batch period.
    return await UnlockRequestRepository(conn).decision_inputs(
        [r.subject for r in batch],
        max(r.now for r in batch),
        velocity_window=timedelta(hours=thresholds.velocity_window_hours),
        failures_window=timedelta(hours=thresholds.failed_verifications_window_hours),
        # Methods paused by failures stay visible as THROTTLED, never silently missing.
        throttle_window=METHOD_FAILURES_WINDOW,
        throttle_limit=policy.limits.method_failures_per_day,
        outside=outside,
    )


async def decide_ahead(
    conn: AsyncConnection, batch: Sequence[DecisionRequest], arrived: Callable[[], bool]
) -> list[DecisionRequest]:
    """The batch with the decisions it can make before its BEGIN, while another worker holds
    SQLite's write lock (service.group_commit's ``ahead``): its reads, made without the lock, and
    each decision from them. Measured with two workers, the lock was held ~80 % of the time, and
    half of a batch's time under it was these decisions. Not decided ahead: an account without a
    data key yet (making one writes), a request whose decision fails here (under the lock it
    fails again, or not, and says so), and those left when the lock ``arrived``: they are
    decided under it, which no longer waits for them."""
    outside = reader(conn)
    if outside is None or arrived():
        return list(batch)
    inputs = await _read_inputs(conn, batch, outside)
    decided: list[DecisionRequest] = []
    for request in batch:
        if arrived():
            decided += batch[len(decided) :]
            break
        got = inputs[request.subject]
        snapshot = got.snapshot
        if snapshot.exists and not snapshot.erased and got.key_row is None:
            decided.append(request)
            continue
        try:
            prepared = await _prepare(conn, request, got)
        except Exception:
            decided.append(request)
            continue
        decided.append(msgspec.structs.replace(request, ahead=DecidedAhead(got, prepared)))
    return decided


async def _prepare(
    conn: AsyncConnection, request: DecisionRequest, inputs: DecisionInputs
) -> PreparedDecision:
    """Decide one request. Writes nothing, except the account's data key when it has none yet
    (idempotent)."""
    ctx = request.ctx
    policy = ctx.policy
    body, now = request.body, request.now
    request_id = request.request_id
    expires_at = now + timedelta(minutes=policy.decision_ttl_minutes)
    snapshot = inputs.snapshot
    known = snapshot.exists and not snapshot.erased
    if known:
        account = account_facts(snapshot, ctx, frozenset(Method(m) for m in inputs.throttled))
        phone_masked = snapshot.phone.masked if snapshot.phone else None
        context_ciphertext: str | None = await ctx.data_keys.encrypt_with(
            conn, body.account_id, inputs.key_row, request.context_json, CONTEXT_AAD
        )
    else:
        account, phone_masked = phantom_account(request.subject)
        context_ciphertext = None
        # The same cipher work a known account costs, discarded (the reads are the same for
        # both): no timing difference tells an unknown account from a known one (OWASP-FP-1/2).
        ctx.sealer.seal(request.context_json.decode(), CONTEXT_AAD)
    decision = decide(request.facts, account, inputs.history, policy, now)
    out = _decision_out(
        request_id, body.account_id, decision, policy, body.locale, phone_masked, now, expires_at
    )
    payload = struct_event_payload(
        kind=EntryKind.DECISION,
        actor=request.actor,
        subject=request.subject,
        data=_audit_data(request_id, decision, out, body),
        time=now,
    )
    stored = StoredDecision(
        # The account id rests sealed in its own column, never in the stored JSON.
        decision=msgspec.structs.replace(out, account_id=""),
        score=decision.assessment.score,
        weights={r.code.value: r.weight for r in decision.assessment.reasons},
        floors_applied=[c.value for c in decision.assessment.floors_applied],
    )
    row: dict[str, object] = {
        "id": request_id,
        "subject": request.subject,
        "account_id_sealed": request.account_id_sealed,
        "source_index": request.source_index,
        "known_account": known,
        "status": out.status,
        "lock_reason": body.lock_reason.value,
        "locale": body.locale.value,
        "risk_level": decision.assessment.level.value,
        "risk_score": decision.assessment.score,
        "policy_version": policy.version,
        "policy_sha256": policy.sha256,
        "decision_json": msgspec.json.encode(stored),
        "context_ciphertext": context_ciphertext,
        "created_at": now,
        "expires_at": expires_at,
    }
    return PreparedDecision(out, decision, request.subject, payload, row)


async def _store(
    conn: AsyncConnection, ctx: ServiceContext, made: Sequence[PreparedDecision]
) -> list[StoredDecisionRef]:
    # Ids for the entries, which go to the integration below directly, not through the inbox.
    inbox_ids = await ctx.inbox_ids.take(AuditStore(conn), len(made))
    await UnlockRequestRepository(conn).insert_many(
        [m.row | {"audit_inbox_id": inbox_id} for m, inbox_id in zip(made, inbox_ids, strict=True)]
    )
    outs = [m.out for m in made]
    for i, m in enumerate(made):
        if m.decision.offer.review.required:
            # Issue 6: a review the policy requires opens a case at once (review imports this).
            from service.flows import review

            case_id = await review.open_case_in(
                conn,
                ctx,
                m.out.id,
                m.subject,
                origin=review.origin_of(m.decision.offer.review.reasons),
                now=m.out.created_at,
            )
            outs[i] = review.with_case(m.out, case_id)
    # The decisions' log indices in the same transaction: no second commit, no polling. On
    # PostgreSQL it waits for another worker's integration rather than polling after commit
    # (measured with 2 workers: 396 req/s polling).
    integrated = await integrate_direct_in(
        conn,
        ctx,
        [InboxRow(inbox_id, m.audit_payload) for m, inbox_id in zip(made, inbox_ids, strict=True)],
    )
    return [
        StoredDecisionRef(out, m.decision, integrated[inbox_id])
        for out, m, inbox_id in zip(outs, made, inbox_ids, strict=True)
    ]


async def get(ctx: ServiceContext, request_id: str) -> dto.DecisionOut:
    now = ctx.clock()
    async with ctx.engine.connect() as conn:
        row = await UnlockRequestRepository(conn).get(request_id)
        if row is None:
            raise UnlockRequestNotFound("No unlock request with this id.")
        # Issue 6: the request's review case and its outcome (review imports this module).
        from service.flows import review

        return (await review.attach_in(conn, ctx, [view(ctx, row, row.audit_index, now)]))[0]


def view(
    ctx: ServiceContext, row: UnlockRequestRow, index: int | None, now: datetime
) -> dto.DecisionOut:
    """The decision as it stands now: stored at creation, with what happened since applied."""
    return view_of(ctx, as_stored(ctx, row), row, index, now)


def as_stored(ctx: ServiceContext, row: UnlockRequestRow) -> dto.DecisionOut:
    """The decision as made, with its account id: what ``view_of`` applies a row's state to (a
    flow that answers after changing the row decodes and opens it once, not twice)."""
    sealed = row.account_id_sealed
    account_id = ERASED if sealed is None else ctx.sealer.open(sealed, ACCOUNT_ID_PURPOSE)
    return msgspec.structs.replace(
        _DECODER.decode(row.decision_json).decision, account_id=account_id
    )


def view_of(
    ctx: ServiceContext,
    decision: dto.DecisionOut,
    row: UnlockRequestRow,
    index: int | None,
    now: datetime,
) -> dto.DecisionOut:
    """``view`` of the row, from its decision ``as_stored``."""
    status = row.status
    if status == "pending_verification" and now >= row.expires_at:
        status = "expired"
    review = decision.review
    if row.review_reason is not None:
        catalog = ctx.policy.catalogs[Locale(decision.locale)]
        reason = dto.ReasonOut(code=row.review_reason, message=catalog.review[row.review_reason])
        review = msgspec.structs.replace(review, required=True, reasons=[*review.reasons, reason])
    return msgspec.structs.replace(
        decision,
        status=status,
        factors_satisfied=[Method(m) for m in json.loads(row.factors_satisfied)],
        review=review,
        audit=dto.AuditRefOut(index=index),
    )


async def audit_index(ctx: ServiceContext, row: UnlockRequestRow) -> int:
    """The log index of the request's latest audit entry's batch; integrates now if pending."""
    return await index_of(ctx, row.audit_inbox_id)


async def list_for_account(ctx: ServiceContext, account_id: str) -> list[dto.DecisionOut]:
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.connect() as conn:
        rows = await UnlockRequestRepository(conn).for_subject(subject, MAX_LISTED)
        views = [view(ctx, row, row.audit_index, now) for row in rows]
        # Issue 6: review cases and their outcomes (review imports this module).
        from service.flows import review

        return await review.attach_in(conn, ctx, views)
