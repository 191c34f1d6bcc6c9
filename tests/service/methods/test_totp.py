"""RFC 6238 Appendix B vectors through the project's own TOTP configuration (RFC6238-TV),
and the acceptance window and replay rule (RFC6238-5.2, ASVS4-2.8.5)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.methods import totp

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "policy" / "rfc6238-totp.json").read_text()
)


def _secret(algorithm: str) -> str:
    return base64.b32encode(bytes.fromhex(VECTORS["keys_hex"][algorithm])).decode()


@pytest.mark.parametrize(
    "vector", VECTORS["vectors"], ids=lambda v: f"{v['algorithm']}-{v['unix_time']}"
)
def test_rfc6238_appendix_b_vectors(vector: dict[str, Any]) -> None:
    params = totp.TotpParameters(
        digits=VECTORS["digits"], period=VECTORS["period_seconds"], algorithm=vector["algorithm"]
    )
    moment = datetime.fromtimestamp(vector["unix_time"], UTC)
    secret = _secret(vector["algorithm"])
    assert totp.code_at(secret, moment, params) == vector["totp"]
    assert totp.step_of(moment, params) == int(vector["T_hex"], 16)
    assert totp.verify(secret, vector["totp"], moment, params, None) == int(vector["T_hex"], 16)


def test_vectors_cover_every_algorithm() -> None:
    assert {v["algorithm"] for v in VECTORS["vectors"]} == {"SHA1", "SHA256", "SHA512"}
    assert len(VECTORS["vectors"]) == 18


PARAMS = totp.TotpParameters()
NOW = datetime(2026, 11, 22, 12, 0, 10, tzinfo=UTC)


def test_accepts_current_and_previous_step_only() -> None:
    secret = totp.new_secret()
    current = totp.step_of(NOW, PARAMS)
    assert totp.verify(secret, totp.code_at(secret, NOW, PARAMS), NOW, PARAMS, None) == current
    previous = NOW - timedelta(seconds=30)
    assert (
        totp.verify(secret, totp.code_at(secret, previous, PARAMS), NOW, PARAMS, None)
        == current - 1
    )
    older = NOW - timedelta(seconds=60)
    assert totp.verify(secret, totp.code_at(secret, older, PARAMS), NOW, PARAMS, None) is None
    future = NOW + timedelta(seconds=30)
    assert totp.verify(secret, totp.code_at(secret, future, PARAMS), NOW, PARAMS, None) is None


def test_a_code_is_never_accepted_twice() -> None:
    secret = totp.new_secret()
    code = totp.code_at(secret, NOW, PARAMS)
    step = totp.verify(secret, code, NOW, PARAMS, None)
    assert step is not None
    assert totp.verify(secret, code, NOW, PARAMS, step) is None
    # Nor an older step after a newer one was used.
    older = totp.code_at(secret, NOW - timedelta(seconds=30), PARAMS)
    assert totp.verify(secret, older, NOW, PARAMS, step) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "١٢٣٤٥٦", "12 456"])
def test_malformed_codes_never_match(code: str) -> None:
    assert totp.verify(totp.new_secret(), code, NOW, PARAMS, None) is None


def test_secret_has_at_least_160_bits() -> None:
    secret = totp.new_secret()
    assert len(base64.b32decode(secret)) * 8 >= 160


def test_a_right_code_for_a_used_step_is_told_apart_as_a_replay() -> None:
    secret = totp.new_secret()
    current = totp.step_of(NOW, PARAMS)
    code = totp.code_at(secret, NOW, PARAMS)
    assert totp.check(secret, code, NOW, PARAMS, None) == totp.TotpCheck(current, reused=False)
    assert totp.check(secret, code, NOW, PARAMS, current) == totp.TotpCheck(None, reused=True)
    previous = totp.code_at(secret, NOW - timedelta(seconds=30), PARAMS)
    assert totp.check(secret, previous, NOW, PARAMS, current - 1) == totp.TotpCheck(
        None, reused=True
    )
    # The previous step's code is still good after an older step was used.
    assert totp.check(secret, previous, NOW, PARAMS, current - 2) == totp.TotpCheck(
        current - 1, reused=False
    )
    # Wrong, out of the window, or malformed: not a replay.
    older = totp.code_at(secret, NOW - timedelta(seconds=60), PARAMS)
    for wrong in (older, f"{(int(code) + 1) % 1_000_000:06d}", "12a456"):
        assert totp.check(secret, wrong, NOW, PARAMS, current) == totp.TotpCheck(None, reused=False)


@pytest.mark.parametrize("spelling", [str.lower, lambda s: s.rstrip("=")])
def test_a_secret_reads_as_pyotp_reads_it(spelling: Any) -> None:
    """Lower case and unpadded base32, as pyotp accepts them (a 16-byte secret needs padding)."""
    for raw in (bytes(range(20)), bytes(range(16))):
        secret = base64.b32encode(raw).decode()
        code = totp.code_at(secret, NOW, PARAMS)
        assert totp.verify(spelling(secret), code, NOW, PARAMS, None) == totp.step_of(NOW, PARAMS)


def test_new_secrets_are_distinct_and_usable() -> None:
    secrets = {totp.new_secret() for _ in range(64)}
    assert len(secrets) == 64
    for secret in secrets:
        assert len(base64.b32decode(secret)) * 8 >= 160
        assert totp.verify(secret, totp.code_at(secret, NOW, PARAMS), NOW, PARAMS, None) is not None
