"""The external parties the flows talk to, built from settings once per app (or given by tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.adapters.face import FaceConfig, FaceVerifier, build_face_verifier
from service.adapters.oidc import OidcClient, build_oidc_client
from service.adapters.sms import SmsConfig, SmsGateway, build_sms_gateway
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Adapters:
    sms: SmsGateway
    oidc: OidcClient
    face: FaceVerifier
    # Face provider name -> the audience its attestations must carry.
    face_audiences: Mapping[str, str]

    async def aclose(self) -> None:
        try:
            await self.sms.aclose()
        finally:
            try:
                await self.oidc.aclose()
            finally:
                await self.face.aclose()


def build_adapters(settings: Settings) -> Adapters:
    """The real adapters; a missing or malformed variable stops the start, naming it."""
    env = settings.adapter_env
    face_config = FaceConfig.from_env(env)
    return Adapters(
        sms=build_sms_gateway(SmsConfig.from_env(env, production=settings.is_production)),
        oidc=build_oidc_client(settings),
        face=build_face_verifier(face_config),
        face_audiences={name: p.audience for name, p in face_config.providers.items()},
    )
