"""The loader refuses, naming the rule, every policy that would break a principle (DESIGN.md
principle 1: FRM-6/10/12; NIST-63B4-3.2.3 and SMS as restricted; OWASP-FP-12/13 messages that
reveal nothing useful to an attacker)."""

from __future__ import annotations

import re

import pytest

from policy.config import PolicyError, load_policy
from tests.policy.conftest import default_texts

POLICY_TEXT, CATALOGS = default_texts()


def _sub(pattern: str, replacement: str, text: str = POLICY_TEXT) -> str:
    changed, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1, f"pattern {pattern!r} not found: the test no longer edits the policy"
    return changed


NON_BIO_WITHOUT_HIGH = '["low", "medium", "critical"]'
NON_BIO_WITHOUT_CRITICAL = '["low", "medium", "high"]'


def _all_non_bio_levels(levels: str) -> str:
    text = POLICY_TEXT
    for method in ("totp", "linked_identity", "recovery_code", "sms"):
        text = _sub(
            rf'(\[methods\.{method}\]\nstrength = "\w+"[^\n]*\nlevels = )\[[^\]]*\]',
            rf"\g<1>{levels}",
            text,
        )
    return text


POLICY_RULES = [
    (
        "FACE_FIRST",
        _sub(
            r"^order = \[.*\]$",
            'order = ["face", "totp", "linked_identity", "recovery_code", "sms"]',
        ),
    ),
    (
        "FACE_FIRST",
        _sub(
            r"^order = \[.*\]$",
            'order = ["totp", "face", "linked_identity", "recovery_code", "sms"]',
        ),
    ),
    ("FACE_SOLE_PATH", _all_non_bio_levels(NON_BIO_WITHOUT_HIGH)),
    ("NO_NON_BIOMETRIC_PATH", _all_non_bio_levels(NON_BIO_WITHOUT_CRITICAL)),
    ("FACE_COUNTS_MORE_THAN_ONE", _sub(r"^max_factors = 1$", "max_factors = 2")),
    ("FACE_WITHOUT_CONSENT", _sub(r"^requires_consent = true$", "requires_consent = false")),
    (
        "SMS_ALONE_ABOVE_LOW",
        _sub(r"(\[requirements\.medium\][^\n]*\nfactors = 1\nstrong = )1", r"\g<1>0"),
    ),
    ("SMS_NOT_RESTRICTED", _sub(r'^strength = "restricted"', 'strength = "strong"')),
    (
        "SMS_AFTER_SIM_SWAP",
        _sub(r"^withdraw_after_sim_swap = true$", "withdraw_after_sim_swap = false"),
    ),
    ("UNKNOWN_METHOD", _sub(r'^order = \["totp"', 'order = ["email", "totp"')),
    ("UNKNOWN_SIGNAL", _sub(r"^\[weights\]$", "[weights]\nSHOE_SIZE = 3")),
    ("UNKNOWN_LEVEL", _sub(r'^IMPOSSIBLE_TRAVEL = "high"$', 'IMPOSSIBLE_TRAVEL = "extreme"')),
    ("UNKNOWN_NETWORK", _sub(r"^\[network_weights\][^\n]*$", "[network_weights]\nvpn = 3")),
    ("THRESHOLDS_NOT_INCREASING", _sub(r"^high = 45$", "high = 15")),
    ("THRESHOLDS_NOT_INCREASING", _sub(r"^critical = 80$", "critical = 45")),
    ("MISSING_WEIGHT", _sub(r"^NEW_DEVICE = 15\n", "")),
    ("MISSING_WEIGHT", _sub(r"^tor = 30\n", "")),
    ("RISK_WEIGHT_NEGATIVE", _sub(r"^NEW_DEVICE = 15$", "NEW_DEVICE = -5")),
    ("MITIGATION_RAISES_RISK", _sub(r"^LONG_STANDING_ACCOUNT = -15", "LONG_STANDING_ACCOUNT = 5")),
    ("DUPLICATE_METHOD", _sub(r'^order = \["totp"', 'order = ["totp", "totp"')),
    ("REQUIREMENT_INVALID", _sub(r"(\[requirements\.high\][^\n]*\nfactors = )2", r"\g<1>4")),
    ("REQUIREMENT_INVALID", _sub(r"(\[requirements\.low\]\nfactors = 1\nstrong = )0", r"\g<1>2")),
    ("VERSION_MISSING", _sub(r'^version = ".*"$', 'version = ""')),
    ("SCHEMA", _sub(r"^\[decision\]$", "[decision]\nautomatic_denial = true")),
    ("SCHEMA", _sub(r"^version = ", "bogus = 1\nversion = ")),
    ("SCHEMA", "this is = not [ toml"),
    ("SLA_NOT_INCREASING", _sub(r"^sla_hours = \{ urgent = 4", "sla_hours = { urgent = 400")),
    ("SCHEMA", _sub(r'critical = "high" \}', 'critical = "panic" }')),
    ("LIMIT_TOO_HIGH", _sub(r"^method_failures_per_day = 10", "method_failures_per_day = 1000")),
    ("SCHEMA", _sub(r"^sms_sends_per_hour = 3", "sms_sends_per_hour = 30")),
    ("SCHEMA", _sub(r"^challenge_attempts = 5", "challenge_attempts = 0")),
]


@pytest.mark.parametrize(
    ("rule", "text"), POLICY_RULES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(POLICY_RULES)]
)
def test_loader_refuses_a_policy_that_breaks_a_rule(rule: str, text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(text, CATALOGS)
    assert caught.value.rule == rule, str(caught.value)
    assert rule in str(caught.value)


def _catalog_sub(locale: str, pattern: str, replacement: str) -> dict[str, str]:
    return {**CATALOGS, locale: _sub(pattern, replacement, CATALOGS[locale])}


CATALOG_RULES = [
    ("MISSING_MESSAGE", _catalog_sub("en", r"^NEW_DEVICE = .*\n", "")),
    ("MISSING_MESSAGE", _catalog_sub("zh-CN", r"^NO_FACE_CONSENT = .*\n", "")),
    (
        "MISSING_MESSAGE",
        _catalog_sub("en", r'^IMPOSSIBLE_TRAVEL = ".*"$', 'IMPOSSIBLE_TRAVEL = "  "'),
    ),
    ("MISSING_MESSAGE", {"en": CATALOGS["en"]}),
    (
        "UNKNOWN_MESSAGE_KEY",
        _catalog_sub("en", r"^\[reasons\]$", '[reasons]\nSHOE_SIZE = "big feet"'),
    ),
    (
        "MESSAGE_REVEALS_NUMBER",
        _catalog_sub(
            "en", r'^IMPOSSIBLE_TRAVEL = ".*"$', 'IMPOSSIBLE_TRAVEL = "faster than 900 km/h"'
        ),
    ),
    (
        "MESSAGE_REVEALS_NUMBER",
        _catalog_sub("zh-CN", r'^REQUEST_VELOCITY = ".*"$', 'REQUEST_VELOCITY = "超过3次"'),
    ),
    (
        "FACE_COERCIVE_COPY",
        _catalog_sub("en", r"^face = .*$", 'face = "face verification (required)"'),
    ),
    ("FACE_COERCIVE_COPY", _catalog_sub("zh-CN", r"^face = .*$", 'face = "推荐使用人脸验证"')),
    (
        "FACE_COERCIVE_COPY",
        _catalog_sub(
            "en", r"^face_optional = .*$", 'face_optional = "Face verification is recommended."'
        ),
    ),
    ("SCHEMA", _catalog_sub("en", r'^locale = "en"$', 'locale = "zh-CN"')),
    ("SCHEMA", _catalog_sub("en", r'^risk = ".*"$', 'risk = "We rated this as {score}."')),
]


@pytest.mark.parametrize(
    ("rule", "catalogs"), CATALOG_RULES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CATALOG_RULES)]
)
def test_loader_refuses_a_catalog_that_breaks_a_rule(rule: str, catalogs: dict[str, str]) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(POLICY_TEXT, catalogs)
    assert caught.value.rule == rule, str(caught.value)


def test_shipped_policy_loads_and_carries_its_canonical_sha256() -> None:
    policy = load_policy(POLICY_TEXT, CATALOGS)
    assert policy.version == "2026-11-22.1"
    assert re.fullmatch(r"[0-9a-f]{64}", policy.sha256)
    # Formatting and comments do not change the hash; a value does.
    reformatted = POLICY_TEXT.replace("# ", "#  ").replace("\n\n", "\n\n\n")
    assert load_policy(reformatted, CATALOGS).sha256 == policy.sha256
    assert load_policy(_sub(r"^tor = 30$", "tor = 31"), CATALOGS).sha256 != policy.sha256
    changed_message = _catalog_sub("en", r'^low = "low"$', 'low = "small"')
    assert load_policy(POLICY_TEXT, changed_message).sha256 != policy.sha256
