"""What the flows need, built once by ``create_app`` (or a CLI command) and passed in explicitly."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from audit.checkpoint import CheckpointSigner
from audit.store import InboxIdBlock
from policy.config import Policy
from service.adapters.face import FaceVerifier
from service.adapters.oidc import OidcClient
from service.adapters.sms import SendTimings, SmsGateway
from service.data_keys import DataKeys
from service.group_commit import GroupCommit
from service.notice import FaceNotice
from service.providers import OidcProvider
from service.sealer import Sealer
from service.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServiceContext:
    settings: Settings
    engine: AsyncEngine
    policy: Policy
    data_keys: DataKeys
    signer: CheckpointSigner
    notice: FaceNotice
    oidc_providers: Mapping[str, OidcProvider]
    sealer: Sealer
    sms: SmsGateway
    oidc: OidcClient
    face: FaceVerifier
    # Configured face providers and the audience each attestation must name.
    face_audiences: Mapping[str, str]
    # Decisions of concurrent requests commit together, with one audit integration per batch
    # (service.flows.unlock.decision_batches).
    decisions: GroupCommit[Any, Any]
    # Proofs of concurrent requests commit together (service.flows.challenges.proof_batches).
    proofs: GroupCommit[Any, Any]
    clock: Callable[[], datetime] = utc_now
    sms_timings: SendTimings = field(default_factory=SendTimings)
    # Ids for the audit entries decisions hand to the integration directly.
    inbox_ids: InboxIdBlock = field(default_factory=InboxIdBlock)

    @property
    def audit_origin(self) -> str:
        return self.settings.audit_origin
