"""Challenges and proofs: how an offered method is started, checked, and turned into factors.

Three phases per proof, so that no transaction stays open across slow work (argon2, an OIDC round
trip): read what the check needs; check it outside any transaction; then write in one transaction
whose conditional updates let exactly one of several concurrent identical proofs win. A failure is
committed in its own short transaction before the error is raised, so throttles and the audit
trail see every attempt (NIST-63B4-3.2.2) even though the caller gets a 4xx.

Methods whose check is microseconds of CPU (TOTP, SMS: ``AT_ONCE``) need no phases: their whole
proof is one transaction, and concurrent proofs share it (``proof_batches``, a group commit with
a savepoint per proof), so a worker pays one BEGIN and one fsync per batch instead of per proof.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread
import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from audit.entry import EntryKind, JSONValue, new_event_payload
from audit.hot_sql import read_snapshot, savepoint
from policy.engine import proofs_meet
from policy.model import ConsentState, Method, ReviewReason
from service import dto
from service.adapters.sms import SmsDeliveryError
from service.context import ServiceContext
from service.db import deadlocked, reader
from service.domain import (
    ChallengeClosed,
    ChallengeNotFound,
    DeliveryFailed,
    DomainError,
    FaceConsentRequired,
    MethodNotOffered,
    ProofMissing,
    ProofRejected,
    RequestClosed,
    Throttled,
    UnlockRequestNotFound,
)
from service.flows import unlock
from service.flows.audit_trail import DirectEntries, record, record_in
from service.flows.enrolment import TOTP_AAD, TOTP_PARAMS, consent_state, phone_on_file
from service.flows.throttle_windows import (
    METHOD_FAILURES_WINDOW,
    SMS_SENDS_WINDOWS,
    SOURCE_FAILURES_WINDOW,
)
from service.group_commit import GroupCommit
from service.ids import new_id
from service.methods import recovery_codes, totp
from service.persistence.accounts import AccountRepository, TotpFound
from service.persistence.challenges import (
    AttemptRecord,
    ChallengeRepository,
    ChallengeRow,
    FailureBook,
    RequestState,
    RequestUpdate,
    request_state,
)
from service.persistence.unlock_requests import UnlockRequestRepository, UnlockRequestRow

log = logging.getLogger("fairunlock.challenges")

OPEN_STATUSES = frozenset({"pending_verification", "review_required"})
SMS_CODE_DIGITS = 6
# A hash no code matches: unknown accounts get challenges that can never succeed.
_NEVER = "0" * 64


class Loaded(msgspec.Struct, frozen=True):
    request: UnlockRequestRow
    decision: dto.DecisionOut
    account_id: str
    # The decision as made (unlock.as_stored), when the loader kept it: an answer after the
    # request's row changed applies the new row to it instead of decoding the row again.
    stored: dto.DecisionOut | None = None


class Checked(msgspec.Struct, frozen=True):
    """The outcome of phase two."""

    ok: bool
    reason: str = "wrong_code"
    # What the write phase must consume so the proof cannot be used again.
    totp_step: int | None = None
    recovery_code_id: str | None = None
    review_reason: ReviewReason | None = None
    audit: dict[str, JSONValue] = msgspec.field(default_factory=dict)


class ProofReads(msgspec.Struct, frozen=True):
    """What a batch of proofs reads, and locks, before judging them (``_read_for``): five
    statements for the whole batch, where proofs judged one by one run some of them each
    (PostgreSQL: 9.8 -> 6.9 round trips per TOTP proof). A proof's request and challenge are its
    own (the batch's requests are distinct), so no earlier proof in the batch has changed them;
    the throttles' failures are kept current as proofs fail (``FailureBook``); an enrolment two
    proofs share may be a step behind when the second is judged, and then the conditional
    update of the step (``consume_totp_step``) is what turns the reused code away, as it does
    across workers."""

    requests: dict[str, UnlockRequestRow]
    challenges: dict[str, ChallengeRow]
    totp: dict[str, TotpFound]
    # The throttles' failures, kept current by prove_batch as its proofs fail.
    failures: FailureBook


def _sms_hash(ctx: ServiceContext, challenge_id: str, code: str) -> str:
    # Keyed and bound to the challenge: a leaked table reveals nothing, a code fits one challenge.
    return ctx.data_keys.blind_index(f"sms_code:{challenge_id}", code)


def _offered(
    decision: dto.DecisionOut, method: Method, provider: str | None
) -> dto.OfferedMethodOut:
    for m in decision.offer.methods:
        # An offer entry without a provider (face) leaves the choice to the caller; the start
        # checks the name against the configured providers.
        if m.method is method and (provider is None or m.provider in (None, provider)):
            return m
    raise MethodNotOffered(
        f"{method.value} is not offered for this request; the offer lists the methods that are.",
        method=method.value,
    )


async def _load(
    conn: AsyncConnection, ctx: ServiceContext, request_id: str, now: datetime
) -> Loaded:
    return _loaded(ctx, await UnlockRequestRepository(conn).get(request_id), now)


def _loaded(ctx: ServiceContext, row: UnlockRequestRow | None, now: datetime) -> Loaded:
    """The request a proof or a challenge is for, if it is open to one."""
    if row is None:
        raise UnlockRequestNotFound("No unlock request with this id.")
    if row.account_id_sealed is None:
        raise RequestClosed("This request's account was erased.", request_status="erased")
    stored = unlock.as_stored(ctx, row)
    decision = unlock.view_of(ctx, stored, row, None, now)
    if decision.status not in OPEN_STATUSES:
        raise RequestClosed(
            f"This request is {decision.status}; start a new unlock request.",
            request_status=decision.status,
        )
    return Loaded(row, decision, decision.account_id, stored)


def _retry_after(oldest: datetime, window: timedelta, now: datetime) -> int:
    return max(1, int((oldest + window - now).total_seconds()) + 1)


async def _check_throttles(
    repo: ChallengeRepository, ctx: ServiceContext, loaded: Loaded, method: Method, now: datetime
) -> None:
    subject, source = loaded.request.subject, loaded.request.source_index
    if source is None:
        failures = await repo.method_failures_since(
            now - METHOD_FAILURES_WINDOW, subject, method.value
        )
        from_source: list[datetime] = []
    else:
        failures, from_source = await repo.failures_since(
            now - METHOD_FAILURES_WINDOW,
            subject,
            method.value,
            now - SOURCE_FAILURES_WINDOW,
            source,
        )
    _throttle(ctx, loaded, method, now, failures, from_source)


def _check_throttles_in(
    book: FailureBook, ctx: ServiceContext, loaded: Loaded, method: Method, now: datetime
) -> None:
    """``_check_throttles`` from a batch's failures, read once for all its proofs."""
    source = loaded.request.source_index
    failures = book.of_method(loaded.request.subject, method.value, now - METHOD_FAILURES_WINDOW)
    from_source = [] if source is None else book.from_source(source, now - SOURCE_FAILURES_WINDOW)
    _throttle(ctx, loaded, method, now, failures, from_source)


def _throttle(
    ctx: ServiceContext,
    loaded: Loaded,
    method: Method,
    now: datetime,
    failures: list[datetime],
    from_source: list[datetime],
) -> None:
    """Raise Throttled when the account's failures at the method today, or the source's in the
    last hour (both oldest first), reach their limits."""
    limits = ctx.policy.limits
    if len(failures) >= limits.method_failures_per_day:
        raise Throttled(
            f"Too many failed {method.value} attempts today; "
            "other methods and human review stay open.",
            retry_after=_retry_after(
                failures[-limits.method_failures_per_day], METHOD_FAILURES_WINDOW, now
            ),
            appeal_path=loaded.decision.review.appeal_path,
        )
    if len(from_source) >= limits.source_failures_per_hour:
        raise Throttled(
            "Too many failed attempts from this network; try later or ask for human review.",
            retry_after=_retry_after(
                from_source[-limits.source_failures_per_hour], SOURCE_FAILURES_WINDOW, now
            ),
            appeal_path=loaded.decision.review.appeal_path,
        )


# --- starting a challenge --------------------------------------------------------------------


async def start(
    ctx: ServiceContext, actor: str, request_id: str, method: Method, provider: str | None
) -> dto.ChallengeOut:
    now = ctx.clock()
    limits = ctx.policy.limits
    expires_at = now + timedelta(minutes=limits.challenge_ttl_minutes)
    sms_to_send: tuple[str, str, str] | None = None
    lookup = 0.0
    authorization = await _authorize_first(ctx, request_id, method, provider, now)
    async with ctx.engine.begin() as conn:
        loaded = await _load(conn, ctx, request_id, now)
        offered = _offered(loaded.decision, method, provider)
        repo = ChallengeRepository(conn)
        await _check_throttles(repo, ctx, loaded, method, now)
        subject = loaded.request.subject
        known = loaded.request.known_account
        challenge_id = new_id()
        out = dto.ChallengeOut(
            id=challenge_id,
            method=method,
            expires_at=expires_at,
            attempts_left=limits.challenge_attempts,
        )
        secret_hash: str | None = None
        secret_sealed: str | None = None
        delivery_id: str | None = None
        existing_sms: ChallengeRow | None = None
        if method is Method.SMS:
            existing_sms = await _open_sms_challenge(repo, request_id, now)
            if existing_sms is not None:
                # A resend: same challenge, new code, and the failures so far still count.
                challenge_id = existing_sms.id
            code = f"{secrets.randbelow(10**SMS_CODE_DIGITS):0{SMS_CODE_DIGITS}d}"
            delivery_id = new_id()
            secret_hash = _sms_hash(ctx, challenge_id, code) if known else _NEVER
            looked_up = time.perf_counter()
            phone = await phone_on_file(conn, ctx, loaded.account_id, subject) if known else None
            lookup = time.perf_counter() - looked_up
            destination = ctx.data_keys.blind_index("phone", phone or subject)
            # Check and record under one lock: concurrent starts must not all see the old count.
            await repo.serialise("sms_sends", destination)
            await _check_sms_sends(repo, ctx, loaded, destination, now)
            await repo.record_sms_send(destination, delivery_id, "challenge", now)
            if phone is not None:
                sms_to_send = (phone, _sms_text(loaded.decision.locale, code), delivery_id)
            used = existing_sms.attempts if existing_sms is not None else 0
            out = dto.ChallengeOut(
                id=challenge_id,
                method=method,
                expires_at=expires_at,
                target=offered.target,
                attempts_left=max(0, limits.challenge_attempts - used),
            )
        elif authorization is not None:  # a linked identity, authorized before the transaction
            out = msgspec.structs.replace(out, authorization_url=authorization[0])
            secret_sealed = authorization[1]
        elif method is Method.FACE:
            await _require_face_consent(conn, ctx, subject)
            out, secret_sealed = _start_face(ctx, provider, subject, out)
        if existing_sms is not None and secret_hash is not None and delivery_id is not None:
            await repo.resend(existing_sms.id, secret_hash, delivery_id, expires_at)
        else:
            await repo.create(
                ChallengeRow(
                    id=challenge_id,
                    unlock_request_id=request_id,
                    subject=subject,
                    method=method.value,
                    provider=offered.provider,
                    status="open",
                    attempts=0,
                    secret_hash=secret_hash,
                    secret_sealed=secret_sealed,
                    delivery_id=delivery_id,
                    sends=1 if method is Method.SMS else 0,
                    created_at=now,
                    expires_at=expires_at,
                )
            )
        await record(
            conn,
            ctx,
            EntryKind.CHALLENGE_STARTED,
            actor,
            subject,
            {"unlock_request_id": request_id, "challenge_id": out.id, "method": method.value},
            now,
        )
    if method is Method.SMS:
        await _deliver(ctx, sms_to_send, lookup)
    return out


async def _open_sms_challenge(
    repo: ChallengeRepository, request_id: str, now: datetime
) -> ChallengeRow | None:
    """The request's open SMS challenge, if any, read under a lock on the request's SMS start:
    one SMS challenge per request, resent rather than doubled. Concurrent starts wait here until
    the first commits (PostgreSQL; SQLite's writer lock serialises them), then see its challenge."""
    await repo.serialise("sms_challenge", request_id)
    return await repo.open_for(request_id, Method.SMS.value, now)


async def _deliver(ctx: ServiceContext, sms: tuple[str, str, str] | None, lookup: float) -> None:
    """Send the challenge's text, after commit; with nothing to send (an unknown id, or no number
    on file), take as long as a send would have, the ``lookup`` of the number included, so the
    time does not tell (OWASP-FP-1/2)."""
    if sms is None:
        await ctx.sms_timings.pad(spent=lookup)
        return
    to, text, delivery = sms
    began = time.perf_counter()
    try:
        await ctx.sms.send(to, text, delivery)
    except SmsDeliveryError as exc:
        raise DeliveryFailed(
            "The text message could not be delivered; try again, use another method, or ask "
            "for human review.",
            reason=exc.reason,
        ) from None
    ctx.sms_timings.record(lookup + time.perf_counter() - began)


def _sms_text(locale: str, code: str) -> str:
    # The code and nothing that identifies the account; never logged by the gateways.
    if locale == "en":
        return f"FairUnlock: your code is {code}. It is valid for 10 minutes. Never share it."
    return f"FairUnlock：您的验证码是 {code}，10 分钟内有效。请勿告诉任何人。"  # noqa: RUF001


async def _check_sms_sends(
    repo: ChallengeRepository, ctx: ServiceContext, loaded: Loaded, destination: str, now: datetime
) -> None:
    limits = ctx.policy.limits
    per_window = (limits.sms_sends_per_hour, limits.sms_sends_per_day)
    for window, limit in zip(SMS_SENDS_WINDOWS, per_window, strict=True):
        sends = await repo.sms_sends_since(destination, now - window)
        if len(sends) >= limit:
            raise Throttled(
                "Too many text messages to this number; "
                "use another method or ask for human review.",
                retry_after=_retry_after(sends[-limit], window, now),
                appeal_path=loaded.decision.review.appeal_path,
            )


async def _authorize_first(
    ctx: ServiceContext, request_id: str, method: Method, provider: str | None, now: datetime
) -> tuple[str, str] | None:
    """For a linked identity, ``_authorize_oidc`` before ``start``'s transaction: the provider's
    discovery may be a network round trip, and a slow or unreachable provider must never hold the
    database's write lock (SQLite has one for the whole service). ``start`` reads the offer again
    in its transaction and checks it there."""
    if method is not Method.LINKED_IDENTITY:
        return None
    async with ctx.engine.connect() as conn:
        loaded = await _load(conn, ctx, request_id, now)
    return await _authorize_oidc(ctx, _offered(loaded.decision, method, provider))


async def _authorize_oidc(ctx: ServiceContext, offered: dto.OfferedMethodOut) -> tuple[str, str]:
    """The authorization URL for the offered provider, and the challenge's sealed state, nonce
    and PKCE verifier. Call it outside any transaction: it may fetch the provider's discovery."""
    provider = ctx.oidc_providers.get(offered.provider or "")
    if provider is None:
        raise MethodNotOffered(
            "This identity provider is no longer configured.", method="linked_identity"
        )
    auth = await ctx.oidc.start(provider)
    sealed = ctx.sealer.seal(
        json.dumps({"state": auth.state, "nonce": auth.nonce, "code_verifier": auth.code_verifier}),
        b"challenge.oidc",
    )
    return auth.url, sealed


def _start_face(
    ctx: ServiceContext, provider: str | None, subject: str, out: dto.ChallengeOut
) -> tuple[dto.ChallengeOut, str]:
    names = sorted(ctx.face_audiences)
    chosen = provider or (names[0] if len(names) == 1 else None)
    if chosen is None or chosen not in ctx.face_audiences:
        raise MethodNotOffered(
            "Name a configured face provider with `provider`.", method="face", providers=names
        )
    nonce = secrets.token_urlsafe(24)
    sealed = ctx.sealer.seal(json.dumps({"nonce": nonce, "provider": chosen}), b"challenge.face")
    session = dto.FaceSessionOut(
        provider=chosen,
        nonce=nonce,
        audience=ctx.face_audiences[chosen],
        subject=ctx.data_keys.face_subject(chosen, subject),
    )
    return msgspec.structs.replace(out, session=session), sealed


# --- checking a proof --------------------------------------------------------------------------

Checker = Callable[
    [ServiceContext, Loaded, ChallengeRow, dto.VerifyIn, datetime], Awaitable[Checked]
]


def _need(value: str | None, name: str) -> str:
    if value is None:
        raise ProofMissing(
            f"{name}: required for this method", errors=[{"field": name, "message": "required"}]
        )
    return value


async def _check_totp(
    conn: AsyncConnection,
    ctx: ServiceContext,
    loaded: Loaded,
    ch: ChallengeRow,
    body: dto.VerifyIn,
    now: datetime,
    reads: ProofReads,
) -> Checked:
    code = _need(body.code, "code").strip()
    secret: str | None = None
    last_step: int | None = None
    if loaded.request.known_account:
        found = reads.totp.get(ch.subject)
        if found is not None and found[0].confirmed:
            enrolment, key_row = found
            secret = (
                await ctx.data_keys.decrypt_with(
                    conn, loaded.account_id, key_row, enrolment.secret_ciphertext, TOTP_AAD
                )
            ).decode()
            last_step = enrolment.last_step
    if secret is None:
        # The same work as a real check (a decryption, then the code checked) against a secret
        # no one holds: an unknown account's proof takes as long as a known one's.
        decoy = await ctx.data_keys.decrypt_decoy(
            conn, TOTP_AAD, lambda: totp.new_secret().encode()
        )
        totp.check(decoy.decode(), code, now, TOTP_PARAMS, None)
        return Checked(ok=False)
    checked = totp.check(secret, code, now, TOTP_PARAMS, last_step)
    if checked.step is not None:
        return Checked(ok=True, totp_step=checked.step)
    if checked.reused:
        # The code is right but its step was used already: a replay (ASVS4-2.8.5).
        return Checked(ok=False, reason="code_reused")
    return Checked(ok=False)


_DUMMY_HASHES: list[str] = []


def _dummy_hashes() -> list[str]:
    if not _DUMMY_HASHES:
        _DUMMY_HASHES.extend(
            recovery_codes.hash_code(recovery_codes.new_code())
            for _ in range(recovery_codes.CODE_COUNT)
        )
    return _DUMMY_HASHES


async def _check_recovery_code(
    ctx: ServiceContext, loaded: Loaded, ch: ChallengeRow, body: dto.VerifyIn, now: datetime
) -> Checked:
    code = _need(body.code, "code")
    async with ctx.engine.connect() as conn:
        unused = await ChallengeRepository(conn).unused_recovery_codes(ch.subject)

    def find() -> str | None:
        candidates = [(u.id, u.code_hash) for u in unused] if loaded.request.known_account else []
        # Always a full set's argon2 work, padded with dummies, and every hash tried even after a
        # match: an unknown account, one with few codes left and one with ten all take as long,
        # so the time tells neither that the account exists nor how many codes it has left.
        padding = _dummy_hashes()[: max(0, recovery_codes.CODE_COUNT - len(candidates))]
        found: str | None = None
        for code_id, code_hash in [*candidates, *((None, h) for h in padding)]:
            if recovery_codes.matches(code_hash, code) and code_id is not None and found is None:
                found = code_id
        return found

    found = await anyio.to_thread.run_sync(find)
    if found is None:
        return Checked(ok=False)
    return Checked(ok=True, recovery_code_id=found, audit={"codes_left": len(unused) - 1})


async def _check_sms(
    conn: AsyncConnection,
    ctx: ServiceContext,
    loaded: Loaded,
    ch: ChallengeRow,
    body: dto.VerifyIn,
    now: datetime,
    reads: ProofReads,
) -> Checked:
    # Reads nothing: the code's keyed hash is on the challenge row (``conn`` and ``reads`` are
    # for the shape).
    code = _need(body.code, "code").strip()
    expected = ch.secret_hash or _NEVER
    ok = hmac.compare_digest(_sms_hash(ctx, ch.id, code), expected)
    return Checked(ok=ok and loaded.request.known_account)


async def _check_oidc(
    ctx: ServiceContext, loaded: Loaded, ch: ChallengeRow, body: dto.VerifyIn, now: datetime
) -> Checked:
    from service.adapters.oidc import OidcError

    code = _need(body.code, "code")
    state = _need(body.state, "state")
    provider = ctx.oidc_providers.get(ch.provider or "")
    if ch.secret_sealed is None:
        return Checked(ok=False, reason="no_session")
    unavailable = DeliveryFailed(
        "The identity provider cannot be reached now; use another method or try again later.",
        reason="provider_unavailable",
    )
    if provider is None:
        raise unavailable  # taken out of the configuration since the challenge started
    sealed = json.loads(ctx.sealer.open(ch.secret_sealed, b"challenge.oidc"))
    try:
        identity = await ctx.oidc.finish(
            provider,
            code=code,
            state=state,
            expected_state=sealed["state"],
            nonce=sealed["nonce"],
            code_verifier=sealed["code_verifier"],
            now=now,
        )
    except OidcError as exc:
        if exc.code == "provider_unavailable":
            # Not the person's failure: nothing is counted against them (as for face).
            raise unavailable from None
        return Checked(ok=False, reason=exc.code)
    async with ctx.engine.connect() as conn:
        snapshot = await AccountRepository(conn).snapshot(ch.subject)
        bound = next((r for r in snapshot.linked if r.provider == provider.name), None)
        if bound is None or not bound.real_name_verified:
            return Checked(ok=False, reason="identity_not_bound")
        bound_subject = (
            await ctx.data_keys.decrypt(
                conn, loaded.account_id, bound.oidc_subject_ciphertext, b"oidc_subject"
            )
        ).decode()
    # Matched by the provider's stable `sub` only, never by e-mail or name.
    same = hmac.compare_digest(
        hashlib.sha256(identity.subject.encode()).digest(),
        hashlib.sha256(bound_subject.encode()).digest(),
    )
    if not same or identity.issuer.rstrip("/") != provider.issuer:
        return Checked(ok=False, reason="other_subject")
    return Checked(ok=True, audit={"provider": provider.name})


async def _require_face_consent(conn: AsyncConnection, ctx: ServiceContext, subject: str) -> None:
    """FRM-6: face is used only under consent current now, under the current notice. The offer
    was made under the consent of its time; a withdrawal since (or a new notice) ends it."""
    # The consent as a decision reads it (the latest grant, perhaps withdrawn since).
    snapshot = await AccountRepository(conn).snapshot(subject)
    if consent_state(snapshot.consent, ctx.notice.version) is not ConsentState.ACTIVE:
        raise FaceConsentRequired(
            "Face verification needs the person's current consent, and it was withdrawn (or the "
            "notice changed) after this decision; the other methods and human review stay open."
        )


async def _check_face(
    ctx: ServiceContext, loaded: Loaded, ch: ChallengeRow, body: dto.VerifyIn, now: datetime
) -> Checked:
    from service.adapters.face import AttestationRejected, FaceProviderUnavailable

    attestation = _need(body.attestation, "attestation")
    if ch.secret_sealed is None:
        return Checked(ok=False, reason="no_session")
    # Withdrawn since the session started: the result is not used, nor counted against them.
    async with ctx.engine.connect() as conn:
        await _require_face_consent(conn, ctx, ch.subject)
    sealed = json.loads(ctx.sealer.open(ch.secret_sealed, b"challenge.face"))
    try:
        outcome = await ctx.face.verify(
            attestation,
            provider=sealed["provider"],
            expected_nonce=sealed["nonce"],
            # The match must be of this account's enrolled face, not of whoever was in front.
            expected_subject=ctx.data_keys.face_subject(sealed["provider"], ch.subject),
            now=now,
        )
    except AttestationRejected as exc:
        if exc.code == "wrong_subject":
            # Signed by the provider (the signature is checked first): someone else's face was
            # matched for this account's challenge. Like a failed comparison, a person looks.
            return Checked(
                ok=False,
                reason=exc.code,
                review_reason=ReviewReason.FACE_CHECK_FAILED,
                audit={"provider": sealed["provider"], "subject_matched": False},
            )
        return Checked(ok=False, reason=exc.code)
    except FaceProviderUnavailable:
        # Not the person's failure: nothing is counted against them (503, try again or elsewhere).
        raise DeliveryFailed(
            "The face provider cannot be reached now; use another method or try again later.",
            reason="provider_unavailable",
        ) from None
    # Only the outcome is kept: match, liveness and matcher version, never any biometric data.
    audit: dict[str, JSONValue] = {
        "provider": outcome.provider,
        "match": outcome.match,
        "liveness": outcome.liveness,
        "matcher_version": outcome.matcher_version,
    }
    if outcome.match and outcome.liveness:
        return Checked(ok=True, audit=audit)
    # NIST-63A4-3.1.13.2: a failed biometric comparison goes to a person; other methods stay open.
    return Checked(
        ok=False,
        reason="face_not_confirmed",
        review_reason=ReviewReason.FACE_CHECK_FAILED,
        audit=audit,
    )


# The methods whose check takes time: a proof runs in three phases (verify), so that no
# transaction stays open across argon2, an OIDC round trip or a face provider.
CHECKERS: dict[Method, Checker] = {
    Method.RECOVERY_CODE: _check_recovery_code,
    Method.LINKED_IDENTITY: _check_oidc,
    Method.FACE: _check_face,
}


InlineChecker = Callable[
    [AsyncConnection, ServiceContext, Loaded, ChallengeRow, dto.VerifyIn, datetime, ProofReads],
    Awaitable[Checked],
]
# Methods whose check is a few microseconds of CPU and at most a read: their whole proof (load,
# throttles, attempt, check, outcome) is one transaction, with one commit. Every method is in
# exactly one of CHECKERS and AT_ONCE.
AT_ONCE: dict[Method, InlineChecker] = {
    Method.TOTP: _check_totp,
    Method.SMS: _check_sms,
}


# --- verifying -------------------------------------------------------------------------------


def satisfied(offer: dto.OfferOut, factors: set[str]) -> bool:
    """Whether the proven methods meet the offer (the engine's rule, ``proofs_meet``): each
    method counts once, and face only beside a non-biometric proof."""
    usable = {
        m.method.value: (m.strength == "strong", m.biometric)
        for m in offer.methods
        if m.method.value in factors
    }
    return proofs_meet(offer.factors_required, offer.strong_factors_required, usable.values())


class JudgedAhead(msgspec.Struct, frozen=True):
    """What ``judge_ahead`` made of a proof while its worker waited for another's write lock,
    from rows read without the lock: the request as read and as loaded (``_loaded``), and for a
    TOTP proof the account's enrolment as read and the code checked against it. Under the lock
    ``_judge`` reads the rows again and reuses only what was made from rows it finds unchanged:
    the same rows, code and time make the same outcome."""

    request: UnlockRequestRow
    loaded: Loaded
    # The challenge's account, its enrolment as read, and the check made with them (TOTP only).
    subject: str | None = None
    enrolment: TotpFound | None = None
    checked: Checked | None = None
    # A right code's writes, made from the same rows and check (_accepted_writes).
    accepted: _AcceptedWrites | None = None


class ProofRequest(msgspec.Struct, frozen=True):
    """One submitted proof, with the context of the call that made it; ``ahead``, what was
    judged of it before its batch's BEGIN, when there was a wait for the write lock."""

    ctx: ServiceContext
    actor: str
    request_id: str
    challenge_id: str
    body: dto.VerifyIn
    now: datetime
    ahead: JudgedAhead | None = None


class _Accepted(msgspec.Struct, frozen=True):
    """An at-once proof accepted: the request row as the proof left it, its log index and the
    decision as made (the answer applies the row to it)."""

    row: UnlockRequestRow
    index: int | None
    stored: dto.DecisionOut | None


class _Later(msgspec.Struct, frozen=True):
    """A proof whose check takes time: its three phases run after the batch, on their own."""

    loaded: Loaded
    challenge: ChallengeRow
    method: Method


def _at_once(challenge: ChallengeRow, now: datetime) -> InlineChecker | None:
    """The checker of a challenge whose proof is judged at once: open, unexpired, its method in
    AT_ONCE; else None (the proof is closed or takes phases)."""
    if challenge.status != "open" or now >= challenge.expires_at:
        return None
    return AT_ONCE.get(Method(challenge.method))


def _matching(
    batch: Sequence[ProofRequest], found: dict[str, ChallengeRow]
) -> list[tuple[ProofRequest, ChallengeRow]]:
    """Each proof with its challenge, where the challenge exists and is its request's."""
    return [
        (p, ch)
        for p in batch
        if (ch := found.get(p.challenge_id)) is not None and ch.unlock_request_id == p.request_id
    ]


async def _read_for(conn: AsyncConnection, batch: Sequence[ProofRequest]) -> ProofReads:
    """The batch's reads, and on PostgreSQL its locks, in the order the other writers take
    theirs, so that none of them can deadlock with it: the challenges (for the keys); the
    accounts, shared (an erasure, which holds its account before it deletes enrolments and
    clears requests, waits for the batch or the batch for it); the serialisation of every
    at-once proof's account and method (as _reserve_in takes it for one), in key order; the
    challenges again, locked, now that no other batch can count an attempt at them (their
    attempts as read decide before a proof is judged); the requests, locked (a proof's writes
    then rely on its row as read here); enrolments; the throttles' failures."""
    repo = ChallengeRepository(conn)
    ids = [p.challenge_id for p in batch]
    found = await repo.get_many(ids)
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        mine = _matching(batch, found)
        await AccountRepository(conn).hold_for_writing(sorted({ch.subject for _, ch in mine}))
        await repo.serialise_many(
            (f"attempts:{ch.method}", ch.subject)
            for p, ch in mine
            if _at_once(ch, p.now) is not None
        )
        found = await repo.get_many(ids, lock=True)
    mine = _matching(batch, found)
    requests = await UnlockRequestRepository(conn).get_many(
        [p.request_id for p in batch], lock=True
    )
    subjects = _totp_subjects(found, requests)
    totp_found = await AccountRepository(conn).totp_many(subjects) if subjects else {}
    throttled = [
        (request.subject, ch.method, request.source_index)
        for p, ch in mine
        if (request := requests.get(p.request_id)) is not None
    ]
    if throttled:
        earliest = min(p.now for p in batch)
        failures = await repo.failure_book(
            throttled, earliest - METHOD_FAILURES_WINDOW, earliest - SOURCE_FAILURES_WINDOW
        )
    else:
        failures = FailureBook({}, {})
    return ProofReads(requests, found, totp_found, failures)


def _totp_subjects(
    found: dict[str, ChallengeRow], requests: dict[str, UnlockRequestRow]
) -> list[str]:
    """The accounts whose TOTP enrolments a batch reads: only known accounts', as a single
    proof's check reads them."""
    return sorted(
        {
            ch.subject
            for ch in found.values()
            if ch.method == Method.TOTP.value
            and (request := requests.get(ch.unlock_request_id)) is not None
            and request.known_account
        }
    )


async def judge_ahead(
    conn: AsyncConnection, batch: Sequence[ProofRequest], arrived: Callable[[], bool]
) -> list[ProofRequest]:
    """The batch with what can be judged of its proofs before its BEGIN, while another worker
    holds SQLite's write lock (service.group_commit's ``ahead``), as unlock.decide_ahead does for
    decisions: the requests, challenges and enrolments read without the lock, each request
    loaded and each TOTP code checked (JudgedAhead). Measured with two workers, the workers took
    turns at the lock and a third of a proof batch's time under it was this. Left to the lock:
    the throttles and everything written, a proof whose challenge is closed, expired or out of
    attempts (its code is not checked), an enrolment without a data key row (reading one would
    begin the transaction), and the proofs left when the lock ``arrived``. A code checked here
    whose proof the lock then refuses (throttled, its challenge out of attempts meanwhile) is
    dropped unused: no one learns its outcome."""
    outside = reader(conn)
    if outside is None or arrived():
        return list(batch)
    with read_snapshot(outside):
        found = await ChallengeRepository(conn).get_many(
            [p.challenge_id for p in batch], outside=outside
        )
        requests = await UnlockRequestRepository(conn).get_many(
            [p.request_id for p in batch], outside=outside
        )
        subjects = _totp_subjects(found, requests)
        enrolments = (
            await AccountRepository(conn).totp_many(subjects, outside=outside) if subjects else {}
        )
    reads = ProofReads(requests, found, enrolments, FailureBook({}, {}))
    judged: list[ProofRequest] = []
    for proof in batch:
        if arrived():
            judged += batch[len(judged) :]
            break
        ahead = await _judged_ahead(conn, proof, reads)
        judged.append(proof if ahead is None else msgspec.structs.replace(proof, ahead=ahead))
    return judged


async def _judged_ahead(
    conn: AsyncConnection, proof: ProofRequest, reads: ProofReads
) -> JudgedAhead | None:
    row = reads.requests.get(proof.request_id)
    if row is None:
        return None
    try:
        loaded = _loaded(proof.ctx, row, proof.now)
    except DomainError:
        return None  # closed: under the lock it is refused again, or not
    ch = reads.challenges.get(proof.challenge_id)
    if (
        ch is None
        or ch.unlock_request_id != proof.request_id
        or _at_once(ch, proof.now) is not _check_totp
        or ch.attempts >= proof.ctx.policy.limits.challenge_attempts
    ):
        return JudgedAhead(row, loaded)
    enrolment = reads.totp.get(ch.subject)
    if enrolment is not None and enrolment[1] is None:
        return JudgedAhead(row, loaded)
    try:
        checked = await _check_totp(conn, proof.ctx, loaded, ch, proof.body, proof.now, reads)
    except DomainError:
        return JudgedAhead(row, loaded)  # no code: refused under the lock
    accepted = _accepted_writes(proof, loaded, ch, Method.TOTP, checked) if checked.ok else None
    return JudgedAhead(row, loaded, ch.subject, enrolment, checked, accepted)


ProofBatches = GroupCommit[ProofRequest, "_Accepted | _Later"]
# As decision batches linger (unlock.DECISION_LINGER_S): without it, under 32 connections over
# HTTP, proof batches alternated 31 and 1 (a batch costs about as much whatever its size), half
# the batches the size of the load. With it, batches of ~31 and TOTP verify 1,776-2,337 ->
# 1,876-2,442 req/s on one worker, SQLite (five alternated pairs, +4.5 to +9.5 % but one outlier);
# PostgreSQL batches of 9-10 -> 13. In one process with no HTTP (bench_verify_cpu) the clients
# come back at once and nothing changes, which is why an earlier try there kept none.
PROOF_LINGER_S = 0.002


def proof_batches(engine: AsyncEngine, **kwargs: Any) -> ProofBatches:
    """The worker's group commit for proofs (create_app builds one per process)."""
    return GroupCommit(
        engine,
        prove_batch,
        alone_on=deadlocked,
        linger=PROOF_LINGER_S,
        # Used only when BEGIN would wait: SQLite's writers (service.db.write_turn_elsewhere).
        ahead=judge_ahead,
        **kwargs,
    )


async def prove_batch(
    conn: AsyncConnection, batch: Sequence[ProofRequest], *, planned: bool = True
) -> list[_Accepted | _Later | Exception]:
    """Judge a batch of proofs in the caller's transaction, as if each ran on its own in turn:
    a proof that raises leaves nothing behind, a rejected one keeps its attempt and audit entry
    (its error is its outcome) and an accepted one its writes. Their audit entries are written
    at the end, in the same transaction (audit_trail.DirectEntries). One COMMIT then settles
    them all.

    Planned (the default): the batch's proofs are judged in memory from its reads, in order,
    and their writes go out as one statement of each kind for the whole batch (_Plan), each
    checked against the rows it was expected to change; on PostgreSQL every statement is a
    round trip of ~140 µs of this process's CPU on the machine of 2026-12-06, and a proof on
    its own took six. A proof the plan does not cover (one that opens a review case, anything
    unexpected) and every proof after it go the way each proof went before: one at a time,
    within a savepoint each (``planned=False``: all of them). A plan whose writes fail or
    change other rows than expected is taken back whole, and the batch is judged one proof at
    a time from fresh reads."""
    reads = await _read_for(conn, batch)
    entries = DirectEntries()
    outcomes: list[_Accepted | _Later | Exception] = []
    if planned:
        try:
            async with savepoint(conn):
                outcomes = await _prove_planned(conn, batch, reads, entries)
        except Exception as exc:
            if deadlocked(exc):
                raise  # the whole batch is retried one proof at a time (proof_batches)
            log.warning("a batch of %d proofs is judged one at a time: %r", len(batch), exc)
            reads = await _read_for(conn, batch)
            entries = DirectEntries()
            outcomes = []
    for proof in batch[len(outcomes) :]:
        mark = entries.mark()
        try:
            async with savepoint(conn):
                outcome: _Accepted | _Later | Exception = await _prove_in(
                    conn, proof, reads, entries
                )
        except Exception as exc:
            if deadlocked(exc):
                raise  # the whole batch is retried one proof at a time (proof_batches)
            entries.drop_since(mark)  # its savepoint undid its writes: its entries go too
            outcome = exc
        else:
            if isinstance(outcome, ProofRejected):
                # Its failed attempt (_fail_in) counts for the batch's later proofs.
                request = reads.requests[proof.request_id]
                method = reads.challenges[proof.challenge_id].method
                reads.failures.add(request.subject, method, request.source_index, proof.now)
        outcomes.append(outcome)
    await entries.write_in(conn, batch[0].ctx)
    return outcomes


class PlanMismatch(Exception):
    """A planned write changed another number of rows than the plan expected."""


class _Plan:
    """The writes of the proofs judged so far (_prove_planned), by kind, in proof order: each
    what _prove_in writes for one proof, with the same statement."""

    __slots__ = (
        "attempts",
        "closings",
        "completions",
        "consumed",
        "outbox",
        "requests",
        "reserved",
    )

    def __init__(self) -> None:
        self.consumed: dict[str, int] = {}  # subject -> the TOTP step its last proof used
        self.completions: list[tuple[str, int, datetime]] = []  # (challenge, attempt limit, now)
        self.reserved: list[tuple[str, int]] = []  # (challenge, attempt limit)
        self.closings: list[tuple[str, datetime]] = []
        self.requests: list[RequestUpdate] = []
        self.attempts: list[AttemptRecord] = []
        self.outbox: list[tuple[str, str, dict[str, object], datetime]] = []

    async def write(self, conn: AsyncConnection) -> None:
        repo = ChallengeRepository(conn)
        steps = list(self.consumed.items())
        _expect(await repo.consume_totp_steps(steps), steps, "TOTP steps")
        completed = await repo.reserve_and_complete_many(self.completions)
        _expect(completed, self.completions, "completed challenges")
        _expect(await repo.reserve_attempts(self.reserved), self.reserved, "attempts")
        _expect(await repo.close_failed_many(self.closings), self.closings, "closed challenges")
        _expect(await repo.update_requests(self.requests), self.requests, "requests")
        await repo.record_attempts(self.attempts)
        await repo.enqueue_at(self.outbox)


def _expect(changed: int, items: Sequence[object], what: str) -> None:
    if changed != len(items):
        raise PlanMismatch(f"{what}: {changed} rows changed for {len(items)} planned")


async def _prove_planned(
    conn: AsyncConnection,
    batch: Sequence[ProofRequest],
    reads: ProofReads,
    entries: DirectEntries,
) -> list[_Accepted | _Later | Exception]:
    """The outcomes of the batch's first proofs, judged in memory in order as _prove_in judges
    each, their writes made (_Plan.write): up to the first proof it does not cover. Each
    proof sees the ones before it as _prove_in's reads would: the throttles' failures through
    ``reads.failures``, an account's TOTP step through ``_Plan.consumed`` (a batch holds one
    proof per request, so no proof's challenge or request is another's)."""
    plan = _Plan()
    outcomes: list[_Accepted | _Later | Exception] = []
    for proof in batch:
        ctx, now = proof.ctx, proof.now
        limits = ctx.policy.limits
        try:
            judged = await _judge(conn, proof, reads)
        except DomainError as exc:
            outcomes.append(exc)  # it writes nothing, as on its own
            continue
        if isinstance(judged, _Later):
            outcomes.append(judged)
            continue
        loaded, ch, method, checked = judged.loaded, judged.challenge, judged.method, judged.checked
        if checked.recovery_code_id is not None or checked.review_reason is not None:
            break  # not an at-once method's outcome: _prove_in's to handle
        step = checked.totp_step
        if checked.ok and step is not None and plan.consumed.get(ch.subject, -1) >= step:
            # An earlier proof of the batch used this step (consume_totp_step's condition).
            checked = Checked(ok=False, reason="code_reused")
        if checked.ok:
            if step is not None:
                plan.consumed[ch.subject] = step
            # Made ahead of the lock from the same rows and check (judge_ahead), or now.
            writes = judged.accepted or _accepted_writes(proof, loaded, ch, method, checked)
            accepted = writes.acceptance
            plan.completions.append((ch.id, limits.challenge_attempts, now))
            plan.requests.append(accepted.update)
            plan.attempts.append(_attempt(loaded, ch, "success", now))
            entries.add_encoded(writes.payloads)
            plan.outbox += [(*e, now) for e in writes.outbox]
            outcomes.append(_Accepted(accepted.row, accepted.row.audit_index, loaded.stored))
            continue
        failures = reads.failures.of_method(ch.subject, ch.method, now - METHOD_FAILURES_WINDOW)
        if len(failures) + 1 >= limits.method_failures_per_day or _reuse_notices(
            loaded, ch, checked, now
        ):
            # This failure opens a review case, or tells a reused code's holder (once an hour):
            # _fail_in does either, so _prove_in's to handle.
            break
        attempts = ch.attempts + 1  # the challenge is this proof's alone in the batch
        plan.reserved.append((ch.id, limits.challenge_attempts))
        if attempts >= limits.challenge_attempts:
            plan.closings.append((ch.id, now))
        attempts_left = max(0, limits.challenge_attempts - attempts)
        plan.attempts.append(_attempt(loaded, ch, checked.reason, now))
        entry = _failure_entry(ch, checked, attempts_left)
        entries.add(EntryKind.VERIFICATION_ATTEMPT, proof.actor, ch.subject, entry, now)
        reads.failures.add(loaded.request.subject, ch.method, loaded.request.source_index, now)
        outcomes.append(_rejection(loaded, checked, attempts_left))
    if outcomes:
        await plan.write(conn)
    return outcomes


def _attempt(loaded: Loaded, ch: ChallengeRow, outcome: str, now: datetime) -> AttemptRecord:
    return AttemptRecord(
        ch.subject, ch.unlock_request_id, ch.method, outcome, loaded.request.source_index, now
    )


class _Judged(msgspec.Struct, frozen=True):
    """An at-once proof judged: what its writes are decided from."""

    loaded: Loaded
    challenge: ChallengeRow
    method: Method
    checked: Checked
    # When ``checked`` was made ahead of the lock and is a right code: its writes, made there.
    accepted: _AcceptedWrites | None = None


class _AcceptedWrites(msgspec.Struct, frozen=True):
    """A right code's writes in a planned batch (_prove_planned): its acceptance, its audit
    entries encoded (the attempt's, and the approval's when it approves) and the approval's
    outbox events. Made under the lock, or ahead of it (judge_ahead) from the same rows."""

    acceptance: _Acceptance
    payloads: list[bytes]
    outbox: list[tuple[str, str, dict[str, object]]]


def _accepted_writes(
    proof: ProofRequest, loaded: Loaded, ch: ChallengeRow, method: Method, checked: Checked
) -> _AcceptedWrites:
    now = proof.now
    # As _succeed_in's lock_request(read_here=...) has it: read locked, unchanged since.
    accepted = _acceptance(loaded, ch, method, now, checked, request_state(loaded.request))
    payloads = [
        new_event_payload(
            EntryKind.VERIFICATION_ATTEMPT, proof.actor, ch.subject, accepted.entry, now
        )
    ]
    outbox: list[tuple[str, str, dict[str, object]]] = []
    if accepted.approved:  # approve_in's writes
        via, subject = "verification", loaded.request.subject
        outbox = _approval_events(loaded, now, via)
        entry = _approval_entry(loaded, via)
        payloads.append(new_event_payload(EntryKind.DECISION, proof.actor, subject, entry, now))
    return _AcceptedWrites(accepted, payloads, outbox)


async def _judge(conn: AsyncConnection, proof: ProofRequest, reads: ProofReads) -> _Judged | _Later:
    """A proof's part before its writes, from the batch's reads: raises for a proof that must
    leave nothing behind. Writes nothing."""
    ctx, now = proof.ctx, proof.now
    row = reads.requests.get(proof.request_id)
    ahead = proof.ahead
    if ahead is not None and ahead.request == row:
        loaded = ahead.loaded  # loaded ahead of the lock from the row read again here
    else:
        ahead = None
        loaded = _loaded(ctx, row, now)
    challenge = reads.challenges.get(proof.challenge_id)
    if challenge is None or challenge.unlock_request_id != proof.request_id:
        raise ChallengeNotFound("No such challenge for this unlock request.")
    method = Method(challenge.method)
    # Serialised by the batch already, if at once (_read_for).
    at_once = _at_once(challenge, now)
    # Throttled first: a throttled account hears when to come back, whatever the challenge.
    _check_throttles_in(reads.failures, ctx, loaded, method, now)
    if challenge.status != "open":
        raise _closed(challenge.status)
    if at_once is None:
        return _Later(loaded, challenge, method)
    # Judged before its attempt is counted, but in the same transaction, under the batch's
    # serialisation of the account's attempts at the method, on a challenge read under it: a
    # proof with no attempt left is refused before it is judged, so the limits bound the
    # guesses evaluated; one whose count is refused all the same (the challenge closed by a
    # writer outside the serialisation, as an expiry) is refused whatever its code, and what it
    # wrote is taken back. A proof never judged (a missing field) writes nothing and counts
    # against no one. An accepted proof counts its attempt with the challenge's completion, in
    # one statement.
    if challenge.attempts >= ctx.policy.limits.challenge_attempts:
        # Read under the batch's serialisation: no attempt is left for this proof to count.
        raise _closed("failed")
    if (
        ahead is not None
        and ahead.checked is not None
        and ahead.subject == challenge.subject
        and ahead.enrolment == reads.totp.get(challenge.subject)
    ):
        # Checked ahead of the lock against the enrolment read here (with, for a right code,
        # its writes made from the same rows).
        return _Judged(loaded, challenge, method, ahead.checked, ahead.accepted)
    checked = await at_once(conn, ctx, loaded, challenge, proof.body, now, reads)
    return _Judged(loaded, challenge, method, checked)


async def _prove_in(
    conn: AsyncConnection, proof: ProofRequest, reads: ProofReads, entries: DirectEntries
) -> _Accepted | _Later | ProofRejected:
    """One proof's first (for at-once methods: only) transaction, on its own. Raises for a
    proof that must leave nothing behind; returns the rejection of one whose failed attempt
    must commit."""
    judged = await _judge(conn, proof, reads)
    if isinstance(judged, _Later):
        return judged
    ctx, now = proof.ctx, proof.now
    loaded, challenge, method, checked = (
        judged.loaded,
        judged.challenge,
        judged.method,
        judged.checked,
    )
    if checked.ok:
        try:
            # No savepoint of its own: what _succeed_in wrote before a _ProofUsed may commit.
            row, index = await _succeed_in(
                conn,
                ctx,
                proof.actor,
                loaded,
                challenge,
                method,
                now,
                checked,
                None,
                entries,
                read_here=True,
                reserving=ctx.policy.limits.challenge_attempts,
            )
            return _Accepted(row, index, loaded.stored)
        except _ProofUsed:
            checked = Checked(ok=False, reason="code_reused")
    # The attempt row is written once, with its outcome (_fail_in): no one outside this
    # transaction could see it before its commit anyway.
    await _reserve_in(conn, ctx, loaded, challenge, method, now, serialised=True, record=False)
    # Committed with the batch: the failed attempt counts (NIST-63B4-3.2.2).
    return await _fail_in(
        conn,
        ctx,
        proof.actor,
        loaded,
        challenge,
        now,
        checked,
        entries=entries,
    )


async def verify(
    ctx: ServiceContext, actor: str, request_id: str, challenge_id: str, body: dto.VerifyIn
) -> dto.DecisionOut:
    now = ctx.clock()
    # Concurrent proofs share one transaction and one commit (service.group_commit); a rejected
    # proof comes back as its error, raised here only once its attempt has committed.
    outcome = await ctx.proofs.submit(
        request_id, ProofRequest(ctx, actor, request_id, challenge_id, body, now)
    )
    if isinstance(outcome, _Accepted):
        return await _answer(ctx, outcome.row, outcome.index, now, outcome.stored)
    loaded, challenge, method = outcome.loaded, outcome.challenge, outcome.method
    # The three phases, for checks that take time (_reserve checks the throttles again,
    # serialised with the attempt they admit).
    if now >= challenge.expires_at:  # any method's expired challenge ends here (_fail raises)
        await _fail(
            ctx, actor, loaded, challenge, now, Checked(ok=False, reason="expired"), expire=True
        )
    attempt_id = await _reserve(ctx, loaded, challenge, method, now)
    try:
        checked = await CHECKERS[method](ctx, loaded, challenge, body, now)
    except Exception:
        # Not judged (a missing field, the provider down): nothing counts against the person.
        async with ctx.engine.begin() as conn:
            await ChallengeRepository(conn).release_attempt(challenge.id, attempt_id)
        raise
    if not checked.ok:
        await _fail(ctx, actor, loaded, challenge, now, checked, attempt_id=attempt_id)
    return await _succeed(ctx, actor, loaded, challenge, method, now, checked, attempt_id)


async def _reserve(
    ctx: ServiceContext, loaded: Loaded, ch: ChallengeRow, method: Method, now: datetime
) -> str:
    """Count the attempt before its proof is checked, in one transaction serialised per account
    and method, so that concurrent proofs cannot all pass the throttle and the challenge's
    attempt limit on the same stale count: the limits bound the guesses actually evaluated
    (NIST-63B4-3.2.2). The attempt stays ``pending`` (a failure for every throttle) until
    settled."""
    async with ctx.engine.begin() as conn:
        attempt_id = await _reserve_in(conn, ctx, loaded, ch, method, now)
    assert attempt_id is not None  # recorded: this reservation commits before the check
    return attempt_id


async def _reserve_in(
    conn: AsyncConnection,
    ctx: ServiceContext,
    loaded: Loaded,
    ch: ChallengeRow,
    method: Method,
    now: datetime,
    *,
    serialised: bool = False,
    record: bool = True,
) -> str | None:
    """``serialised``: the caller took the serialisation and checked the throttles in this same
    transaction already. ``record``: write the attempt now, as pending (its id); without, the
    caller records it with its outcome later in this transaction (None)."""
    repo = ChallengeRepository(conn)
    if not serialised:
        await repo.serialise(f"attempts:{method.value}", ch.subject)
        await _check_throttles(repo, ctx, loaded, method, now)
    if not await repo.reserve_attempt(ch.id, ctx.policy.limits.challenge_attempts):
        raise await _refused_attempt(repo, ch.id)
    if not record:
        return None
    return await repo.record_attempt(
        ch.subject,
        ch.unlock_request_id,
        method.value,
        "pending",
        loaded.request.source_index,
        now,
    )


async def _refused_attempt(repo: ChallengeRepository, challenge_id: str) -> ChallengeClosed:
    """The error for a proof whose attempt could not be counted: the challenge is closed, or
    open with no attempt left (then as good as failed)."""
    current = await repo.get(challenge_id)
    return _closed("failed" if current is None or current.status == "open" else current.status)


def _closed(status: str) -> ChallengeClosed:
    return ChallengeClosed(f"This challenge is {status}; start a new one.", challenge_status=status)


async def _fail(
    ctx: ServiceContext,
    actor: str,
    loaded: Loaded,
    ch: ChallengeRow,
    now: datetime,
    checked: Checked,
    *,
    expire: bool = False,
    attempt_id: str | None = None,
) -> None:
    async with ctx.engine.begin() as conn:
        if attempt_id is None:
            # A failure counted here, not reserved before (an expired challenge's): under the
            # serialisation every other writer of the account's failures at the method holds,
            # so a batch of proofs' count of them, read under it, stays exact until it commits
            # (_prove_planned decides a review case from that count).
            await ChallengeRepository(conn).serialise(f"attempts:{ch.method}", ch.subject)
        failure = await _fail_in(
            conn, ctx, actor, loaded, ch, now, checked, expire=expire, attempt_id=attempt_id
        )
    raise failure


async def _fail_in(
    conn: AsyncConnection,
    ctx: ServiceContext,
    actor: str,
    loaded: Loaded,
    ch: ChallengeRow,
    now: datetime,
    checked: Checked,
    *,
    expire: bool = False,
    attempt_id: str | None = None,
    entries: DirectEntries | None = None,
) -> ProofRejected:
    """Settle a rejected proof in the caller's transaction; the error to raise once it commits.
    Its audit entry goes to ``entries`` when a batch integrates them, else to the inbox."""
    limits = ctx.policy.limits
    repo = ChallengeRepository(conn)
    if expire:
        await repo.expire(ch.id, now)
        attempts_left = 0
    else:
        # The attempt was reserved (and counted) before the check.
        attempts_left = await repo.close_if_exhausted(ch.id, limits.challenge_attempts, now)
    # An expired challenge's attempt was never reserved: _settle writes its row.
    await _settle(repo, loaded, ch, attempt_id, checked.reason, now)
    notices = _reuse_notices(loaded, ch, checked, now)
    if notices and not await repo.enqueued_since(*notices[0][:2], now - REUSE_NOTICE_EVERY):
        await repo.enqueue_at(notices)
    review_reason = checked.review_reason
    if review_reason is None:
        failures = await repo.method_failures_since(
            now - METHOD_FAILURES_WINDOW, ch.subject, ch.method
        )
        if len(failures) >= limits.method_failures_per_day:
            review_reason = ReviewReason.REPEATED_FAILURES
    if review_reason is not None:
        state = await repo.lock_request(ch.unlock_request_id)
        if state is not None and state.review_reason is None:
            await repo.update_request(
                ch.unlock_request_id,
                status=state.status,
                factors=state.factors,
                review_reason=review_reason.value,
                now=now,
            )
        # Issue 6: a face failure or repeated failures open a review case (idempotent).
        from service.flows import review

        await review.open_case_in(
            conn,
            ctx,
            ch.unlock_request_id,
            ch.subject,
            origin=review_reason.value.lower(),
            now=now,
        )
    await record_in(
        entries,
        conn,
        ctx,
        EntryKind.VERIFICATION_ATTEMPT,
        actor,
        ch.subject,
        _failure_entry(ch, checked, attempts_left),
        now,
    )
    return _rejection(loaded, checked, attempts_left)


# At most one text an hour about reused codes: a replay sent by fifty clients at once is one
# event for the person, not fifty messages.
REUSE_NOTICE_EVERY = timedelta(hours=1)


def _reuse_notices(
    loaded: Loaded, ch: ChallengeRow, checked: Checked, now: datetime
) -> list[tuple[str, str, dict[str, object], datetime]]:
    """The outbox event that tells the holder a TOTP code was used again (ASVS4-2.8.5): a right
    code seen twice means someone else may hold it. Empty for any other failure, and for an
    account without a channel (unknown, or erased)."""
    sealed = loaded.request.account_id_sealed
    if (
        checked.reason != "code_reused"
        or ch.method != Method.TOTP.value
        or not loaded.request.known_account
        or sealed is None
    ):
        return []
    payload: dict[str, object] = {
        "unlock_request_id": ch.unlock_request_id,
        "account_id_sealed": sealed,
        "locale": loaded.decision.locale,
    }
    return [("notify_code_reused", ch.subject, payload, now)]


def _failure_entry(ch: ChallengeRow, checked: Checked, attempts_left: int) -> dict[str, JSONValue]:
    return {
        "unlock_request_id": ch.unlock_request_id,
        "challenge_id": ch.id,
        "method": ch.method,
        "outcome": "failure",
        "reason": checked.reason,
        "attempts_left": attempts_left,
        **checked.audit,
    }


def _rejection(loaded: Loaded, checked: Checked, attempts_left: int) -> ProofRejected:
    return ProofRejected(
        "The proof was not accepted." if checked.reason != "expired" else "The challenge expired.",
        reason=checked.reason,
        attempts_left=attempts_left,
        appeal_path=loaded.decision.review.appeal_path,
    )


async def _settle(
    repo: ChallengeRepository,
    loaded: Loaded,
    ch: ChallengeRow,
    attempt_id: str | None,
    outcome: str,
    now: datetime,
) -> None:
    """The reserved attempt's outcome: its pending row updated, or (None: reserved in this
    transaction without a row) its row written now."""
    if attempt_id is not None:
        await repo.settle_attempt(attempt_id, outcome)
        return
    await repo.record_attempt(
        ch.subject, ch.unlock_request_id, ch.method, outcome, loaded.request.source_index, now
    )


class _ProofUsed(Exception):
    """Internal: the conditional update found the proof already used; the transaction rolls back."""


async def _succeed(
    ctx: ServiceContext,
    actor: str,
    loaded: Loaded,
    ch: ChallengeRow,
    method: Method,
    now: datetime,
    checked: Checked,
    attempt_id: str,
) -> dto.DecisionOut:
    try:
        async with ctx.engine.begin() as conn:
            row, index = await _succeed_in(
                conn, ctx, actor, loaded, ch, method, now, checked, attempt_id
            )
    except _ProofUsed:
        # Recorded after the rollback, in a transaction of its own (never a nested connection).
        await _fail(
            ctx,
            actor,
            loaded,
            ch,
            now,
            Checked(ok=False, reason="code_reused"),
            attempt_id=attempt_id,
        )
        raise AssertionError("unreachable: _fail raises") from None
    return await _answer(ctx, row, index, now, loaded.stored)


async def _succeed_in(
    conn: AsyncConnection,
    ctx: ServiceContext,
    actor: str,
    loaded: Loaded,
    ch: ChallengeRow,
    method: Method,
    now: datetime,
    checked: Checked,
    attempt_id: str | None,
    entries: DirectEntries | None = None,
    *,
    read_here: bool = False,
    reserving: int | None = None,
) -> tuple[UnlockRequestRow, int | None]:
    """An accepted proof's writes in the caller's transaction: the request row after them and its
    log index (None while pending). Raises _ProofUsed when another request used the proof first,
    having written nothing (see below for the one exception, which is safe to commit), and
    RequestClosed when the account was erased meanwhile, whose writes the caller's savepoint or
    transaction must take back.
    ``read_here``: ``loaded.request`` was read in this transaction and is unchanged since.
    ``reserving``: the proof's attempt is not counted yet; the completion counts it, within
    this limit, or raises ChallengeClosed (after the proof was used: the caller's savepoint
    takes that back)."""
    repo = ChallengeRepository(conn)
    # The proof first, then the challenge: a proof another request used writes nothing here.
    # The challenge cannot then fail to complete when its attempt was reserved in this same
    # transaction (the path of _verify's at-once methods); if it ever did, the proof stays used
    # and the attempt is settled as a failure, which only costs the person a code.
    won = True
    if checked.totp_step is not None:
        won = await repo.consume_totp_step(ch.subject, checked.totp_step)
    if won and checked.recovery_code_id is not None:
        won = await repo.use_recovery_code(checked.recovery_code_id, now)
    if won:
        if reserving is None:
            won = await repo.complete(ch.id, now)
        elif not await repo.reserve_and_complete(ch.id, reserving, now):
            raise await _refused_attempt(repo, ch.id)
    if not won:
        # Another request used this proof first: exactly one wins (ASVS4-2.8.5).
        raise _ProofUsed
    # A batch of proofs read the row in this transaction and nothing here has changed it since.
    state = await repo.lock_request(
        ch.unlock_request_id, read_here=loaded.request if read_here else None
    )
    assert state is not None  # the request exists: it was loaded above and is never deleted
    if state.erased:
        # The account was erased after the request was loaded (PostgreSQL: the erasure
        # committed while this proof was judged): an erased account is never approved, and the
        # savepoint or transaction this runs in takes the proof's writes back.
        raise RequestClosed("This request's account was erased.", request_status="erased")
    accepted = _acceptance(loaded, ch, method, now, checked, state)
    update = accepted.update
    await repo.update_request(
        update.id,
        status=update.status,
        factors=update.factors,
        review_reason=update.review_reason,
        now=now,
    )
    await _settle(repo, loaded, ch, attempt_id, "success", now)
    await record_in(
        entries, conn, ctx, EntryKind.VERIFICATION_ATTEMPT, actor, ch.subject, accepted.entry, now
    )
    if accepted.approved:
        await approve_in(conn, ctx, actor, loaded, now, via="verification", entries=entries)
    # The decision's log index came with the request's row (integrated when it was made).
    return accepted.row, accepted.row.audit_index


class _Acceptance(msgspec.Struct, frozen=True):
    """What an accepted proof writes, decided from the request's state under its lock."""

    update: RequestUpdate
    # The verification attempt's audit entry.
    entry: dict[str, JSONValue]
    approved: bool
    # The request's row as the update leaves it, without reading it back.
    row: UnlockRequestRow


def _acceptance(
    loaded: Loaded,
    ch: ChallengeRow,
    method: Method,
    now: datetime,
    checked: Checked,
    state: RequestState,
) -> _Acceptance:
    proven = sorted(set(state.factors) | {method.value})
    approved = state.status == "pending_verification" and satisfied(
        loaded.decision.offer, set(proven)
    )
    status = "approved" if approved else state.status
    entry: dict[str, JSONValue] = {
        "unlock_request_id": ch.unlock_request_id,
        "challenge_id": ch.id,
        "method": method.value,
        "outcome": "success",
        "factors_satisfied": list(proven),
        **checked.audit,
    }
    row = msgspec.structs.replace(
        loaded.request,
        status=status,
        factors_satisfied=json.dumps(proven),
        review_reason=state.review_reason,
    )
    update = RequestUpdate(ch.unlock_request_id, status, proven, state.review_reason, now)
    return _Acceptance(update, entry, approved, row)


async def _answer(
    ctx: ServiceContext,
    row: UnlockRequestRow,
    index: int | None,
    now: datetime,
    stored: dto.DecisionOut | None,
) -> dto.DecisionOut:
    if index is None:  # still pending (another worker integrating): wait for it
        index = await unlock.audit_index(ctx, row)
    if stored is None:
        return unlock.view(ctx, row, index, now)
    return unlock.view_of(ctx, stored, row, index, now)


async def approve_in(
    conn: AsyncConnection,
    ctx: ServiceContext,
    actor: str,
    loaded: Loaded,
    now: datetime,
    *,
    via: str,
    entries: DirectEntries | None = None,
) -> None:
    """What every approval does, automated or a reviewer's: audit it and tell the account system
    and the person through the outbox (delivered after commit, retried until acknowledged)."""
    await ChallengeRepository(conn).enqueue_many(_approval_events(loaded, now, via), now)
    await record_in(
        entries,
        conn,
        ctx,
        EntryKind.DECISION,
        actor,
        loaded.request.subject,
        _approval_entry(loaded, via),
        now,
    )


def _approval_events(
    loaded: Loaded, now: datetime, via: str
) -> list[tuple[str, str, dict[str, object]]]:
    """An approval's outbox events: the account system's and the person's."""
    request_id = loaded.request.id
    sealed_account = loaded.request.account_id_sealed
    assert sealed_account is not None  # erased requests are closed before any proof is checked
    return [
        (
            "account_unlocked",
            loaded.request.subject,
            {
                "unlock_request_id": request_id,
                "account_id_sealed": sealed_account,
                "via": via,
                "approved_at": now.isoformat(),
            },
        ),
        # NIST-63B4-4.6: tell the person on every channel on file, with no secret in it.
        (
            "notify_person",
            loaded.request.subject,
            {
                "unlock_request_id": request_id,
                "account_id_sealed": sealed_account,
                "locale": loaded.decision.locale,
            },
        ),
    ]


def _approval_entry(loaded: Loaded, via: str) -> dict[str, JSONValue]:
    return {"unlock_request_id": loaded.request.id, "status": "approved", "via": via}
