"""Accounts: enrolment of methods, face consent and notice, the person's decisions, erasure."""

from __future__ import annotations

from litestar import Controller
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from policy.model import ConsentState
from service import dto
from service.auth import require_roles
from service.flows import enrolment, unlock
from service.flows.audit_trail import index_of
from service.persistence.accounts import ConsentRecord
from service.persistence.api_keys import Role
from service.routes.deps import Caller, Ctx
from service.routes.handlers import delete, get, post, put
from service.routes.problems import problems

AccountIdParam = Parameter(
    pattern=r"^[A-Za-z0-9._:@-]{1,128}$", description="The platform's account id", max_length=128
)
FRONTEND = [require_roles(Role.FRONTEND)]


def _consent_out(ctx: Ctx, account_id: str, consent: ConsentRecord | None) -> dto.FaceConsentOut:
    state = enrolment.consent_state(consent, ctx.notice.version)
    if consent is None:
        return dto.FaceConsentOut(state=state.value)
    active = state is ConsentState.ACTIVE
    return dto.FaceConsentOut(
        state=state.value,
        notice_version=consent.notice_version,
        granted_at=consent.granted_at,
        withdrawn_at=consent.withdrawn_at,
        provider_subjects=enrolment.face_provider_subjects(ctx, account_id) if active else None,
    )


class AccountController(Controller):
    path = "/v1/accounts/{account_id:str}"
    tags = ["accounts"]  # noqa: RUF012 - Litestar reads this class attribute

    @put("/phone", guards=FRONTEND, status_code=HTTP_200_OK, responses=problems(409, 413, 415, 422))
    async def set_phone(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.PhoneIn],
        account_id: str = AccountIdParam,
    ) -> dto.MaskedPhoneOut:
        """Set the phone on file (E.164). Stored encrypted; only the masked form is returned."""
        masked, verified = await enrolment.set_phone(
            ctx, principal.name, account_id, data.phone, data.verified
        )
        return dto.MaskedPhoneOut(phone=masked, verified=verified)

    @post("/totp", guards=FRONTEND, status_code=HTTP_201_CREATED, responses=problems(409))
    async def start_totp(
        self,
        ctx: Ctx,
        principal: Caller,
        account_id: str = AccountIdParam,
    ) -> dto.TotpEnrolmentOut:
        """Enrol an authenticator app: the secret and otpauth URI are shown this once."""
        started = await enrolment.start_totp(ctx, principal.name, account_id)
        return dto.TotpEnrolmentOut(secret=started.secret, otpauth_uri=started.otpauth_uri)

    @post(
        "/totp/confirm",
        guards=FRONTEND,
        status_code=HTTP_200_OK,
        responses=problems(409, 413, 415, 422),
    )
    async def confirm_totp(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.CodeIn],
        account_id: str = AccountIdParam,
    ) -> dto.TotpStateOut:
        """Confirm the authenticator with a current code."""
        await enrolment.confirm_totp(ctx, principal.name, account_id, data.code)
        return dto.TotpStateOut(confirmed=True)

    @put(
        "/linked-identities/{provider:str}",
        guards=FRONTEND,
        status_code=HTTP_200_OK,
        responses=problems(409, 413, 415, 422),
    )
    async def bind_identity(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.LinkedIdentityIn],
        provider: str = Parameter(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", max_length=64),
        account_id: str = AccountIdParam,
    ) -> dto.LinkedIdentityOut:
        """Bind a real-name-verified identity at a configured OIDC provider (matched by `sub`)."""
        issuer = await enrolment.bind_identity(
            ctx, principal.name, account_id, provider, data.subject, data.real_name_verified
        )
        return dto.LinkedIdentityOut(
            provider=provider, issuer=issuer, real_name_verified=data.real_name_verified
        )

    @post("/recovery-codes", guards=FRONTEND, status_code=HTTP_201_CREATED, responses=problems(409))
    async def issue_recovery_codes(
        self,
        ctx: Ctx,
        principal: Caller,
        account_id: str = AccountIdParam,
    ) -> dto.RecoveryCodesOut:
        """Issue 10 single-use recovery codes, shown this once; earlier codes stop working."""
        return dto.RecoveryCodesOut(
            codes=await enrolment.issue_recovery_codes(ctx, principal.name, account_id)
        )

    @put(
        "/face-consent",
        guards=FRONTEND,
        status_code=HTTP_200_OK,
        responses=problems(409, 413, 415, 422),
    )
    async def grant_face_consent(
        self,
        ctx: Ctx,
        principal: Caller,
        data: JSONBody[dto.FaceConsentIn],
        account_id: str = AccountIdParam,
    ) -> dto.FaceConsentOut:
        """Record a separate, explicit face consent under the current notice (FRM-6)."""
        consent = await enrolment.grant_face_consent(
            ctx, principal.name, account_id, data.notice_version, data.accepted, data.channel
        )
        return _consent_out(ctx, account_id, consent)

    @delete("/face-consent", guards=FRONTEND, status_code=HTTP_200_OK, responses=problems())
    async def withdraw_face_consent(
        self,
        ctx: Ctx,
        principal: Caller,
        account_id: str = AccountIdParam,
    ) -> dto.FaceConsentOut:
        """Withdraw face consent: one call, as easy as granting it."""
        return _consent_out(
            ctx, account_id, await enrolment.withdraw_face_consent(ctx, principal.name, account_id)
        )

    @get("/methods", guards=FRONTEND, responses=problems())
    async def methods(self, ctx: Ctx, account_id: str = AccountIdParam) -> dto.MethodsOut:
        """What is enrolled on the account, masked."""
        snap = await enrolment.snapshot(ctx, account_id)
        return dto.MethodsOut(
            account_id=account_id,
            totp=snap.totp_state.value,
            face_consent=_consent_out(ctx, account_id, snap.consent),
            phone=None
            if snap.phone is None
            else dto.MaskedPhoneOut(phone=snap.phone.masked, verified=snap.phone.verified),
            linked_identities=[
                dto.LinkedIdentityOut(
                    provider=r.provider, issuer=r.issuer, real_name_verified=r.real_name_verified
                )
                for r in snap.linked
            ],
            recovery_codes_remaining=snap.recovery_codes_remaining,
        )

    @get("/decisions", guards=FRONTEND, responses=problems())
    async def decisions(self, ctx: Ctx, account_id: str = AccountIdParam) -> dto.DecisionListOut:
        """The person's decisions with their explanations (PIPL-24 access), newest first."""
        return dto.DecisionListOut(
            account_id=account_id, decisions=await unlock.list_for_account(ctx, account_id)
        )

    @delete("/", guards=[require_roles(Role.ADMIN)], status_code=HTTP_200_OK, responses=problems())
    async def erase(
        self,
        ctx: Ctx,
        principal: Caller,
        account_id: str = AccountIdParam,
    ) -> dto.ErasureOut:
        """Erasure: crypto-shred the account's data key; its audit entries still verify.
        Notices and approval webhooks not acknowledged yet carry the account id: they are
        removed and not attempted again (`deliveries_cancelled`; one being delivered at that
        moment may still arrive)."""
        erasure = await enrolment.erase(ctx, principal.name, account_id)
        return dto.ErasureOut(
            account_id=account_id,
            erased=erasure.key_destroyed,
            deliveries_cancelled=erasure.deliveries_cancelled,
            audit=dto.AuditRefOut(index=await index_of(ctx, erasure.inbox_id)),
        )


class FaceNoticeController(Controller):
    path = "/v1/face-consent"
    tags = ["accounts"]  # noqa: RUF012 - Litestar reads this class attribute

    @get("/notice", guards=FRONTEND, responses=problems())
    async def notice(self, ctx: Ctx) -> dto.FaceNoticeOut:
        """The current face notice in zh-CN and en: who, purpose, method, retention, rights."""
        n = ctx.notice
        return dto.FaceNoticeOut(
            version=n.version,
            purpose=n.purpose,
            texts={loc: dto.NoticeSectionOut(**dict(text)) for loc, text in n.texts.items()},
        )
