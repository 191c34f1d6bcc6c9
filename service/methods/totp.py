"""TOTP (RFC 6238) as FairUnlock uses it, on pyotp.

Accept the current and the previous time step only (RFC 6238 §5.2: at most one step of network
delay), and only a step strictly after the last accepted one, so a code is never accepted twice
(ASVS4-2.8.5; REGULATION.md §12 item 3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyotp

_DIGESTS: dict[str, Callable[..., Any]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}

SECRET_BYTES = 20  # 160 bits, RFC 4226 §4 R6's recommended minimum


@dataclass(frozen=True, slots=True)
class TotpParameters:
    digits: int = 6
    period: int = 30
    algorithm: str = "SHA1"  # what authenticator apps support universally
    # Steps behind the current one still accepted (network delay); never ahead.
    accept_previous_steps: int = 1


def new_secret() -> str:
    """A fresh base32 secret of 160 bits from the OS CSPRNG."""
    return pyotp.random_base32(length=32)


def _totp(secret_b32: str, params: TotpParameters) -> pyotp.TOTP:
    return pyotp.TOTP(
        secret_b32,
        digits=params.digits,
        interval=params.period,
        digest=_DIGESTS[params.algorithm],
    )


def secret_from_bytes(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii")


def step_of(moment: datetime, params: TotpParameters) -> int:
    return int(moment.timestamp()) // params.period


def code_at(secret_b32: str, moment: datetime, params: TotpParameters) -> str:
    return _totp(secret_b32, params).at(moment)


def provisioning_uri(
    secret_b32: str, account_label: str, issuer: str, params: TotpParameters
) -> str:
    return _totp(secret_b32, params).provisioning_uri(name=account_label, issuer_name=issuer)


def verify(
    secret_b32: str,
    code: str,
    now: datetime,
    params: TotpParameters,
    last_accepted_step: int | None,
) -> int | None:
    """The step the code matches, or None; a step at or before ``last_accepted_step`` never does."""
    if len(code) != params.digits or not code.isascii() or not code.isdigit():
        return None
    totp = _totp(secret_b32, params)
    current = step_of(now, params)
    for step in range(current, current - params.accept_previous_steps - 1, -1):
        if last_accepted_step is not None and step <= last_accepted_step:
            break
        # Constant-time comparison: pyotp's generate_otp output compared with hmac.compare_digest.
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
