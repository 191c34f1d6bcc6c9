"""Signal derivation: each signal from its facts; absent facts are unknown, never reassuring."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from policy.config import Policy
from policy.model import (
    GeoPoint,
    LastLogin,
    Locale,
    LockReason,
    Network,
    RequestContext,
    RequestHistory,
    SignalCode,
    UnlockRequestFacts,
)
from policy.signals import derive_signals, great_circle_km

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
BEIJING = GeoPoint("CN", 39.90, 116.40)
SHANGHAI = GeoPoint("CN", 31.23, 121.47)
BERLIN = GeoPoint("DE", 52.52, 13.40)


def _codes(
    policy: Policy, history: RequestHistory | None = None, **context: object
) -> set[SignalCode]:
    ctx = RequestContext(ip="198.51.100.1", **context)  # type: ignore[arg-type]
    request = UnlockRequestFacts("a", LockReason.UNUSUAL_ACTIVITY, ctx, Locale.EN)
    return {s.code for s in derive_signals(request, history or RequestHistory(), policy, NOW)}


def test_great_circle_distance_beijing_shanghai() -> None:
    distance = great_circle_km(BEIJING, SHANGHAI)
    assert distance is not None
    assert 1060 < distance < 1075
    assert great_circle_km(BEIJING, GeoPoint("CN")) is None


def test_every_request_carries_its_lock_reason(default_policy: Policy) -> None:
    for reason in LockReason:
        request = UnlockRequestFacts("a", reason, RequestContext(ip="198.51.100.1"), Locale.EN)
        codes = [s.code for s in derive_signals(request, RequestHistory(), default_policy, NOW)]
        assert codes[0].value == f"LOCK_{reason.value.upper()}"


def test_new_device_versus_known_and_unknown(default_policy: Policy) -> None:
    assert SignalCode.NEW_DEVICE in _codes(
        default_policy, device_id="d-9", known_device_ids=frozenset({"d-1"})
    )
    known = _codes(default_policy, device_id="d-1", known_device_ids=frozenset({"d-1"}))
    assert not {SignalCode.NEW_DEVICE, SignalCode.UNKNOWN_DEVICE} & known
    last = LastLogin(device_id="d-1")
    assert SignalCode.NEW_DEVICE not in _codes(default_policy, device_id="d-1", last_login=last)
    # No device id, or nothing to compare it with: unknown, which weighs like new.
    assert SignalCode.UNKNOWN_DEVICE in _codes(default_policy, known_device_ids=frozenset({"d-1"}))
    assert SignalCode.UNKNOWN_DEVICE in _codes(default_policy, device_id="d-1")
    assert (
        default_policy.weights[SignalCode.UNKNOWN_DEVICE]
        >= default_policy.weights[SignalCode.NEW_DEVICE]
    )


def test_unusual_and_unknown_location(default_policy: Policy) -> None:
    last = LastLogin(at=NOW - timedelta(days=3), geo=SHANGHAI)
    assert SignalCode.UNUSUAL_LOCATION in _codes(default_policy, geo=BERLIN, last_login=last)
    same = _codes(default_policy, geo=BEIJING, last_login=last)
    assert not {SignalCode.UNUSUAL_LOCATION, SignalCode.UNKNOWN_LOCATION} & same
    assert SignalCode.UNKNOWN_LOCATION in _codes(default_policy, last_login=last)
    assert SignalCode.UNKNOWN_LOCATION in _codes(default_policy, geo=BERLIN)


@pytest.mark.parametrize(
    ("hours_ago", "there", "expected"),
    [
        (1, BERLIN, True),  # ~8,400 km in an hour
        (24, BERLIN, False),  # a flight fits in a day
        (1, BEIJING, True),  # ~1,070 km in an hour beats an airliner
        (3, BEIJING, False),
        (0, BEIJING, True),  # no time at all between two far places
        (1, GeoPoint("CN", 31.25, 121.50), False),  # across town: below the noise floor
    ],
)
def test_impossible_travel(
    default_policy: Policy, hours_ago: int, there: GeoPoint, expected: bool
) -> None:
    last = LastLogin(at=NOW - timedelta(hours=hours_ago), geo=SHANGHAI)
    assert (
        SignalCode.IMPOSSIBLE_TRAVEL in _codes(default_policy, geo=there, last_login=last)
    ) is expected


@pytest.mark.parametrize("network", list(Network))
def test_network_kinds(default_policy: Policy, network: Network) -> None:
    codes = _codes(default_policy, network=network)
    risky = network in {Network.PROXY, Network.TOR, Network.DATACENTER, Network.MALICIOUS}
    assert (SignalCode.RISKY_NETWORK in codes) is risky
    assert (SignalCode.UNKNOWN_NETWORK in codes) is (network is Network.UNKNOWN)


def test_absent_network_is_unknown(default_policy: Policy) -> None:
    assert SignalCode.UNKNOWN_NETWORK in _codes(default_policy)


def test_recent_sim_swap_and_credential_change(default_policy: Policy) -> None:
    assert SignalCode.RECENT_SIM_SWAP in _codes(default_policy, sim_swap_at=NOW - timedelta(days=1))
    assert SignalCode.RECENT_SIM_SWAP not in _codes(
        default_policy, sim_swap_at=NOW - timedelta(days=30)
    )
    # A swap reported in the future is clock skew at the caller, still recent.
    assert SignalCode.RECENT_SIM_SWAP in _codes(
        default_policy, sim_swap_at=NOW + timedelta(hours=1)
    )
    assert SignalCode.RECENT_CREDENTIAL_CHANGE in _codes(
        default_policy, credential_changed_at=NOW - timedelta(hours=2)
    )
    assert SignalCode.RECENT_CREDENTIAL_CHANGE not in _codes(
        default_policy, credential_changed_at=NOW - timedelta(days=9)
    )


def test_velocity_and_failed_verifications_from_history(default_policy: Policy) -> None:
    t = default_policy.thresholds
    below = RequestHistory(t.velocity_threshold - 1, t.failed_verifications_threshold - 1)
    at = RequestHistory(t.velocity_threshold, t.failed_verifications_threshold)
    assert not {SignalCode.REQUEST_VELOCITY, SignalCode.RECENT_FAILED_VERIFICATIONS} & _codes(
        default_policy, below
    )
    assert {SignalCode.REQUEST_VELOCITY, SignalCode.RECENT_FAILED_VERIFICATIONS} <= _codes(
        default_policy, at
    )


def test_long_standing_account_mitigates_only_when_known(default_policy: Policy) -> None:
    assert SignalCode.LONG_STANDING_ACCOUNT in _codes(
        default_policy, account_created_at=NOW - timedelta(days=3650)
    )
    assert SignalCode.LONG_STANDING_ACCOUNT not in _codes(
        default_policy, account_created_at=NOW - timedelta(days=30)
    )
    assert SignalCode.LONG_STANDING_ACCOUNT not in _codes(default_policy)
    assert default_policy.weights[SignalCode.LONG_STANDING_ACCOUNT] < 0
