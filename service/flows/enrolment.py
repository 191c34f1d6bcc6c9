"""Enrolment, consent and erasure flows (DESIGN.md API contract, accounts routes).

Every change commits together with its audit entry. Secrets leave this module only once, in the
response that shows them (TOTP secret, recovery codes); the database keeps ciphertexts and hashes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import anyio.to_thread
from sqlalchemy.ext.asyncio import AsyncConnection

from audit.entry import EntryKind
from policy.model import ConsentState, TotpState
from service.context import ServiceContext
from service.domain import (
    AccountErased,
    ConsentNotAccepted,
    InvalidCode,
    StaleNoticeVersion,
    TotpAlreadyEnrolled,
    TotpNotStarted,
    UnknownProvider,
)
from service.flows.audit_trail import record
from service.methods import recovery_codes, totp
from service.methods.phone import mask, normalize_e164
from service.persistence.accounts import AccountRepository, AccountSnapshot, ConsentRecord
from service.persistence.outbox import OutboxRepository
from service.persistence.unlock_requests import UnlockRequestRepository

TOTP_AAD = b"totp_secret"
PHONE_AAD = b"phone"
OIDC_SUBJECT_AAD = b"oidc_subject"
TOTP_PARAMS = totp.TotpParameters()
TOTP_ISSUER = "FairUnlock"


def consent_state(consent: ConsentRecord | None, current_version: str) -> ConsentState:
    if consent is None:
        return ConsentState.NONE
    if consent.withdrawn_at is not None:
        return ConsentState.WITHDRAWN
    if consent.notice_version != current_version:
        return ConsentState.STALE
    return ConsentState.ACTIVE


async def _writable(repo: AccountRepository, subject: str, now: datetime) -> None:
    # Held first: an erasure either committed before (ensure sees it) or waits for this commit.
    await repo.hold_for_writing([subject])
    if not await repo.ensure(subject, now):
        raise AccountErased("This account's personal data was erased; it cannot be enrolled again.")


async def set_phone(
    ctx: ServiceContext, actor: str, account_id: str, raw_phone: str, verified: bool
) -> tuple[str, bool]:
    e164 = normalize_e164(raw_phone)
    masked = mask(e164)
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        await _writable(repo, subject, now)
        ciphertext = await ctx.data_keys.encrypt(conn, account_id, e164.encode(), PHONE_AAD)
        blind = ctx.data_keys.blind_index("phone", e164)
        await repo.set_phone(subject, ciphertext, blind, masked, verified, now)
        await record(
            conn,
            ctx,
            EntryKind.ENROLMENT,
            actor,
            subject,
            {"method": "sms", "change": "phone_set", "verified": verified},
            now,
        )
    return masked, verified


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    secret: str
    otpauth_uri: str


async def start_totp(ctx: ServiceContext, actor: str, account_id: str) -> TotpEnrolment:
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    secret = totp.new_secret()
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        await _writable(repo, subject, now)
        snapshot = await repo.snapshot(subject)
        if snapshot.totp_state is TotpState.CONFIRMED:
            raise TotpAlreadyEnrolled(
                "An authenticator is already confirmed for this account; it stays in use."
            )
        ciphertext = await ctx.data_keys.encrypt(conn, account_id, secret.encode(), TOTP_AAD)
        await repo.start_totp(subject, ciphertext, now)
        await record(
            conn,
            ctx,
            EntryKind.ENROLMENT,
            actor,
            subject,
            {"method": "totp", "change": "started"},
            now,
        )
    uri = totp.provisioning_uri(secret, account_id, TOTP_ISSUER, TOTP_PARAMS)
    return TotpEnrolment(secret=secret, otpauth_uri=uri)


async def confirm_totp(ctx: ServiceContext, actor: str, account_id: str, code: str) -> None:
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        snapshot = await repo.snapshot(subject)
        if snapshot.totp is None or snapshot.totp.confirmed:
            raise TotpNotStarted("Start an authenticator enrolment first (POST …/totp).")
        secret = (
            await ctx.data_keys.decrypt(conn, account_id, snapshot.totp.secret_ciphertext, TOTP_AAD)
        ).decode()
        step = totp.verify(secret, code.strip(), now, TOTP_PARAMS, None)
        if step is None:
            raise InvalidCode("The code does not match the authenticator being enrolled.")
        await repo.confirm_totp(subject, step, now)
        await record(
            conn,
            ctx,
            EntryKind.ENROLMENT,
            actor,
            subject,
            {"method": "totp", "change": "confirmed"},
            now,
        )


async def bind_identity(
    ctx: ServiceContext,
    actor: str,
    account_id: str,
    provider: str,
    oidc_subject: str,
    real_name_verified: bool,
) -> str:
    config = ctx.oidc_providers.get(provider)
    if config is None:
        raise UnknownProvider(
            f"No identity provider named {provider!r} is configured.",
            providers=sorted(ctx.oidc_providers),
        )
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        await _writable(repo, subject, now)
        ciphertext = await ctx.data_keys.encrypt(
            conn, account_id, oidc_subject.encode(), OIDC_SUBJECT_AAD
        )
        blind = ctx.data_keys.blind_index(f"oidc:{config.issuer}", oidc_subject)
        await repo.bind_identity(
            subject, provider, config.issuer, ciphertext, blind, real_name_verified, now
        )
        await record(
            conn,
            ctx,
            EntryKind.ENROLMENT,
            actor,
            subject,
            {
                "method": "linked_identity",
                "change": "bound",
                "provider": provider,
                "real_name_verified": real_name_verified,
            },
            now,
        )
    return config.issuer


async def issue_recovery_codes(ctx: ServiceContext, actor: str, account_id: str) -> list[str]:
    codes = [recovery_codes.new_code() for _ in range(recovery_codes.CODE_COUNT)]
    # argon2 is CPU work: off the event loop, so other requests keep being served meanwhile.
    hashes = await anyio.to_thread.run_sync(lambda: [recovery_codes.hash_code(c) for c in codes])
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        await _writable(repo, subject, now)
        await repo.replace_recovery_codes(subject, hashes, now)
        await record(
            conn,
            ctx,
            EntryKind.ENROLMENT,
            actor,
            subject,
            {"method": "recovery_code", "change": "issued", "count": len(codes)},
            now,
        )
    return codes


def face_provider_subjects(ctx: ServiceContext, account_id: str) -> dict[str, str]:
    """Per configured face provider, the reference to enrol this account's face under there:
    the ``sub`` its attestations must name (``DataKeys.face_subject``)."""
    subject = ctx.data_keys.pseudonymize(account_id)
    return {name: ctx.data_keys.face_subject(name, subject) for name in sorted(ctx.face_audiences)}


async def grant_face_consent(
    ctx: ServiceContext,
    actor: str,
    account_id: str,
    notice_version: str,
    accepted: bool,
    channel: str,
) -> ConsentRecord:
    if not accepted:
        # FRM-6: consent is an affirmative act; "false" is not a consent and records nothing.
        raise ConsentNotAccepted('Consent needs "accepted": true; declining needs no call at all.')
    if notice_version != ctx.notice.version:
        raise StaleNoticeVersion(
            "Consent must be given to the current notice.", current_version=ctx.notice.version
        )
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        await _writable(repo, subject, now)
        await repo.withdraw_consent(subject, now)  # one active consent at a time
        consent_id = await repo.grant_consent(
            subject, notice_version, ctx.notice.purpose, channel, now
        )
        await record(
            conn,
            ctx,
            EntryKind.CONSENT_GRANTED,
            actor,
            subject,
            {
                "consent_id": consent_id,
                "notice_version": notice_version,
                "purpose": ctx.notice.purpose,
                "channel": channel,
            },
            now,
        )
    return ConsentRecord(notice_version, now, None)


async def withdraw_face_consent(
    ctx: ServiceContext, actor: str, account_id: str
) -> ConsentRecord | None:
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        withdrawn = await repo.withdraw_consent(subject, now)
        if withdrawn:
            await record(
                conn,
                ctx,
                EntryKind.CONSENT_WITHDRAWN,
                actor,
                subject,
                {"purpose": ctx.notice.purpose},
                now,
            )
        snapshot = await repo.snapshot(subject)
    return snapshot.consent


async def phone_on_file(
    conn: AsyncConnection, ctx: ServiceContext, account_id: str, subject: str
) -> str | None:
    """The E.164 number to send to, decrypted only at the moment of sending; None without one."""
    snapshot = await AccountRepository(conn).snapshot(subject)
    if snapshot.phone is None or snapshot.erased:
        return None
    raw = await ctx.data_keys.decrypt(conn, account_id, snapshot.phone.ciphertext, PHONE_AAD)
    return raw.decode()


async def snapshot(ctx: ServiceContext, account_id: str) -> AccountSnapshot:
    async with ctx.engine.connect() as conn:
        return await AccountRepository(conn).snapshot(ctx.data_keys.pseudonymize(account_id))


@dataclass(frozen=True, slots=True)
class Erasure:
    key_destroyed: bool
    # Deliveries not acknowledged yet (an approval's webhook, a notice): removed with the account
    # id they carried and never attempted again (one in flight at that moment may still arrive);
    # counted in the erasure's audit entry.
    deliveries_cancelled: int
    inbox_id: int


async def erase(ctx: ServiceContext, actor: str, account_id: str) -> Erasure:
    """Crypto-shred the data key, remove the enrolments, the account id sealed on requests and
    the outbox events that carry it; the audit log still verifies."""
    now = ctx.clock()
    subject = ctx.data_keys.pseudonymize(account_id)
    async with ctx.engine.begin() as conn:
        repo = AccountRepository(conn)
        # Decisions and enrolments in flight for the account commit first; the rows they wrote
        # are then cleared below like every other.
        await repo.hold_for_erasure(subject)
        existed = await ctx.data_keys.destroy(conn, account_id)
        await repo.withdraw_consent(subject, now)
        await repo.erase(subject, now)
        await UnlockRequestRepository(conn).forget_account_id(subject)
        cancelled = await OutboxRepository(conn).forget_subject(subject)
        inbox_id = await record(
            conn,
            ctx,
            EntryKind.ERASURE,
            actor,
            subject,
            {"key_destroyed": existed, "deliveries_cancelled": cancelled},
            now,
        )
    return Erasure(existed, cancelled, inbox_id)
