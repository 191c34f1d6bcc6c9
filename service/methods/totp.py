"""TOTP (RFC 6238) as FairUnlock uses it: codes and provisioning URIs on pyotp; the check of a
submitted code on cryptography's HOTP (RFC 4226), which decodes the secret once per check where
pyotp decodes it again for every step it computes (a check of two steps: 24 -> 11 µs).

Accept the current and the previous time step only (RFC 6238 §5.2: at most one step of network
delay), and only a step strictly after the last accepted one, so a code is never accepted twice
(ASVS4-2.8.5; REGULATION.md §12 item 3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyotp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.twofactor.hotp import HOTP

_DIGESTS: dict[str, Callable[..., Any]] = {
    "SHA1": hashlib.sha1,
    "SHA256": hashlib.sha256,
    "SHA512": hashlib.sha512,
}
_HASHES: dict[str, Callable[[], hashes.SHA1 | hashes.SHA256 | hashes.SHA512]] = {
    "SHA1": hashes.SHA1,
    "SHA256": hashes.SHA256,
    "SHA512": hashes.SHA512,
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
    """A fresh base32 secret of 160 bits from the OS CSPRNG: one read of 20 bytes (3 µs, where
    pyotp.random_base32 draws each of 32 characters on its own, 55 µs; the check against no
    secret makes one per proof)."""
    return secret_from_bytes(secrets.token_bytes(SECRET_BYTES))


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


@dataclass(frozen=True, slots=True)
class TotpCheck:
    """A submitted code against a secret: the step it is accepted for, if any, and whether it is
    right for a step that can no longer be accepted (at or before the last accepted one)."""

    step: int | None
    reused: bool


def check(
    secret_b32: str,
    code: str,
    now: datetime,
    params: TotpParameters,
    last_accepted_step: int | None,
) -> TotpCheck:
    """The code against the window's steps, newest first, each computed once: the first that
    matches decides (accepted if after ``last_accepted_step``, else a replay, as every older
    step is too). Each comparison is constant-time; how many steps were computed tells only
    what the answer says anyway (right, and for which step, or not)."""
    if len(code) != params.digits or not code.isascii() or not code.isdigit():
        return TotpCheck(None, reused=False)
    # pyotp's reading of a secret: upper or lower case, padding optional.
    padded = secret_b32 + "=" * (-len(secret_b32) % 8)
    hotp = HOTP(
        base64.b32decode(padded, casefold=True),
        params.digits,
        _HASHES[params.algorithm](),
        enforce_key_length=False,  # new_secret's are 160 bits; RFC 6238's vectors 160-512
    )
    given = code.encode("ascii")
    current = step_of(now, params)
    for step in range(current, current - params.accept_previous_steps - 1, -1):
        if hmac.compare_digest(hotp.generate(step), given):
            if last_accepted_step is None or step > last_accepted_step:
                return TotpCheck(step, reused=False)
            return TotpCheck(None, reused=True)
    return TotpCheck(None, reused=False)


def verify(
    secret_b32: str,
    code: str,
    now: datetime,
    params: TotpParameters,
    last_accepted_step: int | None,
) -> int | None:
    """The step the code matches, or None; a step at or before ``last_accepted_step`` never does."""
    return check(secret_b32, code, now, params, last_accepted_step).step
